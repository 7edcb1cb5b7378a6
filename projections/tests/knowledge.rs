//! The files and knowledge-document projections and their queries on a real database:
//! events written into `events` (typed domain events, serialised as the command service
//! stores them) are applied with the exactly-once routine the projector and rebuilds use,
//! and the queries read the result.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use colloquy_domain::file::{FileDeleted, FileEvent, FileProcessed, FileProcessingFailed, FileUploaded};
use colloquy_domain::knowledge::{
    DocumentCreated, DocumentDeleted, DocumentIndexed, DocumentIndexingFailed, DocumentRevised, DocumentSource,
    DocumentUpdated, KnowledgeDocumentEvent,
};
use colloquy_infra::event_store::{self, StoredEvent};
use colloquy_infra::testing::{eventually, insert_event, TestDatabase};
use colloquy_projections::files::FilesProjection;
use colloquy_projections::knowledge::KnowledgeProjection;
use colloquy_projections::knowledge_queries::{
    self as q, DocumentPage, DocumentSummary, FailureReason, FilePage, FileSummary, KeysetCursor,
};
use colloquy_projections::projection::{apply_all_in_order, apply_in_order, Applied};
use colloquy_projections::queries::QueryError;
use colloquy_projections::{rebuild, ApplyError, Projection};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

const FILE: &str = "File";
const DOC: &str = "KnowledgeDocument";

// ---------------------------------------------------------------------------------------
// Writing and projecting events.

/// Appends `event` as the `sequence`th event of `id`.
async fn write<'e>(
    db: impl sqlx::PgExecutor<'e>,
    aggregate_type: &str,
    id: Uuid,
    sequence: i64,
    event: impl serde::Serialize,
) {
    insert_event(db, aggregate_type, id, sequence, serde_json::to_value(event).unwrap()).await;
}

/// The events of an aggregate after sequence `from`, as the event store holds them.
async fn stored(pool: &PgPool, aggregate_type: &str, id: Uuid, from: i64) -> Vec<StoredEvent> {
    event_store::read_aggregate(pool, aggregate_type, &id.to_string(), from, None).await.unwrap()
}

/// Applies `events` in one committed transaction, as the projector's fast path does.
async fn project(pool: &PgPool, projection: &dyn Projection, events: &[StoredEvent]) -> Vec<Applied> {
    let mut tx = pool.begin().await.unwrap();
    let outcomes = apply_all_in_order(&mut tx, projection, projection.name(), projection.table(), events)
        .await
        .unwrap_or_else(|f| panic!("{}: event {} failed: {}", projection.name(), f.index, f.error));
    tx.commit().await.unwrap();
    outcomes
}

/// Projects every event of `id` after sequence `from`.
async fn catch_up(pool: &PgPool, projection: &dyn Projection, aggregate_type: &str, id: Uuid, from: i64) {
    let events = stored(pool, aggregate_type, id, from).await;
    assert!(!events.is_empty(), "no events of {id} after {from}");
    project(pool, projection, &events).await;
}

/// Calls the projection's `apply` directly, outside the exactly-once routine (as a buggy
/// caller might), and commits: what the row's own guards make of an event seen again.
async fn apply_raw(pool: &PgPool, projection: &dyn Projection, event: &StoredEvent) -> Option<Uuid> {
    let mut tx = pool.begin().await.unwrap();
    let owner = projection.apply(&mut tx, projection.table(), event).await.unwrap();
    tx.commit().await.unwrap();
    owner
}

fn applied(touched: &[Uuid]) -> Applied {
    Applied::Applied { filled: 0, touched: touched.to_vec() }
}

/// Every row of `table` as JSON, in `order`.
async fn dump(pool: &PgPool, table: &str, order: &str) -> Value {
    sqlx::query_scalar(&format!("SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY {order}), '[]') FROM {table} t"))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// One row of `table` as JSON, tombstones included.
async fn raw_row(pool: &PgPool, table: &str, key: &str, id: Uuid) -> Value {
    sqlx::query_scalar(&format!("SELECT to_jsonb(t) FROM {table} t WHERE {key} = $1"))
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A `timestamptz` read through `to_jsonb`.
fn timestamp(value: &Value) -> DateTime<Utc> {
    serde_json::from_value(value.clone()).unwrap()
}

// ---------------------------------------------------------------------------------------
// Files.

fn uploaded(file: Uuid, owner: Uuid, name: &str) -> FileEvent {
    FileEvent::FileUploaded(FileUploaded {
        file_id: file,
        owner_id: owner,
        file_name: name.into(),
        media_type: "application/pdf".into(),
        size_bytes: 48_213,
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        storage_key: format!("files/{file}"),
    })
}

fn processed() -> FileEvent {
    FileEvent::FileProcessed(FileProcessed { text_length: 12_400, pages: Some(3), chunks: 14 })
}

fn processing_failed() -> FileEvent {
    FileEvent::FileProcessingFailed(FileProcessingFailed {
        code: "encrypted_pdf".into(),
        message: "The PDF is password-protected; upload an unprotected copy.".into(),
    })
}

fn file_deleted() -> FileEvent {
    FileEvent::FileDeleted(FileDeleted {})
}

/// A file of `owner`'s, uploaded (one event) and projected.
async fn upload(pool: &PgPool, owner: Uuid, name: &str) -> Uuid {
    let file = Uuid::new_v4();
    write(pool, FILE, file, 1, uploaded(file, owner, name)).await;
    catch_up(pool, &FilesProjection, FILE, file, 0).await;
    file
}

async fn file_of(pool: &PgPool, owner: Uuid, file: Uuid) -> FileSummary {
    q::file(pool, owner, file).await.unwrap().expect("a projected file")
}

/// Every page of `owner`'s files, `limit` at a time.
async fn all_file_pages(pool: &PgPool, owner: Uuid, limit: i64) -> Vec<Vec<Uuid>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let FilePage { items, next_cursor } = q::list_files(pool, owner, cursor.as_deref(), Some(limit)).await.unwrap();
        pages.push(items.iter().map(|f| f.file_id).collect());
        match next_cursor {
            Some(next) => cursor = Some(next),
            None => return pages,
        }
        assert!(pages.len() < 100, "the pages never end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_listed_as_processing_then_ready() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let (owner, file) = (Uuid::new_v4(), Uuid::new_v4());
    write(pool, FILE, file, 1, uploaded(file, owner, "Quarterly report.pdf")).await;

    let events = stored(pool, FILE, file, 0).await;
    assert_eq!(project(pool, &FilesProjection, &events).await, [applied(&[owner])]);
    let at = events[0].recorded_at;
    let expected = FileSummary {
        file_id: file,
        owner_id: owner,
        file_name: "Quarterly report.pdf".into(),
        media_type: "application/pdf".into(),
        size_bytes: 48_213,
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        status: "processing".into(),
        text_length: None,
        pages: None,
        chunks: None,
        error: None,
        version: 1,
        created_at: at,
        updated_at: at,
    };
    assert_eq!(file_of(pool, owner, file).await, expected);
    assert_eq!(raw_row(pool, "rm_files", "file_id", file).await["storage_key"], format!("files/{file}"));

    write(pool, FILE, file, 2, processed()).await;
    let events = stored(pool, FILE, file, 1).await;
    assert_eq!(project(pool, &FilesProjection, &events).await, [applied(&[owner])]);
    let ready = FileSummary {
        status: "ready".into(),
        text_length: Some(12_400),
        pages: Some(3),
        chunks: Some(14),
        version: 2,
        updated_at: events[0].recorded_at,
        ..expected
    };
    assert_eq!(file_of(pool, owner, file).await, ready);
    let page = q::list_files(pool, owner, None, None).await.unwrap();
    assert_eq!((page.items, page.next_cursor), (vec![ready], None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_extraction_shows_its_reason() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let owner = Uuid::new_v4();
    let file = upload(pool, owner, "secret.pdf").await;
    let before = file_of(pool, owner, file).await;
    write(pool, FILE, file, 2, processing_failed()).await;
    catch_up(pool, &FilesProjection, FILE, file, 1).await;

    let failed_at = stored(pool, FILE, file, 1).await[0].recorded_at;
    let expected = FileSummary {
        status: "failed".into(),
        error: Some(FailureReason {
            code: "encrypted_pdf".into(),
            message: "The PDF is password-protected; upload an unprotected copy.".into(),
        }),
        version: 2,
        updated_at: failed_at,
        ..before
    };
    assert_eq!(file_of(pool, owner, file).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_file_is_a_tombstone_without_its_name_and_disappears_from_lists_and_gets() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let owner = Uuid::new_v4();
    let kept = upload(pool, owner, "kept.txt").await;
    let file = upload(pool, owner, "diary.txt").await;
    write(pool, FILE, file, 2, processed()).await;
    write(pool, FILE, file, 3, file_deleted()).await;
    let events = stored(pool, FILE, file, 1).await;
    assert_eq!(project(pool, &FilesProjection, &events).await, [applied(&[owner]), applied(&[owner])]);

    assert_eq!(q::file(pool, owner, file).await.unwrap(), None);
    let listed: Vec<Uuid> =
        q::list_files(pool, owner, None, None).await.unwrap().items.iter().map(|f| f.file_id).collect();
    assert_eq!(listed, [kept]);
    let row = raw_row(pool, "rm_files", "file_id", file).await;
    assert_eq!(
        (row["status"].as_str(), row["file_name"].as_str(), row["version"].as_i64()),
        (Some("deleted"), Some(""), Some(3))
    );
    assert_eq!(timestamp(&row["updated_at"]), events[1].recorded_at);

    // Whatever is delivered again, even straight to `apply`, the file stays deleted.
    let all = stored(pool, FILE, file, 0).await;
    let table = dump(pool, "rm_files", "file_id").await;
    for event in &all {
        assert_eq!(apply_raw(pool, &FilesProjection, event).await, None, "{}", event.event_type);
    }
    assert_eq!(dump(pool, "rm_files", "file_id").await, table);
    assert_eq!(q::file(pool, owner, file).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_file_event_changes_nothing() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let owner = Uuid::new_v4();
    let (ready, failed) = (Uuid::new_v4(), Uuid::new_v4());
    write(pool, FILE, ready, 1, uploaded(ready, owner, "a.pdf")).await;
    write(pool, FILE, ready, 2, processed()).await;
    write(pool, FILE, failed, 1, uploaded(failed, owner, "b.pdf")).await;
    write(pool, FILE, failed, 2, processing_failed()).await;
    let mut events = stored(pool, FILE, ready, 0).await;
    events.extend(stored(pool, FILE, failed, 0).await);
    project(pool, &FilesProjection, &events).await;
    let table = dump(pool, "rm_files", "file_id").await;

    // Through the exactly-once routine: duplicates, skipped.
    assert_eq!(project(pool, &FilesProjection, &events).await, vec![Applied::Duplicate; 4]);
    for event in &events {
        let mut tx = pool.begin().await.unwrap();
        let outcome = apply_in_order(&mut tx, &FilesProjection, "files", "rm_files", event).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(outcome, Applied::Duplicate);
    }
    // Straight to `apply`: the version guard and the insert that never overwrites hold.
    for event in &events {
        assert_eq!(apply_raw(pool, &FilesProjection, event).await, None, "{}", event.event_type);
    }
    assert_eq!(dump(pool, "rm_files", "file_id").await, table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_pages_are_complete_disjoint_newest_first_and_only_the_owners() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let (owner, stranger) = (Uuid::new_v4(), Uuid::new_v4());
    // Three uploads in one transaction share their `created_at`: the id breaks the tie.
    let tied: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let mut tx = pool.begin().await.unwrap();
    for (i, file) in tied.iter().enumerate() {
        write(&mut *tx, FILE, *file, 1, uploaded(*file, owner, &format!("tied {i}"))).await;
    }
    tx.commit().await.unwrap();
    for file in &tied {
        catch_up(pool, &FilesProjection, FILE, *file, 0).await;
    }
    let mut mine = tied.clone();
    for i in 0..4 {
        mine.push(upload(pool, owner, &format!("file {i}")).await);
    }
    let theirs = upload(pool, stranger, "theirs.txt").await;
    let gone = upload(pool, owner, "gone.txt").await;
    write(pool, FILE, gone, 2, file_deleted()).await;
    catch_up(pool, &FilesProjection, FILE, gone, 1).await;

    let mut expected: Vec<FileSummary> = Vec::new();
    for file in &mine {
        expected.push(file_of(pool, owner, *file).await);
    }
    assert!(expected[..3].iter().all(|f| f.created_at == expected[0].created_at), "the tie this test is about");
    expected.sort_by_key(|f| std::cmp::Reverse((f.created_at, f.file_id)));
    let newest_first: Vec<Uuid> = expected.iter().map(|f| f.file_id).collect();

    for limit in [1, 2, 3, 7, 100] {
        let pages = all_file_pages(pool, owner, limit).await;
        assert!(pages.iter().all(|p| p.len() as i64 <= limit && !p.is_empty()), "limit {limit}: {pages:?}");
        let flat: Vec<Uuid> = pages.concat();
        assert_eq!(flat, newest_first, "limit {limit}: every file once, newest first");
        assert_eq!(flat.iter().collect::<HashSet<_>>().len(), flat.len(), "limit {limit}: pages overlap");
    }

    // The stranger sees only their own, and none of the owner's by id.
    let listed: Vec<Uuid> =
        q::list_files(pool, stranger, None, None).await.unwrap().items.iter().map(|f| f.file_id).collect();
    assert_eq!(listed, [theirs]);
    for file in &mine {
        assert_eq!(q::file(pool, stranger, *file).await.unwrap(), None);
    }
    assert_eq!(q::file(pool, owner, theirs).await.unwrap(), None);
    // Someone with nothing sees nothing.
    let nobody = q::list_files(pool, Uuid::new_v4(), None, None).await.unwrap();
    assert!(nobody.items.is_empty() && nobody.next_cursor.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limits_and_cursors_are_refused() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let owner = Uuid::new_v4();
    for limit in [0, -1, 101] {
        assert!(matches!(q::list_files(pool, owner, None, Some(limit)).await, Err(QueryError::InvalidLimit)));
        assert!(matches!(
            q::list_documents(pool, owner, None, None, None, Some(limit)).await,
            Err(QueryError::InvalidLimit)
        ));
    }
    for cursor in ["", "abc", "1_2", &format!("{}_{}", i64::MAX, Uuid::nil().simple())] {
        assert!(matches!(q::list_files(pool, owner, Some(cursor), None).await, Err(QueryError::InvalidCursor)));
        assert!(matches!(
            q::list_documents(pool, owner, None, None, Some(cursor), None).await,
            Err(QueryError::InvalidCursor)
        ));
    }
}

// ---------------------------------------------------------------------------------------
// Knowledge documents.

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn created(document: Uuid, owner: Uuid, title: &str, tags: &[&str], category: Option<&str>) -> KnowledgeDocumentEvent {
    KnowledgeDocumentEvent::DocumentCreated(DocumentCreated {
        document_id: document,
        owner_id: owner,
        version: 1,
        title: title.into(),
        tags: strings(tags),
        category: category.map(Into::into),
        source: DocumentSource::Text { text: "Book trains for trips under four hours.".into() },
    })
}

fn updated(update: DocumentUpdated) -> KnowledgeDocumentEvent {
    KnowledgeDocumentEvent::DocumentUpdated(update)
}

fn revised(version: u32) -> KnowledgeDocumentEvent {
    KnowledgeDocumentEvent::DocumentRevised(DocumentRevised { version, text: format!("Text of version {version}.") })
}

fn indexed(version: u32, chunks: u32) -> KnowledgeDocumentEvent {
    KnowledgeDocumentEvent::DocumentIndexed(DocumentIndexed {
        version,
        chunks,
        chunking: "text-splitter characters 500..2000, overlap 200".into(),
        embedding_model: "local/all-minilm-l6-v2".into(),
        embedding_dimension: 384,
    })
}

fn indexing_failed(version: u32) -> KnowledgeDocumentEvent {
    KnowledgeDocumentEvent::DocumentIndexingFailed(DocumentIndexingFailed {
        version,
        code: "embedding_failed".into(),
        message: "The embedding service did not answer.".into(),
    })
}

fn document_deleted() -> KnowledgeDocumentEvent {
    KnowledgeDocumentEvent::DocumentDeleted(DocumentDeleted {})
}

/// A text document of `owner`'s, created (one event) and projected.
async fn create(pool: &PgPool, owner: Uuid, title: &str, tags: &[&str], category: Option<&str>) -> Uuid {
    let document = Uuid::new_v4();
    write(pool, DOC, document, 1, created(document, owner, title, tags, category)).await;
    catch_up(pool, &KnowledgeProjection, DOC, document, 0).await;
    document
}

/// Appends `events` to `document` after sequence `from` and projects them; returns their
/// commit times.
async fn follow(pool: &PgPool, document: Uuid, from: i64, events: Vec<KnowledgeDocumentEvent>) -> Vec<StoredEvent> {
    for (i, event) in events.into_iter().enumerate() {
        write(pool, DOC, document, from + 1 + i as i64, event).await;
    }
    let stored = stored(pool, DOC, document, from).await;
    project(pool, &KnowledgeProjection, &stored).await;
    stored
}

async fn document_of(pool: &PgPool, owner: Uuid, document: Uuid) -> DocumentSummary {
    q::document(pool, owner, document).await.unwrap().expect("a projected document")
}

async fn listed(pool: &PgPool, owner: Uuid, tag: Option<&str>, category: Option<&str>) -> Vec<Uuid> {
    let page = q::list_documents(pool, owner, tag, category, None, Some(100)).await.unwrap();
    assert_eq!(page.next_cursor, None);
    page.items.iter().map(|d| d.document_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_document_event_is_projected() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let (owner, document) = (Uuid::new_v4(), Uuid::new_v4());
    write(pool, DOC, document, 1, created(document, owner, "Travel policy", &["travel", "policy"], Some("HR"))).await;
    let events = stored(pool, DOC, document, 0).await;
    assert_eq!(project(pool, &KnowledgeProjection, &events).await, [applied(&[owner])]);
    let at = events[0].recorded_at;
    let fresh = DocumentSummary {
        document_id: document,
        owner_id: owner,
        title: "Travel policy".into(),
        tags: strings(&["travel", "policy"]),
        category: Some("HR".into()),
        source: "text".into(),
        file_id: None,
        doc_version: 1,
        status: "indexing".into(),
        chunks: None,
        chunking: None,
        embedding_model: None,
        embedding_dimension: None,
        error: None,
        version: 1,
        created_at: at,
        updated_at: at,
    };
    assert_eq!(document_of(pool, owner, document).await, fresh);

    // Metadata: title and tags replaced, the category removed.
    let e = follow(
        pool,
        document,
        1,
        vec![updated(DocumentUpdated {
            title: Some("Travel policy 2025".into()),
            tags: Some(strings(&["travel"])),
            category: Some(None),
        })],
    )
    .await;
    let renamed = DocumentSummary {
        title: "Travel policy 2025".into(),
        tags: strings(&["travel"]),
        category: None,
        version: 2,
        updated_at: e[0].recorded_at,
        ..fresh
    };
    assert_eq!(document_of(pool, owner, document).await, renamed);

    // Only the category given: the rest stays.
    let e = follow(
        pool,
        document,
        2,
        vec![updated(DocumentUpdated { category: Some(Some("Finance".into())), ..Default::default() })],
    )
    .await;
    let filed =
        DocumentSummary { category: Some("Finance".into()), version: 3, updated_at: e[0].recorded_at, ..renamed };
    assert_eq!(document_of(pool, owner, document).await, filed);

    // Version 1 indexed.
    let e = follow(pool, document, 3, vec![indexed(1, 4)]).await;
    let ready = DocumentSummary {
        status: "ready".into(),
        chunks: Some(4),
        chunking: Some("text-splitter characters 500..2000, overlap 200".into()),
        embedding_model: Some("local/all-minilm-l6-v2".into()),
        embedding_dimension: Some(384),
        version: 4,
        updated_at: e[0].recorded_at,
        ..filed.clone()
    };
    assert_eq!(document_of(pool, owner, document).await, ready);

    // A revision: version 2 awaits its index; version 1's record no longer describes it.
    let e = follow(pool, document, 4, vec![revised(2)]).await;
    let revising = DocumentSummary {
        doc_version: 2,
        status: "indexing".into(),
        version: 5,
        updated_at: e[0].recorded_at,
        ..filed
    };
    assert_eq!(document_of(pool, owner, document).await, revising);

    // Version 2 fails.
    let e = follow(pool, document, 5, vec![indexing_failed(2)]).await;
    let failed = DocumentSummary {
        status: "failed".into(),
        error: Some(FailureReason {
            code: "embedding_failed".into(),
            message: "The embedding service did not answer.".into(),
        }),
        version: 6,
        updated_at: e[0].recorded_at,
        ..revising
    };
    assert_eq!(document_of(pool, owner, document).await, failed);

    // Version 3 is indexed: the failure is gone.
    let e = follow(pool, document, 6, vec![revised(3), indexed(3, 2)]).await;
    let row = document_of(pool, owner, document).await;
    assert_eq!((row.doc_version, row.status.as_str(), row.chunks, row.error), (3, "ready", Some(2), None));
    assert_eq!((row.version, row.updated_at), (8, e[1].recorded_at));

    // Deleted: a tombstone without title, tags or category, neither found nor listed.
    let e = follow(pool, document, 8, vec![document_deleted()]).await;
    assert_eq!(q::document(pool, owner, document).await.unwrap(), None);
    assert!(listed(pool, owner, None, None).await.is_empty());
    let tomb = raw_row(pool, "rm_knowledge_documents", "document_id", document).await;
    assert_eq!(tomb["status"], "deleted");
    assert_eq!(
        (tomb["title"].as_str(), tomb["tags"].as_array().map(Vec::len), &tomb["category"]),
        (Some(""), Some(0), &Value::Null)
    );
    assert_eq!(tomb["version"], 9);
    assert_eq!(timestamp(&tomb["updated_at"]), e[0].recorded_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_made_from_a_file_names_it() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let (owner, document, file) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let event = KnowledgeDocumentEvent::DocumentCreated(DocumentCreated {
        document_id: document,
        owner_id: owner,
        version: 1,
        title: "Quarterly report.pdf".into(),
        tags: vec![],
        category: None,
        source: DocumentSource::File { file_id: file },
    });
    write(pool, DOC, document, 1, event).await;
    catch_up(pool, &KnowledgeProjection, DOC, document, 0).await;
    let row = document_of(pool, owner, document).await;
    assert_eq!(
        (row.source.as_str(), row.file_id, row.doc_version, row.status.as_str()),
        ("file", Some(file), 1, "indexing")
    );
    assert!(row.tags.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_indexing_record_is_ignored() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let owner = Uuid::new_v4();
    let document = create(pool, owner, "Travel policy", &["travel"], None).await;
    follow(pool, document, 1, vec![revised(2)]).await;
    let revising = document_of(pool, owner, document).await;
    assert_eq!((revising.doc_version, revising.status.as_str()), (2, "indexing"));

    // A worker finishing version 1 late, successfully or not, does not touch version 2.
    let outcomes = {
        write(pool, DOC, document, 3, indexed(1, 9)).await;
        write(pool, DOC, document, 4, indexing_failed(1)).await;
        project(pool, &KnowledgeProjection, &stored(pool, DOC, document, 2).await).await
    };
    assert_eq!(outcomes, [applied(&[owner]), applied(&[owner])]);
    assert_eq!(
        document_of(pool, owner, document).await,
        DocumentSummary { version: 4, ..revising.clone() },
        "only the version this row reflects moves"
    );

    // Version 2's own record applies.
    let e = follow(pool, document, 4, vec![indexed(2, 5)]).await;
    let ready = document_of(pool, owner, document).await;
    assert_eq!(
        (ready.status.as_str(), ready.chunks, ready.version, ready.updated_at),
        ("ready", Some(5), 5, e[0].recorded_at)
    );

    // A newer version's record is not this version's either.
    follow(pool, document, 5, vec![indexing_failed(3)]).await;
    assert_eq!(document_of(pool, owner, document).await, DocumentSummary { version: 6, ..ready });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_document_event_changes_nothing() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let owner = Uuid::new_v4();
    let (live, gone) = (Uuid::new_v4(), Uuid::new_v4());
    let history = |id: Uuid| {
        vec![
            created(id, owner, "Notes", &["a", "b"], Some("Work")),
            updated(DocumentUpdated { tags: Some(strings(&["a"])), ..Default::default() }),
            indexed(1, 3),
            revised(2),
            indexing_failed(2),
        ]
    };
    let mut events = Vec::new();
    for id in [live, gone] {
        for (i, event) in history(id).into_iter().enumerate() {
            write(pool, DOC, id, i as i64 + 1, event).await;
        }
    }
    write(pool, DOC, gone, 6, document_deleted()).await;
    events.extend(stored(pool, DOC, live, 0).await);
    events.extend(stored(pool, DOC, gone, 0).await);
    project(pool, &KnowledgeProjection, &events).await;
    let table = dump(pool, "rm_knowledge_documents", "document_id").await;

    assert_eq!(project(pool, &KnowledgeProjection, &events).await, vec![Applied::Duplicate; events.len()]);
    for event in &events {
        let mut tx = pool.begin().await.unwrap();
        let outcome =
            apply_in_order(&mut tx, &KnowledgeProjection, "knowledge", "rm_knowledge_documents", event).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(outcome, Applied::Duplicate);
    }
    // Straight to `apply`, out of order too: the row's guards hold, and the deleted one
    // is not brought back by its own `DocumentCreated`.
    for event in events.iter().rev() {
        assert_eq!(
            apply_raw(pool, &KnowledgeProjection, event).await,
            None,
            "{} #{}",
            event.event_type,
            event.sequence
        );
    }
    assert_eq!(dump(pool, "rm_knowledge_documents", "document_id").await, table);
    assert_eq!(listed(pool, owner, None, None).await, [live]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_listed_by_tag_and_by_category() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let owner = Uuid::new_v4();
    let travel = create(pool, owner, "Travel policy", &["travel", "policy"], Some("HR")).await;
    let expenses = create(pool, owner, "Expenses", &["policy", "money"], Some("Finance")).await;
    let trip = create(pool, owner, "Trip notes", &["travel"], None).await;
    let hiring = create(pool, owner, "Hiring", &[], Some("HR")).await;
    // Another owner's documents carry the same labels.
    let stranger = Uuid::new_v4();
    create(pool, stranger, "Theirs", &["travel", "policy"], Some("HR")).await;

    let newest_first = |ids: &[Uuid]| ids.iter().rev().copied().collect::<Vec<_>>();
    assert_eq!(listed(pool, owner, None, None).await, newest_first(&[travel, expenses, trip, hiring]));
    assert_eq!(listed(pool, owner, Some("travel"), None).await, newest_first(&[travel, trip]));
    assert_eq!(listed(pool, owner, Some("policy"), None).await, newest_first(&[travel, expenses]));
    // Tags are compared in their normal form.
    assert_eq!(listed(pool, owner, Some("  TRAVEL "), None).await, newest_first(&[travel, trip]));
    assert_eq!(listed(pool, owner, Some("nothing"), None).await, Vec::<Uuid>::new());
    // A tag no document could carry (blank) finds nothing rather than everything.
    assert_eq!(listed(pool, owner, Some("   "), None).await, Vec::<Uuid>::new());

    assert_eq!(listed(pool, owner, None, Some("HR")).await, newest_first(&[travel, hiring]));
    assert_eq!(listed(pool, owner, None, Some(" Finance ")).await, [expenses]);
    assert_eq!(listed(pool, owner, None, Some("hr")).await, Vec::<Uuid>::new(), "a category is matched as entered");
    assert_eq!(listed(pool, owner, Some("policy"), Some("HR")).await, [travel]);

    // Relabelling moves a document in and out of the lists.
    follow(
        pool,
        trip,
        1,
        vec![updated(DocumentUpdated {
            tags: Some(strings(&["holiday"])),
            category: Some(Some("HR".into())),
            ..Default::default()
        })],
    )
    .await;
    assert_eq!(listed(pool, owner, Some("travel"), None).await, [travel]);
    assert_eq!(listed(pool, owner, Some("holiday"), Some("HR")).await, [trip]);
    assert_eq!(listed(pool, owner, None, Some("HR")).await, newest_first(&[travel, trip, hiring]));

    // Deleted documents leave every list.
    follow(pool, travel, 1, vec![document_deleted()]).await;
    assert_eq!(listed(pool, owner, Some("policy"), None).await, [expenses]);
    assert_eq!(listed(pool, owner, None, Some("HR")).await, newest_first(&[trip, hiring]));
    assert_eq!(listed(pool, owner, None, None).await, newest_first(&[expenses, trip, hiring]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_pages_are_complete_disjoint_and_only_the_owners() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let (owner, stranger) = (Uuid::new_v4(), Uuid::new_v4());
    // Four documents created in one transaction share their `created_at`.
    let mut mine: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let mut tx = pool.begin().await.unwrap();
    for (i, document) in mine.iter().enumerate() {
        write(&mut *tx, DOC, *document, 1, created(*document, owner, &format!("tied {i}"), &["shared"], None)).await;
    }
    tx.commit().await.unwrap();
    for document in &mine {
        catch_up(pool, &KnowledgeProjection, DOC, *document, 0).await;
    }
    for i in 0..3 {
        mine.push(create(pool, owner, &format!("doc {i}"), &["shared"], None).await);
    }
    let theirs = create(pool, stranger, "Theirs", &["shared"], None).await;

    let mut expected = Vec::new();
    for document in &mine {
        expected.push(document_of(pool, owner, *document).await);
    }
    assert!(expected[..4].iter().all(|d| d.created_at == expected[0].created_at), "the tie this test is about");
    expected.sort_by_key(|d| std::cmp::Reverse((d.created_at, d.document_id)));
    let newest_first: Vec<Uuid> = expected.iter().map(|d| d.document_id).collect();

    for (tag, limit) in [(None, 1), (None, 2), (Some("shared"), 3), (None, 7), (Some("shared"), 100)] {
        let mut pages: Vec<Vec<Uuid>> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let DocumentPage { items, next_cursor } =
                q::list_documents(pool, owner, tag, None, cursor.as_deref(), Some(limit)).await.unwrap();
            assert!(!items.is_empty() && items.len() as i64 <= limit);
            pages.push(items.iter().map(|d| d.document_id).collect());
            match next_cursor {
                Some(next) => {
                    // The cursor is the last row's position.
                    let last = items.last().unwrap();
                    assert_eq!(KeysetCursor::decode(&next).map(|c| c.id), Some(last.document_id));
                    cursor = Some(next);
                }
                None => break,
            }
        }
        let flat = pages.concat();
        assert_eq!(flat, newest_first, "tag {tag:?}, limit {limit}: every document once, newest first");
        assert_eq!(flat.iter().collect::<HashSet<_>>().len(), flat.len());
    }

    assert_eq!(listed(pool, stranger, Some("shared"), None).await, [theirs]);
    for document in &mine {
        assert_eq!(q::document(pool, stranger, *document).await.unwrap(), None);
    }
    assert_eq!(q::document(pool, owner, theirs).await.unwrap(), None);
    assert_eq!(q::document(pool, owner, Uuid::new_v4()).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_naming_another_document_is_poison() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let document = Uuid::new_v4();
    write(pool, DOC, document, 1, created(Uuid::new_v4(), Uuid::new_v4(), "Elsewhere", &[], None)).await;
    let event = &stored(pool, DOC, document, 0).await[0];
    let mut tx = pool.begin().await.unwrap();
    let outcome = KnowledgeProjection.apply(&mut tx, "rm_knowledge_documents", event).await;
    assert!(matches!(outcome, Err(ApplyError::Poison(_))), "{outcome:?}");
}

// ---------------------------------------------------------------------------------------
// Both.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_projections_are_registered_and_rebuild_to_the_live_tables() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    for (name, table, aggregate) in [("files", "rm_files", FILE), ("knowledge", "rm_knowledge_documents", DOC)] {
        let p = colloquy_projections::by_name(name, &Default::default())
            .unwrap_or_else(|| panic!("{name} is not in all()"));
        assert_eq!((p.table(), p.aggregate_types()), (table, &[aggregate][..]));
    }

    let owner = Uuid::new_v4();
    let file = upload(pool, owner, "report.pdf").await;
    write(pool, FILE, file, 2, processed()).await;
    catch_up(pool, &FilesProjection, FILE, file, 1).await;
    let gone = upload(pool, owner, "gone.pdf").await;
    write(pool, FILE, gone, 2, file_deleted()).await;
    catch_up(pool, &FilesProjection, FILE, gone, 1).await;
    let document = create(pool, owner, "Report", &["q3"], Some("Finance")).await;
    follow(pool, document, 1, vec![indexed(1, 2), revised(2), indexed(1, 2)]).await;

    // Rebuilds read in commit order behind the cluster-wide fence: wait for all 8 events.
    eventually("the events past the fence", || async {
        let visible = event_store::read_committed(pool, Default::default(), None, 100).await.unwrap();
        (visible.len() == 8).then_some(())
    })
    .await;
    let indexes = "SELECT coalesce(jsonb_agg(jsonb_build_array(indexname, indexdef) ORDER BY indexname), '[]')
                     FROM pg_indexes WHERE tablename = $1";
    for (projection, key) in [(&FilesProjection as &dyn Projection, "file_id"), (&KnowledgeProjection, "document_id")] {
        let table = projection.table();
        let live = dump(pool, table, key).await;
        assert_eq!(live.as_array().map(Vec::len), Some(if key == "file_id" { 2 } else { 1 }));
        let shape: Value = sqlx::query_scalar(indexes).bind(table).fetch_one(pool).await.unwrap();
        rebuild::rebuild(pool, projection).await.unwrap();
        assert_eq!(dump(pool, table, key).await, live, "{table} rebuilt differs from live");
        let rebuilt: Value = sqlx::query_scalar(indexes).bind(table).fetch_one(pool).await.unwrap();
        assert_eq!(rebuilt, shape, "{table}'s indexes after the rebuild");
    }
}
