//! The User aggregate: registration, profile and preferences, deactivation, role.

mod aggregate;
mod commands;
mod errors;
mod events;

pub use aggregate::{User, UserStatus, SNAPSHOT_EVERY};
pub use commands::UserCommand;
pub use errors::UserError;
pub use events::{ProfileUpdated, Role, UserDeactivated, UserEvent, UserRegistered};

/// Longest accepted full name, in characters.
pub const FULL_NAME_MAX: usize = 200;
