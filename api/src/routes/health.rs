//! `GET /health` (liveness), `GET /health/ready` (dependencies), `GET /metrics`.

use std::sync::{Arc, OnceLock};

use actix_web::{web, HttpResponse};
use colloquy_infra::ops::{self, PostgresCheck, Readiness, RedisCheck};

use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200)))]
pub async fn get_health() -> HttpResponse {
    ops::health_response()
}

/// Postgres and Redis, which every request path uses, answer. Kafka is not checked: no
/// request of the API uses it (the relay and the projectors check it on their own ops
/// listeners), so a broker outage must not take the API out of its load balancer. The
/// answer is reused for a second, so a flood of probes costs one check a second.
#[utoipa::path(get, path = "/health/ready", tag = "operations", responses((status = 200), (status = 503)))]
pub async fn get_ready(state: web::Data<AppState>, readiness: web::Data<OnceLock<Readiness>>) -> HttpResponse {
    readiness
        .get_or_init(|| {
            Readiness::default()
                .with("postgres", Arc::new(PostgresCheck(state.pool.clone())))
                .with("redis", Arc::new(RedisCheck(state.redis.clone())))
        })
        .response()
        .await
}

/// Prometheus metrics (relay lag among them, measured at scrape time).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain")))]
pub async fn get_metrics(state: web::Data<AppState>) -> HttpResponse {
    ops::metrics_response(&state.scrape).await
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::Data::new(OnceLock::<Readiness>::new()))
        .service(super::resource("/health", "GET").route(web::get().to(get_health)))
        .service(super::resource("/health/ready", "GET").route(web::get().to(get_ready)))
        .service(super::resource("/metrics", "GET").route(web::get().to(get_metrics)));
}
