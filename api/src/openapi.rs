//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{auth, conversations, health, users};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "colloquy", description = "Event-sourced AI chat backend. Errors are {\"error\": {\"code\", \"message\"}}."),
    modifiers(&BearerAuth),
    paths(
        auth::post_register, auth::post_login,
        users::get_me, users::patch_me, users::delete_me,
        conversations::post_conversation, conversations::get_conversations, conversations::get_conversation,
        conversations::patch_conversation, conversations::post_archive, conversations::post_unarchive,
        conversations::delete_conversation, conversations::post_message, conversations::get_messages,
        conversations::get_events,
        health::get_health, health::get_ready, health::get_metrics,
    )
)]
struct ApiDoc;

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
