//! Registration and login through the use cases, on a real database: the credentials table
//! decides who holds an address, a rejected registration claims nothing, and only an active
//! account with the right password logs in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_commands::credentials::Credentials;
use colloquy_commands::users::{LoginRejection, Register, RegistrationRejection};
use colloquy_commands::{Caller, CommandSettings, Commands, Failure, UseCaseError};
use colloquy_domain::user::{UserError, FULL_NAME_MAX};
use colloquy_domain::values::EmailAddress;
use colloquy_infra::metrics::Metrics;
use colloquy_infra::passwords::PasswordHasher;
use colloquy_infra::testing::TestDatabase;
use sqlx::PgPool;
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery";

fn commands(pool: &PgPool) -> Commands {
    Commands::new(
        pool.clone(),
        Metrics::new(),
        CommandSettings { hash_concurrency: 2, idempotency_ttl_hours: 24, ..Default::default() },
    )
}

fn registration(email: &str, password: &str) -> Register {
    Register { email: email.into(), full_name: "Ada Lovelace".into(), password: password.into() }
}

async fn register(commands: &Commands, email: &str) -> Uuid {
    commands.register("corr".into(), registration(email, PASSWORD)).await.expect("registration").user_id
}

/// Rows of `user_credentials` as (user_id, email).
async fn claims(pool: &PgPool) -> Vec<(Uuid, String)> {
    sqlx::query_as("SELECT user_id, email FROM user_credentials ORDER BY email").fetch_all(pool).await.unwrap()
}

async fn registered_events(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT aggregate_id FROM events WHERE event_type = 'UserRegistered' ORDER BY position")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await.unwrap()
}

/// A claim of `email` by `user_id` made `age` ago, with a real hash of `password` if one
/// is given (hashing costs about a second in a debug build).
async fn insert_claim(pool: &PgPool, user_id: Uuid, email: &str, password: Option<&str>, age: &str) {
    let hash = match password {
        Some(password) => PasswordHasher::new(1).hash(password.into()).await.unwrap(),
        None => "never verified".to_string(),
    };
    sqlx::query(
        "INSERT INTO user_credentials (user_id, email, password_hash, created_at)
         VALUES ($1, $2, $3, now() - $4::interval)",
    )
    .bind(user_id)
    .bind(email)
    .bind(hash)
    .bind(age)
    .execute(pool)
    .await
    .unwrap();
}

fn assert_invalid_credentials(outcome: Result<Uuid, UseCaseError<LoginRejection>>) {
    match outcome {
        Err(UseCaseError::Rejected { rejection: LoginRejection::InvalidCredentials, replayed: false }) => {}
        other => panic!("expected InvalidCredentials, got {other:?}"),
    }
}

fn assert_rejected(
    outcome: Result<impl std::fmt::Debug, UseCaseError<RegistrationRejection>>,
    expected: RegistrationRejection,
) {
    match outcome {
        Err(UseCaseError::Rejected { rejection, replayed: false }) if rejection == expected => {}
        other => panic!("expected {expected:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_user_logs_in_with_their_password() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let registered = commands.register("corr".into(), registration("ada@example.com", PASSWORD)).await.unwrap();
    assert_eq!(registered.version, 1);
    assert_eq!(commands.login("ada@example.com", PASSWORD.into()).await.unwrap(), registered.user_id);
    assert_eq!(claims(&db.pool).await, [(registered.user_id, "ada@example.com".to_string())]);
    assert_eq!(registered_events(&db.pool).await, [registered.user_id.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_invalid_credentials() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    register(&commands, "ada@example.com").await;
    assert_invalid_credentials(commands.login("ada@example.com", "correct horse battery!".into()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_address_is_invalid_credentials() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    register(&commands, "ada@example.com").await;
    assert_invalid_credentials(commands.login("grace@example.com", PASSWORD.into()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_address_is_invalid_credentials() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    for malformed in ["ada", "ada@@example.com"] {
        assert_invalid_credentials(commands.login(malformed, PASSWORD.into()).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_outside_the_length_bounds_is_rejected_and_claims_nothing() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    for password in ["1234567".to_string(), "p".repeat(257)] {
        assert_rejected(
            commands.register("corr".into(), registration("ada@example.com", &password)).await,
            RegistrationRejection::WeakPassword,
        );
    }
    assert_eq!(claims(&db.pool).await, []);
    assert_eq!(event_count(&db.pool).await, 0);
    // The address is still free, and eight characters are enough.
    let user = commands.register("corr".into(), registration("ada@example.com", "12345678")).await.unwrap().user_id;
    assert_eq!(claims(&db.pool).await, [(user, "ada@example.com".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_email_is_rejected_before_anything_is_claimed() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    assert_rejected(
        commands.register("corr".into(), registration("ada.example.com", PASSWORD)).await,
        RegistrationRejection::Invalid(UserError::InvalidEmail),
    );
    assert_eq!(claims(&db.pool).await, []);
    assert_eq!(event_count(&db.pool).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_full_name_is_rejected_and_claims_nothing() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let blank = Register { email: "ada@example.com".into(), full_name: "   ".into(), password: PASSWORD.into() };
    assert_rejected(
        commands.register("corr".into(), blank).await,
        RegistrationRejection::Invalid(UserError::InvalidFullName { max: FULL_NAME_MAX }),
    );
    assert_eq!(claims(&db.pool).await, []);
    assert_eq!(event_count(&db.pool).await, 0);
    register(&commands, "ada@example.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_address_have_exactly_one_winner() {
    let db = TestDatabase::create().await;
    // As many concurrent hashes as registrations, so all six reach their claim together.
    let settings = CommandSettings { hash_concurrency: 6, idempotency_ttl_hours: 24, ..Default::default() };
    let commands = Commands::new(db.pool.clone(), Metrics::new(), settings);
    let attempts =
        (0..6).map(|_| commands.register("corr".into(), registration("ada@example.com", PASSWORD))).collect::<Vec<_>>();
    let outcomes = futures::future::join_all(attempts).await;

    let winners: Vec<Uuid> = outcomes.iter().filter_map(|o| o.as_ref().ok().map(|r| r.user_id)).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let taken = outcomes
        .iter()
        .filter(|o| {
            matches!(o, Err(UseCaseError::Rejected { rejection: RegistrationRejection::EmailTaken, replayed: false }))
        })
        .count();
    assert_eq!(taken, 5, "{outcomes:?}");
    assert_eq!(registered_events(&db.pool).await, [winners[0].to_string()]);
    assert_eq!(claims(&db.pool).await, [(winners[0], "ada@example.com".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_and_whitespace_variants_of_an_address_are_the_same_address() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&commands, "Ada@Example.com").await;
    assert_eq!(claims(&db.pool).await, [(user, "ada@example.com".to_string())]);
    let variant = "\t ADA@example.COM\n";
    assert_rejected(
        commands.register("corr".into(), registration(variant, PASSWORD)).await,
        RegistrationRejection::EmailTaken,
    );
    assert_eq!(commands.login(variant, PASSWORD.into()).await.unwrap(), user);
    assert_eq!(registered_events(&db.pool).await, [user.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_user_cannot_log_in() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&commands, "ada@example.com").await;
    assert_eq!(commands.login("ada@example.com", PASSWORD.into()).await.unwrap(), user);
    let accepted = commands.deactivate(&Caller::user(user, "corr".into(), "req-1")).await.unwrap();
    assert_eq!(accepted.version, 2);
    assert_invalid_credentials(commands.login("ada@example.com", PASSWORD.into()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_user_never_registered_cannot_log_in() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    insert_claim(&db.pool, Uuid::new_v4(), "ada@example.com", Some(PASSWORD), "0 seconds").await;
    assert_invalid_credentials(commands.login("ada@example.com", PASSWORD.into()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_claim_older_than_five_minutes_is_taken_over() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let crashed = Uuid::new_v4();
    insert_claim(&db.pool, crashed, "ada@example.com", None, "6 minutes").await;

    let user = register(&commands, "ada@example.com").await;
    assert_ne!(user, crashed);
    assert_eq!(claims(&db.pool).await, [(user, "ada@example.com".to_string())]);
    assert_eq!(registered_events(&db.pool).await, [user.to_string()]);
    // The new registrant's password replaced the orphan's hash.
    assert_eq!(commands.login("ada@example.com", PASSWORD.into()).await.unwrap(), user);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recent_claim_without_events_is_not_taken_over() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let registering = Uuid::new_v4();
    insert_claim(&db.pool, registering, "ada@example.com", None, "4 minutes").await;

    assert_rejected(
        commands.register("corr".into(), registration("ada@example.com", PASSWORD)).await,
        RegistrationRejection::EmailTaken,
    );
    assert_eq!(claims(&db.pool).await, [(registering, "ada@example.com".to_string())]);
    assert_eq!(event_count(&db.pool).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_claim_of_a_registered_user_is_not_taken_over() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    let user = register(&commands, "ada@example.com").await;
    sqlx::query("UPDATE user_credentials SET created_at = now() - interval '1 day'").execute(&db.pool).await.unwrap();

    assert_rejected(
        commands.register("corr".into(), registration("ada@example.com", "another password")).await,
        RegistrationRejection::EmailTaken,
    );
    assert_eq!(claims(&db.pool).await, [(user, "ada@example.com".to_string())]);
    assert_eq!(registered_events(&db.pool).await, [user.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takeovers_of_one_orphaned_claim_have_exactly_one_winner() {
    let db = TestDatabase::create().await;
    let credentials = Credentials::new(db.pool.clone());
    // Every pooled connection open first, so the contenders start together instead of one
    // after another as connections come up; and several rounds, each a race of its own.
    let warm = futures::future::join_all((0..4).map(|_| db.pool.acquire())).await;
    drop(warm);
    for round in 0..10 {
        let email = EmailAddress::parse(&format!("ada{round}@example.com")).unwrap();
        insert_claim(&db.pool, Uuid::new_v4(), email.as_str(), None, "10 minutes").await;
        let contenders: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let outcomes =
            futures::future::join_all(contenders.iter().map(|&id| credentials.claim(&email, id, "hash"))).await;
        let won: Vec<Uuid> =
            contenders.iter().zip(&outcomes).filter(|(_, o)| *o.as_ref().unwrap()).map(|(id, _)| *id).collect();
        assert_eq!(won.len(), 1, "round {round}: {outcomes:?}");
        let holder: Uuid = sqlx::query_scalar("SELECT user_id FROM user_credentials WHERE email = $1")
            .bind(email.as_str())
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(holder, won[0], "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_that_fails_to_record_its_event_releases_the_address() {
    let db = TestDatabase::create().await;
    let commands = commands(&db.pool);
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_events() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'event store unavailable'; END $$;
         CREATE TRIGGER refuse_events BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_events();",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let failed = commands.register("corr".into(), registration("ada@example.com", PASSWORD)).await;
    assert!(matches!(failed, Err(UseCaseError::Failed(Failure::Store(_)))), "{failed:?}");
    assert_eq!(claims(&db.pool).await, [], "the claim was not released");

    sqlx::query("DROP TRIGGER refuse_events ON events").execute(&db.pool).await.unwrap();
    let user = register(&commands, "ada@example.com").await;
    assert_eq!(claims(&db.pool).await, [(user, "ada@example.com".to_string())]);
}
