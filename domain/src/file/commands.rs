use serde::Deserialize;
use uuid::Uuid;

/// What can be asked of a File. The owner's commands name their actor: only the owner may
/// act on a file, and to anyone else it does not exist. The processing records come from
/// the ingest worker (a system actor) reacting to `FileUploaded`, so they name no actor.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum FileCommand {
    /// Record an upload whose bytes are already in storage.
    UploadFile {
        /// The new file's id (chosen by the caller).
        file_id: Uuid,
        /// The owner (the authenticated user).
        owner_id: Uuid,
        /// The name the client gave; display data only.
        file_name: String,
        /// The media type (`application/pdf`, `text/plain; charset=utf-8`).
        media_type: String,
        /// Size of the stored bytes.
        size_bytes: u64,
        /// SHA-256 of the stored bytes, 64 lower-case hex digits.
        sha256: String,
        /// Where the bytes are stored; chosen by the server, never derived from the file name.
        storage_key: String,
    },
    /// Record that the text was extracted.
    RecordFileProcessed {
        /// Characters of extracted text.
        text_length: u64,
        /// Pages, for paged formats (PDF).
        pages: Option<u32>,
        /// Chunks the text was split into.
        chunks: u32,
    },
    /// Record that the text could not be extracted.
    RecordFileProcessingFailed {
        /// Stable snake_case code (`unsupported_media_type`, `encrypted_pdf`, ...).
        code: String,
        /// What went wrong, for the owner to read.
        message: String,
    },
    /// Delete the file; terminal.
    DeleteFile {
        /// Who asks.
        actor_id: Uuid,
    },
}
