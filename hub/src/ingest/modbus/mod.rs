//! Modbus polling: one task per bus (`[[modbus]]`: an RS-485 line or a TCP endpoint) that polls
//! the devices on it and writes to them on command.
//!
//! Job: keep the bus open for as long as the hub runs; poll each device at its interval, reading
//! its register map in as few requests as the protocol allows ([`points::plan`]); hand each poll
//! to the store writer as one reading of the device (transport `modbus`, numbered by the hub);
//! carry out writes ([`command`]) and record their results.
//!
//! Inputs: the bus's configuration; writes from [`ModbusDownlink`]. Outputs: [`Submission`]s to
//! the store writer (a reading per poll, a device status when a device stops answering, a
//! command result per write); counters in [`ModbusStats`] and the transport's [`IngestStats`].
//!
//! Invariants:
//! - one request at a time on a bus (a line is half duplex, and a TCP gateway in front of one is
//!   too), writes first, then the device whose poll is due first;
//! - a device that fails a poll (no answer, an exception, a bad answer) is counted by reason and
//!   tried again after a back-off that doubles from [`RETRY_MIN`] to [`RETRY_MAX`], without the
//!   rest of its map: a dead unit costs the line one timeout per back-off, not one per request
//!   per interval, so the others keep their schedule. At its [`OFFLINE_AFTER`]th failed poll in a
//!   row it is marked offline (a device event); its next good poll marks it online again;
//! - a port or socket that fails, or a line whose path vanishes (an adapter unplugged), closes
//!   the bus: every device on it is marked offline, and the bus is opened again with a jittered
//!   back-off (100 ms doubling to 5 s), at once when a vanished path comes back;
//! - polls keep a fixed grid (start + n * interval): a late poll does not shift the later ones,
//!   and a missed slot is skipped, not made up. How late each started is measured;
//! - a reading is handed over without waiting for its commit (nothing can resend it, so there is
//!   nothing to acknowledge); the writer's bounded queue holds the poller back when it is full.

mod command;
mod link;
pub mod points;
mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use command::{ModbusDownlink, parse_write};
pub use stats::{LATENESS_SECONDS, ModbusMetrics, ModbusStats, Reason};

use self::command::Write;
use self::link::{Failure, Link, Values};
use self::points::ReadRequest;
use super::IngestStats;
use super::serial::{path_identity, wait_to_reopen};
use crate::clock::{jitter, now_ms};
use crate::config::{ModbusBusConfig, ModbusDeviceConfig, ModbusTransport};
use crate::store::writer::{Submission, SubmissionSender};
use crate::store::{CommandResultIn, DeviceStatus, Ingest, NewReading, Transport, Wire};
use crate::values::MetricValue;

/// First wait before a device that failed a poll is polled again; doubled at each failure.
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait between polls of a device that keeps failing.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// Failed polls in a row that make a device offline: one lost frame on a noisy line does not.
pub const OFFLINE_AFTER: u32 = 2;
/// First wait before a bus that could not be opened is tried again; doubled after each failure.
const REOPEN_MIN: Duration = Duration::from_millis(100);
/// Longest wait between attempts to open a bus.
const REOPEN_MAX: Duration = Duration::from_secs(5);
/// How often an open line checks that its path still names the adapter it opened.
const PATH_CHECK: Duration = Duration::from_millis(500);

/// The poller of one bus.
pub struct ModbusBus {
    config: ModbusBusConfig,
    submissions_tx: SubmissionSender,
    ingest_stats: Arc<IngestStats>,
    stats: Arc<ModbusStats>,
    downlink: ModbusDownlink,
    writes_rx: mpsc::Receiver<Write>,
    connected: Arc<AtomicBool>,
}

/// A device on the bus and where its polling stands.
struct Device {
    config: ModbusDeviceConfig,
    requests: Vec<ReadRequest>,
    /// When its next poll is due (on its grid, or after a back-off).
    due: Instant,
    /// Failed polls in a row.
    failures: u32,
    /// Marked offline (and not yet polled successfully since).
    offline: bool,
}

/// How a session on an open bus ended.
enum End {
    /// Shutdown, or the store writer is gone.
    Stop,
    /// The link failed (why); open it again.
    Lost(String),
    /// A TCP connection a timeout left unusable; connect again at once.
    Spent,
}

impl ModbusBus {
    /// The poller of `config` (already validated), submitting to `submissions_tx`, counting
    /// readings in `ingest_stats` (shared by every bus) and the bus's own in [`Self::stats`].
    pub fn new(
        config: ModbusBusConfig,
        submissions_tx: SubmissionSender,
        ingest_stats: Arc<IngestStats>,
    ) -> Self {
        let connected = Arc::new(AtomicBool::new(false));
        let (downlink, writes_rx) = ModbusDownlink::new(&config, connected.clone());
        ModbusBus {
            stats: Arc::new(ModbusStats::new(&config.name)),
            config,
            submissions_tx,
            ingest_stats,
            downlink,
            writes_rx,
            connected,
        }
    }

    /// The handle that sends writes to this bus's devices.
    pub fn downlink(&self) -> ModbusDownlink {
        self.downlink.clone()
    }

    /// The bus's counters, for `/metrics` and tests.
    pub fn stats(&self) -> Arc<ModbusStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown`: opens the bus, polls its devices, opens it again when it fails.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let start = Instant::now();
        let count = self.config.devices.len().max(1) as u32;
        // Spread the first polls over each interval, so devices of one interval do not all
        // queue up on the line at once.
        let mut devices: Vec<Device> = self
            .config
            .devices
            .iter()
            .enumerate()
            .map(|(i, config)| Device {
                requests: points::plan(&config.points),
                due: start + config.interval.0 * i as u32 / count,
                config: config.clone(),
                failures: 0,
                offline: false,
            })
            .collect();
        let bus = self.config.name.clone();
        let mut backoff = REOPEN_MIN;
        let mut in_outage = false;
        let mut opened_before = false;
        while !shutdown.is_cancelled() {
            let opened = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                opened = Link::open(&self.config) => opened,
            };
            let link = match opened {
                Ok(link) => link,
                Err(e) => {
                    self.stats.count_error(Reason::Link);
                    let wait = jitter(backoff);
                    if in_outage {
                        tracing::debug!(bus, error = %e, "modbus bus still unavailable");
                    } else {
                        tracing::warn!(bus, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot open the modbus bus; retrying");
                        in_outage = true;
                    }
                    self.all_offline(&mut devices).await;
                    backoff = (backoff * 2).min(REOPEN_MAX);
                    if !self.wait_to_reopen(wait, &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            if in_outage || !opened_before {
                tracing::info!(bus, devices = devices.len(), "modbus bus open");
            } else {
                tracing::debug!(bus, "modbus connection opened again");
            }
            opened_before = true;
            in_outage = false;
            let polls_before = self.stats.polls.load(Ordering::Relaxed);
            self.connected.store(true, Ordering::Relaxed);
            let end = self.session(link, &mut devices, &shutdown).await;
            self.connected.store(false, Ordering::Relaxed);
            // A bus that answered was healthy: its next failure starts the back-off afresh.
            if self.stats.polls.load(Ordering::Relaxed) != polls_before {
                backoff = REOPEN_MIN;
            }
            match end {
                End::Stop => break,
                // Reconnected at once; queued writes wait for the new connection.
                End::Spent => {}
                End::Lost(why) => {
                    self.stats.count_error(Reason::Link);
                    tracing::warn!(bus, error = %why, "modbus bus lost; opening it again");
                    in_outage = true;
                    self.refuse_queued_writes().await;
                    self.all_offline(&mut devices).await;
                    let wait = jitter(backoff);
                    backoff = (backoff * 2).min(REOPEN_MAX);
                    if !self.wait_to_reopen(wait, &shutdown).await {
                        break;
                    }
                }
            }
        }
        tracing::debug!(bus, "modbus bus stopped");
    }

    /// Polls and writes on one opening of the bus until it fails or shutdown.
    async fn session(
        &mut self,
        mut link: Link,
        devices: &mut [Device],
        shutdown: &CancellationToken,
    ) -> End {
        let line_path = match self.config.transport {
            ModbusTransport::Rtu => self.config.path.clone(),
            ModbusTransport::Tcp => None,
        };
        let identity_at_open = line_path.as_deref().and_then(path_identity);
        let mut path_check = tokio::time::interval_at(Instant::now() + PATH_CHECK, PATH_CHECK);
        path_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let Some(next) = (0..devices.len()).min_by_key(|&i| devices[i].due) else {
                shutdown.cancelled().await;
                return End::Stop;
            };
            let due = devices[next].due;
            // Biased: a write waits for no poll, and shutdown for nothing.
            let outcome = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Stop,
                Some(write) = self.writes_rx.recv() => {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return End::Stop,
                        outcome = self.write(&mut link, devices, write) => outcome,
                    }
                }
                _ = path_check.tick(), if line_path.is_some() => {
                    if line_path.as_deref().and_then(path_identity) != identity_at_open {
                        link.close().await;
                        return End::Lost("the line's path vanished or names another adapter".into());
                    }
                    Ok(())
                }
                _ = tokio::time::sleep_until(due) => {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return End::Stop,
                        outcome = self.poll(&mut link, &mut devices[next]) => outcome,
                    }
                }
            };
            match outcome {
                Err(Stopping) => return End::Stop,
                Ok(()) if link.is_spent() => {
                    let lost = link.lost().map(str::to_owned);
                    link.close().await;
                    return match lost {
                        Some(why) => End::Lost(why),
                        None => End::Spent,
                    };
                }
                Ok(()) => {}
            }
        }
    }

    /// Polls one device: reads its map, submits the reading, or counts the failure and backs off.
    async fn poll(&mut self, link: &mut Link, device: &mut Device) -> Result<(), Stopping> {
        let started = Instant::now();
        self.stats
            .lateness
            .observe(started.saturating_duration_since(device.due).as_secs_f64());
        let received_ms = now_ms();
        let unit = device.config.unit;
        let points = &device.config.points;
        let mut metrics = Vec::with_capacity(points.len());
        for request in &device.requests {
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let values = match link
                .read(unit, request.table, request.start, request.count)
                .await
            {
                Ok(values) => values,
                Err(failure) => return self.failed(device, &failure).await,
            };
            for &i in &request.points {
                let point = &points[i];
                let from = usize::from(point.address.saturating_sub(request.start));
                let span = usize::from(point.span());
                let value = match &values {
                    Values::Registers(r) => r
                        .get(from..from + span)
                        .and_then(|r| points::decode(point, r)),
                    Values::Bits(b) => b
                        .get(from)
                        .map(|bit| device_protocol::OwnedValue::Bool(*bit)),
                };
                // A float that is NaN or infinite is no value: the reading goes without it.
                if let Some(value) = value {
                    metrics.push((point.name.clone(), value));
                }
            }
        }
        let interval = device.config.interval.0;
        while device.due <= started {
            device.due += interval;
        }
        if device.failures > 0 || device.offline {
            tracing::info!(bus = %self.config.name, device = %device.config.id, "modbus device answers again");
        }
        device.failures = 0;
        device.offline = false;
        self.stats.polls.fetch_add(1, Ordering::Relaxed);
        self.stats
            .points
            .fetch_add(metrics.len() as u64, Ordering::Relaxed);
        let reading = NewReading {
            device: device.config.id.clone(),
            transport: Transport::Modbus,
            wire: Wire::Json,
            seq: None,
            boot: None,
            timestamp_ms: None,
            received_ms,
            metrics,
        };
        self.submit(Ingest::Reading(reading)).await?;
        self.ingest_stats.count_accepted();
        Ok(())
    }

    /// A poll that failed: counted, logged once per outage of the device, retried after a
    /// back-off; the device is marked offline at its [`OFFLINE_AFTER`]th failure in a row.
    async fn failed(&mut self, device: &mut Device, failure: &Failure) -> Result<(), Stopping> {
        let reason = failure.reason();
        self.stats.count_error(reason);
        device.failures = device.failures.saturating_add(1);
        let retry = jitter(
            RETRY_MIN
                .saturating_mul(1 << device.failures.saturating_sub(1).min(16))
                .min(RETRY_MAX),
        );
        device.due = Instant::now() + retry;
        let (bus, id) = (&self.config.name, &device.config.id);
        if device.failures == 1 {
            tracing::warn!(bus, device = %id, unit = device.config.unit, reason = reason.name(), error = %failure, retry_in_ms = retry.as_millis() as u64, "modbus device failed a poll; retrying with back-off");
        } else {
            tracing::debug!(bus, device = %id, reason = reason.name(), error = %failure, failures = device.failures, "modbus device failed again");
        }
        if device.failures >= OFFLINE_AFTER && !device.offline && reason != Reason::Link {
            device.offline = true;
            self.submit(offline(id, reason.name())).await?;
        }
        Ok(())
    }

    /// Carries out a write: writes, reads the point back, and records the command's result.
    async fn write(
        &mut self,
        link: &mut Link,
        devices: &[Device],
        write: Write,
    ) -> Result<(), Stopping> {
        let Some((device, point)) = devices
            .iter()
            .find(|d| d.config.id == write.device)
            .and_then(|d| Some((d, d.config.points.get(write.point)?)))
        else {
            return Ok(());
        };
        let unit = device.config.unit;
        self.stats.requests.fetch_add(2, Ordering::Relaxed);
        let done = match link.write(unit, point.address, &write.encoded).await {
            Ok(()) => link
                .read(unit, point.table, point.address, point.span())
                .await
                .map_err(|f| ("the write was taken but reading it back failed", f)),
            Err(f) => Err(("the write failed", f)),
        };
        let (ok, result, error) = match done {
            Ok(values) => {
                let value = match &values {
                    Values::Registers(r) => points::decode(point, r),
                    Values::Bits(b) => b.first().map(|bit| device_protocol::OwnedValue::Bool(*bit)),
                };
                let result = json!({"point": point.name, "value": value.map(MetricValue)});
                (true, Some(result.to_string()), None)
            }
            Err((what, failure)) => {
                self.stats.count_error(failure.reason());
                (false, None, Some(format!("{what}: {failure}")))
            }
        };
        tracing::info!(bus = %self.config.name, device = %device.config.id, point = %point.name, ok, "modbus write");
        let answer = CommandResultIn {
            device: device.config.id.clone(),
            transport: Transport::Modbus,
            id: write.command_id,
            ok,
            result,
            error,
            error_code: None,
            received_ms: now_ms(),
        };
        self.submit(Ingest::CommandResult(answer)).await
    }

    /// Answers writes queued for an opening of the bus that is gone: they fail rather than
    /// run late, when the one who asked may no longer want them.
    async fn refuse_queued_writes(&mut self) {
        while let Ok(write) = self.writes_rx.try_recv() {
            let answer = CommandResultIn {
                device: write.device,
                transport: Transport::Modbus,
                id: write.command_id,
                ok: false,
                result: None,
                error: Some("the modbus bus was lost before the write was sent".into()),
                error_code: None,
                received_ms: now_ms(),
            };
            let _ = self.submissions_tx.try_send(Submission {
                items: vec![Ingest::CommandResult(answer)],
                done_tx: None,
            });
        }
    }

    /// Marks every device on the bus offline (the bus is down).
    async fn all_offline(&mut self, devices: &mut [Device]) {
        for device in devices.iter_mut().filter(|d| !d.offline) {
            device.offline = true;
            // Without waiting: a full queue drops the notice, and the device is then found
            // offline when its silence outlasts devices.offline_after.
            let _ = self.submissions_tx.try_send(Submission {
                items: vec![offline(&device.config.id, Reason::Link.name())],
                done_tx: None,
            });
        }
    }

    /// Hands one item to the store writer.
    async fn submit(&self, item: Ingest) -> Result<(), Stopping> {
        let submission = Submission {
            items: vec![item],
            done_tx: None,
        };
        self.submissions_tx
            .send(submission)
            .await
            .map_err(|_| Stopping)
    }

    /// Waits before the next attempt to open the bus (a line: less, if its vanished path comes
    /// back); false on shutdown.
    async fn wait_to_reopen(&self, wait: Duration, shutdown: &CancellationToken) -> bool {
        match (&self.config.transport, &self.config.path) {
            (ModbusTransport::Rtu, Some(path)) => wait_to_reopen(path, wait, shutdown).await,
            _ => tokio::select! {
                biased;
                _ = shutdown.cancelled() => false,
                _ = tokio::time::sleep(wait) => true,
            },
        }
    }
}

/// The store writer is gone: the hub is stopping.
struct Stopping;

/// A device status saying `device` stopped answering, and why.
fn offline(device: &str, reason: &'static str) -> Ingest {
    Ingest::Status(DeviceStatus {
        device: device.to_owned(),
        transport: Transport::Modbus,
        online: false,
        reason,
        received_ms: now_ms(),
    })
}
