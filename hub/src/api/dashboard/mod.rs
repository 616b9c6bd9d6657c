//! The dashboard: the page a person opens in a browser at `/`, its assets under `/assets/`, and
//! the session that signs the page in (`session`, `signin`, `origin`).
//!
//! The page and its assets are built into the binary (see `build.rs`: plain JS modules, a
//! stylesheet and uPlot, gzipped, with content-hashed names). Like the docs page, **these two
//! routes are public**: they serve the same static files to everyone and hold no data and no
//! secret; everything the page shows comes from the API, which needs the session. They are not
//! in the OpenAPI description (the session routes are).
//!
//! The page's Content-Security-Policy allows scripts, styles and connections to the hub only, no
//! inline script or style, and no framing; the page keeps no secret where a script could read it
//! (the session cookie is `HttpOnly`).

mod origin;
pub mod session;
pub(super) mod signin;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use origin::{OriginCheck, check as check_origin, cookie_request_allowed};
pub use session::{COOKIE, Credential, Sessions};

mod generated {
    include!(concat!(env!("OUT_DIR"), "/dashboard/assets.rs"));
}
pub use generated::ASSET_BYTES;
use generated::ASSETS;

/// The page, with the asset names `build.rs` filled in.
const INDEX: &str = include_str!(concat!(env!("OUT_DIR"), "/dashboard/index.html"));

/// Everything from the hub itself, nothing inline, no frames, no `<base>`.
pub const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

/// The dashboard's routes. Public: see the module's doc.
pub(super) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/assets/{file}", get(asset))
}

/// The page's size and what it holds, for the docs and the bench.
pub fn index_bytes() -> usize {
    INDEX.len()
}

/// The page: small, revalidated each time, so a new hub's asset names are seen at once.
async fn page() -> Response {
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        INDEX,
    )
        .into_response();
    secure(&mut response);
    response
}

/// An asset (see [`super::static_files::asset`]), with the page's policy.
async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let mut response = super::static_files::asset(ASSETS, &file, &headers, "dashboard");
    secure(&mut response);
    response
}

/// The policy and `nosniff` on every answer of the dashboard.
fn secure(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_script_and_style_and_stays_small() {
        for (name, content_type, bytes) in ASSETS {
            assert_eq!(&bytes[..2], &[0x1f, 0x8b], "{name} is gzip");
            assert!(!content_type.is_empty());
        }
        for stem in ["app.", "style.", "uPlot.iife.min.", "uPlot.min."] {
            assert!(
                INDEX.contains(&format!("/assets/{stem}")),
                "{stem} in the page"
            );
        }
        assert!(!INDEX.contains("<script>"), "no inline script");
        assert!(!INDEX.contains("style="), "no inline style");
        // The bound: the whole page at most 150 KB compressed.
        let total: usize = ASSETS.iter().map(|(_, _, b)| b.len()).sum::<usize>() + INDEX.len();
        assert_eq!(total - INDEX.len(), ASSET_BYTES);
        assert!(total <= 150 * 1024, "{total} bytes");
    }

    #[test]
    fn every_module_import_names_a_served_asset() {
        for (name, content_type, bytes) in ASSETS {
            if !content_type.starts_with("text/javascript") || name.starts_with("uPlot") {
                continue;
            }
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(*bytes), &mut text)
                .unwrap();
            for (at, _) in text.match_indices("from \"./") {
                let target = text[at + 8..].split('"').next().unwrap();
                assert!(
                    ASSETS.iter().any(|(n, ..)| *n == target),
                    "{name} imports {target}"
                );
            }
        }
    }
}
