//! The HTTPS API: `router` builds the routes over the store (so tests call it without a socket),
//! `server` serves it over TLS.
//!
//! Every `/api/v1` route needs a bearer token; `/healthz` needs nothing. Every response carries
//! `x-request-id`, and every error is `application/problem+json` with that id.

mod commands;
mod devices;
pub mod error;
pub mod params;
mod readings;
pub mod server;
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

use crate::auth::{Identity, TokenRegistry};
use crate::ingest::mqtt::Link;
use crate::store::Store;
use error::{ApiError, Problem};

/// Most concurrent stream (WebSocket) clients.
pub const STREAM_CLIENTS: usize = stream::MAX_CLIENTS;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The store (reads only).
    pub store: Store,
    /// Bearer tokens.
    pub tokens: TokenRegistry,
    /// Largest page.
    pub max_page: usize,
    /// The MQTT link, for readiness.
    pub mqtt_link: watch::Receiver<Link>,
    /// Source of request ids.
    pub request_ids: Arc<RequestIds>,
    /// Commands for devices.
    pub commands: crate::commands::Commands,
    /// Which devices are online.
    pub presence: Arc<crate::live::Presence>,
    /// Live readings and events, for the stream.
    pub live: crate::live::Live,
    /// Longest `wait` of a command request.
    pub max_wait: std::time::Duration,
    /// Free places for stream (WebSocket) clients.
    pub stream_slots: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the hub stops, so long-lived connections (streams) end.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Request ids: a random prefix per process and a counter, so ids are unique and cheap.
#[derive(Debug)]
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    /// A new source with a random prefix.
    pub fn new() -> Self {
        let prefix = crate::auth::tokens::random_bytes::<4>()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
            .unwrap_or_else(|_| "00000000".into());
        RequestIds {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}-{:x}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// The request id of the current request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// All routes.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/devices", get(devices::list))
        .route("/devices/{id}", get(devices::detail))
        .route("/devices/{id}/latest", get(devices::latest))
        .route("/devices/{id}/readings", get(readings::readings))
        .route(
            "/devices/{id}/commands",
            axum::routing::post(commands::send).layer(axum::extract::DefaultBodyLimit::max(
                commands::MAX_COMMAND_BODY,
            )),
        )
        .route("/devices/{id}/commands/{cid}", get(commands::get))
        .route("/stream", get(stream::stream))
        .route("/readyz", get(readyz));
    let authenticated = Router::new()
        .nest("/api/v1", v1.clone())
        .route("/readyz", get(readyz))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(authenticated)
        .route("/healthz", get(healthz))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), request_id))
        .with_state(state)
}

/// Gives every request an id, writes problem bodies with it, and turns any other bare error
/// (a 405 from the router, say) into a problem too.
async fn request_id(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let id = state.request_ids.next();
    request.extensions_mut().insert(RequestId(id.clone()));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    let status = response.status();
    if let Some(problem) = response.extensions_mut().remove::<Problem>() {
        let headers = response.headers().clone();
        response = problem.into_response_with_id(&id);
        for (name, value) in &headers {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
    } else if (status.is_client_error() || status.is_server_error())
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|ct| ct != "application/problem+json")
    {
        let headers = response.headers().clone();
        response = Problem::for_status(status).into_response_with_id(&id);
        if let Some(allow) = headers.get(header::ALLOW) {
            response.headers_mut().insert(header::ALLOW, allow.clone());
        }
    }
    if status.is_server_error() {
        tracing::warn!(request_id = %id, %method, %path, status = status.as_u16(), "request failed");
    } else {
        tracing::debug!(request_id = %id, %method, %path, status = status.as_u16(), "request");
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Resolves the bearer token to an [`Identity`] or answers 401.
async fn authenticate(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let identity = token.and_then(|t| state.tokens.authenticate(t, crate::ingest::now_ms()));
    match identity {
        Some(identity) => {
            request.extensions_mut().insert::<Identity>(identity);
            next.run(request).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<ApiState>) -> Response {
    let mqtt = *state.mqtt_link.borrow();
    let store_ok = state.store.next_offset().is_ok();
    let body = serde_json::json!({
        "store": if store_ok { "ok" } else { "failed" },
        "mqtt": if mqtt == Link::Up { "connected" } else { "disconnected" },
    });
    if store_ok && mqtt == Link::Up {
        (StatusCode::OK, axum::Json(body)).into_response()
    } else {
        let mut reasons = Vec::new();
        if !store_ok {
            reasons.push("the store cannot be read");
        }
        if mqtt != Link::Up {
            reasons.push("the MQTT subscription is not connected");
        }
        ApiError::Unavailable(reasons.join("; ")).into_response()
    }
}
