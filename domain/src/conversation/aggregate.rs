use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::*;
use crate::decision::Refusal;
use crate::registry::Registered;
use crate::values::{self, MODEL_NAME_MAX, SYSTEM_PROMPT_MAX, TITLE_MAX};

/// Events between Conversation snapshots. The aggregate is small and of constant size, so
/// frequent snapshots are cheap and keep the tail of events to replay short.
pub const SNAPSHOT_EVERY: usize = 20;

/// Lifecycle state of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ConversationStatus {
    /// Not started.
    #[default]
    New,
    /// Open for messages.
    Active,
    /// Archived: readable, rejects new messages.
    Archived,
    /// Deleted; terminal.
    Deleted,
}

/// A conversation. Holds only what its decisions need, and nothing that grows with the
/// conversation (message ids are looked up through [`MessageLookup`]), so loading a
/// conversation of thousands of messages costs what loading a new one does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// The id, once started.
    pub id: Option<Uuid>,
    /// The owner, once started.
    pub owner_id: Option<Uuid>,
    /// The title.
    pub title: String,
    /// Lifecycle state.
    pub status: ConversationStatus,
    /// Messages posted so far.
    pub message_count: u64,
}

impl Conversation {
    /// Checks the conversation exists, is not deleted, and `actor` owns it.
    fn ensure_owned_by(&self, actor: Uuid) -> Result<(), ConversationError> {
        match (self.status, self.owner_id) {
            (ConversationStatus::New, _) => Err(ConversationError::NotFound),
            (_, Some(owner)) if owner != actor => Err(ConversationError::NotFound),
            (ConversationStatus::Deleted, _) => Err(ConversationError::Deleted),
            _ => Ok(()),
        }
    }
}

fn title(raw: &str) -> Result<String, ConversationError> {
    values::title(raw).ok_or(ConversationError::InvalidTitle { max: TITLE_MAX })
}

impl Registered for Conversation {
    const SNAPSHOT_EVERY: Option<usize> = Some(SNAPSHOT_EVERY);
}

impl Aggregate for Conversation {
    const TYPE: &'static str = "Conversation";
    type Command = ConversationCommand;
    type Event = ConversationEvent;
    type Error = Refusal<ConversationError>;
    type Services = ConversationServices;

    async fn handle(
        &mut self,
        command: ConversationCommand,
        services: &ConversationServices,
        sink: &EventSink<Self>,
    ) -> Result<(), Refusal<ConversationError>> {
        use ConversationCommand as C;
        use ConversationEvent as E;
        let event = match command {
            C::StartConversation { conversation_id, owner_id, title: t, kind, model, system_prompt } => {
                if self.status != ConversationStatus::New {
                    return Err(ConversationError::AlreadyStarted.into());
                }
                E::ConversationStarted(ConversationStarted {
                    conversation_id,
                    owner_id,
                    title: title(&t)?,
                    kind,
                    model: values::model_name(&model).ok_or(ConversationError::InvalidModel { max: MODEL_NAME_MAX })?,
                    system_prompt: system_prompt
                        .map(|p| {
                            values::system_prompt(&p)
                                .ok_or(ConversationError::InvalidSystemPrompt { max: SYSTEM_PROMPT_MAX })
                        })
                        .transpose()?,
                })
            }
            C::RenameConversation { actor_id, title: t } => {
                self.ensure_owned_by(actor_id)?;
                E::ConversationRenamed(ConversationRenamed { title: title(&t)? })
            }
            C::ArchiveConversation { actor_id } => {
                self.ensure_owned_by(actor_id)?;
                if self.status == ConversationStatus::Archived {
                    return Err(ConversationError::AlreadyArchived.into());
                }
                E::ConversationArchived(ConversationArchived {})
            }
            C::UnarchiveConversation { actor_id } => {
                self.ensure_owned_by(actor_id)?;
                if self.status != ConversationStatus::Archived {
                    return Err(ConversationError::NotArchived.into());
                }
                E::ConversationUnarchived(ConversationUnarchived {})
            }
            C::DeleteConversation { actor_id } => {
                self.ensure_owned_by(actor_id)?;
                E::ConversationDeleted(ConversationDeleted {})
            }
            C::PostUserMessage { actor_id, message_id, content } => {
                self.ensure_owned_by(actor_id)?;
                if self.status == ConversationStatus::Archived {
                    return Err(ConversationError::Archived.into());
                }
                // Message text keeps its inner whitespace; only emptiness and length are checked.
                let count = content.chars().count();
                if content.trim().is_empty() || count > MESSAGE_MAX {
                    return Err(ConversationError::InvalidMessage { max: MESSAGE_MAX }.into());
                }
                let id = self.id.ok_or(ConversationError::NotFound)?;
                if services.messages.message_exists(id, message_id).await.map_err(Refusal::PortFailed)? {
                    return Err(ConversationError::DuplicateMessage.into());
                }
                E::UserMessagePosted(UserMessagePosted { message_id, author_id: actor_id, content })
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: ConversationEvent) {
        use ConversationEvent as E;
        match event {
            E::ConversationStarted(e) => {
                self.id = Some(e.conversation_id);
                self.owner_id = Some(e.owner_id);
                self.title = e.title;
                self.status = ConversationStatus::Active;
            }
            E::ConversationRenamed(e) => self.title = e.title,
            E::ConversationArchived(_) => self.status = ConversationStatus::Archived,
            E::ConversationUnarchived(_) => self.status = ConversationStatus::Active,
            E::ConversationDeleted(_) => self.status = ConversationStatus::Deleted,
            E::UserMessagePosted(_) => self.message_count += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use cqrs_es::test::TestFramework;
    use proptest::prelude::*;

    use super::*;
    use crate::decision::PortError;

    type ConvTest = TestFramework<Conversation>;

    /// The port, answered from a set (the event store answers in production).
    #[derive(Default)]
    struct KnownMessages(Mutex<HashSet<(Uuid, Uuid)>>);

    #[async_trait]
    impl MessageLookup for KnownMessages {
        async fn message_exists(&self, conversation_id: Uuid, message_id: Uuid) -> Result<bool, PortError> {
            Ok(self.0.lock().unwrap().contains(&(conversation_id, message_id)))
        }
    }

    struct Unreachable;

    #[async_trait]
    impl MessageLookup for Unreachable {
        async fn message_exists(&self, _: Uuid, _: Uuid) -> Result<bool, PortError> {
            Err(PortError::new("message lookup", "event store unreachable"))
        }
    }

    fn services() -> ConversationServices {
        ConversationServices::new(Arc::new(KnownMessages::default()))
    }

    /// Services that know `MSG` is already in the conversation.
    fn services_knowing_msg() -> ConversationServices {
        let known = KnownMessages::default();
        known.0.lock().unwrap().insert((CONV, MSG));
        ConversationServices::new(Arc::new(known))
    }

    const OWNER: Uuid = Uuid::from_u128(1);
    const STRANGER: Uuid = Uuid::from_u128(2);
    const MSG: Uuid = Uuid::from_u128(3);
    const CONV: Uuid = Uuid::from_u128(9);

    fn started() -> ConversationEvent {
        ConversationEvent::ConversationStarted(ConversationStarted {
            conversation_id: CONV,
            owner_id: OWNER,
            title: "Trip".into(),
            kind: ConversationKind::Chat,
            model: "offline".into(),
            system_prompt: None,
        })
    }

    fn start(title: &str, model: &str, prompt: Option<&str>) -> ConversationCommand {
        ConversationCommand::StartConversation {
            conversation_id: CONV,
            owner_id: OWNER,
            title: title.into(),
            kind: ConversationKind::Chat,
            model: model.into(),
            system_prompt: prompt.map(Into::into),
        }
    }

    fn post(actor: Uuid, content: &str) -> ConversationCommand {
        ConversationCommand::PostUserMessage { actor_id: actor, message_id: MSG, content: content.into() }
    }

    fn posted() -> ConversationEvent {
        ConversationEvent::UserMessagePosted(UserMessagePosted {
            message_id: MSG,
            author_id: OWNER,
            content: "hi".into(),
        })
    }

    async fn expect_err(given: Vec<ConversationEvent>, cmd: ConversationCommand, err: ConversationError) {
        ConvTest::with(services()).given(given).when_async(cmd).await.then_expect_error(Refusal::Rejected(err));
    }

    #[tokio::test]
    async fn start_emits_started() {
        ConvTest::with(services())
            .given_no_previous_events()
            .when_async(start(" Trip ", "offline", None))
            .await
            .then_expect_events(vec![started()]);
    }

    #[tokio::test]
    async fn start_rejections() {
        expect_err(vec![started()], start("Trip", "offline", None), ConversationError::AlreadyStarted).await;
        expect_err(vec![], start("", "offline", None), ConversationError::InvalidTitle { max: TITLE_MAX }).await;
        expect_err(
            vec![],
            start(&"t".repeat(TITLE_MAX + 1), "offline", None),
            ConversationError::InvalidTitle { max: TITLE_MAX },
        )
        .await;
        expect_err(vec![], start("Trip", " ", None), ConversationError::InvalidModel { max: MODEL_NAME_MAX }).await;
        expect_err(
            vec![],
            start("Trip", "offline", Some("")),
            ConversationError::InvalidSystemPrompt { max: SYSTEM_PROMPT_MAX },
        )
        .await;
    }

    #[tokio::test]
    async fn rename() {
        ConvTest::with(services())
            .given(vec![started()])
            .when_async(ConversationCommand::RenameConversation { actor_id: OWNER, title: "Plans".into() })
            .await
            .then_expect_events(vec![ConversationEvent::ConversationRenamed(ConversationRenamed {
                title: "Plans".into(),
            })]);
        expect_err(
            vec![started()],
            ConversationCommand::RenameConversation { actor_id: OWNER, title: "".into() },
            ConversationError::InvalidTitle { max: TITLE_MAX },
        )
        .await;
        expect_err(
            vec![started()],
            ConversationCommand::RenameConversation { actor_id: STRANGER, title: "x".into() },
            ConversationError::NotFound,
        )
        .await;
        expect_err(
            vec![],
            ConversationCommand::RenameConversation { actor_id: OWNER, title: "x".into() },
            ConversationError::NotFound,
        )
        .await;
    }

    #[tokio::test]
    async fn archive_and_unarchive() {
        let archived = ConversationEvent::ConversationArchived(ConversationArchived {});
        ConvTest::with(services())
            .given(vec![started()])
            .when_async(ConversationCommand::ArchiveConversation { actor_id: OWNER })
            .await
            .then_expect_events(vec![archived.clone()]);
        expect_err(
            vec![started(), archived.clone()],
            ConversationCommand::ArchiveConversation { actor_id: OWNER },
            ConversationError::AlreadyArchived,
        )
        .await;
        ConvTest::with(services())
            .given(vec![started(), archived.clone()])
            .when_async(ConversationCommand::UnarchiveConversation { actor_id: OWNER })
            .await
            .then_expect_events(vec![ConversationEvent::ConversationUnarchived(ConversationUnarchived {})]);
        expect_err(
            vec![started()],
            ConversationCommand::UnarchiveConversation { actor_id: OWNER },
            ConversationError::NotArchived,
        )
        .await;
        expect_err(
            vec![started()],
            ConversationCommand::ArchiveConversation { actor_id: STRANGER },
            ConversationError::NotFound,
        )
        .await;
    }

    #[tokio::test]
    async fn delete_is_terminal() {
        let deleted = ConversationEvent::ConversationDeleted(ConversationDeleted {});
        ConvTest::with(services())
            .given(vec![started()])
            .when_async(ConversationCommand::DeleteConversation { actor_id: OWNER })
            .await
            .then_expect_events(vec![deleted.clone()]);
        expect_err(
            vec![started(), deleted.clone()],
            ConversationCommand::DeleteConversation { actor_id: OWNER },
            ConversationError::Deleted,
        )
        .await;
        expect_err(vec![started(), deleted.clone()], post(OWNER, "hi"), ConversationError::Deleted).await;
        expect_err(
            vec![started(), deleted.clone()],
            ConversationCommand::UnarchiveConversation { actor_id: OWNER },
            ConversationError::Deleted,
        )
        .await;
        expect_err(
            vec![started()],
            ConversationCommand::DeleteConversation { actor_id: STRANGER },
            ConversationError::NotFound,
        )
        .await;
        // A stranger learns nothing, not even that it was deleted.
        expect_err(vec![started(), deleted], post(STRANGER, "hi"), ConversationError::NotFound).await;
    }

    #[tokio::test]
    async fn post_user_message() {
        ConvTest::with(services())
            .given(vec![started()])
            .when_async(post(OWNER, "hi"))
            .await
            .then_expect_events(vec![posted()]);
        ConvTest::with(services_knowing_msg())
            .given(vec![started(), posted()])
            .when_async(post(OWNER, "again"))
            .await
            .then_expect_error(Refusal::Rejected(ConversationError::DuplicateMessage));
        ConvTest::with(ConversationServices::new(Arc::new(Unreachable)))
            .given(vec![started()])
            .when_async(post(OWNER, "hi"))
            .await
            .then_expect_error(Refusal::PortFailed(PortError::new("message lookup", "event store unreachable")));
        expect_err(
            vec![started(), ConversationEvent::ConversationArchived(ConversationArchived {})],
            post(OWNER, "hi"),
            ConversationError::Archived,
        )
        .await;
        expect_err(vec![started()], post(OWNER, "  \n "), ConversationError::InvalidMessage { max: MESSAGE_MAX }).await;
        expect_err(
            vec![started()],
            post(OWNER, &"x".repeat(MESSAGE_MAX + 1)),
            ConversationError::InvalidMessage { max: MESSAGE_MAX },
        )
        .await;
        expect_err(vec![started()], post(STRANGER, "hi"), ConversationError::NotFound).await;
        expect_err(vec![], post(OWNER, "hi"), ConversationError::NotFound).await;
    }

    proptest! {
        /// Whatever sequence of commands the owner sends, a stranger is never let in and
        /// the state only ever holds accepted message ids.
        #[test]
        fn strangers_never_get_in(ops in proptest::collection::vec(0u8..6, 0..20)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut conv = Conversation::default();
                let mut accepted = 0u64;
                let sink = EventSink::default();
                let services = services();
                conv.handle(start("t", "m", None), &services, &sink).await.unwrap();
                for (i, op) in ops.iter().enumerate() {
                    let cmd = match op {
                        0 => ConversationCommand::ArchiveConversation { actor_id: OWNER },
                        1 => ConversationCommand::UnarchiveConversation { actor_id: OWNER },
                        2 => ConversationCommand::DeleteConversation { actor_id: OWNER },
                        _ => ConversationCommand::PostUserMessage { actor_id: OWNER, message_id: Uuid::from_u128(100 + i as u128), content: "m".into() },
                    };
                    let is_post = *op >= 3;
                    if conv.handle(cmd, &services, &sink).await.is_ok() && is_post {
                        accepted += 1;
                    }
                    let stranger = conv.clone().handle(post(STRANGER, "x"), &services, &EventSink::default()).await;
                    assert_eq!(stranger, Err(Refusal::Rejected(ConversationError::NotFound)));
                }
                assert_eq!(conv.message_count, accepted);
            });
        }
    }
}
