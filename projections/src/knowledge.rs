//! The knowledge documents read model (`rm_knowledge_documents`): one row per document of a
//! knowledge base with its title, tags and category, what it is made from, its current
//! version (`doc_version`) and where that version's index is (`indexing`, then `ready` or
//! `failed`; `deleted`). Its queries are in [`crate::knowledge_queries`].
//!
//! An indexing record (`DocumentIndexed`, `DocumentIndexingFailed`) changes the row only
//! if it is for the current version: a worker that finishes an older version after the
//! text was revised must not mark the new one ready. Such a stale record still moves the
//! row's `version` (the aggregate version it reflects) but not `updated_at`, which is the
//! time of the last change to what the row shows.
//!
//! A deleted document keeps its row as a tombstone, for the reasons given in
//! [`crate::files`], with its personal data (title, tags, category) cleared.

use async_trait::async_trait;
use colloquy_domain::knowledge::{DocumentSource, KnowledgeDocumentEvent};
use colloquy_domain::KnowledgeDocument;
use colloquy_infra::event_store::StoredEvent;
use cqrs_es::Aggregate;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::files::column;
use crate::projection::{aggregate_uuid, domain_event, ApplyError, Projection};

/// Projects KnowledgeDocument events into `rm_knowledge_documents`.
pub struct KnowledgeProjection;

/// The projection's name.
pub const NAME: &str = "knowledge";

/// A document's status in `rm_knowledge_documents`, for its current version.
pub mod status {
    /// The current version awaits its index.
    pub const INDEXING: &str = "indexing";
    /// The current version is indexed and searchable.
    pub const READY: &str = "ready";
    /// The current version could not be indexed (`error_code`, `error_message` say why).
    pub const FAILED: &str = "failed";
    /// Deleted: a tombstone, never listed nor found.
    pub const DELETED: &str = "deleted";
}

/// What a document is made from, in `rm_knowledge_documents.source`.
pub mod source {
    /// Text pasted by the owner.
    pub const TEXT: &str = "text";
    /// An uploaded file (`file_id`).
    pub const FILE: &str = "file";
}

/// An UPDATE of one live row, setting `set` (parameters from `$4`), the version (`$2`) and
/// the update time (`$3`) of the document `$1`, if this event is newer than the row and
/// `only_if` (more conditions, or empty) holds. Returns the owner when a row changed.
fn update(table: &str, set: &str, only_if: &str) -> String {
    format!(
        "UPDATE {table} SET {set}, version = $2, updated_at = $3
          WHERE document_id = $1 AND version < $2 AND status <> 'deleted' {only_if}
          RETURNING owner_id"
    )
}

/// Moves only the version of document `id`: for an event that is applied but changes
/// nothing a reader sees (an indexing record of another version).
async fn touch(conn: &mut PgConnection, table: &str, id: Uuid, e: &StoredEvent) -> Result<Option<Uuid>, ApplyError> {
    let owner = sqlx::query_scalar(&format!(
        "UPDATE {table} SET version = $2
          WHERE document_id = $1 AND version < $2 AND status <> 'deleted'
          RETURNING owner_id"
    ))
    .bind(id)
    .bind(e.sequence)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(owner)
}

#[async_trait]
impl Projection for KnowledgeProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn table(&self) -> &'static str {
        "rm_knowledge_documents"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[KnowledgeDocument::TYPE]
    }

    async fn apply(&self, conn: &mut PgConnection, table: &str, e: &StoredEvent) -> Result<Option<Uuid>, ApplyError> {
        use KnowledgeDocumentEvent as E;
        let id = aggregate_uuid(e)?;
        let owner = match domain_event::<KnowledgeDocumentEvent>(e)? {
            E::DocumentCreated(c) => {
                if c.document_id != id {
                    return Err(ApplyError::poison(format!(
                        "DocumentCreated names document {} in document {id}",
                        c.document_id
                    )));
                }
                let (kind, file_id) = match c.source {
                    DocumentSource::Text { .. } => (source::TEXT, None),
                    DocumentSource::File { file_id } => (source::FILE, Some(file_id)),
                };
                // Never overwrites: a row already there (a redelivery, or a tombstone) stays.
                sqlx::query_scalar(&format!(
                    "INSERT INTO {table} (document_id, owner_id, title, tags, category, source, file_id, doc_version,
                                          status, version, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
                     ON CONFLICT (document_id) DO NOTHING
                     RETURNING owner_id"
                ))
                .bind(id)
                .bind(c.owner_id)
                .bind(&c.title)
                .bind(&c.tags)
                .bind(&c.category)
                .bind(kind)
                .bind(file_id)
                .bind(column::<_, i32>(c.version, "doc_version")?)
                .bind(status::INDEXING)
                .bind(e.sequence)
                .bind(e.recorded_at)
                .fetch_optional(&mut *conn)
                .await?
            }
            E::DocumentUpdated(u) => {
                // Absent fields keep their value; `category` distinguishes "unchanged" from
                // "removed" (`Some(None)`).
                let set = "title = coalesce($4, title), tags = coalesce($5, tags),
                           category = CASE WHEN $6 THEN $7 ELSE category END";
                sqlx::query_scalar(&update(table, set, ""))
                    .bind(id)
                    .bind(e.sequence)
                    .bind(e.recorded_at)
                    .bind(&u.title)
                    .bind(&u.tags)
                    .bind(u.category.is_some())
                    .bind(u.category.flatten())
                    .fetch_optional(&mut *conn)
                    .await?
            }
            E::DocumentRevised(r) => {
                // The previous version's index record no longer describes the document.
                let set = "doc_version = $4, status = $5, chunks = NULL, chunking = NULL, embedding_model = NULL,
                           embedding_dimension = NULL, error_code = NULL, error_message = NULL";
                sqlx::query_scalar(&update(table, set, ""))
                    .bind(id)
                    .bind(e.sequence)
                    .bind(e.recorded_at)
                    .bind(column::<_, i32>(r.version, "doc_version")?)
                    .bind(status::INDEXING)
                    .fetch_optional(&mut *conn)
                    .await?
            }
            E::DocumentIndexed(x) => {
                let set = "status = $5, chunks = $6, chunking = $7, embedding_model = $8, embedding_dimension = $9,
                           error_code = NULL, error_message = NULL";
                let owner: Option<Uuid> = sqlx::query_scalar(&update(table, set, "AND doc_version = $4"))
                    .bind(id)
                    .bind(e.sequence)
                    .bind(e.recorded_at)
                    .bind(column::<_, i32>(x.version, "doc_version")?)
                    .bind(status::READY)
                    .bind(column::<_, i32>(x.chunks, "chunks")?)
                    .bind(&x.chunking)
                    .bind(&x.embedding_model)
                    .bind(column::<_, i32>(x.embedding_dimension, "embedding_dimension")?)
                    .fetch_optional(&mut *conn)
                    .await?;
                match owner {
                    Some(owner) => Some(owner),
                    None => touch(conn, table, id, e).await?,
                }
            }
            E::DocumentIndexingFailed(f) => {
                let set = "status = $5, error_code = $6, error_message = $7, chunks = NULL, chunking = NULL,
                           embedding_model = NULL, embedding_dimension = NULL";
                let owner: Option<Uuid> = sqlx::query_scalar(&update(table, set, "AND doc_version = $4"))
                    .bind(id)
                    .bind(e.sequence)
                    .bind(e.recorded_at)
                    .bind(column::<_, i32>(f.version, "doc_version")?)
                    .bind(status::FAILED)
                    .bind(&f.code)
                    .bind(&f.message)
                    .fetch_optional(&mut *conn)
                    .await?;
                match owner {
                    Some(owner) => Some(owner),
                    None => touch(conn, table, id, e).await?,
                }
            }
            E::DocumentDeleted(_) => {
                sqlx::query_scalar(&update(table, "status = $4, title = '', tags = '{}', category = NULL", ""))
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
