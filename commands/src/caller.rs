//! Who a use case runs for: the user whose data it touches, the actor and request the
//! resulting events are attributed to, and the client's Idempotency-Key, if any.

use uuid::Uuid;

use crate::command_service::{Actor, CommandMeta};
use crate::idempotency::IdempotencyKey;

/// The caller of a use case.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user whose data the use case reads and changes (authorisation is by this id).
    pub user: Uuid,
    /// Actor, correlation and causation recorded on the events.
    pub meta: CommandMeta,
    /// The client's Idempotency-Key (commands run at most once per user and key).
    pub idempotency_key: Option<IdempotencyKey>,
}

impl Caller {
    /// An authenticated user acting for themself within the request `request_id`.
    pub fn user(user: Uuid, correlation_id: String, request_id: &str) -> Self {
        let meta = CommandMeta {
            actor: Actor::User(user),
            correlation_id,
            causation_id: Some(format!("request:{request_id}")),
        };
        Self { user, meta, idempotency_key: None }
    }

    /// A worker acting for `user` in reaction to `cause` (an event id), within the chain
    /// `correlation_id`. Workers make their commands idempotent with deterministic ids.
    pub fn system(worker: &'static str, user: Uuid, correlation_id: String, cause: String) -> Self {
        let meta = CommandMeta { actor: Actor::System(worker), correlation_id, causation_id: Some(cause) };
        Self { user, meta, idempotency_key: None }
    }

    /// The same caller with an Idempotency-Key.
    pub fn with_idempotency_key(mut self, key: Option<IdempotencyKey>) -> Self {
        self.idempotency_key = key;
        self
    }
}
