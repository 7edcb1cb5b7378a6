//! The API's readiness depends only on what its requests use (issue 6, item 5): with the
//! Kafka broker unreachable, `serve` stays ready; a flood of probes is answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use colloquy::runtime::Processes;
use support::{create_database, isolated_settings, TestApp};

/// Drops the test's database and keys when it ends (its Kafka is unreachable: no topics).
struct Cleanup(colloquy_infra::Settings);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let settings = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                use sqlx::migrate::MigrateDatabase;
                let _ = sqlx::Postgres::force_drop_database(&settings.database.url).await;
                if let Ok(redis) = colloquy_infra::redis_store::RedisStore::connect(&settings.redis).await {
                    let _ = redis.delete_prefixed("").await;
                }
            })
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_is_ready_with_kafka_unreachable() {
    let mut settings = isolated_settings();
    // Nothing listens on port 1.
    settings.kafka.brokers = "127.0.0.1:1".into();
    let _cleanup = Cleanup(settings.clone());
    create_database(&settings).await;
    let app = TestApp::attach(settings, Processes { api: true, ..Default::default() }).await;

    let url = format!("{}/health/ready", app.base);
    let probes: Vec<_> = (0..100)
        .map(|_| {
            let (http, url) = (app.http.clone(), url.clone());
            tokio::spawn(async move { http.get(url).send().await.unwrap() })
        })
        .collect();
    for probe in probes {
        let response = probe.await.unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["checks"]["postgres"], "ok", "{body}");
        assert_eq!(body["checks"]["redis"], "ok", "{body}");
        assert!(body["checks"].get("kafka").is_none(), "the API does not use Kafka: {body}");
    }
    // And it serves: a registration goes through with the broker down.
    app.user().await;
}
