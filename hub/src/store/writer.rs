//! The store writer: the one task that appends to the store. It takes submissions from every
//! transport through one bounded channel, commits whatever has queued up (up to `batch_max`
//! readings) in one durable transaction off the async workers, then answers each submission.
//!
//! Group commit falls out of the loop: while one commit is on disk, the next batch queues up.
//! The writer stops when every sender is gone, after committing what was queued: stopping ingest
//! is what drains it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::{Appended, NewReading, Store};

/// Readings from one source message, and where to say when they are durable.
#[derive(Debug)]
pub struct Submission {
    /// The readings (usually one).
    pub readings: Vec<NewReading>,
    /// Told the outcome once the batch holding them is committed (or failed).
    pub done_tx: Option<oneshot::Sender<Result<Vec<Appended>, CommitFailed>>>,
}

/// The batch holding a submission could not be committed; nothing of it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitFailed;

/// Counters of the writer, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Readings committed.
    pub readings: AtomicU64,
    /// Commits done.
    pub commits: AtomicU64,
    /// Commits that failed.
    pub failed_commits: AtomicU64,
}

/// The store writer task.
pub struct StoreWriter {
    store: Store,
    batch_max: usize,
    stats: Arc<WriterStats>,
}

impl StoreWriter {
    /// A writer for `store` committing at most `batch_max` readings at once.
    pub fn new(store: Store, batch_max: usize, stats: Arc<WriterStats>) -> Self {
        StoreWriter {
            store,
            batch_max: batch_max.max(1),
            stats,
        }
    }

    /// Runs until every sender of `submissions_rx` is dropped and the queue is empty.
    pub async fn run(self, mut submissions_rx: mpsc::Receiver<Submission>) {
        let mut queued: Vec<Submission> = Vec::new();
        while let Some(first) = submissions_rx.recv().await {
            let mut count = first.readings.len();
            queued.push(first);
            while count < self.batch_max {
                match submissions_rx.try_recv() {
                    Ok(next) => {
                        count += next.readings.len();
                        queued.push(next);
                    }
                    Err(_) => break,
                }
            }
            let batch = std::mem::take(&mut queued);
            self.commit(batch).await;
        }
        tracing::debug!("store writer drained and stopped");
    }

    async fn commit(&self, batch: Vec<Submission>) {
        let readings: Vec<NewReading> = batch
            .iter()
            .flat_map(|s| s.readings.iter().cloned())
            .collect();
        let store = self.store.clone();
        let count = readings.len();
        let outcome = tokio::task::spawn_blocking(move || store.append(&readings)).await;
        match outcome {
            Ok(Ok(assigned)) => {
                self.stats
                    .readings
                    .fetch_add(count as u64, Ordering::Relaxed);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                let mut assigned = assigned.into_iter();
                for submission in batch {
                    let mine: Vec<Appended> =
                        assigned.by_ref().take(submission.readings.len()).collect();
                    if let Some(done_tx) = submission.done_tx {
                        // The submitter may have gone (shutdown); the readings are stored anyway.
                        let _ = done_tx.send(Ok(mine));
                    }
                }
            }
            failure => {
                self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                match failure {
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, readings = count, "commit failed; the readings were not acknowledged and will be redelivered")
                    }
                    _ => tracing::error!(
                        readings = count,
                        "commit task died; the readings were not acknowledged"
                    ),
                }
                for submission in batch {
                    if let Some(done_tx) = submission.done_tx {
                        let _ = done_tx.send(Err(CommitFailed));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Transport;
    use crate::store::memory::MemoryEngine;
    use device_protocol::OwnedValue;

    fn reading(seq: u32) -> NewReading {
        NewReading {
            device: "d".into(),
            transport: Transport::Mqtt,
            seq: Some(seq),
            timestamp_ms: None,
            received_ms: 1,
            metrics: vec![("v".into(), OwnedValue::I64(seq as i64))],
        }
    }

    #[tokio::test]
    async fn answers_every_submission_in_order_and_drains_on_close() {
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let stats = Arc::new(WriterStats::default());
        let (tx, rx) = mpsc::channel(64);
        let mut answers = Vec::new();
        for seq in 0..50 {
            let (done_tx, done_rx) = oneshot::channel();
            tx.send(Submission {
                readings: vec![reading(seq)],
                done_tx: Some(done_tx),
            })
            .await
            .unwrap();
            answers.push(done_rx);
        }
        drop(tx);
        StoreWriter::new(store.clone(), 8, stats.clone())
            .run(rx)
            .await;
        for (i, answer) in answers.into_iter().enumerate() {
            let appended = answer.await.unwrap().unwrap();
            assert_eq!(
                appended,
                vec![Appended {
                    offset: i as u64,
                    seq: i as u32
                }]
            );
        }
        assert_eq!(stats.readings.load(Ordering::Relaxed), 50);
        assert!(
            stats.commits.load(Ordering::Relaxed) >= 50 / 8,
            "batched by at most batch_max"
        );
        assert_eq!(store.next_offset().unwrap(), 50);
    }
}
