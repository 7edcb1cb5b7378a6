//! `GET /health` (liveness), `GET /health/ready` (dependencies), `GET /metrics`,
//! `GET /openapi.json`.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200)))]
pub async fn get_health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
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

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain")))]
pub async fn get_metrics(state: web::Data<AppState>) -> HttpResponse {
    // Relay lag is read from Postgres at scrape time, so every API instance reports it
    // truthfully whichever process runs the relay.
    match colloquy_commands::relay::lag(&state.pool, &state.settings.relay.name).await {
        Ok(lag) => state.metrics.relay_lag_events.set(lag),
        Err(e) => tracing::warn!(error = %e, "Could not measure relay lag."),
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render())
}

/// The OpenAPI description of every route.
pub async fn get_openapi() -> HttpResponse {
    HttpResponse::Ok().json(crate::openapi::document())
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/health", "GET").route(web::get().to(get_health)))
        .service(super::resource("/health/ready", "GET").route(web::get().to(get_ready)))
        .service(super::resource("/metrics", "GET").route(web::get().to(get_metrics)))
        .service(super::resource("/openapi.json", "GET").route(web::get().to(get_openapi)));
}
