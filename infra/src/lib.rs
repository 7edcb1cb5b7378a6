//! colloquy's adapters to the outside world: configuration, telemetry, PostgreSQL, Kafka
//! (clients and the CloudEvents codec), Redis, password hashing and metrics.

pub mod cloudevents;
pub mod event_log;
pub mod kafka;
pub mod metrics;
pub mod passwords;
pub mod postgres;
pub mod redis_store;
pub mod settings;
pub mod telemetry;

pub use settings::Settings;
