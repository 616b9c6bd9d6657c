//! The ingest liveness watch: a stall can never again be silent.
//!
//! Once a second it looks at the store writer: readings waiting (in the writer's queue or in its
//! hands) while no commit has finished, successfully or not, for `stall_after` is a stall. The
//! watch then says so at WARN (again each minute while it lasts), and `/readyz` and `/metrics`
//! show it until a commit finishes. A writer waiting for room on a full file system is no stall:
//! the store says so itself (see [`crate::store::space`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::store::writer::{Queued, WriterStats};

/// How often the watch looks.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How often a stall that lasts is said again.
const REMIND_EVERY: Duration = Duration::from_secs(60);

/// Whether ingest is stalled, for readiness and metrics.
#[derive(Debug, Default)]
pub struct IngestLiveness {
    /// Unix ms since which readings wait with no commit finishing; 0 while ingest moves.
    stalled_since_ms: AtomicU64,
}

impl IngestLiveness {
    /// Seconds ingest has been stalled, if it is.
    pub fn stalled_for(&self, now_ms: u64) -> Option<f64> {
        match self.stalled_since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(now_ms.saturating_sub(since) as f64 / 1000.0),
        }
    }
}

/// Watches the writer of `store` until `shutdown`. `queue` is a weak handle on the writer's
/// queue, so the watch never keeps the writer running at shutdown.
pub async fn watch(
    liveness: Arc<IngestLiveness>,
    store: Store,
    writer: Arc<WriterStats>,
    queue: mpsc::WeakSender<Queued>,
    stall_after: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let finished = |w: &WriterStats| {
        w.commits.load(Ordering::Relaxed) + w.failed_commits.load(Ordering::Relaxed)
    };
    let mut last_finished = finished(&writer);
    let mut moved_at = tokio::time::Instant::now();
    let mut said_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let queued = queue
            .upgrade()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity());
        let in_hand = writer.in_hand.load(Ordering::Relaxed);
        let done = finished(&writer);
        let disk_full = store.space().is_full();
        if done != last_finished || (queued == 0 && in_hand == 0) || disk_full {
            last_finished = done;
            moved_at = now;
            if said_at.take().is_some() {
                liveness.stalled_since_ms.store(0, Ordering::Relaxed);
                if !disk_full {
                    tracing::info!("ingest moves again: a commit finished");
                }
            }
            continue;
        }
        let stalled = now.duration_since(moved_at);
        if stalled < stall_after {
            continue;
        }
        if said_at.is_none() {
            let since = crate::clock::now_ms().saturating_sub(stalled.as_millis() as u64);
            liveness
                .stalled_since_ms
                .store(since.max(1), Ordering::Relaxed);
        }
        if said_at.is_none_or(|at| now.duration_since(at) >= REMIND_EVERY) {
            said_at = Some(now);
            tracing::warn!(
                stalled_s = stalled.as_secs(),
                queued,
                in_hand,
                "ingest is stalled: readings wait and no commit has finished"
            );
        }
    }
}

impl crate::exposition::Collect for IngestLiveness {
    fn collect(
        &self,
        out: &mut crate::exposition::Exposition,
    ) -> Result<(), crate::exposition::CollectError> {
        out.single(
            "hub_ingest_stalled_seconds",
            "gauge",
            "How long readings have waited with no commit finishing, once past ingest.stall_after; 0 while ingest moves.",
            self.stalled_for(crate::clock::now_ms()).unwrap_or(0.0),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waiting_readings_without_a_commit_are_a_stall_until_a_commit_finishes() {
        let liveness = Arc::new(IngestLiveness::default());
        let writer = Arc::new(WriterStats::default());
        let (tx, _rx) = crate::store::writer::queue(8, 1 << 20);
        let shutdown = CancellationToken::new();
        let store = Store::open(Arc::new(crate::store::memory::MemoryEngine::new())).unwrap();
        let task = tokio::spawn(watch(
            liveness.clone(),
            store.clone(),
            writer.clone(),
            tx.downgrade(),
            Duration::from_secs(5),
            shutdown.clone(),
        ));
        // Nothing waits: never a stall, however long.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(liveness.stalled_for(crate::clock::now_ms()), None);
        // A reading waits and nothing commits.
        tx.send(crate::store::writer::Submission {
            items: Vec::new(),
            done_tx: None,
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(liveness.stalled_for(crate::clock::now_ms()), None);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(liveness.stalled_for(crate::clock::now_ms()).is_some());
        // A commit finishes: moving again.
        writer.commits.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(liveness.stalled_for(crate::clock::now_ms()), None);
        // The writer waits for room on a full file system: the store says so, not the watch.
        store.space().set_full(crate::clock::now_ms());
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(liveness.stalled_for(crate::clock::now_ms()), None);
        // Room again, and the readings still wait with no commit: a stall once more.
        store.space().set_room();
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(liveness.stalled_for(crate::clock::now_ms()).is_some());
        shutdown.cancel();
        task.await.unwrap();
    }
}
