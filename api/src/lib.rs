//! The HTTP API (actix-web): command and query routes, authentication, rate limits,
//! reply streams over SSE and WebSocket, health, metrics and the OpenAPI document.

pub mod auth;
pub mod body;
pub mod error_code;
pub mod errors;
pub mod openapi;
pub mod rate_limit;
pub mod requests;
pub mod routes;
pub mod state;
pub mod streams;
pub mod tokens;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{Server, Service};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, App, HttpMessage, HttpServer};
use colloquy_commands::models::ModelCatalog;
use colloquy_commands::{CommandSettings, Commands};
use colloquy_infra::file_storage::FileStorage;
use colloquy_infra::ops::Scrape;
use colloquy_infra::redis_store::RedisStore;
use colloquy_infra::reply_streams::ReplyStreams;
use colloquy_infra::Settings;
use colloquy_projections::queries::Queries;
use colloquy_providers::embeddings::Embedder;
use sqlx::PgPool;
use tracing_actix_web::{RequestId, TracingLogger};

use crate::errors::{ApiError, ErrorCode};
use crate::state::AppState;

/// Session-check statements in flight at once per API process. One: while it runs, the
/// checks of requests arriving meanwhile queue and the next statement answers all of them,
/// so the busier the process, the fewer statements per request (`session_checks_total` ÷
/// `session_check_statements_total` on `/metrics` is the mean batch). A request waits at
/// most for the statement in flight and its own.
const SESSION_CHECK_LANES: usize = 1;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen: {0}")]
    Bind(#[from] std::io::Error),
    /// The token keys are misconfigured.
    #[error(transparent)]
    Keys(#[from] tokens::TokenConfigError),
    /// `http.trusted_proxies` has an entry that is no address or network.
    #[error(transparent)]
    Proxies(#[from] requests::ProxyConfigError),
    /// File storage is misconfigured.
    #[error(transparent)]
    Storage(#[from] colloquy_infra::file_storage::StorageError),
    /// Built outside a Tokio runtime (the reply hub runs on it).
    #[error("the API must be built inside a Tokio runtime")]
    NoRuntime(#[from] tokio::runtime::TryCurrentError),
}

/// A bound, not yet awaited, API server.
pub struct Application {
    port: u16,
    server: Server,
    /// Stops the reply hub when the application is dropped (after serving, or unused).
    _hub: tokio_util::sync::DropGuard,
}

impl Application {
    /// Builds the app and binds its port (0 picks a free one). `scrape` serves `/metrics`;
    /// `embedder` (the knowledge base's) serves vector search, which answers
    /// `embedder_unavailable` without one.
    pub fn build(
        settings: Settings,
        pool: PgPool,
        redis: RedisStore,
        scrape: Scrape,
        embedder: Option<Arc<dyn Embedder>>,
    ) -> Result<Self, StartError> {
        // Checked before binding anything: a process with a known key must not start.
        let tokens = tokens::Tokens::new(&settings.auth)?;
        let proxies = web::Data::new(requests::TrustedProxies::parse(&settings.http.trusted_proxies)?);
        let storage = FileStorage::from_settings(&settings.storage)?;
        // The reply hub runs on the caller's runtime (not on an HTTP worker's).
        tokio::runtime::Handle::try_current()?;
        let listener = TcpListener::bind((settings.http.host.as_str(), settings.http.port))?;
        let port = listener.local_addr()?.port();
        let metrics = scrape.metrics.clone();
        let command_settings = CommandSettings {
            hash_concurrency: settings.auth.hash_concurrency,
            hash_queue: settings.auth.hash_queue,
            idempotency_ttl_hours: settings.http.idempotency_ttl_hours,
            refresh_token_ttl_secs: settings.auth.refresh_token_ttl_secs,
        };
        let wait = Duration::from_millis(settings.http.min_version_wait_ms);
        let streams = ReplyStreams::new(&redis, &settings.streams);
        let hub = crate::streams::hub::Hub::new();
        let hub_shutdown = tokio_util::sync::CancellationToken::new();
        hub.spawn(streams.clone(), hub_shutdown.clone());
        let commands = Commands::new(pool.clone(), metrics.clone(), command_settings)
            .with_idempotency_lease(Duration::from_secs(settings.http.idempotency_lease_secs))
            .with_quotas(settings.quotas)
            .with_models(ModelCatalog::new(
                settings.assistant.models.keys().cloned(),
                settings.assistant.default_model.clone(),
            ));
        // On this (the pool's) runtime, not on an HTTP worker's.
        let access = commands.access_checks(SESSION_CHECK_LANES, metrics.clone());
        let state = web::Data::new(AppState {
            commands,
            access,
            queries: Queries::new(pool.clone(), redis.clone(), metrics.clone(), wait),
            tokens,
            limiter: rate_limit::RateLimiter::new(redis.clone(), settings.rate_limit.clone()),
            settings: settings.clone(),
            scrape,
            pool,
            redis,
            streams,
            hub,
            storage,
            embedder,
        });
        let json_limit = settings.http.json_limit_bytes;
        let mut server = HttpServer::new(move || {
            let metrics = metrics.clone();
            App::new()
                .app_data(state.clone())
                .app_data(proxies.clone())
                .app_data(body::json_config(json_limit))
                .app_data(web::PathConfig::default().error_handler(|_, _| ApiError::not_found("resource").into()))
                .app_data(
                    web::QueryConfig::default()
                        .error_handler(|e, _| ApiError::new(ErrorCode::InvalidQuery, e.to_string()).into()),
                )
                .configure(routes::configure)
                .configure(routes::openai::configure)
                .configure(routes::health::configure)
                .configure(openapi::configure)
                .default_service(web::to(|| async { Err::<actix_web::HttpResponse, _>(ApiError::not_found("route")) }))
                .wrap_fn(move |req, srv| {
                    // Request metrics, labelled by route pattern (not raw path: bounded cardinality).
                    let started = Instant::now();
                    let method = req.method().to_string();
                    let route = match req.extensions().get::<requests::RoutePattern>() {
                        Some(requests::RoutePattern(route)) if route != "default" => route.clone(),
                        _ => "unmatched".into(),
                    };
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
                .wrap(TracingLogger::<requests::RootSpan>::new())
                // Outermost, so that every answer has it: errors, 404s and health included.
                .wrap(DefaultHeaders::new().add((header::X_CONTENT_TYPE_OPTIONS, "nosniff")))
        })
        .listen(listener)?
        .shutdown_timeout(settings.http.shutdown_timeout_secs)
        .disable_signals();
        if settings.http.workers > 0 {
            server = server.workers(settings.http.workers);
        }
        Ok(Self { port, server: server.run(), _hub: hub_shutdown.drop_guard() })
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
