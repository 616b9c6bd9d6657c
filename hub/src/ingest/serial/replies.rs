//! What goes back down the line: replies once a message is durable (acks in arrival order, one
//! task awaiting the commits), commands through [`SerialDownlink`], and the one writer of the
//! port's current opening. A reply is never written to a later opening than its message's.

use std::io;

use device_protocol::{Downlink, MAX_FRAME_LEN, TimeSync, encode_line_frame};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_serial::SerialStream;

use super::super::DownlinkError;
use super::super::reply::{self, Told};
use super::WRITE_TIMEOUT;
use crate::clock::now_ms;
use crate::store::Applied;
use crate::store::writer::CommitFailed;

/// Sends messages to the device on one serial line (commands); never waits.
#[derive(Clone)]
pub struct SerialDownlink {
    pub(super) line_rx: watch::Receiver<Option<LineWriter>>,
    pub(super) device_rx: watch::Receiver<Option<String>>,
}

impl SerialDownlink {
    /// The device on the line: the configured id, or the id of its last `Hello`.
    pub fn device(&self) -> Option<String> {
        self.device_rx.borrow().clone()
    }

    /// Queues a downlink message, already postcard-encoded, for the line's current opening.
    pub fn send_encoded(&self, message: &[u8]) -> Result<(), DownlinkError> {
        let message = Downlink::decode(message).map_err(|_| DownlinkError::TooLarge)?;
        let line = self.line_rx.borrow().clone();
        let line = line.ok_or(DownlinkError::NotConnected)?;
        let frame = frame(&message).ok_or(DownlinkError::TooLarge)?;
        line.frames_tx
            .try_send(frame)
            .map_err(|_| DownlinkError::Busy)
    }
}

/// What the device is told once its message is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    /// `Ack` with the device's cumulative ack (a reading).
    Ack,
    /// `Rejected` with why, then the ack (a reading refused for its content).
    Rejected(String),
    /// `TimeSync` (a `Hello`).
    TimeSync,
    /// Nothing (a command result).
    Nothing,
}

/// A submission waiting for its commit, and what to answer on which opening of the port.
pub(super) struct Pending {
    pub(super) done_rx: oneshot::Receiver<Result<Vec<Applied>, CommitFailed>>,
    pub(super) reply: Reply,
    /// The opening of the port the message came in on.
    pub(super) generation: u64,
}

/// The writer of the port's current opening, as the acker sees it.
#[derive(Debug, Clone)]
pub(super) struct LineWriter {
    pub(super) generation: u64,
    pub(super) frames_tx: mpsc::Sender<Vec<u8>>,
}

/// Writes queued frames to the port until the queue closes; reports the first failure.
pub(super) async fn write_frames(
    mut port: WriteHalf<SerialStream>,
    mut frames_rx: mpsc::Receiver<Vec<u8>>,
    failed_tx: oneshot::Sender<io::Error>,
) {
    while let Some(frame) = frames_rx.recv().await {
        let written = match tokio::time::timeout(WRITE_TIMEOUT, port.write_all(&frame)).await {
            Ok(written) => written,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the line does not drain",
            )),
        };
        if let Err(e) = written {
            let _ = failed_tx.send(e);
            return;
        }
    }
}

/// Once each commit is done, in arrival order, queues the device's reply for the opening of the
/// port the message came in on. A failed commit gets no reply: the device retransmits.
pub(super) async fn ack_in_order(
    mut pending_rx: mpsc::Receiver<Pending>,
    line_rx: watch::Receiver<Option<LineWriter>>,
) {
    // The last ack written, and on which opening: a burst of readings gets one ack, not one each.
    let mut told: Option<(u64, Told)> = None;
    while let Some(pending) = pending_rx.recv().await {
        let Ok(Ok(applied)) = pending.done_rx.await else {
            continue;
        };
        let line = line_rx.borrow().clone();
        let Some(line) = line.filter(|l| l.generation == pending.generation) else {
            continue;
        };
        let (frames, acked) = match &pending.reply {
            Reply::Nothing => continue,
            Reply::TimeSync => {
                // A Hello means the device (re)started and may have forgotten what it was told.
                told = None;
                let sync = Downlink::TimeSync(TimeSync { unix_ms: now_ms() });
                (frame(&sync).into_iter().collect::<Vec<_>>(), None)
            }
            Reply::Ack | Reply::Rejected(_) => {
                let rejected = match &pending.reply {
                    Reply::Rejected(detail) => Some(detail.as_str()),
                    _ => None,
                };
                let told_here = told
                    .filter(|(generation, _)| *generation == pending.generation)
                    .map(|(_, t)| t);
                let Some(first) = applied.first() else {
                    continue;
                };
                let Some(answer) = reply::answer(first, rejected, told_here) else {
                    continue;
                };
                let frames = answer.downlinks().iter().filter_map(frame).collect();
                (frames, Some(answer.told()))
            }
        };
        // Never waits on the line: a full queue drops the reply, which the device's
        // retransmission gets back.
        let mut queued = true;
        for frame in frames {
            queued = queued && line.frames_tx.try_send(frame).is_ok();
        }
        match (queued, acked) {
            (true, Some(ack)) => told = Some((pending.generation, ack)),
            (true, None) => {}
            (false, _) => tracing::debug!("serial reply dropped: the line is not draining"),
        }
    }
}

/// The bytes to write for `message`: a 0x00, then its frame. The leading 0x00 ends whatever noise
/// the device may have received since the last frame, so the noise cannot spoil this one.
pub(super) fn frame(message: &Downlink<'_>) -> Option<Vec<u8>> {
    let mut buf = [0u8; MAX_FRAME_LEN + 2];
    let len = encode_line_frame(message, &mut buf).ok()?;
    Some(buf.get(..len)?.to_vec())
}
