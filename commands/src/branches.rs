//! The message tree's use cases: edit a message (a sibling under the same parent),
//! regenerate a reply (another reply to the same message), switch the active branch.
//! Nothing is copied: each records one event naming where in the tree it goes.

use colloquy_domain::conversation::{reply_id_for, ConversationCommand};
use serde::{Deserialize, Serialize};
use tracing::instrument;
use uuid::Uuid;

use crate::caller::Caller;
use crate::conversations::{ConversationAccepted, MessageAccepted, Outcome};
use crate::quotas::{Charge, Quota};
use crate::Commands;

/// A new text for a user message: posted as its sibling, with a reply of its own.
#[derive(Debug, Clone, Serialize)]
pub struct EditMessage {
    /// Client-chosen id of the new message (optional).
    pub id: Option<Uuid>,
    /// The new text.
    pub content: String,
    /// The model to answer with (default: as for a posted message).
    pub model: Option<String>,
}

/// Another reply to a user message.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Regenerate {
    /// The model to answer with (default: the message's, then the conversation's, ...).
    pub model: Option<String>,
}

/// A reply was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplyRequestAccepted {
    /// The conversation.
    pub conversation_id: Uuid,
    /// The new reply: stream it from
    /// `GET /api/v1/conversations/{conversation_id}/replies/{reply_id}/stream`.
    pub reply_id: Uuid,
    /// The conversation's version after the request.
    pub version: i64,
}

impl Commands {
    /// Edits one of the caller's messages: a new user message under the edited one's parent,
    /// which becomes the active leaf and is answered like a posted message. Counts as a
    /// message against the quotas.
    #[instrument(skip_all, fields(user_id = %caller.user, %conversation_id, %message_id))]
    pub async fn edit_message(
        &self,
        caller: &Caller,
        conversation_id: Uuid,
        message_id: Uuid,
        input: EditMessage,
    ) -> Outcome<MessageAccepted> {
        if let Some(model) = input.model.as_deref() {
            self.models.check(model)?;
        }
        let request = (conversation_id, message_id, &input);
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "edit_message", &request, || async {
                let new_message_id = input.id.unwrap_or_else(Uuid::new_v4);
                let charges =
                    [Charge::new(Quota::MessagesPerDay, 1), Charge::new(Quota::StoredBytes, input.content.len())];
                let command = ConversationCommand::EditMessage {
                    actor_id: caller.user,
                    message_id,
                    new_message_id,
                    content: input.content.clone(),
                    model: input.model.clone(),
                };
                let committed = self.execute_spending(caller, conversation_id, command, &charges).await?;
                Ok(MessageAccepted {
                    conversation_id,
                    message_id: new_message_id,
                    reply_id: reply_id_for(new_message_id),
                    version: committed.version,
                })
            })
            .await
    }

    /// Asks for another reply to one of the caller's messages (named by the message or by a
    /// reply to it). The active path then ends at the message, and at the new reply once the
    /// assistant starts it. Counts as a message against the daily quota: it costs a model
    /// call like one.
    #[instrument(skip_all, fields(user_id = %caller.user, %conversation_id, %message_id))]
    pub async fn regenerate_reply(
        &self,
        caller: &Caller,
        conversation_id: Uuid,
        message_id: Uuid,
        input: Regenerate,
    ) -> Outcome<ReplyRequestAccepted> {
        if let Some(model) = input.model.as_deref() {
            self.models.check(model)?;
        }
        let request = (conversation_id, message_id, &input);
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "regenerate_reply", &request, || async {
                // Fresh per request; a retry under the Idempotency-Key gets this answer again.
                let reply_id = Uuid::new_v4();
                let command = ConversationCommand::RegenerateReply {
                    actor_id: caller.user,
                    message_id,
                    reply_id,
                    model: input.model.clone(),
                };
                let charges = [Charge::new(Quota::MessagesPerDay, 1)];
                let committed = self.execute_spending(caller, conversation_id, command, &charges).await?;
                Ok(ReplyRequestAccepted { conversation_id, reply_id, version: committed.version })
            })
            .await
    }

    /// Switches the caller's conversation to the branch through `message_id`: the active
    /// path ends at that branch's newest message. Switching to where it already is records
    /// nothing and answers the current version.
    #[instrument(skip_all, fields(user_id = %caller.user, %conversation_id, %message_id))]
    pub async fn activate_branch(
        &self,
        caller: &Caller,
        conversation_id: Uuid,
        message_id: Uuid,
    ) -> Outcome<ConversationAccepted> {
        let request = (conversation_id, message_id);
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "activate_branch", &request, || async {
                let command = ConversationCommand::ActivateBranch { actor_id: caller.user, message_id };
                let committed = self.execute_charged(caller, conversation_id, command, &[]).await?;
                Ok(ConversationAccepted { conversation_id, version: committed.version })
            })
            .await
    }
}
