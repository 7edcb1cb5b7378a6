//! Reply use cases of the assistant worker: it records a reply's start and its end
//! (completed, failed, cancelled) as a system actor, on behalf of the conversation's owner.
//! Each takes the event's payload as the worker assembled it; the Conversation aggregate
//! decides whether it may happen (the reply answers a message of the conversation, is not
//! started twice, ends once).

use colloquy_domain::conversation::{
    ConversationCommand, ConversationError, ReplyCancelled, ReplyCompleted, ReplyFailed, ReplyStarted, TokenUsage,
};
use colloquy_domain::{Conversation, User};
use tracing::instrument;
use uuid::Uuid;

use crate::caller::Caller;
use crate::command_service::{CommandError, Committed};
use crate::Commands;

type Recorded = Result<Committed, CommandError<ConversationError>>;

impl Commands {
    /// Records that the assistant started answering (the prompt's inputs included).
    #[instrument(skip_all, fields(%conversation_id, reply_id = %r.reply_id))]
    pub async fn start_reply(&self, caller: &Caller, conversation_id: Uuid, r: ReplyStarted) -> Recorded {
        let command = ConversationCommand::StartReply {
            reply_id: r.reply_id,
            in_reply_to: r.in_reply_to,
            model: r.model,
            provider: r.provider,
            route: r.route,
            system_prompt: r.system_prompt,
            context: r.context,
            parameters: r.parameters,
            worker: r.worker,
            citations: r.citations,
        };
        self.conversations.execute(&conversation_id.to_string(), command, &caller.meta).await
    }

    /// Whether `user` has spent the day's or the month's tokens (see
    /// [`Quotas::tokens_exhausted`](crate::quotas::Quotas::tokens_exhausted)): the assistant
    /// asks before every provider call.
    pub async fn tokens_exhausted(&self, user: Uuid) -> Result<Option<crate::quotas::TokenQuotaExceeded>, sqlx::Error> {
        self.quotas.tokens_exhausted(user).await
    }

    /// Records the title the assistant wrote for a conversation started without one (no
    /// event once its owner has renamed it).
    #[instrument(skip_all, fields(%conversation_id))]
    pub async fn generate_title(
        &self,
        caller: &Caller,
        conversation_id: Uuid,
        title: String,
        provider: String,
        model: String,
        usage: TokenUsage,
    ) -> Recorded {
        let command = ConversationCommand::GenerateTitle { title, provider, model, usage };
        self.conversations.execute(&conversation_id.to_string(), command, &caller.meta).await
    }

    /// Records a reply's complete answer.
    #[instrument(skip_all, fields(%conversation_id, reply_id = %r.reply_id))]
    pub async fn complete_reply(&self, caller: &Caller, conversation_id: Uuid, r: ReplyCompleted) -> Recorded {
        let command = ConversationCommand::CompleteReply {
            reply_id: r.reply_id,
            provider: r.provider,
            model: r.model,
            content: r.content,
            usage: r.usage,
            latency_ms: r.latency_ms,
            time_to_first_token_ms: r.time_to_first_token_ms,
            finish_reason: r.finish_reason,
            attempts: r.attempts,
        };
        self.conversations.execute(&conversation_id.to_string(), command, &caller.meta).await
    }

    /// Records that a reply failed, with what it said before.
    #[instrument(skip_all, fields(%conversation_id, reply_id = %r.reply_id))]
    pub async fn fail_reply(&self, caller: &Caller, conversation_id: Uuid, r: ReplyFailed) -> Recorded {
        let command = ConversationCommand::FailReply {
            reply_id: r.reply_id,
            reason: r.reason,
            attempts: r.attempts,
            partial_content: r.partial_content,
            provider: r.provider,
            model: r.model,
            usage: r.usage,
        };
        self.conversations.execute(&conversation_id.to_string(), command, &caller.meta).await
    }

    /// Records that the owner cancelled a reply, with what it said before.
    #[instrument(skip_all, fields(%conversation_id, reply_id = %r.reply_id))]
    pub async fn cancel_reply(&self, caller: &Caller, conversation_id: Uuid, r: ReplyCancelled) -> Recorded {
        let command = ConversationCommand::CancelReply {
            reply_id: r.reply_id,
            cancelled_by: r.cancelled_by,
            partial_content: r.partial_content,
            usage: r.usage,
            attempts: r.attempts,
            provider: r.provider,
            model: r.model,
        };
        self.conversations.execute(&conversation_id.to_string(), command, &caller.meta).await
    }

    /// A conversation's current state, from the write model (snapshot and later events).
    pub async fn conversation_state(
        &self,
        conversation_id: Uuid,
    ) -> Result<(Conversation, i64), CommandError<ConversationError>> {
        self.conversations.current_state(&conversation_id.to_string()).await
    }

    /// A user's current state, from the write model.
    pub async fn user_state(
        &self,
        user_id: Uuid,
    ) -> Result<(User, i64), CommandError<colloquy_domain::user::UserError>> {
        self.users.current_state(&user_id.to_string()).await
    }
}
