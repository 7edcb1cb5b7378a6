//! colloquy's adapters to the outside world: configuration, telemetry, PostgreSQL, Kafka
//! (clients and the CloudEvents codec), the event store's SQL, Redis, password hashing,
//! metrics, the operations listener every process offers, and file storage (a folder or
//! an S3-compatible bucket).

pub mod assistant_settings;
pub mod cloudevents;
pub mod event_append;
pub mod event_store;
pub mod file_storage;
pub mod kafka;
pub mod kafka_reader;
pub mod knowledge_index;
pub mod knowledge_settings;
pub mod metrics;
pub mod ops;
pub mod passwords;
pub mod postgres;
pub mod redis_store;
pub mod reply_streams;
pub mod secrets;
pub mod settings;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use settings::Settings;
