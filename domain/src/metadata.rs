//! Keys of the metadata map stored beside every event.
//!
//! The event store keeps metadata as a string map next to the payload; the relay copies
//! these keys into the CloudEvents extension attributes of the same names.

/// The authenticated user (or `system:<worker>`) who caused the event.
pub const ACTOR: &str = "actor";
/// Request-scoped id shared by every event a request or a chain of reactions produced.
pub const CORRELATION_ID: &str = "correlation_id";
/// The id of the command or event that directly caused this event.
pub const CAUSATION_ID: &str = "causation_id";
