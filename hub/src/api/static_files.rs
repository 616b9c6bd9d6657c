//! Serving files built into the binary (the docs page's and the dashboard's): gzipped at build
//! time, named by their content, so cached for good.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// `file` from `assets` (served name, content type, gzipped bytes), as stored: gzipped. Its name
/// changes with its content, so it may be cached for good. `what` names the page in errors.
pub(super) fn asset(
    assets: &'static [(&'static str, &'static str, &'static [u8])],
    file: &str,
    headers: &HeaderMap,
    what: &str,
) -> Response {
    let Some((_, content_type, bytes)) = assets.iter().find(|(name, ..)| *name == file) else {
        return ApiError::NotFound("no such file".into()).into_response();
    };
    if !accepts_gzip(headers.get(header::ACCEPT_ENCODING)) {
        return ApiError::NotAcceptable(format!(
            "the {what}'s files are served gzip-encoded only; accept gzip"
        ))
        .into_response();
    }
    let mut response = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
            (header::VARY, HeaderValue::from_static("accept-encoding")),
        ],
        Bytes::from_static(bytes),
    )
        .into_response();
    nosniff(&mut response);
    response
}

/// `X-Content-Type-Options: nosniff`.
pub(super) fn nosniff(response: &mut Response) {
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// Whether the client takes gzip. No `Accept-Encoding` at all means any coding will do
/// (RFC 9110, 12.5.3); otherwise `gzip` (or `x-gzip`, or `*`) must be listed with a q above 0.
pub(super) fn accepts_gzip(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept else {
        return true;
    };
    let Ok(accept) = accept.to_str() else {
        return false;
    };
    accept.split(',').any(|coding| {
        let mut parts = coding.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .map(|q| q.trim().parse::<f32>().unwrap_or(0.0))
            .next()
            .unwrap_or(1.0);
        matches!(name.as_str(), "gzip" | "x-gzip" | "*") && q > 0.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_accepted_unless_the_client_refuses_it() {
        let h = |s: &'static str| Some(HeaderValue::from_static(s));
        assert!(accepts_gzip(None));
        assert!(accepts_gzip(h("gzip, deflate, br").as_ref()));
        assert!(accepts_gzip(h("br;q=1.0, GZIP;q=0.5").as_ref()));
        assert!(accepts_gzip(h("*").as_ref()));
        assert!(!accepts_gzip(h("identity").as_ref()));
        assert!(!accepts_gzip(h("gzip;q=0, br").as_ref()));
    }
}
