//! Sharing a conversation: a read-only link pinned to the conversation as it is now, and its
//! revocation. The link's token is made here, returned once and never stored: the event
//! records its SHA-256.

use colloquy_domain::conversation::ConversationCommand;
use colloquy_infra::secrets;
use serde::{Deserialize, Serialize};
use tracing::instrument;
use uuid::Uuid;

use crate::caller::Caller;
use crate::conversations::{ConversationAccepted, Outcome};
use crate::errors::UseCaseError;
use crate::idempotency::Answer;
use crate::Commands;

/// What a share link's token starts with.
pub const SHARE_TOKEN_PREFIX: &str = "cshare_";

/// A new share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShareCreated {
    /// The conversation.
    pub conversation_id: Uuid,
    /// The share (to list or revoke it).
    pub share_id: Uuid,
    /// The link's secret: `GET /api/v1/shared/{token}` shows the conversation to anyone
    /// holding it. Shown this once; colloquy keeps only its hash.
    pub token: String,
    /// The conversation's version after the share (the link shows the one before).
    pub version: i64,
}

impl Commands {
    /// Makes a read-only link to one of the caller's conversations as it is now. Not
    /// idempotent by key on purpose: a recorded answer would keep the token; a retried
    /// request makes a second link (revoke the one not used).
    #[instrument(skip_all, fields(user_id = %caller.user, %conversation_id))]
    pub async fn share_conversation(&self, caller: &Caller, conversation_id: Uuid) -> Outcome<ShareCreated> {
        let token = secrets::new_secret(SHARE_TOKEN_PREFIX);
        let share_id = Uuid::new_v4();
        let command = ConversationCommand::ShareConversation {
            actor_id: caller.user,
            share_id,
            token_sha256: secrets::sha256_hex(&token),
        };
        let committed = self.execute_charged(caller, conversation_id, command, &[]).await?;
        let created = ShareCreated { conversation_id, share_id, token, version: committed.version };
        Ok(Answer { value: created, replayed: false })
    }

    /// Revokes a share of one of the caller's conversations: its link stops working.
    #[instrument(skip_all, fields(user_id = %caller.user, %conversation_id, %share_id))]
    pub async fn revoke_share(
        &self,
        caller: &Caller,
        conversation_id: Uuid,
        share_id: Uuid,
    ) -> Outcome<ConversationAccepted> {
        let request = (conversation_id, share_id);
        self.idempotency
            .once(caller.user, caller.idempotency_key.as_ref(), "revoke_share", &request, || async {
                let command = ConversationCommand::RevokeShare { actor_id: caller.user, share_id };
                let committed = self.execute_charged(caller, conversation_id, command, &[]).await?;
                Ok::<_, UseCaseError<_>>(ConversationAccepted { conversation_id, version: committed.version })
            })
            .await
    }
}
