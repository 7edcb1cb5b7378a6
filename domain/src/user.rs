//! The User aggregate: registration, profile and preferences, deactivation, role.

mod aggregate;
mod commands;
mod errors;
mod events;

pub use aggregate::{User, UserStatus, SNAPSHOT_EVERY};
pub use commands::UserCommand;
pub use errors::UserError;
pub use events::{ApiKeyCreated, ApiKeyRevoked, ProfileUpdated, Role, UserDeactivated, UserEvent, UserRegistered};

/// Longest accepted API key name, in characters.
pub const API_KEY_NAME_MAX: usize = 100;

/// Most live API keys per user.
pub const API_KEYS_MAX: usize = 20;

/// Longest accepted full name, in characters.
pub const FULL_NAME_MAX: usize = 200;
