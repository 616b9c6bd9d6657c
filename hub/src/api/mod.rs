//! The HTTPS API: `router` builds the routes over the store (so tests call it without a socket),
//! `server` serves it over TLS.
//!
//! Every `/api/v1` route needs a bearer token or the dashboard's session cookie (with the
//! `Origin` checks of `dashboard`); `/healthz` needs nothing, and neither do the static files of
//! the docs page and of the dashboard (`docs`, `dashboard`: they hold no data and no secret), nor
//! signing in and out (`/api/v1/session`, which authenticates by itself). Every response carries
//! `x-request-id`, and every error is `application/problem+json` with that id.
//!
//! The routes and their OpenAPI description come from one registration (see [`routes`] and
//! `openapi`), served at `/api/v1/openapi.json` and browsable at `/docs`.

mod backup;
mod caching;
mod commands;
pub mod credentials;
pub mod dashboard;
mod devices;
pub mod docs;
pub mod error;
mod health;
mod metrics;
mod openapi;
pub mod params;
mod readings;
pub mod removal;
mod rules;
pub mod schema;
pub mod server;
mod static_files;
mod stream;
mod sync;
pub mod tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use tokio::sync::watch;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Identity, TokenRegistry};
use crate::ingest::mqtt::Link;
use crate::ratelimit;
use crate::store::Store;
use error::{ApiError, Problem};

/// Largest request body any route takes; more gets 413 (from `Content-Length` before any of
/// the body is read, so a client that sent `Expect: 100-continue` never gets to send it).
pub const MAX_BODY: usize = 16 * 1024;
/// Longest request target (path and query); longer gets 414.
pub const MAX_URI: usize = 8 * 1024;
/// Most header fields in a request; more gets 431.
pub const MAX_HEADERS: usize = 100;
/// Largest sum of header names and values in a request; more gets 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Requests one identity may have in progress at once (reading their bodies included): a
/// handful of slow requests of one token cannot hold the API; more get 429.
pub const MAX_IN_FLIGHT_PER_IDENTITY: usize = 32;

/// Most concurrent stream (WebSocket) clients.
pub const STREAM_CLIENTS: usize = stream::MAX_CLIENTS;

pub use backup::{BackupMade, Backups};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The store (reads only).
    pub store: Store,
    /// When new readings are durable (the pull's `wait`).
    pub durable: crate::store::durable::Durable,
    /// Bearer tokens.
    pub tokens: TokenRegistry,
    /// Devices' MQTT passwords.
    pub credentials: crate::auth::credentials::DeviceCredentials,
    /// Devices' certificates from the hub's CA, revoked when a device is removed.
    pub device_certs: Arc<removal::DeviceCerts>,
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
    /// Longest `wait` of a pull.
    pub max_pull_wait: std::time::Duration,
    /// Free places for stream (WebSocket) clients.
    pub stream_slots: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the hub stops, so long-lived connections (streams) end.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Client certificates that are identities.
    pub clients: Arc<crate::auth::clients::ClientIdentities>,
    /// Rate limits.
    pub limits: Arc<Limits>,
    /// Sinks and retention, for the sync routes.
    pub sync: Arc<crate::sync::SyncState>,
    /// The parts' collectors for `/metrics`.
    pub metrics: Arc<crate::metrics::Registry>,
    /// The API's requests, by route and status.
    pub requests: Arc<crate::metrics::RequestMetrics>,
    /// Whether ingest is stalled (readiness).
    pub liveness: Arc<crate::liveness::IngestLiveness>,
    /// Backups of the running hub.
    pub backups: Arc<backup::Backups>,
    /// The alert rules.
    pub rules: crate::rules::RulesHandle,
    /// The dashboard's sessions.
    pub sessions: Arc<dashboard::Sessions>,
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

/// All routes: the documented ones (see [`routes`]), the docs page, and a problem for the rest.
pub fn router(state: ApiState) -> Router {
    let (api, spec) = routes(&state).split_for_parts();
    let spec = openapi::finish(spec, state.max_page);
    api.merge(docs::router())
        .merge(dashboard::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(Extension(openapi::SpecJson::new(&spec)))
        .layer(middleware::from_fn_with_state(state.clone(), request_id))
        .with_state(state)
}

/// Every route of the API, each registered together with its OpenAPI description.
///
/// To add a route: write the handler with `#[utoipa::path(get|post|..., path = "...",
/// responses(...))]` (its path relative to the group: `/devices/{id}/commands` in `v1`), then
/// add one line, `.routes(routes!(module::handler))`, to its group. Give `routes!` one handler,
/// or several of the same path: it serves all the handlers it is given on each of their paths.
/// Another method on a path already registered is just another line (the two merge). Routes in
/// `v1` (and `/readyz`) get the token check, and its description, from
/// [`openapi::authenticated`]; error bodies and `x-request-id` are described by
/// [`openapi::finish`]. A route added with plain `.route(...)` would be served but not
/// described: the unit tests of `openapi` catch that.
fn routes(state: &ApiState) -> OpenApiRouter<ApiState> {
    let v1 = OpenApiRouter::default()
        .routes(routes!(devices::list))
        .routes(routes!(devices::detail, devices::update))
        .routes(routes!(removal::delete))
        .routes(routes!(commands::send, commands::list))
        .routes(routes!(commands::get))
        .routes(routes!(stream::stream))
        .routes(routes!(devices::latest))
        .routes(routes!(readings::readings))
        .routes(routes!(health::readyz_v1))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::revoke))
        .routes(routes!(credentials::create, credentials::list))
        .routes(routes!(credentials::rotate))
        .routes(routes!(credentials::revoke))
        .routes(routes!(sync::pull))
        .routes(routes!(sync::commit, sync::remove))
        .routes(routes!(sync::status))
        .routes(routes!(sync::parked))
        .routes(routes!(backup::create))
        .routes(routes!(rules::list, rules::put))
        .routes(routes!(rules::get, rules::delete))
        .routes(routes!(rules::alerts))
        .routes(routes!(dashboard::signin::whoami))
        .route_layer(middleware::from_fn(caching::etag));
    // Every body the API takes is small (commands, device labels): one bound for all of them.
    let v1 = v1.layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    let authenticated = openapi::authenticated(
        OpenApiRouter::default()
            .nest("/api/v1", v1)
            .routes(routes!(health::readyz))
            .routes(routes!(metrics::metrics)),
        state,
    );
    // Signing in and out authenticate by themselves (see `dashboard::signin`). Merged, not
    // nested: nesting would replace the description of `GET /api/v1/session` (in `v1`), where
    // merging joins the operations of one path.
    let session =
        OpenApiRouter::default().routes(routes!(dashboard::signin::open, dashboard::signin::close));
    OpenApiRouter::with_openapi(openapi::base())
        .merge(authenticated)
        .merge(session)
        .routes(routes!(health::healthz))
}

/// Gives every request an id, writes problem bodies with it, and turns any other bare error
/// (a 405 from the router, say) into a problem too.
async fn request_id(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let id = state.request_ids.next();
    request.extensions_mut().insert(RequestId(id.clone()));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // The route template, not the path, so the metric's series stay as few as the routes.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let started = std::time::Instant::now();
    let mut response = match refuse_head(&request) {
        Some(refused) => refused.into_response(),
        None => next.run(request).await,
    };
    let status = response.status();
    state.requests.record(
        &route,
        method.as_str(),
        status.as_u16(),
        started.elapsed().as_secs_f64(),
    );
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
    // A 503 says a state the hub reports itself (`/readyz` polled while the disk is full), not a
    // failure of the request: logged at debug, so a probe cannot flood the log.
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::warn!(request_id = %id, %method, %path, status = status.as_u16(), "request failed");
    } else {
        tracing::debug!(request_id = %id, %method, %path, status = status.as_u16(), "request");
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Why a request is refused from its head alone: a target, header fields or a declared body
/// larger than the API reads. Checked before anything reads the body, so no `100 Continue` is
/// sent for a body that would be refused.
fn refuse_head(request: &Request) -> Option<ApiError> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > MAX_URI {
        return Some(ApiError::UriTooLong(format!(
            "the request target is {target} bytes; at most {MAX_URI}"
        )));
    }
    let headers = request.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return Some(ApiError::HeadersTooLarge(format!(
            "at most {MAX_HEADERS} header fields of {MAX_HEADER_BYTES} bytes in all"
        )));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Some(too_large());
    }
    None
}

fn too_large() -> ApiError {
    ApiError::TooLarge(format!("the request body is larger than {MAX_BODY} bytes"))
}

/// Reads the whole body (at most [`MAX_BODY`]) by the request's [`server::BodyDeadline`], so a
/// body trickled byte by byte cannot hold a connection and its handler: 408 after the deadline,
/// 413 beyond the size. The handlers then get it from memory.
async fn read_body(request: Request) -> Result<Request, ApiError> {
    use axum::body::HttpBody as _;
    if request.body().is_end_stream() {
        return Ok(request);
    }
    let deadline = request
        .extensions()
        .get::<server::BodyDeadline>()
        .map(|d| d.0);
    let (parts, body) = request.into_parts();
    let read = async move {
        use futures_util::StreamExt as _;
        let mut chunks = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|_| {
                ApiError::BadRequest("the request body could not be read whole".into())
            })?;
            // A chunked body has no `Content-Length` to refuse it by.
            if bytes.len() + chunk.len() > MAX_BODY {
                drain(&mut chunks).await;
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    let read = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, read).await,
        None => Ok(read.await),
    };
    match read {
        Ok(bytes) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes?))),
        Err(_) => Err(ApiError::Timeout(
            "the request body did not arrive in time".into(),
        )),
    }
}

/// Bytes of an oversized body read and thrown away before the 413, so that a client still
/// sending it reads the answer instead of a reset (closing a socket with unread data resets it).
/// Beyond this, or the body's deadline, the connection is closed anyway.
const MAX_DRAIN: usize = 16 << 20;

/// Reads and discards the rest of a refused body, at most [`MAX_DRAIN`] bytes.
async fn drain<S, E>(chunks: &mut S)
where
    S: futures_util::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
{
    use futures_util::StreamExt as _;
    let mut drained = 0usize;
    while drained < MAX_DRAIN {
        match chunks.next().await {
            Some(Ok(chunk)) => drained += chunk.len(),
            _ => break,
        }
    }
}

/// Resolves the bearer token (or the session cookie, or the client certificate) to an
/// [`Identity`] or answers 401.
async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let now = std::time::Instant::now();
    let connection = request.extensions().get::<server::Connection>().cloned();
    let token = request.headers().get(header::AUTHORIZATION).map(|v| {
        v.to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
    });
    let cookie = dashboard::session::cookie_value(request.headers());
    let client_cert = connection.as_ref().and_then(|c| c.client_cert.as_deref());
    // A token, when one is sent, decides (a bad one is refused even with a good certificate);
    // then the session cookie (a stale one is refused, so the page learns it must sign in
    // again); without either, a client certificate that `[[api.clients]]` names is the identity.
    let now_ms = crate::clock::now_ms();
    let identity = match (token, cookie) {
        (Some(token), _) => token.and_then(|t| state.tokens.authenticate(t, now_ms)),
        (None, Some(cookie)) => {
            let authority = request.uri().authority().map(|a| a.as_str());
            if !dashboard::cookie_request_allowed(request.method(), request.headers(), authority) {
                return ApiError::ForeignOrigin.into_response();
            }
            state.sessions.identity(
                cookie,
                &state.tokens,
                &state.clients,
                client_cert.map(Vec::as_slice),
                now_ms,
            )
        }
        (None, None) => client_cert.and_then(|cert| state.clients.identify(cert)),
    };
    let Some(identity) = identity else {
        // Failed attempts are limited per address, so tokens cannot be guessed at line rate.
        let peer = connection
            .map(|c| c.peer.ip().to_string())
            .unwrap_or_default();
        if let Err(wait) = state.limits.failures.check(&peer, now) {
            state
                .limits
                .failures_refused
                .fetch_add(1, Ordering::Relaxed);
            return too_many(wait);
        }
        return ApiError::Unauthorized.into_response();
    };
    if let Err(wait) = state.limits.requests.check(&identity.key(), now) {
        state
            .limits
            .requests_refused
            .fetch_add(1, Ordering::Relaxed);
        return too_many(wait);
    }
    // Held until the answer is made: the body's reading and the handler count.
    let Some(_in_flight) = state
        .limits
        .in_flight
        .take(&identity.key(), MAX_IN_FLIGHT_PER_IDENTITY)
    else {
        state
            .limits
            .requests_refused
            .fetch_add(1, Ordering::Relaxed);
        return too_many(std::time::Duration::from_secs(1));
    };
    let mut request = match read_body(request).await {
        Ok(request) => request,
        Err(refused) => {
            tracing::debug!(by = %identity.name, ?refused, "request body refused");
            return refused.into_response();
        }
    };
    request.extensions_mut().insert::<Identity>(identity);
    next.run(request).await
}

/// 429 with `Retry-After`.
fn too_many(wait: std::time::Duration) -> Response {
    let secs = ratelimit::retry_after_secs(wait);
    let mut response =
        ApiError::TooMany(format!("rate limit reached; retry in {secs} s")).into_response();
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The API's rate limits.
#[derive(Debug)]
pub struct Limits {
    /// Requests per identity.
    pub requests: ratelimit::RateLimiter,
    /// Failed authentications per client address.
    pub failures: ratelimit::RateLimiter,
    /// Requests in progress per identity.
    pub in_flight: Arc<ratelimit::OpenCounts<String>>,
    /// Requests refused for an identity's rate.
    pub requests_refused: AtomicU64,
    /// Requests refused for too many failed authentications.
    pub failures_refused: AtomicU64,
}

impl Limits {
    /// `rate` requests a second per identity on average, `burst` at once; failed
    /// authentications at most one a second per address after a burst of 20.
    pub fn new(rate: u32, burst: u32) -> Self {
        Limits {
            requests: ratelimit::RateLimiter::new(f64::from(rate), burst),
            failures: ratelimit::RateLimiter::new(if rate == 0 { 0.0 } else { 1.0 }, 20),
            in_flight: Arc::new(ratelimit::OpenCounts::default()),
            requests_refused: AtomicU64::new(0),
            failures_refused: AtomicU64::new(0),
        }
    }
}
