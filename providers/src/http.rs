//! What the HTTP providers share: the client with its timeouts and default headers, and the
//! mapping of failed responses and transport errors to [`ProviderError`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use colloquy_infra::assistant_settings::ProviderSettings;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;

use crate::{ErrorClass, ProviderBuildError, ProviderError};

/// Longest error body kept in a [`ProviderError`]'s message.
const MAX_ERROR_BODY: usize = 2_000;

/// The configured extra headers of a provider entry.
pub(crate) fn extra_headers(
    provider: &str,
    headers: &BTreeMap<String, String>,
) -> Result<HeaderMap, ProviderBuildError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let invalid = || ProviderBuildError::InvalidHeader { provider: provider.to_string(), header: name.clone() };
        let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
        let mut header_value = HeaderValue::from_str(value).map_err(|_| invalid())?;
        header_value.set_sensitive(true);
        map.insert(header_name, header_value);
    }
    Ok(map)
}

/// A client with the entry's connect timeout and extra headers. No overall timeout: a reply
/// streams for as long as it streams; the router bounds the wait for the first token.
pub(crate) fn client(
    provider: &str,
    settings: &ProviderSettings,
    mut headers: HeaderMap,
) -> Result<reqwest::Client, ProviderBuildError> {
    headers.extend(extra_headers(provider, &settings.headers)?);
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .default_headers(headers)
        .build()
        .map_err(|e| ProviderBuildError::Client { provider: provider.to_string(), message: e.to_string() })
}

/// The class of a failed HTTP status.
pub(crate) fn class_of_status(status: StatusCode) -> ErrorClass {
    match status.as_u16() {
        429 => ErrorClass::RateLimited,
        503 | 529 => ErrorClass::Overloaded,
        401 | 403 => ErrorClass::Auth,
        404 => ErrorClass::NotFound,
        408 => ErrorClass::Timeout,
        s if s >= 500 => ErrorClass::ServerError,
        _ => ErrorClass::BadRequest,
    }
}

/// `Retry-After` as a wait: delta-seconds, or an HTTP date (a date in the past is no wait).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// Reads a provider's JSON error body: its message, and its class when the body says more
/// than the status.
pub(crate) type ErrorBodyReader = fn(&serde_json::Value) -> Option<(String, Option<ErrorClass>)>;

/// A failed response as an error: its status, class, `Retry-After` and (a bounded part of)
/// its body. `message_of` digs the provider's own message out of a JSON error body.
pub(crate) async fn error_from_response(response: reqwest::Response, message_of: ErrorBodyReader) -> ProviderError {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response.text().await.unwrap_or_default();
    let parsed = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| message_of(&v));
    let (message, class) = match parsed {
        Some((message, class)) => (message, class.unwrap_or_else(|| class_of_status(status))),
        None => (truncate(&body), class_of_status(status)),
    };
    ProviderError {
        class,
        message: format!("HTTP {}: {message}", status.as_u16()),
        status: Some(status.as_u16()),
        retry_after,
    }
}

/// A transport failure (no response, or the body broke off) as an error.
pub(crate) fn transport_error(error: &reqwest::Error) -> ProviderError {
    let class = match error.is_timeout() {
        true => ErrorClass::Timeout,
        false => ErrorClass::Connection,
    };
    // reqwest's Display names the URL but never headers, so no key is printed.
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ProviderError::new(class, message)
}

/// An error reading an SSE body.
pub(crate) type SseError = eventsource_stream::EventStreamError<reqwest::Error>;

/// An error reading an SSE body, classified: a broken body is a `Connection` failure
/// (or `Timeout`), an unreadable one a `Protocol` failure.
pub(crate) fn sse_error(error: SseError) -> ProviderError {
    match error {
        eventsource_stream::EventStreamError::Transport(e) => transport_error(&e),
        other => ProviderError::new(ErrorClass::Protocol, other.to_string()),
    }
}

/// `text` cut to a length fit for an error message.
pub(crate) fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_BODY) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1.5"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120), "{wait:?}");
        headers.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn statuses_have_classes() {
        for (status, class) in [
            (429, ErrorClass::RateLimited),
            (529, ErrorClass::Overloaded),
            (503, ErrorClass::Overloaded),
            (500, ErrorClass::ServerError),
            (502, ErrorClass::ServerError),
            (400, ErrorClass::BadRequest),
            (422, ErrorClass::BadRequest),
            (401, ErrorClass::Auth),
            (404, ErrorClass::NotFound),
        ] {
            assert_eq!(class_of_status(StatusCode::from_u16(status).unwrap()), class, "{status}");
        }
    }
}
