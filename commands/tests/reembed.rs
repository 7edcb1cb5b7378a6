//! Changing the embedder: `reembed` rewrites, document by document, exactly the live chunks
//! another model made (same ids, same text, new vectors and space), leaves deleted
//! documents and chunks already in the space alone, and has nothing to do the second time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use colloquy_commands::ingest::reembed;
use colloquy_infra::knowledge_index::{self, chunk_id, EmbeddingSpace, NewChunk};
use colloquy_infra::testing::TestDatabase;
use colloquy_providers::embeddings::Embedder;
use colloquy_providers::ProviderError;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// An embedder of the test's own: the vector of a text is its length on every axis, and it
/// counts the texts it was asked for.
struct Counting {
    model: &'static str,
    dimension: usize,
    texts: AtomicUsize,
}

#[async_trait::async_trait]
impl Embedder for Counting {
    fn model(&self) -> &str {
        self.model
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ProviderError> {
        self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        Ok(texts.iter().map(|t| vec![t.len() as f32; self.dimension]).collect())
    }
}

async fn index(pool: &PgPool, owner: Uuid, document: Uuid, space: &EmbeddingSpace, texts: &[&str]) {
    let chunks: Vec<NewChunk> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| NewChunk { position: i as u32, content: t.to_string(), embedding: vec![0.5; space.dimension] })
        .collect();
    knowledge_index::write_version(pool, owner, document, 1, space, &chunks).await.unwrap();
}

/// (chunk id, model, dimension, first value of the vector) of a document's chunks, in order.
async fn chunks_of(pool: &PgPool, document: Uuid) -> Vec<(Uuid, String, i32, f32)> {
    sqlx::query(
        "SELECT chunk_id, embedding_model, embedding_dimension, (embedding::real[])[1] AS first
           FROM knowledge_chunks WHERE document_id = $1 ORDER BY position",
    )
    .bind(document)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("chunk_id"), r.get("embedding_model"), r.get("embedding_dimension"), r.get("first")))
    .collect()
}

#[tokio::test]
async fn a_new_embedder_rewrites_only_the_chunks_of_other_spaces_once() {
    let db = TestDatabase::create().await;
    let old = EmbeddingSpace { model: "old-model".into(), dimension: 4 };
    let new = Counting { model: "new-model", dimension: 8, texts: AtomicUsize::new(0) };
    let new_space = EmbeddingSpace { model: new.model.into(), dimension: new.dimension };
    let owner = Uuid::new_v4();
    let (outdated, current, deleted) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    index(&db.pool, owner, outdated, &old, &["alpha", "beta gamma", "delta"]).await;
    index(&db.pool, owner, current, &new_space, &["already new"]).await;
    index(&db.pool, owner, deleted, &old, &["gone"]).await;
    knowledge_index::remove_document(&db.pool, owner, deleted).await.unwrap();
    let current_before = chunks_of(&db.pool, current).await;

    let embedder = Arc::new(new);
    let report = reembed(&db.pool, embedder.clone()).await.unwrap();
    assert_eq!((report.documents, report.chunks, report.skipped), (1, 3, 0), "{report:?}");
    assert_eq!((report.model.as_str(), report.dimension), ("new-model", 8));
    assert_eq!(embedder.texts.load(Ordering::SeqCst), 3);
    let rewritten = chunks_of(&db.pool, outdated).await;
    let expected: Vec<(Uuid, String, i32, f32)> = ["alpha", "beta gamma", "delta"]
        .iter()
        .enumerate()
        .map(|(i, t)| (chunk_id(outdated, 1, i as u32), "new-model".to_string(), 8, t.len() as f32))
        .collect();
    assert_eq!(rewritten, expected);
    assert_eq!(chunks_of(&db.pool, current).await, current_before);
    assert_eq!(chunks_of(&db.pool, deleted).await, []);

    let again = reembed(&db.pool, embedder.clone()).await.unwrap();
    assert_eq!((again.documents, again.chunks), (0, 0));
    assert_eq!(embedder.texts.load(Ordering::SeqCst), 3);
}
