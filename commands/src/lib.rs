//! The write side: the command service over the event store, user registration and login
//! (credentials kept outside the event log), and the relay that publishes committed events
//! to Kafka.

pub mod command_service;
pub mod credentials;
pub mod relay;

pub use command_service::{CommandError, CommandMeta, CommandService, Committed};
