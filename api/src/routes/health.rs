//! `GET /health` (liveness), `GET /health/ready` (dependencies), `GET /metrics`.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use colloquy_infra::ops;
use serde_json::json;

use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200)))]
pub async fn get_health() -> HttpResponse {
    ops::health_response()
}

/// Postgres, Redis and Kafka all answer.
#[utoipa::path(get, path = "/health/ready", tag = "operations", responses((status = 200), (status = 503)))]
pub async fn get_ready(state: web::Data<AppState>) -> HttpResponse {
    let postgres = tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&state.pool)).await;
    let postgres = matches!(postgres, Ok(Ok(_)));
    let redis = matches!(tokio::time::timeout(Duration::from_secs(2), state.redis.ping()).await, Ok(Ok(())));
    let kafka = colloquy_infra::kafka::check(&state.settings.kafka, Duration::from_secs(2)).await.is_ok();
    let status = |ok: bool| if ok { "ok" } else { "unavailable" };
    let body = json!({
        "status": status(postgres && redis && kafka),
        "checks": {"postgres": status(postgres), "redis": status(redis), "kafka": status(kafka)},
    });
    if postgres && redis && kafka {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics (relay lag among them, measured at scrape time).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain")))]
pub async fn get_metrics(state: web::Data<AppState>) -> HttpResponse {
    ops::metrics_response(&state.scrape).await
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/health", "GET").route(web::get().to(get_health)))
        .service(super::resource("/health/ready", "GET").route(web::get().to(get_ready)))
        .service(super::resource("/metrics", "GET").route(web::get().to(get_metrics)));
}
