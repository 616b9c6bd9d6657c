//! Serial-line ingest: one device (or one device at a time) on a serial port, speaking the
//! device-protocol frames (`COBS(postcard ++ crc32) ++ 0x00`).
//!
//! Job: keep the port open for as long as the hub runs, rebuild frames from the byte stream,
//! hand what devices send to the store writer, and answer on the same line once it is durable:
//! `Ack` for readings (with `Rejected` and `GaveUp` before it when there is one to tell, see
//! [`super::reply`]), `TimeSync` after a `Hello`. Every frame written starts with a 0x00, as the
//! framing asks of a sender. Commands go the other way through
//! [`SerialDownlink`], to whichever device is on the line now; the device's `CommandResult` comes
//! back as a frame like any other.
//!
//! Inputs: the bytes of the port named by [`SerialSettings::path`]. Outputs: [`Submission`]s to the
//! store writer, one item each; `Downlink` frames written back to the port; counters in
//! [`IngestStats`] (accepted and rejected, with the path as the "topic") and [`LineStats`].
//!
//! Which device: [`SerialSettings::device_id`] when set, else the id of the line's last `Hello`,
//! kept across reopens of the port. Telemetry from a line that has neither is rejected as
//! [`Rejection::UnknownDevice`].
//!
//! Invariants:
//! - an `Ack` is written only after the commit holding the reading succeeded, and acks are written
//!   in the order the frames arrived (one task awaits the commits in order), so an ack never
//!   claims more than is durable; a failed commit is never acked and the device retransmits;
//! - reading never waits for a commit: commits are awaited by the acker, and replies are queued to
//!   the line's single writer through a bounded channel (the line is full duplex);
//! - a reply queued for one opening of the port is never written to a later one: after a reopen
//!   the device may be another one, and a device that missed its ack retransmits and is acked
//!   again (a retransmission is a duplicate, which is always answered);
//! - every buffer, channel and remembered string is bounded; no input can panic the component;
//! - any read or write error, end of file, a vanished or replaced path, or a silence longer than
//!   [`SerialSettings::silence_timeout`] closes the port, which is reopened with a jittered
//!   back-off (100 ms doubling to 5 s) and at once when a vanished path comes back. A frame partly
//!   received when the port closes is dropped. Nothing is lost by closing: devices retransmit
//!   what was not acked, so an outage is logged at WARN once, never at ERROR.
//!
//! Here: the task (opening, reading, submitting); beside it `port.rs` (opening the port and
//! watching its path), `identity.rs` (who is on the line), `replies.rs` (acks, commands and the
//! line's writer).

mod identity;
mod port;
mod replies;
#[cfg(test)]
mod tests;

use identity::Identity;
use port::{Lost, PathIdentity, open};
// The Modbus RTU link watches and reopens its port the same way.
pub(super) use port::{path_identity, wait_to_reopen};
pub use replies::SerialDownlink;
use replies::{LineWriter, Pending, Reply, ack_in_order, write_frames};

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use device_protocol::{FeedResult, FrameDecoder, Uplink};
use tokio::io::{AsyncReadExt, ReadHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;

use super::{IngestStats, Rejection, decode};
use crate::clock::{jitter, now_ms};
use crate::store::writer::{Submission, SubmissionSender};
use crate::store::{DeviceStatus, Ingest, Transport};

/// First wait before reopening a lost port; doubled after each fruitless attempt.
const REOPEN_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reopen attempts.
const REOPEN_MAX: Duration = Duration::from_secs(5);
/// How often a closed port's vanished path is looked for, so a replug is noticed at once
/// instead of after the back-off.
const REPLUG_POLL: Duration = Duration::from_millis(50);
/// How often an open port checks that its path still names the device it opened: some drivers
/// keep a dead descriptor quiet after an unplug instead of failing its reads.
const PATH_CHECK: Duration = Duration::from_millis(500);
/// Longest a frame may take to be written. A line that does not drain (a device that stopped
/// reading, a stuck driver) is treated as lost rather than blocking its replies for ever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Commits awaited at once. When the store is this far behind, reading waits for it: the kernel
/// buffers the line meanwhile, and devices retransmit whatever it drops.
const MAX_PENDING: usize = 256;
/// Replies queued for the writer. Replies are small and cumulative, so when the line is this
/// far behind, dropping one costs nothing but a retransmission.
const MAX_QUEUED_REPLIES: usize = 32;
/// How long shutdown waits for pending commits, so their acks are written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Bytes read from the port at once.
const READ_CHUNK: usize = 512;

/// Which port to read and how.
#[derive(Debug, Clone)]
pub struct SerialSettings {
    /// The port, e.g. `/dev/ttyUSB0` or a stable `/dev/serial/by-id/...` link.
    pub path: PathBuf,
    /// Line speed in baud (8 data bits, no parity, 1 stop bit, no flow control).
    pub baud: u32,
    /// A fixed device id for a device that sends no `Hello` (already validated by the config).
    /// When set, every message on the line is that device's, whatever a `Hello` says.
    pub device_id: Option<String>,
    /// No byte received for this long: the port is closed and reopened (a watchdog for a port
    /// that went quiet without failing). Zero turns the watchdog off.
    pub silence_timeout: Duration,
}

/// Counters of one serial line, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct LineStats {
    /// Times the port was opened (the first opening and every reopening).
    pub opens: AtomicU64,
    /// Times the silence watchdog closed the port.
    pub silences: AtomicU64,
}

/// The serial ingest component: one per configured port.
pub struct SerialIngest {
    settings: SerialSettings,
    submissions_tx: SubmissionSender,
    stats: Arc<IngestStats>,
    line_stats: Arc<LineStats>,
    /// The path as text, for logs and as the "topic" of rejections.
    label: String,
    /// The writer of the port's current opening (`None` while it is closed).
    line_tx: watch::Sender<Option<LineWriter>>,
    /// The device on the line, once known.
    device_tx: watch::Sender<Option<String>>,
}

/// How a session on an open port ended.
enum End {
    /// Shutdown was asked for, or the store writer is gone: stop.
    Stop,
    /// The port failed; reopen it. `got_data` tells whether any byte came in before.
    Lost { reason: Lost, got_data: bool },
}

/// What outlives one opening of the port.
struct LineState {
    /// One decoder per port; reset whenever the port closes.
    decoder: FrameDecoder,
    identity: Identity,
    /// The line is lost (or was never opened) and no byte came since: one WARN per outage.
    in_outage: bool,
}

/// What reading one opening of the port shares with the rest of `run`.
struct Session<'a> {
    shutdown: &'a CancellationToken,
    pending_tx: &'a mpsc::Sender<Pending>,
    generation: u64,
}

impl SerialIngest {
    /// A component reading `settings.path`, submitting to `submissions_tx` and counting in `stats`.
    pub fn new(
        settings: SerialSettings,
        submissions_tx: SubmissionSender,
        stats: Arc<IngestStats>,
    ) -> Self {
        SerialIngest {
            label: settings.path.display().to_string(),
            device_tx: watch::Sender::new(settings.device_id.clone()),
            settings,
            submissions_tx,
            stats,
            line_stats: Arc::new(LineStats::default()),
            line_tx: watch::Sender::new(None),
        }
    }

    /// A handle that sends messages to the device on this line.
    pub fn downlink(&self) -> SerialDownlink {
        SerialDownlink {
            line_rx: self.line_tx.subscribe(),
            device_rx: self.device_tx.subscribe(),
        }
    }

    /// Tells the store writer the line's device is unreachable, without waiting: a full queue
    /// drops the notice, and the device is then found offline when its silence outlasts the
    /// presence window.
    fn report_offline(&self, reason: &'static str) {
        let Some(device) = self.device_tx.borrow().clone() else {
            return;
        };
        let status = Ingest::Status(DeviceStatus {
            device,
            transport: Transport::Serial,
            online: false,
            reason,
            received_ms: now_ms(),
        });
        let _ = self.submissions_tx.try_send(Submission {
            items: vec![status],
            done_tx: None,
        });
    }

    /// The line's own counters (openings, watchdog firings), for metrics and tests.
    pub fn line_stats(&self) -> Arc<LineStats> {
        self.line_stats.clone()
    }

    /// Runs until `shutdown`: opens the port, reopens it on error, on a vanished path (unplug) and
    /// on silence, with back-off. On shutdown it stops reading at once, gives pending commits up
    /// to 1 s so their acks are written, and returns (dropping its submissions sender).
    pub async fn run(self, shutdown: CancellationToken) {
        let path = self.label.as_str();
        let (pending_tx, pending_rx) = mpsc::channel::<Pending>(MAX_PENDING);
        let line_tx = &self.line_tx;
        let mut acker = tokio::spawn(ack_in_order(pending_rx, line_tx.subscribe()));

        let mut line = LineState {
            decoder: FrameDecoder::new(),
            identity: Identity {
                configured: self.settings.device_id.clone(),
                ..Identity::default()
            },
            in_outage: false,
        };
        let mut backoff = REOPEN_MIN;
        let mut generation: u64 = 0;
        // One WARN per outage, one INFO when the line is back: a line that keeps failing or a
        // device that stays silent does not fill the log. An outage ends when bytes arrive.
        let mut open_logged = false;
        // The writer of the open port, kept at shutdown so the last acks can still be written.
        let mut writer: Option<JoinHandle<()>> = None;

        while !shutdown.is_cancelled() {
            let stream = match open(&self.settings) {
                Ok(stream) => stream,
                Err(e) => {
                    let wait = jitter(backoff);
                    if line.in_outage {
                        tracing::debug!(path, error = %e, retry_in_ms = wait.as_millis() as u64, "serial port still unavailable");
                    } else {
                        tracing::warn!(path, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot open the serial port; retrying (devices keep unacknowledged readings)");
                        line.in_outage = true;
                        open_logged = false;
                    }
                    backoff = (backoff * 2).min(REOPEN_MAX);
                    if !wait_to_reopen(&self.settings.path, wait, &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            self.line_stats.opens.fetch_add(1, Ordering::Relaxed);
            if open_logged {
                tracing::debug!(path, "serial port reopened");
            } else {
                tracing::info!(path, baud = self.settings.baud, "serial line open");
                open_logged = true;
            }
            generation += 1;
            let identity_at_open = path_identity(&self.settings.path);
            let (read_half, write_half) = tokio::io::split(stream);
            let (frames_tx, frames_rx) = mpsc::channel(MAX_QUEUED_REPLIES);
            let (failed_tx, failed_rx) = oneshot::channel();
            let task = tokio::spawn(write_frames(write_half, frames_rx, failed_tx));
            line_tx.send_replace(Some(LineWriter {
                generation,
                frames_tx,
            }));

            let session = Session {
                shutdown: &shutdown,
                pending_tx: &pending_tx,
                generation,
            };
            let end = self
                .read_port(read_half, failed_rx, identity_at_open, &mut line, &session)
                .await;
            // A frame cut by the close would otherwise be glued to the first bytes of the next
            // opening and dropped as garbage along with them.
            line.decoder.reset();
            match end {
                End::Stop => {
                    writer = Some(task);
                    break;
                }
                End::Lost { reason, got_data } => {
                    // No reply may go to a later opening; closing the writer closes the port
                    // (the read half is already dropped).
                    line_tx.send_replace(None);
                    self.report_offline(match reason {
                        Lost::Silence(_) => "silent",
                        _ => "link_down",
                    });
                    task.abort();
                    let _ = task.await;
                    if got_data {
                        backoff = REOPEN_MIN;
                    }
                    let wait = jitter(backoff);
                    if !line.in_outage {
                        tracing::warn!(path, error = %reason, retry_in_ms = wait.as_millis() as u64, "serial line lost; reopening (devices retransmit unacknowledged readings)");
                        line.in_outage = true;
                        open_logged = false;
                    } else {
                        tracing::debug!(path, error = %reason, "serial line lost again");
                    }
                    backoff = (backoff * 2).min(REOPEN_MAX);
                    if !wait_to_reopen(&self.settings.path, wait, &shutdown).await {
                        break;
                    }
                }
            }
        }

        // Shutdown: no more submissions; the acker answers what is pending, within the grace.
        drop(pending_tx);
        let grace = Instant::now() + SHUTDOWN_GRACE;
        if tokio::time::timeout_at(grace, &mut acker).await.is_err() {
            tracing::debug!(
                path,
                "pending commits did not finish in time; their devices will retransmit"
            );
            acker.abort();
        }
        // Dropping the last frames sender lets the writer finish what is queued, then stop.
        line_tx.send_replace(None);
        if let Some(mut task) = writer
            && tokio::time::timeout_at(grace, &mut task).await.is_err()
        {
            task.abort();
        }
        tracing::debug!(path, "serial ingest stopped");
    }

    /// Reads one opening of the port until it fails or shutdown; submits every frame.
    async fn read_port(
        &self,
        mut port: ReadHalf<SerialStream>,
        mut write_failed: oneshot::Receiver<io::Error>,
        identity_at_open: Option<PathIdentity>,
        line: &mut LineState,
        session: &Session<'_>,
    ) -> End {
        let watchdog = self.settings.silence_timeout;
        let mut buf = [0u8; READ_CHUNK];
        let mut last_byte = Instant::now();
        let mut got_data = false;
        let mut path_check = tokio::time::interval_at(Instant::now() + PATH_CHECK, PATH_CHECK);
        path_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = |reason, got_data| End::Lost { reason, got_data };
        loop {
            // Rebuilt from the last byte's time on every turn, so other wake-ups (the path
            // check) do not push the deadline back.
            let silence = async {
                if watchdog.is_zero() {
                    std::future::pending::<()>().await;
                } else {
                    tokio::time::sleep_until(last_byte + watchdog).await;
                }
            };
            tokio::select! {
                biased;
                _ = session.shutdown.cancelled() => return End::Stop,
                failed = &mut write_failed => {
                    let e = failed.unwrap_or_else(|_| io::Error::other("the writer stopped"));
                    return lost(Lost::Write(e), got_data);
                }
                _ = silence => {
                    self.line_stats.silences.fetch_add(1, Ordering::Relaxed);
                    return lost(Lost::Silence(watchdog), got_data);
                }
                _ = path_check.tick() => {
                    if path_identity(&self.settings.path) != identity_at_open {
                        return lost(Lost::Vanished, got_data);
                    }
                }
                read = port.read(&mut buf) => match read {
                    Ok(0) => return lost(Lost::Eof, got_data),
                    Err(e) => return lost(Lost::Read(e), got_data),
                    Ok(n) => {
                        last_byte = Instant::now();
                        got_data = true;
                        line.in_outage = false;
                        let chunk = buf.get(..n).unwrap_or_default();
                        if !self.feed(chunk, line, session).await {
                            return End::Stop;
                        }
                    }
                },
            }
        }
    }

    /// Feeds a chunk to the decoder and submits every message in it; false when stopping.
    async fn feed(&self, chunk: &[u8], line: &mut LineState, session: &Session<'_>) -> bool {
        let path = self.label.as_str();
        let mut input = chunk;
        loop {
            let decoded = match line.decoder.feed(input) {
                FeedResult::Consumed => return true,
                FeedResult::Dropped { reason, remaining } => {
                    input = remaining;
                    self.stats
                        .reject(Rejection::BadFrame, path, &reason.to_string());
                    continue;
                }
                FeedResult::Frame { payload, remaining } => {
                    input = remaining;
                    // Turned into an owned item here: the payload lives in the decoder's buffer.
                    let decoded = Uplink::decode(payload)
                        .map_err(|e| (Rejection::BadPayload, e.to_string()))
                        .and_then(|message| {
                            let device = line.identity.device_for(&message, path)?;
                            self.device_tx.send_if_modified(|known| {
                                let changed = known.as_deref() != Some(device);
                                if changed {
                                    *known = Some(device.to_owned());
                                }
                                changed
                            });
                            decode::uplink(&message, device, Transport::Serial, now_ms())
                        });
                    // Telemetry refused for its content is settled all the same, so the device
                    // on the line can be told to drop it.
                    decoded
                        .map(|item| (item, None))
                        .or_else(|(reason, detail)| {
                            line.identity
                                .known()
                                .and_then(|device| {
                                    let now = now_ms();
                                    decode::rejected_uplink(
                                        device,
                                        payload,
                                        Transport::Serial,
                                        reason,
                                        now,
                                    )
                                })
                                .map(|item| (item, Some((reason, detail.clone()))))
                                .ok_or((reason, detail))
                        })
                }
            };
            match decoded {
                Ok((item, rejection)) => {
                    let reply = match rejection {
                        Some((reason, detail)) => {
                            self.stats.reject(reason, path, &detail);
                            Reply::Rejected(detail)
                        }
                        None => match &item {
                            Ingest::Hello(_) => Reply::TimeSync,
                            Ingest::Reading(_) => Reply::Ack,
                            Ingest::Rejected(_) | Ingest::CommandResult(_) | Ingest::Status(_) => {
                                Reply::Nothing
                            }
                        },
                    };
                    if !self.submit(item, reply, session).await {
                        return false;
                    }
                }
                Err((reason, detail)) => self.stats.reject(reason, path, &detail),
            }
        }
    }

    /// Hands one item to the store writer and its reply to the acker; false when stopping.
    async fn submit(&self, item: Ingest, reply: Reply, session: &Session<'_>) -> bool {
        let accepted = !matches!(item, Ingest::Rejected(_));
        let (done_tx, done_rx) = oneshot::channel();
        let submission = Submission {
            items: vec![item],
            done_tx: Some(done_tx),
        };
        tokio::select! {
            biased;
            _ = session.shutdown.cancelled() => return false,
            sent = self.submissions_tx.send(submission) => if sent.is_err() {
                tracing::debug!(path = %self.label, "the store writer is gone: the hub is stopping");
                return false;
            },
        }
        if accepted {
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        }
        let pending = Pending {
            done_rx,
            reply,
            generation: session.generation,
        };
        tokio::select! {
            biased;
            _ = session.shutdown.cancelled() => false,
            sent = session.pending_tx.send(pending) => sent.is_ok(),
        }
    }
}
