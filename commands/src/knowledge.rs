//! Knowledge-base use cases: create a document (from text or from one of the caller's
//! files), revise it, delete it; and what the ingest worker records (indexed, failed).
//!
//! Deleting takes the document out of search at once, in the same request: the chunk index
//! row is marked deleted right after the event commits, before any projector or worker has
//! seen the event (`knowledge_index::remove_document`).

use colloquy_domain::file::FileStatus;
use colloquy_domain::knowledge::{DocumentSource, KnowledgeDocumentCommand, KnowledgeDocumentError};
use colloquy_infra::knowledge_index;
use serde::{Deserialize, Serialize};
use tracing::instrument;
use uuid::Uuid;

use crate::caller::Caller;
use crate::command_service::{CommandError, Committed};
use crate::errors::{Failure, UseCaseError};
use crate::idempotency::Answer;
use crate::Commands;

type Outcome<T> = Result<Answer<T>, UseCaseError<KnowledgeDocumentError>>;

/// A new knowledge document.
#[derive(Debug, Clone, Serialize)]
pub struct CreateDocument {
    /// Client-chosen id (makes retries safe without an Idempotency-Key).
    pub id: Option<Uuid>,
    /// The title.
    pub title: String,
    /// Tags (normalised to lower case, deduplicated).
    pub tags: Vec<String>,
    /// A category.
    pub category: Option<String>,
    /// Its text, or the file it comes from.
    pub source: DocumentSource,
}

/// Changes to a document; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReviseDocument {
    /// A new title.
    pub title: Option<String>,
    /// New tags (replacing the old ones).
    pub tags: Option<Vec<String>>,
    /// A new category (`Some(None)` removes it).
    pub category: Option<Option<String>>,
    /// A new text: a new version, indexed again (text documents only).
    pub text: Option<String>,
}

/// A command on a document was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DocumentAccepted {
    /// The document.
    pub document_id: Uuid,
    /// The aggregate's version after the command; pass it as `min_version` to queries.
    pub version: i64,
}

impl Commands {
    /// Creates a knowledge document of the caller's. A file source must be one of the
    /// caller's files that is not deleted (else `SourceFileNotFound`).
    #[instrument(skip_all, fields(user_id = %caller.user))]
    pub async fn create_document(&self, caller: &Caller, input: CreateDocument) -> Outcome<DocumentAccepted> {
        if let DocumentSource::File { file_id } = &input.source {
            let (file, _) = self.files.current_state(&file_id.to_string()).await.map_err(|e| {
                UseCaseError::from_command(e.map_rejection(|_| KnowledgeDocumentError::SourceFileNotFound))
            })?;
            if file.owner_id != Some(caller.user)
                || matches!(file.status, FileStatus::NotUploaded | FileStatus::Deleted)
            {
                return Err(UseCaseError::rejected(KnowledgeDocumentError::SourceFileNotFound));
            }
        }
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "create_document", &input, || async {
                let document_id = input.id.unwrap_or_else(Uuid::new_v4);
                let command = KnowledgeDocumentCommand::CreateDocument {
                    document_id,
                    owner_id: caller.user,
                    title: input.title.clone(),
                    tags: input.tags.clone(),
                    category: input.category.clone(),
                    source: input.source.clone(),
                };
                let committed = self.knowledge.execute(&document_id.to_string(), command, &caller.meta).await?;
                Ok(DocumentAccepted { document_id, version: committed.version })
            })
            .await
    }

    /// Revises one of the caller's documents.
    #[instrument(skip_all, fields(user_id = %caller.user, %document_id))]
    pub async fn revise_document(
        &self,
        caller: &Caller,
        document_id: Uuid,
        input: ReviseDocument,
    ) -> Outcome<DocumentAccepted> {
        let request = (document_id, &input);
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "revise_document", &request, || async {
                let command = KnowledgeDocumentCommand::ReviseDocument {
                    actor_id: caller.user,
                    title: input.title.clone(),
                    tags: input.tags.clone(),
                    category: input.category.clone(),
                    text: input.text.clone(),
                };
                let committed = self.knowledge.execute(&document_id.to_string(), command, &caller.meta).await?;
                Ok(DocumentAccepted { document_id, version: committed.version })
            })
            .await
    }

    /// Deletes one of the caller's documents and takes it out of search at once.
    #[instrument(skip_all, fields(user_id = %caller.user, %document_id))]
    pub async fn delete_document(&self, caller: &Caller, document_id: Uuid) -> Outcome<DocumentAccepted> {
        let answer = self
            .idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "delete_document", &document_id, || async {
                let command = KnowledgeDocumentCommand::DeleteDocument { actor_id: caller.user };
                let committed = self.knowledge.execute(&document_id.to_string(), command, &caller.meta).await?;
                Ok(DocumentAccepted { document_id, version: committed.version })
            })
            .await?;
        // Also on a replayed answer: the first request may have died between the two steps.
        knowledge_index::remove_document(&self.pool, caller.user, document_id)
            .await
            .map_err(|e| UseCaseError::Failed(Failure::Index(e)))?;
        Ok(answer)
    }

    /// Records that `version` of a document is indexed (the ingest worker, a system actor).
    pub async fn record_document_indexed(
        &self,
        caller: &Caller,
        document_id: Uuid,
        command: KnowledgeDocumentCommand,
    ) -> Result<Committed, CommandError<KnowledgeDocumentError>> {
        self.knowledge.execute(&document_id.to_string(), command, &caller.meta).await
    }

    /// A knowledge document's current state, from the write model.
    pub async fn document_state(
        &self,
        document_id: Uuid,
    ) -> Result<(colloquy_domain::KnowledgeDocument, i64), CommandError<KnowledgeDocumentError>> {
        self.knowledge.current_state(&document_id.to_string()).await
    }
}
