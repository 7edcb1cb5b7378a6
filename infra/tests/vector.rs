//! pgvector in colloquy's database: the migrations create the extension, sqlx binds and
//! reads `pgvector::Vector`, and an HNSW index over cosine distance answers
//! nearest-neighbour queries (what the knowledge base's chunk index is built on).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_infra::testing::TestDatabase;
use pgvector::Vector;
use sqlx::Row;

#[tokio::test]
async fn the_migrations_create_the_vector_extension() {
    let db = TestDatabase::create().await;

    let version: Option<String> = sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        .fetch_optional(&db.pool)
        .await
        .unwrap();

    let version = version.expect("the vector extension is installed in the migrated database");
    let major_minor: Vec<u32> = version.split('.').take(2).map(|part| part.parse().unwrap()).collect();
    // HNSW arrived in 0.5; the chunk index relies on it.
    assert!(major_minor >= vec![0, 5], "pgvector {version} has no HNSW index");
}

#[tokio::test]
async fn an_hnsw_cosine_index_returns_the_nearest_rows_first() {
    let db = TestDatabase::create().await;
    // One connection throughout: the planner setting below is per session.
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query("CREATE TABLE items (id integer PRIMARY KEY, embedding vector(3) NOT NULL)")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("CREATE INDEX items_embedding ON items USING hnsw (embedding vector_cosine_ops)")
        .execute(&mut *conn)
        .await
        .unwrap();
    let rows: [(i32, [f32; 3]); 5] =
        [(1, [1.0, 0.0, 0.0]), (2, [0.0, 1.0, 0.0]), (3, [1.0, 1.0, 0.0]), (4, [0.0, 0.0, 1.0]), (5, [-1.0, 0.0, 0.0])];
    for (id, embedding) in rows {
        sqlx::query("INSERT INTO items (id, embedding) VALUES ($1, $2)")
            .bind(id)
            .bind(Vector::from(embedding.to_vec()))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    // Five rows would be scanned sequentially; forbid that so the answer comes from the index.
    sqlx::query("SET enable_seqscan = off").execute(&mut *conn).await.unwrap();
    let nearest = "SELECT id, embedding, embedding <=> $1 AS distance FROM items ORDER BY embedding <=> $1 LIMIT 5";
    let query = Vector::from(vec![1.0, 0.1, 0.0]);

    let plan: Vec<String> =
        sqlx::query_scalar(&format!("EXPLAIN {nearest}")).bind(query.clone()).fetch_all(&mut *conn).await.unwrap();
    assert!(
        plan.iter().any(|line| line.contains("Index Scan using items_embedding")),
        "the query does not use the HNSW index: {plan:#?}"
    );
    let found = sqlx::query(nearest).bind(query).fetch_all(&mut *conn).await.unwrap();

    let ids: Vec<i32> = found.iter().map(|row| row.get("id")).collect();
    assert_eq!(ids, [1, 3, 2, 4, 5], "ordered by cosine distance to (1, 0.1, 0)");
    let distances: Vec<f64> = found.iter().map(|row| row.get("distance")).collect();
    // 1 - cos: same direction 0, orthogonal 1, opposite 2 (the query is slightly off axis).
    let expected = [0.004_963, 0.226_043, 0.900_496, 1.0, 1.995_037];
    for (distance, expected) in distances.iter().zip(expected) {
        assert!((distance - expected).abs() < 1e-5, "distances {distances:?}, expected {expected}");
    }
    // The stored vectors read back as they were written.
    let read: Vec<Vec<f32>> = found.iter().map(|row| row.get::<Vector, _>("embedding").to_vec()).collect();
    assert_eq!(read[1], vec![1.0, 1.0, 0.0]);
    assert_eq!(read[4], vec![-1.0, 0.0, 0.0]);
}
