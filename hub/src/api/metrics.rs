//! `GET /metrics`: Prometheus text format (version 0.0.4), `metrics` scope.
//!
//! Every family is written from counters the parts keep anyway; a scrape reads a few atomics,
//! the sync positions and the store's head, never the readings. Label values are names the
//! configuration or the routes fix (transports, reasons, sinks, route templates), plus pull
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
use crate::ingest::Rejection;
use crate::metrics::{escape, family, sample, single};
use crate::store::sync::FollowerKind;

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
    let store = state.store.clone();
    let sync = state.sync.clone();
    let facts = tokio::task::spawn_blocking(move || {
        let mut positions = store.sync_positions()?;
        // A sink that has not sent yet has no saved position: it is behind by everything.
        for sink in &sync.sinks() {
            if !positions.iter().any(|(name, _)| *name == sink.name) {
                let start = crate::store::sync::SyncPosition::start(FollowerKind::Sink, 0);
                positions.push((sink.name.clone(), start));
            }
        }
        let head = store.next_offset()?;
        let oldest = store.oldest_offset()?.unwrap_or(head);
        let mut lags = Vec::new();
        for (name, position) in &positions {
            let (readings, seconds) = store.lag(position, crate::clock::now_ms())?;
            lags.push((name.clone(), position.kind, readings, seconds));
        }
        let parked = store.parked_count()?;
        let devices = store.device_count()?;
        Ok::<_, crate::store::StoreError>((head, oldest, lags, parked, devices, sync))
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(|e| {
        tracing::error!(error = %e, "store failed");
        ApiError::Internal
    })?;
    let (head, oldest, lags, parked, devices, sync) = facts;
    let sources = &state.metrics;
    let mut out = String::with_capacity(16 << 10);

    family(
        &mut out,
        "hub_build_info",
        "gauge",
        "The hub's version (always 1).",
    );
    sample(
        &mut out,
        "hub_build_info",
        concat!("version=\"", env!("CARGO_PKG_VERSION"), "\""),
        1,
    );
    if let Some(rss) = crate::metrics::resident_bytes() {
        single(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
            rss,
        );
    }
    single(
        &mut out,
        "process_start_time_seconds",
        "gauge",
        "When the process started, unix seconds.",
        sources.started,
    );

    family(
        &mut out,
        "hub_ingest_messages_total",
        "counter",
        "Device messages by transport and outcome: accepted (handed to the store writer) or the reason they were skipped.",
    );
    for (transport, stats) in &sources.ingest {
        sample(
            &mut out,
            "hub_ingest_messages_total",
            &format!("transport=\"{transport}\",outcome=\"accepted\""),
            stats.accepted.load(Ordering::Relaxed),
        );
        for reason in Rejection::ALL {
            sample(
                &mut out,
                "hub_ingest_messages_total",
                &format!("transport=\"{transport}\",outcome=\"{}\"", reason.name()),
                stats.rejected(reason),
            );
        }
    }
    sources.topics.render(&mut out);
    family(
        &mut out,
        "hub_ingest_dropped_total",
        "counter",
        "Readings accepted and then lost after all, by transport and reason: only QoS 0 ones, which cannot be sent again (anything acknowledged is never dropped).",
    );
    for (transport, stats) in &sources.ingest {
        for reason in crate::ingest::DropReason::ALL {
            sample(
                &mut out,
                "hub_ingest_dropped_total",
                &format!("transport=\"{transport}\",reason=\"{}\"", reason.name()),
                stats.dropped(reason),
            );
        }
    }
    family(
        &mut out,
        "hub_ingest_stalled_seconds",
        "gauge",
        "How long readings have waited with no commit finishing, once past ingest.stall_after; 0 while ingest moves.",
    );
    sample(
        &mut out,
        "hub_ingest_stalled_seconds",
        "",
        sources
            .liveness
            .stalled_for(crate::clock::now_ms())
            .unwrap_or(0.0),
    );
    family(
        &mut out,
        "hub_device_connections",
        "gauge",
        "MQTT client connections open on the hub's endpoint (plain and TLS listeners).",
    );
    sample(
        &mut out,
        "hub_device_connections",
        "listener=\"mqtt\"",
        sources
            .ingest
            .iter()
            .map(|(_, s)| s.connections.load(Ordering::Relaxed))
            .sum::<u64>(),
    );
    let w = &sources.writer;
    family(
        &mut out,
        "hub_store_items_total",
        "counter",
        "What the store writer did with readings: stored, duplicate (a retransmission, stored once), refused (store full, reject_new), rejected (refused for its content: settled, its device told).",
    );
    sample(
        &mut out,
        "hub_store_items_total",
        "outcome=\"stored\"",
        w.readings.load(Ordering::Relaxed),
    );
    sample(
        &mut out,
        "hub_store_items_total",
        "outcome=\"duplicate\"",
        w.duplicates.load(Ordering::Relaxed),
    );
    sample(
        &mut out,
        "hub_store_items_total",
        "outcome=\"refused\"",
        w.refused.load(Ordering::Relaxed),
    );
    sample(
        &mut out,
        "hub_store_items_total",
        "outcome=\"rejected\"",
        w.rejected.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "hub_store_seqs_given_up_total",
        "counter",
        "Seqs the store stopped waiting for because a device left more gaps open than it keeps; each is named to the device before an ack passes it.",
        w.gave_up.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "hub_store_commits_total",
        "counter",
        "Durable commits.",
        w.commits.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "hub_store_commit_failures_total",
        "counter",
        "Commits that failed (nothing of them was acknowledged).",
        w.failed_commits.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "hub_store_commit_items",
        "histogram",
        "Items per durable commit.",
    );
    w.commit
        .batch_items
        .render(&mut out, "hub_store_commit_items", "");
    family(
        &mut out,
        "hub_store_commit_duration_seconds",
        "histogram",
        "Time of a durable commit, fsync included.",
    );
    w.commit
        .seconds
        .render(&mut out, "hub_store_commit_duration_seconds", "");

    let r = &sync.retention;
    single(
        &mut out,
        "hub_store_readings",
        "gauge",
        "Readings held in the store.",
        head - oldest,
    );
    single(
        &mut out,
        "hub_store_next_offset",
        "gauge",
        "The offset the next reading gets.",
        head,
    );
    single(
        &mut out,
        "hub_store_file_bytes",
        "gauge",
        "Size of the store's file at retention's last look.",
        r.file_bytes.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "hub_store_live_bytes",
        "gauge",
        "Bytes of live data in the store, as retention last measured or estimated them.",
        r.live_bytes.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "hub_store_max_disk_bytes",
        "gauge",
        "The store's quota (data.max_disk).",
        sync.max_disk,
    );
    family(
        &mut out,
        "hub_store_refusing",
        "gauge",
        "1 while the store refuses new readings, by reason: quota (at data.max_disk, reject_new), disk_full (the file system holding it is full: nothing is acknowledged until it has room).",
    );
    sample(
        &mut out,
        "hub_store_refusing",
        "reason=\"quota\"",
        u8::from(state.store.is_refusing()),
    );
    sample(
        &mut out,
        "hub_store_refusing",
        "reason=\"disk_full\"",
        u8::from(state.store.space().is_full()),
    );
    family(
        &mut out,
        "hub_retention_deleted_total",
        "counter",
        "Readings retention deleted: synced (to make room), expired (older than data.max_age).",
    );
    sample(
        &mut out,
        "hub_retention_deleted_total",
        "reason=\"synced\"",
        r.deleted.load(Ordering::Relaxed),
    );
    sample(
        &mut out,
        "hub_retention_deleted_total",
        "reason=\"expired\"",
        r.expired.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "hub_readings_dropped_total",
        "counter",
        "Readings deleted before every sink and consumer had them (data loss: drop_oldest at the quota, or data.max_age).",
        r.dropped.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "hub_store_compactions_total",
        "counter",
        "Compactions of the store file while idle.",
        r.compactions.load(Ordering::Relaxed),
    );

    single(
        &mut out,
        "hub_devices",
        "gauge",
        "Devices the store knows.",
        devices,
    );
    single(
        &mut out,
        "hub_devices_online",
        "gauge",
        "Devices online now.",
        state.presence.online_count(),
    );

    family(
        &mut out,
        "hub_sync_lag_readings",
        "gauge",
        "Readings held that a sink or pull consumer has not passed yet.",
    );
    for (name, kind, readings, _) in &lags {
        sample(
            &mut out,
            "hub_sync_lag_readings",
            &follower_labels(name, *kind),
            readings,
        );
    }
    family(
        &mut out,
        "hub_sync_lag_seconds",
        "gauge",
        "Age of the oldest reading a sink or pull consumer has not passed (0 when not behind).",
    );
    for (name, kind, _, seconds) in &lags {
        sample(
            &mut out,
            "hub_sync_lag_seconds",
            &follower_labels(name, *kind),
            seconds,
        );
    }
    let counters: [(&str, &str, SinkCounter); 5] = [
        (
            "hub_sync_delivered_readings_total",
            "Readings a sink's receiver took.",
            |s| s.delivered.load(Ordering::Relaxed),
        ),
        (
            "hub_sync_batches_total",
            "Batches a sink's receiver took.",
            |s| s.batches.load(Ordering::Relaxed),
        ),
        (
            "hub_sync_sent_bytes_total",
            "Body bytes of the batches a sink's receiver took (compressed).",
            |s| s.bytes.load(Ordering::Relaxed),
        ),
        (
            "hub_sync_failures_total",
            "Deliveries that failed and are retried.",
            |s| s.failures.load(Ordering::Relaxed),
        ),
        (
            "hub_sync_parked_readings_total",
            "Readings a sink parked because its receiver refused them for good.",
            |s| s.parked.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, read) in counters {
        family(&mut out, name, "counter", help);
        for sink in &sync.sinks() {
            sample(
                &mut out,
                name,
                &format!("sink=\"{}\"", escape(&sink.name)),
                read(&sink.stats),
            );
        }
    }
    single(
        &mut out,
        "hub_sync_parked_readings",
        "gauge",
        "Parked readings held (GET /api/v1/sync/parked).",
        parked,
    );

    sources.requests.render(&mut out);
    family(
        &mut out,
        "hub_api_rate_limited_total",
        "counter",
        "Requests refused with 429: over an identity's rate, or too many failed authentications from an address.",
    );
    sample(
        &mut out,
        "hub_api_rate_limited_total",
        "kind=\"identity\"",
        state.limits.requests_refused.load(Ordering::Relaxed),
    );
    sample(
        &mut out,
        "hub_api_rate_limited_total",
        "kind=\"auth_failure\"",
        state.limits.failures_refused.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "hub_stream_clients",
        "gauge",
        "WebSocket stream clients connected.",
        super::STREAM_CLIENTS - state.stream_slots.available_permits(),
    );
    single(
        &mut out,
        "hub_mqtt_connected",
        "gauge",
        "1 while the hub's MQTT subscription is up.",
        u8::from(*state.mqtt_link.borrow() == crate::ingest::mqtt::Link::Up),
    );
    family(
        &mut out,
        "hub_certificate_expiry_timestamp_seconds",
        "gauge",
        "When a certificate of the API expires (the earliest in its file), unix seconds.",
    );
    if let Ok(certificates) = sources.certificates.lock() {
        for (name, not_after) in certificates.iter() {
            sample(
                &mut out,
                "hub_certificate_expiry_timestamp_seconds",
                &format!("certificate=\"{name}\""),
                not_after,
            );
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// Reads one counter of a sink.
type SinkCounter = fn(&crate::sync::pump::SinkStats) -> u64;

fn follower_labels(name: &str, kind: FollowerKind) -> String {
    let kind = match kind {
        FollowerKind::Sink => "sink",
        FollowerKind::Consumer => "consumer",
    };
    format!("follower=\"{}\",kind=\"{kind}\"", escape(name))
}
