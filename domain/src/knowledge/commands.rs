use serde::Deserialize;
use uuid::Uuid;

use super::DocumentSource;

/// What can be asked of a KnowledgeDocument. The owner's commands name their actor: only
/// the owner may act on a document, and to anyone else it does not exist. The indexing
/// records come from the ingest worker (a system actor), so they name no actor; they name
/// the version they indexed instead.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum KnowledgeDocumentCommand {
    /// Create the document (version 1).
    CreateDocument {
        /// The new document's id (chosen by the caller).
        document_id: Uuid,
        /// The owner (the authenticated user).
        owner_id: Uuid,
        /// The title.
        title: String,
        /// Tags, as entered; normalised by the aggregate.
        tags: Vec<String>,
        /// An optional category.
        category: Option<String>,
        /// Pasted text, or an uploaded file of the owner's (checked by the use case).
        source: DocumentSource,
    },
    /// Change the metadata and/or the text; `None` leaves a field as it is. A text change
    /// makes a new version, to be indexed anew; documents made from a file refuse one.
    ReviseDocument {
        /// Who asks.
        actor_id: Uuid,
        /// A new title.
        title: Option<String>,
        /// New tags, replacing the old ones (`Some(vec![])` removes them all).
        tags: Option<Vec<String>>,
        /// A new category, or `Some(None)` to remove it.
        category: Option<Option<String>>,
        /// New text.
        text: Option<String>,
    },
    /// Record that a version was chunked, embedded and indexed.
    RecordDocumentIndexed {
        /// The version indexed.
        version: u32,
        /// Chunks written to the index.
        chunks: u32,
        /// The splitter and its settings (`text-splitter characters 500..2000, overlap 200`).
        chunking: String,
        /// The embedding model (`local/all-minilm-l6-v2`, `openai/text-embedding-3-small`).
        embedding_model: String,
        /// Dimensions of its vectors.
        embedding_dimension: u32,
    },
    /// Record that a version could not be indexed.
    RecordDocumentIndexingFailed {
        /// The version that failed.
        version: u32,
        /// Stable snake_case code (`embedding_failed`, `source_file_failed`, ...).
        code: String,
        /// What went wrong, for the owner to read.
        message: String,
    },
    /// Delete the document; terminal.
    DeleteDocument {
        /// Who asks.
        actor_id: Uuid,
    },
}
