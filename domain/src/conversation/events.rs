use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The conversation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// A plain chat with a model.
    #[default]
    Chat,
    /// A chat whose answers are grounded in the owner's knowledge base.
    Knowledge,
}

/// A conversation was created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationStarted {
    /// The conversation's id.
    pub conversation_id: Uuid,
    /// Its owner.
    pub owner_id: Uuid,
    /// The title.
    pub title: String,
    /// The type.
    pub kind: ConversationKind,
    /// The model to answer with.
    pub model: String,
    /// The system prompt, if any.
    pub system_prompt: Option<String>,
    /// The owner gave no title: `title` is a placeholder until the assistant names the
    /// conversation after its first exchange (1.1; absent, as in 1.0 events: `false`).
    #[serde(default)]
    pub title_pending: bool,
}

/// The assistant named the conversation after its first exchange (a system actor). Never
/// recorded once the owner has renamed it: the owner's title always wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TitleGenerated {
    /// The title.
    pub title: String,
    /// The provider that wrote it.
    pub provider: String,
    /// The upstream model that wrote it.
    pub model: String,
    /// Tokens the naming call consumed (1.1; absent from 1.0 events: zero).
    #[serde(default)]
    pub usage: TokenUsage,
}

/// The title changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationRenamed {
    /// The new title.
    pub title: String,
}

/// Grounding in the owner's knowledge base was turned on or off: while on, every reply's
/// prompt quotes the passages that best match the message. Conversations of kind
/// `knowledge` start with it on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroundingChanged {
    /// Whether replies are grounded from now on.
    pub enabled: bool,
}

/// The conversation was archived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationArchived {}

/// The conversation was unarchived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationUnarchived {}

/// The conversation was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationDeleted {}

/// The owner posted a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserMessagePosted {
    /// The message's id.
    pub message_id: Uuid,
    /// The author (the owner).
    pub author_id: Uuid,
    /// The text.
    pub content: String,
    /// The model the poster asked to answer with (added in version 1.1; absent from 1.0
    /// payloads). Null leaves the choice to the conversation, the user's default, or the
    /// configuration.
    #[serde(default)]
    pub model: Option<String>,
    /// The message it follows: the reply (or message) that was the conversation's active leaf,
    /// or for an edit the edited message's parent; `null` for a first message. Added in 1.2:
    /// a 1.0 or 1.1 event follows the message recorded just before it (see
    /// [`parent_link`](Self::parent_link)).
    #[serde(default)]
    pub parent_id: Option<Uuid>,
    /// The user message this one rewrites (an edit is a sibling of it, under the same
    /// parent), if any. Added in 1.2.
    #[serde(default)]
    pub edit_of: Option<Uuid>,
}

impl UserMessagePosted {
    /// How this event, stored as `event_version`, names its parent: versions before 1.2
    /// carry none and follow the message recorded before them.
    pub fn parent_link(&self, event_version: &str) -> super::tree::ParentLink {
        match event_version {
            "1.0" | "1.1" => super::tree::ParentLink::Previous,
            _ => super::tree::ParentLink::Explicit(self.parent_id),
        }
    }
}

/// Another reply to a user message was asked for (regenerate). The new reply's id is fixed
/// here, so a worker that receives this event again names the same reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyRequested {
    /// The id the reply will have.
    pub reply_id: Uuid,
    /// The user message it will answer.
    pub in_reply_to: Uuid,
    /// The model asked for, if any (else the message's, the conversation's, ...).
    pub model: Option<String>,
    /// Who asked.
    pub requested_by: Uuid,
}

/// The owner switched the conversation to another branch of its message tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BranchActivated {
    /// The message the owner picked.
    pub message_id: Uuid,
    /// The active leaf from now on: the newest message at the end of the branch under
    /// `message_id` (`message_id` itself when nothing follows it).
    pub leaf_id: Uuid,
}

/// The owner made a read-only link to the conversation as it is now: the link shows the
/// messages up to the version before this event (its `sequence` − 1), along the path that
/// ended at `leaf_id`, and nothing added later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationShared {
    /// The share.
    pub share_id: Uuid,
    /// SHA-256 (hex) of the link's secret token; the token itself is never stored.
    pub token_sha256: String,
    /// The title when shared (the link shows it, whatever the title becomes).
    pub title: String,
    /// The active path's end when shared (none while the conversation had no message).
    pub leaf_id: Option<Uuid>,
}

/// The owner revoked a share: its link stops working.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShareRevoked {
    /// The share.
    pub share_id: Uuid,
}

/// The conversation was started by a request to the OpenAI-compatible API
/// (`POST /v1/chat/completions`): the request's earlier turns follow as
/// [`MessageImported`] events, its last user message as a [`UserMessagePosted`], which the
/// assistant answers like any other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationOpenedFromApi {
    /// The API key the request carried; `null` for an access token.
    pub api_key_id: Option<Uuid>,
    /// The route (`chat.completions`).
    pub endpoint: String,
    /// The sampling parameters the request asked for; the replies of this conversation use
    /// them (`max_tokens` capped at the model's own limit).
    pub parameters: ReplyParameters,
    /// How many earlier turns the request carried (recorded as [`MessageImported`]).
    pub earlier_messages: u32,
}

/// The conversation was created from an export (its messages follow as
/// [`MessageImported`] events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationImported {
    /// The exported conversation's id, where it came from.
    pub source_conversation_id: Uuid,
    /// The export format read (`colloquy.conversation`).
    pub format: String,
    /// Its version.
    pub format_version: u32,
    /// How many messages were imported.
    pub messages: u32,
}

/// A message recorded from an export, not written here: no model was asked for it, and no
/// reply follows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageImported {
    /// Its id in this conversation.
    pub message_id: Uuid,
    /// The message it follows (a reply: the one it answers), already in this conversation;
    /// `null` for a first message.
    pub parent_id: Option<Uuid>,
    /// `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
    /// A reply's status in the export (`completed`, `failed`, `cancelled`).
    pub status: String,
    /// The model that wrote a reply (or a user message asked for).
    pub model: Option<String>,
    /// The provider that wrote a reply.
    pub provider: Option<String>,
    /// A reply's tokens as exported (not a call of this colloquy: not in its usage ledger).
    pub usage: Option<TokenUsage>,
    /// The passages a reply quoted.
    pub citations: Vec<Citation>,
    /// When it was written, as exported.
    pub written_at: chrono::DateTime<chrono::Utc>,
}

/// The generation parameters a reply was asked with; `None` leaves a parameter to the
/// provider's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyParameters {
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
}

/// Tokens a reply consumed, as the provider counted them (zero where it did not say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
}

/// One try of one provider while producing a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyAttempt {
    /// The provider tried.
    pub provider: String,
    /// The upstream model asked for.
    pub model: String,
    /// `succeeded`, `failed` or `skipped` (an open circuit).
    pub outcome: String,
    /// The class of the error (`rate_limited`, `server_error`, `timeout`, ...), if it failed.
    pub error_class: Option<String>,
    /// The error as reported, if it failed.
    pub error: Option<String>,
    /// The HTTP status, when there was one.
    pub status: Option<u16>,
    /// How long the attempt took, in milliseconds.
    pub latency_ms: u64,
}

/// Why a reply failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyFailure {
    /// Stable snake_case code: `provider_error`, `all_providers_failed`, `worker_lost`, ...
    pub code: String,
    /// For people.
    pub message: String,
}

/// The assistant began answering a user message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyStarted {
    /// The reply's id, derived from the id of the message it answers (UUID v5, see
    /// `reply_id_for`).
    pub reply_id: Uuid,
    /// The user message it answers.
    pub in_reply_to: Uuid,
    /// The model name as configured (`gpt-4o-mini`, `local/smollm2-135m`).
    pub model: String,
    /// The first provider of the route.
    pub provider: String,
    /// The providers to try, in order, each as `provider/upstream-model`.
    pub route: Vec<String>,
    /// The system prompt the prompt was built with, if any.
    pub system_prompt: Option<String>,
    /// The ids of the messages included in the prompt, oldest first.
    pub context: Vec<Uuid>,
    /// The generation parameters.
    pub parameters: ReplyParameters,
    /// The worker producing it.
    pub worker: String,
    /// The knowledge-base passages quoted in the prompt, best first (empty when the
    /// conversation is not grounded or nothing matched). Added in 1.1.
    #[serde(default)]
    pub citations: Vec<Citation>,
}

/// A passage of the owner's knowledge base that a reply's prompt quoted: which document,
/// which version of it, which chunk, how well it matched, and its text exactly as quoted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Citation {
    /// The knowledge document.
    pub document_id: Uuid,
    /// The document's version the passage belongs to.
    pub version: u32,
    /// The passage (chunk) id, derived from (document, version, position).
    pub chunk_id: Uuid,
    /// The chunk's position in that version of the document, from 0.
    pub position: u32,
    /// The document's title when it was quoted.
    pub title: String,
    /// The passage's text as put in the prompt.
    pub text: String,
    /// The retrieval score (reciprocal rank fusion of text and vector search).
    pub score: f64,
}

/// A reply was generated to its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyCompleted {
    /// The reply.
    pub reply_id: Uuid,
    /// The provider that produced it.
    pub provider: String,
    /// The upstream model used.
    pub model: String,
    /// The text.
    pub content: String,
    /// Tokens consumed.
    pub usage: TokenUsage,
    /// From start to the last token, in milliseconds.
    pub latency_ms: u64,
    /// From start to the first token, in milliseconds.
    pub time_to_first_token_ms: u64,
    /// Why generation stopped: `stop`, `length`, `content_filter`, ...
    pub finish_reason: String,
    /// Every attempt, in order, the successful one last.
    pub attempts: Vec<ReplyAttempt>,
}

/// A reply could not be produced; what was generated before the failure is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyFailed {
    /// The reply.
    pub reply_id: Uuid,
    /// Why.
    pub reason: ReplyFailure,
    /// Every attempt, in order.
    pub attempts: Vec<ReplyAttempt>,
    /// The text generated before the failure (empty when none reached anyone).
    pub partial_content: String,
    /// The provider that was streaming, if one had started.
    pub provider: Option<String>,
    /// The upstream model that was streaming, if one had started.
    pub model: Option<String>,
    /// Tokens consumed.
    pub usage: TokenUsage,
}

/// A reply was stopped on request; what was generated so far is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyCancelled {
    /// The reply.
    pub reply_id: Uuid,
    /// Who asked to stop it.
    pub cancelled_by: Uuid,
    /// The text generated before the stop.
    pub partial_content: String,
    /// Tokens consumed.
    pub usage: TokenUsage,
    /// Every attempt, in order.
    pub attempts: Vec<ReplyAttempt>,
    /// The provider that was streaming, if one had started.
    pub provider: Option<String>,
    /// The upstream model that was streaming, if one had started.
    pub model: Option<String>,
}

crate::domain_events! {
    /// Everything that can happen to a Conversation.
    pub enum ConversationEvent {
        /// See [`ConversationStarted`].
        ConversationStarted(ConversationStarted) = "1.1",
        /// See [`ConversationRenamed`].
        ConversationRenamed(ConversationRenamed) = "1.0",
        /// See [`TitleGenerated`].
        TitleGenerated(TitleGenerated) = "1.1",
        /// See [`ConversationArchived`].
        ConversationArchived(ConversationArchived) = "1.0",
        /// See [`GroundingChanged`].
        GroundingChanged(GroundingChanged) = "1.0",
        /// See [`ConversationUnarchived`].
        ConversationUnarchived(ConversationUnarchived) = "1.0",
        /// See [`ConversationDeleted`].
        ConversationDeleted(ConversationDeleted) = "1.0",
        /// See [`UserMessagePosted`].
        UserMessagePosted(UserMessagePosted) = "1.2",
        /// See [`ReplyRequested`].
        ReplyRequested(ReplyRequested) = "1.0",
        /// See [`BranchActivated`].
        BranchActivated(BranchActivated) = "1.0",
        /// See [`ConversationShared`].
        ConversationShared(ConversationShared) = "1.0",
        /// See [`ShareRevoked`].
        ShareRevoked(ShareRevoked) = "1.0",
        /// See [`ConversationImported`].
        ConversationImported(ConversationImported) = "1.0",
        /// See [`MessageImported`].
        MessageImported(MessageImported) = "1.0",
        /// See [`ConversationOpenedFromApi`].
        ConversationOpenedFromApi(ConversationOpenedFromApi) = "1.0",
        /// See [`ReplyStarted`].
        ReplyStarted(ReplyStarted) = "1.1",
        /// See [`ReplyCompleted`].
        ReplyCompleted(ReplyCompleted) = "1.0",
        /// See [`ReplyFailed`].
        ReplyFailed(ReplyFailed) = "1.0",
        /// See [`ReplyCancelled`].
        ReplyCancelled(ReplyCancelled) = "1.0",
    }
}

impl crate::event_catalog::EventExamples for ConversationEvent {
    fn examples() -> Vec<Self> {
        let id = Uuid::from_u128(1);
        let reply = super::reply_id_for(id);
        let failed_attempt = ReplyAttempt {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            outcome: "failed".into(),
            error_class: Some("rate_limited".into()),
            error: Some("429 Too Many Requests".into()),
            status: Some(429),
            latency_ms: 40,
        };
        vec![
            Self::ConversationStarted(ConversationStarted {
                conversation_id: id,
                owner_id: id,
                title: "Trip".into(),
                kind: ConversationKind::Chat,
                model: "local/smollm2-135m".into(),
                system_prompt: Some("Be brief.".into()),
                title_pending: false,
            }),
            Self::ConversationRenamed(ConversationRenamed { title: "Plans".into() }),
            Self::TitleGenerated(TitleGenerated {
                title: "Planning a trip to Lisbon".into(),
                provider: "local".into(),
                model: "smollm2-135m".into(),
                usage: TokenUsage { input_tokens: 48, output_tokens: 6 },
            }),
            Self::ConversationArchived(ConversationArchived {}),
            Self::ConversationUnarchived(ConversationUnarchived {}),
            Self::ConversationDeleted(ConversationDeleted {}),
            Self::UserMessagePosted(UserMessagePosted {
                message_id: id,
                author_id: id,
                content: "Hello".into(),
                model: Some("gpt-4o-mini".into()),
                parent_id: None,
                edit_of: None,
            }),
            Self::UserMessagePosted(UserMessagePosted {
                message_id: id,
                author_id: id,
                content: "Hi, again".into(),
                model: None,
                parent_id: Some(Uuid::from_u128(2)),
                edit_of: Some(Uuid::from_u128(5)),
            }),
            Self::ReplyRequested(ReplyRequested {
                reply_id: Uuid::from_u128(6),
                in_reply_to: id,
                model: Some("gpt-4o-mini".into()),
                requested_by: id,
            }),
            Self::BranchActivated(BranchActivated { message_id: id, leaf_id: reply }),
            Self::ConversationShared(ConversationShared {
                share_id: Uuid::from_u128(7),
                token_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
                title: "Trip".into(),
                leaf_id: Some(reply),
            }),
            Self::ShareRevoked(ShareRevoked { share_id: Uuid::from_u128(7) }),
            Self::ConversationOpenedFromApi(ConversationOpenedFromApi {
                api_key_id: Some(Uuid::from_u128(10)),
                endpoint: "chat.completions".into(),
                parameters: ReplyParameters { max_tokens: Some(256), temperature: Some(0.2), top_p: None },
                earlier_messages: 2,
            }),
            Self::ConversationImported(ConversationImported {
                source_conversation_id: Uuid::from_u128(8),
                format: "colloquy.conversation".into(),
                format_version: 1,
                messages: 2,
            }),
            Self::MessageImported(MessageImported {
                message_id: Uuid::from_u128(9),
                parent_id: Some(id),
                role: "assistant".into(),
                content: "Lisbon is lovely in May.".into(),
                status: "completed".into(),
                model: Some("gpt-4o-mini".into()),
                provider: Some("openai".into()),
                usage: Some(TokenUsage { input_tokens: 20, output_tokens: 8 }),
                citations: vec![],
                written_at: chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap_or_default(),
            }),
            Self::GroundingChanged(GroundingChanged { enabled: true }),
            Self::ReplyStarted(ReplyStarted {
                reply_id: reply,
                in_reply_to: id,
                model: "gpt-4o-mini".into(),
                provider: "openai".into(),
                route: vec!["openai/gpt-4o-mini".into(), "local/smollm2-135m".into()],
                system_prompt: Some("Be brief.".into()),
                context: vec![Uuid::from_u128(2), id],
                parameters: ReplyParameters { max_tokens: Some(512), temperature: Some(0.7), top_p: None },
                worker: "assistant-1".into(),
                citations: vec![Citation {
                    document_id: Uuid::from_u128(3),
                    version: 1,
                    chunk_id: Uuid::from_u128(4),
                    position: 0,
                    title: "Travel policy".into(),
                    text: "Economy class for flights under six hours.".into(),
                    score: 0.032,
                }],
            }),
            Self::ReplyCompleted(ReplyCompleted {
                reply_id: reply,
                provider: "local".into(),
                model: "smollm2-135m".into(),
                content: "Hello! How can I help?".into(),
                usage: TokenUsage { input_tokens: 12, output_tokens: 7 },
                latency_ms: 640,
                time_to_first_token_ms: 480,
                finish_reason: "stop".into(),
                attempts: vec![
                    failed_attempt.clone(),
                    ReplyAttempt {
                        provider: "local".into(),
                        model: "smollm2-135m".into(),
                        outcome: "succeeded".into(),
                        error_class: None,
                        error: None,
                        status: None,
                        latency_ms: 600,
                    },
                ],
            }),
            Self::ReplyFailed(ReplyFailed {
                reply_id: reply,
                reason: ReplyFailure { code: "all_providers_failed".into(), message: "every provider failed".into() },
                attempts: vec![failed_attempt.clone()],
                partial_content: String::new(),
                provider: None,
                model: None,
                usage: TokenUsage::default(),
            }),
            Self::ReplyCancelled(ReplyCancelled {
                reply_id: reply,
                cancelled_by: id,
                partial_content: "Hello! How".into(),
                usage: TokenUsage { input_tokens: 12, output_tokens: 3 },
                attempts: vec![],
                provider: Some("local".into()),
                model: Some("smollm2-135m".into()),
            }),
        ]
    }
}
