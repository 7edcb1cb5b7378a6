//! What every process offers operators: `/health` and `/metrics` on a small listener of
//! its own (processes without the API), the metric probes that refresh gauges read from
//! elsewhere at scrape time, and periodic background jobs.

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Refreshes gauges whose truth lives outside this process (relay lag is read from
/// Postgres), just before the metrics are rendered.
#[async_trait::async_trait]
pub trait Probe: Send + Sync {
    /// Updates `metrics`; a failure is logged and leaves the last value.
    async fn refresh(&self, metrics: &Metrics);
}

/// The metrics of a process together with its probes.
#[derive(Clone, Default)]
pub struct Scrape {
    /// The process's metrics.
    pub metrics: Metrics,
    probes: Vec<Arc<dyn Probe>>,
}

impl Scrape {
    /// `metrics` with no probes.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics, probes: Vec::new() }
    }

    /// Adds a probe run at every scrape.
    pub fn with_probe(mut self, probe: Arc<dyn Probe>) -> Self {
        self.probes.push(probe);
        self
    }

    /// Runs the probes, then renders every metric in the Prometheus text format.
    pub async fn render(&self) -> String {
        for probe in &self.probes {
            probe.refresh(&self.metrics).await;
        }
        self.metrics.render()
    }
}

/// The Prometheus text-format response for `scrape`.
pub async fn metrics_response(scrape: &Scrape) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(scrape.render().await)
}

/// The liveness answer every process gives.
pub fn health_response() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// A value computed at most once per `ttl`, by one caller at a time: callers arriving while
/// it is computed wait for that computation instead of starting their own. Readiness
/// probes use it so a flood of them costs one check per `ttl`.
pub struct Cached<T> {
    ttl: Duration,
    last: tokio::sync::Mutex<Option<(Instant, T)>>,
    computations: AtomicU64,
}

impl<T: Clone> Cached<T> {
    /// Nothing cached yet; answers are reused for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, last: tokio::sync::Mutex::new(None), computations: AtomicU64::new(0) }
    }

    /// The cached value if younger than `ttl`, else the value `compute` yields (cached).
    pub async fn get_or<F, Fut>(&self, compute: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, value)) = last.as_ref() {
            if at.elapsed() < self.ttl {
                return value.clone();
            }
        }
        self.computations.fetch_add(1, Ordering::Relaxed);
        let value = compute().await;
        *last = Some((Instant::now(), value.clone()));
        value
    }

    /// How many times a value was computed.
    pub fn computations(&self) -> u64 {
        self.computations.load(Ordering::Relaxed)
    }
}

/// One dependency a process needs to do its work, checked by `/health/ready`.
#[async_trait::async_trait]
pub trait Check: Send + Sync {
    /// Whether the dependency answers now (bounded in time by the check itself).
    async fn check(&self) -> bool;
}

/// How long one dependency check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// PostgreSQL answers `SELECT 1`.
pub struct PostgresCheck(pub sqlx::PgPool);

#[async_trait::async_trait]
impl Check for PostgresCheck {
    async fn check(&self) -> bool {
        matches!(tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&self.0)).await, Ok(Ok(_)))
    }
}

/// Redis answers `PING`.
pub struct RedisCheck(pub crate::redis_store::RedisStore);

#[async_trait::async_trait]
impl Check for RedisCheck {
    async fn check(&self) -> bool {
        matches!(tokio::time::timeout(CHECK_TIMEOUT, self.0.ping()).await, Ok(Ok(())))
    }
}

/// The broker answers a metadata request (one client, answers cached for a second).
#[async_trait::async_trait]
impl Check for crate::kafka::KafkaHealth {
    async fn check(&self) -> bool {
        crate::kafka::KafkaHealth::check(self).await
    }
}

/// The answer of `/health/ready`: every named check of what this process uses, run
/// together, the whole answer reused for a second.
#[derive(Clone)]
pub struct Readiness {
    checks: Vec<(&'static str, Arc<dyn Check>)>,
    answer: Arc<Cached<(bool, serde_json::Value)>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self { checks: Vec::new(), answer: Arc::new(Cached::new(Duration::from_secs(1))) }
    }
}

impl Readiness {
    /// Adds a check named `name` in the answer.
    pub fn with(mut self, name: &'static str, check: Arc<dyn Check>) -> Self {
        self.checks.push((name, check));
        self
    }

    /// Whether every check passed, and the JSON body naming each check's outcome.
    pub async fn evaluate(&self) -> (bool, serde_json::Value) {
        self.answer
            .get_or(|| async {
                let outcomes = futures::future::join_all(self.checks.iter().map(|(_, c)| c.check())).await;
                let status = |ok: bool| if ok { "ok" } else { "unavailable" };
                let all = outcomes.iter().all(|ok| *ok);
                let checks: serde_json::Map<String, serde_json::Value> = self
                    .checks
                    .iter()
                    .zip(&outcomes)
                    .map(|((name, _), ok)| ((*name).to_string(), status(*ok).into()))
                    .collect();
                (all, serde_json::json!({"status": status(all), "checks": checks}))
            })
            .await
    }

    /// 200 when every check passed, 503 otherwise, with the body of [`Readiness::evaluate`].
    pub async fn response(&self) -> HttpResponse {
        match self.evaluate().await {
            (true, body) => HttpResponse::Ok().json(body),
            (false, body) => HttpResponse::ServiceUnavailable().json(body),
        }
    }
}

/// A listener with `/health`, `/health/ready` (the `readiness` checks) and `/metrics` for
/// processes without the API (relay, projectors), so every process can be probed and
/// scraped. Returns the bound port.
pub fn ops_server(host: &str, port: u16, scrape: Scrape, readiness: Readiness) -> std::io::Result<(u16, Server)> {
    let listener = TcpListener::bind((host, port))?;
    let port = listener.local_addr()?.port();
    let scrape = web::Data::new(scrape);
    let readiness = web::Data::new(readiness);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(scrape.clone())
            .app_data(readiness.clone())
            .route("/health", web::get().to(|| async { health_response() }))
            .route("/health/ready", web::get().to(|r: web::Data<Readiness>| async move { r.response().await }))
            .route("/metrics", web::get().to(|s: web::Data<Scrape>| async move { metrics_response(&s).await }))
    })
    .workers(1)
    .listen(listener)?
    .disable_signals()
    .run();
    Ok((port, server))
}

/// Runs `job` now and then every `period` until `shutdown`; `job` logs its own outcome.
pub async fn every<F, Fut>(period: Duration, shutdown: CancellationToken, mut job: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        job().await;
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
