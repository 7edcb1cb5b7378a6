//! Reply leases (`assistant_leases`): which worker is answering which reply, until when.
//!
//! A worker claims a reply's lease before it records `ReplyStarted`, renews it while it
//! streams, and drops it after the reply's final event. A lease that expired belongs to a
//! worker that stopped; another worker claims it and ends the reply.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// A reply whose worker stopped renewing its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Abandoned {
    /// The reply.
    pub reply_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The conversation's owner.
    pub owner_id: Uuid,
}

/// The lease table, for one worker.
#[derive(Clone)]
pub struct Leases {
    pool: PgPool,
    worker: String,
    ttl: Duration,
}

impl Leases {
    /// Leases held by `worker` for `ttl` at a time.
    pub fn new(pool: PgPool, worker: String, ttl: Duration) -> Self {
        Self { pool, worker, ttl }
    }

    /// This worker's name.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// How long a lease lasts unless renewed.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64()
    }

    /// Claims the reply: `true` when this worker now holds its lease (it was free, expired,
    /// or already this worker's), `false` while another worker holds a live one.
    pub async fn claim(&self, reply_id: Uuid, conversation_id: Uuid, owner_id: Uuid) -> Result<bool, sqlx::Error> {
        let claimed: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO assistant_leases (reply_id, conversation_id, owner_id, worker, expires_at)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
             ON CONFLICT (reply_id) DO UPDATE SET worker = excluded.worker, expires_at = excluded.expires_at
              WHERE assistant_leases.expires_at < now() OR assistant_leases.worker = excluded.worker
             RETURNING reply_id",
        )
        .bind(reply_id)
        .bind(conversation_id)
        .bind(owner_id)
        .bind(&self.worker)
        .bind(self.ttl_secs())
        .fetch_optional(&self.pool)
        .await?;
        Ok(claimed.is_some())
    }

    /// Extends this worker's lease; `false` when it no longer holds it (it expired and
    /// another worker took the reply over).
    pub async fn renew(&self, reply_id: Uuid) -> Result<bool, sqlx::Error> {
        let renewed = sqlx::query(
            "UPDATE assistant_leases SET expires_at = now() + make_interval(secs => $3)
              WHERE reply_id = $1 AND worker = $2",
        )
        .bind(reply_id)
        .bind(&self.worker)
        .bind(self.ttl_secs())
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Drops this worker's lease after the reply's final event.
    pub async fn release(&self, reply_id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM assistant_leases WHERE reply_id = $1 AND worker = $2")
            .bind(reply_id)
            .bind(&self.worker)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Claims up to `limit` expired leases for this worker (others skip them), so it can
    /// end their replies.
    pub async fn claim_abandoned(&self, limit: i64) -> Result<Vec<Abandoned>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE assistant_leases l SET worker = $1, expires_at = now() + make_interval(secs => $2)
               FROM (SELECT reply_id FROM assistant_leases WHERE expires_at < now()
                      ORDER BY expires_at LIMIT $3 FOR UPDATE SKIP LOCKED) expired
              WHERE l.reply_id = expired.reply_id
             RETURNING l.reply_id, l.conversation_id, l.owner_id",
        )
        .bind(&self.worker)
        .bind(self.ttl_secs())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }
}
