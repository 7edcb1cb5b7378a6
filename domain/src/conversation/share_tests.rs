//! Given/when/then tests of sharing: a share pins the active path's end, only the owner
//! shares and revokes, and the number of live shares is bounded.

use std::sync::Arc;

use cqrs_es::test::TestFramework;
use uuid::Uuid;

use super::test_support::{posted, started, Unreachable, OWNER, STRANGER};
use super::*;
use crate::decision::Refusal;

type ConvTest = TestFramework<Conversation>;

const MSG: Uuid = Uuid::from_u128(11);
const SHARE: Uuid = Uuid::from_u128(40);

fn shared(share_id: Uuid, leaf_id: Option<Uuid>) -> ConversationEvent {
    ConversationEvent::ConversationShared(ConversationShared {
        share_id,
        token_sha256: "ab".into(),
        title: "t".into(),
        leaf_id,
    })
}

fn share(actor_id: Uuid, share_id: Uuid) -> ConversationCommand {
    ConversationCommand::ShareConversation { actor_id, share_id, token_sha256: "ab".into() }
}

/// Sharing asks no port: the lookup would fail if it did.
fn test() -> ConvTest {
    ConvTest::with(ConversationServices::new(Arc::new(Unreachable)))
}

#[tokio::test]
async fn a_share_pins_the_end_of_the_active_path() {
    test().given(vec![started(), posted(MSG, None, None)]).when_async(share(OWNER, SHARE)).await.then_expect_events(vec![shared(SHARE, Some(MSG))]);
    test().given(vec![started()]).when_async(share(OWNER, SHARE)).await.then_expect_events(vec![shared(SHARE, None)]);
    // The same share again records nothing (a retried request).
    test().given(vec![started(), shared(SHARE, None)]).when_async(share(OWNER, SHARE)).await.then_expect_events(vec![]);
}

#[tokio::test]
async fn only_the_owner_shares_and_revokes() {
    let not_found = || Refusal::Rejected(ConversationError::NotFound);
    test().given(vec![started()]).when_async(share(STRANGER, SHARE)).await.then_expect_error(not_found());
    let revoke = |actor_id, share_id| ConversationCommand::RevokeShare { actor_id, share_id };
    test()
        .given(vec![started(), shared(SHARE, None)])
        .when_async(revoke(STRANGER, SHARE))
        .await
        .then_expect_error(not_found());
    test()
        .given(vec![started(), shared(SHARE, None)])
        .when_async(revoke(OWNER, SHARE))
        .await
        .then_expect_events(vec![ConversationEvent::ShareRevoked(ShareRevoked { share_id: SHARE })]);
    // Revoked already, or never made.
    let gone = || Refusal::Rejected(ConversationError::ShareNotFound);
    test()
        .given(vec![started(), shared(SHARE, None), ConversationEvent::ShareRevoked(ShareRevoked { share_id: SHARE })])
        .when_async(revoke(OWNER, SHARE))
        .await
        .then_expect_error(gone());
    test().given(vec![started()]).when_async(revoke(OWNER, SHARE)).await.then_expect_error(gone());
    // A deleted conversation is shared no more.
    test()
        .given(vec![started(), ConversationEvent::ConversationDeleted(ConversationDeleted {})])
        .when_async(share(OWNER, SHARE))
        .await
        .then_expect_error(Refusal::Rejected(ConversationError::Deleted));
}

#[tokio::test]
async fn live_shares_are_bounded() {
    let mut given = vec![started()];
    given.extend((0..SHARES_MAX as u128).map(|i| shared(Uuid::from_u128(100 + i), None)));
    test()
        .given(given.clone())
        .when_async(share(OWNER, SHARE))
        .await
        .then_expect_error(Refusal::Rejected(ConversationError::TooManyShares { max: SHARES_MAX }));
    // A revoked one frees its place.
    given.push(ConversationEvent::ShareRevoked(ShareRevoked { share_id: Uuid::from_u128(100) }));
    test().given(given).when_async(share(OWNER, SHARE)).await.then_expect_events(vec![shared(SHARE, None)]);
}
