//! Sessions on a real database: what a sign-in opens, refresh-token rotation and reuse
//! detection, logout, deactivation, and the check every authenticated request makes (as
//! the API makes it: concurrent requests' checks answered together, each with its own
//! answer, and never from before a revocation that committed first).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_commands::access_checks::{AccessCheckError, AccessChecks};
use colloquy_commands::sessions::{RefreshRejection, SessionGrant, SessionToken};
use colloquy_commands::users::Register;
use colloquy_commands::{Caller, CommandSettings, Commands, UseCaseError};
use colloquy_infra::metrics::Metrics;
use colloquy_infra::testing::{eventually, TestDatabase};
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

fn token(grant: &SessionGrant, jti: Uuid) -> SessionToken {
    SessionToken { user_id: grant.user_id, session_id: grant.session_id, jti }
}

/// Whether a backend of this database waits for a lock (the in-flight check, held up by
/// the test's lock).
async fn a_check_waits_for_the_lock(db: &TestDatabase) -> Option<()> {
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    (waiting > 0).then_some(())
}

#[tokio::test]
async fn checks_queued_behind_a_statement_share_the_next_one_and_see_what_committed_before_them() {
    let db = TestDatabase::create().await;
    let commands = commands(&db);
    let ada = signed_in(&commands, "ada@example.com").await;
    let bob = signed_in(&commands, "bob@example.com").await;
    let metrics = Metrics::new();
    let checks = commands.access_checks(1, metrics.clone());

    // Hold the one lane: the first check's statement waits for this lock.
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE user_credentials IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let first = tokio::spawn({
        let checks = checks.clone();
        let token = token(&ada, Uuid::new_v4());
        async move { checks.allowed(token).await }
    });
    eventually("the first check to be in flight", || a_check_waits_for_the_lock(&db)).await;

    // Bob logs out while it is in flight (the logout touches no locked table).
    let revoked_jti = Uuid::new_v4();
    commands.logout(bob.user_id, bob.session_id, revoked_jti, chrono_free_now() + 900).await.unwrap();

    // Asked now, queued behind it: Bob's tokens, Ada's, and a forged one.
    let queued: Vec<(SessionToken, bool)> = (0..10)
        .flat_map(|_| {
            [
                (token(&ada, Uuid::new_v4()), true),
                (token(&bob, Uuid::new_v4()), false),
                (token(&bob, revoked_jti), false),
                (SessionToken { user_id: ada.user_id, session_id: bob.session_id, jti: Uuid::new_v4() }, false),
            ]
        })
        .collect();
    let answers: Vec<_> = queued
        .iter()
        .map(|(token, _)| {
            let (checks, token) = (checks.clone(), *token);
            tokio::spawn(async move { checks.allowed(token).await })
        })
        .collect();
    eventually("every later check to be queued", || {
        let all = checks.waiting() == queued.len();
        async move { all.then_some(()) }
    })
    .await;
    lock.commit().await.unwrap();

    assert!(first.await.unwrap().unwrap(), "Ada's first token");
    for ((token, expected), answer) in queued.iter().zip(answers) {
        assert_eq!(answer.await.unwrap().unwrap(), *expected, "{token:?}");
    }
    assert_eq!(metrics.session_checks.get(), 1 + queued.len() as u64);
    assert_eq!(metrics.session_check_statements.get(), 2, "the queued checks took one statement");
}

#[tokio::test]
async fn a_check_that_cannot_reach_the_database_is_an_error_not_an_answer() {
    let db = TestDatabase::create().await;
    let commands = commands(&db);
    let ada = signed_in(&commands, "ada@example.com").await;
    let checks: AccessChecks = commands.access_checks(1, Metrics::new());
    assert!(checks.allowed(token(&ada, Uuid::new_v4())).await.unwrap());
    db.pool.close().await;
    match checks.allowed(token(&ada, Uuid::new_v4())).await {
        Err(AccessCheckError::Database(_)) => {}
        other => panic!("expected a database error, got {other:?}"),
    }
}
