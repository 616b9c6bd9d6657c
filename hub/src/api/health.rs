//! `/healthz` (alive) and `/readyz` (able to serve: the store reads, the MQTT subscription is up).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::error::ApiError;
use crate::ingest::mqtt::Link;

/// The process is alive.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Always `ok`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// What readiness depends on, each one ready.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    /// The MQTT subscription: `connected`.
    #[schema(value_type = String, example = "connected")]
    mqtt: &'static str,
    /// The store: `ok`.
    #[schema(value_type = String, example = "ok")]
    store: &'static str,
    /// Ingest: `ok` (no readings waiting longer than `ingest.stall_after` for a commit).
    #[schema(value_type = String, example = "ok")]
    ingest: &'static str,
}

/// Liveness.
///
/// Answers while the process runs; needs no token (for supervisors and load balancers).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "Alive.", body = Health)),
)]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness.
///
/// Ready when the store can be read and the MQTT subscription is up; otherwise 503 with the
/// reasons in the problem's detail.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        (status = 503, description = "Not ready; the detail says what is missing."),
    ),
)]
pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    let mqtt = *state.mqtt_link.borrow();
    let store_ok = state.store.next_offset().is_ok();
    let stalled = state.metrics.liveness.stalled_for(crate::ingest::now_ms());
    if store_ok && mqtt == Link::Up && stalled.is_none() {
        return Json(Readiness {
            mqtt: "connected",
            store: "ok",
            ingest: "ok",
        })
        .into_response();
    }
    let mut reasons = Vec::new();
    if !store_ok {
        reasons.push("the store cannot be read".to_owned());
    }
    if let Some(seconds) = stalled {
        reasons.push(format!(
            "ingest is stalled: readings have waited {seconds:.0} s with no commit finishing"
        ));
    }
    if mqtt != Link::Up {
        reasons.push("the MQTT subscription is not connected".to_owned());
    }
    ApiError::Unavailable(reasons.join("; ")).into_response()
}

/// Readiness, under the API prefix.
///
/// The same as `/readyz`, for clients that only reach `/api/v1`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz_v1",
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        (status = 503, description = "Not ready; the detail says what is missing."),
    ),
)]
pub(super) async fn readyz_v1(state: State<ApiState>) -> Response {
    readyz(state).await
}
