//! The ingest worker's handling of a redelivered event, against real Postgres: Kafka
//! delivers at least once, so `ingest::handle` sees the same `DocumentCreated` twice (and
//! sees it again after the document was revised). A redelivery must rewrite the same chunk
//! rows, never add rows or a second live version, never record the indexing twice on the
//! aggregate, and an old event must never put an old version back over a newer one.
//!
//! The embedder is a deterministic test embedder implemented here (384 values, like the
//! local all-MiniLM-L6-v2): this crate does not depend on `colloquy-local`, and what is
//! checked is the bookkeeping of ids and rows, not the quality of the vectors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use colloquy_commands::ingest::{self, IngestDeps};
use colloquy_commands::knowledge::{CreateDocument, ReviseDocument};
use colloquy_commands::{Caller, CommandSettings, Commands};
use colloquy_domain::knowledge::{DocumentSource, DocumentStatus};
use colloquy_domain::KnowledgeDocument;
use colloquy_extract::{ChunkSettings, Limits};
use colloquy_infra::event_store::{self, StoredEvent};
use colloquy_infra::file_storage::FileStorage;
use colloquy_infra::knowledge_index::chunk_id;
use colloquy_infra::metrics::Metrics;
use colloquy_infra::settings::{LocalStorageSettings, StorageBackend, StorageSettings};
use colloquy_infra::testing::TestDatabase;
use colloquy_providers::{Embedder, ProviderError};
use cqrs_es::Aggregate;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Small chunks, so that both versions have several and positions matter.
const CHUNKING: ChunkSettings = ChunkSettings { max_tokens: 40, overlap_tokens: 8 };

const FIRST_TEXT: &str = "Expense claims for travel must be filed within thirty days of the trip, \
with every receipt attached and the purpose of the journey stated.\n\n\
Trains are booked in standard class for journeys under four hours; longer journeys may be \
booked in first class when the traveller works on the way.\n\n\
Hotels are paid up to one hundred and forty pounds a night in London and up to ninety-five \
pounds a night elsewhere, breakfast included.\n\n\
The mileage rate for a private car is forty-five pence a mile for the first ten thousand \
business miles in the tax year and twenty-five pence after that.";

const REVISED_TEXT: &str = "Expense claims are filed in the expenses app within sixty days \
of the trip; paper receipts are photographed and the originals kept for six months.\n\n\
All rail travel is booked in standard class, whatever the length of the journey, through \
the company's travel desk.\n\n\
Meals while travelling are reimbursed up to thirty pounds a day, alcohol excluded, and \
tips are capped at a tenth of the bill.";

/// A deterministic embedder: each word adds to a few of 384 buckets chosen by its hash, and
/// the sum is normalised. Counts the texts it embedded.
struct HashEmbedder {
    texts: AtomicUsize,
}

impl HashEmbedder {
    const DIMENSION: usize = 384;

    fn embedded(&self) -> usize {
        self.texts.load(Ordering::SeqCst)
    }

    fn vector(text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; Self::DIMENSION];
        for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            // FNV-1a: stable across runs and platforms, unlike std's RandomState.
            let hash = word
                .to_lowercase()
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
            for k in 0..3 {
                let bucket = (hash >> (k * 16)) as usize % Self::DIMENSION;
                v[bucket] += if (hash >> (48 + k)) & 1 == 0 { 1.0 } else { -1.0 };
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        v.iter().map(|x| x / norm).collect()
    }
}

#[async_trait::async_trait]
impl Embedder for HashEmbedder {
    fn model(&self) -> &str {
        "test-hash-384"
    }

    fn dimension(&self) -> usize {
        Self::DIMENSION
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ProviderError> {
        self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        Ok(texts.iter().map(|t| Self::vector(t)).collect())
    }
}

/// A folder of its own for the file storage, removed afterwards.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("colloquy-ingest-redelivery-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct World {
    db: TestDatabase,
    _files: TempDir,
    commands: Arc<Commands>,
    embedder: Arc<HashEmbedder>,
    deps: IngestDeps,
}

async fn world() -> World {
    let db = TestDatabase::create().await;
    let files = TempDir::new();
    let storage = StorageSettings {
        backend: StorageBackend::Local,
        local: LocalStorageSettings { root: files.0.clone() },
        ..StorageSettings::default()
    };
    let commands = Arc::new(Commands::new(db.pool.clone(), Metrics::new(), CommandSettings::default()));
    let embedder = Arc::new(HashEmbedder { texts: AtomicUsize::new(0) });
    let deps = IngestDeps {
        commands: commands.clone(),
        pool: db.pool.clone(),
        storage: FileStorage::from_settings(&storage).unwrap(),
        embedder: embedder.clone(),
        chunking: CHUNKING,
        limits: Limits::default(),
        max_file_bytes: 1024 * 1024,
    };
    World { db, _files: files, commands, embedder, deps }
}

/// Every chunk row of the document, whatever its version, in (version, position) order:
/// id, version, position, text and an MD5 of the vector as Postgres prints it (short enough
/// to read in a failed assertion).
async fn chunk_rows(pool: &PgPool, document: Uuid) -> Vec<(Uuid, i32, i32, String, String)> {
    sqlx::query(
        "SELECT chunk_id, doc_version, position, content, md5(embedding::text) AS embedding
           FROM knowledge_chunks WHERE document_id = $1 ORDER BY doc_version, position",
    )
    .bind(document)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("chunk_id"), r.get("doc_version"), r.get("position"), r.get("content"), r.get("embedding")))
    .collect()
}

async fn count(pool: &PgPool, sql: &str, document: Uuid) -> i64 {
    sqlx::query_scalar(sql).bind(document).fetch_one(pool).await.unwrap()
}

/// The document's rows in `knowledge_index` and its live version.
async fn index_rows(pool: &PgPool, document: Uuid) -> (i64, Option<i32>) {
    let rows = count(pool, "SELECT count(*) FROM knowledge_index WHERE document_id = $1", document).await;
    let live: Option<i32> = sqlx::query_scalar("SELECT live_version FROM knowledge_index WHERE document_id = $1")
        .bind(document)
        .fetch_optional(pool)
        .await
        .unwrap()
        .flatten();
    (rows, live)
}

async fn events(pool: &PgPool, document: Uuid) -> Vec<StoredEvent> {
    event_store::read_aggregate(pool, KnowledgeDocument::TYPE, &document.to_string(), 0, None).await.unwrap()
}

/// The versions the aggregate recorded as indexed, one entry per `DocumentIndexed`.
async fn indexed_records(pool: &PgPool, document: Uuid) -> Vec<u64> {
    events(pool, document)
        .await
        .iter()
        .filter(|e| e.event_type == "DocumentIndexed")
        .map(|e| e.data["version"].as_u64().expect("DocumentIndexed has a version"))
        .collect()
}

async fn the_event(pool: &PgPool, document: Uuid, event_type: &str) -> StoredEvent {
    let all = events(pool, document).await;
    let mut found: Vec<StoredEvent> = all.into_iter().filter(|e| e.event_type == event_type).collect();
    assert_eq!(found.len(), 1, "exactly one {event_type}");
    found.remove(0)
}

fn expected_ids(document: Uuid, version: u32, chunks: usize) -> Vec<Uuid> {
    (0..chunks as u32).map(|position| chunk_id(document, version, position)).collect()
}

fn ids_of(rows: &[(Uuid, i32, i32, String, String)]) -> Vec<Uuid> {
    rows.iter().map(|r| r.0).collect()
}

#[tokio::test]
async fn a_redelivered_document_created_rewrites_the_same_chunks_and_is_recorded_once() {
    let w = world().await;
    let pool = &w.db.pool;
    let owner = Uuid::new_v4();
    let caller = Caller::user(owner, "redelivery".into(), "req-1");
    let input = CreateDocument {
        id: None,
        title: "Expenses".into(),
        tags: vec![],
        category: None,
        source: DocumentSource::Text { text: FIRST_TEXT.into() },
    };
    let document = w.commands.create_document(&caller, input).await.unwrap().value.document_id;
    let created = the_event(pool, document, "DocumentCreated").await;

    ingest::handle(&w.deps, &created).await.expect("first delivery");
    let first = chunk_rows(pool, document).await;
    assert!(first.len() >= 3, "the text makes several chunks, got {}", first.len());
    assert_eq!(ids_of(&first), expected_ids(document, 1, first.len()));
    assert!(first.iter().all(|r| r.1 == 1));
    assert_eq!(w.embedder.embedded(), first.len(), "one embedding per chunk");
    assert_eq!(index_rows(pool, document).await, (1, Some(1)));
    assert_eq!(indexed_records(pool, document).await, [1]);
    let (state, aggregate_version) = w.commands.document_state(document).await.unwrap();
    assert_eq!(state.status, DocumentStatus::Ready);

    // The same event again, as Kafka redelivers it after a lost offset commit.
    ingest::handle(&w.deps, &created).await.expect("a redelivery is not an error");
    let second = chunk_rows(pool, document).await;
    assert_eq!(second, first, "same chunk ids, texts and vectors, no extra rows");
    let all_rows = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM knowledge_chunks").fetch_one(pool).await.unwrap();
    assert_eq!(all_rows, first.len() as i64, "no rows anywhere else either");
    assert_eq!(index_rows(pool, document).await, (1, Some(1)), "one live version");
    assert_eq!(indexed_records(pool, document).await, [1], "indexed recorded once");
    let (state, version_after) = w.commands.document_state(document).await.unwrap();
    assert_eq!((state.status, version_after), (DocumentStatus::Ready, aggregate_version), "no new event");
}

#[tokio::test]
async fn an_old_document_created_delivered_after_a_revision_leaves_the_new_version_live() {
    let w = world().await;
    let pool = &w.db.pool;
    let owner = Uuid::new_v4();
    let caller = Caller::user(owner, "redelivery".into(), "req-1");
    let input = CreateDocument {
        id: None,
        title: "Expenses".into(),
        tags: vec![],
        category: None,
        source: DocumentSource::Text { text: FIRST_TEXT.into() },
    };
    let document = w.commands.create_document(&caller, input).await.unwrap().value.document_id;
    let created = the_event(pool, document, "DocumentCreated").await;
    ingest::handle(&w.deps, &created).await.expect("version 1");

    let revision = ReviseDocument { text: Some(REVISED_TEXT.into()), ..ReviseDocument::default() };
    w.commands.revise_document(&Caller::user(owner, "redelivery".into(), "req-2"), document, revision).await.unwrap();
    let revised = the_event(pool, document, "DocumentRevised").await;

    // The old event arrives between the revision and its indexing: version 1 stays live
    // (nothing newer is indexed yet) and nothing is recorded.
    ingest::handle(&w.deps, &created).await.expect("an old event before the new one is indexed");
    let still_first = chunk_rows(pool, document).await;
    assert!(still_first.iter().all(|r| r.1 == 1), "version 1's chunks only");
    assert_eq!(index_rows(pool, document).await, (1, Some(1)));
    assert_eq!(indexed_records(pool, document).await, [1]);

    ingest::handle(&w.deps, &revised).await.expect("version 2");
    let second = chunk_rows(pool, document).await;
    assert!(!second.is_empty());
    assert_eq!(ids_of(&second), expected_ids(document, 2, second.len()), "only version 2's chunks are left");
    assert!(second.iter().all(|r| r.1 == 2));
    assert!(second.iter().all(|r| !r.3.contains("thirty days")), "no text of version 1");
    assert_eq!(index_rows(pool, document).await, (1, Some(2)));
    assert_eq!(indexed_records(pool, document).await, [1, 2]);
    let (_, aggregate_version) = w.commands.document_state(document).await.unwrap();

    // The OLD event once more, after version 2 is live: it must not bring version 1 back.
    ingest::handle(&w.deps, &created).await.expect("an old redelivery is not an error");
    assert_eq!(chunk_rows(pool, document).await, second, "version 2's chunks untouched");
    assert_eq!(index_rows(pool, document).await, (1, Some(2)), "version 2 stays live");
    assert_eq!(indexed_records(pool, document).await, [1, 2], "nothing recorded for the old version");

    // And the revision's own event redelivered: the same rows again.
    ingest::handle(&w.deps, &revised).await.expect("a redelivered revision is not an error");
    assert_eq!(chunk_rows(pool, document).await, second);
    assert_eq!(index_rows(pool, document).await, (1, Some(2)));
    assert_eq!(indexed_records(pool, document).await, [1, 2]);
    let (state, version_after) = w.commands.document_state(document).await.unwrap();
    assert_eq!((state.status, state.version, version_after), (DocumentStatus::Ready, 2, aggregate_version));
}
