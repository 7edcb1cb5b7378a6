use super::DocumentStatus;
use crate::values::TextField;

/// Business rejections of KnowledgeDocument commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum KnowledgeDocumentError {
    /// `CreateDocument` on an existing id (deleted documents included).
    #[error("the document already exists")]
    AlreadyCreated,
    /// The document does not exist, or belongs to someone else.
    #[error("the document does not exist")]
    NotFound,
    /// The document was deleted.
    #[error("the document was deleted")]
    Deleted,
    /// The file to make a document from does not exist or is someone else's. Decided by
    /// the use case, which reads the files read model; the aggregate only keeps the id.
    #[error("the source file does not exist")]
    SourceFileNotFound,
    /// Empty or overlong title.
    #[error("the title must be between 1 and {max} characters")]
    InvalidTitle {
        /// The limit.
        max: usize,
    },
    /// A tag empty (after trimming) or longer than the limit.
    #[error("each tag must be between 1 and {max} characters")]
    InvalidTag {
        /// The limit.
        max: usize,
    },
    /// More distinct tags than the limit.
    #[error("a document has at most {max} tags")]
    TooManyTags {
        /// The limit.
        max: usize,
    },
    /// Empty or overlong category.
    #[error("the category must be between 1 and {max} characters")]
    InvalidCategory {
        /// The limit.
        max: usize,
    },
    /// Blank or overlong text.
    #[error("the text must hold between 1 and {max} characters and not be blank")]
    InvalidText {
        /// The limit.
        max: usize,
    },
    /// A control character in the title, a tag, the category or the text (text allows
    /// line breaks and tabs, the title tabs and line feeds).
    #[error("the {field} contains a control character")]
    ControlCharacter {
        /// Where.
        field: TextField,
    },
    /// A bidirectional override/isolate or zero-width character in the title, a tag or the
    /// category.
    #[error("the {field} contains a bidirectional-override or zero-width character")]
    InvisibleCharacter {
        /// Where.
        field: TextField,
    },
    /// A revision that names no field.
    #[error("the revision changes nothing")]
    EmptyRevision,
    /// A text change on a document made from a file: its text is the file's.
    #[error("the text of a document made from a file cannot be edited; upload a new file instead")]
    FileSourcedText,
    /// An indexing record for a version older than the current one (a late worker): the
    /// current version must not be marked by it.
    #[error("version {version} is stale; the document is at version {current}")]
    StaleVersion {
        /// The version named.
        version: u32,
        /// The current version.
        current: u32,
    },
    /// An indexing record for a version the document never had.
    #[error("the document has no version {version}; it is at version {current}")]
    UnknownVersion {
        /// The version named.
        version: u32,
        /// The current version.
        current: u32,
    },
    /// An indexing record for the current version after it was already indexed or failed.
    #[error("the current version is not being indexed (it is {status})")]
    NotIndexing {
        /// Where the current version is instead.
        status: DocumentStatus,
    },
    /// Empty or overlong chunking description.
    #[error("the chunking description must be between 1 and {max} characters")]
    InvalidChunking {
        /// The limit.
        max: usize,
    },
    /// Empty or overlong embedding model name.
    #[error("the embedding model name must be between 1 and {max} characters")]
    InvalidEmbeddingModel {
        /// The limit.
        max: usize,
    },
    /// An embedding dimension of zero.
    #[error("the embedding dimension must be positive")]
    InvalidEmbeddingDimension,
    /// The failure code is not snake_case ASCII of at most the limit.
    #[error("the failure code must be snake_case, at most {max} characters")]
    InvalidFailureCode {
        /// The limit.
        max: usize,
    },
    /// The failure message is empty, too long, or holds control or invisible characters.
    #[error("the failure message must be between 1 and {max} characters of readable text")]
    InvalidFailureMessage {
        /// The limit.
        max: usize,
    },
}
