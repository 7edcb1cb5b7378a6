//! What a use case answers when it does not succeed. Business rejections (`R`, the
//! aggregate's own enum or the use case's) are final and replayed for a repeated
//! Idempotency-Key; everything else is either a conflict worth retrying or a failure of the
//! infrastructure, which keeps its cause.

use colloquy_domain::decision::PortError;
use colloquy_infra::event_store::EventStoreError;
use colloquy_infra::passwords::PasswordError;

use crate::command_service::{CommandError, StoreError};

/// Why a use case did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum UseCaseError<R: std::error::Error> {
    /// A business rule said no. `replayed`: this is the recorded answer to an earlier
    /// request with the same Idempotency-Key.
    #[error("{rejection}")]
    Rejected {
        /// The rejection.
        rejection: R,
        /// Whether it was replayed from an earlier request.
        replayed: bool,
    },
    /// Concurrent writers kept winning; the request may be retried as is.
    #[error("the resource was changed concurrently; retry the request")]
    Conflict,
    /// The Idempotency-Key was used before with a different request.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    /// The first request with this Idempotency-Key is still running.
    #[error("a request with this Idempotency-Key is still being processed")]
    RequestInProgress,
    /// The request would take the user past a quota. Not final (not recorded for an
    /// Idempotency-Key): the same request may succeed once usage drops or the day turns.
    #[error(transparent)]
    QuotaExceeded(crate::quotas::QuotaExceeded),
    /// The user has spent the day's or the month's tokens: no provider call until it resets.
    /// Not final either.
    #[error(transparent)]
    TokenQuotaExceeded(crate::quotas::TokenQuotaExceeded),
    /// The infrastructure failed.
    #[error("the request could not be completed")]
    Failed(#[from] Failure),
}

impl<R: std::error::Error> UseCaseError<R> {
    /// A fresh (not replayed) rejection.
    pub fn rejected(rejection: impl Into<R>) -> Self {
        Self::Rejected { rejection: rejection.into(), replayed: false }
    }

    /// A command's failure, its rejection converted to the use case's.
    pub fn from_command<Q: std::error::Error + Into<R>>(e: CommandError<Q>) -> Self {
        match e {
            CommandError::Rejected(r) => Self::rejected(r),
            CommandError::Conflict => Self::Conflict,
            // A guard's refusal is explained by the use case that set the guard (quotas);
            // one that reaches here unexplained is a fault.
            CommandError::Refused(reason) => {
                Self::Failed(Failure::Store(StoreError::from(Box::<dyn std::error::Error + Send + Sync>::from(
                    format!("unexplained refusal of an append: {reason}"),
                ))))
            }
            CommandError::Port(e) => Self::Failed(Failure::Port(e)),
            CommandError::Store(e) => Self::Failed(Failure::Store(e)),
        }
    }
}

impl<R: std::error::Error> From<CommandError<R>> for UseCaseError<R> {
    fn from(e: CommandError<R>) -> Self {
        Self::from_command(e)
    }
}

/// An infrastructure failure underneath a use case or query.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The event store (through cqrs-es) failed.
    #[error("event store failure")]
    Store(#[source] StoreError),
    /// A port a decision needed failed.
    #[error(transparent)]
    Port(PortError),
    /// Reading the event store failed.
    #[error("event store read failed")]
    EventStore(#[from] EventStoreError),
    /// A query on a write-side table failed.
    #[error("database failure")]
    Database(#[from] sqlx::Error),
    /// The credentials table failed.
    #[error("credentials failure")]
    Credentials(#[from] crate::credentials::CredentialsError),
    /// Password hashing failed.
    #[error("password hashing failed")]
    Passwords(#[from] PasswordError),
    /// A recorded answer could not be written or read back.
    #[error("recorded answer unreadable")]
    Recording(#[from] serde_json::Error),
    /// The knowledge base's chunk index failed.
    #[error("knowledge index failure")]
    Index(#[from] colloquy_infra::knowledge_index::IndexError),
}

impl<R: std::error::Error> From<sqlx::Error> for UseCaseError<R> {
    fn from(e: sqlx::Error) -> Self {
        Self::Failed(e.into())
    }
}

impl<R: std::error::Error> From<PasswordError> for UseCaseError<R> {
    fn from(e: PasswordError) -> Self {
        Self::Failed(e.into())
    }
}

impl<R: std::error::Error> From<crate::credentials::CredentialsError> for UseCaseError<R> {
    fn from(e: crate::credentials::CredentialsError) -> Self {
        Self::Failed(e.into())
    }
}

impl<R: std::error::Error> From<crate::quotas::ReserveError> for UseCaseError<R> {
    fn from(e: crate::quotas::ReserveError) -> Self {
        match e {
            crate::quotas::ReserveError::Exceeded(q) => Self::QuotaExceeded(q),
            crate::quotas::ReserveError::TokensSpent(t) => Self::TokenQuotaExceeded(t),
            crate::quotas::ReserveError::Database(e) => Self::Failed(e.into()),
        }
    }
}

impl<R: std::error::Error> From<EventStoreError> for UseCaseError<R> {
    fn from(e: EventStoreError) -> Self {
        Self::Failed(e.into())
    }
}
