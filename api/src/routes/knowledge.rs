//! The knowledge base: documents made from text or from an uploaded file (create, list,
//! get, revise, delete) and search over their indexed passages.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use colloquy_commands::knowledge::{CreateDocument, DocumentAccepted, ReviseDocument};
use colloquy_domain::knowledge::{normalise_tags, DocumentSource};
use colloquy_infra::knowledge_index::{self, EmbeddingSpace, Passage, SearchMode, SearchQuery};
use colloquy_projections::knowledge_queries::{DocumentPage, DocumentSummary};
use colloquy_projections::queries::ListDocuments;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Freshness;
use crate::auth::Authenticated;
use crate::body::parse;
use crate::errors::{ApiError, ErrorCode};
use crate::requests::answer;
use crate::state::AppState;

/// Most passages one search returns.
pub const MAX_PASSAGES: usize = 50;
/// Most characters of a search's words.
pub const MAX_QUERY_CHARS: usize = 1000;

/// Create a knowledge document from text or from one of the caller's files (exactly one).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Client-chosen id (optional; makes retries safe without an Idempotency-Key).
    pub id: Option<Uuid>,
    /// The title.
    #[schema(min_length = 1, max_length = 200)]
    pub title: String,
    /// Tags (compared case-insensitively; stored in lower case).
    #[serde(default)]
    pub tags: Vec<String>,
    /// A category.
    pub category: Option<String>,
    /// The text (or give `file_id`).
    pub text: Option<String>,
    /// An uploaded file of the caller's whose text the document holds (or give `text`).
    pub file_id: Option<Uuid>,
}

/// Revise a knowledge document: each field given replaces the old one; a new `text` makes a
/// new version, indexed again.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviseRequest {
    /// A new title.
    pub title: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// A new category; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub category: Option<Option<String>>,
    /// A new text (documents made from text only).
    pub text: Option<String>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`, by `default`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Document filters and paging.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only documents with this tag (any case).
    pub tag: Option<String>,
    /// Only documents in this category.
    pub category: Option<String>,
    /// Page size (1..=100, default 20).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// How a search ranks passages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Words only (PostgreSQL full-text search).
    Text,
    /// Meaning only (embedding similarity).
    Vector,
    /// Both, fused by reciprocal rank (the default; words only when this instance has no
    /// embedder).
    #[default]
    Hybrid,
}

/// A search of the caller's knowledge base.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct SearchParams {
    /// The words (web-search syntax: `"exact phrase"`, `or`, `-excluded`).
    pub q: String,
    /// Passages wanted (1..=50; default `knowledge.retrieval.passages`, 5).
    pub k: Option<usize>,
    /// `text`, `vector` or `hybrid` (default).
    pub mode: Option<Mode>,
    /// Only documents carrying every one of these tags (comma-separated, any case).
    pub tags: Option<String>,
}

/// A passage found.
#[derive(Serialize, ToSchema)]
pub struct Hit {
    /// The chunk.
    pub chunk_id: Uuid,
    /// Its document.
    pub document_id: Uuid,
    /// The document version it belongs to.
    pub version: u32,
    /// Its position in that version, from 0.
    pub position: u32,
    /// The document's title.
    pub title: String,
    /// The passage.
    pub content: String,
    /// A short extract, matched words in `<mark>`, everything else HTML-escaped.
    pub snippet: String,
    /// The fused score.
    pub score: f64,
    /// Rank among the word matches, from 1.
    pub text_rank: Option<u32>,
    /// Rank by meaning, from 1.
    pub vector_rank: Option<u32>,
}

impl From<Passage> for Hit {
    fn from(p: Passage) -> Self {
        Self {
            chunk_id: p.chunk_id,
            document_id: p.document_id,
            version: p.version,
            position: p.position,
            title: p.title,
            content: p.content,
            snippet: p.snippet,
            score: p.score,
            text_rank: p.text_rank,
            vector_rank: p.vector_rank,
        }
    }
}

/// What a search found.
#[derive(Serialize, ToSchema)]
pub struct SearchResult {
    /// The ranking used (`hybrid` falls back to `text` without an embedder).
    pub mode: Mode,
    /// The passages, best first.
    pub items: Vec<Hit>,
}

/// Creates a knowledge document; it is indexed in the background (`status` goes from
/// `indexing` to `ready` or `failed`).
#[utoipa::path(post, path = "/api/v1/knowledge", tag = "knowledge", request_body = CreateRequest,
    responses((status = 201, body = DocumentAccepted)), security(("bearer" = [])))]
pub async fn post_document(
    state: web::Data<AppState>,
    me: Authenticated,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let r: CreateRequest = parse(body.into_inner())?;
    let source = match (r.text, r.file_id) {
        (Some(text), None) => DocumentSource::Text { text },
        (None, Some(file_id)) => DocumentSource::File { file_id },
        _ => return Err(ApiError::new(ErrorCode::InvalidRequest, "give exactly one of text and file_id")),
    };
    let input = CreateDocument { id: r.id, title: r.title, tags: r.tags, category: r.category, source };
    let accepted = state.commands.create_document(&me.caller, input).await?;
    Ok(answer(StatusCode::CREATED, accepted))
}

/// The caller's knowledge documents, newest first.
#[utoipa::path(get, path = "/api/v1/knowledge", tag = "knowledge", params(ListQuery),
    responses((status = 200, body = DocumentPage)), security(("bearer" = [])))]
pub async fn get_documents(
    state: web::Data<AppState>,
    me: Authenticated,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let list = ListDocuments {
        tag: q.tag.as_deref(),
        category: q.category.as_deref(),
        cursor: q.cursor.as_deref(),
        limit: q.limit,
    };
    Ok(HttpResponse::Ok().json(state.queries.documents(me.user, list).await?))
}

/// One of the caller's knowledge documents.
#[utoipa::path(get, path = "/api/v1/knowledge/{id}", tag = "knowledge", params(Freshness),
    responses((status = 200, body = DocumentSummary)), security(("bearer" = [])))]
pub async fn get_document(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
    q: web::Query<Freshness>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.queries.document(me.user, *id, q.min_version).await?))
}

/// Revises one of the caller's knowledge documents.
#[utoipa::path(patch, path = "/api/v1/knowledge/{id}", tag = "knowledge", request_body = ReviseRequest,
    responses((status = 200, body = DocumentAccepted)), security(("bearer" = [])))]
pub async fn patch_document(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let r: ReviseRequest = parse(body.into_inner())?;
    let input = ReviseDocument { title: r.title, tags: r.tags, category: r.category, text: r.text };
    let accepted = state.commands.revise_document(&me.caller, *id, input).await?;
    Ok(answer(StatusCode::OK, accepted))
}

/// Deletes one of the caller's knowledge documents: it is gone from search at once.
#[utoipa::path(delete, path = "/api/v1/knowledge/{id}", tag = "knowledge",
    responses((status = 200, body = DocumentAccepted)), security(("bearer" = [])))]
pub async fn delete_document(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let accepted = state.commands.delete_document(&me.caller, *id).await?;
    Ok(answer(StatusCode::OK, accepted))
}

fn invalid_search(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidSearch, message)
}

/// Searches the passages of the caller's ready documents.
#[utoipa::path(get, path = "/api/v1/knowledge/search", tag = "knowledge", params(SearchParams),
    responses((status = 200, body = SearchResult)), security(("bearer" = [])))]
pub async fn get_search(
    state: web::Data<AppState>,
    me: Authenticated,
    q: web::Query<SearchParams>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    if q.q.trim().is_empty() || q.q.chars().count() > MAX_QUERY_CHARS {
        return Err(invalid_search(format!("q must hold between 1 and {MAX_QUERY_CHARS} characters")));
    }
    let k = q.k.unwrap_or(state.settings.knowledge.retrieval.passages);
    if !(1..=MAX_PASSAGES).contains(&k) {
        return Err(invalid_search(format!("k must be between 1 and {MAX_PASSAGES}")));
    }
    let tags = match q.tags {
        None => Vec::new(),
        // A tag no document can carry matches nothing.
        Some(tags) => match normalise_tags(&tags.split(',').map(str::to_string).collect::<Vec<_>>()) {
            Ok(tags) => tags,
            Err(_) => {
                return Ok(HttpResponse::Ok().json(SearchResult { mode: q.mode.unwrap_or_default(), items: vec![] }))
            }
        },
    };
    let asked = q.mode.unwrap_or_default();
    let (mode, embedding, space) = match (asked, &state.embedder) {
        (Mode::Text, _) | (Mode::Hybrid, None) => {
            let e = &state.settings.knowledge.embedder;
            (Mode::Text, None, EmbeddingSpace { model: e.model.clone(), dimension: e.dimension })
        }
        (Mode::Vector, None) => {
            return Err(ApiError::new(
                ErrorCode::EmbedderUnavailable,
                "this instance has no embedder for vector search",
            ))
        }
        (Mode::Vector | Mode::Hybrid, Some(embedder)) => {
            let vectors = embedder.embed(std::slice::from_ref(&q.q)).await.map_err(|e| {
                tracing::warn!(error = %e, "Embedding a search failed.");
                ApiError::new(ErrorCode::EmbedderUnavailable, "the embedder failed; retry, or search with mode=text")
            })?;
            let vector =
                vectors.into_iter().next().ok_or_else(|| ApiError::internal("the embedder returned no vector"))?;
            let space = embedder.space();
            (asked, Some(vector), space)
        }
    };
    let query = SearchQuery {
        owner_id: me.user,
        text: &q.q,
        embedding: embedding.as_deref(),
        space: &space,
        k,
        tags: &tags,
        mode: match mode {
            Mode::Text => SearchMode::Text,
            Mode::Vector => SearchMode::Vector,
            Mode::Hybrid => SearchMode::Hybrid,
        },
    };
    let passages = knowledge_index::search(&state.pool, &query).await.map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(SearchResult { mode, items: passages.into_iter().map(Hit::from).collect() }))
}

/// Registers the routes (search before `{id}`, which it would otherwise match).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/knowledge/search", "GET").route(web::get().to(get_search)))
        .service(
            super::resource("/knowledge", "GET, POST")
                .route(web::post().to(post_document))
                .route(web::get().to(get_documents)),
        )
        .service(
            super::resource("/knowledge/{id}", "GET, PATCH, DELETE")
                .route(web::get().to(get_document))
                .route(web::patch().to(patch_document))
                .route(web::delete().to(delete_document)),
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_tells_a_removed_category_from_an_untouched_one() {
        let removed: ReviseRequest = serde_json::from_value(serde_json::json!({"category": null})).unwrap();
        assert_eq!(removed.category, Some(None));
        let kept: ReviseRequest = serde_json::from_value(serde_json::json!({"title": "T"})).unwrap();
        assert_eq!(kept.category, None);
        let set: ReviseRequest = serde_json::from_value(serde_json::json!({"category": "Work"})).unwrap();
        assert_eq!(set.category, Some(Some("Work".into())));
    }
}
