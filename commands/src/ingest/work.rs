//! What the ingest worker does for one event: extract an uploaded file, index a document's
//! version, take a deleted document out of the index. Each step is idempotent: the chunk
//! ids are derived from (document, version, position), the write of a version replaces what
//! an earlier attempt wrote, and what the aggregates already recorded is not recorded again.

use std::sync::Arc;

use bytes::Bytes;
use colloquy_domain::file::{FileCommand, FileError, FileEvent, FileStatus, FileUploaded};
use colloquy_domain::knowledge::{
    DocumentSource, DocumentStatus, KnowledgeDocumentCommand, KnowledgeDocumentError, KnowledgeDocumentEvent,
};
use colloquy_extract::{ChunkSettings, ExtractError, Extracted, Format, Limits};
use colloquy_infra::event_store::StoredEvent;
use colloquy_infra::file_storage::{self, FileStorage, StorageError};
use colloquy_infra::knowledge_index::{self, NewChunk, Written};
use colloquy_providers::embeddings::Embedder;
use cqrs_es::Aggregate as _;
use sqlx::PgPool;
use uuid::Uuid;

use crate::caller::Caller;
use crate::command_service::CommandError;
use crate::Commands;

/// The actor name of the ingest worker's events (`system:ingest`).
pub const WORKER_NAME: &str = "ingest";

/// What the ingest worker runs on.
#[derive(Clone)]
pub struct IngestDeps {
    /// The write side.
    pub commands: Arc<Commands>,
    /// Postgres (the chunk index).
    pub pool: PgPool,
    /// Where uploads and extracted texts are.
    pub storage: FileStorage,
    /// The embedder of the chunk index.
    pub embedder: Arc<dyn Embedder>,
    /// How texts are cut into chunks.
    pub chunking: ChunkSettings,
    /// Extraction limits.
    pub limits: Limits,
    /// The largest upload (files are read whole for extraction, never more than this).
    pub max_file_bytes: u64,
}

/// Why an event could not be handled; it is retried (its offset is not stored).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Retry(pub String);

fn retry(e: impl std::fmt::Display) -> Retry {
    Retry(e.to_string())
}

/// Handles one event of the File or KnowledgeDocument topic. `Ok` when its offset may be
/// stored (done, or nothing to do).
pub async fn handle(deps: &IngestDeps, event: &StoredEvent) -> Result<(), Retry> {
    let caller = |owner: Uuid| {
        let correlation = event.metadata.get(colloquy_domain::metadata::CORRELATION_ID).cloned().unwrap_or_default();
        Caller::system(WORKER_NAME, owner, correlation, format!("event:{}", event.event_id))
    };
    let Ok(id) = event.aggregate_id.parse::<Uuid>() else { return Ok(()) };
    if event.aggregate_type == colloquy_domain::File::TYPE {
        if let Ok(FileEvent::FileUploaded(uploaded)) = event.to_domain::<FileEvent>() {
            return process_file(deps, &caller(uploaded.owner_id), id, &uploaded).await;
        }
        return Ok(());
    }
    if event.aggregate_type == colloquy_domain::KnowledgeDocument::TYPE {
        match event.to_domain::<KnowledgeDocumentEvent>() {
            Ok(KnowledgeDocumentEvent::DocumentCreated(created)) => {
                return index_current(deps, &caller(created.owner_id), id, created.version).await;
            }
            Ok(KnowledgeDocumentEvent::DocumentRevised(revised)) => {
                let (document, _) = deps.commands.document_state(id).await.map_err(retry)?;
                let Some(owner) = document.owner_id else { return Ok(()) };
                return index_current(deps, &caller(owner), id, revised.version).await;
            }
            Ok(KnowledgeDocumentEvent::DocumentDeleted(_)) => {
                let (document, _) = deps.commands.document_state(id).await.map_err(retry)?;
                if let Some(owner) = document.owner_id {
                    knowledge_index::remove_document(&deps.pool, owner, id).await.map_err(retry)?;
                }
                return Ok(());
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// Extracts an uploaded file's text, keeps it in storage next to the file, and records what
/// it found (or why it failed) on the file.
async fn process_file(deps: &IngestDeps, caller: &Caller, file_id: Uuid, uploaded: &FileUploaded) -> Result<(), Retry> {
    let (file, _) = deps.commands.file_state(file_id).await.map_err(retry)?;
    if file.status != FileStatus::Processing {
        return Ok(());
    }
    let outcome = extract_file(deps, uploaded.owner_id, file_id, &uploaded.media_type).await?;
    let command = match outcome {
        Ok(extracted) => {
            let chunks = chunk_count(&deps.chunking, extracted.text.clone()).await?;
            FileCommand::RecordFileProcessed {
                text_length: extracted.text.chars().count() as u64,
                pages: extracted.pages,
                chunks,
            }
        }
        Err(e) => FileCommand::RecordFileProcessingFailed { code: e.code().to_string(), message: e.to_string() },
    };
    match deps.commands.record_file(caller, file_id, command).await {
        Ok(_) => Ok(()),
        // Recorded by an earlier attempt, or deleted meanwhile: nothing left to do.
        Err(CommandError::Rejected(FileError::NotProcessing { .. } | FileError::Deleted | FileError::NotFound)) => {
            Ok(())
        }
        Err(e) => Err(retry(e)),
    }
}

/// The text of one of `owner`'s files: the extracted copy kept in storage, or extracted now
/// from the bytes (and kept). `Ok(Err(_))`: the file's content cannot give a text.
async fn extract_file(
    deps: &IngestDeps,
    owner: Uuid,
    file_id: Uuid,
    media_type: &str,
) -> Result<Result<Extracted, ExtractError>, Retry> {
    let key = file_storage::file_key(owner, file_id);
    let text_key = file_storage::text_key_for(&key);
    match deps.storage.get_bytes(&text_key, deps.limits.max_text_chars as u64 * 4).await {
        Ok(bytes) => {
            let text = String::from_utf8(bytes.to_vec()).map_err(retry)?;
            return Ok(Ok(Extracted { text, pages: None }));
        }
        Err(StorageError::NotFound) => {}
        Err(e) => return Err(retry(e)),
    }
    let bytes = match deps.storage.get_bytes(&key, deps.max_file_bytes).await {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound) => {
            return Ok(Err(ExtractError::Corrupt("the file's content is gone".into())));
        }
        Err(e) => return Err(retry(e)),
    };
    let Some(format) = Format::ALL.iter().copied().find(|f| f.media_type() == media_type) else {
        return Ok(Err(ExtractError::Unsupported(media_type.to_string())));
    };
    let limits = deps.limits;
    let extracted =
        tokio::task::spawn_blocking(move || colloquy_extract::extract(format, &bytes, &limits)).await.map_err(retry)?;
    if let Ok(e) = &extracted {
        deps.storage.put_bytes(&text_key, Bytes::from(e.text.clone())).await.map_err(retry)?;
    }
    Ok(extracted)
}

async fn chunk_count(settings: &ChunkSettings, text: String) -> Result<u32, Retry> {
    let settings = *settings;
    let chunks = tokio::task::spawn_blocking(move || colloquy_extract::chunk(&text, &settings)).await.map_err(retry)?;
    Ok(chunks.len() as u32)
}

/// Indexes `version` of a document if it is still the current one: chunks, embeds, writes
/// the version to the chunk index (atomically replacing the previous one), records it.
async fn index_current(deps: &IngestDeps, caller: &Caller, document_id: Uuid, version: u32) -> Result<(), Retry> {
    let (document, _) = deps.commands.document_state(document_id).await.map_err(retry)?;
    let Some(owner) = document.owner_id else { return Ok(()) };
    if document.status == DocumentStatus::Deleted || document.version != version {
        // Deleted, or a newer version's own event will index it.
        return Ok(());
    }
    let text = match document_text(deps, owner, document_id, version).await? {
        Ok(text) => text,
        Err(e) => return record_failure(deps, caller, document_id, version, e.code(), &e.to_string()).await,
    };
    let settings = deps.chunking;
    let chunks = tokio::task::spawn_blocking(move || colloquy_extract::chunk(&text, &settings)).await.map_err(retry)?;
    if chunks.is_empty() {
        let e = ExtractError::NoText;
        return record_failure(deps, caller, document_id, version, e.code(), &e.to_string()).await;
    }
    let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
    let vectors = deps.embedder.embed(&texts).await.map_err(retry)?;
    let space = deps.embedder.space();
    let rows: Vec<NewChunk> = chunks
        .into_iter()
        .zip(vectors)
        .map(|(c, embedding)| NewChunk { position: c.position, content: c.text, embedding })
        .collect();
    match knowledge_index::write_version(&deps.pool, owner, document_id, version, &space, &rows).await.map_err(retry)? {
        Written::Live => {}
        Written::Deleted | Written::Stale => return Ok(()),
    }
    let command = KnowledgeDocumentCommand::RecordDocumentIndexed {
        version,
        chunks: rows.len() as u32,
        chunking: deps.chunking.describe(),
        embedding_model: space.model,
        embedding_dimension: space.dimension as u32,
    };
    settle(deps.commands.record_document_indexed(caller, document_id, command).await)
}

/// The text of `version` of a document: from its events (a text document) or its file.
async fn document_text(
    deps: &IngestDeps,
    owner: Uuid,
    document_id: Uuid,
    version: u32,
) -> Result<Result<String, ExtractError>, Retry> {
    let source = colloquy_infra::event_store::document_source(&deps.pool, document_id, version).await.map_err(retry)?;
    match source {
        Some(DocumentSource::Text { text }) => Ok(Ok(text)),
        Some(DocumentSource::File { file_id }) => {
            let (file, _) = deps.commands.file_state(file_id).await.map_err(retry)?;
            if file.owner_id != Some(owner) || file.status == FileStatus::Deleted {
                return Ok(Err(ExtractError::Corrupt("the document's file was deleted".into())));
            }
            let media_type = colloquy_infra::event_store::file_media_type(&deps.pool, file_id).await.map_err(retry)?;
            Ok(extract_file(deps, owner, file_id, &media_type.unwrap_or_default()).await?.map(|e| e.text))
        }
        None => Ok(Err(ExtractError::NoText)),
    }
}

async fn record_failure(
    deps: &IngestDeps,
    caller: &Caller,
    document_id: Uuid,
    version: u32,
    code: &str,
    message: &str,
) -> Result<(), Retry> {
    let command =
        KnowledgeDocumentCommand::RecordDocumentIndexingFailed { version, code: code.into(), message: message.into() };
    settle(deps.commands.record_document_indexed(caller, document_id, command).await)
}

/// A record the aggregate already has (or no longer wants) is done; anything else retries.
fn settle<T>(outcome: Result<T, CommandError<KnowledgeDocumentError>>) -> Result<(), Retry> {
    match outcome {
        Ok(_) => Ok(()),
        Err(CommandError::Rejected(
            KnowledgeDocumentError::StaleVersion { .. }
            | KnowledgeDocumentError::NotIndexing { .. }
            | KnowledgeDocumentError::Deleted
            | KnowledgeDocumentError::NotFound,
        )) => Ok(()),
        Err(e) => Err(retry(e)),
    }
}
