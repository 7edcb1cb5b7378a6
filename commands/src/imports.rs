//! Importing a conversation from colloquy's own export: a new conversation of the caller's,
//! created through one command whose events say it was imported (`ConversationImported`,
//! then a `MessageImported` per message). No model is asked for anything; the messages get
//! new ids (so the same export can be imported twice), the tree and the active leaf are kept.

use colloquy_domain::conversation::export::{Export, FORMAT, FORMAT_VERSION};
use colloquy_domain::conversation::{
    ConversationCommand, ConversationError, ConversationImported, ConversationKind, MessageImported,
};
use tracing::instrument;
use uuid::Uuid;

use crate::caller::Caller;
use crate::conversations::{ConversationAccepted, Outcome};
use crate::errors::UseCaseError;
use crate::quotas::{Charge, Quota};
use crate::Commands;

/// Namespace of imported messages' ids: UUID v5 of `<new conversation>/<exported id>`.
const IMPORTED_NAMESPACE: Uuid = Uuid::from_u128(0x1a5e_7c2e_9d4b_4f0e_8a61_0c3b_5e2d_7f90);

fn invalid(reason: impl Into<String>) -> UseCaseError<ConversationError> {
    UseCaseError::rejected(ConversationError::InvalidImport { reason: reason.into() })
}

impl Commands {
    /// Creates a conversation of the caller's from `export`. Counts as a conversation and
    /// as the bytes of its text against the quotas (not as messages of the day: nothing is
    /// asked of a model).
    #[instrument(skip_all, fields(user_id = %caller.user))]
    pub async fn import_conversation(&self, caller: &Caller, export: Export) -> Outcome<ConversationAccepted> {
        if export.format != FORMAT || export.format_version != FORMAT_VERSION {
            return Err(invalid(format!(
                "format {} version {}; colloquy reads {FORMAT} version {FORMAT_VERSION}",
                export.format, export.format_version
            )));
        }
        let kind: ConversationKind =
            serde_json::from_value(serde_json::Value::String(export.conversation.kind.clone()))
                .map_err(|_| invalid(format!("kind {}", export.conversation.kind)))?;
        self.models.check(&export.conversation.model)?;
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "import_conversation", &export, || async {
                let conversation_id = Uuid::new_v4();
                let new_id =
                    |old: Uuid| Uuid::new_v5(&IMPORTED_NAMESPACE, format!("{conversation_id}/{old}").as_bytes());
                let bytes = export.conversation.title.len()
                    + export.conversation.system_prompt.as_deref().map_or(0, str::len)
                    + export.messages.iter().map(|m| m.content.len()).sum::<usize>();
                let messages: Vec<MessageImported> = export
                    .messages
                    .iter()
                    .map(|m| MessageImported {
                        message_id: new_id(m.id),
                        parent_id: m.parent_id.map(new_id),
                        role: m.role.clone(),
                        content: m.content.clone(),
                        status: m.status.clone(),
                        model: m.model.clone(),
                        provider: m.provider.clone(),
                        usage: m.usage,
                        citations: m.citations.clone(),
                        written_at: m.created_at,
                    })
                    .collect();
                let command = ConversationCommand::ImportConversation {
                    conversation_id,
                    owner_id: caller.user,
                    title: export.conversation.title.clone(),
                    kind,
                    model: export.conversation.model.clone(),
                    system_prompt: export.conversation.system_prompt.clone(),
                    grounded: export.conversation.grounded,
                    source: ConversationImported {
                        source_conversation_id: export.conversation.id,
                        format: export.format.clone(),
                        format_version: export.format_version,
                        messages: u32::try_from(messages.len()).unwrap_or(u32::MAX),
                    },
                    messages,
                    leaf_id: export.active_leaf_id.map(new_id),
                };
                let charges = [Charge::new(Quota::Conversations, 1), Charge::new(Quota::StoredBytes, bytes)];
                let committed = self.execute_charged(caller, conversation_id, command, &charges).await?;
                Ok(ConversationAccepted { conversation_id, version: committed.version })
            })
            .await
    }
}
