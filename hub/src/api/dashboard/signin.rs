//! `POST /api/v1/session` (sign in) and `DELETE /api/v1/session` (sign out): the dashboard's
//! session cookie, made from a token or a client certificate.
//!
//! These two routes authenticate by themselves (they are outside the token layer): signing in
//! takes the token in the body, once, and answers with the `hub_session` cookie only, so the page
//! never keeps the token; signing out takes the cookie. Failed sign-ins count against the same
//! per-address limit as failed bearer tokens, and a request whose `Origin` is another site is
//! refused.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use super::origin::{self, OriginCheck};
use super::session::{self, Credential};
use crate::api::error::ApiError;
use crate::api::{ApiState, server};

/// The body of a sign-in with a token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(in crate::api) struct SessionRequest {
    /// A hub token (`hub_` and 64 hex digits). Not kept: the session holds only which token it
    /// came from.
    #[schema(max_length = 128, example = "hub_0123...")]
    token: String,
}

/// Sign in: a session cookie for a token, or for the client certificate of the connection.
///
/// With `{"token": "..."}`, the session carries that token's scopes and device patterns and ends
/// when the token is revoked or expires; with an empty body, the client certificate the
/// connection presented (one that `[[api.clients]]` names) is the identity, and the session is
/// honoured only on connections that present it. The answer's `Set-Cookie` holds the session
/// (`hub_session`, `HttpOnly; Secure; SameSite=Strict; Path=/`), which every route then accepts
/// like a bearer token, for at most 12 hours. Sessions are kept in memory: a restart of the hub
/// ends them.
#[utoipa::path(
    post,
    // The full path: this route is merged beside `/api/v1`, not nested in it (see `api::routes`).
    path = "/api/v1/session",
    tag = "session",
    request_body(content = Option<SessionRequest>, content_type = "application/json",
        description = "The token; an empty body to sign in with the client certificate."),
    responses(
        (status = 204, description = "Signed in.",
            headers(("set-cookie" = String, description = "The session cookie, `hub_session`."))),
        (status = 400, description = "The body is not a sign-in request."),
        (status = 401, description = "Not a live token, or no token and no client certificate that is an identity."),
        (status = 403, description = "The request's `Origin` is another site."),
        (status = 408, description = "The body did not arrive in time."),
        (status = 413, description = "The body is larger than 16 KiB."),
        (status = 429, description = "Too many failed attempts from this address; `Retry-After` says how many seconds to wait.",
            headers(("retry-after" = String, description = "Seconds to wait."))),
        (status = 500, description = "The system's random source failed."),
    ),
)]
pub(in crate::api) async fn open(State(state): State<ApiState>, request: Request) -> Response {
    let now = std::time::Instant::now();
    let authority = request.uri().authority().map(|a| a.as_str().to_owned());
    if origin::check(request.headers(), authority.as_deref()) == OriginCheck::Foreign {
        return ApiError::ForeignOrigin.into_response();
    }
    let connection = request.extensions().get::<server::Connection>().cloned();
    let peer = connection
        .as_ref()
        .map(|c| c.peer.ip().to_string())
        .unwrap_or_default();
    let refused = |state: &ApiState| {
        if let Err(wait) = state.limits.failures.check(&peer, now) {
            state
                .limits
                .failures_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return crate::api::too_many(wait);
        }
        ApiError::Unauthorized.into_response()
    };
    let request = match crate::api::read_body(request).await {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let body = match axum::body::to_bytes(request.into_body(), crate::api::MAX_BODY).await {
        Ok(body) => body,
        Err(_) => return ApiError::BadRequest("the body could not be read".into()).into_response(),
    };
    let now_ms = crate::clock::now_ms();
    let (credential, identity, limit_ms) = if body.iter().all(u8::is_ascii_whitespace) {
        let cert = connection.as_ref().and_then(|c| c.client_cert.clone());
        let Some((cert, identity)) =
            cert.and_then(|cert| state.clients.identify(&cert).map(|i| (cert, i)))
        else {
            return refused(&state);
        };
        (Credential::certificate(&cert), identity, None)
    } else {
        let asked: SessionRequest = match serde_json::from_slice(&body) {
            Ok(asked) => asked,
            Err(e) => {
                return ApiError::BadRequest(format!(
                    "expected {{\"token\": \"hub_...\"}} or an empty body: {e}"
                ))
                .into_response();
            }
        };
        let Some((identity, handle)) = state.tokens.authenticate_handle(&asked.token, now_ms)
        else {
            return refused(&state);
        };
        let limit = state.tokens.expires_ms(&handle);
        (Credential::Token(handle), identity, limit)
    };
    let opened = match state.sessions.open(credential, &identity, limit_ms, now_ms) {
        Ok(opened) => opened,
        Err(e) => {
            tracing::error!(error = %e, "a session could not be made");
            return ApiError::Internal.into_response();
        }
    };
    tracing::info!(by = %identity.name, open = state.sessions.len(), "dashboard session opened");
    with_cookie(StatusCode::NO_CONTENT, &session::set_cookie(&opened))
}

/// Sign out: ends the session the cookie names, and tells the browser to forget the cookie.
#[utoipa::path(
    delete,
    path = "/api/v1/session",
    tag = "session",
    responses(
        (status = 204, description = "Signed out.",
            headers(("set-cookie" = String, description = "Clears `hub_session`."))),
        (status = 401, description = "No open session (the cookie is cleared all the same)."),
        (status = 403, description = "The request carries the cookie without the hub's own `Origin`."),
    ),
)]
pub(in crate::api) async fn close(State(state): State<ApiState>, request: Request) -> Response {
    let headers = request.headers();
    let authority = request.uri().authority().map(|a| a.as_str().to_owned());
    let Some(id) = session::cookie_value(headers) else {
        return with_cookie(StatusCode::UNAUTHORIZED, &session::clear_cookie());
    };
    if !origin::cookie_request_allowed(request.method(), headers, authority.as_deref()) {
        return ApiError::ForeignOrigin.into_response();
    }
    let status = if state.sessions.close(id) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    };
    with_cookie(status, &session::clear_cookie())
}

/// An answer with `Set-Cookie`, never stored by a cache.
fn with_cookie(status: StatusCode, cookie: &str) -> Response {
    let mut response = if status.is_success() {
        status.into_response()
    } else {
        ApiError::Unauthorized.into_response()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(cookie) {
        headers.insert(header::SET_COOKIE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Who the caller is: the identity a session (or a token, or a certificate) stands for.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(in crate::api) struct WhoAmI {
    /// Device-id patterns it is limited to; empty for every device.
    devices: Vec<String>,
    /// The token's name, or `cert:` and the client certificate's name.
    #[schema(example = "ops")]
    name: String,
    /// What it may do (the page shows the command form only with `command` or `admin`).
    #[schema(example = json!(["read", "command"]))]
    scopes: Vec<String>,
}

/// Who is signed in: the name, scopes and device patterns of the caller's identity. The
/// dashboard asks this first, to learn whether its session still holds and what to show.
#[utoipa::path(
    get,
    path = "/session",
    tag = "session",
    responses(
        (status = 200, description = "The caller's identity.", body = WhoAmI,
            headers(("cache-control" = String, description = "`no-store`."))),
    ),
)]
pub(in crate::api) async fn whoami(
    axum::Extension(identity): axum::Extension<crate::auth::Identity>,
) -> Response {
    let body = WhoAmI {
        devices: identity.devices.clone(),
        name: identity.name.clone(),
        scopes: identity
            .scopes
            .iter()
            .map(|s| s.name().to_owned())
            .collect(),
    };
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
