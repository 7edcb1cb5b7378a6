use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::labels::{self, normalise_tags};
use super::*;
use crate::decision::Refusal;
use crate::registry::Registered;
use crate::values::{self, TextError, TextField, FAILURE_CODE_MAX, FAILURE_MESSAGE_MAX, MODEL_NAME_MAX, TITLE_MAX};

/// Events between KnowledgeDocument snapshots. Revisions have no bound, and each brings
/// its indexing record; the aggregate is small and of constant size, so snapshots are cheap.
pub const SNAPSHOT_EVERY: usize = 20;

/// Where a document is, for its current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentStatus {
    /// Not created.
    #[default]
    New,
    /// The current version awaits its index (the ingest worker is at it).
    Indexing,
    /// The current version is indexed and searchable.
    Ready,
    /// The current version could not be indexed.
    Failed,
    /// Deleted; terminal.
    Deleted,
}

impl std::fmt::Display for DocumentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::New => "new",
            Self::Indexing => "indexing",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        })
    }
}

/// A document of a knowledge base. Holds only what its decisions need, none of it growing
/// with the document's history (no list of versions: only the current one matters), and no
/// personal data (title, tags and text live in the events and read models). Fields added
/// later must default (`#[serde(default)]`), or snapshots written before stop loading.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KnowledgeDocument {
    /// The id, once created.
    pub id: Option<Uuid>,
    /// The owner, once created.
    pub owner_id: Option<Uuid>,
    /// The file it is made from, if it is; such a document's text cannot be edited.
    pub file_id: Option<Uuid>,
    /// The current version (0 before creation).
    pub version: u32,
    /// Where the current version is.
    pub status: DocumentStatus,
}

impl KnowledgeDocument {
    /// Checks the document exists, is not deleted, and `actor` owns it. Someone else's
    /// document does not exist for them, deleted or not.
    fn ensure_owned_by(&self, actor: Uuid) -> Result<(), KnowledgeDocumentError> {
        match (self.status, self.owner_id) {
            (DocumentStatus::New, _) => Err(KnowledgeDocumentError::NotFound),
            (_, Some(owner)) if owner != actor => Err(KnowledgeDocumentError::NotFound),
            (DocumentStatus::Deleted, _) => Err(KnowledgeDocumentError::Deleted),
            _ => Ok(()),
        }
    }

    /// Checks an indexing record (the worker's, naming no actor) is for the current version
    /// and that version awaits one. Version first: a late worker's record of an older
    /// version is stale whatever the current version's status.
    fn ensure_indexing(&self, version: u32) -> Result<(), KnowledgeDocumentError> {
        let current = self.version;
        match self.status {
            DocumentStatus::New => Err(KnowledgeDocumentError::NotFound),
            DocumentStatus::Deleted => Err(KnowledgeDocumentError::Deleted),
            _ if version < current => Err(KnowledgeDocumentError::StaleVersion { version, current }),
            _ if version > current => Err(KnowledgeDocumentError::UnknownVersion { version, current }),
            DocumentStatus::Indexing => Ok(()),
            status @ (DocumentStatus::Ready | DocumentStatus::Failed) => {
                Err(KnowledgeDocumentError::NotIndexing { status })
            }
        }
    }
}

/// The rejection for a refused piece of text: `length` when it is empty or too long.
fn text_error(field: TextField, length: KnowledgeDocumentError) -> impl FnOnce(TextError) -> KnowledgeDocumentError {
    move |e| match e {
        TextError::Length => length,
        TextError::ControlCharacter => KnowledgeDocumentError::ControlCharacter { field },
        TextError::InvisibleCharacter => KnowledgeDocumentError::InvisibleCharacter { field },
    }
}

fn title(raw: &str) -> Result<String, KnowledgeDocumentError> {
    values::title(raw).map_err(text_error(TextField::Title, KnowledgeDocumentError::InvalidTitle { max: TITLE_MAX }))
}

/// Document text keeps its whitespace, inner and outer, as message text does; it must not
/// be blank, hold more than [`DOCUMENT_TEXT_MAX`] characters, or any control character but
/// line breaks and tabs.
fn text(text: String) -> Result<String, KnowledgeDocumentError> {
    let invalid = KnowledgeDocumentError::InvalidText { max: DOCUMENT_TEXT_MAX };
    values::check_message_chars(&text).map_err(text_error(TextField::DocumentText, invalid.clone()))?;
    match text.trim().is_empty() || text.chars().count() > DOCUMENT_TEXT_MAX {
        true => Err(invalid),
        false => Ok(text),
    }
}

fn source(source: DocumentSource) -> Result<DocumentSource, KnowledgeDocumentError> {
    Ok(match source {
        DocumentSource::Text { text: t } => DocumentSource::Text { text: text(t)? },
        file @ DocumentSource::File { .. } => file,
    })
}

impl Registered for KnowledgeDocument {
    const SNAPSHOT_EVERY: Option<usize> = Some(SNAPSHOT_EVERY);
}

impl Aggregate for KnowledgeDocument {
    const TYPE: &'static str = "KnowledgeDocument";
    type Command = KnowledgeDocumentCommand;
    type Event = KnowledgeDocumentEvent;
    type Error = Refusal<KnowledgeDocumentError>;
    type Services = ();

    async fn handle(
        &mut self,
        command: KnowledgeDocumentCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Refusal<KnowledgeDocumentError>> {
        use KnowledgeDocumentCommand as C;
        use KnowledgeDocumentEvent as E;
        let events = match command {
            C::CreateDocument { document_id, owner_id, title: t, tags, category, source: s } => {
                if self.status != DocumentStatus::New {
                    return Err(KnowledgeDocumentError::AlreadyCreated.into());
                }
                vec![E::DocumentCreated(DocumentCreated {
                    document_id,
                    owner_id,
                    version: 1,
                    title: title(&t)?,
                    tags: normalise_tags(&tags)?,
                    category: category.as_deref().map(labels::category).transpose()?,
                    source: source(s)?,
                })]
            }
            C::ReviseDocument { actor_id, title: t, tags, category, text: new_text } => {
                self.ensure_owned_by(actor_id)?;
                if t.is_none() && tags.is_none() && category.is_none() && new_text.is_none() {
                    return Err(KnowledgeDocumentError::EmptyRevision.into());
                }
                if new_text.is_some() && self.file_id.is_some() {
                    return Err(KnowledgeDocumentError::FileSourcedText.into());
                }
                // Everything is checked before anything is written: a revision is all or nothing.
                let update = DocumentUpdated {
                    title: t.as_deref().map(title).transpose()?,
                    tags: tags.as_deref().map(normalise_tags).transpose()?,
                    category: category.map(|c| c.as_deref().map(labels::category).transpose()).transpose()?,
                };
                let revision = new_text.map(text).transpose()?;
                let mut events = Vec::with_capacity(2);
                if update != DocumentUpdated::default() {
                    events.push(E::DocumentUpdated(update));
                }
                if let Some(text) = revision {
                    events.push(E::DocumentRevised(DocumentRevised { version: self.version + 1, text }));
                }
                events
            }
            C::RecordDocumentIndexed { version, chunks, chunking, embedding_model, embedding_dimension } => {
                self.ensure_indexing(version)?;
                if embedding_dimension == 0 {
                    return Err(KnowledgeDocumentError::InvalidEmbeddingDimension.into());
                }
                vec![E::DocumentIndexed(DocumentIndexed {
                    version,
                    chunks,
                    chunking: values::name_text(&chunking, CHUNKING_MAX)
                        .map_err(|_| KnowledgeDocumentError::InvalidChunking { max: CHUNKING_MAX })?,
                    embedding_model: values::model_name(&embedding_model)
                        .map_err(|_| KnowledgeDocumentError::InvalidEmbeddingModel { max: MODEL_NAME_MAX })?,
                    embedding_dimension,
                })]
            }
            C::RecordDocumentIndexingFailed { version, code, message } => {
                self.ensure_indexing(version)?;
                vec![E::DocumentIndexingFailed(DocumentIndexingFailed {
                    version,
                    code: values::failure_code(&code)
                        .ok_or(KnowledgeDocumentError::InvalidFailureCode { max: FAILURE_CODE_MAX })?,
                    message: values::failure_message(&message)
                        .ok_or(KnowledgeDocumentError::InvalidFailureMessage { max: FAILURE_MESSAGE_MAX })?,
                })]
            }
            C::DeleteDocument { actor_id } => {
                self.ensure_owned_by(actor_id)?;
                vec![E::DocumentDeleted(DocumentDeleted {})]
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: KnowledgeDocumentEvent) {
        use KnowledgeDocumentEvent as E;
        match event {
            E::DocumentCreated(e) => {
                self.id = Some(e.document_id);
                self.owner_id = Some(e.owner_id);
                self.file_id = match e.source {
                    DocumentSource::File { file_id } => Some(file_id),
                    DocumentSource::Text { .. } => None,
                };
                self.version = e.version;
                self.status = DocumentStatus::Indexing;
            }
            E::DocumentUpdated(_) => {}
            E::DocumentRevised(e) => {
                self.version = e.version;
                self.status = DocumentStatus::Indexing;
            }
            // A record of another version never changes the current version's status.
            E::DocumentIndexed(e) if e.version == self.version => self.status = DocumentStatus::Ready,
            E::DocumentIndexingFailed(e) if e.version == self.version => self.status = DocumentStatus::Failed,
            E::DocumentIndexed(_) | E::DocumentIndexingFailed(_) => {}
            E::DocumentDeleted(_) => self.status = DocumentStatus::Deleted,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type DocTest = TestFramework<KnowledgeDocument>;

    const OWNER: Uuid = Uuid::from_u128(1);
    const STRANGER: Uuid = Uuid::from_u128(2);
    const DOC: Uuid = Uuid::from_u128(9);
    const FILE: Uuid = Uuid::from_u128(10);

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn created() -> KnowledgeDocumentEvent {
        KnowledgeDocumentEvent::DocumentCreated(DocumentCreated {
            document_id: DOC,
            owner_id: OWNER,
            version: 1,
            title: "Travel policy".into(),
            tags: strings(&["travel", "policy"]),
            category: Some("HR".into()),
            source: DocumentSource::Text { text: "Book trains.".into() },
        })
    }

    fn created_from_file() -> KnowledgeDocumentEvent {
        KnowledgeDocumentEvent::DocumentCreated(DocumentCreated {
            document_id: DOC,
            owner_id: OWNER,
            version: 1,
            title: "Report.pdf".into(),
            tags: vec![],
            category: None,
            source: DocumentSource::File { file_id: FILE },
        })
    }

    fn revised(version: u32, text: &str) -> KnowledgeDocumentEvent {
        KnowledgeDocumentEvent::DocumentRevised(DocumentRevised { version, text: text.into() })
    }

    fn indexed(version: u32) -> KnowledgeDocumentEvent {
        KnowledgeDocumentEvent::DocumentIndexed(DocumentIndexed {
            version,
            chunks: 1,
            chunking: "text-splitter characters 500..2000".into(),
            embedding_model: "local/all-minilm-l6-v2".into(),
            embedding_dimension: 384,
        })
    }

    fn deleted() -> KnowledgeDocumentEvent {
        KnowledgeDocumentEvent::DocumentDeleted(DocumentDeleted {})
    }

    fn updated(update: DocumentUpdated) -> KnowledgeDocumentEvent {
        KnowledgeDocumentEvent::DocumentUpdated(update)
    }

    fn create(title: &str, tags: &[&str], category: Option<&str>, text: &str) -> KnowledgeDocumentCommand {
        KnowledgeDocumentCommand::CreateDocument {
            document_id: DOC,
            owner_id: OWNER,
            title: title.into(),
            tags: strings(tags),
            category: category.map(Into::into),
            source: DocumentSource::Text { text: text.into() },
        }
    }

    /// A valid creation from text, matching `created()`.
    fn create_valid() -> KnowledgeDocumentCommand {
        create("Travel policy", &["travel", "policy"], Some("HR"), "Book trains.")
    }

    /// A revision by `actor` that names nothing; tests fill in what they change.
    fn revise(actor: Uuid) -> KnowledgeDocumentCommand {
        KnowledgeDocumentCommand::ReviseDocument { actor_id: actor, title: None, tags: None, category: None, text: None }
    }

    fn revise_text(actor: Uuid, new_text: &str) -> KnowledgeDocumentCommand {
        KnowledgeDocumentCommand::ReviseDocument {
            actor_id: actor,
            title: None,
            tags: None,
            category: None,
            text: Some(new_text.into()),
        }
    }

    fn revise_title(actor: Uuid, new_title: &str) -> KnowledgeDocumentCommand {
        KnowledgeDocumentCommand::ReviseDocument {
            actor_id: actor,
            title: Some(new_title.into()),
            tags: None,
            category: None,
            text: None,
        }
    }

    fn delete(actor: Uuid) -> KnowledgeDocumentCommand {
        KnowledgeDocumentCommand::DeleteDocument { actor_id: actor }
    }

    async fn expect_err(given: Vec<KnowledgeDocumentEvent>, cmd: KnowledgeDocumentCommand, err: KnowledgeDocumentError) {
        DocTest::with(()).given(given).when_async(cmd).await.then_expect_error(Refusal::Rejected(err));
    }

    // Creating.

    #[tokio::test]
    async fn creating_from_text_normalises_the_metadata_and_starts_at_version_1() {
        DocTest::with(())
            .given_no_previous_events()
            .when_async(create(" Travel policy ", &["Travel", " POLICY", "travel"], Some(" HR "), "Book trains."))
            .await
            .then_expect_events(vec![created()]);
    }

    #[tokio::test]
    async fn creating_from_a_file_keeps_its_id() {
        DocTest::with(())
            .given_no_previous_events()
            .when_async(KnowledgeDocumentCommand::CreateDocument {
                document_id: DOC,
                owner_id: OWNER,
                title: "Report.pdf".into(),
                tags: vec![],
                category: None,
                source: DocumentSource::File { file_id: FILE },
            })
            .await
            .then_expect_events(vec![created_from_file()]);
    }

    // Text keeps its whitespace, inner and outer; the limit counts characters, not bytes.
    #[tokio::test]
    async fn text_of_exactly_the_limit_is_kept_as_written() {
        let text = format!("  {}\n", "é".repeat(DOCUMENT_TEXT_MAX - 3));
        DocTest::with(()).given_no_previous_events().when_async(create("T", &[], None, &text)).await.then_expect_events(
            vec![KnowledgeDocumentEvent::DocumentCreated(DocumentCreated {
                document_id: DOC,
                owner_id: OWNER,
                version: 1,
                title: "T".into(),
                tags: vec![],
                category: None,
                source: DocumentSource::Text { text },
            })],
        );
    }

    #[tokio::test]
    async fn creating_twice_is_rejected() {
        expect_err(vec![created()], create_valid(), KnowledgeDocumentError::AlreadyCreated).await;
    }

    // Deletion is terminal: the id is not free to create again.
    #[tokio::test]
    async fn creating_over_a_deleted_document_is_rejected() {
        expect_err(vec![created(), deleted()], create_valid(), KnowledgeDocumentError::AlreadyCreated).await;
    }

    #[tokio::test]
    async fn a_blank_title_is_rejected_at_creation() {
        expect_err(vec![], create("  ", &[], None, "x"), KnowledgeDocumentError::InvalidTitle { max: TITLE_MAX }).await;
    }

    #[tokio::test]
    async fn an_overlong_title_is_rejected_at_creation() {
        expect_err(
            vec![],
            create(&"t".repeat(TITLE_MAX + 1), &[], None, "x"),
            KnowledgeDocumentError::InvalidTitle { max: TITLE_MAX },
        )
        .await;
    }

    #[tokio::test]
    async fn a_title_with_a_right_to_left_override_is_rejected_at_creation() {
        expect_err(
            vec![],
            create("policy\u{202E}", &[], None, "x"),
            KnowledgeDocumentError::InvisibleCharacter { field: TextField::Title },
        )
        .await;
    }

    #[tokio::test]
    async fn a_title_with_an_escape_is_rejected_at_creation() {
        expect_err(
            vec![],
            create("\u{1b}[31mpolicy", &[], None, "x"),
            KnowledgeDocumentError::ControlCharacter { field: TextField::Title },
        )
        .await;
    }

    #[tokio::test]
    async fn more_than_the_tag_limit_is_rejected_at_creation() {
        let tags: Vec<String> = (0..=TAGS_MAX).map(|i| format!("t{i}")).collect();
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        expect_err(vec![], create("T", &tags, None, "x"), KnowledgeDocumentError::TooManyTags { max: TAGS_MAX }).await;
    }

    #[tokio::test]
    async fn a_blank_tag_is_rejected_at_creation() {
        expect_err(vec![], create("T", &["ok", " "], None, "x"), KnowledgeDocumentError::InvalidTag { max: TAG_MAX })
            .await;
    }

    #[tokio::test]
    async fn an_overlong_tag_is_rejected_at_creation() {
        let tag = "t".repeat(TAG_MAX + 1);
        expect_err(vec![], create("T", &[&tag], None, "x"), KnowledgeDocumentError::InvalidTag { max: TAG_MAX }).await;
    }

    #[tokio::test]
    async fn a_tag_with_a_line_feed_is_rejected_at_creation() {
        expect_err(
            vec![],
            create("T", &["a\nb"], None, "x"),
            KnowledgeDocumentError::ControlCharacter { field: TextField::Tag },
        )
        .await;
    }

    #[tokio::test]
    async fn a_blank_category_is_rejected_at_creation() {
        expect_err(
            vec![],
            create("T", &[], Some(""), "x"),
            KnowledgeDocumentError::InvalidCategory { max: CATEGORY_MAX },
        )
        .await;
    }

    #[tokio::test]
    async fn an_overlong_category_is_rejected_at_creation() {
        expect_err(
            vec![],
            create("T", &[], Some(&"c".repeat(CATEGORY_MAX + 1)), "x"),
            KnowledgeDocumentError::InvalidCategory { max: CATEGORY_MAX },
        )
        .await;
    }

    #[tokio::test]
    async fn a_category_with_a_zero_width_space_is_rejected_at_creation() {
        expect_err(
            vec![],
            create("T", &[], Some("H\u{200B}R"), "x"),
            KnowledgeDocumentError::InvisibleCharacter { field: TextField::Category },
        )
        .await;
    }

    #[tokio::test]
    async fn blank_text_is_rejected_at_creation() {
        expect_err(
            vec![],
            create("T", &[], None, " \n\t "),
            KnowledgeDocumentError::InvalidText { max: DOCUMENT_TEXT_MAX },
        )
        .await;
    }

    #[tokio::test]
    async fn overlong_text_is_rejected_at_creation() {
        expect_err(
            vec![],
            create("T", &[], None, &"x".repeat(DOCUMENT_TEXT_MAX + 1)),
            KnowledgeDocumentError::InvalidText { max: DOCUMENT_TEXT_MAX },
        )
        .await;
    }

    #[tokio::test]
    async fn text_with_a_nul_is_rejected_at_creation() {
        expect_err(
            vec![],
            create("T", &[], None, "a\u{0}b"),
            KnowledgeDocumentError::ControlCharacter { field: TextField::DocumentText },
        )
        .await;
    }

    // Revising.

    #[tokio::test]
    async fn a_metadata_revision_emits_one_update_and_no_new_version() {
        let command = KnowledgeDocumentCommand::ReviseDocument {
            actor_id: OWNER,
            title: Some(" Travel policy 2025 ".into()),
            tags: Some(strings(&["Travel", "TRAVEL", "Trains"])),
            category: Some(None),
            text: None,
        };
        DocTest::with(()).given(vec![created()]).when_async(command).await.then_expect_events(vec![updated(
            DocumentUpdated {
                title: Some("Travel policy 2025".into()),
                tags: Some(strings(&["travel", "trains"])),
                category: Some(None),
            },
        )]);
    }

    #[tokio::test]
    async fn removing_every_tag_is_an_update() {
        let command = KnowledgeDocumentCommand::ReviseDocument {
            actor_id: OWNER,
            title: None,
            tags: Some(vec![]),
            category: Some(Some("Finance".into())),
            text: None,
        };
        DocTest::with(()).given(vec![created()]).when_async(command).await.then_expect_events(vec![updated(
            DocumentUpdated { title: None, tags: Some(vec![]), category: Some(Some("Finance".into())) },
        )]);
    }

    #[tokio::test]
    async fn a_text_revision_is_the_next_version() {
        DocTest::with(())
            .given(vec![created()])
            .when_async(revise_text(OWNER, "Book trains under five hours."))
            .await
            .then_expect_events(vec![revised(2, "Book trains under five hours.")]);
    }

    // Versions count on from the current one, whether or not earlier ones were indexed.
    #[tokio::test]
    async fn each_text_revision_adds_one_to_the_version() {
        DocTest::with(())
            .given(vec![created(), indexed(1), revised(2, "b"), revised(3, "c")])
            .when_async(revise_text(OWNER, "d"))
            .await
            .then_expect_events(vec![revised(4, "d")]);
    }

    #[tokio::test]
    async fn a_revision_of_metadata_and_text_emits_the_update_then_the_version() {
        let command = KnowledgeDocumentCommand::ReviseDocument {
            actor_id: OWNER,
            title: Some("Rail policy".into()),
            tags: None,
            category: None,
            text: Some("Book trains.\n".into()),
        };
        DocTest::with(()).given(vec![created(), indexed(1)]).when_async(command).await.then_expect_events(vec![
            updated(DocumentUpdated { title: Some("Rail policy".into()), ..DocumentUpdated::default() }),
            revised(2, "Book trains.\n"),
        ]);
    }

    #[tokio::test]
    async fn a_revision_that_names_nothing_is_rejected() {
        expect_err(vec![created()], revise(OWNER), KnowledgeDocumentError::EmptyRevision).await;
    }

    #[tokio::test]
    async fn the_metadata_of_a_file_document_can_be_revised() {
        DocTest::with(()).given(vec![created_from_file()]).when_async(revise_title(OWNER, "Q3 report")).await.then_expect_events(
            vec![updated(DocumentUpdated { title: Some("Q3 report".into()), ..DocumentUpdated::default() })],
        );
    }

    #[tokio::test]
    async fn the_text_of_a_file_document_cannot_be_revised() {
        expect_err(vec![created_from_file()], revise_text(OWNER, "edited"), KnowledgeDocumentError::FileSourcedText)
            .await;
    }

    // All or nothing: the valid title does not go through without the refused text.
    #[tokio::test]
    async fn a_revision_with_refused_text_writes_nothing() {
        let command = KnowledgeDocumentCommand::ReviseDocument {
            actor_id: OWNER,
            title: Some("Fine".into()),
            tags: None,
            category: None,
            text: Some("  ".into()),
        };
        expect_err(vec![created()], command, KnowledgeDocumentError::InvalidText { max: DOCUMENT_TEXT_MAX }).await;
    }

    #[tokio::test]
    async fn a_blank_title_is_rejected_on_revision() {
        expect_err(vec![created()], revise_title(OWNER, ""), KnowledgeDocumentError::InvalidTitle { max: TITLE_MAX })
            .await;
    }

    #[tokio::test]
    async fn too_many_tags_are_rejected_on_revision() {
        let command = KnowledgeDocumentCommand::ReviseDocument {
            actor_id: OWNER,
            title: None,
            tags: Some((0..=TAGS_MAX).map(|i| format!("t{i}")).collect()),
            category: None,
            text: None,
        };
        expect_err(vec![created()], command, KnowledgeDocumentError::TooManyTags { max: TAGS_MAX }).await;
    }

    #[tokio::test]
    async fn an_overlong_category_is_rejected_on_revision() {
        let command = KnowledgeDocumentCommand::ReviseDocument {
            actor_id: OWNER,
            title: None,
            tags: None,
            category: Some(Some("c".repeat(CATEGORY_MAX + 1))),
            text: None,
        };
        expect_err(vec![created()], command, KnowledgeDocumentError::InvalidCategory { max: CATEGORY_MAX }).await;
    }

    #[tokio::test]
    async fn text_with_an_escape_is_rejected_on_revision() {
        expect_err(
            vec![created()],
            revise_text(OWNER, "\u{1b}[2J"),
            KnowledgeDocumentError::ControlCharacter { field: TextField::DocumentText },
        )
        .await;
    }

    #[tokio::test]
    async fn a_stranger_cannot_revise() {
        expect_err(vec![created()], revise_title(STRANGER, "Mine"), KnowledgeDocumentError::NotFound).await;
    }

    #[tokio::test]
    async fn revising_a_document_never_created_is_not_found() {
        expect_err(vec![], revise_title(OWNER, "x"), KnowledgeDocumentError::NotFound).await;
    }

    #[tokio::test]
    async fn revising_a_deleted_document_is_rejected() {
        expect_err(vec![created(), deleted()], revise_text(OWNER, "x"), KnowledgeDocumentError::Deleted).await;
    }

    // A stranger learns nothing, not even that it was deleted.
    #[tokio::test]
    async fn a_stranger_revising_a_deleted_document_gets_not_found() {
        expect_err(vec![created(), deleted()], revise_text(STRANGER, "x"), KnowledgeDocumentError::NotFound).await;
    }

    // Deleting.

    #[tokio::test]
    async fn the_owner_can_delete_in_any_status() {
        for given in [vec![created()], vec![created(), indexed(1)], vec![created_from_file()]] {
            DocTest::with(()).given(given).when_async(delete(OWNER)).await.then_expect_events(vec![deleted()]);
        }
    }

    #[tokio::test]
    async fn a_stranger_cannot_delete() {
        expect_err(vec![created()], delete(STRANGER), KnowledgeDocumentError::NotFound).await;
    }

    #[tokio::test]
    async fn deleting_twice_is_rejected() {
        expect_err(vec![created(), deleted()], delete(OWNER), KnowledgeDocumentError::Deleted).await;
    }

    #[tokio::test]
    async fn deleting_a_document_never_created_is_not_found() {
        expect_err(vec![], delete(OWNER), KnowledgeDocumentError::NotFound).await;
    }

    // State.

    #[test]
    fn apply_tracks_the_current_version_and_its_status() {
        let mut doc = KnowledgeDocument::default();
        doc.apply(created_from_file());
        assert_eq!((doc.id, doc.owner_id, doc.file_id), (Some(DOC), Some(OWNER), Some(FILE)));
        assert_eq!((doc.version, doc.status), (1, DocumentStatus::Indexing));
        doc.apply(indexed(1));
        assert_eq!(doc.status, DocumentStatus::Ready);
        doc.apply(updated(DocumentUpdated { title: Some("New".into()), ..DocumentUpdated::default() }));
        assert_eq!((doc.version, doc.status), (1, DocumentStatus::Ready), "metadata makes no version");
        doc.apply(revised(2, "b"));
        assert_eq!((doc.version, doc.status), (2, DocumentStatus::Indexing));
        doc.apply(deleted());
        assert_eq!(doc.status, DocumentStatus::Deleted);
    }

    // Constant size: a hundred revisions leave a state (and snapshot) no bigger than one,
    // holding no title or text.
    #[test]
    fn the_state_does_not_grow_with_revisions_and_holds_no_personal_data() {
        let mut doc = KnowledgeDocument::default();
        doc.apply(created());
        let size = |d: &KnowledgeDocument| serde_json::to_string(d).unwrap().len();
        let before = size(&doc);
        for version in 2..=100 {
            doc.apply(revised(version, "the same text again"));
            doc.apply(indexed(version));
        }
        assert!(size(&doc) <= before + 2, "{} > {before}", size(&doc));
        let state = serde_json::to_string(&doc).unwrap();
        assert!(!state.contains("Travel policy") && !state.contains("same text"), "{state}");
        assert!(state.contains("\"status\":\"ready\""), "{state}");
    }

    // The biggest possible events still fit one Kafka record (librdkafka's default
    // `message.max.bytes` is 1,000,000), with room left for the CloudEvent envelope.
    #[test]
    fn the_largest_events_fit_a_kafka_record() {
        let four_bytes = "𝄞"; // U+1D11E: 4 bytes in UTF-8, unescaped in JSON.
        let text = four_bytes.repeat(DOCUMENT_TEXT_MAX);
        let largest = KnowledgeDocumentEvent::DocumentCreated(DocumentCreated {
            document_id: DOC,
            owner_id: OWNER,
            version: 1,
            title: four_bytes.repeat(TITLE_MAX),
            tags: (0..TAGS_MAX).map(|i| format!("{i:02}{}", four_bytes.repeat(TAG_MAX - 2))).collect(),
            category: Some(four_bytes.repeat(CATEGORY_MAX)),
            source: DocumentSource::Text { text: text.clone() },
        });
        assert!(serde_json::to_vec(&largest).unwrap().len() < 900_000);
        let newlines = KnowledgeDocumentEvent::DocumentRevised(DocumentRevised { version: 2, text: "\n".repeat(DOCUMENT_TEXT_MAX) });
        assert!(serde_json::to_vec(&newlines).unwrap().len() < 900_000);
    }
}
