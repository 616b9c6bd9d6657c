//! `/api/v1/devices` and below: the device registry and latest values (readings are in
//! `readings`).
//!
//! Every body is a typed struct, so the OpenAPI description of a route is derived from what the
//! handler really returns. Fields are in alphabetical order: the bytes stay what they were when
//! these bodies were built as `serde_json` maps, which sort their keys.

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::ApiError;
use super::params;
use super::schema::{DeviceId, MetricValue, TransportName};
use crate::auth::{Identity, Scope};
use crate::ingest::now_ms;
use crate::store::Device;

/// A device counts as online when it was heard from within this window.
const ONLINE_WINDOW_MS: u64 = 5 * 60 * 1000;
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

/// A device as the list shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceSummary {
    /// When the hub first heard from it (hub clock), RFC 3339 UTC.
    #[schema(format = DateTime, example = "2026-11-21T10:00:00.000Z")]
    first_seen: String,
    /// The device id.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "greenhouse-1")]
    id: String,
    /// Labels set by an operator.
    labels: BTreeMap<String, String>,
    /// When the hub last heard from it (hub clock), RFC 3339 UTC.
    #[schema(format = DateTime, example = "2026-11-21T10:05:00.000Z")]
    last_seen: String,
    /// Whether the hub heard from it within the last 5 minutes.
    online: bool,
    /// The transport it last used.
    transport: TransportName,
}

impl DeviceSummary {
    fn new(device: &Device, now: u64) -> Self {
        let r = &device.record;
        DeviceSummary {
            first_seen: params::rfc3339(r.first_seen_ms),
            id: r.name.clone(),
            labels: r.labels.clone(),
            last_seen: params::rfc3339(r.last_seen_ms),
            online: now.saturating_sub(r.last_seen_ms) < ONLINE_WINDOW_MS,
            transport: r.transport.into(),
        }
    }
}

/// A page of devices, by id.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePage {
    /// The devices of this page.
    devices: Vec<DeviceSummary>,
    /// The `cursor` for the next page; null on the last one.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// One device in full: the summary's fields and what it has sent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceDetail {
    /// What the hub counted for it.
    counters: Counters,
    /// Firmware version from its `Hello`; null when it sent none.
    #[schema(required = true)]
    firmware: Option<String>,
    /// When the hub first heard from it (hub clock), RFC 3339 UTC.
    #[schema(format = DateTime)]
    first_seen: String,
    /// The device id.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    id: String,
    /// Labels set by an operator.
    labels: BTreeMap<String, String>,
    /// When the hub last heard from it (hub clock), RFC 3339 UTC.
    #[schema(format = DateTime)]
    last_seen: String,
    /// Names of the metrics it has sent, sorted.
    metrics: Vec<String>,
    /// Whether the hub heard from it within the last 5 minutes.
    online: bool,
    /// The transport it last used.
    transport: TransportName,
}

/// Counters of one device.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    /// The highest seq stored for it; null for a device that sends none.
    #[schema(required = true)]
    last_seq: Option<u32>,
    /// Readings stored for it.
    readings: u64,
}

/// The latest value of each metric of a device.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LatestValues {
    /// The device id.
    device: String,
    /// The latest value by metric name (latest by timestamp).
    metrics: BTreeMap<String, LatestValue>,
}

/// The latest value of one metric.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LatestValue {
    /// Hub offset of the reading it came in.
    offset: u64,
    /// Timestamp of that reading, RFC 3339 UTC.
    #[schema(format = DateTime)]
    ts: String,
    /// The value.
    value: MetricValue,
}

/// Query parameters of the device list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Devices per page: 1 to `api.max_page` (1000 unless configured), 100 when absent.
    #[param(minimum = 1)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    cursor: Option<String>,
}

/// List devices.
///
/// Devices by id, a page at a time; devices the token may not see are left out.
#[utoipa::path(
    get,
    path = "/devices",
    tag = "devices",
    params(ListParams),
    responses(
        (status = 200, description = "A page of devices.", body = DevicePage),
        (status = 400, description = "A parameter is wrong or unknown; the detail names it."),
        (status = 403, description = "The token lacks the `read` scope."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<DevicePage>, ApiError> {
    require(&identity, Scope::Read, "read")?;
    let p = query(q)?;
    let limit = params::limit(p.limit, DEFAULT_PAGE, state.max_page)?;
    if let Some(c) = &p.cursor {
        params::device_id(c)
            .map_err(|_| ApiError::BadRequest("`cursor` is not one this API returned".into()))?;
    }
    let now = now_ms();
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
    let next_cursor = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|d| d.record.name.clone())
    } else {
        None
    };
    let devices = out.iter().map(|d| DeviceSummary::new(d, now)).collect();
    Ok(Json(DevicePage {
        devices,
        next_cursor,
    }))
}

/// One device.
///
/// Its metadata, the metrics it has sent, its firmware and counters.
#[utoipa::path(
    get,
    path = "/devices/{id}",
    tag = "devices",
    params(DeviceId),
    responses(
        (status = 200, description = "The device.", body = DeviceDetail),
        (status = 400, description = "The id is not a device id."),
        (status = 403, description = "The token lacks the `read` scope."),
        (status = 404, description = "No such device, or not one the token may see."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn detail(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    require(&identity, Scope::Read, "read")?;
    let id = visible_device(&identity, &id)?;
    let device = state
        .store
        .device(id)?
        .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))?;
    let DeviceSummary {
        first_seen,
        id,
        labels,
        last_seen,
        online,
        transport,
    } = DeviceSummary::new(&device, now_ms());
    let mut metrics = device.metric_names;
    metrics.sort();
    Ok(Json(DeviceDetail {
        counters: Counters {
            last_seq: device.record.last_seq,
            readings: device.record.readings,
        },
        firmware: device.record.firmware,
        first_seen,
        id,
        labels,
        last_seen,
        metrics,
        online,
        transport,
    }))
}

/// The latest value of each metric.
///
/// Latest by timestamp, with the timestamp and offset of the reading it came in.
#[utoipa::path(
    get,
    path = "/devices/{id}/latest",
    tag = "devices",
    params(DeviceId),
    responses(
        (status = 200, description = "The latest values.", body = LatestValues),
        (status = 400, description = "The id is not a device id."),
        (status = 403, description = "The token lacks the `read` scope."),
        (status = 404, description = "No such device, or not one the token may see."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn latest(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Json<LatestValues>, ApiError> {
    require(&identity, Scope::Read, "read")?;
    let id = visible_device(&identity, &id)?.to_owned();
    let store = state.store.clone();
    let lookup = id.clone();
    let values = tokio::task::spawn_blocking(move || store.latest(&lookup))
        .await
        .map_err(|_| ApiError::Internal)??
        .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))?;
    let metrics = values
        .into_iter()
        .map(|v| {
            let latest = LatestValue {
                offset: v.offset,
                ts: params::rfc3339(v.timestamp_ms),
                value: MetricValue(v.value),
            };
            (v.metric, latest)
        })
        .collect();
    Ok(Json(LatestValues {
        device: id,
        metrics,
    }))
}
