//! File use cases: record an upload whose bytes are already stored, delete a file; and what
//! the ingest worker records about a file (processed, processing failed).
//!
//! The bytes never pass through here: the API streams them to storage under a key colloquy
//! generated, then records the upload. A refused upload's bytes are the caller's to remove.

use colloquy_domain::file::{FileCommand, FileError};
use serde::{Deserialize, Serialize};
use tracing::instrument;
use uuid::Uuid;

use crate::caller::Caller;
use crate::command_service::{CommandError, Committed};
use crate::errors::UseCaseError;
use crate::idempotency::Answer;
use crate::Commands;

type Outcome<T> = Result<Answer<T>, UseCaseError<FileError>>;

/// An upload whose bytes are stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredUpload {
    /// The file's id.
    pub file_id: Uuid,
    /// The client's file name (display only).
    pub file_name: String,
    /// The media type decided from the bytes.
    pub media_type: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
    /// Where the bytes are.
    pub storage_key: String,
}

/// A command on a file was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileAccepted {
    /// The file.
    pub file_id: Uuid,
    /// The aggregate's version after the command; pass it as `min_version` to queries.
    pub version: i64,
}

impl Commands {
    /// Records an upload of the caller's. Under an Idempotency-Key, a retry of the same
    /// upload (same name, bytes and type) answers the first one's file, with `replayed` set:
    /// the retry's own bytes are then the caller's to remove.
    #[instrument(skip_all, fields(user_id = %caller.user, file_id = %upload.file_id))]
    pub async fn upload_file(&self, caller: &Caller, upload: StoredUpload) -> Outcome<FileAccepted> {
        // The request is what the client sent, not the id and key colloquy made for it.
        let request = (&upload.file_name, &upload.media_type, upload.size_bytes, &upload.sha256);
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "upload_file", &request, || async {
                let file_id = upload.file_id;
                let command = FileCommand::UploadFile {
                    file_id,
                    owner_id: caller.user,
                    file_name: upload.file_name.clone(),
                    media_type: upload.media_type.clone(),
                    size_bytes: upload.size_bytes,
                    sha256: upload.sha256.clone(),
                    storage_key: upload.storage_key.clone(),
                };
                let committed = self.files.execute(&file_id.to_string(), command, &caller.meta).await?;
                Ok(FileAccepted { file_id, version: committed.version })
            })
            .await
    }

    /// Deletes one of the caller's files (its bytes are the caller's to remove once this
    /// is recorded; their key follows from the owner and the file id).
    #[instrument(skip_all, fields(user_id = %caller.user, %file_id))]
    pub async fn delete_file(&self, caller: &Caller, file_id: Uuid) -> Outcome<FileAccepted> {
        let command = FileCommand::DeleteFile { actor_id: caller.user };
        let committed = self.files.execute(&file_id.to_string(), command, &caller.meta).await?;
        Ok(Answer { value: FileAccepted { file_id, version: committed.version }, replayed: false })
    }

    /// Records what the ingest worker learned about a file (a system actor).
    pub async fn record_file(
        &self,
        caller: &Caller,
        file_id: Uuid,
        command: FileCommand,
    ) -> Result<Committed, CommandError<FileError>> {
        self.files.execute(&file_id.to_string(), command, &caller.meta).await
    }

    /// A file's current state, from the write model.
    pub async fn file_state(&self, file_id: Uuid) -> Result<(colloquy_domain::File, i64), CommandError<FileError>> {
        self.files.current_state(&file_id.to_string()).await
    }
}
