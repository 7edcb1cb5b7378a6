//! The session check of every authenticated request, with the checks of concurrent requests
//! gathered into one statement.
//!
//! Each request's check is a round trip to PostgreSQL, and sqlx follows every statement with
//! a second one (a connection returning to the pool is pinged first, and no setting turns
//! that off). Under load, checks queue here while one statement is in flight and the next
//! statement answers all of them: with `lanes` statements in flight at most, a burst of
//! checks costs a few statements instead of one each.
//!
//! The guarantee is the single check's: a check's statement starts after the check was
//! asked for, so it sees every revocation (logout, a reused refresh token, a deactivated
//! account) committed before the request arrived. Nothing is cached; a request never waits
//! for more than the statement in flight and its own.

use std::sync::Arc;

use colloquy_infra::metrics::Metrics;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::sessions::{SessionToken, Sessions};

/// Checks answered by one statement at most. A few kilobytes of parameters.
pub const MAX_BATCH: usize = 256;

/// Checks waiting for a statement at most; past that, asking waits for room (backpressure
/// on the requests rather than memory without bound).
const QUEUE: usize = 4_096;

/// Why a check has no answer. Either way the request must not pass.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccessCheckError {
    /// The statement failed (every check it held gets this).
    #[error("the session check failed")]
    Database(#[source] Arc<sqlx::Error>),
    /// The checker is gone (the process is stopping).
    #[error("the session checker has stopped")]
    Stopped,
}

/// A handle to the checker: cheap to clone, shared by every request of a process.
#[derive(Clone)]
pub struct AccessChecks {
    queue: mpsc::Sender<Pending>,
}

/// A check waiting for its statement.
struct Pending {
    token: SessionToken,
    answer: oneshot::Sender<Result<bool, AccessCheckError>>,
}

impl AccessChecks {
    /// Starts the checker on the current Tokio runtime, which must be the one that owns the
    /// sessions' pool (a sqlx connection belongs to the runtime that opened it). It runs
    /// until every handle is dropped. `lanes` statements run at once at most (at least one).
    pub fn spawn(sessions: Sessions, lanes: usize, metrics: Metrics) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(dispatch(sessions, waiting, Arc::new(Semaphore::new(lanes.max(1))), metrics));
        Self { queue }
    }

    /// Whether `token` may still be used (see [`Sessions::access_allowed`]).
    pub async fn allowed(&self, token: SessionToken) -> Result<bool, AccessCheckError> {
        let (answer, answered) = oneshot::channel();
        self.queue.send(Pending { token, answer }).await.map_err(|_| AccessCheckError::Stopped)?;
        answered.await.map_err(|_| AccessCheckError::Stopped)?
    }

    /// Checks waiting for a lane (not counting those of statements in flight).
    pub fn waiting(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

/// Takes a lane, then every check waiting (up to [`MAX_BATCH`]), and runs them as one
/// statement in a task of its own. While all lanes are busy, checks gather in the queue.
async fn dispatch(sessions: Sessions, mut waiting: mpsc::Receiver<Pending>, lanes: Arc<Semaphore>, metrics: Metrics) {
    loop {
        let Ok(lane) = lanes.clone().acquire_owned().await else { return };
        let Some(first) = waiting.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        tokio::spawn(answer(sessions.clone(), batch, lane, metrics.clone()));
    }
}

async fn answer(sessions: Sessions, batch: Vec<Pending>, lane: OwnedSemaphorePermit, metrics: Metrics) {
    // A request abandoned meanwhile needs no answer.
    let batch: Vec<Pending> = batch.into_iter().filter(|p| !p.answer.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let tokens: Vec<SessionToken> = batch.iter().map(|p| p.token).collect();
    let outcome = sessions.access_allowed_many(&tokens).await;
    drop(lane);
    metrics.session_check_statements.inc();
    metrics.session_checks.inc_by(batch.len() as u64);
    // One row per token is what the statement answers; anything else refuses them all.
    let outcome = outcome.and_then(|allowed| {
        if allowed.len() == batch.len() {
            Ok(allowed)
        } else {
            Err(sqlx::Error::Protocol(format!(
                "the session check answered {} rows for {} tokens",
                allowed.len(),
                batch.len()
            )))
        }
    });
    match outcome {
        Ok(allowed) => {
            for (pending, allowed) in batch.into_iter().zip(allowed) {
                let _ = pending.answer.send(Ok(allowed));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for pending in batch {
                let _ = pending.answer.send(Err(AccessCheckError::Database(e.clone())));
            }
        }
    }
}
