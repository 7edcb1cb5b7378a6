//! The HTTP API (actix-web): command and query routes, authentication, rate limits,
//! health, metrics and the OpenAPI document.

pub mod auth;
pub mod body;
pub mod errors;
pub mod idempotency;
pub mod openapi;
pub mod rate_limit;
pub mod requests;
pub mod routes;
pub mod state;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Server, Service};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, App, HttpMessage, HttpServer};
use colloquy_commands::command_service::SNAPSHOT_EVERY;
use colloquy_commands::credentials::Credentials;
use colloquy_commands::CommandService;
use colloquy_domain::conversation::ConversationServices;
use colloquy_infra::event_log::EventStoreMessages;
use colloquy_infra::metrics::Metrics;
use colloquy_infra::passwords::PasswordHasher;
use colloquy_infra::redis_store::RedisStore;
use colloquy_infra::Settings;
use sqlx::PgPool;
use tracing_actix_web::{RequestId, TracingLogger};

use crate::errors::ApiError;
use crate::state::AppState;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen: {0}")]
    Bind(#[from] std::io::Error),
    /// The token keys are misconfigured.
    #[error(transparent)]
    Keys(#[from] auth::TokenConfigError),
}

/// A bound, not yet awaited, API server.
pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Builds the app and binds its port (0 picks a free one).
    pub fn build(settings: Settings, pool: PgPool, redis: RedisStore, metrics: Metrics) -> Result<Self, StartError> {
        let listener = TcpListener::bind((settings.http.host.as_str(), settings.http.port))?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(AppState {
            users: CommandService::event_sourced(pool.clone(), (), metrics.clone()),
            conversations: CommandService::snapshotted(
                pool.clone(),
                ConversationServices::new(Arc::new(EventStoreMessages::new(pool.clone()))),
                metrics.clone(),
                SNAPSHOT_EVERY,
            ),
            credentials: Credentials::new(pool.clone(), PasswordHasher::new(settings.auth.hash_concurrency)),
            tokens: auth::Tokens::new(&settings.auth)?,
            limiter: rate_limit::RateLimiter::new(redis.clone(), settings.rate_limit.clone()),
            settings: settings.clone(),
            pool,
            redis,
            metrics,
        });
        let json_limit = settings.http.json_limit_bytes;
        let mut server = HttpServer::new(move || {
            let metrics = state.metrics.clone();
            App::new()
                .app_data(state.clone())
                .app_data(body::json_config(json_limit))
                .app_data(web::PathConfig::default().error_handler(|_, _| ApiError::NotFound("resource").into()))
                .app_data(
                    web::QueryConfig::default()
                        .error_handler(|e, _| ApiError::bad_request("invalid_query", e.to_string()).into()),
                )
                .configure(routes::configure)
                .configure(routes::health::configure)
                .default_service(web::to(|| async { Err::<actix_web::HttpResponse, _>(ApiError::NotFound("route")) }))
                .wrap_fn(move |req, srv| {
                    // Request metrics, labelled by route pattern (not raw path: bounded cardinality).
                    let started = Instant::now();
                    let method = req.method().to_string();
                    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
                    let request_id = req.extensions().get::<RequestId>().map(|r| r.to_string());
                    let metrics = metrics.clone();
                    let fut = srv.call(req);
                    async move {
                        let mut res = fut.await?;
                        metrics.http_requests.with_label_values(&[&method, &route, res.status().as_str()]).inc();
                        metrics
                            .http_latency
                            .with_label_values(&[&method, &route])
                            .observe(started.elapsed().as_secs_f64());
                        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
                            res.headers_mut().insert(HeaderName::from_static("x-request-id"), id);
                        }
                        Ok(res)
                    }
                })
                .wrap(TracingLogger::default())
        })
        .listen(listener)?
        .shutdown_timeout(settings.http.shutdown_timeout_secs)
        .disable_signals();
        if settings.http.workers > 0 {
            server = server.workers(settings.http.workers);
        }
        Ok(Self { port, server: server.run() })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server gracefully (in-flight requests finish).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// A small listener with `/health` and `/metrics` for processes without the API (relay,
/// projectors), so every process can be probed and scraped.
pub fn ops_server(host: &str, port: u16, metrics: Metrics) -> std::io::Result<(u16, Server)> {
    let listener = TcpListener::bind((host, port))?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        let metrics = metrics.clone();
        App::new().route("/health", web::get().to(routes::health::get_health)).route(
            "/metrics",
            web::get().to(move || {
                let body = metrics.render();
                async move { actix_web::HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(body) }
            }),
        )
    })
    .workers(1)
    .listen(listener)?
    .disable_signals()
    .run();
    Ok((port, server))
}
