//! HTTP caching of the answers that pollers (the dashboard among them) ask for again and again:
//! a device's detail, its latest values and its readings.
//!
//! Their `200` JSON answers get a strong `ETag` (a hash of the body) and
//! `Cache-Control: private, no-cache` (kept by the caller's own cache only, and revalidated each
//! time); a request whose `If-None-Match` names the current tag gets `304 Not Modified` without
//! a body. The body is still made and hashed (the store is read): what is saved is the bytes on
//! the wire and the client's parsing, which on a slow link or a phone is most of the cost.
//! Streamed exports (CSV, NDJSON) are left alone.

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ring::digest;

use super::error::ApiError;

/// The route templates whose answers carry an `ETag`.
/// (under `/api/v1`).
pub(super) const CACHED_ROUTES: [&str; 3] = [
    "/devices/{id}",
    "/devices/{id}/latest",
    "/devices/{id}/readings",
];

/// Largest body this layer hashes; a JSON page is far smaller (it is already whole in memory).
const MAX_HASHED_BODY: usize = 64 << 20;

/// Adds the `ETag` to the answers of [`CACHED_ROUTES`] and answers `304` when it matches.
pub(super) async fn etag(request: Request, next: Next) -> Response {
    let cached = request.method() == Method::GET
        && request
            .extensions()
            .get::<MatchedPath>()
            .map(|m| m.as_str())
            .is_some_and(|m| CACHED_ROUTES.contains(&m.strip_prefix("/api/v1").unwrap_or(m)));
    if !cached {
        return next.run(request).await;
    }
    let if_none_match = request.headers().get(header::IF_NONE_MATCH).cloned();
    let response = next.run(request).await;
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/json"));
    if response.status() != StatusCode::OK || !json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_HASHED_BODY).await else {
        tracing::warn!("an answer's body could not be read for its ETag");
        return ApiError::Internal.into_response();
    };
    let tag = tag_of(&bytes);
    let Ok(tag_value) = HeaderValue::from_str(&tag) else {
        return ApiError::Internal.into_response();
    };
    parts.headers.insert(header::ETAG, tag_value.clone());
    parts.headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    if if_none_match.is_some_and(|v| matches(&v, &tag)) {
        let mut headers = HeaderMap::new();
        for name in [header::ETAG, header::CACHE_CONTROL, header::VARY] {
            if let Some(value) = parts.headers.get(&name) {
                headers.insert(name, value.clone());
            }
        }
        let mut not_modified = StatusCode::NOT_MODIFIED.into_response();
        *not_modified.headers_mut() = headers;
        return not_modified;
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// A strong tag: 128 bits of the SHA-256 of the body, quoted.
fn tag_of(body: &[u8]) -> String {
    let hash = digest::digest(&digest::SHA256, body);
    let hex: String = hash.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("\"{hex}\"")
}

/// Whether `If-None-Match` names `tag` (weak comparison, as RFC 9110 asks for this header), or
/// is `*`.
fn matches(if_none_match: &HeaderValue, tag: &str) -> bool {
    let Ok(value) = if_none_match.to_str() else {
        return false;
    };
    value.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_are_read_as_rfc_9110_says() {
        let tag = tag_of(b"{}");
        assert_eq!(tag.len(), 34);
        let h = |s: String| HeaderValue::from_str(&s).unwrap();
        assert!(matches(&h(tag.clone()), &tag));
        assert!(matches(&h(format!("\"x\", W/{tag}")), &tag));
        assert!(matches(&h("*".into()), &tag));
        assert!(!matches(&h("\"x\"".into()), &tag));
        assert!(!matches(&h(tag_of(b"[]")), &tag));
    }
}
