use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a document is made from, tagged by `kind`: `{"kind": "text", "text": ...}` or
/// `{"kind": "file", "file_id": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DocumentSource {
    /// Text pasted by the owner.
    Text {
        /// The text (personal data), kept as written.
        text: String,
    },
    /// An uploaded file of the owner's; its extracted text is kept in storage.
    File {
        /// The file.
        file_id: Uuid,
    },
}

/// A document was created; its first version is to be indexed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DocumentCreated {
    /// The document's id.
    pub document_id: Uuid,
    /// Its owner.
    pub owner_id: Uuid,
    /// The first version: always 1.
    pub version: u32,
    /// The title (personal data).
    pub title: String,
    /// Tags: lower case, distinct, in the order given.
    pub tags: Vec<String>,
    /// The category, if any.
    pub category: Option<String>,
    /// What it is made from.
    pub source: DocumentSource,
}

/// Metadata changed; the text and the version did not. Absent fields did not change.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct DocumentUpdated {
    /// The new title (personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The new tags, replacing the old ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// The new category (`null` removes it).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::double_option")]
    #[schemars(with = "Option<String>")]
    pub category: Option<Option<String>>,
}

/// The text changed: a new version, to be indexed anew (the previous version's index is
/// superseded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DocumentRevised {
    /// The new version (the previous one plus one).
    pub version: u32,
    /// The new text (personal data), kept as written.
    pub text: String,
}

/// A version was chunked, embedded and indexed: it is searchable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DocumentIndexed {
    /// The version indexed.
    pub version: u32,
    /// Chunks in the index.
    pub chunks: u32,
    /// The splitter and its settings.
    pub chunking: String,
    /// The embedding model.
    pub embedding_model: String,
    /// Dimensions of its vectors.
    pub embedding_dimension: u32,
}

/// A version could not be indexed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DocumentIndexingFailed {
    /// The version that failed.
    pub version: u32,
    /// Stable snake_case code (`embedding_failed`, `source_file_failed`, ...).
    pub code: String,
    /// What went wrong, for the owner to read.
    pub message: String,
}

/// The document was deleted; its index is to be removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DocumentDeleted {}

crate::domain_events! {
    /// Everything that can happen to a KnowledgeDocument.
    pub enum KnowledgeDocumentEvent {
        /// See [`DocumentCreated`].
        DocumentCreated(DocumentCreated) = "1.0",
        /// See [`DocumentUpdated`].
        DocumentUpdated(DocumentUpdated) = "1.0",
        /// See [`DocumentRevised`].
        DocumentRevised(DocumentRevised) = "1.0",
        /// See [`DocumentIndexed`].
        DocumentIndexed(DocumentIndexed) = "1.0",
        /// See [`DocumentIndexingFailed`].
        DocumentIndexingFailed(DocumentIndexingFailed) = "1.0",
        /// See [`DocumentDeleted`].
        DocumentDeleted(DocumentDeleted) = "1.0",
    }
}

impl crate::event_catalog::EventExamples for KnowledgeDocumentEvent {
    fn examples() -> Vec<Self> {
        let id = Uuid::from_u128(1);
        vec![
            Self::DocumentCreated(DocumentCreated {
                document_id: id,
                owner_id: Uuid::from_u128(2),
                version: 1,
                title: "Travel policy".into(),
                tags: vec!["travel".into(), "policy".into()],
                category: Some("HR".into()),
                source: DocumentSource::Text { text: "Book trains for trips under four hours.".into() },
            }),
            Self::DocumentCreated(DocumentCreated {
                document_id: id,
                owner_id: Uuid::from_u128(2),
                version: 1,
                title: "Quarterly report.pdf".into(),
                tags: vec![],
                category: None,
                source: DocumentSource::File { file_id: Uuid::from_u128(3) },
            }),
            Self::DocumentUpdated(DocumentUpdated {
                title: Some("Travel policy 2025".into()),
                tags: Some(vec!["travel".into()]),
                category: Some(None),
            }),
            Self::DocumentUpdated(DocumentUpdated {
                title: None,
                tags: None,
                category: Some(Some("Finance".into())),
            }),
            Self::DocumentRevised(DocumentRevised {
                version: 2,
                text: "Book trains for trips under five hours.".into(),
            }),
            Self::DocumentIndexed(DocumentIndexed {
                version: 2,
                chunks: 1,
                chunking: "text-splitter characters 500..2000, overlap 200".into(),
                embedding_model: "local/all-minilm-l6-v2".into(),
                embedding_dimension: 384,
            }),
            Self::DocumentIndexingFailed(DocumentIndexingFailed {
                version: 1,
                code: "source_file_failed".into(),
                message: "The file's text could not be extracted.".into(),
            }),
            Self::DocumentDeleted(DocumentDeleted {}),
        ]
    }
}
