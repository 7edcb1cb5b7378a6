//! Uploaded files: upload (multipart, streamed to storage), list, get, download, delete.
//!
//! An upload is stored under a key colloquy makes from the owner and a fresh id (the
//! client's file name is kept for display only), counted and hashed as it streams, and
//! refused past `knowledge.uploads.max_bytes` with nothing kept. Its type is decided from
//! its first bytes, never from the client's Content-Type. Only then is the upload recorded
//! (a `FileUploaded` event); a refused upload's bytes are removed before answering.

use actix_multipart::{Multipart, MultipartError};
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use colloquy_commands::files::{FileAccepted, StoredUpload};
use colloquy_infra::file_storage::{self, PutError, StorageError, StorageKey};
use colloquy_projections::knowledge_queries::{FilePage, FileSummary};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use uuid::Uuid;

use super::Freshness;
use crate::auth::Authenticated;
use crate::errors::{ApiError, ErrorBody, ErrorCode};
use crate::requests::answer;
use crate::state::AppState;

/// The one part of an upload.
const FILE_PART: &str = "file";

/// What a multipart body may carry besides the file itself (boundaries, part headers).
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

/// The upload form (documentation type): one part named `file`, with a file name.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file's bytes; its `filename` is kept for display.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// File paging.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Page size (1..=100, default 20).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn invalid_upload(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidUpload, message)
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(ErrorCode::FileTooLarge, format!("the file is larger than the limit of {limit} bytes"))
}

fn multipart_error(e: MultipartError) -> ApiError {
    match e {
        MultipartError::ContentTypeMissing
        | MultipartError::ContentTypeParse
        | MultipartError::ContentTypeIncompatible => {
            ApiError::new(ErrorCode::UnsupportedMediaType, "upload the file as multipart/form-data")
        }
        other => invalid_upload(format!("the multipart body could not be read: {other}")),
    }
}

/// Removes what an upload stored when it is not recorded after all; a failure is logged
/// (the answer explains what happened to the request, which matters more).
async fn discard(state: &AppState, key: &StorageKey) {
    if let Err(e) = state.storage.delete(key).await {
        tracing::warn!(%key, error = %e, "Could not remove the bytes of a refused upload.");
    }
}

/// Uploads a file into the caller's knowledge base (`multipart/form-data`, one part named
/// `file`). It is extracted, chunked and indexed in the background: its `status` goes from
/// `processing` to `ready` or `failed`. An `Idempotency-Key` makes a retried upload of the
/// same bytes answer the first one's file.
#[utoipa::path(post, path = "/api/v1/files", tag = "files",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 201, body = FileAccepted), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_file(
    state: web::Data<AppState>,
    me: Authenticated,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let max = state.settings.knowledge.uploads.max_bytes;
    // A declared length past the limit is refused before a byte is read.
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max.saturating_add(MULTIPART_OVERHEAD)) {
        return Err(too_large(max));
    }
    let mut parts = Multipart::new(req.headers(), payload);
    let mut upload: Option<StoredUpload> = None;
    while let Some(part) = parts.next().await {
        if let Some(first) = &upload {
            // Anything after the file (another part, or a body cut short) refuses the upload.
            discard(&state, &storage_key(first)?).await;
            return Err(match part {
                Err(e) => multipart_error(e),
                Ok(_) => invalid_upload("the form must have exactly one part, named \"file\""),
            });
        }
        upload = Some(receive_part(&state, &me, part, max).await?);
    }
    let Some(upload) = upload else {
        return Err(invalid_upload("the form has no part named \"file\""));
    };
    let key = storage_key(&upload)?;
    let file_id = upload.file_id;
    match state.commands.upload_file(&me.caller, upload).await {
        Ok(accepted) => {
            if accepted.replayed && accepted.value.file_id != file_id {
                // A retry: the first upload is the file; these bytes are a copy.
                discard(&state, &key).await;
            }
            Ok(answer(StatusCode::CREATED, accepted))
        }
        Err(e) => {
            discard(&state, &key).await;
            Err(e.into())
        }
    }
}

fn storage_key(upload: &StoredUpload) -> Result<StorageKey, ApiError> {
    StorageKey::parse(&upload.storage_key).map_err(ApiError::internal)
}

/// Stores the first part of the form, which must be named `file`.
async fn receive_part(
    state: &AppState,
    me: &Authenticated,
    part: Result<actix_multipart::Field, MultipartError>,
    max: u64,
) -> Result<StoredUpload, ApiError> {
    let mut field = part.map_err(multipart_error)?;
    if field.name() != Some(FILE_PART) {
        return Err(invalid_upload("the form must have exactly one part, named \"file\""));
    }
    let file_name = field
        .content_disposition()
        .and_then(|d| d.get_filename())
        .map(str::to_string)
        .filter(|name| !name.trim().is_empty())
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidFileName, "the file part must have a file name"))?;
    let file_id = Uuid::new_v4();
    let key = file_storage::file_key(me.user, file_id);
    let stored = state.storage.put_stream(&key, field.by_ref(), max).await.map_err(|e| match e {
        PutError::TooLarge { limit } => too_large(limit),
        PutError::Source(e) => multipart_error(e),
        PutError::Backend(e) => ApiError::internal(e),
    })?;
    let format = match colloquy_extract::sniff(&stored.head, Some(&file_name)) {
        Ok(format) => format,
        Err(unsupported) => {
            discard(state, &key).await;
            return Err(ApiError::new(ErrorCode::UnsupportedFileType, unsupported.message()));
        }
    };
    Ok(StoredUpload {
        file_id,
        file_name,
        media_type: format.media_type().to_string(),
        size_bytes: stored.size,
        sha256: stored.sha256,
        storage_key: key.as_str().to_string(),
    })
}

/// The caller's files, newest first.
#[utoipa::path(get, path = "/api/v1/files", tag = "files", params(ListQuery),
    responses((status = 200, body = FilePage)), security(("bearer" = [])))]
pub async fn get_files(
    state: web::Data<AppState>,
    me: Authenticated,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.queries.files(me.user, q.cursor.as_deref(), q.limit).await?))
}

/// One of the caller's files, with its processing status.
#[utoipa::path(get, path = "/api/v1/files/{id}", tag = "files", params(Freshness),
    responses((status = 200, body = FileSummary)), security(("bearer" = [])))]
pub async fn get_file(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
    q: web::Query<Freshness>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.queries.file(me.user, *id, q.min_version).await?))
}

/// The file's bytes, as an attachment of the type decided at upload.
#[utoipa::path(get, path = "/api/v1/files/{id}/content", tag = "files",
    responses((status = 200, description = "the file's bytes", content_type = "application/octet-stream")),
    security(("bearer" = [])))]
pub async fn get_file_content(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let file = state.queries.file(me.user, *id, None).await?;
    let download = match state.storage.get_stream(&file_storage::file_key(me.user, file.file_id)).await {
        Ok(download) => download,
        // Deleted a moment ago: the bytes go right after the event, before the read model
        // has caught up with it.
        Err(StorageError::NotFound) => return Err(ApiError::not_found("file")),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let disposition = ContentDisposition {
        disposition: DispositionType::Attachment,
        parameters: vec![
            DispositionParam::Filename(ascii_file_name(&file.file_name)),
            DispositionParam::FilenameExt(header::ExtendedValue {
                charset: header::Charset::Ext("UTF-8".into()),
                language_tag: None,
                value: file.file_name.clone().into_bytes(),
            }),
        ],
    };
    Ok(HttpResponse::Ok()
        .content_type(file.media_type.as_str())
        .insert_header(disposition)
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        // Should a browser render it after all, it runs nothing.
        .insert_header((header::CONTENT_SECURITY_POLICY, "sandbox"))
        .no_chunking(download.size)
        .streaming(download.stream.map_err(ApiError::internal)))
}

/// The file name for clients that read only `filename=`: printable ASCII, quotes and
/// backslashes replaced (the UTF-8 `filename*=` carries the real one).
fn ascii_file_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect()
}

/// Deletes one of the caller's files and its stored bytes. Knowledge documents made from it
/// keep their indexed text until they are deleted themselves.
#[utoipa::path(delete, path = "/api/v1/files/{id}", tag = "files",
    responses((status = 200, body = FileAccepted)), security(("bearer" = [])))]
pub async fn delete_file(
    state: web::Data<AppState>,
    me: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let accepted = state.commands.delete_file(&me.caller, *id).await?;
    // After the event: a failed delete of the bytes leaves an orphan to sweep, never a
    // listed file without its content.
    let key = file_storage::file_key(me.user, *id);
    discard(&state, &file_storage::text_key_for(&key)).await;
    discard(&state, &key).await;
    Ok(answer(StatusCode::OK, accepted))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/files", "GET, POST").route(web::post().to(post_file)).route(web::get().to(get_files)),
    )
    .service(
        super::resource("/files/{id}", "GET, DELETE")
            .route(web::get().to(get_file))
            .route(web::delete().to(delete_file)),
    )
    .service(super::resource("/files/{id}/content", "GET").route(web::get().to(get_file_content)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_file_names_keep_what_is_safe_in_a_quoted_header() {
        assert_eq!(ascii_file_name("report 2026.pdf"), "report 2026.pdf");
        assert_eq!(ascii_file_name("a\"b\\c\r\nd.txt"), "a_b_c__d.txt");
        assert_eq!(ascii_file_name("résumé.docx"), "r_sum_.docx");
    }
}
