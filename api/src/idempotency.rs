//! `Idempotency-Key` on command routes: the same key with the same request answers the
//! recorded response without running the command again; the same key with a different
//! request is a 422; a key whose first request is still running is a 409.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::errors::ApiError;
use crate::state::AppState;

/// The header name.
pub const HEADER: &str = "Idempotency-Key";

/// Runs `command` at most once per (user, key).
pub async fn once<F, Fut>(
    state: &AppState,
    user: Uuid,
    req: &HttpRequest,
    body: &Value,
    command: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(StatusCode, Value), ApiError>>,
{
    let Some(key) = req.headers().get(HEADER) else {
        return command().await.map(|(status, body)| HttpResponse::build(status).json(body));
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be 1 to 200 visible characters")
        })?
        .to_string();
    let mut hasher = Sha256::new();
    hasher.update(req.method().as_str());
    hasher.update(b" ");
    hasher.update(req.path());
    hasher.update(b"\n");
    hasher.update(serde_json::to_vec(body).unwrap_or_default());
    let hash = hex::encode(hasher.finalize());

    // A key is remembered for `idempotency_ttl_hours`; after that it may be used afresh.
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, key) DO UPDATE
            SET request_hash = EXCLUDED.request_hash, status_code = NULL, response_body = NULL, created_at = now()
          WHERE idempotency_keys.created_at < now() - make_interval(hours => $4)",
    )
    .bind(user)
    .bind(&key)
    .bind(&hash)
    .bind(state.settings.http.idempotency_ttl_hours as i32)
    .execute(&state.pool)
    .await?
    .rows_affected()
        == 1;
    if !claimed {
        let (stored_hash, status, response): (String, Option<i16>, Option<Value>) = sqlx::query_as(
            "SELECT request_hash, status_code, response_body FROM idempotency_keys WHERE user_id = $1 AND key = $2",
        )
        .bind(user)
        .bind(&key)
        .fetch_one(&state.pool)
        .await?;
        if stored_hash != hash {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            ));
        }
        let (Some(status), Some(response)) = (status, response) else {
            return Err(ApiError::Conflict {
                code: "request_in_progress",
                message: "a request with this Idempotency-Key is still being processed".into(),
            });
        };
        let status = StatusCode::from_u16(status as u16).map_err(ApiError::internal)?;
        return Ok(HttpResponse::build(status).insert_header(("Idempotent-Replayed", "true")).json(response));
    }

    let outcome = command().await;
    let (status, response) = match &outcome {
        Ok((status, body)) => (*status, body.clone()),
        // A client error is part of the answer and is replayed; a server error is not
        // final, so the key is released for a retry.
        Err(e) if e.status_code().is_client_error() => {
            (e.status_code(), serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}}))
        }
        Err(_) => {
            sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2")
                .bind(user)
                .bind(&key)
                .execute(&state.pool)
                .await?;
            return outcome.map(|(s, b)| HttpResponse::build(s).json(b));
        }
    };
    sqlx::query("UPDATE idempotency_keys SET status_code = $3, response_body = $4 WHERE user_id = $1 AND key = $2")
        .bind(user)
        .bind(&key)
        .bind(status.as_u16() as i16)
        .bind(&response)
        .execute(&state.pool)
        .await?;
    outcome.map(|(s, b)| HttpResponse::build(s).json(b))
}

/// Deletes remembered keys older than `ttl_hours`; returns how many.
pub async fn purge_expired(pool: &sqlx::PgPool, ttl_hours: u32) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)")
        .bind(ttl_hours as i32)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
