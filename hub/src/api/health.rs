//! `/healthz` (alive) and `/readyz` (able to serve: the store reads, the MQTT subscription is up).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::error::{ApiError, Problem};
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
    /// The store: `ok`; when not ready, `disk_full` (the file system holding it is full: new
    /// readings are not acknowledged until it has room) or `unreadable`.
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
/// Ready when the store can be read and written and the MQTT subscription is up; otherwise 503
/// with the reasons in the problem's detail, and each part's state (`mqtt`, `store`, `ingest`,
/// as in the 200 answer) beside it.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        (status = 503, description = "Not ready; the detail says what is missing, and the members `mqtt`, `store` and `ingest` the state of each part (`store`: `disk_full` while the file system holding it is full)."),
    ),
)]
pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    let now_ms = crate::clock::now_ms();
    let mqtt_up = *state.mqtt_link.borrow() == Link::Up;
    let store_ok = state.store.next_offset().is_ok();
    let full_since = state.store.space().full_since_ms();
    let stalled = state.liveness.stalled_for(now_ms);
    let readiness = Readiness {
        mqtt: if mqtt_up { "connected" } else { "disconnected" },
        store: match (store_ok, full_since) {
            (false, _) => "unreadable",
            (true, Some(_)) => "disk_full",
            (true, None) => "ok",
        },
        ingest: if stalled.is_some() { "stalled" } else { "ok" },
    };
    if store_ok && full_since.is_none() && mqtt_up && stalled.is_none() {
        return Json(readiness).into_response();
    }
    let mut reasons = Vec::new();
    if !store_ok {
        reasons.push("the store cannot be read".to_owned());
    }
    if let Some(since) = full_since {
        reasons.push(format!(
            "the file system holding the store has been full for {} s: new readings are not stored nor acknowledged until it has room",
            now_ms.saturating_sub(since) / 1000
        ));
    }
    if let Some(seconds) = stalled {
        reasons.push(format!(
            "ingest is stalled: readings have waited {seconds:.0} s with no commit finishing"
        ));
    }
    if !mqtt_up {
        reasons.push("the MQTT subscription is not connected".to_owned());
    }
    let mut response = ApiError::Unavailable(reasons.join("; ")).into_response();
    if let Some(problem) = response.extensions_mut().get_mut::<Problem>() {
        problem.members = Some(BTreeMap::from([
            ("mqtt", readiness.mqtt),
            ("store", readiness.store),
            ("ingest", readiness.ingest),
        ]));
    }
    response
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
