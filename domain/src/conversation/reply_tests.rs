//! Given/when/then tests of the reply commands and of the state replies leave behind.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use cqrs_es::event_sink::EventSink;
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use proptest::prelude::*;
use uuid::Uuid;

use super::test_support::Unreachable;
use super::*;
use crate::decision::{PortError, Refusal};
use crate::values::{TextField, MODEL_NAME_MAX};

type ConvTest = TestFramework<Conversation>;

const OWNER: Uuid = Uuid::from_u128(1);
const MSG: Uuid = Uuid::from_u128(3);
const CONV: Uuid = Uuid::from_u128(9);

fn reply() -> Uuid {
    reply_id_for(MSG)
}

/// The event store as the port sees it: user message ids and started reply ids.
#[derive(Default, Clone)]
struct Known {
    messages: HashSet<Uuid>,
    replies: HashSet<Uuid>,
}

#[async_trait]
impl MessageLookup for Known {
    async fn message_exists(&self, conversation_id: Uuid, id: Uuid) -> Result<bool, PortError> {
        Ok(conversation_id == CONV && (self.messages.contains(&id) || self.replies.contains(&id)))
    }

    async fn reply_exists(&self, conversation_id: Uuid, id: Uuid) -> Result<bool, PortError> {
        Ok(conversation_id == CONV && self.replies.contains(&id))
    }

    async fn node(&self, conversation_id: Uuid, id: Uuid) -> Result<Option<MessageNode>, PortError> {
        let known = conversation_id == CONV && (self.messages.contains(&id) || self.replies.contains(&id));
        Ok(known.then(|| MessageNode { parent_id: None, is_reply: self.replies.contains(&id) }))
    }

    async fn latest_leaf(&self, conversation_id: Uuid, from: Uuid) -> Result<Option<Uuid>, PortError> {
        Ok(self.node(conversation_id, from).await?.map(|_| from))
    }

    async fn requested_reply(&self, _: Uuid, _: Uuid) -> Result<Option<Uuid>, PortError> {
        Ok(None)
    }
}

fn knowing(messages: &[Uuid], replies: &[Uuid]) -> ConversationServices {
    ConversationServices::new(Arc::new(Known {
        messages: messages.iter().copied().collect(),
        replies: replies.iter().copied().collect(),
    }))
}

/// The store after `MSG` was posted.
fn posted_only() -> ConversationServices {
    knowing(&[MSG], &[])
}

/// The store after `MSG` was posted and its reply started.
fn reply_stored() -> ConversationServices {
    knowing(&[MSG], &[reply()])
}

fn started() -> ConversationEvent {
    ConversationEvent::ConversationStarted(ConversationStarted {
        conversation_id: CONV,
        owner_id: OWNER,
        title: "Trip".into(),
        kind: ConversationKind::Chat,
        model: "gpt-4o-mini".into(),
        system_prompt: Some("Be brief.".into()),
        title_pending: false,
    })
}

fn posted() -> ConversationEvent {
    ConversationEvent::UserMessagePosted(UserMessagePosted {
        message_id: MSG,
        author_id: OWNER,
        content: "hi".into(),
        model: None,
        parent_id: None,
        edit_of: None,
    })
}

fn archived() -> ConversationEvent {
    ConversationEvent::ConversationArchived(ConversationArchived {})
}

fn deleted() -> ConversationEvent {
    ConversationEvent::ConversationDeleted(ConversationDeleted {})
}

fn parameters() -> ReplyParameters {
    ReplyParameters { max_tokens: Some(256), temperature: Some(0.2), top_p: None }
}

fn start_reply(reply_id: Uuid, in_reply_to: Uuid, model: &str) -> ConversationCommand {
    ConversationCommand::StartReply {
        reply_id,
        in_reply_to,
        model: model.into(),
        provider: "openai".into(),
        route: vec!["openai/gpt-4o-mini".into(), "local/smollm2-135m".into()],
        system_prompt: Some("Be brief.".into()),
        context: vec![MSG],
        parameters: parameters(),
        worker: "w1".into(),
        citations: vec![citation()],
    }
}

fn citation() -> Citation {
    Citation {
        document_id: Uuid::from_u128(77),
        version: 2,
        chunk_id: Uuid::from_u128(78),
        position: 3,
        title: "Handbook".into(),
        text: "Leave is booked two weeks ahead.".into(),
        score: 0.03,
    }
}

fn reply_started() -> ConversationEvent {
    ConversationEvent::ReplyStarted(ReplyStarted {
        reply_id: reply(),
        in_reply_to: MSG,
        model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        route: vec!["openai/gpt-4o-mini".into(), "local/smollm2-135m".into()],
        system_prompt: Some("Be brief.".into()),
        context: vec![MSG],
        parameters: parameters(),
        worker: "w1".into(),
        citations: vec![citation()],
    })
}

fn attempt(outcome: &str) -> ReplyAttempt {
    ReplyAttempt {
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        outcome: outcome.into(),
        error_class: None,
        error: None,
        status: None,
        latency_ms: 12,
    }
}

fn usage() -> TokenUsage {
    TokenUsage { input_tokens: 20, output_tokens: 5 }
}

fn complete(reply_id: Uuid) -> ConversationCommand {
    ConversationCommand::CompleteReply {
        reply_id,
        provider: "openai".into(),
        model: "gpt-4o-mini-2024-07-18".into(),
        content: "Hello!".into(),
        usage: usage(),
        latency_ms: 300,
        time_to_first_token_ms: 90,
        finish_reason: "stop".into(),
        attempts: vec![attempt("succeeded")],
    }
}

fn completed() -> ConversationEvent {
    ConversationEvent::ReplyCompleted(ReplyCompleted {
        reply_id: reply(),
        provider: "openai".into(),
        model: "gpt-4o-mini-2024-07-18".into(),
        content: "Hello!".into(),
        usage: usage(),
        latency_ms: 300,
        time_to_first_token_ms: 90,
        finish_reason: "stop".into(),
        attempts: vec![attempt("succeeded")],
    })
}

fn failure() -> ReplyFailure {
    ReplyFailure { code: "provider_error".into(), message: "stream cut".into() }
}

fn fail(reply_id: Uuid) -> ConversationCommand {
    ConversationCommand::FailReply {
        reply_id,
        reason: failure(),
        attempts: vec![attempt("failed")],
        partial_content: "Hel".into(),
        provider: Some("openai".into()),
        model: Some("gpt-4o-mini".into()),
        usage: usage(),
    }
}

fn failed() -> ConversationEvent {
    ConversationEvent::ReplyFailed(ReplyFailed {
        reply_id: reply(),
        reason: failure(),
        attempts: vec![attempt("failed")],
        partial_content: "Hel".into(),
        provider: Some("openai".into()),
        model: Some("gpt-4o-mini".into()),
        usage: usage(),
    })
}

fn cancel(reply_id: Uuid) -> ConversationCommand {
    ConversationCommand::CancelReply {
        reply_id,
        cancelled_by: OWNER,
        partial_content: "He".into(),
        usage: usage(),
        attempts: vec![],
        provider: None,
        model: None,
    }
}

fn cancelled() -> ConversationEvent {
    ConversationEvent::ReplyCancelled(ReplyCancelled {
        reply_id: reply(),
        cancelled_by: OWNER,
        partial_content: "He".into(),
        usage: usage(),
        attempts: vec![],
        provider: None,
        model: None,
    })
}

async fn expect_err(
    services: ConversationServices,
    given: Vec<ConversationEvent>,
    cmd: ConversationCommand,
    err: ConversationError,
) {
    ConvTest::with(services).given(given).when_async(cmd).await.then_expect_error(Refusal::Rejected(err));
}

// Posting with a model.

#[tokio::test]
async fn a_post_keeps_the_trimmed_model_it_asks_for() {
    let cmd = ConversationCommand::PostUserMessage {
        actor_id: OWNER,
        message_id: MSG.into(),
        content: "hi".into(),
        model: Some(" gpt-4o ".into()),
    };
    ConvTest::with(knowing(&[], &[])).given(vec![started()]).when_async(cmd).await.then_expect_events(vec![
        ConversationEvent::UserMessagePosted(UserMessagePosted {
            message_id: MSG,
            author_id: OWNER,
            content: "hi".into(),
            model: Some("gpt-4o".into()),
            parent_id: None,
            edit_of: None,
        }),
    ]);
}

#[tokio::test]
async fn a_post_asking_for_a_blank_model_is_rejected() {
    let cmd = ConversationCommand::PostUserMessage {
        actor_id: OWNER,
        message_id: MSG.into(),
        content: "hi".into(),
        model: Some("  ".into()),
    };
    expect_err(knowing(&[], &[]), vec![started()], cmd, ConversationError::InvalidModel { max: MODEL_NAME_MAX }).await;
}

#[tokio::test]
async fn a_post_asking_for_a_model_with_an_invisible_character_is_rejected() {
    let cmd = ConversationCommand::PostUserMessage {
        actor_id: OWNER,
        message_id: MSG.into(),
        content: "hi".into(),
        model: Some("gpt\u{200B}4o".into()),
    };
    let err = ConversationError::InvisibleCharacter { field: TextField::Model };
    expect_err(knowing(&[], &[]), vec![started()], cmd, err).await;
}

// A message id already taken by a reply is a duplicate: both share the messages list.
#[tokio::test]
async fn a_post_reusing_a_reply_id_is_a_duplicate() {
    let cmd = ConversationCommand::PostUserMessage {
        actor_id: OWNER,
        message_id: reply().into(),
        content: "hi".into(),
        model: None,
    };
    expect_err(reply_stored(), vec![started(), posted(), reply_started()], cmd, ConversationError::DuplicateMessage)
        .await;
}

#[test]
fn a_version_1_0_post_without_a_model_still_reads() {
    let stored = serde_json::json!({"UserMessagePosted": {"message_id": MSG, "author_id": OWNER, "content": "hi"}});
    assert_eq!(serde_json::from_value::<ConversationEvent>(stored).unwrap(), posted());
}

// Starting a reply.

#[tokio::test]
async fn a_reply_to_a_posted_message_starts() {
    ConvTest::with(posted_only())
        .given(vec![started(), posted()])
        .when_async(start_reply(reply(), MSG, " gpt-4o-mini "))
        .await
        .then_expect_events(vec![reply_started()]);
}

// The message was posted before the archive: it still gets its answer.
#[tokio::test]
async fn a_reply_starts_in_an_archived_conversation() {
    ConvTest::with(posted_only())
        .given(vec![started(), posted(), archived()])
        .when_async(start_reply(reply(), MSG, "gpt-4o-mini"))
        .await
        .then_expect_events(vec![reply_started()]);
}

#[tokio::test]
async fn a_reply_in_a_deleted_conversation_is_rejected() {
    let given = vec![started(), posted(), deleted()];
    expect_err(posted_only(), given, start_reply(reply(), MSG, "gpt-4o-mini"), ConversationError::Deleted).await;
}

#[tokio::test]
async fn a_reply_in_an_unstarted_conversation_is_not_found() {
    expect_err(posted_only(), vec![], start_reply(reply(), MSG, "gpt-4o-mini"), ConversationError::NotFound).await;
}

#[tokio::test]
async fn a_reply_id_not_derived_from_the_message_is_rejected() {
    let given = vec![started(), posted()];
    let cmd = start_reply(Uuid::from_u128(77), MSG, "gpt-4o-mini");
    expect_err(posted_only(), given, cmd, ConversationError::ReplyIdMismatch).await;
}

#[tokio::test]
async fn a_reply_to_an_unknown_message_is_rejected() {
    let other = Uuid::from_u128(55);
    let cmd = start_reply(reply_id_for(other), other, "gpt-4o-mini");
    expect_err(posted_only(), vec![started(), posted()], cmd, ConversationError::MessageNotFound).await;
}

// Only user messages are answered: a reply's id is a message id, but not a user message.
#[tokio::test]
async fn a_reply_to_a_reply_is_rejected() {
    let cmd = start_reply(reply_id_for(reply()), reply(), "gpt-4o-mini");
    let given = vec![started(), posted(), reply_started(), completed()];
    expect_err(reply_stored(), given, cmd, ConversationError::MessageNotFound).await;
}

#[tokio::test]
async fn a_second_start_of_an_open_reply_is_rejected() {
    let given = vec![started(), posted(), reply_started()];
    let cmd = start_reply(reply(), MSG, "gpt-4o-mini");
    expect_err(reply_stored(), given, cmd, ConversationError::ReplyInProgress).await;
}

// A redelivered `UserMessagePosted` after the reply finished yields no second reply.
#[tokio::test]
async fn a_start_of_a_finished_reply_is_rejected() {
    for finished in [completed(), failed(), cancelled()] {
        let given = vec![started(), posted(), reply_started(), finished];
        let cmd = start_reply(reply(), MSG, "gpt-4o-mini");
        expect_err(reply_stored(), given, cmd, ConversationError::ReplyAlreadyFinished).await;
    }
}

// A client may choose a message id equal to a future reply id; that reply cannot start
// (it would clash with the message in the messages list).
#[tokio::test]
async fn a_reply_whose_id_a_user_message_took_is_rejected() {
    let cmd = start_reply(reply(), MSG, "gpt-4o-mini");
    expect_err(knowing(&[MSG, reply()], &[]), vec![started(), posted()], cmd, ConversationError::DuplicateMessage)
        .await;
}

#[tokio::test]
async fn a_reply_with_a_blank_model_is_rejected() {
    let cmd = start_reply(reply(), MSG, " ");
    let err = ConversationError::InvalidModel { max: MODEL_NAME_MAX };
    expect_err(posted_only(), vec![started(), posted()], cmd, err).await;
}

#[tokio::test]
async fn a_failed_lookup_while_starting_a_reply_is_a_port_failure() {
    ConvTest::with(ConversationServices::new(Arc::new(Unreachable)))
        .given(vec![started(), posted()])
        .when_async(start_reply(reply(), MSG, "gpt-4o-mini"))
        .await
        .then_expect_error(Refusal::PortFailed(PortError::new("message lookup", "event store unreachable")));
}

// Finishing a reply.

#[tokio::test]
async fn an_open_reply_completes() {
    ConvTest::with(reply_stored())
        .given(vec![started(), posted(), reply_started()])
        .when_async(complete(reply()))
        .await
        .then_expect_events(vec![completed()]);
}

#[tokio::test]
async fn an_open_reply_fails_with_its_partial_text() {
    ConvTest::with(reply_stored())
        .given(vec![started(), posted(), reply_started()])
        .when_async(fail(reply()))
        .await
        .then_expect_events(vec![failed()]);
}

#[tokio::test]
async fn an_open_reply_is_cancelled_with_its_partial_text() {
    ConvTest::with(reply_stored())
        .given(vec![started(), posted(), reply_started()])
        .when_async(cancel(reply()))
        .await
        .then_expect_events(vec![cancelled()]);
}

#[tokio::test]
async fn an_open_reply_finishes_in_an_archived_conversation() {
    ConvTest::with(reply_stored())
        .given(vec![started(), posted(), reply_started(), archived()])
        .when_async(complete(reply()))
        .await
        .then_expect_events(vec![completed()]);
}

#[tokio::test]
async fn finishing_a_reply_never_started_is_rejected() {
    for cmd in [complete(reply()), fail(reply()), cancel(reply())] {
        expect_err(posted_only(), vec![started(), posted()], cmd, ConversationError::ReplyNotOpen).await;
    }
}

#[tokio::test]
async fn finishing_a_finished_reply_is_rejected() {
    for finished in [completed(), failed(), cancelled()] {
        for cmd in [complete(reply()), fail(reply()), cancel(reply())] {
            let given = vec![started(), posted(), reply_started(), finished.clone()];
            expect_err(reply_stored(), given, cmd, ConversationError::ReplyNotOpen).await;
        }
    }
}

#[tokio::test]
async fn finishing_another_reply_than_the_open_one_is_rejected() {
    let given = vec![started(), posted(), reply_started()];
    expect_err(reply_stored(), given, complete(Uuid::from_u128(78)), ConversationError::ReplyNotOpen).await;
}

// Deletion is terminal: nothing more is recorded, not even an open reply's end.
#[tokio::test]
async fn finishing_a_reply_of_a_deleted_conversation_is_rejected() {
    for cmd in [complete(reply()), fail(reply()), cancel(reply())] {
        let given = vec![started(), posted(), reply_started(), deleted()];
        expect_err(reply_stored(), given, cmd, ConversationError::Deleted).await;
    }
}

#[tokio::test]
async fn finishing_a_reply_of_an_unstarted_conversation_is_not_found() {
    expect_err(posted_only(), vec![], cancel(reply()), ConversationError::NotFound).await;
}

// State.

#[test]
fn the_state_keeps_the_settings_and_only_the_replies_in_flight() {
    let mut conv = Conversation::default();
    for e in [started(), posted(), reply_started()] {
        conv.apply(e);
    }
    assert_eq!(conv.model, "gpt-4o-mini");
    assert_eq!(conv.system_prompt.as_deref(), Some("Be brief."));
    assert_eq!(conv.open_replies, [reply()]);
    conv.apply(completed());
    assert!(conv.open_replies.is_empty());
    assert_eq!(conv.message_count, 1, "replies are not counted as posted messages");
}

#[test]
fn a_snapshot_from_before_replies_still_loads() {
    let old = serde_json::json!({
        "id": CONV, "owner_id": OWNER, "title": "Trip", "status": "Active", "message_count": 4
    });
    let conv: Conversation = serde_json::from_value(old).unwrap();
    assert_eq!((conv.model.as_str(), conv.system_prompt, conv.open_replies), ("", None, vec![]));
    assert_eq!(conv.message_count, 4);
}

proptest! {
    /// Whatever order the worker's commands arrive in, and however often each is repeated,
    /// every message gets at most one reply start and one end, and the aggregate keeps
    /// exactly the replies in flight.
    #[test]
    fn the_open_replies_are_those_started_and_not_finished(
        ops in proptest::collection::vec((0u8..4, 0u128..4), 0..40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let messages: Vec<Uuid> = (0..4).map(|i| Uuid::from_u128(100 + i)).collect();
            let mut store = Known { messages: messages.iter().copied().collect(), replies: HashSet::new() };
            let mut conv = Conversation::default();
            conv.apply(started());
            let (mut starts, mut ends) = (Vec::new(), Vec::new());
            for (op, which) in ops {
                let message = messages[which as usize];
                let reply_id = reply_id_for(message);
                let cmd = match op {
                    0 => start_reply(reply_id, message, "m"),
                    1 => complete(reply_id),
                    2 => fail(reply_id),
                    _ => cancel(reply_id),
                };
                let services = ConversationServices::new(Arc::new(store.clone()));
                let sink = EventSink::default();
                if conv.handle(cmd, &services, &sink).await.is_ok() {
                    // `handle` applied the event through the sink.
                    match op {
                        0 => {
                            store.replies.insert(reply_id);
                            starts.push(reply_id);
                        }
                        _ => ends.push(reply_id),
                    }
                }
            }
            let mut unique = starts.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), starts.len(), "a reply started twice");
            let mut ended = ends.clone();
            ended.sort();
            ended.dedup();
            assert_eq!(ended.len(), ends.len(), "a reply finished twice");
            let open: HashSet<Uuid> = starts.iter().filter(|r| !ends.contains(r)).copied().collect();
            assert_eq!(conv.open_replies.iter().copied().collect::<HashSet<_>>(), open);
            assert_eq!(conv.open_replies.len(), open.len());
        });
    }
}

#[test]
fn a_reply_started_recorded_before_citations_existed_reads_with_none() {
    let mut payload = serde_json::to_value(match reply_started() {
        ConversationEvent::ReplyStarted(e) => e,
        _ => unreachable!(),
    })
    .unwrap();
    payload.as_object_mut().unwrap().remove("citations");
    let old: ReplyStarted = serde_json::from_value(payload).unwrap();
    assert!(old.citations.is_empty());
}
