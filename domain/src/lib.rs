//! colloquy's domain: aggregates, their commands, events and errors, and value types.
//!
//! Nothing in this crate does I/O. Aggregates decide from their own state and from what
//! the command carries; the command service in `colloquy-commands` loads and stores them.

pub mod conversation;
pub mod event_catalog;
pub mod metadata;
pub mod user;
pub mod values;

pub use conversation::Conversation;
pub use user::User;
