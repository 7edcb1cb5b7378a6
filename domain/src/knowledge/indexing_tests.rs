//! Given/when/then tests of the ingest worker's records: an index (or its failure) is
//! recorded only for the current version, once, so a late worker cannot mark a newer
//! version indexed.

use cqrs_es::event_sink::EventSink;
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::decision::Refusal;
use crate::values::{FAILURE_CODE_MAX, FAILURE_MESSAGE_MAX, MODEL_NAME_MAX};

type DocTest = TestFramework<KnowledgeDocument>;

const OWNER: Uuid = Uuid::from_u128(1);
const DOC: Uuid = Uuid::from_u128(9);

fn created() -> KnowledgeDocumentEvent {
    KnowledgeDocumentEvent::DocumentCreated(DocumentCreated {
        document_id: DOC,
        owner_id: OWNER,
        version: 1,
        title: "Travel policy".into(),
        tags: vec![],
        category: None,
        source: DocumentSource::Text { text: "Book trains.".into() },
    })
}

fn revised(version: u32) -> KnowledgeDocumentEvent {
    KnowledgeDocumentEvent::DocumentRevised(DocumentRevised { version, text: format!("Version {version}.") })
}

fn indexed(version: u32) -> KnowledgeDocumentEvent {
    KnowledgeDocumentEvent::DocumentIndexed(DocumentIndexed {
        version,
        chunks: 3,
        chunking: "text-splitter characters 500..2000, overlap 200".into(),
        embedding_model: "local/all-minilm-l6-v2".into(),
        embedding_dimension: 384,
    })
}

fn failed(version: u32) -> KnowledgeDocumentEvent {
    KnowledgeDocumentEvent::DocumentIndexingFailed(DocumentIndexingFailed {
        version,
        code: "embedding_failed".into(),
        message: "The embedding service did not answer.".into(),
    })
}

fn deleted() -> KnowledgeDocumentEvent {
    KnowledgeDocumentEvent::DocumentDeleted(DocumentDeleted {})
}

fn record_indexed(version: u32) -> KnowledgeDocumentCommand {
    KnowledgeDocumentCommand::RecordDocumentIndexed {
        version,
        chunks: 3,
        chunking: "text-splitter characters 500..2000, overlap 200".into(),
        embedding_model: "local/all-minilm-l6-v2".into(),
        embedding_dimension: 384,
    }
}

/// `record_indexed(1)` with one field changed by `change`.
fn record_indexed_with(change: impl FnOnce(&mut KnowledgeDocumentCommand)) -> KnowledgeDocumentCommand {
    let mut command = record_indexed(1);
    change(&mut command);
    command
}

fn record_failed(version: u32, code: &str, message: &str) -> KnowledgeDocumentCommand {
    KnowledgeDocumentCommand::RecordDocumentIndexingFailed { version, code: code.into(), message: message.into() }
}

fn record_failed_ok(version: u32) -> KnowledgeDocumentCommand {
    record_failed(version, "embedding_failed", "The embedding service did not answer.")
}

async fn expect_err(given: Vec<KnowledgeDocumentEvent>, cmd: KnowledgeDocumentCommand, err: KnowledgeDocumentError) {
    DocTest::with(()).given(given).when_async(cmd).await.then_expect_error(Refusal::Rejected(err));
}

// Indexed.

#[tokio::test]
async fn the_first_version_can_be_recorded_indexed() {
    DocTest::with(()).given(vec![created()]).when_async(record_indexed(1)).await.then_expect_events(vec![indexed(1)]);
}

#[tokio::test]
async fn a_revised_version_can_be_recorded_indexed() {
    DocTest::with(())
        .given(vec![created(), indexed(1), revised(2)])
        .when_async(record_indexed(2))
        .await
        .then_expect_events(vec![indexed(2)]);
}

// A failed version is superseded by the next one, which is indexed as usual.
#[tokio::test]
async fn a_revision_after_a_failure_can_be_recorded_indexed() {
    DocTest::with(())
        .given(vec![created(), failed(1), revised(2)])
        .when_async(record_indexed(2))
        .await
        .then_expect_events(vec![indexed(2)]);
}

#[tokio::test]
async fn the_chunking_description_is_trimmed() {
    let command = record_indexed_with(|c| {
        if let KnowledgeDocumentCommand::RecordDocumentIndexed { chunking, .. } = c {
            *chunking = "  text-splitter characters 500..2000, overlap 200 ".into();
        }
    });
    DocTest::with(()).given(vec![created()]).when_async(command).await.then_expect_events(vec![indexed(1)]);
}

// The late worker: it indexed version 1 while the owner revised to version 2.
#[tokio::test]
async fn indexing_a_superseded_version_is_stale() {
    expect_err(
        vec![created(), revised(2)],
        record_indexed(1),
        KnowledgeDocumentError::StaleVersion { version: 1, current: 2 },
    )
    .await;
}

// Stale is decided on the version before the status: version 2 being ready does not make
// a record of version 1 "not indexing".
#[tokio::test]
async fn indexing_a_superseded_version_is_stale_even_when_the_current_one_is_ready() {
    expect_err(
        vec![created(), revised(2), indexed(2)],
        record_indexed(1),
        KnowledgeDocumentError::StaleVersion { version: 1, current: 2 },
    )
    .await;
}

#[tokio::test]
async fn indexing_a_version_the_document_never_had_is_rejected() {
    expect_err(vec![created()], record_indexed(2), KnowledgeDocumentError::UnknownVersion { version: 2, current: 1 })
        .await;
}

// A redelivered event makes the worker record its index again: refused.
#[tokio::test]
async fn indexing_an_indexed_version_again_is_rejected() {
    expect_err(
        vec![created(), indexed(1)],
        record_indexed(1),
        KnowledgeDocumentError::NotIndexing { status: DocumentStatus::Ready },
    )
    .await;
}

#[tokio::test]
async fn indexing_a_failed_version_is_rejected() {
    expect_err(
        vec![created(), failed(1)],
        record_indexed(1),
        KnowledgeDocumentError::NotIndexing { status: DocumentStatus::Failed },
    )
    .await;
}

#[tokio::test]
async fn indexing_a_document_never_created_is_not_found() {
    expect_err(vec![], record_indexed(1), KnowledgeDocumentError::NotFound).await;
}

#[tokio::test]
async fn indexing_a_deleted_document_is_rejected() {
    expect_err(vec![created(), deleted()], record_indexed(1), KnowledgeDocumentError::Deleted).await;
}

#[tokio::test]
async fn a_zero_embedding_dimension_is_rejected() {
    let command = record_indexed_with(|c| {
        if let KnowledgeDocumentCommand::RecordDocumentIndexed { embedding_dimension, .. } = c {
            *embedding_dimension = 0;
        }
    });
    expect_err(vec![created()], command, KnowledgeDocumentError::InvalidEmbeddingDimension).await;
}

#[tokio::test]
async fn a_blank_chunking_description_is_rejected() {
    let command = record_indexed_with(|c| {
        if let KnowledgeDocumentCommand::RecordDocumentIndexed { chunking, .. } = c {
            *chunking = " ".into();
        }
    });
    expect_err(vec![created()], command, KnowledgeDocumentError::InvalidChunking { max: CHUNKING_MAX }).await;
}

#[tokio::test]
async fn an_overlong_chunking_description_is_rejected() {
    let command = record_indexed_with(|c| {
        if let KnowledgeDocumentCommand::RecordDocumentIndexed { chunking, .. } = c {
            *chunking = "c".repeat(CHUNKING_MAX + 1);
        }
    });
    expect_err(vec![created()], command, KnowledgeDocumentError::InvalidChunking { max: CHUNKING_MAX }).await;
}

#[tokio::test]
async fn a_blank_embedding_model_is_rejected() {
    let command = record_indexed_with(|c| {
        if let KnowledgeDocumentCommand::RecordDocumentIndexed { embedding_model, .. } = c {
            *embedding_model = String::new();
        }
    });
    expect_err(vec![created()], command, KnowledgeDocumentError::InvalidEmbeddingModel { max: MODEL_NAME_MAX }).await;
}

// Indexing failed.

#[tokio::test]
async fn the_current_version_can_be_recorded_failed() {
    DocTest::with(()).given(vec![created()]).when_async(record_failed_ok(1)).await.then_expect_events(vec![failed(1)]);
}

#[tokio::test]
async fn a_failure_of_a_superseded_version_is_stale() {
    expect_err(
        vec![created(), revised(2)],
        record_failed_ok(1),
        KnowledgeDocumentError::StaleVersion { version: 1, current: 2 },
    )
    .await;
}

#[tokio::test]
async fn a_failure_of_a_version_the_document_never_had_is_rejected() {
    expect_err(
        vec![created()],
        record_failed_ok(3),
        KnowledgeDocumentError::UnknownVersion { version: 3, current: 1 },
    )
    .await;
}

#[tokio::test]
async fn recording_a_failure_twice_is_rejected() {
    expect_err(
        vec![created(), failed(1)],
        record_failed_ok(1),
        KnowledgeDocumentError::NotIndexing { status: DocumentStatus::Failed },
    )
    .await;
}

#[tokio::test]
async fn recording_a_failure_of_an_indexed_version_is_rejected() {
    expect_err(
        vec![created(), indexed(1)],
        record_failed_ok(1),
        KnowledgeDocumentError::NotIndexing { status: DocumentStatus::Ready },
    )
    .await;
}

#[tokio::test]
async fn recording_a_failure_of_a_document_never_created_is_not_found() {
    expect_err(vec![], record_failed_ok(1), KnowledgeDocumentError::NotFound).await;
}

#[tokio::test]
async fn recording_a_failure_of_a_deleted_document_is_rejected() {
    expect_err(vec![created(), deleted()], record_failed_ok(1), KnowledgeDocumentError::Deleted).await;
}

#[tokio::test]
async fn a_failure_code_that_is_not_snake_case_is_rejected() {
    expect_err(
        vec![created()],
        record_failed(1, "EmbeddingFailed", "The embedding service did not answer."),
        KnowledgeDocumentError::InvalidFailureCode { max: FAILURE_CODE_MAX },
    )
    .await;
}

#[tokio::test]
async fn a_blank_failure_message_is_rejected() {
    expect_err(
        vec![created()],
        record_failed(1, "embedding_failed", ""),
        KnowledgeDocumentError::InvalidFailureMessage { max: FAILURE_MESSAGE_MAX },
    )
    .await;
}

// State.

// Events are decided for the current version; should an old record ever be replayed after
// a revision, it does not mark the newer version.
#[test]
fn applying_a_record_of_another_version_leaves_the_status() {
    let mut doc = KnowledgeDocument::default();
    doc.apply(created());
    doc.apply(revised(2));
    doc.apply(indexed(1));
    assert_eq!((doc.version, doc.status), (2, DocumentStatus::Indexing));
    doc.apply(failed(1));
    assert_eq!(doc.status, DocumentStatus::Indexing);
    doc.apply(failed(2));
    assert_eq!(doc.status, DocumentStatus::Failed);
}

proptest! {
    /// Whatever interleaving of revisions and worker records (for any version), a record is
    /// accepted exactly when it names the current version and that version awaits one;
    /// versions only grow, one at a time.
    #[test]
    fn only_the_current_version_awaiting_an_index_takes_a_record(
        ops in proptest::collection::vec((0u8..3, 0u32..6), 0..40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let sink = EventSink::default();
            let mut doc = KnowledgeDocument::default();
            doc.handle(
                KnowledgeDocumentCommand::CreateDocument {
                    document_id: DOC,
                    owner_id: OWNER,
                    title: "T".into(),
                    tags: vec![],
                    category: None,
                    source: DocumentSource::Text { text: "a".into() },
                },
                &(),
                &sink,
            )
            .await
            .unwrap();
            for (op, version) in ops {
                let before = doc.clone();
                let command = match op {
                    0 => KnowledgeDocumentCommand::ReviseDocument {
                        actor_id: OWNER,
                        title: None,
                        tags: None,
                        category: None,
                        text: Some("b".into()),
                    },
                    1 => record_indexed(version),
                    _ => record_failed_ok(version),
                };
                let outcome = doc.handle(command, &(), &sink).await;
                if op == 0 {
                    assert_eq!(outcome, Ok(()));
                    assert_eq!((doc.version, doc.status), (before.version + 1, DocumentStatus::Indexing));
                    continue;
                }
                let acceptable = version == before.version && before.status == DocumentStatus::Indexing;
                assert_eq!(outcome.is_ok(), acceptable, "{op} v{version} on {before:?}: {outcome:?}");
                let expected = match (acceptable, op) {
                    (false, _) => before.status,
                    (true, 1) => DocumentStatus::Ready,
                    (true, _) => DocumentStatus::Failed,
                };
                assert_eq!((doc.version, doc.status), (before.version, expected));
            }
        });
    }
}
