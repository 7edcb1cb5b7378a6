//! What every process offers operators: `/health` and `/metrics` on a small listener of
//! its own (processes without the API), the metric probes that refresh gauges read from
//! elsewhere at scrape time, and periodic background jobs.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

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

/// A listener with `/health` and `/metrics` for processes without the API (relay,
/// projectors), so every process can be probed and scraped. Returns the bound port.
pub fn ops_server(host: &str, port: u16, scrape: Scrape) -> std::io::Result<(u16, Server)> {
    let listener = TcpListener::bind((host, port))?;
    let port = listener.local_addr()?.port();
    let scrape = web::Data::new(scrape);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(scrape.clone())
            .route("/health", web::get().to(|| async { health_response() }))
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
