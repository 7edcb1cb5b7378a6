//! The OpenAPI document, generated from the handlers' annotations, and its route.

use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use actix_web::{web, HttpResponse};

use crate::errors::{ErrorBody, ErrorCode, ErrorDetail};
use crate::routes::{api_keys, auth, branches, conversations, files, health, knowledge, replies, shares, users, ws};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Declares what every route shares, so the document is complete without repeating it on
/// each handler: the `{id}` path parameter, and the error responses any route can give.
struct CommonResponses;

fn error_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
        .build()
        .into()
}

fn add_errors(op: &mut Operation, secured: bool, with_body: bool, with_id: bool, changes: bool) {
    let mut common = vec![
        ("400", "malformed request (JSON, query or header)"),
        ("429", "rate limited (see Retry-After), or a per-user quota exceeded"),
        ("500", "unexpected failure; the x-request-id header identifies it"),
        ("503", "a dependency is unavailable, or the read model did not reach min_version in time"),
    ];
    if secured {
        common.push(("401", "missing, invalid or expired access token"));
    }
    if with_body {
        common.push(("413", "body larger than the limit"));
        common.push(("415", "body is not application/json"));
        common.push(("422", "well-formed but invalid request"));
    }
    if with_id {
        common.push(("404", "no such object for this user"));
    }
    if with_id && changes {
        common.push(("409", "the object's state forbids this (deleted, archived, ...)"));
    }
    for (code, description) in common {
        op.responses.responses.entry(code.to_string()).or_insert_with(|| error_response(description));
    }
}

/// What `{id}` names on `path`.
fn id_description(path: &str) -> &'static str {
    if path.starts_with("/api/v1/files/") {
        "The file's id"
    } else if path.starts_with("/api/v1/knowledge/") {
        "The knowledge document's id"
    } else {
        "The conversation's id"
    }
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let with_id = path.contains("{id}");
            if with_id {
                let id = ParameterBuilder::new()
                    .name("id")
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .description(Some(id_description(path)))
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
                    ))
                    .build();
                item.parameters.get_or_insert_with(Vec::new).push(id);
            }
            if !path.starts_with("/api/") {
                continue;
            }
            if let Some(op) = item.get.as_mut() {
                add_errors(op, op.security.is_some(), false, with_id, false);
            }
            for op in [&mut item.post, &mut item.patch, &mut item.delete, &mut item.put].into_iter().flatten() {
                let (secured, with_body) = (op.security.is_some(), op.request_body.is_some());
                add_errors(op, secured, with_body, with_id, true);
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "colloquy", description = "Event-sourced AI chat backend. Errors are {\"error\": {\"code\", \"message\"}}."),
    modifiers(&BearerAuth, &CommonResponses),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode)),
    paths(
        auth::post_register, auth::post_login, auth::post_refresh, auth::post_logout,
        users::get_me, users::patch_me, users::delete_me, users::get_usage,
        api_keys::post_api_key, api_keys::get_api_keys, api_keys::delete_api_key,
        conversations::post_conversation, conversations::get_conversations, conversations::get_conversation,
        conversations::patch_conversation, conversations::post_archive, conversations::post_unarchive,
        conversations::delete_conversation, conversations::post_message, conversations::get_messages,
        conversations::get_events, conversations::get_export, conversations::post_import, branches::post_edit, branches::post_regenerate, branches::post_activate,
        files::post_file, files::get_files, files::get_file, files::get_file_content, files::delete_file,
        knowledge::post_document, knowledge::get_documents, knowledge::get_document, knowledge::patch_document,
        knowledge::delete_document, knowledge::get_search,
        replies::get_reply_stream, replies::post_cancel, ws::get_ws,
        shares::post_share, shares::get_shares, shares::delete_share, shares::get_shared,
        health::get_health, health::get_ready, health::get_metrics,
    )
)]
struct ApiDoc;

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /openapi.json`.
pub async fn get_openapi() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

/// Registers `/openapi.json`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::routes::resource("/openapi.json", "GET").route(web::get().to(get_openapi)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients learn the codes from the document: it lists every one the API declares.
    #[test]
    fn the_document_lists_every_error_code() {
        let doc = serde_json::to_value(document()).unwrap();
        let listed: Vec<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("no ErrorCode enum in {}", doc["components"]["schemas"]))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let declared: Vec<String> =
            ErrorCode::ALL.iter().map(|c| serde_json::to_value(c).unwrap().as_str().unwrap().to_string()).collect();
        assert_eq!(listed, declared, "ErrorCode::ALL and the enum differ");
        assert_eq!(
            doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["$ref"],
            "#/components/schemas/ErrorCode"
        );
    }
}
