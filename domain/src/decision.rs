//! Why an aggregate did not decide: a business rejection, or a port the decision needed
//! failed. The two never mix: each aggregate's own error enum holds only its business
//! rejections, and infrastructure failures reached through a port travel as [`PortError`]
//! with their cause attached.

/// An infrastructure failure behind a port (the event store did not answer, say). Not a
/// business rule: the command may succeed when retried.
#[derive(Debug, thiserror::Error)]
#[error("{port} failed")]
pub struct PortError {
    /// Which port.
    pub port: &'static str,
    /// What went wrong underneath.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl PortError {
    /// A failure of `port` caused by `source`.
    pub fn new(port: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self { port, source: source.into() }
    }
}

/// The error type of every aggregate's `handle`: `R` is the aggregate's business rejection.
#[derive(Debug, thiserror::Error)]
pub enum Refusal<R: std::error::Error> {
    /// A business rule said no; final for this state.
    #[error(transparent)]
    Rejected(R),
    /// A port the decision needed failed; retrying may succeed.
    #[error(transparent)]
    PortFailed(PortError),
}

impl<R: std::error::Error> From<R> for Refusal<R> {
    fn from(rejection: R) -> Self {
        Self::Rejected(rejection)
    }
}

/// Two refusals are equal when they are the same rejection, or failures of the same port
/// with the same message (what given/when/then tests can compare).
impl<R: std::error::Error + PartialEq> PartialEq for Refusal<R> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Rejected(a), Self::Rejected(b)) => a == b,
            (Self::PortFailed(a), Self::PortFailed(b)) => {
                a.port == b.port && a.source.to_string() == b.source.to_string()
            }
            _ => false,
        }
    }
}

/// Implemented by every aggregate's error type, so the command service can tell a business
/// rejection from a failed port without knowing the aggregate.
pub trait Decided: std::error::Error + Send + Sync + 'static {
    /// The business rejection.
    type Rejection: std::error::Error + Send + Sync + 'static;

    /// The rejection, or the port failure.
    fn split(self) -> Result<Self::Rejection, PortError>;
}

impl<R: std::error::Error + Send + Sync + 'static> Decided for Refusal<R> {
    type Rejection = R;

    fn split(self) -> Result<R, PortError> {
        match self {
            Self::Rejected(r) => Ok(r),
            Self::PortFailed(e) => Err(e),
        }
    }
}
