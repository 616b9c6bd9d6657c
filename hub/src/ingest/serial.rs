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

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use device_protocol::{
    Downlink, FeedResult, FrameDecoder, MAX_FRAME_LEN, TimeSync, Uplink, encode_line_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};
use tokio_util::sync::CancellationToken;

use super::reply::{self, Told};
use super::{DownlinkError, IngestStats, Rejection, decode};
use crate::clock::{jitter, now_ms};
use crate::store::writer::{CommitFailed, Submission, SubmissionSender};
use crate::store::{Applied, DeviceStatus, Ingest, Transport};

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

/// Sends messages to the device on one serial line (commands); never waits.
#[derive(Clone)]
pub struct SerialDownlink {
    line_rx: watch::Receiver<Option<LineWriter>>,
    device_rx: watch::Receiver<Option<String>>,
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
enum Reply {
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
struct Pending {
    done_rx: oneshot::Receiver<Result<Vec<Applied>, CommitFailed>>,
    reply: Reply,
    /// The opening of the port the message came in on.
    generation: u64,
}

/// The writer of the port's current opening, as the acker sees it.
#[derive(Debug, Clone)]
struct LineWriter {
    generation: u64,
    frames_tx: mpsc::Sender<Vec<u8>>,
}

/// Why an open port was closed.
#[derive(Debug)]
enum Lost {
    /// Reading failed.
    Read(io::Error),
    /// Writing failed or timed out.
    Write(io::Error),
    /// The port reported end of file (a hang-up).
    Eof,
    /// The path no longer exists, or names another device now (unplugged, or replugged fast).
    Vanished,
    /// No byte for the silence timeout.
    Silence(Duration),
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Read(e) => write!(f, "read failed: {e}"),
            Lost::Write(e) => write!(f, "write failed: {e}"),
            Lost::Eof => f.write_str("end of file (hang-up)"),
            Lost::Vanished => f.write_str("the path vanished or names another device"),
            Lost::Silence(t) => write!(f, "no byte received for {} ms", t.as_millis()),
        }
    }
}

/// How a session on an open port ended.
enum End {
    /// Shutdown was asked for, or the store writer is gone: stop.
    Stop,
    /// The port failed; reopen it. `got_data` tells whether any byte came in before.
    Lost { reason: Lost, got_data: bool },
}

/// Who is on the line: the configured id, or the last `Hello`'s.
#[derive(Debug, Default)]
struct Identity {
    configured: Option<String>,
    /// The id of the last `Hello` (without a configured id).
    hello: Option<String>,
    /// The last other id a `Hello` named while an id is configured: warned about once.
    warned: Option<String>,
}

impl Identity {
    /// The device whose message this is, or the reason to skip it. Notes a `Hello`'s id.
    fn device_for(
        &mut self,
        message: &Uplink<'_>,
        path: &str,
    ) -> Result<&str, (Rejection, String)> {
        if let Uplink::Hello(hello) = message {
            // Uplink::decode validates ids already; checked again because the id becomes the
            // key every later reading is stored under.
            if !device_protocol::is_valid_id(hello.device_id) {
                return Err((
                    Rejection::BadDeviceId,
                    "Hello with an invalid device id".into(),
                ));
            }
            match &self.configured {
                Some(configured) => {
                    if hello.device_id != configured
                        && self.warned.as_deref() != Some(hello.device_id)
                    {
                        tracing::warn!(path, configured = %configured, hello = hello.device_id, "a Hello names another device than the one configured for this line; recorded under the configured id");
                        self.warned = Some(hello.device_id.to_owned());
                    }
                }
                None => {
                    if self.hello.as_deref() != Some(hello.device_id) {
                        tracing::info!(
                            path,
                            device = hello.device_id,
                            "device introduced itself on the serial line"
                        );
                        self.hello = Some(hello.device_id.to_owned());
                    }
                }
            }
        }
        self.known().ok_or_else(|| {
            (
                Rejection::UnknownDevice,
                "no Hello yet and no device_id configured for this line".into(),
            )
        })
    }

    /// The device on the line, if known.
    fn known(&self) -> Option<&str> {
        self.configured.as_deref().or(self.hello.as_deref())
    }
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

/// Opens the port 8N1 without flow control (exclusively: a second reader would steal frames).
fn open(settings: &SerialSettings) -> Result<SerialStream, tokio_serial::Error> {
    tokio_serial::new(settings.path.to_string_lossy(), settings.baud)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .open_native_async()
}

/// What a path names: device numbers and inode, so a path re-pointed at another device (a fast
/// replug, a new pseudo-terminal) is told apart from the one that was opened.
#[cfg(unix)]
pub(super) type PathIdentity = (u64, u64, u64);
#[cfg(not(unix))]
pub(super) type PathIdentity = ();

/// The identity of what `path` names now, or `None` when it names nothing.
#[cfg(unix)]
pub(super) fn path_identity(path: &Path) -> Option<PathIdentity> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.rdev()))
}

/// The identity of what `path` names now, or `None` when it names nothing.
#[cfg(not(unix))]
pub(super) fn path_identity(path: &Path) -> Option<PathIdentity> {
    std::fs::metadata(path).ok().map(|_| ())
}

/// Waits `wait` before the next open attempt, or less if the path was missing and reappears;
/// false on shutdown.
pub(super) async fn wait_to_reopen(
    path: &Path,
    wait: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let deadline = Instant::now() + wait;
    let was_missing = path_identity(path).is_none();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        let step = (deadline - now).min(REPLUG_POLL);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(step) => {}
        }
        if was_missing && path_identity(path).is_some() {
            return true;
        }
    }
}

/// Writes queued frames to the port until the queue closes; reports the first failure.
async fn write_frames(
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
async fn ack_in_order(
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
fn frame(message: &Downlink<'_>) -> Option<Vec<u8>> {
    let mut buf = [0u8; MAX_FRAME_LEN + 2];
    let len = encode_line_frame(message, &mut buf).ok()?;
    Some(buf.get(..len)?.to_vec())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::process::{Child, Command, Stdio};

    use device_protocol::{
        CommandResult, CommandStatus, Field, Fields, Hello, Telemetry, Value, encode_frame,
    };

    use super::*;
    use crate::store::memory::MemoryEngine;
    use crate::store::writer::{StoreWriter, WriterStats};
    use crate::store::{Order, Reading, ReadingsQuery, Store};

    /// Longest any single wait of a test may take (a shared 2-core CI machine).
    const WAIT: Duration = Duration::from_secs(10);

    /// Polls `done` every 10 ms until it holds; panics with `what` after `WAIT`.
    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A socat joining two pseudo-terminals, `hub-end` and `dev-end`: a serial cable. Killed on
    /// drop, so a failing test leaves no socat behind.
    struct Socat {
        child: Child,
    }

    impl Socat {
        async fn start(dir: &Path) -> Socat {
            let end = |name: &str| {
                format!(
                    "pty,raw,echo=0,link={}",
                    dir.join(name).to_str().expect("utf-8 temp path")
                )
            };
            let child = Command::new("socat")
                .args(["-d", "-d", &end("hub-end"), &end("dev-end")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("socat is installed");
            let socat = Socat { child };
            // Both links exist and point at live pseudo-terminals (metadata follows the link).
            let (hub, dev) = (dir.join("hub-end"), dir.join("dev-end"));
            wait_for("socat's links", || {
                hub.metadata().is_ok() && dev.metadata().is_ok()
            })
            .await;
            socat
        }

        /// Ends socat like an unplug: SIGTERM, so it closes both ends and removes its links.
        fn unplug(mut self) {
            let pid = self.child.id().to_string();
            let status = Command::new("kill").args(["-TERM", &pid]).status();
            assert!(status.expect("kill runs").success());
            let _ = self.child.wait();
        }
    }

    impl Drop for Socat {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A hub-side `SerialIngest` over a real store on `hub-end`, and the socat under it.
    struct Hub {
        dir: tempfile::TempDir,
        socat: Option<Socat>,
        store: Store,
        presence: Arc<crate::live::Presence>,
        stats: Arc<IngestStats>,
        line: Arc<LineStats>,
        shutdown: CancellationToken,
        ingest: JoinHandle<()>,
        writer: JoinHandle<()>,
    }

    impl Hub {
        async fn start(device_id: Option<&str>, silence_timeout: Duration) -> Hub {
            let dir = tempfile::tempdir().expect("tempdir");
            let socat = Socat::start(dir.path()).await;
            let store = Store::open(Arc::new(MemoryEngine::new())).expect("store");
            let (submissions_tx, submissions_rx) = crate::store::writer::queue(64, 1 << 20);
            let writer = StoreWriter::new(
                store.clone(),
                64,
                Duration::from_millis(2),
                Arc::new(WriterStats::default()),
            );
            let presence = Arc::new(crate::live::Presence::new(Duration::from_secs(3600)));
            let writer = writer.publishing(crate::live::Live::new(), presence.clone());
            let writer = tokio::spawn(writer.run(submissions_rx));
            let stats = Arc::new(IngestStats::default());
            let settings = SerialSettings {
                path: dir.path().join("hub-end"),
                baud: 115_200,
                device_id: device_id.map(str::to_owned),
                silence_timeout,
            };
            let ingest = SerialIngest::new(settings, submissions_tx, stats.clone());
            let line = ingest.line_stats();
            let shutdown = CancellationToken::new();
            let ingest = tokio::spawn(ingest.run(shutdown.clone()));
            // The port flushes its input when opened: the device talks once the hub listens.
            wait_for("the hub to open its end", || {
                line.opens.load(Ordering::Relaxed) >= 1
            })
            .await;
            Hub {
                dir,
                socat: Some(socat),
                store,
                presence,
                stats,
                line,
                shutdown,
                ingest,
                writer,
            }
        }

        fn dev_end(&self) -> PathBuf {
            self.dir.path().join("dev-end")
        }

        fn opens(&self) -> u64 {
            self.line.opens.load(Ordering::Relaxed)
        }

        /// The stored readings of `device`, oldest first.
        fn readings(&self, device: &str) -> Vec<Reading> {
            let query = ReadingsQuery {
                device: device.into(),
                metric: None,
                from_ms: None,
                to_ms: None,
                order: Order::Oldest,
                limit: 10_000,
                after: None,
            };
            self.store
                .readings(&query)
                .expect("query")
                .map(|page| page.readings)
                .unwrap_or_default()
        }

        fn seqs(&self, device: &str) -> Vec<u32> {
            self.readings(device)
                .iter()
                .filter_map(|r| r.seq.device_seq())
                .collect()
        }

        /// Stops the component (it must return promptly) and the store writer after it.
        async fn stop(self) {
            self.shutdown.cancel();
            // Nothing is pending here, so well within the grace given to pending commits.
            tokio::time::timeout(SHUTDOWN_GRACE * 3, self.ingest)
                .await
                .expect("run returns promptly after shutdown")
                .expect("run does not panic");
            // The component dropped its sender, so the writer drains and stops.
            tokio::time::timeout(WAIT, self.writer)
                .await
                .expect("the store writer drains")
                .expect("writer does not panic");
            drop(self.socat);
        }
    }

    /// What the hub wrote back.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Down {
        Ack(u32),
        TimeSync(u64),
    }

    /// The device end of the cable.
    struct Device {
        port: SerialStream,
        decoder: FrameDecoder,
        received: VecDeque<Down>,
    }

    impl Device {
        fn open(path: &Path) -> Device {
            let port = tokio_serial::new(path.to_str().expect("utf-8 path"), 115_200)
                .open_native_async()
                .expect("open dev-end");
            Device {
                port,
                decoder: FrameDecoder::new(),
                received: VecDeque::new(),
            }
        }

        async fn write(&mut self, bytes: &[u8]) {
            self.port.write_all(bytes).await.expect("device write");
        }

        /// A 0x00 resync marker, then the frame, as a careful device sends.
        async fn send(&mut self, message: &Uplink<'_>) {
            let mut bytes = vec![0];
            bytes.extend_from_slice(&frame_of(message));
            self.write(&bytes).await;
        }

        async fn send_seqs(&mut self, seqs: std::ops::Range<u32>) {
            for seq in seqs {
                self.send(&telemetry(seq)).await;
            }
        }

        /// The next reply, or `None` at `deadline`.
        async fn recv(&mut self, deadline: Instant) -> Option<Down> {
            let mut buf = [0u8; 256];
            loop {
                if let Some(down) = self.received.pop_front() {
                    return Some(down);
                }
                let n = match tokio::time::timeout_at(deadline, self.port.read(&mut buf)).await {
                    Err(_) => return None,
                    Ok(read) => read.expect("device read"),
                };
                let mut input = &buf[..n];
                loop {
                    match self.decoder.feed(input) {
                        FeedResult::Consumed => break,
                        FeedResult::Dropped { reason, .. } => {
                            panic!("the hub wrote a bad frame: {reason}")
                        }
                        FeedResult::Frame { payload, remaining } => {
                            input = remaining;
                            let down = match Downlink::decode(payload).expect("a downlink") {
                                Downlink::Ack(ack) => Down::Ack(ack.seq),
                                Downlink::TimeSync(t) => Down::TimeSync(t.unix_ms),
                                other => panic!("unexpected {other:?}"),
                            };
                            self.received.push_back(down);
                        }
                    }
                }
            }
        }

        /// Reads replies until a `TimeSync`; returns its time.
        async fn expect_time_sync(&mut self) -> u64 {
            let deadline = Instant::now() + WAIT;
            loop {
                match self.recv(deadline).await {
                    Some(Down::TimeSync(ms)) => return ms,
                    Some(Down::Ack(_)) => {}
                    None => panic!("no TimeSync"),
                }
            }
        }

        /// Reads replies until `Ack(target)`, checking acks only grow and never pass `target`;
        /// `None` at `deadline`.
        async fn ack_reaching(&mut self, target: u32, deadline: Instant) -> Option<u32> {
            let mut last = None;
            loop {
                match self.recv(deadline).await? {
                    Down::Ack(seq) => {
                        assert!(seq <= target, "ack {seq} beyond the last seq sent {target}");
                        assert!(
                            last.is_none_or(|l| seq >= l),
                            "acks went back: {last:?} then {seq}"
                        );
                        last = Some(seq);
                        if seq == target {
                            return Some(seq);
                        }
                    }
                    Down::TimeSync(_) => {}
                }
            }
        }

        /// Like a device that keeps unacked readings: sends `seqs` and resends them until the
        /// hub acks the last one.
        async fn send_until_acked(&mut self, seqs: std::ops::Range<u32>) {
            let target = seqs.end - 1;
            let deadline = Instant::now() + WAIT;
            loop {
                self.send_seqs(seqs.clone()).await;
                let attempt = (Instant::now() + Duration::from_millis(700)).min(deadline);
                if self.ack_reaching(target, attempt).await.is_some() {
                    return;
                }
                assert!(Instant::now() < deadline, "seqs {seqs:?} never acked");
            }
        }
    }

    fn frame_of(message: &Uplink<'_>) -> Vec<u8> {
        let mut buf = [0u8; MAX_FRAME_LEN + 1];
        let len = encode_frame(message, &mut buf).expect("encode");
        buf[..len].to_vec()
    }

    fn hello<'a>(id: &'a str, firmware: &'a str) -> Uplink<'a> {
        Uplink::Hello(Hello {
            device_id: id,
            firmware,
            protocol_version: 1,
            boot: None,
        })
    }

    fn telemetry(seq: u32) -> Uplink<'static> {
        let mut readings = Fields::new();
        readings
            .push(Field {
                name: "v",
                value: Value::I64(i64::from(seq)),
            })
            .expect("one field fits");
        Uplink::Telemetry(Telemetry {
            seq,
            timestamp_ms: None,
            readings,
            boot: None,
        })
    }

    /// xorshift64: reproducible noise without a dependency.
    fn noise(state: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                (*state >> 24) as u8
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn hello_then_readings_are_stored_once_and_acked() {
        let hub = Hub::start(None, Duration::from_secs(30)).await;
        let mut device = Device::open(&hub.dev_end());
        device.send(&hello("line-1", "fw-1.2")).await;
        let synced = device.expect_time_sync().await;
        assert!(
            synced.abs_diff(now_ms()) < 60_000,
            "TimeSync carries the hub's clock"
        );

        const N: u32 = 40;
        device.send_seqs(0..N).await;
        let deadline = Instant::now() + WAIT;
        assert_eq!(device.ack_reaching(N - 1, deadline).await, Some(N - 1));
        assert_eq!(hub.seqs("line-1"), (0..N).collect::<Vec<_>>());
        let stored = hub.readings("line-1");
        assert!(stored.iter().all(|r| r.metrics
            == vec![(
                "v".into(),
                device_protocol::OwnedValue::I64(i64::from(r.seq.device_seq().unwrap_or(u32::MAX)))
            )]));
        let record = hub
            .store
            .device("line-1")
            .expect("query")
            .expect("known")
            .record;
        assert_eq!(record.firmware.as_deref(), Some("fw-1.2"));
        assert_eq!(record.transport, Transport::Serial);

        // Retransmissions (the device missed acks): nothing new, and acked again.
        device.send_seqs(10..13).await;
        let deadline = Instant::now() + WAIT;
        assert_eq!(device.ack_reaching(N - 1, deadline).await, Some(N - 1));
        assert_eq!(hub.seqs("line-1"), (0..N).collect::<Vec<_>>());
        wait_for("the duplicates to be counted", || {
            hub.store
                .device("line-1")
                .ok()
                .flatten()
                .is_some_and(|d| d.record.duplicates == 3)
        })
        .await;
        assert_eq!(
            hub.stats.accepted.load(Ordering::Relaxed),
            u64::from(1 + N + 3)
        );
        assert_eq!(hub.opens(), 1, "a healthy line is opened once");
        hub.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn noise_and_corrupt_frames_are_skipped_and_valid_frames_kept() {
        let hub = Hub::start(None, Duration::from_secs(30)).await;
        let mut device = Device::open(&hub.dev_end());
        device.send(&hello("noisy-1", "fw")).await;
        device.expect_time_sync().await;

        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        for seq in 0..20 {
            let len = 1 + (seq as usize * 37) % 300;
            let garbage = noise(&mut rng, len);
            device.write(&garbage).await;
            if seq % 4 == 1 {
                // A frame with one bit flipped: its CRC fails. Its seq is never sent intact.
                let mut bad = frame_of(&telemetry(1000 + seq));
                let at = bad.len() / 2;
                bad[at] ^= 0x10;
                device.write(&[0]).await;
                device.write(&bad).await;
            }
            if seq == 7 {
                // Longer than any frame: dropped as too long, without costing the next frame.
                let run: Vec<u8> = noise(&mut rng, 3000).into_iter().map(|b| b | 1).collect();
                device.write(&run).await;
            }
            device.send(&telemetry(seq)).await;
        }
        let deadline = Instant::now() + WAIT;
        assert_eq!(device.ack_reaching(19, deadline).await, Some(19));
        assert_eq!(hub.seqs("noisy-1"), (0..20).collect::<Vec<_>>());
        assert!(
            hub.stats.rejected(Rejection::BadFrame) >= 5,
            "corrupt frames counted"
        );
        hub.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_line_is_reopened_after_an_unplug_and_a_replug() {
        let mut hub = Hub::start(None, Duration::from_secs(30)).await;
        let mut device = Device::open(&hub.dev_end());
        device.send(&hello("plug-1", "fw")).await;
        device.expect_time_sync().await;
        device.send_until_acked(0..5).await;
        assert!(hub.presence.is_online("plug-1"));

        // Unplug: the cable goes away with both its ends and their links, and the device is
        // offline at once (not only after devices.offline_after, an hour here).
        hub.socat.take().expect("socat").unplug();
        drop(device);
        let hub_end = hub.dir.path().join("hub-end");
        wait_for("the links to go", || {
            std::fs::symlink_metadata(&hub_end).is_err()
        })
        .await;
        wait_for("the device to be offline", || {
            !hub.presence.is_online("plug-1")
        })
        .await;

        // Replug: same paths, new pseudo-terminals. No Hello: the line keeps its device.
        hub.socat = Some(Socat::start(hub.dir.path()).await);
        wait_for("the hub to reopen", || hub.opens() >= 2).await;
        let mut device = Device::open(&hub.dev_end());
        device.send_until_acked(5..12).await;
        assert_eq!(hub.seqs("plug-1"), (0..12).collect::<Vec<_>>());
        assert!(
            hub.presence.is_online("plug-1"),
            "back online with its readings"
        );
        assert_eq!(hub.stats.rejected(Rejection::UnknownDevice), 0);
        hub.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_silent_line_is_reopened_by_the_watchdog() {
        let hub = Hub::start(None, Duration::from_millis(300)).await;
        let mut device = Device::open(&hub.dev_end());
        device.send(&hello("quiet-1", "fw")).await;
        device.expect_time_sync().await;
        device.send_until_acked(0..3).await;

        // The device says nothing: the watchdog closes and reopens the port.
        wait_for("the watchdog to reopen the port", || {
            hub.line.silences.load(Ordering::Relaxed) >= 1 && hub.opens() >= 2
        })
        .await;
        device.send_until_acked(3..8).await;
        assert_eq!(hub.seqs("quiet-1"), (0..8).collect::<Vec<_>>());
        hub.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn without_hello_telemetry_needs_a_configured_id() {
        // No Hello and no configured id: nobody to store it under.
        let hub = Hub::start(None, Duration::from_secs(30)).await;
        let mut device = Device::open(&hub.dev_end());
        device.send_seqs(0..3).await;
        let result = Uplink::CommandResult(CommandResult {
            command_id: 1,
            status: CommandStatus::Ok,
            payload: Fields::new(),
        });
        device.send(&result).await;
        // A command result from an unknown device is skipped the same way.
        wait_for("the rejections", || {
            hub.stats.rejected(Rejection::UnknownDevice) == 4
        })
        .await;
        assert_eq!(hub.store.device_count().expect("count"), 0);
        assert_eq!(hub.stats.accepted.load(Ordering::Relaxed), 0);
        hub.stop().await;

        // A configured id: stored under it; a Hello naming another id only updates its firmware.
        let hub = Hub::start(Some("fixed-1"), Duration::from_secs(30)).await;
        let mut device = Device::open(&hub.dev_end());
        device.send_seqs(0..3).await;
        let deadline = Instant::now() + WAIT;
        assert_eq!(device.ack_reaching(2, deadline).await, Some(2));
        assert_eq!(hub.seqs("fixed-1"), vec![0, 1, 2]);
        device.send(&hello("other-9", "fw-9")).await;
        device.expect_time_sync().await;
        let record = hub
            .store
            .device("fixed-1")
            .expect("query")
            .expect("known")
            .record;
        assert_eq!(record.firmware.as_deref(), Some("fw-9"));
        assert!(hub.store.device("other-9").expect("query").is_none());
        hub.stop().await;
    }
}
