//! The queries on a person's files and knowledge base, over `rm_files` and
//! `rm_knowledge_documents`: keyset pages, newest first, and single rows. Like every query
//! they are filtered by the asking user in SQL (another user's file or document is not
//! found), and deleted ones (the tombstones the projections keep) are neither listed nor
//! found.
//!
//! Pages follow the conversation list's contract: `limit` defaults to
//! [`DEFAULT_PAGE`] and is at most [`MAX_PAGE`]; `next_cursor` is an opaque string to pass
//! back as `cursor`, absent on the last page. A cursor holds the position after the last
//! row, `(created_at, id)`, so rows created or deleted meanwhile never shift a page.

use chrono::{DateTime, Utc};
use colloquy_domain::knowledge::normalise_tags;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::queries::{QueryError, DEFAULT_PAGE, MAX_PAGE};

/// Why a file's text could not be extracted, or a document version not indexed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailureReason {
    /// Stable snake_case code (`unsupported_media_type`, `embedding_failed`, ...).
    pub code: String,
    /// For the owner to read.
    pub message: String,
}

fn failure(code: Option<String>, message: Option<String>) -> Option<FailureReason> {
    code.map(|code| FailureReason { code, message: message.unwrap_or_default() })
}

/// One uploaded file as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileSummary {
    /// The id.
    pub file_id: Uuid,
    /// The owner.
    pub owner_id: Uuid,
    /// The name the client gave.
    pub file_name: String,
    /// The media type (`type/subtype`, lower case).
    pub media_type: String,
    /// Size in bytes.
    pub size_bytes: i64,
    /// SHA-256 of the bytes, 64 lower-case hex digits.
    pub sha256: String,
    /// `processing`, `ready` or `failed` (see [`crate::files::status`]).
    pub status: String,
    /// Once ready: characters of extracted text.
    pub text_length: Option<i64>,
    /// Once ready, for paged formats (PDF): pages.
    pub pages: Option<i32>,
    /// Once ready: chunks the text was split into.
    pub chunks: Option<i32>,
    /// Once failed: why.
    pub error: Option<FailureReason>,
    /// The File aggregate's version this row reflects.
    pub version: i64,
    /// When uploaded.
    pub created_at: DateTime<Utc>,
    /// Time of the last change.
    pub updated_at: DateTime<Utc>,
}

/// A row of `rm_files` as read (the storage key stays inside: clients never need it).
#[derive(sqlx::FromRow)]
struct FileRow {
    file_id: Uuid,
    owner_id: Uuid,
    file_name: String,
    media_type: String,
    size_bytes: i64,
    sha256: String,
    status: String,
    text_length: Option<i64>,
    pages: Option<i32>,
    chunks: Option<i32>,
    error_code: Option<String>,
    error_message: Option<String>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<FileRow> for FileSummary {
    fn from(r: FileRow) -> Self {
        Self {
            file_id: r.file_id,
            owner_id: r.owner_id,
            file_name: r.file_name,
            media_type: r.media_type,
            size_bytes: r.size_bytes,
            sha256: r.sha256,
            status: r.status,
            text_length: r.text_length,
            pages: r.pages,
            chunks: r.chunks,
            error: failure(r.error_code, r.error_message),
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const FILE_COLUMNS: &str = "file_id, owner_id, file_name, media_type, size_bytes, sha256, status, text_length, \
     pages, chunks, error_code, error_message, version, created_at, updated_at";

/// One knowledge document as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DocumentSummary {
    /// The id.
    pub document_id: Uuid,
    /// The owner.
    pub owner_id: Uuid,
    /// The title.
    pub title: String,
    /// Tags: lower case, distinct, in the order given.
    pub tags: Vec<String>,
    /// The category, as entered.
    pub category: Option<String>,
    /// `text` or `file` (see [`crate::knowledge::source`]).
    pub source: String,
    /// The file it is made from, when `source` is `file`.
    pub file_id: Option<Uuid>,
    /// The current version of its text (1 at creation, one more per revision).
    pub doc_version: i32,
    /// Where the current version is: `indexing`, `ready` or `failed` (see
    /// [`crate::knowledge::status`]).
    pub status: String,
    /// Once ready: chunks in the index.
    pub chunks: Option<i32>,
    /// Once ready: how the text was split.
    pub chunking: Option<String>,
    /// Once ready: the embedding model.
    pub embedding_model: Option<String>,
    /// Once ready: dimensions of its vectors.
    pub embedding_dimension: Option<i32>,
    /// Once failed: why.
    pub error: Option<FailureReason>,
    /// The KnowledgeDocument aggregate's version this row reflects.
    pub version: i64,
    /// When created.
    pub created_at: DateTime<Utc>,
    /// Time of the last change.
    pub updated_at: DateTime<Utc>,
}

/// A row of `rm_knowledge_documents` as read.
#[derive(sqlx::FromRow)]
struct DocumentRow {
    document_id: Uuid,
    owner_id: Uuid,
    title: String,
    tags: Vec<String>,
    category: Option<String>,
    source: String,
    file_id: Option<Uuid>,
    doc_version: i32,
    status: String,
    chunks: Option<i32>,
    chunking: Option<String>,
    embedding_model: Option<String>,
    embedding_dimension: Option<i32>,
    error_code: Option<String>,
    error_message: Option<String>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<DocumentRow> for DocumentSummary {
    fn from(r: DocumentRow) -> Self {
        Self {
            document_id: r.document_id,
            owner_id: r.owner_id,
            title: r.title,
            tags: r.tags,
            category: r.category,
            source: r.source,
            file_id: r.file_id,
            doc_version: r.doc_version,
            status: r.status,
            chunks: r.chunks,
            chunking: r.chunking,
            embedding_model: r.embedding_model,
            embedding_dimension: r.embedding_dimension,
            error: failure(r.error_code, r.error_message),
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const DOCUMENT_COLUMNS: &str = "document_id, owner_id, title, tags, category, source, file_id, doc_version, status, \
     chunks, chunking, embedding_model, embedding_dimension, error_code, error_message, version, created_at, updated_at";

/// A page of files.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FilePage {
    /// The files, newest first.
    pub items: Vec<FileSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A page of knowledge documents.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DocumentPage {
    /// The documents, newest first.
    pub items: Vec<DocumentSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Where a page starts: after the row created at `created_at` with id `id` (rows are in
/// descending `(created_at, id)` order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysetCursor {
    /// Creation time of the last row of the previous page.
    pub created_at: DateTime<Utc>,
    /// Its id.
    pub id: Uuid,
}

/// 0001-01-01T00:00:00Z in microseconds since the epoch.
const CURSOR_MIN_MICROS: i64 = -62_135_596_800_000_000;
/// 9999-12-31T23:59:59.999999Z in microseconds since the epoch.
const CURSOR_MAX_MICROS: i64 = 253_402_300_799_999_999;

impl KeysetCursor {
    /// The opaque form handed to clients, `<microseconds>_<id>`, as the conversation list's.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.created_at.timestamp_micros(), self.id.simple())
    }

    /// Reads a cursor [`encode`](Self::encode) made; `None` for anything else, including a
    /// time outside years 1..=9999 (beyond Postgres's `timestamptz`: no row was created
    /// there, so such a cursor was forged).
    pub fn decode(raw: &str) -> Option<Self> {
        let (micros, id) = raw.split_once('_')?;
        let micros: i64 = micros.parse().ok()?;
        if !(CURSOR_MIN_MICROS..=CURSOR_MAX_MICROS).contains(&micros) {
            return None;
        }
        Some(Self { created_at: DateTime::from_timestamp_micros(micros)?, id: id.parse().ok()? })
    }
}

/// The page size asked for, checked; and the decoded cursor.
fn paging(cursor: Option<&str>, limit: Option<i64>) -> Result<(Option<KeysetCursor>, i64), QueryError> {
    let limit = match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => n,
        _ => return Err(QueryError::InvalidLimit),
    };
    let after = cursor.map(|c| KeysetCursor::decode(c).ok_or(QueryError::InvalidCursor)).transpose()?;
    Ok((after, limit))
}

/// Cuts `rows` (read with one row more than `limit`) to the page and says where the next
/// one starts, if there is one.
fn page<T>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> KeysetCursor) -> (Vec<T>, Option<String>) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more.then(|| rows.last().map(|r| key(r).encode())).flatten();
    (rows, next)
}

// `status <> 'deleted'` is written out, not bound: the page indexes are partial on exactly
// that predicate, and the planner uses them only when the query repeats it.

/// One page of `owner`'s files, newest first, after `cursor` (a `next_cursor`).
pub async fn list_files(
    pool: &PgPool,
    owner: Uuid,
    cursor: Option<&str>,
    limit: Option<i64>,
) -> Result<FilePage, QueryError> {
    let (after, limit) = paging(cursor, limit)?;
    let rows: Vec<FileRow> = sqlx::query_as(&format!(
        "SELECT {FILE_COLUMNS} FROM rm_files
          WHERE owner_id = $1 AND status <> 'deleted'
            AND ($2::timestamptz IS NULL OR (created_at, file_id) < ($2, $3))
          ORDER BY created_at DESC, file_id DESC
          LIMIT $4"
    ))
    .bind(owner)
    .bind(after.map(|c| c.created_at))
    .bind(after.map(|c| c.id))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let items: Vec<FileSummary> = rows.into_iter().map(FileSummary::from).collect();
    let (items, next_cursor) = page(items, limit, |f| KeysetCursor { created_at: f.created_at, id: f.file_id });
    Ok(FilePage { items, next_cursor })
}

/// One of `owner`'s files; `None` when there is none by that id, it is someone else's, or
/// it was deleted.
pub async fn file(pool: &PgPool, owner: Uuid, id: Uuid) -> Result<Option<FileSummary>, QueryError> {
    let row: Option<FileRow> = sqlx::query_as(&format!(
        "SELECT {FILE_COLUMNS} FROM rm_files WHERE file_id = $1 AND owner_id = $2 AND status <> 'deleted'"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(FileSummary::from))
}

/// One page of `owner`'s knowledge documents, newest first, after `cursor` (a
/// `next_cursor`), only those carrying `tag` (compared in the normal form tags are stored
/// in, so `Travel` finds `travel`) and filed under `category` (as entered, surrounding
/// spaces aside), when given. A tag no document could carry finds nothing.
pub async fn list_documents(
    pool: &PgPool,
    owner: Uuid,
    tag: Option<&str>,
    category: Option<&str>,
    cursor: Option<&str>,
    limit: Option<i64>,
) -> Result<DocumentPage, QueryError> {
    let (after, limit) = paging(cursor, limit)?;
    let tag = match tag.map(|t| normalise_tags(&[t.to_string()])) {
        None => None,
        Some(Ok(mut normal)) => normal.pop(),
        Some(Err(_)) => return Ok(DocumentPage { items: Vec::new(), next_cursor: None }),
    };
    let rows: Vec<DocumentRow> = sqlx::query_as(&format!(
        "SELECT {DOCUMENT_COLUMNS} FROM rm_knowledge_documents
          WHERE owner_id = $1 AND status <> 'deleted'
            AND ($2::text IS NULL OR tags @> ARRAY[$2::text])
            AND ($3::text IS NULL OR category = $3)
            AND ($4::timestamptz IS NULL OR (created_at, document_id) < ($4, $5))
          ORDER BY created_at DESC, document_id DESC
          LIMIT $6"
    ))
    .bind(owner)
    .bind(tag)
    .bind(category.map(str::trim))
    .bind(after.map(|c| c.created_at))
    .bind(after.map(|c| c.id))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let items: Vec<DocumentSummary> = rows.into_iter().map(DocumentSummary::from).collect();
    let (items, next_cursor) = page(items, limit, |d| KeysetCursor { created_at: d.created_at, id: d.document_id });
    Ok(DocumentPage { items, next_cursor })
}

/// One of `owner`'s knowledge documents; `None` when there is none by that id, it is
/// someone else's, or it was deleted.
pub async fn document(pool: &PgPool, owner: Uuid, id: Uuid) -> Result<Option<DocumentSummary>, QueryError> {
    let row: Option<DocumentRow> = sqlx::query_as(&format!(
        "SELECT {DOCUMENT_COLUMNS} FROM rm_knowledge_documents
          WHERE document_id = $1 AND owner_id = $2 AND status <> 'deleted'"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(DocumentSummary::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_to_the_microsecond() {
        let c = KeysetCursor { created_at: Utc::now(), id: Uuid::new_v4() };
        let back = KeysetCursor::decode(&c.encode());
        assert_eq!(
            back.map(|d| (d.created_at.timestamp_micros(), d.id)),
            Some((c.created_at.timestamp_micros(), c.id))
        );
    }

    #[test]
    fn forged_cursors_are_refused() {
        let id = Uuid::nil().simple();
        for raw in [
            format!("{}_{id}", CURSOR_MIN_MICROS - 1),
            format!("{}_{id}", CURSOR_MAX_MICROS + 1),
            format!("{}_{id}", i64::MAX),
            "99999999999999999999_x".to_string(),
            "12_not-a-uuid".to_string(),
            "no-separator".to_string(),
        ] {
            assert_eq!(KeysetCursor::decode(&raw), None, "{raw}");
        }
        assert!(KeysetCursor::decode(&format!("{CURSOR_MIN_MICROS}_{id}")).is_some());
        assert!(KeysetCursor::decode(&format!("{CURSOR_MAX_MICROS}_{id}")).is_some());
    }

    #[test]
    fn limits_outside_1_to_max_page_are_refused() {
        assert!(matches!(paging(None, Some(0)), Err(QueryError::InvalidLimit)));
        assert!(matches!(paging(None, Some(MAX_PAGE + 1)), Err(QueryError::InvalidLimit)));
        assert!(matches!(paging(None, None), Ok((None, DEFAULT_PAGE))));
        assert!(matches!(paging(Some("garbage"), Some(5)), Err(QueryError::InvalidCursor)));
    }

    #[test]
    fn a_page_cut_from_one_row_more_than_the_limit_has_a_next_cursor() {
        let at = Utc::now();
        let ids: Vec<Uuid> = (1..=3).map(Uuid::from_u128).collect();
        let key = |id: &Uuid| KeysetCursor { created_at: at, id: *id };
        let (items, next) = page(ids.clone(), 2, key);
        assert_eq!(items, ids[..2]);
        assert_eq!(next, Some(key(&ids[1]).encode()));
        let (items, next) = page(ids[..2].to_vec(), 2, key);
        assert_eq!((items.len(), next), (2, None));
    }
}
