//! The chunk index of the knowledge base (tables `knowledge_index` and `knowledge_chunks`):
//! written by the ingest worker, hidden at once by the delete use case, searched by the API
//! and the assistant. Every statement names the owner: search filters on it inside the SQL.
//!
//! A document's version becomes searchable in ONE transaction that writes its chunks,
//! removes the previous version's and moves `live_version`: a search sees the old version or
//! the new one, never half of either. A deleted document's row keeps `deleted_at`, so an
//! ingest that finishes after the delete cannot bring it back.

use pgvector::Vector;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Namespace of chunk ids: UUID v5 of `<document>/<version>/<position>` under it.
pub const CHUNK_NAMESPACE: Uuid = Uuid::from_u128(0x6b6e_6f77_6c65_6467_6500_6368_756e_6b73);

/// Reciprocal rank fusion's constant (the usual 60: a rank-1 hit scores 1/61).
const RRF_K: f64 = 60.0;

/// The id of the chunk at `position` of `version` of `document`: the same inputs always give
/// the same id, so a retried or redelivered ingest rewrites rows instead of adding them.
pub fn chunk_id(document_id: Uuid, version: u32, position: u32) -> Uuid {
    Uuid::new_v5(&CHUNK_NAMESPACE, format!("{document_id}/{version}/{position}").as_bytes())
}

/// One chunk to index.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChunk {
    /// Its position in the version, from 0.
    pub position: u32,
    /// Its text.
    pub content: String,
    /// Its embedding (of `EmbeddingSpace::dimension` values).
    pub embedding: Vec<f32>,
}

/// The embedder the vectors come from: only vectors of one space are ever compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingSpace {
    /// The embedding model's name.
    pub model: String,
    /// Values per vector.
    pub dimension: usize,
}

/// What writing a version found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The version is now the searchable one.
    Live,
    /// The document was deleted meanwhile: nothing was written.
    Deleted,
    /// A newer version is already live: nothing was written.
    Stale,
}

/// Errors of the chunk index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The database failed.
    #[error("knowledge index: {0}")]
    Database(#[from] sqlx::Error),
    /// A vector does not have the space's dimension.
    #[error("an embedding has {got} values; {model} has {expected}")]
    Dimension {
        /// The model.
        model: String,
        /// Its dimension.
        expected: usize,
        /// What the vector had.
        got: usize,
    },
}

/// Makes `version` of `document_id` the searchable one with `chunks` (replacing any other
/// version's), unless the document was deleted or a newer version is live.
pub async fn write_version(
    pool: &PgPool,
    owner_id: Uuid,
    document_id: Uuid,
    version: u32,
    space: &EmbeddingSpace,
    chunks: &[NewChunk],
) -> Result<Written, IndexError> {
    if let Some(bad) = chunks.iter().find(|c| c.embedding.len() != space.dimension) {
        return Err(IndexError::Dimension {
            model: space.model.clone(),
            expected: space.dimension,
            got: bad.embedding.len(),
        });
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO knowledge_index (document_id, owner_id) VALUES ($1, $2)
         ON CONFLICT (document_id) DO NOTHING",
    )
    .bind(document_id)
    .bind(owner_id)
    .execute(&mut *tx)
    .await?;
    // The row lock orders this write against a concurrent delete or another version's write.
    let row = sqlx::query(
        "SELECT live_version, deleted_at IS NOT NULL AS deleted FROM knowledge_index
          WHERE document_id = $1 AND owner_id = $2 FOR UPDATE",
    )
    .bind(document_id)
    .bind(owner_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        // The id belongs to another owner: never write into their document.
        return Ok(Written::Deleted);
    };
    if row.get::<bool, _>("deleted") {
        return Ok(Written::Deleted);
    }
    if row.get::<Option<i32>, _>("live_version").is_some_and(|live| live > version as i32) {
        return Ok(Written::Stale);
    }
    sqlx::query("DELETE FROM knowledge_chunks WHERE document_id = $1 AND doc_version <> $2")
        .bind(document_id)
        .bind(version as i32)
        .execute(&mut *tx)
        .await?;
    let ids: Vec<Uuid> = chunks.iter().map(|c| chunk_id(document_id, version, c.position)).collect();
    let positions: Vec<i32> = chunks.iter().map(|c| c.position as i32).collect();
    let contents: Vec<&str> = chunks.iter().map(|c| c.content.as_str()).collect();
    let vectors: Vec<Vector> = chunks.iter().map(|c| Vector::from(c.embedding.clone())).collect();
    sqlx::query(
        "INSERT INTO knowledge_chunks
                (chunk_id, document_id, owner_id, doc_version, position, content,
                 embedding_model, embedding_dimension, embedding)
         SELECT id, $2, $3, $4, pos, content, $5, $6, emb
           FROM UNNEST($1::uuid[], $7::int[], $8::text[], $9::vector[]) AS t(id, pos, content, emb)
         ON CONFLICT (chunk_id) DO UPDATE
            SET content = EXCLUDED.content, embedding_model = EXCLUDED.embedding_model,
                embedding_dimension = EXCLUDED.embedding_dimension, embedding = EXCLUDED.embedding",
    )
    .bind(&ids)
    .bind(document_id)
    .bind(owner_id)
    .bind(version as i32)
    .bind(&space.model)
    .bind(space.dimension as i32)
    .bind(&positions)
    .bind(&contents)
    .bind(&vectors)
    .execute(&mut *tx)
    .await?;
    // A shorter new text leaves no positions of an earlier write of the same version behind.
    sqlx::query("DELETE FROM knowledge_chunks WHERE document_id = $1 AND doc_version = $2 AND position >= $3")
        .bind(document_id)
        .bind(version as i32)
        .bind(chunks.len() as i32)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE knowledge_index SET live_version = $2, updated_at = now() WHERE document_id = $1")
        .bind(document_id)
        .bind(version as i32)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Written::Live)
}

/// Takes `document_id` out of search at once and for good (its chunks are deleted; the row
/// stays as a tombstone). Idempotent; another owner's document is left alone.
pub async fn remove_document(pool: &PgPool, owner_id: Uuid, document_id: Uuid) -> Result<(), IndexError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO knowledge_index (document_id, owner_id, deleted_at) VALUES ($1, $2, now())
         ON CONFLICT (document_id) DO UPDATE SET deleted_at = COALESCE(knowledge_index.deleted_at, now()),
                                                 live_version = NULL, updated_at = now()
          WHERE knowledge_index.owner_id = $2",
    )
    .bind(document_id)
    .bind(owner_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM knowledge_chunks WHERE document_id = $1 AND owner_id = $2")
        .bind(document_id)
        .bind(owner_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A document whose live chunks were embedded by another model (or dimension) than `space`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outdated {
    /// The owner.
    pub owner_id: Uuid,
    /// The document.
    pub document_id: Uuid,
    /// Its live version.
    pub version: u32,
}

/// Up to `limit` live documents after `after` (by id) with a chunk that is not in `space`:
/// what a change of embedder leaves to re-embed. Searches never compare across spaces, so
/// these are found by words only until they are re-embedded.
pub async fn outdated_documents(
    pool: &PgPool,
    space: &EmbeddingSpace,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Outdated>, IndexError> {
    let rows = sqlx::query(
        "SELECT ki.owner_id, ki.document_id, ki.live_version FROM knowledge_index ki
          WHERE ki.deleted_at IS NULL AND ki.live_version IS NOT NULL
            AND ($3::uuid IS NULL OR ki.document_id > $3)
            AND EXISTS (SELECT 1 FROM knowledge_chunks c
                         WHERE c.document_id = ki.document_id AND c.doc_version = ki.live_version
                           AND (c.embedding_model <> $1 OR c.embedding_dimension <> $2))
          ORDER BY ki.document_id LIMIT $4",
    )
    .bind(&space.model)
    .bind(space.dimension as i32)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Outdated {
            owner_id: r.get("owner_id"),
            document_id: r.get("document_id"),
            version: r.get::<i32, _>("live_version") as u32,
        })
        .collect())
}

/// Chunks of the live version of a document (for tests and audits), in order.
pub async fn live_chunks(
    pool: &PgPool,
    owner_id: Uuid,
    document_id: Uuid,
) -> Result<Vec<(Uuid, u32, String)>, IndexError> {
    let rows = sqlx::query(
        "SELECT c.chunk_id, c.position, c.content FROM knowledge_chunks c
           JOIN knowledge_index ki ON ki.document_id = c.document_id AND ki.live_version = c.doc_version
          WHERE c.document_id = $1 AND c.owner_id = $2 AND ki.deleted_at IS NULL
          ORDER BY c.position",
    )
    .bind(document_id)
    .bind(owner_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(|r| (r.get("chunk_id"), r.get::<i32, _>("position") as u32, r.get("content"))).collect())
}

/// How to rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// Full-text only (`websearch_to_tsquery`, `ts_rank_cd`).
    Text,
    /// Vector similarity only (cosine, HNSW).
    Vector,
    /// Both, fused by reciprocal rank.
    #[default]
    Hybrid,
}

/// A search.
#[derive(Debug, Clone)]
pub struct SearchQuery<'a> {
    /// Whose knowledge base.
    pub owner_id: Uuid,
    /// The words as typed (web-search syntax: quotes, `or`, `-`).
    pub text: &'a str,
    /// The query's embedding in `space` (required for `Vector` and `Hybrid`).
    pub embedding: Option<&'a [f32]>,
    /// The embedding space of the index.
    pub space: &'a EmbeddingSpace,
    /// Passages wanted.
    pub k: usize,
    /// Only documents carrying every one of these tags.
    pub tags: &'a [String],
    /// The ranking.
    pub mode: SearchMode,
}

/// A ranked passage.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    /// The chunk.
    pub chunk_id: Uuid,
    /// Its document.
    pub document_id: Uuid,
    /// The document's version.
    pub version: u32,
    /// Its position in that version.
    pub position: u32,
    /// The document's title.
    pub title: String,
    /// The chunk's text.
    pub content: String,
    /// A short extract with the matched words between `<mark>` and `</mark>` (everything
    /// else HTML-escaped, so it can be shown as HTML).
    pub snippet: String,
    /// The fused score (or the single ranking's reciprocal rank).
    pub score: f64,
    /// Rank in the full-text ranking, from 1.
    pub text_rank: Option<u32>,
    /// Rank in the vector ranking, from 1.
    pub vector_rank: Option<u32>,
}

/// Markers `ts_headline` puts around matches; private-use characters, so they cannot come
/// from a document and survive HTML escaping to become `<mark>`.
const MARK_START: char = '\u{E000}';
const MARK_END: char = '\u{E001}';

/// The best `k` passages of the owner's live documents for `query`.
pub async fn search(pool: &PgPool, query: &SearchQuery<'_>) -> Result<Vec<Passage>, IndexError> {
    let sql = search_sql(query)?;
    let mut tx = pool.begin().await?;
    search_settings(&mut tx, query).await?;
    let rows = bind_search(sqlx::query(&sql), query).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|r| Passage {
            chunk_id: r.get("chunk_id"),
            document_id: r.get("document_id"),
            version: r.get::<i32, _>("doc_version") as u32,
            position: r.get::<i32, _>("position") as u32,
            title: r.get("title"),
            content: r.get("content"),
            snippet: highlight(&r.get::<String, _>("snippet")),
            score: r.get("score"),
            text_rank: r.get::<Option<i64>, _>("text_rank").map(|n| n as u32),
            vector_rank: r.get::<Option<i64>, _>("vector_rank").map(|n| n as u32),
        })
        .collect())
}

/// PostgreSQL's plan for `search(pool, query)`: the same SQL with the same settings, one
/// line per plan node (`EXPLAIN`, or `EXPLAIN ANALYZE` with `analyze`). The bench prints it;
/// a test holds that the vector ranking walks the HNSW index.
pub async fn explain(pool: &PgPool, query: &SearchQuery<'_>, analyze: bool) -> Result<Vec<String>, IndexError> {
    let sql = format!("EXPLAIN {}{}", if analyze { "(ANALYZE, BUFFERS) " } else { "" }, search_sql(query)?);
    let mut tx = pool.begin().await?;
    search_settings(&mut tx, query).await?;
    let plan = bind_search(sqlx::query(&sql), query).fetch_all(&mut *tx).await?;
    tx.rollback().await?;
    Ok(plan.iter().map(|r| r.get::<String, _>(0)).collect())
}

/// Candidates each ranking looks at: more than asked for, so fusion has something to fuse.
fn candidates(query: &SearchQuery<'_>) -> i64 {
    (query.k * 4).clamp(20, 200) as i64
}

/// Transaction-local settings of a search.
async fn search_settings(tx: &mut sqlx::PgConnection, query: &SearchQuery<'_>) -> Result<(), IndexError> {
    // A prepared statement switches to a generic plan after five runs, and a generic plan
    // does not know the query vector, so it never orders by the HNSW index: plan each search.
    sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan").execute(&mut *tx).await?;
    // pgvector 0.8: the owner (and tag) filters are applied to what the HNSW walk returns;
    // an iterative scan keeps walking until enough rows pass them (bounded by
    // `hnsw.max_scan_tuples`), instead of answering with fewer passages than exist.
    sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order").execute(&mut *tx).await?;
    // The candidate list of the walk: at least the rows the ranking wants (the default, 40,
    // is below what a hybrid search asks for), so recall does not drop with `k`.
    let ef_search = (candidates(query) * 2).clamp(100, 1000);
    sqlx::query(&format!("SET LOCAL hnsw.ef_search = {ef_search}")).execute(&mut *tx).await?;
    Ok(())
}

fn bind_search<'q>(
    statement: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    query: &'q SearchQuery<'_>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let dim = query.space.dimension;
    let embedding = Vector::from(query.embedding.map(<[f32]>::to_vec).unwrap_or_else(|| vec![0.0; dim]));
    statement
        .bind(query.owner_id)
        .bind(query.text)
        .bind(embedding)
        .bind(&query.space.model)
        .bind(query.tags)
        .bind(candidates(query))
        .bind(query.k as i64)
}

/// The search's SQL. `$1` owner, `$2` words, `$3` query vector, `$4` embedding model,
/// `$5` required tags, `$6` candidates per ranking, `$7` passages.
fn search_sql(query: &SearchQuery<'_>) -> Result<String, IndexError> {
    let dim = query.space.dimension;
    let use_text = query.mode != SearchMode::Vector;
    let use_vector = query.mode != SearchMode::Text && query.embedding.is_some();
    if let Some(e) = query.embedding.filter(|e| e.len() != dim) {
        return Err(IndexError::Dimension { model: query.space.model.clone(), expected: dim, got: e.len() });
    }
    // Only the owner's live chunks of documents that carry every asked-for tag.
    let live = "EXISTS (SELECT 1 FROM knowledge_index ki
                         WHERE ki.document_id = c.document_id AND ki.live_version = c.doc_version
                           AND ki.deleted_at IS NULL AND ki.owner_id = $1)
                AND EXISTS (SELECT 1 FROM rm_knowledge_documents d
                             WHERE d.document_id = c.document_id AND d.owner_id = $1
                               AND d.status <> 'deleted' AND d.tags @> $5::text[])";
    let none = "SELECT NULL::uuid AS chunk_id, NULL::bigint AS rank WHERE false";
    let text_hits = match use_text {
        true => format!(
            "SELECT c.chunk_id, row_number() OVER (ORDER BY ts_rank_cd(c.tsv, q.q) DESC, c.chunk_id) AS rank
               FROM knowledge_chunks c, websearch_to_tsquery('english', $2) AS q(q)
              WHERE c.owner_id = $1 AND c.tsv @@ q.q AND {live}
              ORDER BY ts_rank_cd(c.tsv, q.q) DESC, c.chunk_id LIMIT $6"
        ),
        false => none.to_string(),
    };
    // The nearest chunks come from ONE `ORDER BY distance LIMIT n` over the owner's chunks,
    // with nothing else in that ORDER BY and no join in front of it: the shape the HNSW index
    // (a partial expression index per dimension, so the dimension is a literal here) can
    // answer, which the planner takes when the owner's chunks are many. Ties are broken and
    // ranks numbered outside, over the n rows it returned. Every chunk row belongs to the
    // live version of an undeleted document (`write_version` and `remove_document` keep it
    // so in one transaction each), so only tags need filtering inside; the liveness join
    // outside is a second guard that removes nothing while that holds.
    let tag_filter = match query.tags.is_empty() {
        true => "",
        false => {
            "AND EXISTS (SELECT 1 FROM rm_knowledge_documents d
                          WHERE d.document_id = c.document_id AND d.owner_id = $1 AND d.tags @> $5::text[])"
        }
    };
    let vector_hits = match use_vector {
        true => format!(
            "SELECT n.chunk_id, row_number() OVER (ORDER BY n.distance, n.chunk_id) AS rank
               FROM (SELECT c.chunk_id, c.document_id, c.doc_version,
                            c.embedding::vector({dim}) <=> $3::vector({dim}) AS distance
                       FROM knowledge_chunks c
                      WHERE c.owner_id = $1 AND c.embedding_dimension = {dim} AND c.embedding_model = $4 {tag_filter}
                      ORDER BY c.embedding::vector({dim}) <=> $3::vector({dim}) LIMIT $6) n
               JOIN knowledge_index ki ON ki.document_id = n.document_id AND ki.live_version = n.doc_version
                                      AND ki.deleted_at IS NULL AND ki.owner_id = $1"
        ),
        false => none.to_string(),
    };
    Ok(format!(
        "WITH t AS ({text_hits}), v AS ({vector_hits}),
              fused AS (
                SELECT chunk_id, t.rank AS text_rank, v.rank AS vector_rank,
                       COALESCE(1.0 / ({RRF_K} + t.rank), 0) + COALESCE(1.0 / ({RRF_K} + v.rank), 0) AS score
                  FROM t FULL JOIN v USING (chunk_id))
         SELECT f.chunk_id, f.text_rank, f.vector_rank, f.score::float8 AS score,
                c.document_id, c.doc_version, c.position, c.content, d.title,
                ts_headline('english', c.content, websearch_to_tsquery('english', $2),
                            'StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=40, MinWords=15, MaxFragments=2') AS snippet
           FROM fused f
           JOIN knowledge_chunks c ON c.chunk_id = f.chunk_id AND c.owner_id = $1
           JOIN rm_knowledge_documents d ON d.document_id = c.document_id AND d.owner_id = $1
                                          AND d.status <> 'deleted' AND d.tags @> $5::text[]
          ORDER BY f.score DESC, f.chunk_id
          LIMIT $7"
    ))
}

/// HTML-escapes a `ts_headline` result and turns its markers into `<mark>` elements.
fn highlight(headline: &str) -> String {
    let mut out = String::with_capacity(headline.len() + 16);
    for ch in headline.chars() {
        match ch {
            MARK_START => out.push_str("<mark>"),
            MARK_END => out.push_str("</mark>"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_are_stable_and_distinct() {
        let d = Uuid::from_u128(7);
        assert_eq!(chunk_id(d, 1, 0), chunk_id(d, 1, 0));
        assert_ne!(chunk_id(d, 1, 0), chunk_id(d, 1, 1));
        assert_ne!(chunk_id(d, 1, 0), chunk_id(d, 2, 0));
        assert_ne!(chunk_id(d, 1, 0), chunk_id(Uuid::from_u128(8), 1, 0));
    }

    #[test]
    fn snippets_are_escaped_and_marked() {
        let raw = format!("a <script> & {MARK_START}cat{MARK_END} \"x\"");
        assert_eq!(highlight(&raw), "a &lt;script&gt; &amp; <mark>cat</mark> &quot;x&quot;");
    }
}
