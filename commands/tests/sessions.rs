//! Sessions on a real database: what a sign-in opens, refresh-token rotation and reuse
//! detection, logout, deactivation, and the check every authenticated request makes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_commands::sessions::{RefreshRejection, SessionGrant};
use colloquy_commands::users::Register;
use colloquy_commands::{Caller, CommandSettings, Commands, UseCaseError};
use colloquy_infra::metrics::Metrics;
use colloquy_infra::testing::TestDatabase;
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery";

fn commands(db: &TestDatabase) -> Commands {
    Commands::new(db.pool.clone(), Metrics::new(), CommandSettings { hash_concurrency: 2, ..Default::default() })
}

/// Registers `email` and signs in.
async fn signed_in(commands: &Commands, email: &str) -> SessionGrant {
    let input = Register { email: email.into(), full_name: "Ada".into(), password: PASSWORD.into() };
    commands.register("corr".into(), input).await.unwrap();
    commands.sign_in(email, PASSWORD.into()).await.unwrap()
}

async fn allowed(commands: &Commands, grant: &SessionGrant, jti: Uuid) -> bool {
    commands.access_allowed(grant.user_id, grant.session_id, jti).await.unwrap()
}

fn assert_refused(outcome: Result<SessionGrant, UseCaseError<RefreshRejection>>, expected: RefreshRejection) {
    match outcome {
        Err(UseCaseError::Rejected { rejection, .. }) if rejection == expected => {}
        other => panic!("expected {expected:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn only_a_signed_in_session_of_a_registered_user_is_allowed() {
    let db = TestDatabase::create().await;
    let commands = commands(&db);
    let grant = signed_in(&commands, "ada@example.com").await;
    assert!(grant.refresh_token.starts_with("crt_"));
    assert!(!format!("{grant:?}").contains(&grant.refresh_token), "the secret is not printed");
    assert!(allowed(&commands, &grant, Uuid::new_v4()).await);
    // A random user with a random session (a forged `sub`), or a real session claimed for
    // another user: refused.
    assert!(!commands.access_allowed(Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()).await.unwrap());
    assert!(!commands.access_allowed(Uuid::new_v4(), grant.session_id, Uuid::new_v4()).await.unwrap());
    assert!(!commands.access_allowed(grant.user_id, Uuid::new_v4(), Uuid::new_v4()).await.unwrap());
    // The secret itself is not stored.
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refresh_tokens WHERE token_hash = convert_to($1, 'UTF8')")
            .bind(&grant.refresh_token)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_the_whole_session() {
    let db = TestDatabase::create().await;
    let commands = commands(&db);
    let first = signed_in(&commands, "ada@example.com").await;
    let second = commands.refresh(&first.refresh_token).await.unwrap();
    assert_eq!((second.user_id, second.session_id), (first.user_id, first.session_id), "same session");
    assert_ne!(second.refresh_token, first.refresh_token);
    assert!(allowed(&commands, &second, Uuid::new_v4()).await);
    // Another session of the same user is not affected by what follows.
    let other = commands.sign_in("ada@example.com", PASSWORD.into()).await.unwrap();

    // The used token again: refused, and the session is revoked.
    assert_refused(commands.refresh(&first.refresh_token).await, RefreshRejection::Reused);
    assert!(!allowed(&commands, &second, Uuid::new_v4()).await, "the family's access tokens are refused");
    assert_refused(commands.refresh(&second.refresh_token).await, RefreshRejection::Invalid);
    assert!(allowed(&commands, &other, Uuid::new_v4()).await);
    assert!(commands.refresh(&other.refresh_token).await.is_ok());

    // Garbage and access-token-shaped strings are simply invalid.
    assert_refused(commands.refresh("crt_0000").await, RefreshRejection::Invalid);
    assert_refused(commands.refresh("eyJhbGciOiJIUzI1NiJ9.e30.x").await, RefreshRejection::Invalid);
}

#[tokio::test]
async fn logout_revokes_the_token_and_its_session() {
    let db = TestDatabase::create().await;
    let commands = commands(&db);
    let grant = signed_in(&commands, "ada@example.com").await;
    let jti = Uuid::new_v4();
    let exp = chrono_free_now() + 900;
    commands.logout(grant.user_id, grant.session_id, jti, exp).await.unwrap();
    assert!(!allowed(&commands, &grant, jti).await);
    assert!(!allowed(&commands, &grant, Uuid::new_v4()).await, "every token of the session");
    assert_refused(commands.refresh(&grant.refresh_token).await, RefreshRejection::Invalid);
    // Logging out twice is harmless.
    commands.logout(grant.user_id, grant.session_id, jti, exp).await.unwrap();
}

#[tokio::test]
async fn deactivation_is_recorded_and_refuses_every_session() {
    let db = TestDatabase::create().await;
    let commands = commands(&db);
    let grant = signed_in(&commands, "ada@example.com").await;
    let other = commands.sign_in("ada@example.com", PASSWORD.into()).await.unwrap();
    commands.deactivate(&Caller::user(grant.user_id, "corr".into(), "req")).await.unwrap();
    assert!(!allowed(&commands, &grant, Uuid::new_v4()).await);
    assert!(!allowed(&commands, &other, Uuid::new_v4()).await);
    assert_refused(commands.refresh(&other.refresh_token).await, RefreshRejection::Invalid);
}

#[tokio::test]
async fn a_deactivation_whose_mark_was_lost_is_recorded_by_the_next_refresh_or_retry() {
    let db = TestDatabase::create().await;
    let commands = commands(&db);
    let grant = signed_in(&commands, "ada@example.com").await;
    let caller = Caller::user(grant.user_id, "corr".into(), "req");
    commands.deactivate(&caller).await.unwrap();
    // As if the process died between the event's commit and the mark.
    let unmark = || sqlx::query("UPDATE user_credentials SET deactivated_at = NULL").execute(&db.pool);
    unmark().await.unwrap();
    assert!(allowed(&commands, &grant, Uuid::new_v4()).await, "the window this test is about");
    assert_refused(commands.refresh(&grant.refresh_token).await, RefreshRejection::Invalid);
    assert!(!allowed(&commands, &grant, Uuid::new_v4()).await, "the refresh recorded it");

    unmark().await.unwrap();
    assert!(commands.deactivate(&caller).await.is_err(), "already deactivated");
    assert!(!allowed(&commands, &grant, Uuid::new_v4()).await, "the retry recorded it");
}

fn chrono_free_now() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap()
}
