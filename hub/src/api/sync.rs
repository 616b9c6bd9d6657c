//! `/api/v1/sync`: the cloud pulls readings by offset and commits its cursor, and operators see
//! how far every sink and consumer got, and what was parked.
//!
//! A pull consumer is registered by its first commit; from then on retention keeps every reading
//! it has not committed (until the quota's `full_policy` says otherwise), so an abandoned consumer
//! should be deleted. Only the consumer's own identity (the `sync` scope, named like the
//! consumer) or an admin may commit: a commit is what lets retention delete readings.

use axum::Extension;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::devices::{json_rejection, query, require};
use super::error::ApiError;
use super::params;
use crate::auth::{Identity, Scope};
use crate::clock::now_ms;
use crate::store::sync::{FollowerKind, SyncPosition};
use crate::values::ReadingJson;

/// Page size of a pull when the client gives none.
const DEFAULT_PULL: usize = 1000;
/// Most registered pull consumers (each holds back retention and is a metric series).
const MAX_CONSUMERS: usize = 32;
/// Parked readings listed when the client gives no limit.
const DEFAULT_PARKED: usize = 100;

/// Query of a pull.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct PullParams {
    /// The offset of the last reading already taken; absent to start at the oldest held.
    #[param(minimum = 0, example = 41)]
    cursor: Option<u64>,
    /// Most readings in the answer (1 to the hub's `api.max_page`; default 1000).
    #[param(minimum = 1)]
    limit: Option<usize>,
    /// How long to hold the request when no reading follows `cursor` yet (`30s`; at most
    /// `api.max_pull_wait`, 60 s unless configured): it is answered as soon as one is durable.
    /// Absent: answered at once.
    #[param(example = "30s")]
    wait: Option<String>,
}

/// A page of a pull.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullPage {
    /// Whether more readings follow `next_cursor` already.
    pub more: bool,
    /// The `cursor` of the next pull: the offset of the last reading looked at (readings a
    /// device-limited token may not see are skipped, not returned), or when the page is not full,
    /// the last offset given so far (offsets whose readings were erased with their device are
    /// passed too). Null when nothing is held yet and no cursor was given.
    #[schema(required = true)]
    pub next_cursor: Option<u64>,
    /// The oldest offset the hub still holds; when it is past `cursor + 1`, readings between
    /// were deleted before this consumer took them (quota or age).
    #[schema(required = true)]
    pub oldest: Option<u64>,
    /// The readings, oldest first.
    pub readings: Vec<ReadingJson>,
}

/// Pull readings.
///
/// Readings after `cursor`, oldest first, in offset order (so each device's readings are in
/// its order). Commit progress with `PUT /sync/consumers/{name}` so retention knows what may go.
#[utoipa::path(
    get,
    path = "/sync/readings",
    security(("bearer" = ["read"])),
    tag = "sync",
    params(PullParams),
    responses(
        (status = 200, description = "A page of readings.", body = PullPage),
        (status = 400, description = "A parameter is wrong; the detail says which."),
        (status = 403, description = "The token lacks the `read` scope."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn pull(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    params: Result<Query<PullParams>, QueryRejection>,
) -> Result<Json<PullPage>, ApiError> {
    require(&identity, Scope::Read, "read")?;
    let params = query(params)?;
    let limit = params::limit(params.limit, DEFAULT_PULL, state.max_page)?;
    let cursor = params.cursor;
    if let Some(text) = &params.wait {
        let wait = params::duration("wait", text)?;
        if wait > state.max_pull_wait {
            return Err(ApiError::BadRequest(format!(
                "`wait` is at most {} s (api.max_pull_wait)",
                state.max_pull_wait.as_secs()
            )));
        }
        let from = cursor.map_or(0, |c| c.saturating_add(1));
        wait_for_readings(&state, from, wait).await;
    }
    let store = state.store.clone();
    let (readings, oldest, head) = tokio::task::spawn_blocking(move || {
        let head = store.next_offset()?;
        let oldest = store.oldest_offset()?;
        let from = cursor.map_or(0, |c| c.saturating_add(1));
        Ok::<_, crate::store::StoreError>((store.readings_from(from, head, limit)?, oldest, head))
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(store_failed)?;
    let from = cursor.map_or(0, |c| c.saturating_add(1));
    // A page that is not full saw every offset up to the head: it passes them all, so gaps an
    // erased device left at the end are not looked at again and again.
    let next_cursor = if readings.len() < limit && head > from {
        Some(head - 1)
    } else {
        readings.last().map(|r| r.offset).or(cursor)
    };
    let more = next_cursor.map_or(head > 0, |c| c.saturating_add(1) < head);
    Ok(Json(PullPage {
        more,
        next_cursor,
        oldest,
        readings: readings
            .iter()
            .filter(|r| identity.may_access(&r.device))
            .map(ReadingJson::from)
            .collect(),
    }))
}

/// Holds a pull until a reading at or after `from` is durable, `wait` ends or the hub stops.
async fn wait_for_readings(state: &ApiState, from: u64, wait: Duration) {
    let mut durable = state.durable.clone();
    let deadline = tokio::time::Instant::now() + wait;
    while durable.next_offset() <= from {
        tokio::select! {
            _ = durable.committed() => {}
            _ = tokio::time::sleep_until(deadline) => break,
            _ = state.shutdown.cancelled() => break,
        }
    }
}

fn store_failed(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store failed");
    ApiError::Internal
}

// The consumer in the path, for the description only (the handlers check it themselves).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "read by the OpenAPI derive only")]
pub(super) struct ConsumerPath {
    /// The consumer's name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not a configured sink's.
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "cloud-pull")]
    name: String,
}

/// A consumer's commit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerCommit {
    /// The offset of the last reading the consumer has taken for good.
    #[schema(minimum = 0, example = 41)]
    pub cursor: u64,
}

/// How far a consumer or a sink got.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FollowerState {
    /// The offset of the last reading passed; null if none yet.
    #[schema(required = true)]
    pub cursor: Option<u64>,
    /// `sink` (configured push) or `consumer` (pull).
    #[schema(example = "consumer")]
    pub kind: String,
    /// Readings held that it has not passed yet.
    pub lag_readings: u64,
    /// Age of the oldest reading it has not passed, in seconds (by the reading's timestamp);
    /// 0 when it is not behind.
    pub lag_seconds: u64,
    /// Its name.
    pub name: String,
    /// When its position last changed, RFC 3339 UTC.
    #[schema(format = DateTime)]
    pub updated: String,
}

fn follower_state(
    store: &crate::store::Store,
    name: &str,
    position: &SyncPosition,
) -> Result<FollowerState, crate::store::StoreError> {
    let (lag_readings, lag_seconds) = store.lag(position, now_ms())?;
    Ok(FollowerState {
        cursor: position.next.checked_sub(1),
        kind: match position.kind {
            FollowerKind::Sink => "sink",
            FollowerKind::Consumer => "consumer",
        }
        .into(),
        lag_readings,
        lag_seconds,
        name: name.to_owned(),
        updated: crate::clock::rfc3339(position.updated_ms),
    })
}

fn consumer_name(name: &str) -> Result<&str, ApiError> {
    if device_protocol::is_valid_id(name) {
        Ok(name)
    } else {
        Err(ApiError::BadRequest(
            "a consumer name is 1 to 64 characters of A-Z a-z 0-9 . _ -".into(),
        ))
    }
}

/// Commit a pull consumer's cursor.
///
/// Registers the consumer on its first commit. Needs the `sync` scope and an identity named
/// like the consumer (a token named `cloud`, or a client certificate named `cloud`, commits the
/// consumer `cloud` and no other), or the `admin` scope; either for every device (a
/// device-limited identity would hold back retention for readings it cannot see: 403). A
/// reader cannot commit: moving a consumer forward lets retention delete what it has not
/// pulled. The cursor may move back (to pull again what retention still holds) but not past the
/// newest reading.
#[utoipa::path(
    put,
    path = "/sync/consumers/{name}",
    security(("bearer" = ["sync"])),
    tag = "sync",
    params(ConsumerPath),
    request_body = ConsumerCommit,
    responses(
        (status = 200, description = "Committed.", body = FollowerState),
        (status = 400, description = "The name or the body is wrong, or the cursor is past the newest reading."),
        (status = 403, description = "The identity lacks the `sync` scope, is not named like the consumer (and is not an admin), or is limited to some devices."),
        (status = 409, description = "The name is a configured sink's, or there are already 32 consumers."),
        (status = 413, description = "The body is larger than 16 KiB."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn commit(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
    body: Result<Json<ConsumerCommit>, JsonRejection>,
) -> Result<Json<FollowerState>, ApiError> {
    let name = consumer_name(&name)?.to_owned();
    if !identity.may_commit(&name) {
        // Logged: a refused commit is someone trying to move what retention relies on.
        tracing::info!(consumer = %name, by = %identity.name, "a consumer's commit refused");
        return Err(ApiError::Forbidden(if !identity.has(Scope::Sync) {
            "sync"
        } else if !identity.devices.is_empty() {
            "sync (for every device)"
        } else {
            "sync (for a consumer of its own name)"
        }));
    }
    let Json(body) = body.map_err(json_rejection)?;
    if state.sync.is_sink(&name) {
        return Err(ApiError::Conflict(format!(
            "{name:?} is a configured sink's name"
        )));
    }
    let store = state.store.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let head = store.next_offset()?;
        if body.cursor >= head {
            return Ok(Err(ApiError::BadRequest(format!(
                "`cursor`: {} is past the newest reading ({})",
                body.cursor,
                head.saturating_sub(1)
            ))));
        }
        let positions = store.sync_positions()?;
        match positions.iter().find(|(n, _)| *n == name) {
            Some((_, existing)) if existing.kind == FollowerKind::Sink => {
                return Ok(Err(ApiError::Conflict(format!(
                    "{name:?} was a sink's name; its position is kept until the hub restarts without it"
                ))));
            }
            None if positions
                .iter()
                .filter(|(_, p)| p.kind == FollowerKind::Consumer)
                .count()
                >= MAX_CONSUMERS =>
            {
                return Ok(Err(ApiError::Conflict(format!(
                    "already {MAX_CONSUMERS} consumers; delete one that is gone first"
                ))));
            }
            _ => {}
        }
        let position = SyncPosition {
            next: body.cursor + 1,
            ..SyncPosition::start(FollowerKind::Consumer, now_ms())
        };
        store.set_sync_position(&name, &position)?;
        Ok(Ok(follower_state(&store, &name, &position)?))
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(store_failed)??;
    Ok(Json(answer))
}

/// Delete a pull consumer.
///
/// Needs the `admin` scope. Retention no longer keeps readings for it.
#[utoipa::path(
    delete,
    path = "/sync/consumers/{name}",
    security(("bearer" = ["admin"])),
    tag = "sync",
    params(ConsumerPath),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "The name is not a consumer name."),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 404, description = "No consumer has this name."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn remove(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let name = consumer_name(&name)?.to_owned();
    let store = state.store.clone();
    let lookup = name.clone();
    let removed = tokio::task::spawn_blocking(move || match store.sync_position(&lookup)? {
        Some(p) if p.kind == FollowerKind::Consumer => store.remove_sync_position(&lookup),
        _ => Ok(false),
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(store_failed)?;
    if removed {
        tracing::info!(consumer = %name, by = %identity.name, "pull consumer deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no consumer {name:?}")))
    }
}

/// A sink's counters.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkState {
    /// Batches the receiver took since the hub started.
    pub batches: u64,
    /// Body bytes of those batches, as sent (compressed).
    pub bytes: u64,
    /// Readings the receiver took since the hub started.
    pub delivered: u64,
    /// Why deliveries fail, while they do; null when the last one worked.
    #[schema(required = true)]
    pub error: Option<String>,
    /// Failed deliveries since the hub started (each is retried).
    pub failures: u64,
    /// How far it got.
    pub follower: FollowerState,
    /// `http` or `mqtt`.
    #[schema(example = "http")]
    pub kind: String,
    /// When the receiver last took a batch, RFC 3339 UTC; null if never since the start.
    #[schema(required = true, format = DateTime)]
    pub last_delivery: Option<String>,
    /// Readings parked since the hub started.
    pub parked: u64,
}

/// The store as retention sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreState {
    /// Synced readings deleted to make room, since the hub started.
    pub deleted: u64,
    /// Unsynced readings deleted (by age or by `drop_oldest`), since the hub started.
    pub dropped: u64,
    /// Readings deleted for their age, since the hub started.
    pub expired: u64,
    /// Size of the store's files at retention's last look.
    pub file_bytes: u64,
    /// The quota (`data.max_disk`).
    pub max_disk: u64,
    /// The offset the next reading gets.
    pub next_offset: u64,
    /// The oldest offset held; null when none is.
    #[schema(required = true)]
    pub oldest_offset: Option<u64>,
    /// Readings held.
    pub readings: u64,
    /// Whether new readings are refused: `reject_new` at the quota, or a full file system.
    pub refusing: bool,
    /// Why they are refused: `quota` or `disk_full`; null while they are taken.
    #[schema(required = true)]
    pub refusing_reason: Option<&'static str>,
}

/// Sync at a glance.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncStatus {
    /// Registered pull consumers.
    pub consumers: Vec<FollowerState>,
    /// Configured push sinks.
    pub sinks: Vec<SinkState>,
    /// The store.
    pub store: StoreState,
}

/// Sync status.
///
/// Every sink and pull consumer with its lag (readings and seconds), and the store's quota.
#[utoipa::path(
    get,
    path = "/sync/status",
    security(("bearer" = ["read"])),
    tag = "sync",
    responses(
        (status = 200, description = "The status.", body = SyncStatus),
        (status = 403, description = "The token lacks the `read` scope."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn status(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<SyncStatus>, ApiError> {
    require(&identity, Scope::Read, "read")?;
    let store = state.store.clone();
    let sync = state.sync.clone();
    let status = tokio::task::spawn_blocking(move || {
        let positions = store.sync_positions()?;
        let mut consumers = Vec::new();
        for (name, position) in &positions {
            if position.kind == FollowerKind::Consumer {
                consumers.push(follower_state(&store, name, position)?);
            }
        }
        let mut sinks = Vec::new();
        for sink in &sync.sinks() {
            let position = positions
                .iter()
                .find(|(name, _)| *name == sink.name)
                .map(|(_, p)| *p)
                .unwrap_or_else(|| SyncPosition::start(FollowerKind::Sink, now_ms()));
            let stats = &sink.stats;
            let last = stats.last_delivery_ms.load(Ordering::Relaxed);
            sinks.push(SinkState {
                batches: stats.batches.load(Ordering::Relaxed),
                bytes: stats.bytes.load(Ordering::Relaxed),
                delivered: stats.delivered.load(Ordering::Relaxed),
                error: stats.error(),
                failures: stats.failures.load(Ordering::Relaxed),
                follower: follower_state(&store, &sink.name, &position)?,
                kind: match sink.kind {
                    crate::config::SinkKind::Http => "http",
                    crate::config::SinkKind::Mqtt => "mqtt",
                }
                .into(),
                last_delivery: (last > 0).then(|| crate::clock::rfc3339(last)),
                parked: stats.parked.load(Ordering::Relaxed),
            });
        }
        let r = &sync.retention;
        let next_offset = store.next_offset()?;
        let oldest_offset = store.oldest_offset()?;
        Ok::<_, crate::store::StoreError>(SyncStatus {
            consumers,
            sinks,
            store: StoreState {
                deleted: r.deleted.load(Ordering::Relaxed),
                dropped: r.dropped.load(Ordering::Relaxed),
                expired: r.expired.load(Ordering::Relaxed),
                file_bytes: r.file_bytes.load(Ordering::Relaxed),
                max_disk: sync.max_disk,
                next_offset,
                oldest_offset,
                readings: store.reading_count()?,
                refusing: store.is_refusing() || store.space().is_full(),
                refusing_reason: if store.space().is_full() {
                    Some("disk_full")
                } else if store.is_refusing() {
                    Some("quota")
                } else {
                    None
                },
            },
        })
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(store_failed)?;
    Ok(Json(status))
}

/// Query of the parked list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ParkedParams {
    /// Most entries (1 to the hub's `api.max_page`; default 100).
    #[param(minimum = 1)]
    limit: Option<usize>,
}

/// A reading a receiver refused for good.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParkedReading {
    /// When it was parked, RFC 3339 UTC.
    #[schema(format = DateTime)]
    pub parked: String,
    /// The reading.
    pub reading: ReadingJson,
    /// What the receiver said (at most 512 bytes).
    pub reason: String,
    /// The sink whose receiver refused it.
    pub sink: String,
    /// The receiver's status code.
    pub status: u16,
}

/// Parked readings.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParkedList {
    /// By sink, oldest first.
    pub parked: Vec<ParkedReading>,
}

/// Parked readings.
///
/// Needs the `admin` scope. Readings a sink's receiver refused for good (a permanent 4xx for
/// the reading alone), kept so an operator can see why; at most 10,000 per sink.
#[utoipa::path(
    get,
    path = "/sync/parked",
    security(("bearer" = ["admin"])),
    tag = "sync",
    params(ParkedParams),
    responses(
        (status = 200, description = "The parked readings.", body = ParkedList),
        (status = 400, description = "A parameter is wrong; the detail says which."),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn parked(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    params: Result<Query<ParkedParams>, QueryRejection>,
) -> Result<Json<ParkedList>, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let params = query(params)?;
    let limit = params::limit(params.limit, DEFAULT_PARKED, state.max_page)?;
    let store = state.store.clone();
    let parked = tokio::task::spawn_blocking(move || store.parked(limit))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(store_failed)?;
    Ok(Json(ParkedList {
        parked: parked
            .iter()
            .map(|p| ParkedReading {
                parked: crate::clock::rfc3339(p.parked_ms),
                reading: ReadingJson::from(&p.reading),
                reason: p.reason.clone(),
                sink: p.sink.clone(),
                status: p.status,
            })
            .collect(),
    }))
}
