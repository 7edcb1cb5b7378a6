use serde::Deserialize;
use uuid::Uuid;

use super::{Citation, ConversationKind, ReplyAttempt, ReplyFailure, ReplyParameters, TokenUsage};

/// What can be asked of a Conversation. Every command the owner sends names its actor:
/// only the owner may act on a conversation, and to anyone else it does not exist. The
/// reply commands come from the assistant worker (a system actor) after the application
/// layer has authorised whatever asked for them (a cancel, say), so they name no actor.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum ConversationCommand {
    /// Create the conversation.
    StartConversation {
        /// The new conversation's id.
        conversation_id: Uuid,
        /// The owner (the authenticated user).
        owner_id: Uuid,
        /// The title; `None`: a placeholder until the assistant names the conversation.
        title: Option<String>,
        /// The conversation type.
        kind: ConversationKind,
        /// The model to answer with.
        model: String,
        /// An optional system prompt.
        system_prompt: Option<String>,
    },
    /// Change the title.
    RenameConversation {
        /// Who asks.
        actor_id: Uuid,
        /// The new title.
        title: String,
    },
    /// Record the title the assistant wrote after the first exchange (a system actor). No
    /// event when the title is no longer pending (the owner renamed it, or it was named).
    GenerateTitle {
        /// The title.
        title: String,
        /// The provider that wrote it.
        provider: String,
        /// The upstream model that wrote it.
        model: String,
        /// Tokens the naming call consumed.
        usage: TokenUsage,
    },
    /// Turn grounding in the owner's knowledge base on or off (no event when unchanged).
    SetGrounding {
        /// Who asks.
        actor_id: Uuid,
        /// Whether replies quote the knowledge base.
        enabled: bool,
    },
    /// Hide from the default list; rejects new messages until unarchived.
    ArchiveConversation {
        /// Who asks.
        actor_id: Uuid,
    },
    /// Undo an archive.
    UnarchiveConversation {
        /// Who asks.
        actor_id: Uuid,
    },
    /// Delete; terminal.
    DeleteConversation {
        /// Who asks.
        actor_id: Uuid,
    },
    /// Add a user message.
    PostUserMessage {
        /// Who asks.
        actor_id: Uuid,
        /// The new message's id.
        message_id: NewMessageId,
        /// The text.
        content: String,
        /// The model to answer with, if the poster chose one (validated as a model name).
        model: Option<String>,
    },
    /// Add a user message that rewrites another: a sibling of it, under the same parent, which
    /// becomes the active leaf (and gets its own reply).
    EditMessage {
        /// Who asks.
        actor_id: Uuid,
        /// The user message rewritten.
        message_id: Uuid,
        /// The new message's id.
        new_message_id: Uuid,
        /// The new text.
        content: String,
        /// The model to answer with, if the poster chose one.
        model: Option<String>,
    },
    /// Ask for another reply to a user message (given as the message, or as one of its
    /// replies). The conversation's active path then ends at that message, and at the new
    /// reply once it starts.
    RegenerateReply {
        /// Who asks.
        actor_id: Uuid,
        /// The user message to answer again, or a reply to it.
        message_id: Uuid,
        /// The new reply's id (chosen by the caller, fresh).
        reply_id: Uuid,
        /// The model to answer with, if the owner chose one.
        model: Option<String>,
    },
    /// Switch the active path to the branch through `message_id`: it ends at that branch's
    /// newest message.
    ActivateBranch {
        /// Who asks.
        actor_id: Uuid,
        /// A message of the branch.
        message_id: Uuid,
    },
    /// Create the conversation from an export: started, then every message recorded as
    /// imported (no model is asked), then the active leaf set.
    ImportConversation {
        /// The new conversation's id.
        conversation_id: Uuid,
        /// Its owner (the importer).
        owner_id: Uuid,
        /// The title.
        title: String,
        /// The type.
        kind: ConversationKind,
        /// The model to answer with from now on.
        model: String,
        /// The system prompt.
        system_prompt: Option<String>,
        /// Whether replies are grounded.
        grounded: bool,
        /// Where it came from.
        source: super::ConversationImported,
        /// The messages, parents before children, with their new ids.
        messages: Vec<super::MessageImported>,
        /// The active leaf (one of `messages`).
        leaf_id: Option<Uuid>,
    },
    /// Make a read-only link to the conversation as it is now.
    /// Starts a conversation for a chat completion asked through the OpenAI-compatible API:
    /// the request's earlier turns as imported messages, its last message as posted (the
    /// assistant answers it), in one decision.
    StartApiConversation {
        /// The new conversation's id.
        conversation_id: Uuid,
        /// The caller.
        owner_id: Uuid,
        /// The title (made from the request; the assistant is not asked for one).
        title: String,
        /// The model the request named.
        model: String,
        /// The request's system (and developer) messages, joined.
        system_prompt: Option<String>,
        /// What to record about the request.
        request: super::ConversationOpenedFromApi,
        /// The earlier turns, in order, each following the one before.
        history: Vec<super::MessageImported>,
        /// The last user message's id.
        message_id: Uuid,
        /// Its text.
        content: String,
    },
    ShareConversation {
        /// Who asks.
        actor_id: Uuid,
        /// The new share's id.
        share_id: Uuid,
        /// SHA-256 (hex) of the link's token (made by the use case, shown once).
        token_sha256: String,
    },
    /// Revoke a share.
    RevokeShare {
        /// Who asks.
        actor_id: Uuid,
        /// The share.
        share_id: Uuid,
    },
    /// Begin the reply to a user message.
    StartReply {
        /// [`reply_id_for`](super::reply_id_for)`(in_reply_to)`, or the id of a requested
        /// (regenerated) reply to it.
        reply_id: Uuid,
        /// The user message it answers.
        in_reply_to: Uuid,
        /// The model name as configured.
        model: String,
        /// The first provider of the route.
        provider: String,
        /// `provider/upstream-model`, in the order they will be tried.
        route: Vec<String>,
        /// The system prompt used.
        system_prompt: Option<String>,
        /// The messages included in the prompt, oldest first.
        context: Vec<Uuid>,
        /// The generation parameters.
        parameters: ReplyParameters,
        /// The worker producing it.
        worker: String,
        /// The knowledge-base passages quoted in the prompt.
        citations: Vec<Citation>,
    },
    /// Record a reply generated to its end.
    CompleteReply {
        /// The reply.
        reply_id: Uuid,
        /// The provider that produced it.
        provider: String,
        /// The upstream model used.
        model: String,
        /// The text.
        content: String,
        /// Tokens consumed.
        usage: TokenUsage,
        /// From start to the last token, in milliseconds.
        latency_ms: u64,
        /// From start to the first token, in milliseconds.
        time_to_first_token_ms: u64,
        /// Why generation stopped.
        finish_reason: String,
        /// Every attempt, in order.
        attempts: Vec<ReplyAttempt>,
    },
    /// Record that a reply could not be produced.
    FailReply {
        /// The reply.
        reply_id: Uuid,
        /// Why.
        reason: ReplyFailure,
        /// Every attempt, in order.
        attempts: Vec<ReplyAttempt>,
        /// The text generated before the failure.
        partial_content: String,
        /// The provider that was streaming, if any.
        provider: Option<String>,
        /// The upstream model that was streaming, if any.
        model: Option<String>,
        /// Tokens consumed.
        usage: TokenUsage,
    },
    /// Record that a reply was stopped on request.
    CancelReply {
        /// The reply.
        reply_id: Uuid,
        /// Who asked to stop it.
        cancelled_by: Uuid,
        /// The text generated before the stop.
        partial_content: String,
        /// Tokens consumed.
        usage: TokenUsage,
        /// Every attempt, in order.
        attempts: Vec<ReplyAttempt>,
        /// The provider that was streaming, if any.
        provider: Option<String>,
        /// The upstream model that was streaming, if any.
        model: Option<String>,
    },
}

/// The id of a message about to be posted: given by the client, or minted for it here.
///
/// A given id may repeat one the conversation already has (a retry, a mistake), so the
/// aggregate looks it up before accepting it. A minted id is a random (v4) UUID drawn for
/// this message alone: no earlier message can have it, and the lookup, a round trip to the
/// event store on every post, is skipped. Only [`mint`](Self::mint) makes one, and a
/// deserialised command always holds a given id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(from = "Uuid")]
pub struct NewMessageId {
    id: Uuid,
    minted: bool,
}

impl NewMessageId {
    /// An id the client chose.
    pub fn given(id: Uuid) -> Self {
        Self { id, minted: false }
    }

    /// A fresh random id, which no message has.
    pub fn mint() -> Self {
        Self { id: Uuid::new_v4(), minted: true }
    }

    /// The id.
    pub fn id(self) -> Uuid {
        self.id
    }

    /// Whether it was minted here (and so needs no lookup).
    pub fn is_minted(self) -> bool {
        self.minted
    }
}

impl From<Uuid> for NewMessageId {
    fn from(id: Uuid) -> Self {
        Self::given(id)
    }
}
