//! One simulated device that counts a reading as delivered when the hub's ack covers it
//! (`--acks hub`): its values, its outbox, its link to the hub, and its retransmissions.
//!
//! # The loop
//!
//! A single task per device waits on four things, none of which it ever cancels half-way:
//! the production ticker, the next event of its link, the time to reconnect, and a housekeeping
//! tick (stop requests, probe and ack timeouts, `--disconnect-every`, persisting the ack).
//!
//! - Producing: each tick makes `--burst` readings; each is appended to the outbox *before* it is
//!   sent. A full outbox stops production (a stall, counted) until acks free space.
//! - Connecting: on every new connection the device first *probes*: a binary or serial device sends
//!   its `Hello` and waits for the hub's `TimeSync`; a JSON device sends only its oldest unacked
//!   reading (or, with none, its next one) and waits for an ack. Only then does it send its
//!   backlog, oldest first (as far as the window goes), and stream new readings. This makes sure the first reading the hub
//!   sees on a connection is the oldest one: the hub starts a new device's run at the first seq
//!   it sees, and a broker drops what arrives before the hub has subscribed. A probe is repeated
//!   after each ack timeout; after three unanswered probes the device streams anyway.
//! - The window: only the `--window` oldest unacked readings are ever on the wire; a reading
//!   beyond them waits until acks move the window. So the hub's stored seqs never run more than
//!   the window ahead of the device's ack, and a retransmission is never so far behind that the
//!   hub (whose duplicate detection spans 1024 seqs) would take it for a restarted counter and
//!   store it again. It also bounds the duplicates one retransmission can cause.
//! - Acks: the hub's cumulative ack removes every reading up to it from the outbox and moves the
//!   window. When the ack has not moved for `--ack-timeout` while readings are unacked, the
//!   window is resent, oldest first (see [`crate::retransmit`]). A binary or serial device
//!   first probes again with its `Hello`: a hub restarted behind a serial line that stayed open
//!   has forgotten which device is on it, and rejects telemetry until it hears a `Hello`.
//!   Only acks of the device's boot count (`--boot`; an ack without one is from an older hub).
//!   A reading the hub rejects leaves the outbox at once; one the hub gave up waiting for is
//!   sent once more (the ack that follows passes it). Both are counted, and fail the run.
//! - Stopping: after `--count` (seqs `0..count` in all, an outbox's earlier runs included), at
//!   `--duration` or on Ctrl-C, production stops and the device waits for its last ack, at most
//!   `--drain-timeout`. An idle device (`--idle`) produces nothing and runs until `--duration` or
//!   Ctrl-C.
//! - Commands: whatever the phase, a command from the hub is answered through
//!   [`crate::commands`] on the current link; a `sleep` is a deadline the loop also waits on, so
//!   telemetry goes on meanwhile. An answer that finds no link is sent after the next connect.
//!
//! Here: the plan, the loop, production, housekeeping and the end of a run; `connection` holds
//! what the device does on its link.

mod connection;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::commands::{Commands, Encoding};
use crate::faults::Noise;
use crate::link::{Endpoint, Link, LinkEvent};
use crate::outbox::Outbox;
pub use crate::report::DeviceReport;
use crate::retransmit::Retransmit;
use crate::sensors::{Sensors, Timestamps, hello_bytes};

/// First wait before reconnecting; doubled up to [`RECONNECT_MAX`] with jitter.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Wait before reopening after `--disconnect-every` dropped the link.
const REOPEN_AFTER_FAULT: Duration = Duration::from_millis(50);
/// Unanswered probes before streaming anyway.
const PROBE_TRIES: u32 = 3;
/// How often the ack file is written, at most.
const PERSIST_EVERY: Duration = Duration::from_millis(250);

/// The stop requests of the whole simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// Keep producing.
    Run,
    /// Stop producing and wait for the acks (`--duration`, first Ctrl-C).
    Finish,
    /// Give up at once (second Ctrl-C).
    Abort,
}

/// Where a device keeps its outbox.
#[derive(Debug, Clone)]
pub struct OutboxPlan {
    /// `--outbox DIR`, or in memory.
    pub dir: Option<PathBuf>,
    pub max: usize,
    pub fsync: bool,
}

/// What one device does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub endpoint: Endpoint,
    /// Time between bursts.
    pub interval: Duration,
    /// Readings per tick.
    pub burst: u32,
    /// Most readings sent beyond the oldest unacked one (the send window).
    pub window: usize,
    /// Produce seqs up to `count - 1`, then stop (0: no limit).
    pub count: u64,
    /// Produce nothing; answer commands until stopped (`--idle`, `--rate 0`).
    pub idle: bool,
    /// The device timestamps of the readings (now, or spread over the past with `--backfill`).
    pub timestamps: Timestamps,
    pub ack_timeout: Duration,
    pub drain_timeout: Duration,
    pub disconnect_every: Option<Duration>,
    /// Serial line noise probability per frame.
    pub noise: f64,
    pub seed: u64,
    /// The boot number its readings count in (`--boot`; none: its seqs never start again).
    pub boot: Option<u32>,
    pub outbox: OutboxPlan,
    pub stop: watch::Receiver<Stop>,
}

/// Runs the device until it has stopped producing and every reading is acked, or it gives up.
pub async fn run(plan: Plan) -> DeviceReport {
    let mut report = DeviceReport {
        id: plan.id.clone(),
        ..Default::default()
    };
    let device = match Device::new(&plan, &mut report) {
        Ok(device) => device,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return report;
        }
    };
    if let Err(e) = device.run().await {
        report.error = Some(format!("{e:#}"));
    }
    report
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No link; open one at `retry_at`.
    Down { retry_at: Instant },
    /// A link is opening (MQTT: waiting for the ConnAck).
    Connecting,
    /// Up: the probe was sent at `sent_at` (`None`: a JSON device with nothing to send yet).
    Probing {
        sent_at: Option<Instant>,
        tries: u32,
    },
    /// Up and answered: everything is sent as it is produced.
    Streaming,
}

struct Device<'a> {
    plan: &'a Plan,
    report: &'a mut DeviceReport,
    outbox: Outbox,
    sensors: Sensors,
    noise: Noise,
    retransmit: Retransmit,
    link: Option<Link>,
    phase: Phase,
    /// Index in the outbox of the first reading of the window not sent yet in this round.
    next_unsent: usize,
    /// Probing again after an ack timeout (not after a new connection).
    reprobing: bool,
    backoff: Duration,
    /// Failed connection attempts in a row (for quieter logs).
    failures: u32,
    producing: bool,
    drain_deadline: Option<Instant>,
    stalled_since: Option<Instant>,
    next_disconnect: Option<Instant>,
    last_persist: Instant,
    hello: Vec<u8>,
    jitter: rand::rngs::SmallRng,
    commands: Commands,
    /// Answers that found no link, sent after the next connect (at most
    /// [`crate::commands::MEMORY`]).
    undelivered: VecDeque<Vec<u8>>,
}

impl<'a> Device<'a> {
    fn new(plan: &'a Plan, report: &'a mut DeviceReport) -> anyhow::Result<Self> {
        use rand::SeedableRng;
        let now = Instant::now();
        let outbox = match &plan.outbox.dir {
            Some(dir) => {
                let (outbox, loaded) =
                    Outbox::open(dir, &plan.id, plan.outbox.max, plan.outbox.fsync)
                        .with_context(|| format!("{}: opening its outbox", plan.id))?;
                if loaded.corrupt > 0 || loaded.torn_bytes > 0 {
                    eprintln!(
                        "firmware-sim: {}: outbox: skipped {} corrupt record(s) and {} torn byte(s)",
                        plan.id, loaded.corrupt, loaded.torn_bytes
                    );
                }
                report.loaded = loaded.unacked as u64;
                outbox
            }
            None => Outbox::in_memory(plan.outbox.max),
        };
        let producing = !plan.idle && (plan.count == 0 || outbox.next_seq() < plan.count);
        if !producing && !plan.idle && report.loaded == 0 {
            eprintln!(
                "firmware-sim: {}: its outbox is already at seq {} (--count {}): nothing to produce",
                plan.id,
                outbox.next_seq(),
                plan.count
            );
        }
        Ok(Device {
            plan,
            outbox,
            sensors: Sensors::new(plan.seed).with_boot(plan.boot),
            noise: Noise::new(plan.noise, plan.seed ^ 0x6e6f_6973),
            retransmit: Retransmit::new(plan.ack_timeout, now),
            link: None,
            phase: Phase::Down { retry_at: now },
            next_unsent: 0,
            reprobing: false,
            backoff: RECONNECT_MIN,
            failures: 0,
            producing,
            drain_deadline: (!producing && !plan.idle).then(|| now + plan.drain_timeout),
            stalled_since: None,
            next_disconnect: plan.disconnect_every.map(|every| now + every),
            last_persist: now,
            hello: hello_bytes(&plan.id, plan.boot)?,
            jitter: rand::rngs::SmallRng::seed_from_u64(plan.seed ^ 0x6a69_7474),
            commands: Commands::new(encoding(&plan.endpoint)),
            undelivered: VecDeque::new(),
            report,
        })
    }

    async fn run(mut self) -> anyhow::Result<()> {
        let burst_every = self.plan.interval.max(Duration::from_micros(1));
        let mut ticker = tokio::time::interval(burst_every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let housekeeping_every =
            (self.plan.ack_timeout / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
        let mut housekeeping = tokio::time::interval(housekeeping_every);
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);

        let result = loop {
            let idling = self.plan.idle && *self.plan.stop.borrow() == Stop::Run;
            if !self.producing && self.outbox.is_empty() && !idling {
                break Ok(());
            }
            if *self.plan.stop.borrow() == Stop::Abort
                || self.drain_deadline.is_some_and(|d| Instant::now() >= d)
            {
                break Ok(());
            }
            let retry_at = match self.phase {
                Phase::Down { retry_at } => Some(retry_at),
                _ => None,
            };
            let wake_at = self.commands.next_wake();
            let outcome = tokio::select! {
                _ = ticker.tick(), if self.producing => self.produce().await,
                event = next_event(&mut self.link), if self.link.is_some() => {
                    self.on_event(event).await
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now).into()),
                    if retry_at.is_some() => {
                    self.connect();
                    Ok(())
                }
                _ = tokio::time::sleep_until(wake_at.unwrap_or_else(Instant::now).into()),
                    if wake_at.is_some() => {
                    for reply in self.commands.wake(Instant::now()) {
                        self.answer(reply).await;
                    }
                    Ok(())
                }
                _ = housekeeping.tick() => self.housekeeping().await,
            };
            if let Err(e) = outcome {
                break Err(e);
            }
        };
        self.finish().await;
        result
    }

    /// Makes one burst of readings.
    async fn produce(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        if *self.plan.stop.borrow() != Stop::Run {
            self.stop_producing(now);
            return Ok(());
        }
        for _ in 0..self.plan.burst {
            let next = self.outbox.next_seq();
            if (self.plan.count > 0 && next >= self.plan.count) || next > u64::from(u32::MAX) {
                break;
            }
            if self.outbox.is_full() {
                if self.stalled_since.is_none() {
                    self.stalled_since = Some(now);
                    self.report.stalls += 1;
                }
                break;
            }
            self.end_stall(now);
            let seq = next as u32;
            let was_empty = self.outbox.is_empty();
            let message = self.sensors.reading(seq, self.plan.timestamps.at(next));
            self.outbox
                .append(seq, message)
                .with_context(|| format!("{}: writing its outbox", self.plan.id))?;
            self.report.produced += 1;
            if was_empty {
                self.retransmit.restart(now);
            }
            match self.phase {
                Phase::Streaming => self.pump().await,
                Phase::Probing {
                    sent_at: None,
                    tries,
                } => {
                    // A JSON device with nothing to probe with: its first new reading is the probe.
                    self.phase = Phase::Probing {
                        sent_at: Some(now),
                        tries: tries + 1,
                    };
                    self.send_at(0).await;
                    self.next_unsent = 1;
                }
                _ => {}
            }
        }
        let next = self.outbox.next_seq();
        if (self.plan.count > 0 && next >= self.plan.count) || next > u64::from(u32::MAX) {
            self.stop_producing(now);
        }
        Ok(())
    }

    fn stop_producing(&mut self, now: Instant) {
        if self.producing {
            self.producing = false;
            self.drain_deadline = Some(now + self.plan.drain_timeout);
            self.end_stall(now);
        }
    }

    fn end_stall(&mut self, now: Instant) {
        if let Some(since) = self.stalled_since.take() {
            self.report.stalled_seconds += now.duration_since(since).as_secs_f64();
        }
    }

    async fn housekeeping(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        if self.producing && *self.plan.stop.borrow() != Stop::Run {
            self.stop_producing(now);
        }
        if self.plan.idle && self.drain_deadline.is_none() && *self.plan.stop.borrow() != Stop::Run
        {
            // Stopped: what a loaded outbox still holds gets the usual drain time.
            self.drain_deadline = Some(now + self.plan.drain_timeout);
        }
        if now.duration_since(self.last_persist) >= PERSIST_EVERY {
            self.last_persist = now;
            self.outbox
                .persist_ack()
                .with_context(|| format!("{}: writing its ack file", self.plan.id))?;
        }
        match self.phase {
            Phase::Probing {
                sent_at: Some(sent_at),
                tries,
            } if now.duration_since(sent_at) >= self.plan.ack_timeout => {
                self.report.probe_timeouts += 1;
                if tries >= PROBE_TRIES {
                    eprintln!(
                        "firmware-sim: {}: no answer to {tries} probes; sending anyway",
                        self.plan.id
                    );
                    self.start_streaming(now).await;
                } else {
                    self.start_probe(now, tries).await;
                }
            }
            Phase::Streaming if self.retransmit.due(now, !self.outbox.is_empty()) => {
                self.retransmit.resent(now);
                self.report.ack_timeouts += 1;
                if self.link.as_ref().is_some_and(Link::says_hello) {
                    // The hub may have restarted without this link noticing (a serial line
                    // stays open) and forgotten who is on it: introduce the device again first.
                    self.reprobing = true;
                    self.start_probe(now, 0).await;
                } else {
                    self.resend_window().await;
                }
            }
            _ => {}
        }
        if let (Some(at), Some(every)) = (self.next_disconnect, self.plan.disconnect_every)
            && now >= at
        {
            self.next_disconnect = Some(now + every);
            if let Some(link) = self.link.take() {
                self.report.forced_disconnects += 1;
                link.close().await;
                self.phase = Phase::Down {
                    retry_at: now + REOPEN_AFTER_FAULT,
                };
            }
        }
        Ok(())
    }

    async fn finish(mut self) {
        let now = Instant::now();
        self.end_stall(now);
        if let Err(e) = self.outbox.persist_ack() {
            eprintln!("firmware-sim: {}: writing its ack file: {e}", self.plan.id);
        }
        if let Some(link) = self.link.take() {
            link.close_gracefully().await;
        }
        self.report.unacked = self.outbox.len() as u64;
        self.report.acked_through = self.outbox.acked_through();
        self.report.next_seq = self.outbox.next_seq();
        self.report.acks_beyond = self.outbox.acks_beyond;
        self.report.noise_frames = self.noise.garbage_frames;
        self.report.corrupted_frames = self.noise.corrupted_frames;
        let stats = self.commands.stats;
        self.report.commands_received = stats.received;
        self.report.commands_duplicates = stats.duplicates;
        self.report.commands_invalid = stats.invalid;
    }
}

/// How a device on `endpoint` gets its commands.
pub fn encoding(endpoint: &Endpoint) -> Encoding {
    match endpoint {
        Endpoint::Mqtt { binary: false, .. } => Encoding::Json,
        Endpoint::Mqtt { binary: true, .. } | Endpoint::Serial { .. } => Encoding::Binary,
    }
}

/// The link's next event (never resolves without a link).
async fn next_event(link: &mut Option<Link>) -> LinkEvent {
    match link {
        Some(link) => link.next_event().await,
        None => std::future::pending().await,
    }
}
