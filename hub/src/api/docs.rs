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
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

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
    super::static_files::nosniff(&mut response);
    response
}

/// An asset of the page (see [`super::static_files::asset`]).
async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    super::static_files::asset(ASSETS, &file, &headers, "docs page")
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
}
