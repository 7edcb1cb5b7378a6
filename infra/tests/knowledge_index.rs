//! The chunk index: a version becomes searchable whole or not at all, a retried write adds
//! nothing, a deleted document leaves search at once and cannot come back, and every search
//! sees only its owner's passages (text, vector and hybrid).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_infra::knowledge_index::{
    self, chunk_id, EmbeddingSpace, IndexError, NewChunk, SearchMode, SearchQuery, Written,
};
use colloquy_infra::testing::TestDatabase;
use sqlx::PgPool;
use uuid::Uuid;

const DIM: usize = 4;

fn space() -> EmbeddingSpace {
    EmbeddingSpace { model: "test-embedder".into(), dimension: DIM }
}

/// A unit vector along axis `i` (plus a little of the next, so ties break).
fn axis(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; DIM];
    v[i % DIM] = 1.0;
    v[(i + 1) % DIM] = 0.1;
    v
}

fn chunk(position: u32, content: &str, axis_index: usize) -> NewChunk {
    NewChunk { position, content: content.into(), embedding: axis(axis_index) }
}

/// The document's read-model row (the projector's job in the running system).
async fn document_row(pool: &PgPool, owner: Uuid, document: Uuid, title: &str, tags: &[&str]) {
    sqlx::query(
        "INSERT INTO rm_knowledge_documents (document_id, owner_id, title, tags, source, doc_version, status,
                                             version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'text', 1, 'ready', 1, now(), now())",
    )
    .bind(document)
    .bind(owner)
    .bind(title)
    .bind(tags.iter().map(|t| t.to_string()).collect::<Vec<_>>())
    .execute(pool)
    .await
    .unwrap();
}

async fn search(pool: &PgPool, owner: Uuid, text: &str, embedding: Option<&[f32]>, mode: SearchMode) -> Vec<String> {
    let space = space();
    let query = SearchQuery { owner_id: owner, text, embedding, space: &space, k: 5, tags: &[], mode };
    knowledge_index::search(pool, &query).await.unwrap().into_iter().map(|p| p.content).collect()
}

async fn chunk_rows(pool: &PgPool, document: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM knowledge_chunks WHERE document_id = $1")
        .bind(document)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_written_version_is_found_by_text_vector_and_hybrid_search_of_its_owner_only() {
    let db = TestDatabase::create().await;
    let (owner, stranger, doc) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    document_row(&db.pool, owner, doc, "Garden notes", &["garden"]).await;
    let chunks = [chunk(0, "Tomatoes need deep watering twice a week.", 0), chunk(1, "Basil dislikes cold nights.", 1)];
    let written = knowledge_index::write_version(&db.pool, owner, doc, 1, &space(), &chunks).await.unwrap();
    assert_eq!(written, Written::Live);

    let text = search(&db.pool, owner, "watering tomatoes", None, SearchMode::Text).await;
    assert_eq!(text, ["Tomatoes need deep watering twice a week."]);
    let vector = search(&db.pool, owner, "", Some(&axis(1)), SearchMode::Vector).await;
    assert_eq!(vector.first().map(String::as_str), Some("Basil dislikes cold nights."));
    let hybrid = search(&db.pool, owner, "basil", Some(&axis(1)), SearchMode::Hybrid).await;
    assert_eq!(hybrid.first().map(String::as_str), Some("Basil dislikes cold nights."));

    // The owner filter is in the SQL: a stranger's search finds nothing, in every mode.
    for mode in [SearchMode::Text, SearchMode::Vector, SearchMode::Hybrid] {
        assert!(search(&db.pool, stranger, "basil tomatoes", Some(&axis(1)), mode).await.is_empty(), "{mode:?}");
    }
}

#[tokio::test]
async fn snippets_mark_the_matched_words_and_scores_rank_by_fusion() {
    let db = TestDatabase::create().await;
    let (owner, doc) = (Uuid::new_v4(), Uuid::new_v4());
    document_row(&db.pool, owner, doc, "Bikes", &[]).await;
    let chunks = [chunk(0, "Check the chain & its tension monthly.", 0), chunk(1, "Tyre pressure matters more.", 2)];
    knowledge_index::write_version(&db.pool, owner, doc, 1, &space(), &chunks).await.unwrap();
    let space = space();
    let axis0 = axis(0);
    let query = SearchQuery {
        owner_id: owner,
        text: "chain",
        embedding: Some(&axis0),
        space: &space,
        k: 5,
        tags: &[],
        mode: SearchMode::Hybrid,
    };
    let found = knowledge_index::search(&db.pool, &query).await.unwrap();
    let best = &found[0];
    assert_eq!(best.chunk_id, chunk_id(doc, 1, 0));
    assert_eq!((best.document_id, best.version, best.position), (doc, 1, 0));
    assert_eq!(best.title, "Bikes");
    assert!(best.snippet.contains("<mark>chain</mark> &amp; its"), "{}", best.snippet);
    assert_eq!((best.text_rank, best.vector_rank), (Some(1), Some(1)));
    // Found by both rankings, it outscores the passage only the vector ranking has.
    assert!(found.iter().skip(1).all(|p| p.score < best.score));
}

#[tokio::test]
async fn writing_a_version_again_adds_nothing_and_a_new_version_replaces_the_old_whole() {
    let db = TestDatabase::create().await;
    let (owner, doc) = (Uuid::new_v4(), Uuid::new_v4());
    document_row(&db.pool, owner, doc, "Notes", &[]).await;
    let v1 = [chunk(0, "old alpha text", 0), chunk(1, "old beta text", 1), chunk(2, "old gamma text", 2)];
    knowledge_index::write_version(&db.pool, owner, doc, 1, &space(), &v1).await.unwrap();
    // A retried or redelivered ingest of the same version.
    knowledge_index::write_version(&db.pool, owner, doc, 1, &space(), &v1).await.unwrap();
    assert_eq!(chunk_rows(&db.pool, doc).await, 3);

    let v2 = [chunk(0, "new alpha text", 3)];
    assert_eq!(knowledge_index::write_version(&db.pool, owner, doc, 2, &space(), &v2).await.unwrap(), Written::Live);
    assert_eq!(chunk_rows(&db.pool, doc).await, 1);
    let live = knowledge_index::live_chunks(&db.pool, owner, doc).await.unwrap();
    assert_eq!(live, vec![(chunk_id(doc, 2, 0), 0, "new alpha text".to_string())]);
    assert!(search(&db.pool, owner, "old", None, SearchMode::Text).await.is_empty());

    // A late worker still holding version 1 cannot bring it back.
    assert_eq!(knowledge_index::write_version(&db.pool, owner, doc, 1, &space(), &v1).await.unwrap(), Written::Stale);
    assert_eq!(search(&db.pool, owner, "alpha", None, SearchMode::Text).await, ["new alpha text"]);
}

#[tokio::test]
async fn a_removed_document_leaves_search_at_once_and_a_late_write_cannot_revive_it() {
    let db = TestDatabase::create().await;
    let (owner, stranger, doc) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    document_row(&db.pool, owner, doc, "Secrets", &[]).await;
    let chunks = [chunk(0, "The vault code is kept offline.", 0)];
    knowledge_index::write_version(&db.pool, owner, doc, 1, &space(), &chunks).await.unwrap();

    // Someone else's removal of the id does nothing.
    knowledge_index::remove_document(&db.pool, stranger, doc).await.unwrap();
    assert_eq!(search(&db.pool, owner, "vault", None, SearchMode::Text).await.len(), 1);

    knowledge_index::remove_document(&db.pool, owner, doc).await.unwrap();
    assert!(search(&db.pool, owner, "vault", Some(&axis(0)), SearchMode::Hybrid).await.is_empty());
    assert_eq!(chunk_rows(&db.pool, doc).await, 0);
    // The ingest of a revision that was running during the delete.
    let late = knowledge_index::write_version(&db.pool, owner, doc, 2, &space(), &chunks).await.unwrap();
    assert_eq!(late, Written::Deleted);
    assert_eq!(chunk_rows(&db.pool, doc).await, 0);
    // Removing twice is fine.
    knowledge_index::remove_document(&db.pool, owner, doc).await.unwrap();
}

#[tokio::test]
async fn tags_filter_and_vectors_of_another_dimension_are_refused() {
    let db = TestDatabase::create().await;
    let (owner, travel, food) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    document_row(&db.pool, owner, travel, "Travel", &["travel", "policy"]).await;
    document_row(&db.pool, owner, food, "Food", &["food"]).await;
    knowledge_index::write_version(&db.pool, owner, travel, 1, &space(), &[chunk(0, "Trains under four hours.", 0)])
        .await
        .unwrap();
    knowledge_index::write_version(&db.pool, owner, food, 1, &space(), &[chunk(0, "Trains of thought on soup.", 1)])
        .await
        .unwrap();
    let space = space();
    let tags = vec!["travel".to_string()];
    let query = SearchQuery {
        owner_id: owner,
        text: "trains",
        embedding: None,
        space: &space,
        k: 5,
        tags: &tags,
        mode: SearchMode::Text,
    };
    let found: Vec<Uuid> =
        knowledge_index::search(&db.pool, &query).await.unwrap().iter().map(|p| p.document_id).collect();
    assert_eq!(found, [travel]);

    let wrong = [NewChunk { position: 0, content: "x".into(), embedding: vec![1.0; DIM + 1] }];
    let refused = knowledge_index::write_version(&db.pool, owner, travel, 2, &space, &wrong).await;
    assert!(matches!(refused, Err(IndexError::Dimension { expected: DIM, got, .. }) if got == DIM + 1));
}
