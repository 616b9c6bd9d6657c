//! One push sink: follows the readings log from its persisted position and hands batches to its
//! uplink.
//!
//! - A batch is at most `batch_max` readings in offset order, sent once it is full or its first
//!   reading has waited `batch_wait`.
//! - Before a batch goes out its range is saved as the position's in-flight batch; after a
//!   restart that range is sent again as it was, so it carries the same idempotency key. The
//!   position moves past a batch only once the receiver took it.
//! - A failed delivery is retried after an exponential back-off with full jitter (or the
//!   receiver's `Retry-After`), for ever: the readings wait in the store, bounded by the quota.
//! - A batch refused for good is split in halves until the readings at fault are alone; those are
//!   parked (copied aside, listed by the API, counted) and the rest goes on.
//! - Live first: once the sink is more than `live_first_after` readings behind (after an outage),
//!   readings arriving from then on are sent as they come, and the backlog drains in the gaps,
//!   paced by `backlog_rate`. Per-device order holds within the live tail and within the backlog;
//!   every reading carries its offset, so a receiver can restore the total order.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body::batch_body;
use super::compress::compress;
use super::http::HttpUplink;
use super::mqtt::MqttUplink;
use super::{Batch, Delivery};
use crate::clock::now_ms;
use crate::config::{Compression, SinkConfig, SinkKind};
use crate::store::durable::Durable;
use crate::store::sync::{FollowerKind, SyncPosition};
use crate::store::{Reading, Store, StoreError};

/// How long a sink waits before trying the store again after it failed.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// The transport of a sink.
pub enum Uplink {
    /// POSTs to a URL.
    Http(Box<HttpUplink>),
    /// Publishes to a cloud broker.
    Mqtt(Box<MqttUplink>),
}

impl Uplink {
    async fn deliver(&mut self, batch: &Batch) -> Delivery {
        match self {
            Uplink::Http(http) => http.deliver(batch).await,
            Uplink::Mqtt(mqtt) => mqtt.deliver(batch).await,
        }
    }
}

/// How a sink batches, retries and paces.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Its name (and the key of its position).
    pub name: String,
    /// `http` or `mqtt`.
    pub kind: SinkKind,
    /// This hub's name upstream.
    pub hub_id: String,
    /// Body compression.
    pub compression: Compression,
    /// Most readings in a batch.
    pub batch_max: usize,
    /// How long a partial batch waits for more.
    pub batch_wait: Duration,
    /// First and longest back-off.
    pub retry: (Duration, Duration),
    /// Lag past which fresh readings go first.
    pub live_first_after: Option<u64>,
    /// Most backlog readings per second.
    pub backlog_rate: Option<u32>,
}

impl SinkSettings {
    /// The settings of a configured sink.
    pub fn new(kind: SinkKind, config: &SinkConfig, hub_id: &str) -> Self {
        SinkSettings {
            name: config.name.clone(),
            kind,
            hub_id: hub_id.to_owned(),
            compression: config.compression(kind),
            batch_max: config.batch_max(),
            batch_wait: config.batch_wait(),
            retry: config.retry(),
            live_first_after: config.live_first_after(),
            backlog_rate: config.backlog_rate(),
        }
    }
}

/// Counters of a sink, for the API and metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Readings the receiver took.
    pub delivered: AtomicU64,
    /// Batches the receiver took.
    pub batches: AtomicU64,
    /// Body bytes of those batches, as sent (compressed).
    pub bytes: AtomicU64,
    /// Deliveries that failed and will be retried.
    pub failures: AtomicU64,
    /// Readings parked because the receiver refused them for good.
    pub parked: AtomicU64,
    /// When the receiver last took a batch (unix ms; 0 never).
    pub last_delivery_ms: AtomicU64,
    /// Why the last delivery failed, while the sink is failing.
    pub last_error: Mutex<Option<String>>,
}

impl SinkStats {
    fn set_error(&self, error: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = error;
        }
    }

    /// Why the sink is failing, if it is.
    pub fn error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// Where a batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    /// Behind: from `next` up to the live tail.
    Backlog,
    /// The live tail, sent ahead of the backlog.
    Live,
}

/// Why a sink stopped sending.
enum Stop {
    /// The hub shuts down.
    Shutdown,
    /// The store failed; try again later.
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

/// Runs `f` on the store off the async workers.
async fn on_store<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|_| StoreError::Poisoned)?
}

/// One push sink.
pub struct Sink {
    settings: SinkSettings,
    store: Store,
    durable: Durable,
    uplink: Uplink,
    stats: Arc<SinkStats>,
    /// Consecutive failed deliveries.
    failures: u32,
    /// When the backlog may send its next batch (pacing).
    backlog_ready: Instant,
    /// Since when readings have been waiting for a partial batch to fill.
    pending_since: Option<Instant>,
}

impl Sink {
    /// A sink following `store` through `uplink`, woken by `durable` when readings arrive.
    pub fn new(
        settings: SinkSettings,
        store: Store,
        durable: Durable,
        uplink: Uplink,
        stats: Arc<SinkStats>,
    ) -> Self {
        Sink {
            settings,
            store,
            durable,
            uplink,
            stats,
            failures: 0,
            backlog_ready: Instant::now(),
            pending_since: None,
        }
    }

    /// Sends batches until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(sink = %self.settings.name, kind = ?self.settings.kind, "sink started");
        let mut full = crate::store::space::FullNotice::default();
        loop {
            match self.follow(&shutdown).await {
                Stop::Shutdown => break,
                Stop::Store(e) => {
                    if !e.is_disk_full() {
                        tracing::error!(sink = %self.settings.name, error = %e, "sink cannot read or save its position; trying again");
                    } else if full.due() {
                        tracing::warn!(sink = %self.settings.name, error = %e, "sink cannot save its position: the file system holding the store is full; the batch is sent again once it has room");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(STORE_RETRY) => {}
                    }
                }
            }
        }
        tracing::debug!(sink = %self.settings.name, "sink stopped");
    }

    async fn follow(&mut self, shutdown: &CancellationToken) -> Stop {
        let name = self.settings.name.clone();
        let mut position = match on_store(&self.store, move |s| s.sync_position(&name)).await {
            Ok(Some(p)) => p,
            Ok(None) => SyncPosition::start(FollowerKind::Sink, now_ms()),
            Err(e) => return Stop::Store(e),
        };
        position.kind = FollowerKind::Sink;
        loop {
            if let Err(stop) = self.step(&mut position, shutdown).await {
                return stop;
            }
        }
    }

    /// Sends one batch, or waits a little for readings.
    async fn step(
        &mut self,
        position: &mut SyncPosition,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        if shutdown.is_cancelled() {
            return Err(Stop::Shutdown);
        }
        if let Some((first, last)) = position.inflight {
            // After a restart: the batch that was on its way goes again, exactly.
            let count = (last - first + 1).min(10_000) as usize;
            let readings = on_store(&self.store, move |s| {
                s.readings_from(first, last + 1, count)
            })
            .await?;
            let region = match position.ahead {
                Some((start, _)) if first >= start => Region::Live,
                _ => Region::Backlog,
            };
            if readings.is_empty() {
                position.inflight = None;
                advance(position, region, last);
                return Ok(());
            }
            return self
                .send(position, readings, region, Some((first, last)), shutdown)
                .await;
        }

        let (head, oldest) =
            on_store(&self.store, |s| Ok((s.next_offset()?, s.oldest_offset()?))).await?;
        // Retention dropped readings this sink had not passed (drop_oldest at the quota).
        if let Some(oldest) = oldest
            && position.next < oldest
        {
            position.next = oldest;
            if let Some((start, end)) = position.ahead
                && position.next >= start
            {
                position.next = position.next.max(end);
                position.ahead = None;
            }
        }
        let backlog_end = match position.ahead {
            Some((start, end)) if position.next >= start => {
                position.next = end;
                position.ahead = None;
                head
            }
            Some((start, _)) => start,
            None => head,
        };

        // The live tail goes first, as soon as a batch of it is due.
        if let Some((_, end)) = position.ahead {
            let pending = head.saturating_sub(end);
            if pending > 0 && self.due(pending) {
                return self
                    .read_and_send(position, end, head, Region::Live, shutdown)
                    .await;
            }
        } else if let Some(threshold) = self.settings.live_first_after
            && head.saturating_sub(position.next) > threshold
        {
            tracing::info!(sink = %self.settings.name, behind = head - position.next, "sink is far behind: fresh readings go first while the backlog drains");
            position.ahead = Some((head, head));
            return Ok(());
        }

        let behind = backlog_end.saturating_sub(position.next);
        let now = Instant::now();
        if behind > 0 && position.ahead.is_some() {
            if now >= self.backlog_ready {
                let from = position.next;
                return self
                    .read_and_send(position, from, backlog_end, Region::Backlog, shutdown)
                    .await;
            }
        } else if behind > 0 && self.due(behind) {
            let from = position.next;
            return self
                .read_and_send(position, from, backlog_end, Region::Backlog, shutdown)
                .await;
        }
        // Nothing to send now: wait for the next commit, or for the moment the backlog's pacing
        // or a partial batch's wait ends, whichever comes first.
        let unsent = head > position.next || position.ahead.is_some_and(|(_, end)| head > end);
        if !unsent {
            self.pending_since = None;
        }
        let paced = (position.ahead.is_some() && behind > 0).then_some(self.backlog_ready);
        let filling = self
            .pending_since
            .map(|since| since + self.settings.batch_wait);
        let deadline = paced.into_iter().chain(filling).min();
        tokio::select! {
            _ = shutdown.cancelled() => Err(Stop::Shutdown),
            _ = self.durable.committed() => Ok(()),
            _ = sleep_until(deadline) => Ok(()),
        }
    }

    /// Whether `pending` readings make a batch now: a full one, or one that waited long enough.
    fn due(&mut self, pending: u64) -> bool {
        if pending >= self.settings.batch_max as u64 {
            self.pending_since = None;
            return true;
        }
        let since = *self.pending_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.settings.batch_wait {
            self.pending_since = None;
            true
        } else {
            false
        }
    }

    async fn read_and_send(
        &mut self,
        position: &mut SyncPosition,
        from: u64,
        end: u64,
        region: Region,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let limit = self.settings.batch_max;
        let readings = on_store(&self.store, move |s| s.readings_from(from, end, limit)).await?;
        if readings.is_empty() {
            // Deleted under us: nothing to send up to `end`.
            advance(position, region, end.saturating_sub(1));
            return Ok(());
        }
        let started = Instant::now();
        let count = readings.len();
        self.send(position, readings, region, None, shutdown)
            .await?;
        if region == Region::Backlog
            && let Some(rate) = self.settings.backlog_rate
        {
            let budget = Duration::from_secs_f64(count as f64 / f64::from(rate));
            self.backlog_ready = started + budget;
        }
        Ok(())
    }

    /// Delivers `readings` (one range of `region`), splitting it when the receiver refuses it for
    /// good, and moves the position past it. `range`: the batch's first and last offset when they
    /// were saved before (an in-flight batch sent again keeps its key even if readings of it were
    /// erased since).
    async fn send(
        &mut self,
        position: &mut SyncPosition,
        readings: Vec<Reading>,
        region: Region,
        range: Option<(u64, u64)>,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let mut parts = vec![readings];
        // Only the whole batch has a saved range; halves of a refused one are batches of their own.
        let mut range = range;
        while let Some(part) = parts.pop() {
            let (Some(first), Some(last)) = (part.first(), part.last()) else {
                continue;
            };
            let fixed = range.take();
            let (first, last) = fixed.unwrap_or((first.offset, last.offset));
            let (key, json) = batch_body(&self.settings.hub_id, &self.settings.name, &part, fixed);
            let (body, encoding) = match compress(&json, self.settings.compression) {
                Ok(body) => (body, self.settings.compression),
                Err(e) => {
                    tracing::warn!(sink = %self.settings.name, error = %e, "compression failed; sending the batch uncompressed");
                    (json, Compression::None)
                }
            };
            let batch = Batch {
                first,
                last,
                count: part.len(),
                key,
                body,
                encoding,
            };
            position.inflight = Some((first, last));
            position.updated_ms = now_ms();
            self.save(position).await?;
            loop {
                let delivery = tokio::select! {
                    _ = shutdown.cancelled() => return Err(Stop::Shutdown),
                    delivery = self.uplink.deliver(&batch) => delivery,
                };
                match delivery {
                    Delivery::Delivered => {
                        if self.failures > 0 {
                            tracing::info!(sink = %self.settings.name, failures = self.failures, "sink delivers again");
                        }
                        self.failures = 0;
                        self.stats.set_error(None);
                        position.inflight = None;
                        advance(position, region, last);
                        position.updated_ms = now_ms();
                        self.save(position).await?;
                        self.stats
                            .delivered
                            .fetch_add(batch.count as u64, Ordering::Relaxed);
                        self.stats.batches.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .bytes
                            .fetch_add(batch.body.len() as u64, Ordering::Relaxed);
                        self.stats
                            .last_delivery_ms
                            .store(now_ms(), Ordering::Relaxed);
                        break;
                    }
                    Delivery::Retry { after, reason } => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        let wait = after.unwrap_or_else(|| self.backoff());
                        if self.failures == 0 || self.stats.error().as_deref() != Some(&reason) {
                            tracing::warn!(sink = %self.settings.name, %reason, retry_in = ?wait, "delivery failed; the batch waits in the store and is sent again");
                        }
                        self.failures = self.failures.saturating_add(1);
                        self.stats.set_error(Some(reason));
                        tokio::select! {
                            _ = shutdown.cancelled() => return Err(Stop::Shutdown),
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    Delivery::Refused { status, reason } => {
                        if part.len() > 1 {
                            // Halve it to find the readings at fault; the left half goes first.
                            let mut left = part;
                            let right = left.split_off(left.len() / 2);
                            parts.push(right);
                            parts.push(left);
                            break;
                        }
                        tracing::warn!(sink = %self.settings.name, offset = first, device = %part[0].device, status, %reason, "the receiver refused a reading for good; it is parked (GET /api/v1/sync/parked)");
                        position.inflight = None;
                        advance(position, region, last);
                        position.updated_ms = now_ms();
                        let (name, saved) = (self.settings.name.clone(), *position);
                        let dropped = on_store(&self.store, move |s| {
                            s.park(&name, &[first], status, &reason, &saved, now_ms())
                        })
                        .await?;
                        self.stats.parked.fetch_add(1, Ordering::Relaxed);
                        if dropped > 0 {
                            tracing::error!(sink = %self.settings.name, dropped, "too many parked readings: the oldest were deleted");
                        }
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    // `&mut self`: a shared borrow held across the await would need the uplink to be `Sync`.
    async fn save(&mut self, position: &SyncPosition) -> Result<(), Stop> {
        let (name, saved) = (self.settings.name.clone(), *position);
        on_store(&self.store, move |s| s.set_sync_position(&name, &saved)).await?;
        Ok(())
    }

    /// The next back-off: uniform between 0 and `retry_min * 2^failures`, at most `retry_max`.
    fn backoff(&self) -> Duration {
        let (min, max) = self.settings.retry;
        let ceiling = min.saturating_mul(1u32 << self.failures.min(20)).min(max);
        let mut bytes = [0u8; 8];
        // No randomness (it never fails on Linux): the whole ceiling, still bounded.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
            return ceiling;
        }
        let unit = (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(unit)
    }
}

/// Moves `position` past the reading at `last` of `region`.
fn advance(position: &mut SyncPosition, region: Region, last: u64) {
    match region {
        Region::Backlog => {
            position.next = position.next.max(last + 1);
            if let Some((start, end)) = position.ahead
                && position.next >= start
            {
                position.next = position.next.max(end);
                position.ahead = None;
            }
        }
        Region::Live => {
            if let Some((start, end)) = position.ahead {
                position.ahead = Some((start, end.max(last + 1)));
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(next: u64, ahead: Option<(u64, u64)>) -> SyncPosition {
        SyncPosition {
            next,
            ahead,
            ..SyncPosition::start(FollowerKind::Sink, 0)
        }
    }

    #[test]
    fn the_backlog_meeting_the_live_tail_merges_them() {
        let mut p = position(10, Some((100, 150)));
        advance(&mut p, Region::Backlog, 49);
        assert_eq!((p.next, p.ahead), (50, Some((100, 150))));
        advance(&mut p, Region::Live, 179);
        assert_eq!(p.ahead, Some((100, 180)));
        advance(&mut p, Region::Backlog, 99);
        assert_eq!((p.next, p.ahead), (180, None));
    }

    #[test]
    fn a_position_never_moves_back() {
        let mut p = position(10, None);
        advance(&mut p, Region::Backlog, 3);
        assert_eq!(p.next, 10);
    }
}
