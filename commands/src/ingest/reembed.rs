//! Re-embedding the chunk index after the embedder changed (`colloquy reembed`): every live
//! document whose chunks came from another model or dimension gets its live version's
//! chunks embedded again and rewritten in one transaction per document (same chunk ids,
//! same text), so a document is at every moment wholly in one embedding space. Vectors of
//! different spaces are never compared: until its turn, a document is found by words only.

use std::sync::Arc;
use std::time::Instant;

use colloquy_infra::knowledge_index::{self, IndexError, NewChunk, Written};
use colloquy_providers::embeddings::Embedder;
use colloquy_providers::ProviderError;
use serde::Serialize;
use sqlx::PgPool;

/// Documents read per query while walking the index.
const PAGE: i64 = 100;

/// What a re-embedding did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReembedReport {
    /// The embedding model now in the index.
    pub model: String,
    /// Its dimension.
    pub dimension: usize,
    /// Documents rewritten.
    pub documents: u64,
    /// Chunks embedded again.
    pub chunks: u64,
    /// Documents that changed meanwhile (deleted, or a newer version indexed by the ingest
    /// worker, which embeds with the configured embedder): left as they are.
    pub skipped: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Why re-embedding stopped. What was rewritten before stays rewritten; running it again
/// goes on with what is left.
#[derive(Debug, thiserror::Error)]
pub enum ReembedError {
    /// The chunk index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The embedder failed.
    #[error("embedding failed: {0}")]
    Embedder(#[from] ProviderError),
}

/// Re-embeds every live document not in `embedder`'s space, one document at a time.
pub async fn reembed(pool: &PgPool, embedder: Arc<dyn Embedder>) -> Result<ReembedReport, ReembedError> {
    let started = Instant::now();
    let space = embedder.space();
    let mut report =
        ReembedReport { model: space.model.clone(), dimension: space.dimension, ..ReembedReport::default() };
    // One pass in id order: a document the ingest worker re-indexes meanwhile is not met twice.
    let mut after = None;
    loop {
        let page = knowledge_index::outdated_documents(pool, &space, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.document_id);
        for doc in &page {
            let live = knowledge_index::live_chunks(pool, doc.owner_id, doc.document_id).await?;
            let texts: Vec<String> = live.iter().map(|(_, _, content)| content.clone()).collect();
            let vectors = embedder.embed(&texts).await?;
            let chunks: Vec<NewChunk> = live
                .into_iter()
                .zip(vectors)
                .map(|((_, position, content), embedding)| NewChunk { position, content, embedding })
                .collect();
            let written =
                knowledge_index::write_version(pool, doc.owner_id, doc.document_id, doc.version, &space, &chunks)
                    .await?;
            match written {
                Written::Live => {
                    report.documents += 1;
                    report.chunks += chunks.len() as u64;
                }
                Written::Deleted | Written::Stale => report.skipped += 1,
            }
            tracing::debug!(document_id = %doc.document_id, chunks = chunks.len(), ?written, "Document re-embedded.");
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
