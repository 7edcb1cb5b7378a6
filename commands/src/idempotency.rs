//! `Idempotency-Key` on commands: a command sent again with the same key and the same
//! request answers the recorded answer without running again; the same key with a different
//! request is refused; a key whose first request is still running answers "in progress".
//!
//! What is recorded is the use case's own answer (its result, or its business rejection),
//! so a replay is answered exactly like the original at every edge (HTTP today, any other
//! later). Conflicts and infrastructure failures are not final: the key is released and the
//! request may be retried. A request that never reached the use case (malformed input) does
//! not consume its key. A first request that never finished (its client went away and the
//! handler was dropped, or the process died) leaves its key "in progress" only for its lease
//! ([`IN_PROGRESS_LEASE_SECS`] unless configured); then the same request may claim it again.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::errors::{Failure, UseCaseError};

/// Longest accepted key.
pub const KEY_MAX: usize = 200;

/// How long an unfinished first request holds its key, by default, before the same request
/// may run again. Far longer than any request takes (database acquire timeouts and `min_version`
/// waits are seconds), so a request still running is not run twice.
pub const IN_PROGRESS_LEASE_SECS: f64 = 120.0;

/// A client's Idempotency-Key: 1 to [`KEY_MAX`] visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks a key as sent; `None` when it is empty, too long or not visible ASCII.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty() && raw.len() <= KEY_MAX && raw.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        ok.then(|| Self(raw.to_string()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A use case's successful answer, and whether it was replayed from an earlier request.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer<T> {
    /// The result.
    pub value: T,
    /// True when this is the recorded answer to an earlier request with the same key.
    pub replayed: bool,
}

/// What a finished first request left under its key.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Recorded<T, R> {
    Done(T),
    Rejected(R),
}

/// The keys, in Postgres (`idempotency_keys`).
#[derive(Clone)]
pub struct Idempotency {
    pool: PgPool,
    ttl_hours: u32,
    lease_secs: f64,
}

impl Idempotency {
    /// Keys on `pool`, remembered for `ttl_hours`.
    pub fn new(pool: PgPool, ttl_hours: u32) -> Self {
        Self { pool, ttl_hours, lease_secs: IN_PROGRESS_LEASE_SECS }
    }

    /// The same keys with another in-progress lease (see [`IN_PROGRESS_LEASE_SECS`]).
    pub fn with_lease(mut self, lease: std::time::Duration) -> Self {
        self.lease_secs = lease.as_secs_f64();
        self
    }

    /// Runs `run` at most once per (`user`, `key`); without a key, just runs it. `use_case`
    /// and `request` identify the request: the same key with another use case or input is
    /// refused.
    pub async fn once<T, R, I, F, Fut>(
        &self,
        user: Uuid,
        key: Option<&IdempotencyKey>,
        use_case: &str,
        request: &I,
        run: F,
    ) -> Result<Answer<T>, UseCaseError<R>>
    where
        T: Serialize + DeserializeOwned,
        R: std::error::Error + Serialize + DeserializeOwned,
        I: Serialize,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, UseCaseError<R>>>,
    {
        let Some(key) = key else {
            return run().await.map(|value| Answer { value, replayed: false });
        };
        let hash = fingerprint(use_case, request).map_err(Failure::from)?;
        let claim = Uuid::new_v4();
        if !self.claim(user, key, &hash, claim).await? {
            let (stored_hash, outcome): (String, Option<serde_json::Value>) =
                sqlx::query_as("SELECT request_hash, outcome FROM idempotency_keys WHERE user_id = $1 AND key = $2")
                    .bind(user)
                    .bind(key.as_str())
                    .fetch_one(&self.pool)
                    .await?;
            if stored_hash != hash {
                return Err(UseCaseError::IdempotencyKeyReused);
            }
            let Some(outcome) = outcome else { return Err(UseCaseError::RequestInProgress) };
            return match serde_json::from_value::<Recorded<T, R>>(outcome).map_err(Failure::from)? {
                Recorded::Done(value) => Ok(Answer { value, replayed: true }),
                Recorded::Rejected(rejection) => Err(UseCaseError::Rejected { rejection, replayed: true }),
            };
        }
        let outcome = run().await;
        let recorded = match &outcome {
            Ok(value) => Some(serde_json::to_value(Recorded::<&T, &R>::Done(value))),
            Err(UseCaseError::Rejected { rejection, .. }) => {
                Some(serde_json::to_value(Recorded::<&T, &R>::Rejected(rejection)))
            }
            Err(_) => None,
        };
        match recorded {
            Some(answer) => {
                let answer = answer.map_err(Failure::from)?;
                // Only while the claim is still ours: a successor that took an abandoned claim over
                // keeps its own answer.
                sqlx::query(
                    "UPDATE idempotency_keys SET outcome = $3 WHERE user_id = $1 AND key = $2 AND claim_id = $4",
                )
                .bind(user)
                .bind(key.as_str())
                .bind(answer)
                .bind(claim)
                .execute(&self.pool)
                .await?;
            }
            None => {
                // Not final: release the key so the client's retry runs the command again.
                sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND claim_id = $3")
                    .bind(user)
                    .bind(key.as_str())
                    .bind(claim)
                    .execute(&self.pool)
                    .await?;
            }
        }
        outcome.map(|value| Answer { value, replayed: false })
    }

    /// Inserts the key as claim `claim`, or takes over an expired key or an abandoned claim
    /// of the same request; false when it is taken.
    async fn claim(&self, user: Uuid, key: &IdempotencyKey, hash: &str, claim: Uuid) -> Result<bool, sqlx::Error> {
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, claim_id) VALUES ($1, $2, $3, $5)
             ON CONFLICT (user_id, key) DO UPDATE
                SET request_hash = EXCLUDED.request_hash, outcome = NULL, created_at = now(),
                    claim_id = EXCLUDED.claim_id
              WHERE idempotency_keys.created_at < now() - make_interval(hours => $4)
                 OR (idempotency_keys.outcome IS NULL
                     AND idempotency_keys.request_hash = EXCLUDED.request_hash
                     AND idempotency_keys.created_at < now() - make_interval(secs => $6))",
        )
        .bind(user)
        .bind(key.as_str())
        .bind(hash)
        .bind(self.ttl_hours as i32)
        .bind(claim)
        .bind(self.lease_secs)
        .execute(&self.pool)
        .await?;
        Ok(claimed.rows_affected() == 1)
    }

    /// Deletes remembered keys older than the TTL; returns how many.
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)")
            .bind(self.ttl_hours as i32)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

fn fingerprint(use_case: &str, request: &impl Serialize) -> Result<String, serde_json::Error> {
    let mut hasher = Sha256::new();
    hasher.update(use_case.as_bytes());
    hasher.update(b"\n");
    hasher.update(serde_json::to_vec(request)?);
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert!(IdempotencyKey::parse("k-1").is_some());
        assert!(IdempotencyKey::parse(&"k".repeat(KEY_MAX)).is_some());
        for bad in ["", "tab\there", "ключ", "nl\n"] {
            assert!(IdempotencyKey::parse(bad).is_none(), "{bad:?}");
        }
        assert!(IdempotencyKey::parse(&"k".repeat(KEY_MAX + 1)).is_none());
    }

    #[test]
    fn fingerprints_tell_use_cases_and_inputs_apart() {
        let a = fingerprint("post_message", &serde_json::json!({"content": "hi"})).unwrap();
        assert_eq!(a, fingerprint("post_message", &serde_json::json!({"content": "hi"})).unwrap());
        assert_ne!(a, fingerprint("post_message", &serde_json::json!({"content": "ho"})).unwrap());
        assert_ne!(a, fingerprint("rename", &serde_json::json!({"content": "hi"})).unwrap());
    }
}
