//! What the store shows in `/metrics`: what the writer did with readings and how its commits
//! went (sizes, durations), and the store against its quota: readings held, file and live bytes,
//! refusals, and what retention deleted.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Store;
use super::retention::RetentionStats;
use super::writer::WriterStats;
use crate::exposition::{Collect, CollectError, Exposition};

impl Collect for WriterStats {
    fn collect(&self, out: &mut Exposition) -> Result<(), CollectError> {
        out.family(
            "hub_store_items_total",
            "counter",
            "What the store writer did with readings: stored, duplicate (a retransmission, stored once), refused (store full, reject_new), rejected (refused for its content: settled, its device told).",
        );
        for (outcome, count) in [
            ("stored", &self.readings),
            ("duplicate", &self.duplicates),
            ("refused", &self.refused),
            ("rejected", &self.rejected),
        ] {
            out.sample(
                "hub_store_items_total",
                &format!("outcome=\"{outcome}\""),
                count.load(Ordering::Relaxed),
            );
        }
        out.single(
            "hub_store_seqs_given_up_total",
            "counter",
            "Seqs the store stopped waiting for because a device left more gaps open than it keeps; each is named to the device before an ack passes it.",
            self.gave_up.load(Ordering::Relaxed),
        );
        out.single(
            "hub_store_commits_total",
            "counter",
            "Durable commits.",
            self.commits.load(Ordering::Relaxed),
        );
        out.single(
            "hub_store_commit_failures_total",
            "counter",
            "Commits that failed (nothing of them was acknowledged).",
            self.failed_commits.load(Ordering::Relaxed),
        );
        out.family(
            "hub_store_commit_items",
            "histogram",
            "Items per durable commit.",
        );
        self.commit
            .batch_items
            .render(out.text(), "hub_store_commit_items", "");
        out.family(
            "hub_store_commit_duration_seconds",
            "histogram",
            "Time of a durable commit, fsync included.",
        );
        self.commit
            .seconds
            .render(out.text(), "hub_store_commit_duration_seconds", "");
        Ok(())
    }
}

/// The store against its quota, and retention's work.
pub struct StoreMetrics {
    /// The store (its head, oldest reading and devices are read at each scrape).
    pub store: Store,
    /// Retention's counters.
    pub retention: Arc<RetentionStats>,
    /// The quota (`data.max_disk`).
    pub max_disk: u64,
}

impl Collect for StoreMetrics {
    fn collect(&self, out: &mut Exposition) -> Result<(), CollectError> {
        let failed = |e: super::StoreError| CollectError::new("store", e);
        let head = self.store.next_offset().map_err(failed)?;
        let held = self.store.reading_count().map_err(failed)?;
        let devices = self.store.device_count().map_err(failed)?;
        let r = &self.retention;
        out.single(
            "hub_store_readings",
            "gauge",
            "Readings held in the store.",
            held,
        );
        out.single(
            "hub_store_next_offset",
            "gauge",
            "The offset the next reading gets.",
            head,
        );
        out.single(
            "hub_store_file_bytes",
            "gauge",
            "Size of the store's file at retention's last look.",
            r.file_bytes.load(Ordering::Relaxed),
        );
        out.single(
            "hub_store_live_bytes",
            "gauge",
            "Bytes of live data in the store, as retention last measured or estimated them.",
            r.live_bytes.load(Ordering::Relaxed),
        );
        out.single(
            "hub_store_max_disk_bytes",
            "gauge",
            "The store's quota (data.max_disk).",
            self.max_disk,
        );
        out.family(
            "hub_store_refusing",
            "gauge",
            "1 while the store refuses new readings, by reason: quota (at data.max_disk, reject_new), disk_full (the file system holding it is full: nothing is acknowledged until it has room).",
        );
        out.sample(
            "hub_store_refusing",
            "reason=\"quota\"",
            u8::from(self.store.is_refusing()),
        );
        out.sample(
            "hub_store_refusing",
            "reason=\"disk_full\"",
            u8::from(self.store.space().is_full()),
        );
        out.family(
            "hub_retention_deleted_total",
            "counter",
            "Readings retention deleted: synced (to make room), expired (older than data.max_age).",
        );
        out.sample(
            "hub_retention_deleted_total",
            "reason=\"synced\"",
            r.deleted.load(Ordering::Relaxed),
        );
        out.sample(
            "hub_retention_deleted_total",
            "reason=\"expired\"",
            r.expired.load(Ordering::Relaxed),
        );
        out.single(
            "hub_readings_dropped_total",
            "counter",
            "Readings deleted before every sink and consumer had them (data loss: drop_oldest at the quota, or data.max_age).",
            r.dropped.load(Ordering::Relaxed),
        );
        out.single(
            "hub_store_compactions_total",
            "counter",
            "Compactions of the store file while idle.",
            r.compactions.load(Ordering::Relaxed),
        );
        out.single("hub_devices", "gauge", "Devices the store knows.", devices);
        Ok(())
    }
}
