//! The session check as the API makes it: concurrent requests' checks answered together,
//! each with its own answer, and never from before a revocation that committed first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_commands::access_checks::{AccessCheckError, AccessChecks};
use colloquy_commands::sessions::{SessionGrant, SessionToken};
use colloquy_commands::users::Register;
use colloquy_commands::{CommandSettings, Commands};
use colloquy_infra::metrics::Metrics;
use colloquy_infra::testing::{eventually, TestDatabase};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery";

fn commands(db: &TestDatabase) -> Commands {
    Commands::new(db.pool.clone(), Metrics::new(), CommandSettings { hash_concurrency: 2, ..Default::default() })
}

async fn signed_in(commands: &Commands, email: &str) -> SessionGrant {
    let input = Register { email: email.into(), full_name: "Ada".into(), password: PASSWORD.into() };
    commands.register("corr".into(), input).await.unwrap();
    commands.sign_in(email, PASSWORD.into()).await.unwrap()
}

fn token(grant: &SessionGrant, jti: Uuid) -> SessionToken {
    SessionToken { user_id: grant.user_id, session_id: grant.session_id, jti }
}

fn now_secs() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap()
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
    commands.logout(bob.user_id, bob.session_id, revoked_jti, now_secs() + 900).await.unwrap();

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
