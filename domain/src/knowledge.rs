//! The KnowledgeDocument aggregate: a document of a person's knowledge base, made from
//! pasted text or from an uploaded file; its title, tags and category; its versions (a
//! text change is a new version, indexed anew) and whether the current version is indexed.

mod aggregate;
mod commands;
mod errors;
mod events;
#[cfg(test)]
mod indexing_tests;
mod labels;

pub use aggregate::{DocumentStatus, KnowledgeDocument, SNAPSHOT_EVERY};
pub use commands::KnowledgeDocumentCommand;
pub use errors::KnowledgeDocumentError;
pub use events::{
    DocumentCreated, DocumentDeleted, DocumentIndexed, DocumentIndexingFailed, DocumentRevised, DocumentSource,
    DocumentUpdated, KnowledgeDocumentEvent,
};
pub use labels::{normalise_tags, CATEGORY_MAX, TAGS_MAX, TAG_MAX};

/// Longest accepted document text, in characters.
///
/// The text travels inside `DocumentCreated`/`DocumentRevised`, and each event is one Kafka
/// record: librdkafka's default `message.max.bytes` is 1,000,000. At most 4 bytes a
/// character in JSON (control characters other than line breaks and tabs are refused, and
/// those escape to 2), 200,000 characters stay below 800 KB, leaving room for the title,
/// tags and the CloudEvent envelope. Longer material goes in as a file, whose text is kept
/// in storage rather than in events.
pub const DOCUMENT_TEXT_MAX: usize = 200_000;

/// Longest accepted description of how a version was chunked, in characters.
pub const CHUNKING_MAX: usize = 500;
