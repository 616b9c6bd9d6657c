//! The store writer's queue: what a transport submits (the items of one source message and where
//! to say when they are durable), bounded in submissions and in bytes, so what waits for the
//! writer stays within a fixed amount of memory whatever the transports read.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::super::{Applied, Ingest};

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
    pub(super) submission: Submission,
    pub(super) _bytes: OwnedSemaphorePermit,
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
