//! Retention: keeps the store within `data.max_disk` and `data.max_age`.
//!
//! Every round, oldest first and at most [`CHUNK`] readings per transaction:
//! - readings older than `max_age` are deleted, synced or not;
//! - above 75% of the file budget (see [`crate::store::Engine::file_budget`]), readings every sink and registered pull
//!   consumer has passed are deleted until the store is under 65%;
//! - still above 75%, `full_policy` decides: `drop_oldest` deletes the oldest unsynced readings,
//!   `reject_new` makes the store refuse new readings (devices are not acknowledged and keep
//!   them) until it is back under 65%.
//!
//! Above 65%, each commit waits for a round begun after the previous one
//! ([`crate::store::room`]): ingest cannot outrun the deletes.
//!
//! Every unsynced reading deleted is counted and logged: that is data loss. The engine reuses
//! freed space, so the file stops growing once retention runs; when the hub has been idle for a
//! while and the file holds much free space, it is compacted so it shrinks.
//!
//! Measuring live bytes walks the engine's trees, so it is done at most every
//! [`MEASURE_EVERY`], and only once the file is past half the quota (before that, live bytes
//! cannot be near it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::FullPolicy;
use crate::store::durable::Durable;
use crate::store::{Store, StoreError, Usage};

/// Most readings deleted in one transaction, so a delete never holds the writer for long.
pub const CHUNK: usize = 2_000;
/// How often retention looks when nothing is written; it also looks after every commit (a look
/// at a store far from its quota is one `stat`), so a burst cannot outrun it.
const ROUND: Duration = Duration::from_secs(1);
/// Least time between two measurements of live bytes (a walk of the file, which holds off commits
/// while it runs: 250 to 400 ms for a 126 MB file here); in between, live bytes are estimated from
/// the readings held.
const MEASURE_EVERY: Duration = Duration::from_secs(10);
/// A measurement waits at least this many times its own last duration, so walking a large file
/// holds off commits at most 1% of the time.
const MEASURE_SPACING: u32 = 100;
/// Least time between two log lines about deleted unsynced readings (each line sums them up).
const LOSS_LOG_EVERY: Duration = Duration::from_secs(10);
/// No reading for this long counts as idle, for compaction.
const IDLE_AFTER: Duration = Duration::from_secs(60);
/// No new reading for this long after a load: the store's cache is emptied.
const RELEASE_AFTER: Duration = Duration::from_secs(10);
/// Readings since the cache was last emptied that make a load: fewer (a trickle of devices
/// reporting now and then) leave the cache alone, so a quiet hub does not reopen its store after
/// every pause.
const RELEASE_AFTER_READINGS: u64 = 10_000;

/// What retention keeps to.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// The quota, in bytes.
    pub max_disk: u64,
    /// At the quota with unsynced readings.
    pub full_policy: FullPolicy,
    /// Delete readings older than this.
    pub max_age: Option<Duration>,
}

/// Counters of retention, for the API and metrics.
#[derive(Debug, Default)]
pub struct RetentionStats {
    /// Synced readings deleted to make room.
    pub deleted: AtomicU64,
    /// Readings deleted for their age.
    pub expired: AtomicU64,
    /// Unsynced readings deleted (data loss: by age or by `drop_oldest`).
    pub dropped: AtomicU64,
    /// Whether the store refuses new readings (`reject_new` at the quota).
    pub refusing: AtomicBool,
    /// Size of the store's files at the last look.
    pub file_bytes: AtomicU64,
    /// Live bytes at the last measurement.
    pub live_bytes: AtomicU64,
    /// Compactions done.
    pub compactions: AtomicU64,
}

/// Readings to delete in the next transaction to bring `live` bytes down to `low`.
fn needed(live: u64, low: u64, per_reading: u64) -> usize {
    (live.saturating_sub(low).div_ceil(per_reading.max(1)) as usize).clamp(1, CHUNK)
}

/// The retention task.
pub struct Retention {
    store: Store,
    settings: RetentionSettings,
    stats: Arc<RetentionStats>,
    measured: Option<(Instant, Usage, u64)>,
    /// How long the last measurement took.
    measure_took: Duration,
    /// The head offset when it last moved, and when.
    last_activity: (u64, Instant),
    compacted_at: Option<u64>,
    /// The head when the store's cache was last emptied (or tried to be).
    released_at: u64,
    /// When readings were last checked for their age.
    age_checked: Option<Instant>,
    /// Unsynced readings deleted since the last log line about them, and when that was.
    unlogged_loss: u64,
    loss_logged: Option<Instant>,
}

/// A retention round panicked: retention cannot go on (it lost its state with the round).
#[derive(Debug, thiserror::Error)]
#[error("a retention round died: {0}")]
pub struct RetentionDied(String);

impl Retention {
    /// Retention of `store`.
    pub fn new(store: Store, settings: RetentionSettings, stats: Arc<RetentionStats>) -> Self {
        Retention {
            store,
            settings,
            stats,
            measured: None,
            measure_took: Duration::ZERO,
            last_activity: (0, Instant::now()),
            compacted_at: None,
            released_at: 0,
            age_checked: None,
            unlogged_loss: 0,
            loss_logged: None,
        }
    }

    /// Runs rounds until `shutdown`: every [`ROUND`], and after each commit `durable` announces.
    pub async fn run(
        mut self,
        mut durable: Durable,
        shutdown: CancellationToken,
    ) -> Result<(), RetentionDied> {
        let mut full = crate::store::space::FullNotice::default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(ROUND) => {}
                _ = durable.committed() => {}
            }
            let mut this = self;
            let joined = tokio::task::spawn_blocking(move || {
                let outcome = this.round();
                (this, outcome)
            })
            .await;
            match joined {
                Ok((back, outcome)) => {
                    self = back;
                    match outcome {
                        Ok(()) => {}
                        // Deletes need room too (copy-on-write); the writer says the rest.
                        Err(e) if e.is_disk_full() => {
                            if full.due() {
                                tracing::warn!(error = %e, "retention cannot write: the file system holding the store is full; trying again");
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "retention round failed; trying again")
                        }
                    }
                }
                Err(e) => return Err(RetentionDied(e.to_string())),
            }
        }
        Ok(())
    }

    /// One round; blocks.
    ///
    /// Rounds follow commits, so a round that has nothing to do costs one `stat`: the age check
    /// runs at most once per [`ROUND`], and the followers' positions are read only when readings
    /// are about to be deleted.
    pub fn round(&mut self) -> Result<(), StoreError> {
        let round = self.store.room().begin_round();
        let outcome = self.round_within();
        self.store.room().finish_round(round);
        outcome
    }

    fn round_within(&mut self) -> Result<(), StoreError> {
        let age_due = self.age_checked.is_none_or(|at| at.elapsed() >= ROUND);
        if let (Some(max_age), true) = (self.settings.max_age, age_due) {
            self.age_checked = Some(Instant::now());
            let floor = self.floor()?;
            let cutoff = now_ms().saturating_sub(max_age.as_millis() as u64);
            loop {
                let mut unsynced = 0u64;
                let deleted = self.store.delete_oldest_each(
                    CHUNK,
                    |_, ts| ts >= cutoff,
                    |offset, _| {
                        if offset >= floor {
                            unsynced += 1;
                        }
                    },
                )?;
                self.stats
                    .expired
                    .fetch_add(deleted.readings, Ordering::Relaxed);
                self.count_dropped(unsynced, "older than data.max_age");
                // Fewer than asked can still leave more: a span of blocks goes whole.
                if deleted.readings == 0 {
                    break;
                }
            }
        }
        self.keep_quota()?;
        self.compact_when_idle()
    }

    /// The lowest position of every follower: readings below it are synced. With no follower,
    /// nothing waits for any reading.
    fn floor(&self) -> Result<u64, StoreError> {
        Ok(self
            .store
            .sync_positions()?
            .iter()
            .map(|(_, p)| p.next)
            .min()
            .unwrap_or(u64::MAX))
    }

    /// Counts unsynced readings deleted, and logs them at most every [`LOSS_LOG_EVERY`].
    fn count_dropped(&mut self, readings: u64, why: &'static str) {
        if readings == 0 {
            return;
        }
        self.stats.dropped.fetch_add(readings, Ordering::Relaxed);
        self.unlogged_loss += readings;
        let due = self
            .loss_logged
            .is_none_or(|at| at.elapsed() >= LOSS_LOG_EVERY);
        if due {
            tracing::error!(
                readings = self.unlogged_loss,
                total = self.stats.dropped.load(Ordering::Relaxed),
                why,
                "deleted readings that were not synced yet"
            );
            self.unlogged_loss = 0;
            self.loss_logged = Some(Instant::now());
        }
    }

    /// Live bytes now, or as estimated from the last measurement and the readings held since,
    /// given the store's `file_bytes` and the `budget` they are held to.
    fn live_bytes(&mut self, file_bytes: u64, budget: u64) -> Result<u64, StoreError> {
        self.stats.file_bytes.store(file_bytes, Ordering::Relaxed);
        if file_bytes < budget / 2 {
            // Live bytes cannot be near the quota: no need to walk the file.
            self.stats.live_bytes.store(file_bytes, Ordering::Relaxed);
            self.measured = None;
            return Ok(file_bytes);
        }
        let count = self.store.reading_count()?;
        let live = match self.measured {
            Some((at, usage, then))
                if at.elapsed() < MEASURE_EVERY.max(self.measure_took * MEASURE_SPACING) =>
            {
                // Between measurements: scale by the readings held (deletes lower it too).
                let per_reading = usage.live_bytes / then.max(1);
                usage
                    .live_bytes
                    .saturating_add_signed((count as i64 - then as i64) * per_reading as i64)
            }
            _ => {
                let started = Instant::now();
                let usage = self.store.usage()?;
                self.measure_took = started.elapsed();
                tracing::debug!(
                    live = usage.live_bytes,
                    file = usage.file_bytes,
                    took_ms = started.elapsed().as_millis() as u64,
                    "measured the store's live bytes"
                );
                self.measured = Some((Instant::now(), usage, count));
                usage.live_bytes
            }
        };
        self.stats.live_bytes.store(live, Ordering::Relaxed);
        Ok(live)
    }

    fn keep_quota(&mut self) -> Result<(), StoreError> {
        let file_bytes = self.store.file_bytes()?;
        let budget = self.store.file_budget(self.settings.max_disk, file_bytes);
        let mut live = self.live_bytes(file_bytes, budget)?;
        let high = budget / 4 * 3;
        let low = budget / 100 * 65;
        tracing::trace!(live, high, low, "quota check");
        // Above the low mark, commits wait for this round (see `store::room`).
        self.store.room().set_tight(live > low);
        let refusing = self.stats.refusing.load(Ordering::Relaxed);
        if live <= high && !(refusing && live > low) {
            if refusing {
                self.refuse(false);
            }
            return Ok(());
        }
        let floor = self.floor()?;
        let count = self.store.reading_count()?.max(1);
        let per_reading = (live / count).max(1);
        tracing::debug!(
            live,
            high,
            low,
            readings = count,
            "store above its quota mark: deleting"
        );
        // Synced readings first.
        while live > low {
            let wanted = needed(live, low, per_reading);
            let deleted = self
                .store
                .delete_oldest(wanted, |offset, _| offset >= floor)?;
            if deleted.readings == 0 {
                break;
            }
            self.stats
                .deleted
                .fetch_add(deleted.readings, Ordering::Relaxed);
            live = live.saturating_sub(deleted.readings * per_reading);
        }
        if live > high {
            match self.settings.full_policy {
                FullPolicy::DropOldest => {
                    while live > low {
                        let wanted = needed(live, low, per_reading);
                        let deleted = self.store.delete_oldest(wanted, |_, _| false)?;
                        if deleted.readings == 0 {
                            break;
                        }
                        self.count_dropped(
                            deleted.readings,
                            "store full (data.full_policy = drop_oldest)",
                        );
                        live = live.saturating_sub(deleted.readings * per_reading);
                    }
                }
                FullPolicy::RejectNew => self.refuse(true),
            }
        } else if live <= low && refusing {
            self.refuse(false);
        }
        Ok(())
    }

    fn refuse(&self, refusing: bool) {
        if self.stats.refusing.swap(refusing, Ordering::Relaxed) == refusing {
            return;
        }
        self.store.set_refusing(refusing);
        if refusing {
            tracing::error!(
                max_disk = self.settings.max_disk,
                "store full of unsynced readings: refusing new readings (data.full_policy = reject_new); devices keep theirs until the sinks catch up"
            );
        } else {
            tracing::info!("store has room again: taking new readings");
        }
    }

    /// Compacts once per idle period when the file holds much free space.
    fn compact_when_idle(&mut self) -> Result<(), StoreError> {
        let head = self.store.next_offset()?;
        if head != self.last_activity.0 {
            self.last_activity = (head, Instant::now());
            return Ok(());
        }
        // The cache a load filled pins far more of the heap than its own size: let it go soon
        // after the load, and the memory with it (the allocator is trimmed every few seconds).
        if self.last_activity.1.elapsed() >= RELEASE_AFTER
            && head >= self.released_at + RELEASE_AFTER_READINGS
        {
            self.released_at = head;
            if self.store.release_memory()? {
                crate::memory::give_back();
                tracing::debug!("store cache emptied while idle");
            }
        }
        if self.last_activity.1.elapsed() < IDLE_AFTER || self.compacted_at == Some(head) {
            return Ok(());
        }
        self.compacted_at = Some(head);
        self.compact_if_worth_it()?;
        // Walking the file (and compacting it) filled the cache again with pages no reader asked
        // for: measured after a load, an idle hub went from 11.8 to 15.7 MB at this step.
        if self.store.release_memory()? {
            crate::memory::give_back();
        }
        Ok(())
    }

    /// Compacts the file when it holds much free space.
    fn compact_if_worth_it(&mut self) -> Result<(), StoreError> {
        let usage = self.store.usage()?;
        let free = usage.file_bytes.saturating_sub(usage.live_bytes);
        if free < (16 << 20).max(usage.file_bytes / 4) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        if self.store.compact()? {
            let after = self.store.usage()?;
            self.stats.compactions.fetch_add(1, Ordering::Relaxed);
            self.stats
                .file_bytes
                .store(after.file_bytes, Ordering::Relaxed);
            tracing::info!(
                before = usage.file_bytes,
                after = after.file_bytes,
                took_ms = started.elapsed().as_millis() as u64,
                "store compacted while idle"
            );
        }
        Ok(())
    }
}

impl Drop for Retention {
    /// However retention stops (shutdown, or a round that panicked), the writer stops waiting.
    fn drop(&mut self) {
        self.store.room().release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryEngine;
    use crate::store::sync::{FollowerKind, SyncPosition};
    use crate::store::{NewReading, Transport, Wire};
    use device_protocol::OwnedValue;

    fn store_with(readings: u64, timestamp_ms: impl Fn(u64) -> u64) -> Store {
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let batch: Vec<NewReading> = (0..readings)
            .map(|i| NewReading {
                device: "d".into(),
                transport: Transport::Mqtt,
                wire: Wire::Json,
                seq: Some(i as u32),
                boot: None,
                timestamp_ms: Some(timestamp_ms(i)),
                received_ms: 0,
                metrics: vec![("pad".into(), OwnedValue::Str("x".repeat(200)))],
            })
            .collect();
        store.append(&batch).unwrap();
        store
    }

    fn follower_at(store: &Store, next: u64) {
        let position = SyncPosition {
            next,
            ..SyncPosition::start(FollowerKind::Sink, 0)
        };
        store.set_sync_position("cloud", &position).unwrap();
    }

    fn retention(
        store: &Store,
        max_disk: u64,
        policy: FullPolicy,
        age: Option<Duration>,
    ) -> Retention {
        let settings = RetentionSettings {
            max_disk,
            full_policy: policy,
            max_age: age,
        };
        Retention::new(store.clone(), settings, Arc::new(RetentionStats::default()))
    }

    #[test]
    fn old_readings_go_and_the_unsynced_among_them_are_counted_as_dropped() {
        let now = now_ms();
        // Ten readings two days old, then ten fresh ones; the sink has passed the first five.
        let store = store_with(20, |i| if i < 10 { now - 2 * 86_400_000 } else { now });
        follower_at(&store, 5);
        let mut r = retention(
            &store,
            1 << 30,
            FullPolicy::DropOldest,
            Some(Duration::from_secs(86_400)),
        );
        r.round().unwrap();
        assert_eq!(store.oldest_offset().unwrap(), Some(10));
        assert_eq!(r.stats.expired.load(Ordering::Relaxed), 10);
        assert_eq!(r.stats.dropped.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn at_the_quota_synced_readings_go_first_then_the_policy_decides() {
        // About 250 bytes each: 2,000 readings are some 500 KB, over 75% of a 512 KiB budget.
        let store = store_with(2_000, |i| 1_000 + i);
        follower_at(&store, 1_000);
        let mut r = retention(&store, 512 << 10, FullPolicy::RejectNew, None);
        r.round().unwrap();
        // Synced readings went first, and that was enough: nothing unsynced was touched.
        let oldest = store.oldest_offset().unwrap().unwrap();
        assert!(oldest > 0 && oldest <= 1_000, "oldest {oldest}");
        assert_eq!(r.stats.dropped.load(Ordering::Relaxed), 0);
        assert!(!store.is_refusing());

        // Everything left is unsynced and more keeps coming: reject_new refuses, keeps all.
        let store = store_with(2_000, |i| 1_000 + i);
        follower_at(&store, 0);
        let mut r = retention(&store, 512 << 10, FullPolicy::RejectNew, None);
        r.round().unwrap();
        assert!(store.is_refusing());
        assert_eq!(store.oldest_offset().unwrap(), Some(0));
        // The sink catches up: synced readings make room and readings are taken again.
        follower_at(&store, 2_000);
        r.round().unwrap();
        assert!(!store.is_refusing());
        assert_eq!(r.stats.dropped.load(Ordering::Relaxed), 0);

        // drop_oldest deletes the oldest unsynced and counts them.
        let store = store_with(2_000, |i| 1_000 + i);
        follower_at(&store, 0);
        let mut r = retention(&store, 512 << 10, FullPolicy::DropOldest, None);
        r.round().unwrap();
        let dropped = r.stats.dropped.load(Ordering::Relaxed);
        assert!(dropped > 0);
        assert_eq!(store.oldest_offset().unwrap(), Some(dropped));
    }

    #[tokio::test]
    async fn above_the_low_mark_commits_wait_for_a_round_until_retention_stops() {
        let store = store_with(2_000, |i| 1_000 + i);
        follower_at(&store, 0);
        let mut r = retention(&store, 512 << 10, FullPolicy::RejectNew, None);
        r.round().unwrap();
        let room = store.room();
        let turn = room.committed();
        let waited = tokio::time::timeout(Duration::from_millis(50), room.wait_turn(turn)).await;
        assert!(waited.is_err(), "a commit waits for the next round");
        r.round().unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), room.wait_turn(turn)).await;
        assert!(next.is_ok(), "the round let the commit go");

        let turn = room.committed();
        drop(r);
        let released = tokio::time::timeout(Duration::from_secs(5), room.wait_turn(turn)).await;
        assert!(released.is_ok(), "retention gone, commits no longer wait");
    }
}
