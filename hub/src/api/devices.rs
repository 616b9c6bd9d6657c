//! `/api/v1/devices` and below: the device registry and latest values (readings are in
//! `readings`).

use axum::Extension;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use device_protocol::OwnedValue;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::ApiState;
use super::error::ApiError;
use super::params;
use crate::auth::{Identity, Scope};
use crate::live::Presence;
use crate::store::Device;

/// Page size when the client gives none.
pub(super) const DEFAULT_PAGE: usize = 100;

pub(super) fn require(
    identity: &Identity,
    scope: Scope,
    name: &'static str,
) -> Result<(), ApiError> {
    if identity.has(scope) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(name))
    }
}

/// A device the identity may see, or 404 (the same answer as for a device that does not exist,
/// so a restricted token cannot probe for the others).
pub(super) fn visible_device<'a>(identity: &Identity, id: &'a str) -> Result<&'a str, ApiError> {
    let id = params::device_id(id)?;
    if identity.may_access(id) {
        Ok(id)
    } else {
        Err(ApiError::NotFound(format!("no device {id:?}")))
    }
}

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// A value as plain JSON.
pub fn value_json(value: &OwnedValue) -> Value {
    match value {
        OwnedValue::F64(f) => json!(f),
        OwnedValue::I64(i) => json!(i),
        OwnedValue::Bool(b) => json!(b),
        OwnedValue::Str(s) => json!(s),
    }
}

fn device_summary(device: &Device, presence: &Presence) -> Map<String, Value> {
    let r = &device.record;
    let mut m = Map::new();
    m.insert("id".into(), json!(r.name));
    m.insert("transport".into(), json!(r.transport));
    m.insert("first_seen".into(), json!(params::rfc3339(r.first_seen_ms)));
    m.insert("last_seen".into(), json!(params::rfc3339(r.last_seen_ms)));
    m.insert("online".into(), json!(presence.is_online(&r.name)));
    m.insert("labels".into(), json!(r.labels));
    m
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /api/v1/devices`: devices by id, paged by the last id of the previous page.
pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require(&identity, Scope::Read, "read")?;
    let p = query(q)?;
    let limit = params::limit(p.limit, DEFAULT_PAGE, state.max_page)?;
    if let Some(c) = &p.cursor {
        params::device_id(c)
            .map_err(|_| ApiError::BadRequest("`cursor` is not one this API returned".into()))?;
    }
    // Read one more than a page to know whether another follows; skip devices this identity may
    // not see, so a restricted token still gets full pages.
    let mut after = p.cursor.clone();
    let mut out = Vec::new();
    loop {
        let page = state.store.devices(after.as_deref(), limit + 1)?;
        let registry_ended = page.len() <= limit;
        for device in page {
            after = Some(device.record.name.clone());
            if identity.may_access(&device.record.name) {
                out.push(device);
            }
        }
        if out.len() > limit || registry_ended {
            break;
        }
    }
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|d| d.record.name.clone())
    } else {
        None
    };
    let devices: Vec<Value> = out
        .iter()
        .map(|d| Value::Object(device_summary(d, &state.presence)))
        .collect();
    Ok(Json(json!({ "devices": devices, "next_cursor": next })))
}

/// `GET /api/v1/devices/{id}`
pub(super) async fn detail(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&identity, Scope::Read, "read")?;
    let id = visible_device(&identity, &id)?;
    let device = state
        .store
        .device(id)?
        .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))?;
    let mut m = device_summary(&device, &state.presence);
    let mut metrics = device.metric_names.clone();
    metrics.sort();
    m.insert("metrics".into(), json!(metrics));
    m.insert("firmware".into(), json!(device.record.firmware));
    m.insert(
        "counters".into(),
        json!({ "readings": device.record.readings, "last_seq": device.record.last_seq }),
    );
    Ok(Json(Value::Object(m)))
}

/// `GET /api/v1/devices/{id}/latest`
pub(super) async fn latest(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&identity, Scope::Read, "read")?;
    let id = visible_device(&identity, &id)?.to_owned();
    let store = state.store.clone();
    let lookup = id.clone();
    let values = tokio::task::spawn_blocking(move || store.latest(&lookup))
        .await
        .map_err(|_| ApiError::Internal)??
        .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))?;
    let mut metrics = Map::new();
    for v in values {
        metrics.insert(
            v.metric,
            json!({ "value": value_json(&v.value), "ts": params::rfc3339(v.timestamp_ms), "offset": v.offset }),
        );
    }
    Ok(Json(json!({ "device": id, "metrics": metrics })))
}
