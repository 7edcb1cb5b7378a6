//! The files read model (`rm_files`): one row per uploaded file with its processing status
//! (`processing` after the upload, then `ready` or `failed`; `deleted`). Its queries are in
//! [`crate::knowledge_queries`].
//!
//! A deleted file keeps its row as a tombstone (status `deleted`) instead of losing it:
//! - the row is what guards it: every change is an UPDATE of a row that is not deleted and
//!   whose version is older, and the upload is an insert that never overwrites, so no
//!   event, however late or often delivered, brings a deleted file back. Deleting the row
//!   would let a redelivered `FileUploaded` recreate it;
//! - documents made from the file still name its id, and a tombstone tells "deleted" apart
//!   from "never existed";
//! - lists skip tombstones at no cost: the migration's page index excludes them.
//!
//! The tombstone keeps no personal data: the file name (the only personal field) is
//! cleared, since nothing shows a deleted file.

use async_trait::async_trait;
use colloquy_domain::file::FileEvent;
use colloquy_domain::File;
use colloquy_infra::event_store::StoredEvent;
use cqrs_es::Aggregate;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::{aggregate_uuid, domain_event, ApplyError, Projection};

/// Projects File events into `rm_files`.
pub struct FilesProjection;

/// The projection's name.
pub const NAME: &str = "files";

/// A file's status in `rm_files`.
pub mod status {
    /// Uploaded; its text is being extracted.
    pub const PROCESSING: &str = "processing";
    /// Its text was extracted.
    pub const READY: &str = "ready";
    /// Its text could not be extracted (`error_code`, `error_message` say why).
    pub const FAILED: &str = "failed";
    /// Deleted: a tombstone, never listed nor found.
    pub const DELETED: &str = "deleted";
}

/// `value` as the signed column type of `column`, or a poison error: the domain's unsigned
/// counts fit unless an event is corrupt.
pub(crate) fn column<T, U: TryFrom<T>>(value: T, column: &str) -> Result<U, ApplyError> {
    U::try_from(value).map_err(|_| ApplyError::poison(format!("{column} is out of the read model's range")))
}

/// An UPDATE of one live row, setting `set` (parameters from `$4`), the version (`$2`) and
/// the update time (`$3`) of the file `$1`, if this event is newer than the row. Returns the
/// owner when a row changed.
fn update(table: &str, set: &str) -> String {
    format!(
        "UPDATE {table} SET {set}, version = $2, updated_at = $3
          WHERE file_id = $1 AND version < $2 AND status <> 'deleted'
          RETURNING owner_id"
    )
}

#[async_trait]
impl Projection for FilesProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn table(&self) -> &'static str {
        "rm_files"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[File::TYPE]
    }

    async fn apply(&self, conn: &mut PgConnection, table: &str, e: &StoredEvent) -> Result<Option<Uuid>, ApplyError> {
        let id = aggregate_uuid(e)?;
        let owner = match domain_event::<FileEvent>(e)? {
            FileEvent::FileUploaded(u) => {
                if u.file_id != id {
                    return Err(ApplyError::poison(format!("FileUploaded names file {} in file {id}", u.file_id)));
                }
                // Never overwrites: a row already there (a redelivery, or a tombstone) stays.
                sqlx::query_scalar(&format!(
                    "INSERT INTO {table} (file_id, owner_id, file_name, media_type, size_bytes, sha256, storage_key,
                                          status, version, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
                     ON CONFLICT (file_id) DO NOTHING
                     RETURNING owner_id"
                ))
                .bind(id)
                .bind(u.owner_id)
                .bind(&u.file_name)
                .bind(&u.media_type)
                .bind(column::<_, i64>(u.size_bytes, "size_bytes")?)
                .bind(&u.sha256)
                .bind(&u.storage_key)
                .bind(status::PROCESSING)
                .bind(e.sequence)
                .bind(e.recorded_at)
                .fetch_optional(&mut *conn)
                .await?
            }
            FileEvent::FileProcessed(p) => {
                let set =
                    "status = $4, text_length = $5, pages = $6, chunks = $7, error_code = NULL, error_message = NULL";
                sqlx::query_scalar(&update(table, set))
                    .bind(id)
                    .bind(e.sequence)
                    .bind(e.recorded_at)
                    .bind(status::READY)
                    .bind(column::<_, i64>(p.text_length, "text_length")?)
                    .bind(p.pages.map(|n| column::<_, i32>(n, "pages")).transpose()?)
                    .bind(column::<_, i32>(p.chunks, "chunks")?)
                    .fetch_optional(&mut *conn)
                    .await?
            }
            FileEvent::FileProcessingFailed(f) => {
                let set =
                    "status = $4, error_code = $5, error_message = $6, text_length = NULL, pages = NULL, chunks = NULL";
                sqlx::query_scalar(&update(table, set))
                    .bind(id)
                    .bind(e.sequence)
                    .bind(e.recorded_at)
                    .bind(status::FAILED)
                    .bind(&f.code)
                    .bind(&f.message)
                    .fetch_optional(&mut *conn)
                    .await?
            }
            FileEvent::FileDeleted(_) => {
                sqlx::query_scalar(&update(table, "status = $4, file_name = ''"))
                    .bind(id)
                    .bind(e.sequence)
                    .bind(e.recorded_at)
                    .bind(status::DELETED)
                    .fetch_optional(&mut *conn)
                    .await?
            }
        };
        Ok(owner)
    }
}
