//! Start-up against a database that does not exist yet: any number of processes may
//! prepare it at once (issue 6, item 9), and no failure shows a password.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_infra::postgres;
use colloquy_infra::settings::DatabaseSettings;
use sqlx::migrate::MigrateDatabase;

fn fresh_database() -> DatabaseSettings {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    DatabaseSettings {
        url: format!("postgres://postgres:postgres@127.0.0.1:5432/colloquy_test_start_{}", &tag[..12]),
        max_connections: 2,
        ..Default::default()
    }
}

/// Drops the database when the test ends, also when it fails.
struct Drop(String);

impl std::ops::Drop for Drop {
    fn drop(&mut self) {
        let url = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { sqlx::Postgres::force_drop_database(&url).await })
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_starting_together_on_a_missing_database_all_succeed() {
    let settings = fresh_database();
    let _drop = Drop(settings.url.clone());
    assert!(!sqlx::Postgres::database_exists(&settings.url).await.unwrap());

    // Eight start-ups at the same moment, as `serve`, `relay` and `project` (and their
    // replicas) do when started together on a fresh server.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let (settings, barrier) = (settings.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                postgres::prepare(&settings).await
            })
        })
        .collect();
    let mut created = 0;
    for start in starts {
        match start.await.unwrap() {
            Ok(true) => created += 1,
            Ok(false) => {}
            Err(e) => panic!("a concurrent start-up failed: {e:?}"),
        }
    }
    assert_eq!(created, 1, "exactly one process creates the database");

    // It is migrated: every migration is recorded once, and the event store is there.
    let pool = postgres::connect(&settings).await.unwrap();
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success").fetch_one(&pool).await.unwrap();
    assert_eq!(applied, postgres::MIGRATOR.iter().count() as i64);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap();
    assert_eq!(events, 0);
    pool.close().await;

    // A later start finds it ready and changes nothing.
    assert!(!postgres::prepare(&settings).await.unwrap());
}

/// The whole error chain as printed (`anyhow`'s `{:#}` shows the same).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_its_password() {
    // Nothing listens on port 1.
    let settings =
        DatabaseSettings { url: "postgres://app:s3cret-pw@127.0.0.1:1/colloquy".into(), ..Default::default() };
    let e = postgres::prepare(&settings).await.unwrap_err();
    let printed = format!("{} / {e:?}", chain(&e));
    assert!(printed.contains("postgres://app:***@127.0.0.1:1/colloquy"), "{printed}");
    assert!(!printed.contains("s3cret-pw"), "{printed}");
    let e = postgres::connect(&settings).await.unwrap_err();
    let printed = format!("{} / {e:?}", chain(&e));
    assert!(printed.contains("app:***@127.0.0.1:1"), "{printed}");
    assert!(!printed.contains("s3cret-pw"), "{printed}");
}

#[tokio::test]
async fn a_wrong_password_is_not_repeated() {
    let settings = DatabaseSettings {
        url: "postgres://no_such_role_c1:s3cret-pw@127.0.0.1:5432/colloquy".into(),
        ..Default::default()
    };
    let e = postgres::connect(&settings).await.unwrap_err();
    let printed = format!("{} / {e:?}", chain(&e));
    assert!(printed.contains("no_such_role_c1:***@127.0.0.1:5432"), "{printed}");
    assert!(!printed.contains("s3cret-pw"), "{printed}");
}
