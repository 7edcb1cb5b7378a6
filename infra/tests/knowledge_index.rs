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
    // The vector ranking filters tags inside its nearest-neighbour query: the food chunk is the
    // nearer one, and it is still left out.
    for mode in [SearchMode::Vector, SearchMode::Hybrid] {
        let query = SearchQuery { embedding: Some(&axis(1)), mode, ..query.clone() };
        let found: Vec<Uuid> =
            knowledge_index::search(&db.pool, &query).await.unwrap().iter().map(|p| p.document_id).collect();
        assert_eq!(found, [travel], "{mode:?}");
    }

    let wrong = [NewChunk { position: 0, content: "x".into(), embedding: vec![1.0; DIM + 1] }];
    let refused = knowledge_index::write_version(&db.pool, owner, travel, 2, &space, &wrong).await;
    assert!(matches!(refused, Err(IndexError::Dimension { expected: DIM, got, .. }) if got == DIM + 1));
}

/// A deterministic unit vector of `dim` values (xorshift), different for each `seed`.
fn pseudo_random(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.into_iter().map(|a| a / norm).collect()
}

fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    1.0 - a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
}

#[tokio::test]
async fn the_vector_ranking_is_answered_by_the_hnsw_index_and_stays_exact_and_owner_filtered() {
    let db = TestDatabase::create().await;
    let space = EmbeddingSpace { model: "test-embedder-384".into(), dimension: 384 };
    let (owner, stranger, doc, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    document_row(&db.pool, owner, doc, "Owner's", &[]).await;
    document_row(&db.pool, stranger, other, "Stranger's", &[]).await;
    let query_vector = pseudo_random(0, 384);
    let owned: Vec<NewChunk> = (0..60)
        .map(|i| NewChunk {
            position: i,
            content: format!("owned {i}"),
            embedding: pseudo_random(u64::from(i) + 1, 384),
        })
        .collect();
    // The stranger's chunks are the query vector itself, nudged: nearer than anything the
    // owner has, so a walk of the (shared) index meets them first and must pass them by.
    let theirs: Vec<NewChunk> = (0..20)
        .map(|i| {
            let nudge = pseudo_random(1000 + u64::from(i), 384);
            let v: Vec<f32> = query_vector.iter().zip(&nudge).map(|(q, n)| q + 0.05 * n).collect();
            NewChunk { position: i, content: format!("theirs {i}"), embedding: v }
        })
        .collect();
    knowledge_index::write_version(&db.pool, owner, doc, 1, &space, &owned).await.unwrap();
    knowledge_index::write_version(&db.pool, stranger, other, 1, &space, &theirs).await.unwrap();
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();

    // Sessions that price sorting out (`enable_sort = off`) take the index wherever the query
    // lets them. The ranking must be an index walk then: a tie-break, a window function or a
    // join inside its ORDER BY ... LIMIT (the shape before) leaves the planner only the
    // exact sort, whatever it costs. With many chunks per owner the planner takes the walk
    // on its own (`bench/run.sh --retrieval` prints the plan and the index's scan counter).
    let options: sqlx::postgres::PgConnectOptions = db.url.parse().unwrap();
    let index_only = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.options([("enable_sort", "off")]))
        .await
        .unwrap();
    for mode in [SearchMode::Vector, SearchMode::Hybrid] {
        let query = SearchQuery {
            owner_id: owner,
            text: "owned",
            embedding: Some(&query_vector),
            space: &space,
            k: 5,
            tags: &[],
            mode,
        };
        let plan = knowledge_index::explain(&index_only, &query, false).await.unwrap();
        assert!(
            plan.iter().any(|line| line.contains("Index Scan using knowledge_chunks_hnsw_384")),
            "{mode:?} does not walk the HNSW index:\n{}",
            plan.join("\n")
        );
    }
    // The walk finds the owner's exact nearest chunks (60 rows are well inside
    // `hnsw.ef_search`), in order, and none of the stranger's.
    let mut exact: Vec<(f32, String)> =
        owned.iter().map(|c| (cosine_distance(&c.embedding, &query_vector), c.content.clone())).collect();
    exact.sort_by(|a, b| a.0.total_cmp(&b.0));
    let expected: Vec<String> = exact.into_iter().take(5).map(|(_, content)| content).collect();
    let query = SearchQuery {
        owner_id: owner,
        text: "",
        embedding: Some(&query_vector),
        space: &space,
        k: 5,
        tags: &[],
        mode: SearchMode::Vector,
    };
    let walked: Vec<String> =
        knowledge_index::search(&index_only, &query).await.unwrap().into_iter().map(|p| p.content).collect();
    assert_eq!(walked, expected);
    // The planner's own choice answers the same.
    let planned: Vec<String> =
        knowledge_index::search(&db.pool, &query).await.unwrap().into_iter().map(|p| p.content).collect();
    assert_eq!(planned, expected);
    index_only.close().await;
}
