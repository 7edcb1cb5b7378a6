//! Port doubles shared by the Conversation tests.

use async_trait::async_trait;
use uuid::Uuid;

use super::{MessageLookup, MessageNode};
use crate::decision::PortError;

/// A lookup whose event store cannot be reached: every question fails.
pub(super) struct Unreachable;

#[async_trait]
impl MessageLookup for Unreachable {
    async fn message_exists(&self, _: Uuid, _: Uuid) -> Result<bool, PortError> {
        Err(PortError::new("message lookup", "event store unreachable"))
    }

    async fn reply_exists(&self, _: Uuid, _: Uuid) -> Result<bool, PortError> {
        Err(PortError::new("message lookup", "event store unreachable"))
    }

    async fn node(&self, _: Uuid, _: Uuid) -> Result<Option<MessageNode>, PortError> {
        Err(PortError::new("message lookup", "event store unreachable"))
    }

    async fn latest_leaf(&self, _: Uuid, _: Uuid) -> Result<Option<Uuid>, PortError> {
        Err(PortError::new("message lookup", "event store unreachable"))
    }

    async fn requested_reply(&self, _: Uuid, _: Uuid) -> Result<Option<Uuid>, PortError> {
        Err(PortError::new("message lookup", "event store unreachable"))
    }
}

