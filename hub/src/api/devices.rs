//! `/api/v1/devices` and below: the device registry and latest values (readings are in
//! `readings`).
//!
//! Every body is a typed struct, so the OpenAPI description of a route is derived from what the
//! handler really returns. Fields are in alphabetical order: the bytes stay what they were when
//! these bodies were built as `serde_json` maps, which sort their keys.

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::ApiError;
use super::params;
use super::schema::{DeviceId, TransportName, WireName};
use crate::auth::{Identity, Scope};
use crate::live::Presence;
use crate::store::{Device, DevicePatch};
use crate::values::MetricValue;

/// Labels one device may carry.
pub const MAX_LABELS: usize = 32;
/// Longest label value and display name.
pub const MAX_LABEL_VALUE: usize = 256;
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
    /// A name for people, set by an operator; null when none is set.
    #[schema(required = true, example = "Greenhouse, north bench")]
    display_name: Option<String>,
    /// When the hub first heard from it (hub clock), RFC 3339 UTC.
    #[schema(format = DateTime, example = "2026-11-21T10:00:00.000Z")]
    first_seen: String,
    /// The device id.
    #[schema(
        pattern = r"^([A-Za-z0-9_-][A-Za-z0-9._-]{0,63}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}|\.\.[A-Za-z0-9._-]{1,62})$",
        example = "greenhouse-1"
    )]
    id: String,
    /// Labels set by an operator.
    labels: BTreeMap<String, String>,
    /// When the hub last heard from it (hub clock), RFC 3339 UTC.
    #[schema(format = DateTime, example = "2026-11-21T10:05:00.000Z")]
    last_seen: String,
    /// Whether it is reachable: heard from within `devices.offline_after` (5 minutes unless
    /// configured) and not reported gone since (MQTT last will or `offline` status, serial line
    /// lost).
    online: bool,
    /// The transport it last used.
    transport: TransportName,
}

impl DeviceSummary {
    fn new(device: &Device, presence: &Presence) -> Self {
        let r = &device.record;
        DeviceSummary {
            display_name: r.display_name.clone(),
            first_seen: crate::clock::rfc3339(r.first_seen_ms),
            id: r.name.clone(),
            labels: r.labels.clone(),
            last_seen: crate::clock::rfc3339(r.last_seen_ms),
            online: presence.is_online(&r.name),
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
    /// A name for people, set by an operator; null when none is set.
    #[schema(required = true)]
    display_name: Option<String>,
    /// Firmware version from its `Hello`; null when it sent none.
    #[schema(required = true)]
    firmware: Option<String>,
    /// When the hub first heard from it (hub clock), RFC 3339 UTC.
    #[schema(format = DateTime)]
    first_seen: String,
    /// The device id.
    #[schema(
        pattern = r"^([A-Za-z0-9_-][A-Za-z0-9._-]{0,63}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}|\.\.[A-Za-z0-9._-]{1,62})$"
    )]
    id: String,
    /// Labels set by an operator.
    labels: BTreeMap<String, String>,
    /// When the hub last heard from it (hub clock), RFC 3339 UTC.
    #[schema(format = DateTime)]
    last_seen: String,
    /// Names of the metrics it has sent, sorted.
    metrics: Vec<String>,
    /// Whether it is reachable (see the device list).
    online: bool,
    /// The transport it last used.
    transport: TransportName,
    /// How it encodes its messages, and so how commands are sent to it.
    wire: WireName,
}

/// Counters of one device.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    /// The boot of its latest run of seqs; null for a device that sends no boot (or no seq).
    #[schema(required = true)]
    boot: Option<u32>,
    /// Readings it sent again that were recognised and not stored twice.
    duplicates: u64,
    /// Seqs the hub stopped waiting for: the device left more gaps open than the hub keeps
    /// (each was named to the device before an ack passed it).
    gave_up: u64,
    /// The highest seq stored in its latest run; null for a device that sends none.
    #[schema(required = true)]
    last_seq: Option<u32>,
    /// Readings stored for it.
    readings: u64,
    /// Readings with a seq refused for their content (the device was told, and their seq acked).
    rejected: u64,
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
    /// Only devices with this label: `key` (any value) or `key=value`.
    #[param(example = "room=greenhouse")]
    label: Option<String>,
    /// Only devices that are (`true`) or are not (`false`) online.
    online: Option<bool>,
    /// Only devices on this transport.
    transport: Option<TransportName>,
}

/// What the list keeps.
struct ListFilter {
    label: Option<(String, Option<String>)>,
    online: Option<bool>,
    transport: Option<TransportName>,
}

impl ListFilter {
    fn keeps(&self, device: &Device, presence: &Presence) -> bool {
        let r = &device.record;
        let label_ok = match &self.label {
            None => true,
            Some((key, None)) => r.labels.contains_key(key),
            Some((key, Some(value))) => r.labels.get(key) == Some(value),
        };
        label_ok
            && self.online.is_none_or(|o| presence.is_online(&r.name) == o)
            && self
                .transport
                .is_none_or(|t| t == TransportName::from(r.transport))
    }
}

/// List devices.
///
/// Devices by id, a page at a time; devices the token may not see are left out.
#[utoipa::path(
    get,
    path = "/devices",
    security(("bearer" = ["read"])),
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
    let filter = ListFilter {
        label: p.label.as_deref().map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (l.to_owned(), None),
        }),
        online: p.online,
        transport: p.transport,
    };
    // Read one more than a page to know whether another follows; skip devices this identity may
    // not see, so a restricted token still gets full pages.
    let mut after = p.cursor.clone();
    let mut out = Vec::new();
    loop {
        let page = state.store.devices(after.as_deref(), limit + 1)?;
        let registry_ended = page.len() <= limit;
        for device in page {
            after = Some(device.record.name.clone());
            if identity.may_access(&device.record.name) && filter.keeps(&device, &state.presence) {
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
    let devices = out
        .iter()
        .map(|d| DeviceSummary::new(d, &state.presence))
        .collect();
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
    security(("bearer" = ["read"])),
    tag = "devices",
    params(DeviceId),
    responses(
        (status = 200, description = "The device.", body = DeviceDetail),
        (status = 304, description = "Not modified: `If-None-Match` names the current `ETag`."),
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
    Ok(Json(DeviceDetail::new(device, &state.presence)))
}

impl DeviceDetail {
    fn new(device: Device, presence: &Presence) -> Self {
        let DeviceSummary {
            display_name,
            first_seen,
            id,
            labels,
            last_seen,
            online,
            transport,
        } = DeviceSummary::new(&device, presence);
        let mut metrics = device.metric_names;
        metrics.sort();
        DeviceDetail {
            counters: Counters {
                boot: device.record.runs.current_boot(),
                duplicates: device.record.duplicates,
                gave_up: device.record.gave_up,
                last_seq: device.record.last_seq,
                readings: device.record.readings,
                rejected: device.record.rejected,
            },
            display_name,
            firmware: device.record.firmware,
            first_seen,
            id,
            labels,
            last_seen,
            metrics,
            online,
            transport,
            wire: device.record.wire.into(),
        }
    }
}

/// What an operator changes on a device; a field left out stays as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceUpdate {
    /// The device's labels, replacing the old ones: at most 32, keys 1 to 64 of
    /// `A-Z a-z 0-9 . _ -`, values at most 256 characters without control characters.
    #[schema(example = json!({"room": "greenhouse", "bench": "north"}))]
    labels: Option<BTreeMap<String, String>>,
    /// A name for people (1 to 256 characters without control characters), or null to remove it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "Greenhouse, north bench")]
    display_name: Option<Option<String>>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`, by `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn free_text(name: &str, text: &str) -> Result<(), ApiError> {
    if text.is_empty()
        || text.chars().count() > MAX_LABEL_VALUE
        || text.chars().any(char::is_control)
    {
        return Err(ApiError::BadRequest(format!(
            "{name}: 1 to {MAX_LABEL_VALUE} characters without control characters"
        )));
    }
    Ok(())
}

impl DeviceUpdate {
    fn check(&self) -> Result<(), ApiError> {
        if let Some(labels) = &self.labels {
            if labels.len() > MAX_LABELS {
                return Err(ApiError::BadRequest(format!(
                    "`labels`: at most {MAX_LABELS}"
                )));
            }
            for (key, value) in labels {
                if !device_protocol::is_valid_id(key) {
                    return Err(ApiError::BadRequest(format!(
                        "`labels`: key {key:?} is not 1 to 64 of A-Z a-z 0-9 . _ -"
                    )));
                }
                free_text(&format!("`labels.{key}`"), value)?;
            }
        }
        if let Some(Some(name)) = &self.display_name {
            free_text("`display_name`", name)?;
        }
        Ok(())
    }
}

/// Change a device's labels or display name.
///
/// Needs the `admin` scope. Labels are replaced as a whole; a field left out stays as it is.
#[utoipa::path(
    patch,
    path = "/devices/{id}",
    security(("bearer" = ["admin"])),
    tag = "devices",
    params(DeviceId),
    request_body = DeviceUpdate,
    responses(
        (status = 200, description = "The device after the change.", body = DeviceDetail),
        (status = 400, description = "The body or the id is wrong; the detail says which."),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 404, description = "No such device, or not one the token may see."),
        (status = 413, description = "The body is larger than 16 KiB."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn update(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
    body: Result<Json<DeviceUpdate>, JsonRejection>,
) -> Result<Json<DeviceDetail>, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let id = visible_device(&identity, &id)?.to_owned();
    let Json(update) = body.map_err(json_rejection)?;
    update.check()?;
    let patch = DevicePatch {
        labels: update.labels,
        display_name: update.display_name,
    };
    let store = state.store.clone();
    let lookup = id.clone();
    let device = tokio::task::spawn_blocking(move || store.update_device(&lookup, &patch))
        .await
        .map_err(|_| ApiError::Internal)??
        .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))?;
    Ok(Json(DeviceDetail::new(device, &state.presence)))
}

/// A JSON body that could not be taken: 413 when too large, else 400 with serde's reason.
pub(super) fn json_rejection(e: JsonRejection) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!(
            "a request body is at most {} bytes",
            super::MAX_BODY
        ))
    } else {
        ApiError::BadRequest(e.body_text())
    }
}

/// The latest value of each metric.
///
/// Latest by timestamp, with the timestamp and offset of the reading it came in.
#[utoipa::path(
    get,
    path = "/devices/{id}/latest",
    security(("bearer" = ["read"])),
    tag = "devices",
    params(DeviceId),
    responses(
        (status = 200, description = "The latest values.", body = LatestValues),
        (status = 304, description = "Not modified: `If-None-Match` names the current `ETag`."),
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
                ts: crate::clock::rfc3339(v.timestamp_ms),
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
