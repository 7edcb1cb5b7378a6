//! Given/when/then tests of the message tree: posting follows the active leaf, editing adds
//! a sibling, regenerating asks for another reply, switching branches moves the leaf.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use cqrs_es::test::TestFramework;
use uuid::Uuid;

use super::test_support::{posted, started, CONV, OWNER, STRANGER};
use super::tree::{self, ParentLink, TreeNode};
use super::*;
use crate::decision::{PortError, Refusal};

type ConvTest = TestFramework<Conversation>;

const M1: Uuid = Uuid::from_u128(11);
const M2: Uuid = Uuid::from_u128(12);
const NEW: Uuid = Uuid::from_u128(20);
const REGENERATED: Uuid = Uuid::from_u128(30);

/// The event store as the port sees it: the tree of the given events.
#[derive(Default, Clone)]
struct Tree {
    nodes: Vec<TreeNode>,
    replies: Vec<Uuid>,
    requested: HashMap<Uuid, Uuid>,
}

impl Tree {
    fn of(events: &[ConversationEvent]) -> Self {
        let mut tree = Tree::default();
        let mut records = Vec::new();
        for (i, event) in events.iter().enumerate() {
            match event {
                ConversationEvent::UserMessagePosted(m) => {
                    records.push((m.message_id, m.parent_link("1.2"), i as i64 + 1));
                }
                ConversationEvent::ReplyStarted(r) => {
                    tree.replies.push(r.reply_id);
                    records.push((r.reply_id, ParentLink::Explicit(Some(r.in_reply_to)), i as i64 + 1));
                }
                ConversationEvent::ReplyRequested(r) => {
                    tree.requested.insert(r.reply_id, r.in_reply_to);
                }
                _ => {}
            }
        }
        tree.nodes = tree::link(records);
        tree
    }
}

#[async_trait]
impl MessageLookup for Tree {
    async fn message_exists(&self, conversation: Uuid, id: Uuid) -> Result<bool, PortError> {
        Ok(conversation == CONV && self.nodes.iter().any(|n| n.id == id))
    }

    async fn reply_exists(&self, conversation: Uuid, id: Uuid) -> Result<bool, PortError> {
        Ok(conversation == CONV && self.replies.contains(&id))
    }

    async fn node(&self, conversation: Uuid, id: Uuid) -> Result<Option<MessageNode>, PortError> {
        let node = self.nodes.iter().find(|n| conversation == CONV && n.id == id);
        Ok(node.map(|n| MessageNode { parent_id: n.parent, is_reply: self.replies.contains(&id) }))
    }

    async fn latest_leaf(&self, conversation: Uuid, from: Uuid) -> Result<Option<Uuid>, PortError> {
        Ok(if conversation == CONV { tree::latest_leaf(&self.nodes, from) } else { None })
    }

    async fn requested_reply(&self, conversation: Uuid, reply_id: Uuid) -> Result<Option<Uuid>, PortError> {
        Ok(self.requested.get(&reply_id).copied().filter(|_| conversation == CONV))
    }
}

fn reply_started(reply_id: Uuid, to: Uuid) -> ConversationEvent {
    ConversationEvent::ReplyStarted(ReplyStarted {
        reply_id,
        in_reply_to: to,
        model: "m".into(),
        provider: "p".into(),
        route: vec!["p/m".into()],
        system_prompt: None,
        context: vec![to],
        parameters: ReplyParameters::default(),
        worker: "w".into(),
        citations: vec![],
    })
}

fn reply_completed(reply_id: Uuid) -> ConversationEvent {
    ConversationEvent::ReplyCompleted(ReplyCompleted {
        reply_id,
        provider: "p".into(),
        model: "m".into(),
        content: "answer".into(),
        usage: TokenUsage::default(),
        latency_ms: 1,
        time_to_first_token_ms: 1,
        finish_reason: "stop".into(),
        attempts: vec![],
    })
}

/// m1 → r1 → m2 → r2, all finished.
fn two_exchanges() -> Vec<ConversationEvent> {
    vec![
        started(),
        posted(M1, None, None),
        reply_started(reply_id_for(M1), M1),
        reply_completed(reply_id_for(M1)),
        posted(M2, Some(reply_id_for(M1)), None),
        reply_started(reply_id_for(M2), M2),
        reply_completed(reply_id_for(M2)),
    ]
}

async fn when(given: Vec<ConversationEvent>, command: ConversationCommand) -> cqrs_es::test::AggregateResultValidator<Conversation> {
    let services = ConversationServices::new(Arc::new(Tree::of(&given)));
    ConvTest::with(services).given(given).when_async(command).await
}

fn state(events: Vec<ConversationEvent>) -> Conversation {
    let mut conversation = Conversation::default();
    for event in events {
        cqrs_es::Aggregate::apply(&mut conversation, event);
    }
    conversation
}

#[tokio::test]
async fn a_posted_message_follows_the_active_leaf() {
    let post = |id| ConversationCommand::PostUserMessage { actor_id: OWNER, message_id: NewMessageId::given(id), content: "next".into(), model: None };
    let mut expected = posted(NEW, Some(reply_id_for(M2)), None);
    if let ConversationEvent::UserMessagePosted(m) = &mut expected {
        m.content = "next".into();
    }
    when(two_exchanges(), post(NEW)).await.then_expect_events(vec![expected]);
    // The first message has no parent.
    let mut first = posted(M1, None, None);
    if let ConversationEvent::UserMessagePosted(m) = &mut first {
        m.content = "next".into();
    }
    when(vec![started()], post(M1)).await.then_expect_events(vec![first]);
}

#[tokio::test]
async fn an_edit_is_a_sibling_under_the_edited_messages_parent() {
    let edit = |message_id| ConversationCommand::EditMessage {
        actor_id: OWNER,
        message_id,
        new_message_id: NEW,
        content: format!("message {}", NEW.as_u128()),
        model: None,
    };
    when(two_exchanges(), edit(M2)).await.then_expect_events(vec![posted(NEW, Some(reply_id_for(M1)), Some(M2))]);
    // Editing the first message starts a second root.
    when(two_exchanges(), edit(M1)).await.then_expect_events(vec![posted(NEW, None, Some(M1))]);
    let refused = |e: ConversationError| Refusal::Rejected(e);
    when(two_exchanges(), edit(reply_id_for(M1))).await.then_expect_error(refused(ConversationError::NotAUserMessage));
    when(two_exchanges(), edit(Uuid::from_u128(77))).await.then_expect_error(refused(ConversationError::MessageNotFound));
    let stranger = ConversationCommand::EditMessage {
        actor_id: STRANGER,
        message_id: M2,
        new_message_id: NEW,
        content: "x".into(),
        model: None,
    };
    when(two_exchanges(), stranger).await.then_expect_error(refused(ConversationError::NotFound));
    // The new id must be unused.
    let reused = ConversationCommand::EditMessage {
        actor_id: OWNER,
        message_id: M2,
        new_message_id: M1,
        content: "x".into(),
        model: None,
    };
    when(two_exchanges(), reused).await.then_expect_error(refused(ConversationError::DuplicateMessage));
}

#[tokio::test]
async fn regenerating_asks_for_another_reply_to_the_same_message() {
    let regenerate = |message_id| ConversationCommand::RegenerateReply {
        actor_id: OWNER,
        message_id,
        reply_id: REGENERATED,
        model: Some("other".into()),
    };
    let requested = ConversationEvent::ReplyRequested(ReplyRequested {
        reply_id: REGENERATED,
        in_reply_to: M1,
        model: Some("other".into()),
        requested_by: OWNER,
    });
    // Named by the user message or by a reply to it.
    when(two_exchanges(), regenerate(M1)).await.then_expect_events(vec![requested.clone()]);
    when(two_exchanges(), regenerate(reply_id_for(M1))).await.then_expect_events(vec![requested.clone()]);
    when(two_exchanges(), regenerate(Uuid::from_u128(77)))
        .await
        .then_expect_error(Refusal::Rejected(ConversationError::MessageNotFound));
    // The requested id is taken once.
    let mut given = two_exchanges();
    given.push(requested.clone());
    when(given.clone(), regenerate(M2)).await.then_expect_error(Refusal::Rejected(ConversationError::DuplicateMessage));

    // The requested reply may start (its id is not derived from the message), and becomes
    // the leaf; an id nobody requested may not.
    let start = |reply_id| ConversationCommand::StartReply {
        reply_id,
        in_reply_to: M1,
        model: "m".into(),
        provider: "p".into(),
        route: vec!["p/m".into()],
        system_prompt: None,
        context: vec![M1],
        parameters: ReplyParameters::default(),
        worker: "w".into(),
        citations: vec![],
    };
    when(given.clone(), start(REGENERATED)).await.then_expect_events(vec![reply_started(REGENERATED, M1)]);
    when(given.clone(), start(Uuid::from_u128(78)))
        .await
        .then_expect_error(Refusal::Rejected(ConversationError::ReplyIdMismatch));
    given.push(reply_started(REGENERATED, M1));
    assert_eq!(state(given).leaf, Some(REGENERATED));
}

#[tokio::test]
async fn switching_branches_moves_the_leaf_to_the_branchs_newest_message() {
    // m1 → {r1 → m2 → r2, r1'}: the regenerated r1' is the leaf.
    let mut given = two_exchanges();
    given.push(ConversationEvent::ReplyRequested(ReplyRequested {
        reply_id: REGENERATED,
        in_reply_to: M1,
        model: None,
        requested_by: OWNER,
    }));
    given.push(reply_started(REGENERATED, M1));
    assert_eq!(state(given.clone()).leaf, Some(REGENERATED));
    let activate = |message_id| ConversationCommand::ActivateBranch { actor_id: OWNER, message_id };
    let activated = |message_id, leaf_id| ConversationEvent::BranchActivated(BranchActivated { message_id, leaf_id });
    when(given.clone(), activate(reply_id_for(M1))).await.then_expect_events(vec![activated(reply_id_for(M1), reply_id_for(M2))]);
    // Already there: nothing to record.
    when(given.clone(), activate(REGENERATED)).await.then_expect_events(vec![]);
    when(given.clone(), activate(Uuid::from_u128(77)))
        .await
        .then_expect_error(Refusal::Rejected(ConversationError::MessageNotFound));
    given.push(activated(reply_id_for(M1), reply_id_for(M2)));
    assert_eq!(state(given).leaf, Some(reply_id_for(M2)));
}

#[test]
fn a_reply_that_starts_after_another_message_keeps_the_leaf_there() {
    // m1 posted, then m2 posted before r1 started: m2 is the leaf, and stays it.
    let events = vec![
        started(),
        posted(M1, None, None),
        posted(M2, Some(M1), None),
        reply_started(reply_id_for(M1), M1),
    ];
    assert_eq!(state(events).leaf, Some(M2));
}
