use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::upload;
use super::*;
use crate::decision::Refusal;
use crate::registry::Registered;
use crate::values::{self, FAILURE_CODE_MAX, FAILURE_MESSAGE_MAX};

/// Where a file is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// No `FileUploaded` yet.
    #[default]
    NotUploaded,
    /// Uploaded; the ingest worker is extracting its text.
    Processing,
    /// Its text was extracted.
    Ready,
    /// Its text could not be extracted.
    Failed,
    /// Deleted; terminal.
    Deleted,
}

impl std::fmt::Display for FileStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotUploaded => "not uploaded",
            Self::Processing => "processing",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        })
    }
}

/// An uploaded file. Holds only what its decisions need: the name and the other upload
/// metadata live in the events and the read model, so snapshots (were they ever taken)
/// would hold no personal data. Fields added later must default (`#[serde(default)]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct File {
    /// The id, once uploaded.
    pub id: Option<Uuid>,
    /// The owner, once uploaded.
    pub owner_id: Option<Uuid>,
    /// Where it is in its life.
    pub status: FileStatus,
}

impl File {
    /// Checks the file exists, is not deleted, and `actor` owns it. Someone else's file
    /// does not exist for them, deleted or not.
    fn ensure_owned_by(&self, actor: Uuid) -> Result<(), FileError> {
        match (self.status, self.owner_id) {
            (FileStatus::NotUploaded, _) => Err(FileError::NotFound),
            (_, Some(owner)) if owner != actor => Err(FileError::NotFound),
            (FileStatus::Deleted, _) => Err(FileError::Deleted),
            _ => Ok(()),
        }
    }

    /// Checks the file awaits its processing record (the worker's commands name no actor).
    /// A file deleted while processing refuses the record: the worker then drops its work.
    fn ensure_processing(&self) -> Result<(), FileError> {
        match self.status {
            FileStatus::Processing => Ok(()),
            FileStatus::NotUploaded => Err(FileError::NotFound),
            FileStatus::Deleted => Err(FileError::Deleted),
            status @ (FileStatus::Ready | FileStatus::Failed) => Err(FileError::NotProcessing { status }),
        }
    }
}

impl Registered for File {
    // A file has at most four events (upload, processed or failed, delete).
    const SNAPSHOT_EVERY: Option<usize> = None;
}

impl Aggregate for File {
    const TYPE: &'static str = "File";
    type Command = FileCommand;
    type Event = FileEvent;
    type Error = Refusal<FileError>;
    type Services = ();

    async fn handle(&mut self, command: FileCommand, _: &(), sink: &EventSink<Self>) -> Result<(), Refusal<FileError>> {
        let event = match command {
            FileCommand::UploadFile { file_id, owner_id, file_name, media_type, size_bytes, sha256, storage_key } => {
                if self.status != FileStatus::NotUploaded {
                    return Err(FileError::AlreadyUploaded.into());
                }
                if size_bytes == 0 {
                    return Err(FileError::EmptyFile.into());
                }
                FileEvent::FileUploaded(FileUploaded {
                    file_id,
                    owner_id,
                    file_name: upload::file_name(&file_name)?,
                    media_type: upload::media_type(&media_type)?,
                    size_bytes,
                    sha256: upload::sha256(&sha256)?,
                    storage_key: upload::storage_key(&storage_key)?,
                })
            }
            FileCommand::RecordFileProcessed { text_length, pages, chunks } => {
                self.ensure_processing()?;
                FileEvent::FileProcessed(FileProcessed { text_length, pages, chunks })
            }
            FileCommand::RecordFileProcessingFailed { code, message } => {
                self.ensure_processing()?;
                FileEvent::FileProcessingFailed(FileProcessingFailed {
                    code: values::failure_code(&code).ok_or(FileError::InvalidFailureCode { max: FAILURE_CODE_MAX })?,
                    message: values::failure_message(&message)
                        .ok_or(FileError::InvalidFailureMessage { max: FAILURE_MESSAGE_MAX })?,
                })
            }
            FileCommand::DeleteFile { actor_id } => {
                self.ensure_owned_by(actor_id)?;
                FileEvent::FileDeleted(FileDeleted {})
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: FileEvent) {
        match event {
            FileEvent::FileUploaded(e) => {
                self.id = Some(e.file_id);
                self.owner_id = Some(e.owner_id);
                self.status = FileStatus::Processing;
            }
            FileEvent::FileProcessed(_) => self.status = FileStatus::Ready,
            FileEvent::FileProcessingFailed(_) => self.status = FileStatus::Failed,
            FileEvent::FileDeleted(_) => self.status = FileStatus::Deleted,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::values::TextField;

    type FileTest = TestFramework<File>;

    const OWNER: Uuid = Uuid::from_u128(1);
    const STRANGER: Uuid = Uuid::from_u128(2);
    const FILE: Uuid = Uuid::from_u128(9);
    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const KEY: &str = "files/00000000-0000-0000-0000-000000000009";

    fn uploaded() -> FileEvent {
        FileEvent::FileUploaded(FileUploaded {
            file_id: FILE,
            owner_id: OWNER,
            file_name: "Report.pdf".into(),
            media_type: "application/pdf".into(),
            size_bytes: 1_024,
            sha256: SHA.into(),
            storage_key: KEY.into(),
        })
    }

    fn processed() -> FileEvent {
        FileEvent::FileProcessed(FileProcessed { text_length: 5_000, pages: Some(2), chunks: 6 })
    }

    fn failed() -> FileEvent {
        FileEvent::FileProcessingFailed(FileProcessingFailed {
            code: "encrypted_pdf".into(),
            message: "The PDF is password-protected.".into(),
        })
    }

    fn deleted() -> FileEvent {
        FileEvent::FileDeleted(FileDeleted {})
    }

    fn upload() -> FileCommand {
        FileCommand::UploadFile {
            file_id: FILE,
            owner_id: OWNER,
            file_name: "Report.pdf".into(),
            media_type: "application/pdf".into(),
            size_bytes: 1_024,
            sha256: SHA.into(),
            storage_key: KEY.into(),
        }
    }

    /// `upload()` with one field changed by `change`.
    fn upload_with(change: impl FnOnce(&mut FileCommand)) -> FileCommand {
        let mut command = upload();
        change(&mut command);
        command
    }

    fn record_processed() -> FileCommand {
        FileCommand::RecordFileProcessed { text_length: 5_000, pages: Some(2), chunks: 6 }
    }

    fn record_failed(code: &str, message: &str) -> FileCommand {
        FileCommand::RecordFileProcessingFailed { code: code.into(), message: message.into() }
    }

    fn delete(actor: Uuid) -> FileCommand {
        FileCommand::DeleteFile { actor_id: actor }
    }

    async fn expect_err(given: Vec<FileEvent>, cmd: FileCommand, err: FileError) {
        FileTest::with(()).given(given).when_async(cmd).await.then_expect_error(Refusal::Rejected(err));
    }

    // Uploading.

    #[tokio::test]
    async fn uploading_records_the_file() {
        FileTest::with(()).given_no_previous_events().when_async(upload()).await.then_expect_events(vec![uploaded()]);
    }

    #[tokio::test]
    async fn uploading_trims_the_name_and_lower_cases_the_media_type() {
        let command = upload_with(|c| {
            if let FileCommand::UploadFile { file_name, media_type, .. } = c {
                *file_name = "  Report.pdf ".into();
                *media_type = "Application/PDF".into();
            }
        });
        FileTest::with(()).given_no_previous_events().when_async(command).await.then_expect_events(vec![uploaded()]);
    }

    #[tokio::test]
    async fn uploading_twice_is_rejected() {
        expect_err(vec![uploaded()], upload(), FileError::AlreadyUploaded).await;
    }

    // Deletion is terminal: the id is not free to upload again.
    #[tokio::test]
    async fn uploading_over_a_deleted_file_is_rejected() {
        expect_err(vec![uploaded(), deleted()], upload(), FileError::AlreadyUploaded).await;
    }

    #[tokio::test]
    async fn a_blank_file_name_is_rejected() {
        let command = upload_with(|c| {
            if let FileCommand::UploadFile { file_name, .. } = c {
                *file_name = "   ".into();
            }
        });
        expect_err(vec![], command, FileError::InvalidFileName { max: FILE_NAME_MAX }).await;
    }

    #[tokio::test]
    async fn an_overlong_file_name_is_rejected() {
        let command = upload_with(|c| {
            if let FileCommand::UploadFile { file_name, .. } = c {
                *file_name = format!("{}.pdf", "r".repeat(FILE_NAME_MAX - 3));
            }
        });
        expect_err(vec![], command, FileError::InvalidFileName { max: FILE_NAME_MAX }).await;
    }

    #[tokio::test]
    async fn a_file_name_with_a_control_character_is_rejected() {
        let command = upload_with(|c| {
            if let FileCommand::UploadFile { file_name, .. } = c {
                *file_name = "Report\u{1b}[2J.pdf".into();
            }
        });
        expect_err(vec![], command, FileError::ControlCharacter { field: TextField::FileName }).await;
    }

    #[tokio::test]
    async fn a_file_name_with_a_right_to_left_override_is_rejected() {
        let command = upload_with(|c| {
            if let FileCommand::UploadFile { file_name, .. } = c {
                *file_name = "invoice\u{202E}fdp.exe".into();
            }
        });
        expect_err(vec![], command, FileError::InvisibleCharacter { field: TextField::FileName }).await;
    }

    #[tokio::test]
    async fn an_invalid_media_type_is_rejected() {
        let command = upload_with(|c| {
            if let FileCommand::UploadFile { media_type, .. } = c {
                *media_type = "pdf".into();
            }
        });
        expect_err(vec![], command, FileError::InvalidMediaType).await;
    }

    #[tokio::test]
    async fn an_upper_case_sha256_is_rejected() {
        let command = upload_with(|c| {
            if let FileCommand::UploadFile { sha256, .. } = c {
                *sha256 = SHA.to_uppercase();
            }
        });
        expect_err(vec![], command, FileError::InvalidSha256).await;
    }

    #[tokio::test]
    async fn a_short_sha256_is_rejected() {
        let command = upload_with(|c| {
            if let FileCommand::UploadFile { sha256, .. } = c {
                *sha256 = SHA[..63].into();
            }
        });
        expect_err(vec![], command, FileError::InvalidSha256).await;
    }

    #[tokio::test]
    async fn an_empty_file_is_rejected() {
        let command = upload_with(|c| {
            if let FileCommand::UploadFile { size_bytes, .. } = c {
                *size_bytes = 0;
            }
        });
        expect_err(vec![], command, FileError::EmptyFile).await;
    }

    #[tokio::test]
    async fn a_storage_key_that_climbs_out_of_the_store_is_rejected() {
        let command = upload_with(|c| {
            if let FileCommand::UploadFile { storage_key, .. } = c {
                *storage_key = "files/../../etc/passwd".into();
            }
        });
        expect_err(vec![], command, FileError::InvalidStorageKey).await;
    }

    // Processing.

    #[tokio::test]
    async fn a_processing_file_can_be_recorded_processed() {
        FileTest::with(())
            .given(vec![uploaded()])
            .when_async(record_processed())
            .await
            .then_expect_events(vec![processed()]);
    }

    #[tokio::test]
    async fn a_processing_file_can_be_recorded_failed() {
        FileTest::with(())
            .given(vec![uploaded()])
            .when_async(record_failed("encrypted_pdf", " The PDF is password-protected. "))
            .await
            .then_expect_events(vec![failed()]);
    }

    #[tokio::test]
    async fn processing_a_file_never_uploaded_is_not_found() {
        expect_err(vec![], record_processed(), FileError::NotFound).await;
    }

    // A redelivered `FileUploaded` makes the worker record its result again: refused.
    #[tokio::test]
    async fn processing_a_ready_file_again_is_rejected() {
        expect_err(
            vec![uploaded(), processed()],
            record_processed(),
            FileError::NotProcessing { status: FileStatus::Ready },
        )
        .await;
    }

    #[tokio::test]
    async fn recording_success_after_failure_is_rejected() {
        expect_err(
            vec![uploaded(), failed()],
            record_processed(),
            FileError::NotProcessing { status: FileStatus::Failed },
        )
        .await;
    }

    #[tokio::test]
    async fn recording_failure_of_a_ready_file_is_rejected() {
        expect_err(
            vec![uploaded(), processed()],
            record_failed("late", "Too late."),
            FileError::NotProcessing { status: FileStatus::Ready },
        )
        .await;
    }

    #[tokio::test]
    async fn recording_failure_twice_is_rejected() {
        expect_err(
            vec![uploaded(), failed()],
            record_failed("encrypted_pdf", "Again."),
            FileError::NotProcessing { status: FileStatus::Failed },
        )
        .await;
    }

    #[tokio::test]
    async fn recording_failure_of_a_file_never_uploaded_is_not_found() {
        expect_err(vec![], record_failed("encrypted_pdf", "No."), FileError::NotFound).await;
    }

    // Deleted while the worker was extracting: its result is refused.
    #[tokio::test]
    async fn processing_a_file_deleted_meanwhile_is_rejected() {
        expect_err(vec![uploaded(), deleted()], record_processed(), FileError::Deleted).await;
        expect_err(vec![uploaded(), deleted()], record_failed("encrypted_pdf", "No."), FileError::Deleted).await;
    }

    #[tokio::test]
    async fn a_failure_code_that_is_not_snake_case_is_rejected() {
        expect_err(
            vec![uploaded()],
            record_failed("Encrypted PDF", "The PDF is password-protected."),
            FileError::InvalidFailureCode { max: FAILURE_CODE_MAX },
        )
        .await;
    }

    #[tokio::test]
    async fn a_blank_failure_message_is_rejected() {
        expect_err(
            vec![uploaded()],
            record_failed("encrypted_pdf", "  "),
            FileError::InvalidFailureMessage { max: FAILURE_MESSAGE_MAX },
        )
        .await;
    }

    #[tokio::test]
    async fn a_failure_message_with_a_control_character_is_rejected() {
        expect_err(
            vec![uploaded()],
            record_failed("encrypted_pdf", "bad\u{0}"),
            FileError::InvalidFailureMessage { max: FAILURE_MESSAGE_MAX },
        )
        .await;
    }

    // Deleting.

    #[tokio::test]
    async fn the_owner_can_delete_in_any_status() {
        for given in [vec![uploaded()], vec![uploaded(), processed()], vec![uploaded(), failed()]] {
            FileTest::with(()).given(given).when_async(delete(OWNER)).await.then_expect_events(vec![deleted()]);
        }
    }

    #[tokio::test]
    async fn a_stranger_cannot_delete() {
        expect_err(vec![uploaded(), processed()], delete(STRANGER), FileError::NotFound).await;
    }

    // A stranger learns nothing, not even that it was deleted.
    #[tokio::test]
    async fn a_stranger_deleting_a_deleted_file_gets_not_found() {
        expect_err(vec![uploaded(), deleted()], delete(STRANGER), FileError::NotFound).await;
    }

    #[tokio::test]
    async fn deleting_twice_is_rejected() {
        expect_err(vec![uploaded(), deleted()], delete(OWNER), FileError::Deleted).await;
    }

    #[tokio::test]
    async fn deleting_a_file_never_uploaded_is_not_found() {
        expect_err(vec![], delete(OWNER), FileError::NotFound).await;
    }

    #[test]
    fn apply_follows_the_life_of_a_file() {
        let mut file = File::default();
        file.apply(uploaded());
        assert_eq!((file.id, file.owner_id, file.status), (Some(FILE), Some(OWNER), FileStatus::Processing));
        let mut ready = file.clone();
        ready.apply(processed());
        assert_eq!(ready.status, FileStatus::Ready);
        file.apply(failed());
        assert_eq!(file.status, FileStatus::Failed);
        file.apply(deleted());
        assert_eq!(file.status, FileStatus::Deleted);
    }

    // The state as the audit tooling shows it, and as a snapshot would hold it.
    #[test]
    fn the_state_serialises_its_status_in_snake_case_and_holds_no_file_name() {
        let mut file = File::default();
        file.apply(uploaded());
        let state = serde_json::to_value(&file).unwrap();
        assert_eq!(state["status"], "processing");
        assert!(!state.to_string().contains("Report.pdf"));
    }
}
