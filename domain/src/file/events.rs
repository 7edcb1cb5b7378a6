use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A file was uploaded: its bytes are in storage, extraction comes next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FileUploaded {
    /// The file's id.
    pub file_id: Uuid,
    /// Its owner.
    pub owner_id: Uuid,
    /// The name the client gave (personal data; display only).
    pub file_name: String,
    /// The media type, its `type/subtype` in lower case.
    pub media_type: String,
    /// Size of the stored bytes.
    pub size_bytes: u64,
    /// SHA-256 of the stored bytes, 64 lower-case hex digits.
    pub sha256: String,
    /// Where the bytes are stored (a relative key, never derived from the file name).
    pub storage_key: String,
}

/// The file's text was extracted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FileProcessed {
    /// Characters of extracted text.
    pub text_length: u64,
    /// Pages, for paged formats (PDF); null otherwise.
    pub pages: Option<u32>,
    /// Chunks the text was split into.
    pub chunks: u32,
}

/// The file's text could not be extracted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FileProcessingFailed {
    /// Stable snake_case code (`unsupported_media_type`, `encrypted_pdf`, ...).
    pub code: String,
    /// What went wrong, for the owner to read.
    pub message: String,
}

/// The file was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FileDeleted {}

crate::domain_events! {
    /// Everything that can happen to a File.
    pub enum FileEvent {
        /// See [`FileUploaded`].
        FileUploaded(FileUploaded) = "1.0",
        /// See [`FileProcessed`].
        FileProcessed(FileProcessed) = "1.0",
        /// See [`FileProcessingFailed`].
        FileProcessingFailed(FileProcessingFailed) = "1.0",
        /// See [`FileDeleted`].
        FileDeleted(FileDeleted) = "1.0",
    }
}

impl crate::event_catalog::EventExamples for FileEvent {
    fn examples() -> Vec<Self> {
        vec![
            Self::FileUploaded(FileUploaded {
                file_id: Uuid::from_u128(1),
                owner_id: Uuid::from_u128(2),
                file_name: "Quarterly report.pdf".into(),
                media_type: "application/pdf".into(),
                size_bytes: 48_213,
                sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
                storage_key: "files/00000000-0000-0000-0000-000000000001".into(),
            }),
            Self::FileProcessed(FileProcessed { text_length: 12_400, pages: Some(3), chunks: 14 }),
            Self::FileProcessed(FileProcessed { text_length: 820, pages: None, chunks: 1 }),
            Self::FileProcessingFailed(FileProcessingFailed {
                code: "encrypted_pdf".into(),
                message: "The PDF is password-protected; upload an unprotected copy.".into(),
            }),
            Self::FileDeleted(FileDeleted {}),
        ]
    }
}
