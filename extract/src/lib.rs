//! Text extraction and chunking for the knowledge base.
//!
//! Three steps, each a pure function of its inputs:
//!
//! 1. [`sniff`] decides the [`Format`] of an upload from its first bytes (never from the
//!    client's Content-Type, and from the file name only to tell Markdown from plain text).
//! 2. [`extract`] turns the whole file into plain text (and a page count for PDFs), refusing
//!    files that are unsafe to unpack (zip bombs) or whose text is over the [`Limits`].
//! 3. [`chunk`] cuts that text into overlapping, token-bounded [`TextChunk`]s for embedding.
//!
//! The crate does no I/O beyond reading the byte slices it is given, and it is CPU-bound:
//! parsing a large PDF or tokenising a long text takes from milliseconds to seconds. Async
//! callers must run [`extract`] and [`chunk`] on blocking threads (`spawn_blocking`), bounded by
//! a semaphore sized to the cores, never on an async worker.
//!
//! Everything here is deterministic: the same bytes and settings always give the same format,
//! text and chunks, which is what lets the ingest worker derive chunk ids from positions.

mod chunk;
mod error;
mod extract;
mod format;
mod text;

pub use chunk::{chunk, ChunkSettings, TextChunk};
pub use error::ExtractError;
pub use extract::{extract, Extracted, Limits};
pub use format::{sniff, Format, UnknownFormat, Unsupported, SNIFF_LEN};
