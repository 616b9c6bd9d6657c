//! What sync shows in `/metrics`: how far behind each sink and pull consumer is (readings and
//! seconds), what each sink delivered or failed to, and the parked readings held.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::SyncState;
use super::pump::SinkStats;
use crate::exposition::{Collect, CollectError, Exposition, escape};
use crate::store::Store;
use crate::store::sync::{FollowerKind, SyncPosition};

/// The followers of the store: the running sinks and the pull consumers.
pub struct SyncMetrics {
    /// The store (positions and lags are read at each scrape).
    pub store: Store,
    /// The running sinks.
    pub state: Arc<SyncState>,
}

impl Collect for SyncMetrics {
    fn collect(&self, out: &mut Exposition) -> Result<(), CollectError> {
        let failed = |e: crate::store::StoreError| CollectError::new("sync", e);
        let sinks = self.state.sinks();
        let mut positions = self.store.sync_positions().map_err(failed)?;
        // A sink that has not sent yet has no saved position: it is behind by everything.
        for sink in &sinks {
            if !positions.iter().any(|(name, _)| *name == sink.name) {
                positions.push((
                    sink.name.clone(),
                    SyncPosition::start(FollowerKind::Sink, 0),
                ));
            }
        }
        let now = crate::clock::now_ms();
        let mut lags = Vec::with_capacity(positions.len());
        for (name, position) in &positions {
            let (readings, seconds) = self.store.lag(position, now).map_err(failed)?;
            lags.push((follower_labels(name, position.kind), readings, seconds));
        }
        out.family(
            "hub_sync_lag_readings",
            "gauge",
            "Readings held that a sink or pull consumer has not passed yet.",
        );
        for (labels, readings, _) in &lags {
            out.sample("hub_sync_lag_readings", labels, readings);
        }
        out.family(
            "hub_sync_lag_seconds",
            "gauge",
            "Age of the oldest reading a sink or pull consumer has not passed (0 when not behind).",
        );
        for (labels, _, seconds) in &lags {
            out.sample("hub_sync_lag_seconds", labels, seconds);
        }
        let counters: [crate::exposition::CounterFamily<'_, SinkStats>; 5] = [
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
        let rows: Vec<(String, &SinkStats)> = sinks
            .iter()
            .map(|sink| (format!("sink=\"{}\"", escape(&sink.name)), &*sink.stats))
            .collect();
        out.counter_families(&counters, &rows);
        out.single(
            "hub_sync_parked_readings",
            "gauge",
            "Parked readings held (GET /api/v1/sync/parked).",
            self.store.parked_count().map_err(failed)?,
        );
        Ok(())
    }
}

fn follower_labels(name: &str, kind: FollowerKind) -> String {
    let kind = match kind {
        FollowerKind::Sink => "sink",
        FollowerKind::Consumer => "consumer",
    };
    format!("follower=\"{}\",kind=\"{kind}\"", escape(name))
}
