//! The list of every event type, with its JSON Schema, for the published contract.
//!
//! `schemas/` in the repository holds the output of [`schemas`]; a test in the root
//! package fails when the two disagree, so a payload change cannot ship unpublished.

use schemars::schema::RootSchema;
use schemars::{schema_for, JsonSchema};

use crate::conversation::*;
use crate::user::*;

/// One event type of the contract.
#[derive(Debug, Clone)]
pub struct EventType {
    /// The aggregate type (`User`, `Conversation`, ...).
    pub aggregate: &'static str,
    /// The event type, as stored in the event store.
    pub event_type: &'static str,
    /// The payload version, as stored in the event store.
    pub version: &'static str,
    /// The JSON Schema of the payload (`data` in the CloudEvent).
    pub schema: RootSchema,
}

fn entry<T: JsonSchema>(aggregate: &'static str, event_type: &'static str) -> EventType {
    EventType { aggregate, event_type, version: "1.0", schema: schema_for!(T) }
}

/// Every event type the system emits.
pub fn schemas() -> Vec<EventType> {
    vec![
        entry::<UserRegistered>("User", "UserRegistered"),
        entry::<ProfileUpdated>("User", "ProfileUpdated"),
        entry::<UserDeactivated>("User", "UserDeactivated"),
        entry::<ConversationStarted>("Conversation", "ConversationStarted"),
        entry::<ConversationRenamed>("Conversation", "ConversationRenamed"),
        entry::<ConversationArchived>("Conversation", "ConversationArchived"),
        entry::<ConversationUnarchived>("Conversation", "ConversationUnarchived"),
        entry::<ConversationDeleted>("Conversation", "ConversationDeleted"),
        entry::<UserMessagePosted>("Conversation", "UserMessagePosted"),
    ]
}

/// The CloudEvents `type` of an event: `colloquy.<aggregate>.<EventType>.v<major>`.
pub fn cloud_event_type(aggregate: &str, event_type: &str, version: &str) -> String {
    let major = version.split('.').next().unwrap_or("1");
    format!("colloquy.{}.{}.v{}", aggregate.to_lowercase(), event_type, major)
}

/// Every aggregate type, each with its own Kafka topic.
pub const AGGREGATE_TYPES: &[&str] = &["User", "Conversation"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_event_type_uses_major_version() {
        assert_eq!(
            cloud_event_type("Conversation", "UserMessagePosted", "1.0"),
            "colloquy.conversation.UserMessagePosted.v1"
        );
        assert_eq!(cloud_event_type("User", "UserRegistered", "2.3"), "colloquy.user.UserRegistered.v2");
    }

    #[test]
    fn catalog_names_are_unique() {
        let all = schemas();
        let mut names: Vec<_> = all.iter().map(|e| (e.aggregate, e.event_type)).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }
}
