//! The store writer: the one task that appends to the store. It takes submissions from every
//! transport through one bounded channel, commits a batch (at most `batch_max` items, gathered for
//! at most `batch_window` after the first) in one durable transaction off the async workers, then
//! answers each submission.
//!
//! Group commit falls out of the loop: while one commit is on disk, the next batch queues up.
//! At the quota it takes turns with retention (see [`super::room`]), so a burst cannot grow the
//! file faster than retention frees it.
//! The writer stops when every sender is gone, after committing what was queued: stopping ingest
//! is what drains it.
//!
//! After each commit it tells live listeners (see [`crate::live`]) what became durable: readings,
//! new devices, devices coming online or reported gone, command results.
//!
//! A full file system is waited out, not failed: the batch whose commit found no room stays in the
//! writer's hands, unanswered (so unacknowledged: devices and brokers keep their readings), the
//! store is marked full (see [`super::space`]), and once a second the writer asks the file system
//! for room; when it has some, the same batch is committed and answered, and the writer goes on.
//! Meanwhile its queue fills and ingest stops reading sockets: the usual back-pressure. It is said
//! at WARN once a minute, not once per reading. A writer whose senders are all gone (the hub is
//! stopping) gives up waiting: nothing it held was acknowledged.
//!
//! Here: the task and its counters; `queue.rs` what transports submit and its bounds;
//! `publish.rs` what listeners are told after a commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::histogram::Histogram;

use super::{Applied, Ingest, Outcome, Store, StoreError};
use crate::live::{Live, Presence};
use publish::publish;

mod publish;
mod queue;
#[cfg(test)]
mod tests;

pub use queue::{CommitFailed, QueueRoom, Queued, Submission, SubmissionSender, WriterGone, queue};

/// How often the writer asks for room while the file system is full.
const ROOM_LOOK_EVERY: Duration = Duration::from_secs(1);
/// Room the file system must have before a batch that found it full is tried again: a commit
/// that fails again costs the engine a reopen, and reads in flight then fail.
const ROOM_TO_RETRY_BYTES: u64 = 4 << 20;
/// With a flush window: the plain log bytes a commit waits to gather (some 300 readings; the
/// record is compressed to one or two pages). `fdatasync` writes whole pages and each record
/// starts a page, so a commit of less pays for a page anyway.
const FLUSH_LOG_BYTES: usize = 16 << 10;
/// About the plain log bytes of an item (a reading of four float metrics takes about 50).
const LOG_BYTES_PER_ITEM: usize = 56;
/// With a flush window: a commit waits no longer once nothing arrived for this long. Devices
/// that keep few readings unacknowledged (a window) send nothing more until acked, so waiting
/// on would only stall them; many devices each on its own clock keep arriving within it.
const FLUSH_IDLE: Duration = Duration::from_millis(50);

/// The store writer's commits.
#[derive(Debug)]
pub struct CommitMetrics {
    /// Items per commit.
    pub batch_items: Histogram,
    /// How long a commit took, fsync included.
    pub seconds: Histogram,
}

impl Default for CommitMetrics {
    fn default() -> Self {
        CommitMetrics {
            batch_items: Histogram::new(BATCH_ITEMS),
            seconds: Histogram::new(COMMIT_SECONDS),
        }
    }
}

/// Bounds of commit latency, seconds.
pub const COMMIT_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Bounds of commit sizes, items.
pub const BATCH_ITEMS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// Counters of the writer, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Readings committed.
    pub readings: AtomicU64,
    /// Readings recognised as retransmissions and not stored again.
    pub duplicates: AtomicU64,
    /// Commits done.
    pub commits: AtomicU64,
    /// Commits that failed.
    pub failed_commits: AtomicU64,
    /// Items taken from the queue and not yet committed (for the liveness watch).
    pub in_hand: AtomicU64,
    /// Readings refused because the store was full (policy `reject_new`).
    pub refused: AtomicU64,
    /// Readings with a seq refused for their content: settled, never stored, their device told.
    pub rejected: AtomicU64,
    /// Seqs the store gave up waiting for (a device left more open gaps than it keeps).
    pub gave_up: AtomicU64,
    /// Sizes and durations of commits.
    pub commit: CommitMetrics,
}

/// The store writer task.
pub struct StoreWriter {
    store: Store,
    batch_max: usize,
    batch_window: Duration,
    /// How long a commit may wait for `FLUSH_LOG_BYTES` of items (zero: no such wait).
    flush_window: Duration,
    stats: Arc<WriterStats>,
    live: Option<(Live, Arc<Presence>)>,
    announcer: Option<super::durable::Announcer>,
    /// Set once the writer gave up waiting for room at shutdown (said once).
    gave_up: std::sync::atomic::AtomicBool,
}

impl StoreWriter {
    /// A writer for `store` committing at most `batch_max` items at once, waiting at most
    /// `batch_window` after the first item for more.
    pub fn new(
        store: Store,
        batch_max: usize,
        batch_window: Duration,
        stats: Arc<WriterStats>,
    ) -> Self {
        StoreWriter {
            store,
            batch_max: batch_max.max(1),
            batch_window,
            flush_window: Duration::ZERO,
            stats,
            live: None,
            announcer: None,
            gave_up: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Lets a commit wait up to `flush_window` after its first item until about
    /// `FLUSH_LOG_BYTES` of log are gathered (for a store that writes log first: fewer, fuller
    /// pages written per reading, at the price of that much ack latency at low rates). Items
    /// already queued are taken at once whatever the window.
    pub fn flushing(mut self, flush_window: Duration) -> Self {
        self.flush_window = flush_window;
        self
    }

    /// Announces every commit to the store's followers (see [`super::durable`]).
    pub fn announcing(mut self, announcer: super::durable::Announcer) -> Self {
        self.announcer = Some(announcer);
        self
    }

    /// Tells `live` listeners what each commit made durable, and `presence` who was heard from.
    pub fn publishing(mut self, live: Live, presence: Arc<Presence>) -> Self {
        self.live = Some((live, presence));
        self
    }

    /// Runs until every sender of `submissions_rx` is dropped and the queue is empty.
    pub async fn run(self, mut submissions_rx: mpsc::Receiver<Queued>) {
        // The retention round the next commit waits for while the store is at its quota.
        let mut turn = 0;
        while let Some(first) = submissions_rx.recv().await {
            let mut count = first.submission.items.len();
            self.stats.in_hand.store(count as u64, Ordering::Relaxed);
            self.store.room().wait_turn(turn).await;
            let mut batch = vec![first];
            let started = tokio::time::Instant::now();
            let batch_ends = started + self.batch_window;
            let flush_ends = started + self.flush_window;
            let mut last_arrival = started;
            while count < self.batch_max {
                // The flush window waits only while less than a few pages' worth is gathered
                // and items keep coming.
                let until = if count * LOG_BYTES_PER_ITEM < FLUSH_LOG_BYTES {
                    batch_ends.max(flush_ends.min(last_arrival + FLUSH_IDLE))
                } else {
                    batch_ends
                };
                let next = match submissions_rx.try_recv() {
                    Ok(next) => Some(next),
                    Err(_) if tokio::time::Instant::now() >= until => None,
                    Err(_) => tokio::time::timeout_at(until, submissions_rx.recv())
                        .await
                        .ok()
                        .flatten(),
                };
                match next {
                    Some(next) => {
                        last_arrival = tokio::time::Instant::now();
                        count += next.submission.items.len();
                        batch.push(next);
                    }
                    None => break,
                }
            }
            self.stats.in_hand.store(count as u64, Ordering::Relaxed);
            turn = self.commit(batch, &submissions_rx).await;
            self.stats.in_hand.store(0, Ordering::Relaxed);
        }
        tracing::debug!("store writer drained and stopped");
    }

    /// Commits `batch`, waiting for room while the file system is full; returns the retention
    /// round the next commit waits for at the quota. `queue` tells whether the hub is stopping.
    async fn commit(&self, batch: Vec<Queued>, queue: &mpsc::Receiver<Queued>) -> u64 {
        // The items move to the blocking task; each submission keeps its count and reply channel.
        // Their bytes stay counted until the commit is over (dropped on return).
        let mut items: Vec<Ingest> = Vec::new();
        let mut _bytes = Vec::with_capacity(batch.len());
        let replies: Vec<(usize, Option<oneshot::Sender<_>>)> = batch
            .into_iter()
            .map(|queued| {
                let s = queued.submission;
                _bytes.push(queued._bytes);
                let count = s.items.len();
                items.extend(s.items);
                (count, s.done_tx)
            })
            .collect();
        let count = items.len();
        let outcome = loop {
            let store = self.store.clone();
            let started = std::time::Instant::now();
            let outcome = tokio::task::spawn_blocking(move || {
                let applied = store.apply(&items);
                (items, applied)
            })
            .await;
            self.stats
                .commit
                .seconds
                .observe(started.elapsed().as_secs_f64());
            self.stats.commit.batch_items.observe(count as f64);
            match outcome {
                Ok((held, Err(e))) if e.is_disk_full() => {
                    self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                    if !self.wait_for_room(&e, count, queue).await {
                        break Ok((held, Err(e)));
                    }
                    items = held;
                }
                outcome => break outcome,
            }
        };
        let (items, applied) = match outcome {
            Ok((items, Ok(applied))) => (items, applied),
            failure => {
                match failure {
                    // Given up at shutdown, counted and said already.
                    Ok((_, Err(e))) if e.is_disk_full() => {}
                    Ok((_, Err(e))) => {
                        self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, items = count, "commit failed; nothing of it was acknowledged, so devices and brokers send it again")
                    }
                    _ => {
                        self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            items = count,
                            "commit task died; nothing of it was acknowledged"
                        )
                    }
                }
                for (_, done_tx) in replies {
                    if let Some(done_tx) = done_tx {
                        let _ = done_tx.send(Err(CommitFailed));
                    }
                }
                // Nothing was added: no reason to wait for retention.
                return 0;
            }
        };
        if let Some(since) = self.store.space().set_room() {
            tracing::info!(
                full_for_s = crate::clock::now_ms().saturating_sub(since) / 1000,
                "the store has room again: readings are stored and acknowledged again"
            );
        }
        let stored = applied
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Stored { .. }))
            .count();
        let duplicates = applied
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Duplicate { .. }))
            .count();
        self.stats
            .readings
            .fetch_add(stored as u64, Ordering::Relaxed);
        self.stats
            .duplicates
            .fetch_add(duplicates as u64, Ordering::Relaxed);
        let rejected = applied
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Rejected { .. }))
            .count();
        self.stats
            .rejected
            .fetch_add(rejected as u64, Ordering::Relaxed);
        let gave_up: u64 = applied.iter().map(|a| a.given_up).sum();
        self.stats.gave_up.fetch_add(gave_up, Ordering::Relaxed);
        let refused = applied
            .iter()
            .filter(|a| a.outcome == Outcome::Refused)
            .count();
        if refused > 0 {
            self.stats
                .refused
                .fetch_add(refused as u64, Ordering::Relaxed);
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        // Taken before retention hears of the commit: a round it starts for this commit must
        // count, or the next commit would wait for a round nothing starts.
        let turn = self.store.room().committed();
        if let Some(announcer) = &self.announcer {
            match self.store.next_offset() {
                Ok(next) => announcer.committed(next),
                Err(e) => tracing::error!(error = %e, "cannot read the store's next offset"),
            }
        }
        if let Some((live, presence)) = &self.live {
            publish(live, presence, items, &applied);
        }
        let mut applied = applied.into_iter();
        for (count, done_tx) in replies {
            let mine: Vec<Applied> = applied.by_ref().take(count).collect();
            if let Some(done_tx) = done_tx {
                // The submitter may have gone (shutdown); the items are stored anyway.
                let _ = done_tx.send(Ok(mine));
            }
        }
        turn
    }

    /// Waits until the file system has room for another try at a batch of `count` items whose
    /// commit failed with `err`; false when the hub is stopping (every sender of `queue` gone) and
    /// the batch is to be given up.
    async fn wait_for_room(
        &self,
        err: &StoreError,
        count: usize,
        queue: &mpsc::Receiver<Queued>,
    ) -> bool {
        let space = self.store.space();
        let now = crate::clock::now_ms();
        if space.set_full(now) {
            tracing::warn!(
                error = %err,
                waiting = count,
                "the file system holding the store is full: new readings are not stored nor acknowledged (devices keep them) until it has room; free space on it, or lower data.max_disk"
            );
        }
        let mut notice = super::space::FullNotice::default();
        // Said just above (or by the batch before).
        notice.due();
        loop {
            if queue.is_closed() {
                if !self.gave_up.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "stopping with the file system still full: the readings waiting were never acknowledged, so devices and brokers send them again"
                    );
                }
                return false;
            }
            tokio::time::sleep(ROOM_LOOK_EVERY).await;
            let store = self.store.clone();
            let probed =
                tokio::task::spawn_blocking(move || store.has_room(ROOM_TO_RETRY_BYTES)).await;
            match probed {
                Ok(Ok(true)) => return true,
                Ok(Ok(false)) => {}
                // Cannot tell: the commit itself will.
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "asking the file system for room failed");
                    return true;
                }
                Err(_) => return true,
            }
            if notice.due() {
                let since = space.full_since_ms().unwrap_or(now);
                tracing::warn!(
                    full_for_s = crate::clock::now_ms().saturating_sub(since) / 1000,
                    waiting = count + (queue.max_capacity() - queue.capacity()),
                    "the file system holding the store is still full: readings are not acknowledged"
                );
            }
        }
    }
}
