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
