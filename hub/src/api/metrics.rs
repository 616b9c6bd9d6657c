//! `GET /metrics`: Prometheus text format (version 0.0.4), `metrics` scope.
//!
//! Every family is written from counters the parts keep anyway, by the collectors `app`
//! registered (see [`crate::exposition::Collect`]) and the API's own; a scrape reads a few
//! atomics, the sync positions and the store's head, never the readings. Label values are names
//! the configuration or the routes fix (transports, reasons, sinks, route templates), plus pull
//! consumers, which are bounded.

use std::sync::atomic::Ordering;

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::devices::require;
use super::error::ApiError;
use crate::auth::{Identity, Scope};
use crate::exposition::Exposition;

/// Prometheus metrics.
///
/// Needs the `metrics` scope. Text exposition format 0.0.4: ingest by transport and outcome,
/// commits (sizes, durations), the store against its quota, retention, sync lag per sink and
/// consumer, API requests by route and status, rate-limit refusals, stream clients, the MQTT link
/// and certificate expiry.
#[utoipa::path(
    get,
    path = "/metrics",
    security(("bearer" = ["metrics"])),
    tag = "health",
    responses(
        (status = 200, description = "The metrics.", content_type = "text/plain; version=0.0.4", body = String),
        (status = 403, description = "The token lacks the `metrics` scope."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn metrics(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
) -> Result<Response, ApiError> {
    require(&identity, Scope::Metrics, "metrics")?;
    let parts = state.metrics.clone();
    // Some collectors read the store: off the async workers.
    let mut out = tokio::task::spawn_blocking(move || {
        let mut out = Exposition::new();
        parts.collect(&mut out).map(|()| out)
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(|e| {
        tracing::error!(error = %e, "metrics failed");
        ApiError::Internal
    })?;
    collect_api(&state, &mut out);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.into_text(),
    )
        .into_response())
}

/// The API's own: requests, rate limits, stream clients, and the MQTT link it reports.
fn collect_api(state: &ApiState, out: &mut Exposition) {
    state.requests.render(out);
    out.family(
        "hub_api_rate_limited_total",
        "counter",
        "Requests refused with 429: over an identity's rate, or too many failed authentications from an address.",
    );
    out.sample(
        "hub_api_rate_limited_total",
        "kind=\"identity\"",
        state.limits.requests_refused.load(Ordering::Relaxed),
    );
    out.sample(
        "hub_api_rate_limited_total",
        "kind=\"auth_failure\"",
        state.limits.failures_refused.load(Ordering::Relaxed),
    );
    out.single(
        "hub_stream_clients",
        "gauge",
        "WebSocket stream clients connected.",
        super::STREAM_CLIENTS - state.stream_slots.available_permits(),
    );
    out.single(
        "hub_mqtt_connected",
        "gauge",
        "1 while the hub's MQTT subscription is up.",
        u8::from(*state.mqtt_link.borrow() == crate::ingest::mqtt::Link::Up),
    );
}
