//! Given/when/then tests of importing: the events say what was imported, the tree must be
//! whole, and only a new conversation can be imported into.

use std::sync::Arc;

use cqrs_es::test::TestFramework;
use uuid::Uuid;

use super::test_support::{started, Unreachable, CONV, OWNER};
use super::*;
use crate::decision::Refusal;

type ConvTest = TestFramework<Conversation>;

const Q: Uuid = Uuid::from_u128(11);
const A: Uuid = Uuid::from_u128(12);
const A2: Uuid = Uuid::from_u128(13);

fn imported(message_id: Uuid, parent_id: Option<Uuid>, role: &str, content: &str) -> MessageImported {
    MessageImported {
        message_id,
        parent_id,
        role: role.into(),
        content: content.into(),
        status: "completed".into(),
        model: None,
        provider: None,
        usage: None,
        citations: vec![],
        written_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
    }
}

fn source(messages: u32) -> ConversationImported {
    ConversationImported {
        source_conversation_id: Uuid::from_u128(77),
        format: "colloquy.conversation".into(),
        format_version: 1,
        messages,
    }
}

fn import(messages: Vec<MessageImported>, leaf_id: Option<Uuid>, grounded: bool) -> ConversationCommand {
    ConversationCommand::ImportConversation {
        conversation_id: CONV,
        owner_id: OWNER,
        title: "t".into(),
        kind: ConversationKind::Chat,
        model: "m".into(),
        system_prompt: None,
        grounded,
        source: source(messages.len() as u32),
        messages,
        leaf_id,
    }
}

fn test() -> ConvTest {
    ConvTest::with(ConversationServices::new(Arc::new(Unreachable)))
}

fn tree() -> Vec<MessageImported> {
    vec![imported(Q, None, "user", "Q"), imported(A, Some(Q), "assistant", "A"), imported(A2, Some(Q), "assistant", "A2")]
}

#[tokio::test]
async fn an_import_records_the_start_the_source_each_message_and_the_leaf() {
    let mut expected = vec![started(), ConversationEvent::ConversationImported(source(3))];
    expected.extend(tree().into_iter().map(ConversationEvent::MessageImported));
    expected.push(ConversationEvent::BranchActivated(BranchActivated { message_id: A, leaf_id: A }));
    test().given_no_previous_events().when_async(import(tree(), Some(A), false)).await.then_expect_events(expected);
    // The last message as leaf needs no switch; grounding differing from the kind's is kept.
    let mut expected = vec![
        started(),
        ConversationEvent::GroundingChanged(GroundingChanged { enabled: true }),
        ConversationEvent::ConversationImported(source(3)),
    ];
    expected.extend(tree().into_iter().map(ConversationEvent::MessageImported));
    test().given_no_previous_events().when_async(import(tree(), Some(A2), true)).await.then_expect_events(expected);
}

#[tokio::test]
async fn a_broken_tree_or_an_existing_conversation_is_refused() {
    let refused = |e: Refusal<ConversationError>| matches!(e, Refusal::Rejected(ConversationError::InvalidImport { .. }));
    let cases = [
        (vec![imported(A, Some(Q), "assistant", "A")], None),
        (vec![imported(Q, None, "user", "Q"), imported(Q, None, "user", "again")], None),
        (vec![imported(Q, None, "system", "Q")], None),
        (tree(), Some(Uuid::from_u128(99))),
    ];
    for (messages, leaf) in cases {
        let mut conversation = Conversation::default();
        let services = ConversationServices::new(Arc::new(Unreachable));
        let sink = cqrs_es::event_sink::EventSink::default();
        let outcome = cqrs_es::Aggregate::handle(&mut conversation, import(messages, leaf, false), &services, &sink).await;
        assert!(outcome.is_err_and(refused));
    }
    test()
        .given_no_previous_events()
        .when_async(import(vec![imported(Q, None, "user", "  ")], None, false))
        .await
        .then_expect_error(Refusal::Rejected(ConversationError::InvalidMessage { max: MESSAGE_MAX }));
    test()
        .given(vec![started()])
        .when_async(import(tree(), None, false))
        .await
        .then_expect_error(Refusal::Rejected(ConversationError::AlreadyStarted));
}

// Conversations started through the OpenAI-compatible API.

const LAST: Uuid = Uuid::from_u128(14);

fn opened(earlier: u32) -> ConversationOpenedFromApi {
    ConversationOpenedFromApi {
        api_key_id: Some(Uuid::from_u128(5)),
        endpoint: "chat.completions".into(),
        parameters: ReplyParameters { max_tokens: Some(40), temperature: Some(0.5), top_p: None },
        earlier_messages: earlier,
    }
}

fn from_api(history: Vec<MessageImported>, content: &str) -> ConversationCommand {
    ConversationCommand::StartApiConversation {
        conversation_id: CONV,
        owner_id: OWNER,
        title: "t".into(),
        model: "m".into(),
        system_prompt: None,
        request: opened(history.len() as u32),
        history,
        message_id: LAST,
        content: content.into(),
    }
}

fn chain() -> Vec<MessageImported> {
    vec![imported(Q, None, "user", "Q"), imported(A, Some(Q), "assistant", "A")]
}

#[tokio::test]
async fn an_api_request_records_its_turns_and_posts_its_last_message_after_them() {
    let mut expected = vec![started(), ConversationEvent::ConversationOpenedFromApi(opened(2))];
    expected.extend(chain().into_iter().map(ConversationEvent::MessageImported));
    expected.push(ConversationEvent::UserMessagePosted(UserMessagePosted {
        message_id: LAST,
        author_id: OWNER,
        content: "And now?".into(),
        model: Some("m".into()),
        parent_id: Some(A),
        edit_of: None,
    }));
    test().given_no_previous_events().when_async(from_api(chain(), "And now?")).await.then_expect_events(expected);
}

#[test]
fn an_api_conversation_keeps_its_parameters_and_its_leaf_is_the_posted_message() {
    let mut conversation = Conversation::default();
    let mut events = vec![started(), ConversationEvent::ConversationOpenedFromApi(opened(0))];
    events.push(ConversationEvent::UserMessagePosted(UserMessagePosted {
        message_id: LAST,
        author_id: OWNER,
        content: "Hi".into(),
        model: Some("m".into()),
        parent_id: None,
        edit_of: None,
    }));
    for e in events {
        cqrs_es::Aggregate::apply(&mut conversation, e);
    }
    assert_eq!(conversation.api_parameters, Some(opened(0).parameters));
    assert_eq!(conversation.leaf, Some(LAST));
    assert!(!conversation.title_pending, "the assistant is not asked to name an API conversation");
}

#[tokio::test]
async fn an_api_request_whose_turns_do_not_chain_or_whose_last_message_is_blank_is_refused() {
    let refused = |e: Refusal<ConversationError>| matches!(e, Refusal::Rejected(ConversationError::InvalidImport { .. }));
    // A branch (two answers to one question) is no chat history.
    let branched = vec![imported(Q, None, "user", "Q"), imported(A, Some(Q), "assistant", "A"), imported(A2, Some(Q), "assistant", "B")];
    let mut conversation = Conversation::default();
    let services = ConversationServices::new(Arc::new(Unreachable));
    let sink = cqrs_es::event_sink::EventSink::default();
    let outcome = cqrs_es::Aggregate::handle(&mut conversation, from_api(branched, "x"), &services, &sink).await;
    assert!(outcome.is_err_and(refused));
    test()
        .given_no_previous_events()
        .when_async(from_api(chain(), " \n "))
        .await
        .then_expect_error(Refusal::Rejected(ConversationError::InvalidMessage { max: MESSAGE_MAX }));
    test()
        .given(vec![started()])
        .when_async(from_api(vec![], "Hi"))
        .await
        .then_expect_error(Refusal::Rejected(ConversationError::AlreadyStarted));
}
