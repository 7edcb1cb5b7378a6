//! Password hashing with argon2id (OWASP baseline: m = 19 MiB, t = 2, p = 1), off the async
//! workers and with bounded concurrency so a login storm cannot exhaust memory. The queue in
//! front of it is bounded too: past `concurrency + queue` hashes in flight, a new one is
//! refused at once ([`PasswordError::Overloaded`]) rather than piling up requests, each
//! holding a connection and a password in memory, behind a queue that only grows.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// Shortest accepted password.
pub const PASSWORD_MIN: usize = 8;
/// Longest accepted password (hashing cost grows with length).
pub const PASSWORD_MAX: usize = 256;

/// Hashing failures (not "wrong password", which is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The hashing parameters are invalid (a bug).
    #[error("invalid password hashing parameters")]
    Params(#[source] argon2::Error),
    /// The library failed, or a stored hash is not a PHC string.
    #[error("password hashing failed")]
    Hash(#[source] argon2::password_hash::Error),
    /// The blocking task was cancelled or panicked.
    #[error("password hashing task failed")]
    Task,
    /// Every hashing slot is busy and the queue in front of them is full; retry shortly.
    #[error("too many password hashes in flight")]
    Overloaded,
}

/// Hashes and verifies passwords; clone freely (shares one semaphore and one queue).
#[derive(Clone)]
pub struct PasswordHasher {
    /// Hashes running at once.
    permits: Arc<Semaphore>,
    /// Hashes running or waiting: `concurrency + queue` tickets, taken without waiting.
    admission: Arc<Semaphore>,
}

fn argon2() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(19 * 1024, 2, 1, None).map_err(PasswordError::Params)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// The default number of hashes that may wait for a slot (see [`PasswordHasher::bounded`]).
pub const DEFAULT_QUEUE: usize = 64;

impl PasswordHasher {
    /// At most `concurrency` hashes run at once, and [`DEFAULT_QUEUE`] more may wait.
    pub fn new(concurrency: usize) -> Self {
        Self::bounded(concurrency, DEFAULT_QUEUE)
    }

    /// At most `concurrency` hashes run at once and `queue` more wait for a slot; any
    /// further one fails at once with [`PasswordError::Overloaded`].
    pub fn bounded(concurrency: usize, queue: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            admission: Arc::new(Semaphore::new(concurrency.saturating_add(queue))),
        }
    }

    /// Runs `work` on a blocking thread once a slot is free, or refuses at once when the
    /// queue is full. Both permits are held until `work` has finished (a cancelled caller
    /// does not free the slot of a hash still running).
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let ticket = self.admission.clone().try_acquire_owned().map_err(|_| PasswordError::Overloaded)?;
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| PasswordError::Task)?;
        tokio::task::spawn_blocking(move || {
            let outcome = work();
            drop((permit, ticket));
            outcome
        })
        .await
        .map_err(|_| PasswordError::Task)?
    }

    /// A PHC string (parameters inside, so they can be raised later).
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2()?.hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(PasswordError::Hash)
        })
        .await
    }

    /// Whether `password` matches `phc`. A malformed stored hash is an error, not a mismatch.
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, PasswordError> {
        self.run(move || {
            let parsed = PasswordHash::new(&phc).map_err(PasswordError::Hash)?;
            Ok(argon2()?.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
    }

    /// Burns the same time as a real verification, so a login for an unknown address
    /// cannot be told from a wrong password by its latency. Fails only when overloaded,
    /// so that an unknown address is refused alike under load too.
    pub async fn verify_dummy(&self, password: String) -> Result<(), PasswordError> {
        const DUMMY: &str =
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$7hbF1cmLJRsrWrqBNmOHE5HtOJIl2U8ZbCIbdjhVg6A";
        match self.verify(password, DUMMY.to_string()).await {
            Err(PasswordError::Overloaded) => Err(PasswordError::Overloaded),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let hasher = PasswordHasher::new(2);
        let phc = hasher.hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(hasher.verify("correct horse".into(), phc.clone()).await.unwrap());
        assert!(!hasher.verify("wrong horse".into(), phc).await.unwrap());
        assert!(hasher.verify("x".into(), "not a phc".into()).await.is_err());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_frees_up_afterwards() {
        // One slot, one waiter: with both taken by hashes in flight, a third is refused.
        let hasher = PasswordHasher::bounded(1, 1);
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let running = tokio::spawn({
            let hasher = hasher.clone();
            async move {
                hasher
                    .run(move || {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        Ok(())
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap()).await.unwrap();
        let waiting = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.hash("queued password".into()).await }
        });
        // The waiter holds its ticket once the admission semaphore shows it.
        while hasher.admission.available_permits() != 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(hasher.hash("one too many".into()).await, Err(PasswordError::Overloaded)));
        assert!(matches!(hasher.verify_dummy("one too many".into()).await, Err(PasswordError::Overloaded)));
        release_tx.send(()).unwrap();
        running.await.unwrap().unwrap();
        assert!(waiting.await.unwrap().is_ok());
        assert!(hasher.hash("room again".into()).await.is_ok());
    }
}
