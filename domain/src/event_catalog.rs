//! Event types, declared once: [`domain_events!`] turns the list of an aggregate's events
//! (variant, payload type, payload version) into the event enum, its `DomainEvent` impl
//! (the stored `event_type` and `event_version`) and its catalog entry with JSON Schemas.
//! Nothing else names an event type or a version.

use schemars::schema::RootSchema;
use schemars::{schema_for, JsonSchema};

/// One event type of an aggregate: its stored name, payload version and payload schema.
#[derive(Debug, Clone)]
pub struct EventTypeSpec {
    /// The event type, as stored in the event store (the enum variant's name).
    pub event_type: &'static str,
    /// The payload version, as stored in the event store.
    pub version: &'static str,
    /// The JSON Schema of the payload (`data` in the CloudEvent).
    pub schema: RootSchema,
}

impl EventTypeSpec {
    /// The entry for payload type `T`.
    pub fn of<T: JsonSchema>(event_type: &'static str, version: &'static str) -> Self {
        Self { event_type, version, schema: schema_for!(T) }
    }
}

/// An event enum that knows its own event types (implemented by [`domain_events!`]).
pub trait EventCatalog {
    /// Every event type of the enum, in declaration order.
    fn event_types() -> Vec<EventTypeSpec>;
}

/// Sample events of an aggregate, at least one of every event type, written next to the
/// events themselves. The contract test checks every sample against its published schema,
/// so a field the schema does not know (or a required one the payload lacks) cannot ship.
pub trait EventExamples: Sized {
    /// The samples.
    fn examples() -> Vec<Self>;
}

/// The CloudEvents `type` of an event: `colloquy.<aggregate>.<EventType>.v<major>`.
pub fn cloud_event_type(aggregate: &str, event_type: &str, version: &str) -> String {
    let major = version.split('.').next().unwrap_or("1");
    format!("colloquy.{}.{}.v{}", aggregate.to_lowercase(), event_type, major)
}

/// Declares an aggregate's event enum: one line per event, `Variant(Payload) = "version"`.
/// The variant's name is the stored `event_type`; a changed payload shape gets a new
/// version and an upcaster, never a rewrite of stored events.
#[macro_export]
macro_rules! domain_events {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident($payload:ty) = $version:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* $variant($payload) ),+
        }

        impl cqrs_es::DomainEvent for $name {
            fn event_type(&self) -> String {
                match self { $( Self::$variant(_) => stringify!($variant) ),+ }.to_string()
            }

            fn event_version(&self) -> String {
                match self { $( Self::$variant(_) => $version ),+ }.to_string()
            }
        }

        impl $crate::event_catalog::EventCatalog for $name {
            fn event_types() -> Vec<$crate::event_catalog::EventTypeSpec> {
                vec![ $( $crate::event_catalog::EventTypeSpec::of::<$payload>(stringify!($variant), $version) ),+ ]
            }
        }
    };
}

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
}
