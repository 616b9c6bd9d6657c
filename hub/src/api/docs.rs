//! The interactive API docs page: `GET /docs`, and its assets under `/docs/`.
//!
//! The page is Swagger UI over `/api/v1/openapi.json`, and works offline: its assets are built
//! into the binary (see `build.rs`: only the files the page needs, gzipped, with content-hashed
//! names) and it loads nothing from elsewhere.
//!
//! **These routes are the one exception to "every request is authenticated".** They serve the
//! same static files to everyone, built into the binary: Swagger UI, a small page and its script.
//! They hold no data and no secret. The page asks for a token and sends it with every request
//! it makes, the description's included, so everything it shows still needs one. They are not in
//! the OpenAPI description, which describes the API, not this page.

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::error::ApiError;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/docs/assets.rs"));
}
pub use generated::ASSET_BYTES;
use generated::ASSETS;

/// The page, with the asset names `build.rs` filled in.
const INDEX: &str = include_str!(concat!(env!("OUT_DIR"), "/docs/index.html"));

/// Scripts and styles only from the hub, and nothing framing the page (it takes a token).
/// Swagger UI sets inline styles and uses `data:` images, hence those two allowances.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'none'";

/// The docs routes. Public: see the module's doc.
pub(super) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/docs", get(page))
        // The page's address as people also type it.
        .route("/docs/", get(to_page))
        .route("/docs/{file}", get(asset))
}

/// `/docs/` to `/docs`, with a problem body like every answer that is not the thing asked for
/// (the request-id layer writes it), so a client that does not follow redirects learns why.
async fn to_page() -> Response {
    let mut response = Redirect::permanent("/docs").into_response();
    response.extensions_mut().insert(super::error::Problem {
        detail: Some("the docs page is at /docs".to_owned()),
        ..super::error::Problem::for_status(axum::http::StatusCode::PERMANENT_REDIRECT)
    });
    response
}

/// The page: small, never cached for long, so a new hub's page (and asset names) is seen at once.
async fn page() -> Response {
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_POLICY),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        INDEX,
    )
        .into_response();
    nosniff(&mut response);
    response
}

/// An asset, as stored: gzipped. Its name changes with its content, so it may be cached for good.
async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(name, ..)| *name == file) else {
        return ApiError::NotFound("no such file".into()).into_response();
    };
    if !accepts_gzip(headers.get(header::ACCEPT_ENCODING)) {
        return ApiError::NotAcceptable(
            "the docs page's files are served gzip-encoded only; accept gzip".into(),
        )
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

fn nosniff(response: &mut Response) {
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// Whether the client takes gzip. No `Accept-Encoding` at all means any coding will do
/// (RFC 9110, 12.5.3); otherwise `gzip` (or `x-gzip`, or `*`) must be listed with a q above 0.
fn accepts_gzip(accept: Option<&HeaderValue>) -> bool {
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
    fn the_page_names_every_asset_and_assets_are_gzip() {
        for (name, content_type, bytes) in ASSETS {
            assert_eq!(&bytes[..2], &[0x1f, 0x8b], "{name} is gzip");
            assert!(!content_type.is_empty());
            assert!(
                INDEX.contains(&format!("/docs/{name}")),
                "{name} in the page"
            );
        }
        assert!(INDEX.contains("swagger-ui-bundle."));
        assert!(!INDEX.contains('{'), "no placeholder left");
        let total: usize = ASSETS.iter().map(|(_, _, bytes)| bytes.len()).sum();
        assert_eq!(total, ASSET_BYTES);
        // The point of build.rs: a fraction of Swagger UI's 4.3 MB.
        assert!((100_000..1_000_000).contains(&total), "{total} bytes");
    }

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
