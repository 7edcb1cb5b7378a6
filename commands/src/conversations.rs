//! Conversation use cases: start, rename, archive, unarchive, delete, post a message.
//!
//! Each reserves what its command will store against the caller's quotas (see
//! [`crate::quotas`]) in the statement that appends its events, so only commands whose
//! events commit count.

use colloquy_domain::conversation::{
    reply_id_for, ConversationCommand, ConversationError, ConversationKind, NewMessageId,
};
use colloquy_domain::values;
use colloquy_infra::event_append::AppendGuard;
use colloquy_infra::event_store;
use serde::{Deserialize, Serialize};
use tracing::instrument;
use uuid::Uuid;

use crate::caller::Caller;
use crate::command_service::{CommandError, Committed};
use crate::errors::{Failure, UseCaseError};
use crate::idempotency::Answer;
use crate::quotas::{Charge, Quota, QuotaGuard};
use crate::Commands;

/// A new conversation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StartConversation {
    /// Client-chosen id (makes retries safe without an Idempotency-Key).
    pub id: Option<Uuid>,
    /// The title; `None`: the assistant names the conversation after its first exchange.
    pub title: Option<String>,
    /// The type (default: chat).
    pub kind: Option<ConversationKind>,
    /// The model (default: the user's default model).
    pub model: Option<String>,
    /// The system prompt (default: the user's default system prompt).
    pub system_prompt: Option<String>,
}

/// A new message.
#[derive(Debug, Clone, Serialize)]
pub struct PostMessage {
    /// Client-chosen id (optional).
    pub id: Option<Uuid>,
    /// The text.
    pub content: String,
    /// The model to answer with (default: the conversation's).
    pub model: Option<String>,
}

/// What `PATCH /conversations/{id}` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConversationChanges {
    /// A new title.
    pub title: Option<String>,
    /// Grounding in the owner's knowledge base on or off.
    pub grounded: Option<bool>,
}

/// A command on a conversation was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationAccepted {
    /// The conversation.
    pub conversation_id: Uuid,
    /// Its version after the command; pass it as `min_version` to queries.
    pub version: i64,
}

/// A message was posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageAccepted {
    /// The conversation.
    pub conversation_id: Uuid,
    /// The new message.
    pub message_id: Uuid,
    /// The assistant's reply to it, once the assistant worker takes it: stream it from
    /// `GET /api/v1/conversations/{conversation_id}/replies/{reply_id}/stream`.
    pub reply_id: Uuid,
    /// The conversation's version after the post.
    pub version: i64,
}

/// The commands on an existing conversation that carry nothing but the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Hide from the default list; rejects new messages until unarchived.
    Archive,
    /// Undo an archive.
    Unarchive,
    /// Delete; terminal.
    Delete,
}

pub(crate) type Outcome<T> = Result<Answer<T>, UseCaseError<ConversationError>>;

impl Commands {
    /// Starts a conversation owned by the caller. Model and system prompt default to the
    /// owner's preferences, read from the User aggregate (the write model, so a preference
    /// changed a moment ago applies).
    #[instrument(skip_all, fields(user_id = %caller.user))]
    pub async fn start_conversation(&self, caller: &Caller, input: StartConversation) -> Outcome<ConversationAccepted> {
        if let Some(model) = input.model.as_deref() {
            self.models.check(model)?;
        }
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "start_conversation", &input, || async {
                let (owner, _) = self
                    .users
                    .current_state(&caller.user.to_string())
                    .await
                    .map_err(|e| UseCaseError::from_command(e.map_rejection(|_| ConversationError::NotFound)))?;
                let id = input.id.unwrap_or_else(Uuid::new_v4);
                let system_prompt = input.system_prompt.clone().or(owner.system_prompt);
                let bytes = input.title.as_deref().map_or(0, |t| t.trim().len())
                    + system_prompt.as_deref().map_or(0, |p| p.trim().len());
                let charges = [Charge::new(Quota::Conversations, 1), Charge::new(Quota::StoredBytes, bytes)];
                let command = ConversationCommand::StartConversation {
                    conversation_id: id,
                    owner_id: caller.user,
                    title: input.title.clone(),
                    kind: input.kind.unwrap_or_default(),
                    model: input.model.clone().or(owner.default_model).unwrap_or_else(|| self.models.default.clone()),
                    system_prompt,
                };
                let kind = input.kind.unwrap_or_default();
                match self.execute_charged(caller, id, command, &charges).await {
                    Ok(committed) => Ok(ConversationAccepted { conversation_id: id, version: committed.version }),
                    Err(UseCaseError::Rejected { rejection: ConversationError::AlreadyStarted, replayed })
                        if caller.idempotency_key.is_some() =>
                    {
                        // A retry under its Idempotency-Key of a start that committed while
                        // its answer was lost (the connection dropped during the commit, the
                        // key's record with it) is answered like the first attempt; any other
                        // start of this id is refused.
                        let started = event_store::conversation_started(&self.pool, id).await.map_err(Failure::from)?;
                        let same = started.is_some_and(|s| {
                            s.owner_id == caller.user
                                && s.kind == kind
                                && match input.title.as_deref() {
                                    Some(t) => values::title(t).ok() == Some(s.title) && !s.title_pending,
                                    None => s.title_pending,
                                }
                        });
                        if same {
                            Ok(ConversationAccepted { conversation_id: id, version: 1 })
                        } else {
                            Err(UseCaseError::Rejected { rejection: ConversationError::AlreadyStarted, replayed })
                        }
                    }
                    Err(e) => Err(e),
                }
            })
            .await
    }

    /// Renames one of the caller's conversations.
    pub async fn rename_conversation(
        &self,
        caller: &Caller,
        conversation_id: Uuid,
        title: String,
    ) -> Outcome<ConversationAccepted> {
        self.update_conversation(caller, conversation_id, ConversationChanges { title: Some(title), grounded: None })
            .await
    }

    /// Applies `PATCH /conversations/{id}`: a new title, grounding on or off, or both (the
    /// rename first, then grounding), under one Idempotency-Key. Names neither: nothing to do.
    #[instrument(skip_all, fields(user_id = %caller.user, %conversation_id))]
    pub async fn update_conversation(
        &self,
        caller: &Caller,
        conversation_id: Uuid,
        changes: ConversationChanges,
    ) -> Outcome<ConversationAccepted> {
        let request = (conversation_id, &changes);
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "update_conversation", &request, || async {
                let mut version = None;
                if let Some(title) = &changes.title {
                    let charges = [Charge::new(Quota::StoredBytes, title.trim().len())];
                    let command =
                        ConversationCommand::RenameConversation { actor_id: caller.user, title: title.clone() };
                    version = Some(self.execute_charged(caller, conversation_id, command, &charges).await?.version);
                }
                if let Some(enabled) = changes.grounded {
                    let command = ConversationCommand::SetGrounding { actor_id: caller.user, enabled };
                    version = Some(self.execute_charged(caller, conversation_id, command, &[]).await?.version);
                }
                let version = version.ok_or(UseCaseError::rejected(ConversationError::NothingToChange))?;
                Ok(ConversationAccepted { conversation_id, version })
            })
            .await
    }

    /// Archives, unarchives or deletes one of the caller's conversations.
    #[instrument(skip_all, fields(user_id = %caller.user, %conversation_id, ?change))]
    pub async fn change_lifecycle(
        &self,
        caller: &Caller,
        conversation_id: Uuid,
        change: Lifecycle,
    ) -> Outcome<ConversationAccepted> {
        let actor_id = caller.user;
        let command = match change {
            Lifecycle::Archive => ConversationCommand::ArchiveConversation { actor_id },
            Lifecycle::Unarchive => ConversationCommand::UnarchiveConversation { actor_id },
            Lifecycle::Delete => ConversationCommand::DeleteConversation { actor_id },
        };
        let request = (conversation_id, change);
        let outcome =
            self.conversation_command(caller, "change_lifecycle", &request, conversation_id, command, &[]).await;
        if let (Lifecycle::Delete, Ok(Answer { replayed: false, .. })) = (change, &outcome) {
            // A deleted conversation frees its place (its text stays stored: events are kept).
            if let Err(e) = self.quotas.give_back(caller.user, Quota::Conversations, 1).await {
                tracing::warn!(error = ?e, "Could not give back a deleted conversation's quota place.");
            }
        }
        outcome
    }

    /// Posts a message of the caller's to one of their conversations.
    #[instrument(skip_all, fields(user_id = %caller.user, %conversation_id))]
    pub async fn post_message(
        &self,
        caller: &Caller,
        conversation_id: Uuid,
        input: PostMessage,
    ) -> Outcome<MessageAccepted> {
        if let Some(model) = input.model.as_deref() {
            self.models.check(model)?;
        }
        let request = (conversation_id, &input);
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "post_message", &request, || async {
                let new_id = input.id.map_or_else(NewMessageId::mint, NewMessageId::given);
                let message_id = new_id.id();
                let charges =
                    [Charge::new(Quota::MessagesPerDay, 1), Charge::new(Quota::StoredBytes, input.content.len())];
                let command = ConversationCommand::PostUserMessage {
                    actor_id: caller.user,
                    message_id: new_id,
                    content: input.content.clone(),
                    model: input.model.clone(),
                };
                match self.execute_spending(caller, conversation_id, command, &charges).await {
                    Ok(committed) => Ok(MessageAccepted {
                        conversation_id,
                        message_id,
                        reply_id: reply_id_for(message_id),
                        version: committed.version,
                    }),
                    Err(UseCaseError::Rejected { rejection: ConversationError::DuplicateMessage, replayed })
                        if caller.idempotency_key.is_some() =>
                    {
                        // A retry under its Idempotency-Key of a post that committed while its
                        // answer was lost is answered like the first attempt (with the version
                        // it was stored at); a different message under this id is refused.
                        let stored = event_store::posted_message(&self.pool, conversation_id, message_id)
                            .await
                            .map_err(Failure::from)?;
                        match stored {
                            Some((version, posted))
                                if posted.author_id == caller.user && posted.content == input.content =>
                            {
                                Ok(MessageAccepted {
                                    conversation_id,
                                    message_id,
                                    reply_id: reply_id_for(message_id),
                                    version,
                                })
                            }
                            _ => {
                                Err(UseCaseError::Rejected { rejection: ConversationError::DuplicateMessage, replayed })
                            }
                        }
                    }
                    Err(e) => Err(e),
                }
            })
            .await
    }

    /// Runs `command` on an existing conversation once per Idempotency-Key; `request` is what
    /// identifies the request for the key.
    async fn conversation_command(
        &self,
        caller: &Caller,
        use_case: &str,
        request: &impl Serialize,
        conversation_id: Uuid,
        command: ConversationCommand,
        charges: &[Charge],
    ) -> Outcome<ConversationAccepted> {
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), use_case, request, || async {
                let committed = self.execute_charged(caller, conversation_id, command.clone(), charges).await?;
                Ok(ConversationAccepted { conversation_id, version: committed.version })
            })
            .await
    }

    /// Runs `command` with `charges` reserved against the caller's quotas in the statement
    /// that appends its events: they count only if the events commit, and a command the
    /// aggregate refuses (or that changes nothing) never reaches the counters.
    pub(crate) async fn execute_charged(
        &self,
        caller: &Caller,
        conversation_id: Uuid,
        command: ConversationCommand,
        charges: &[Charge],
    ) -> Result<Committed, UseCaseError<ConversationError>> {
        self.execute_guarded(caller, conversation_id, command, self.quotas.guard(caller.user, charges, false)).await
    }

    /// Like [`execute_charged`](Self::execute_charged), for a command that will make a model
    /// answer: refused with [`UseCaseError::TokenQuotaExceeded`], and nothing recorded,
    /// when the caller has spent the day's or the month's tokens (checked in the same
    /// statement).
    pub(crate) async fn execute_spending(
        &self,
        caller: &Caller,
        conversation_id: Uuid,
        command: ConversationCommand,
        charges: &[Charge],
    ) -> Result<Committed, UseCaseError<ConversationError>> {
        self.execute_guarded(caller, conversation_id, command, self.quotas.guard(caller.user, charges, true)).await
    }

    async fn execute_guarded(
        &self,
        caller: &Caller,
        conversation_id: Uuid,
        command: ConversationCommand,
        guard: Option<QuotaGuard>,
    ) -> Result<Committed, UseCaseError<ConversationError>> {
        let id = conversation_id.to_string();
        // The caller's turn before the aggregate's: nothing takes them the other way round.
        let _turn = match &guard {
            Some(_) => Some(self.quotas.turn(caller.user).await),
            None => None,
        };
        let outcome = self
            .conversations
            .execute_guarded(&id, command, &caller.meta, guard.as_ref().map(|g| g as &dyn AppendGuard))
            .await;
        match (outcome, &guard) {
            (Err(CommandError::Refused(reason)), Some(guard)) => Err(guard.refused(&reason).into()),
            (outcome, _) => Ok(outcome?),
        }
    }
}
