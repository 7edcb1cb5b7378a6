//! The ingest worker (`colloquy ingest`): a consumer group on the File and KnowledgeDocument
//! topics that extracts uploaded files, chunks and embeds document versions into the chunk
//! index, and records what happened on the aggregates as a system actor.

mod reembed;
mod work;
mod worker;

pub use reembed::{reembed, ReembedError, ReembedReport};
pub use work::{handle, IngestDeps, Retry, WORKER_NAME};
pub use worker::Ingest;
