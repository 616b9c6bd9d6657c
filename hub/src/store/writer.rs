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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::histogram::Histogram;

use super::{Applied, Ingest, Outcome, Store, StoreError};
use crate::live::{DeviceChange, Event, Live, LiveReading, Presence};

/// How often the writer asks for room while the file system is full.
const ROOM_LOOK_EVERY: Duration = Duration::from_secs(1);
/// Room the file system must have before a batch that found it full is tried again: a commit
/// that fails again costs the engine a reopen, and reads in flight then fail.
const ROOM_TO_RETRY_BYTES: u64 = 4 << 20;

/// The items of one source message, and where to say when they are durable.
#[derive(Debug)]
pub struct Submission {
    /// The items (usually one reading).
    pub items: Vec<Ingest>,
    /// Told the outcome once the batch holding them is committed (or failed).
    pub done_tx: Option<oneshot::Sender<Result<Vec<Applied>, CommitFailed>>>,
}

/// A submission in the writer's queue, holding its share of the queue's bytes until its commit is
/// over.
#[derive(Debug)]
pub struct Queued {
    submission: Submission,
    _bytes: OwnedSemaphorePermit,
}

/// The sending end of the store writer's queue, for every transport. The queue is bounded in
/// submissions (`ingest.queue`) and in bytes (`ingest.queue_bytes`: the items'
/// [`Ingest::approx_bytes`], held until their commit is over), so what waits for the writer, and
/// what it holds, stays within a fixed amount of memory whatever the transports read: a sender
/// waits for room, and with it the socket or line it reads from.
#[derive(Debug, Clone)]
pub struct SubmissionSender {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
}

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

/// Room reserved in the writer's queue (see [`SubmissionSender::room`]); given back when dropped.
#[derive(Debug)]
pub struct QueueRoom {
    permit: OwnedSemaphorePermit,
}

/// The store writer has stopped: nothing more can be submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the store writer has stopped")]
pub struct WriterGone;

/// The store writer's queue: at most `submissions` submissions and `bytes` bytes of items. The
/// receiving end is for [`StoreWriter::run`].
pub fn queue(submissions: usize, bytes: usize) -> (SubmissionSender, mpsc::Receiver<Queued>) {
    let (tx, rx) = mpsc::channel(submissions.max(1));
    let max_bytes = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
    let sender = SubmissionSender {
        tx,
        bytes: Arc::new(Semaphore::new(max_bytes as usize)),
        max_bytes,
    };
    (sender, rx)
}

impl SubmissionSender {
    /// The bytes `submission` counts for (a submission larger than the whole queue takes it all).
    fn bytes_of(&self, submission: &Submission) -> u32 {
        let bytes: usize = submission.items.iter().map(Ingest::approx_bytes).sum();
        u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_bytes)
    }

    /// Queues `submission`, waiting for room (in number and in bytes).
    pub async fn send(&self, submission: Submission) -> Result<(), WriterGone> {
        let want = self.bytes_of(&submission);
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| WriterGone)?;
        self.tx
            .send(Queued {
                submission,
                _bytes: bytes,
            })
            .await
            .map_err(|_| WriterGone)
    }

    /// Room for about `bytes` of items, waited for before the items are made: a reader that
    /// waits for room then waits holding the raw bytes it read, not the items decoded from them
    /// (a thousand connections waiting at once would otherwise hold a thousand batches outside
    /// the queue's bound). [`SubmissionSender::send_in`] sends into it.
    pub async fn room(&self, bytes: usize) -> Result<QueueRoom, WriterGone> {
        let want = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_bytes);
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| WriterGone)?;
        Ok(QueueRoom { permit })
    }

    /// Queues `submission` in `room`, giving back what its items do not need. Items that came out
    /// larger than reserved take more room only if it is free now: waiting for it while holding
    /// the reservation could leave every reader holding part of the queue and waiting for the
    /// rest, with nothing queued for the writer to free (so the bound is as good as the
    /// estimate the room was reserved by).
    pub async fn send_in(&self, room: QueueRoom, submission: Submission) -> Result<(), WriterGone> {
        let want = self.bytes_of(&submission);
        let mut permit = room.permit;
        let have = u32::try_from(permit.num_permits()).unwrap_or(u32::MAX);
        if want > have {
            if let Ok(more) = self.bytes.clone().try_acquire_many_owned(want - have) {
                permit.merge(more);
            }
        } else if want < have {
            drop(permit.split((have - want) as usize));
        }
        self.tx
            .send(Queued {
                submission,
                _bytes: permit,
            })
            .await
            .map_err(|_| WriterGone)
    }

    /// Queues `submission` if there is room now; false when there is none (or no writer).
    pub fn try_send(&self, submission: Submission) -> bool {
        let want = self.bytes_of(&submission);
        let Ok(bytes) = self.bytes.clone().try_acquire_many_owned(want) else {
            return false;
        };
        self.tx
            .try_send(Queued {
                submission,
                _bytes: bytes,
            })
            .is_ok()
    }

    /// A handle that does not keep the writer running (for watching its queue).
    pub fn downgrade(&self) -> mpsc::WeakSender<Queued> {
        self.tx.downgrade()
    }
}

/// The batch holding a submission could not be committed; nothing of it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitFailed;

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
            stats,
            live: None,
            announcer: None,
            gave_up: std::sync::atomic::AtomicBool::new(false),
        }
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
            let window_ends = tokio::time::Instant::now() + self.batch_window;
            while count < self.batch_max {
                let next = match submissions_rx.try_recv() {
                    Ok(next) => Some(next),
                    Err(_) if self.batch_window.is_zero() => None,
                    Err(_) => tokio::time::timeout_at(window_ends, submissions_rx.recv())
                        .await
                        .ok()
                        .flatten(),
                };
                match next {
                    Some(next) => {
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

/// Notes that `device` was heard from at `at`; allocates only for a device new to the batch (the
/// common case is many readings of few devices).
fn note_heard(heard: &mut HashMap<String, u64>, device: &str, at: u64) {
    match heard.get_mut(device) {
        Some(last) => *last = (*last).max(at),
        None => {
            heard.insert(device.to_owned(), at);
        }
    }
}

/// Tells presence who was heard from, and listeners who came online.
fn tell_heard(live: &Live, presence: &Presence, heard: &mut HashMap<String, u64>) {
    for (device, at) in heard.drain() {
        if let Some(event) = presence.seen(&device, at) {
            live.event(event);
        }
    }
}

/// Tells live listeners what a commit made durable. Readings are built only while someone
/// listens for them; presence is told once per device per batch.
fn publish(live: &Live, presence: &Presence, items: Vec<Ingest>, applied: &[Applied]) {
    let want_readings = live.readings_tx.receiver_count() > 0;
    let mut readings = Vec::new();
    let mut heard: HashMap<String, u64> = HashMap::new();
    for (item, applied) in items.into_iter().zip(applied) {
        if applied.new_device {
            live.event(Event::Device {
                device: item.device().to_owned(),
                change: DeviceChange::New,
                reason: "registered",
                at_ms: crate::clock::now_ms(),
            });
        }
        match item {
            Ingest::Reading(r) => {
                note_heard(&mut heard, &r.device, r.received_ms);
                if let (true, Outcome::Stored { offset, seq }) = (want_readings, applied.outcome) {
                    readings.push(LiveReading {
                        offset,
                        timestamp_ms: r.timestamp_ms.unwrap_or(r.received_ms),
                        device: r.device,
                        seq,
                        metrics: r.metrics,
                    });
                }
            }
            Ingest::Hello(h) => {
                note_heard(&mut heard, &h.device, h.received_ms);
            }
            Ingest::Rejected(r) => {
                note_heard(&mut heard, &r.device, r.received_ms);
            }
            Ingest::CommandResult(c) => {
                if let Outcome::CommandResult {
                    id,
                    state: Some(state),
                } = applied.outcome
                {
                    live.event(Event::Command {
                        device: c.device.clone(),
                        id,
                        state,
                    });
                }
                note_heard(&mut heard, &c.device, c.received_ms);
            }
            Ingest::Status(s) => {
                // In arrival order with the rest of the batch: what was heard before a last will
                // is noted first.
                tell_heard(live, presence, &mut heard);
                let event = if s.online {
                    presence.seen(&s.device, s.received_ms)
                } else {
                    presence.gone(&s.device, s.reason, s.received_ms)
                };
                if let Some(event) = event {
                    live.event(event);
                }
            }
        }
    }
    tell_heard(live, presence, &mut heard);
    if !readings.is_empty() {
        let _ = live.readings_tx.send(Arc::new(readings));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryEngine;
    use crate::store::{NewReading, Outcome, Transport};
    use device_protocol::OwnedValue;

    fn reading(seq: u32) -> NewReading {
        NewReading {
            device: "d".into(),
            transport: Transport::Mqtt,
            wire: crate::store::Wire::Json,
            seq: Some(seq),
            boot: None,
            timestamp_ms: None,
            received_ms: 1,
            metrics: vec![("v".into(), OwnedValue::I64(seq as i64))],
        }
    }

    #[tokio::test]
    async fn answers_every_submission_in_order_with_acks_and_drains_on_close() {
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let stats = Arc::new(WriterStats::default());
        let (tx, rx) = queue(128, 1 << 20);
        let mut answers = Vec::new();
        // 0..50, then 40..50 again: the retransmissions are answered but not stored.
        for seq in (0..50).chain(40..50) {
            let (done_tx, done_rx) = oneshot::channel();
            let items = vec![Ingest::Reading(reading(seq))];
            tx.send(Submission {
                items,
                done_tx: Some(done_tx),
            })
            .await
            .unwrap();
            answers.push((seq, done_rx));
        }
        drop(tx);
        let window = std::time::Duration::from_millis(1);
        StoreWriter::new(store.clone(), 8, window, stats.clone())
            .run(rx)
            .await;
        for (i, (seq, answer)) in answers.into_iter().enumerate() {
            let applied = answer.await.unwrap().unwrap();
            assert_eq!(applied.len(), 1);
            let expected = if i < 50 {
                Outcome::Stored {
                    offset: i as u64,
                    seq: crate::store::ReadingSeq::Device { boot: None, seq },
                }
            } else {
                Outcome::Duplicate { seq }
            };
            assert_eq!(applied[0].outcome, expected);
            let ack = applied[0].ack.as_ref().unwrap();
            assert!(
                ack.seq >= seq,
                "the ack covers the reading once it is durable"
            );
        }
        assert_eq!(stats.readings.load(Ordering::Relaxed), 50);
        assert_eq!(stats.duplicates.load(Ordering::Relaxed), 10);
        assert!(
            stats.commits.load(Ordering::Relaxed) >= 60 / 8,
            "batched by at most batch_max"
        );
        assert_eq!(store.next_offset().unwrap(), 50);
    }

    #[tokio::test]
    async fn the_queue_holds_at_most_its_bytes_until_their_commit_is_over() {
        let submission = |seq| Submission {
            items: vec![Ingest::Reading(reading(seq))],
            done_tx: None,
        };
        let one = Ingest::Reading(reading(0)).approx_bytes();
        assert!(one > std::mem::size_of::<Ingest>(), "the heap counts too");
        let (tx, rx) = queue(1_000, 2 * one);
        tx.send(submission(0)).await.unwrap();
        tx.send(submission(1)).await.unwrap();
        // Room for two: a third waits, in number of submissions far from the bound.
        let waits = tokio::time::timeout(Duration::from_millis(200), tx.send(submission(2)));
        assert!(waits.await.is_err(), "the queue took more than its bytes");
        assert!(!tx.try_send(submission(2)));
        // The writer commits what is queued, and the room comes back.
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let stats = Arc::new(WriterStats::default());
        let writer =
            tokio::spawn(StoreWriter::new(store.clone(), 8, Duration::ZERO, stats).run(rx));
        tokio::time::timeout(Duration::from_secs(10), tx.send(submission(2)))
            .await
            .expect("no room after the commit")
            .unwrap();
        drop(tx);
        writer.await.unwrap();
        assert_eq!(store.next_offset().unwrap(), 3);
    }

    #[tokio::test]
    async fn readers_holding_room_that_proved_too_small_never_wait_on_each_other() {
        let submission = |seq| Submission {
            items: vec![Ingest::Reading(reading(seq))],
            done_tx: None,
        };
        let one = Ingest::Reading(reading(0)).approx_bytes();
        let (tx, mut rx) = queue(1_000, one);
        // Two readers reserved half the queue each, then decoded more than they reserved: the
        // queue is all reserved, so waiting for the rest would wait for ever (nothing is queued
        // for the writer to free). Both go in.
        let first = tx.room(one / 2).await.unwrap();
        let second = tx.room(one / 2).await.unwrap();
        for (seq, room) in [(0, first), (1, second)] {
            tokio::time::timeout(Duration::from_secs(5), tx.send_in(room, submission(seq)))
                .await
                .expect("a reader waited on another's reservation")
                .unwrap();
        }
        assert!(rx.recv().await.is_some() && rx.recv().await.is_some());
        // A reservation larger than its items gives the rest back at once.
        let big = tx.room(one * 10).await.unwrap();
        tx.send_in(big, submission(2)).await.unwrap();
        drop(rx.recv().await);
        assert!(
            tx.try_send(submission(3)),
            "the unused room was not given back"
        );
    }

    #[tokio::test]
    async fn a_full_disk_holds_the_batch_unanswered_until_there_is_room_then_stores_it_once() {
        let engine = MemoryEngine::new();
        let store = Store::open(Arc::new(engine.clone())).unwrap();
        store.append(&[reading(0)]).unwrap();
        engine.set_full(true);
        let stats = Arc::new(WriterStats::default());
        let (tx, rx) = queue(16, 1 << 20);
        let writer =
            tokio::spawn(StoreWriter::new(store.clone(), 4, Duration::ZERO, stats.clone()).run(rx));
        let mut answers = Vec::new();
        for seq in 1..=6 {
            let (done_tx, done_rx) = oneshot::channel();
            let items = vec![Ingest::Reading(reading(seq))];
            let done_tx = Some(done_tx);
            tx.send(Submission { items, done_tx }).await.unwrap();
            answers.push(done_rx);
        }
        // Full: nothing is answered (so nothing acknowledged), the store says so, reads go on.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        for answer in &mut answers {
            assert!(
                answer.try_recv().is_err(),
                "answered while the disk is full"
            );
        }
        assert!(store.space().is_full());
        assert_eq!(store.next_offset().unwrap(), 1);
        assert!(store.device("d").unwrap().is_some());
        let failed = stats.failed_commits.load(Ordering::Relaxed);
        assert_eq!(failed, 1, "no retry while the file system has no room");
        // Room again: every held reading is stored once and answered, and the state clears.
        engine.set_full(false);
        for (seq, answer) in (1..=6).zip(answers) {
            let applied = tokio::time::timeout(Duration::from_secs(10), answer)
                .await
                .expect("not answered once there was room")
                .unwrap()
                .unwrap();
            assert_eq!(
                applied[0].outcome,
                Outcome::Stored {
                    offset: seq as u64,
                    seq: crate::store::sequence::ReadingSeq::Device { boot: None, seq }
                }
            );
        }
        assert!(!store.space().is_full());
        assert_eq!(store.next_offset().unwrap(), 7);
        drop(tx);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_writer_stopping_on_a_full_disk_gives_up_without_answering_ok() {
        let engine = MemoryEngine::new();
        let store = Store::open(Arc::new(engine.clone())).unwrap();
        engine.set_full(true);
        let stats = Arc::new(WriterStats::default());
        let (tx, rx) = queue(16, 1 << 20);
        let (done_tx, done_rx) = oneshot::channel();
        let items = vec![Ingest::Reading(reading(1))];
        tx.send(Submission {
            items,
            done_tx: Some(done_tx),
        })
        .await
        .unwrap();
        drop(tx);
        let run = StoreWriter::new(store.clone(), 4, Duration::ZERO, stats).run(rx);
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the writer waited for room while the hub stops");
        assert_eq!(done_rx.await.unwrap(), Err(CommitFailed));
        assert_eq!(store.next_offset().unwrap(), 0);
    }

    #[tokio::test]
    async fn at_the_quota_each_commit_waits_for_a_round_begun_after_the_last() {
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let room_of = store.clone();
        let room = room_of.room();
        let first = room.begin_round();
        room.set_tight(true);
        room.finish_round(first);
        // Retention's side of the turns, with rounds started only by commits (no timer), so a
        // commit that waited for a round nothing starts would wait forever.
        let (announcer, durable) = crate::store::durable::channel(0);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let rounds = tokio::spawn({
            let (store, mut durable, seen) = (store.clone(), durable, seen.clone());
            async move {
                loop {
                    durable.committed().await;
                    let round = store.room().begin_round();
                    seen.lock().unwrap().push(store.next_offset().unwrap());
                    store.room().finish_round(round);
                }
            }
        });
        let (tx, rx) = queue(16, 1 << 20);
        let stats = Arc::new(WriterStats::default());
        let writer = StoreWriter::new(store.clone(), 1, Duration::ZERO, stats)
            .announcing(announcer)
            .run(rx);
        let writer = tokio::spawn(writer);
        let mut answers = Vec::new();
        for seq in 0..5 {
            let (done_tx, done_rx) = oneshot::channel();
            let items = vec![Ingest::Reading(reading(seq))];
            let done_tx = Some(done_tx);
            tx.send(Submission { items, done_tx }).await.unwrap();
            answers.push(done_rx);
        }
        for answer in answers {
            tokio::time::timeout(Duration::from_secs(10), answer)
                .await
                .expect("a commit waited for a round that never began")
                .unwrap()
                .unwrap();
        }
        // Between two commits a round ran that saw the first of them.
        let seen = seen.lock().unwrap().clone();
        for offset in 1..5 {
            assert!(seen.contains(&offset), "{seen:?}");
        }
        drop(tx);
        writer.await.unwrap();
        rounds.abort();
    }
}
