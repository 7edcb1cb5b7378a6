//! The aggregate registry: what the rest of the system knows about each aggregate type,
//! derived from its one declaration (its `Aggregate` impl, its `domain_events!` enum and its
//! [`Registered`] impl). The event catalog, Kafka topics, JSON Schemas, CloudEvent types,
//! the audit tooling's `history`/`state` dispatch and the snapshot policy all come from here.

use cqrs_es::Aggregate;
use serde_json::Value;

use crate::decision::Decided;
use crate::event_catalog::{cloud_event_type, EventCatalog, EventExamples, EventTypeSpec};

/// An aggregate the system runs. Implemented next to the aggregate; listed once in
/// `aggregates!` (`domain/src/lib.rs`).
pub trait Registered: Aggregate<Error: Decided, Event: EventCatalog + EventExamples> + Clone + 'static {
    /// Events between snapshots (`None`: replay the whole history on every load; fine for
    /// aggregates with few events).
    const SNAPSHOT_EVERY: Option<usize>;
}

/// The business rejection of aggregate `A`.
pub type RejectionOf<A> = <<A as Aggregate>::Error as Decided>::Rejection;

/// One registered aggregate type, as data.
#[derive(Clone)]
pub struct AggregateType {
    /// The type name stored in the event store (`Aggregate::TYPE`).
    pub name: &'static str,
    /// Events between snapshots.
    pub snapshot_every: Option<usize>,
    /// Its event types.
    pub events: Vec<EventTypeSpec>,
    /// Sample payloads (`data`), by event type, from the aggregate's [`EventExamples`].
    pub examples: Vec<(String, Value)>,
    replay: fn(&[Value]) -> Result<Value, serde_json::Error>,
    decode: fn(Value) -> Result<(), serde_json::Error>,
}

impl std::fmt::Debug for AggregateType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateType").field("name", &self.name).finish_non_exhaustive()
    }
}

/// An event as (event type, payload), as the event store keeps it.
fn untagged<E: serde::Serialize>(event: &E) -> Option<(String, Value)> {
    match serde_json::to_value(event).ok()? {
        Value::Object(map) if map.len() == 1 => map.into_iter().next(),
        _ => None,
    }
}

fn replay<A: Registered>(tagged: &[Value]) -> Result<Value, serde_json::Error> {
    let mut aggregate = A::default();
    for event in tagged {
        aggregate.apply(serde_json::from_value(event.clone())?);
    }
    serde_json::to_value(&aggregate)
}

fn decode<A: Registered>(tagged: Value) -> Result<(), serde_json::Error> {
    serde_json::from_value::<A::Event>(tagged).map(|_| ())
}

impl AggregateType {
    /// The entry of `A`.
    pub fn of<A: Registered>() -> Self {
        Self {
            name: A::TYPE,
            snapshot_every: A::SNAPSHOT_EVERY,
            events: A::Event::event_types(),
            examples: A::Event::examples().iter().filter_map(untagged).collect(),
            replay: replay::<A>,
            decode: decode::<A>,
        }
    }

    /// The Kafka topic of its events, before any deployment prefix: `colloquy.<type>.events`.
    pub fn topic(&self) -> String {
        topic_of(self.name)
    }

    /// The state after `events` (each `{"<EventType>": payload}`, in order), as JSON.
    pub fn replay(&self, events: &[Value]) -> Result<Value, serde_json::Error> {
        (self.replay)(events)
    }

    /// Checks that a stored event (`{"<EventType>": payload}`) is one of this aggregate's.
    pub fn decode(&self, event: Value) -> Result<(), serde_json::Error> {
        (self.decode)(event)
    }

    /// The CloudEvents `type` of each of its event types, with the payload schema.
    pub fn cloud_event_types(&self) -> impl Iterator<Item = (String, &EventTypeSpec)> + '_ {
        self.events.iter().map(|e| (cloud_event_type(self.name, e.event_type, e.version), e))
    }
}

/// The topic of aggregate type `name`, before any deployment prefix.
pub fn topic_of(name: &str) -> String {
    format!("colloquy.{}.events", name.to_lowercase())
}

/// The registered aggregate called `name` (exactly as stored).
pub fn find(name: &str) -> Option<&'static AggregateType> {
    crate::aggregates().iter().find(|a| a.name == name)
}

/// The registered aggregate whose lower-cased name is `lower` (as in CloudEvent sources
/// and types).
pub fn find_lowercase(lower: &str) -> Option<&'static AggregateType> {
    crate::aggregates().iter().find(|a| a.name.eq_ignore_ascii_case(lower))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_event_types_are_unique() {
        let all = crate::aggregates();
        let mut names: Vec<_> = all.iter().map(|a| a.name.to_lowercase()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "aggregate names differ in more than case");
        for a in all {
            let mut types: Vec<_> = a.events.iter().map(|e| e.event_type).collect();
            types.sort();
            types.dedup();
            assert_eq!(types.len(), a.events.len(), "{} declares an event type twice", a.name);
        }
    }

    #[test]
    fn every_event_type_has_a_sample_that_reads_back() {
        for a in crate::aggregates() {
            for spec in &a.events {
                let samples: Vec<_> = a.examples.iter().filter(|(t, _)| t == spec.event_type).collect();
                assert!(!samples.is_empty(), "{}.{} has no sample", a.name, spec.event_type);
                for (event_type, data) in samples {
                    assert!(a.decode(serde_json::json!({ event_type: data })).is_ok(), "{event_type}: {data}");
                }
            }
        }
    }

    #[test]
    fn lookups_find_each_registered_aggregate() {
        for a in crate::aggregates() {
            assert_eq!(find(a.name).map(|f| f.name), Some(a.name));
            assert_eq!(find_lowercase(&a.name.to_lowercase()).map(|f| f.name), Some(a.name));
        }
        assert!(find("Nope").is_none());
    }

    #[test]
    fn replay_folds_stored_events_into_state() {
        let user = find(crate::User::TYPE).unwrap();
        let registered = serde_json::json!({"UserRegistered": {
            "user_id": uuid::Uuid::from_u128(7), "email": "ada@example.com", "full_name": "Ada", "role": "member"}});
        let deactivated = serde_json::json!({"UserDeactivated": {"reason": null}});
        let state = user.replay(&[registered.clone(), deactivated]).unwrap();
        assert_eq!(state["status"], "Deactivated");
        assert_eq!(state["full_name"], "Ada");
        assert!(user.decode(registered).is_ok());
        assert!(user.decode(serde_json::json!({"ConversationStarted": {}})).is_err());
    }
}
