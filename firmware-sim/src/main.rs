//! `firmware-sim`: simulated devices for the hub, for tests, demos, load and fault injection.
//!
//! Each device has its own connection (an MQTT session, or a serial port), a `seq` that counts up
//! from 0, and plausible values: a temperature and humidity that drift, a battery that drains, a
//! door switch that sometimes flips.
//!
//! - `--transport json` (default): JSON envelopes on `devices/{id}/telemetry`, acks on
//!   `devices/{id}/ack`; `--transport binary`: postcard `Uplink`s on `devices/{id}/up`, `Downlink`s
//!   on `devices/{id}/down`; `--transport serial --serial PATH...`: the same messages as frames on
//!   a serial line, one device per path.
//! - `--acks hub` (default): a reading is delivered when the hub's cumulative ack covers it; until
//!   then it stays in the device's outbox ([`outbox`]) and is retransmitted ([`device`]). A
//!   reading the hub rejects leaves the outbox undelivered; one the hub gave up waiting for is sent
//!   once more, then leaves it too (both count as failures: a simulated reading is always valid).
//! - `--boot N`: the devices' readings count in boot `N` (in the `Hello`, the binary telemetry and
//!   the JSON envelope), and their seqs start at 0: a device that keeps no counter across reboots.
//!   Run it again with another `N` to simulate a reboot. Without it no boot is sent, and the seq
//!   is kept across runs by `--outbox`.
//!   `--acks broker`: delivered when the broker has it, no outbox ([`plain`]).
//!
//! - Commands: every connected device answers the hub's commands ([`commands`]): JSON on
//!   `devices/{id}/commands`, answered on `devices/{id}/command-results`; binary `Command`s on
//!   `devices/{id}/down` (or the serial line), answered with a `CommandResult` on
//!   `devices/{id}/up` (or the line). `echo` returns its args, `fail` fails, `sleep` (arg `ms`)
//!   answers after that long, `ignore` never answers, any other name fails. Telemetry goes on
//!   meanwhile, in both `--acks` modes.
//! - `--idle` (or `--rate 0`): a device that connects (a binary or serial one says `Hello`),
//!   sends no telemetry and answers commands until `--duration` or Ctrl-C / SIGTERM, e.g. for a
//!   test of the hub's commands: `firmware-sim --broker 127.0.0.1:1883 --transport binary --idle`.
//!
//! - `--backfill DURATION` (`24h`, `90m`; needs `--count N`): the readings get device timestamps
//!   spread evenly over the DURATION before the simulator started, reading `i` of each device at
//!   `start - DURATION + i * DURATION / N` (JSON `ts` in RFC 3339 with milliseconds, binary and
//!   serial `timestamp_ms`), so a store fills with a day of history as fast as the hub takes it:
//!   `firmware-sim --transport binary --devices 100 --count 10000 --backfill 24h --rate 5000 --burst 50`.
//!
//! It prints one JSON summary line on stdout when it is done (with `commands_received` and
//! `commands_answered`), and exits 0 only if every reading it produced (and every reading of a
//! loaded backlog) was delivered.

mod commands;
mod device;
mod faults;
mod link;
mod outbox;
mod plain;
mod report;
mod retransmit;
mod sensors;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use rumqttc::QoS;
use tokio::sync::watch;

use device::{DeviceReport, OutboxPlan, Plan, Stop};
use link::Endpoint;
use sensors::Timestamps;

/// How devices talk to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// MQTT, JSON telemetry on devices/{id}/telemetry, acks on devices/{id}/ack.
    Json,
    /// MQTT, postcard messages on devices/{id}/up and devices/{id}/down.
    Binary,
    /// Framed postcard messages on serial ports (--serial).
    Serial,
}

/// When a reading counts as delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Acks {
    /// When the hub's ack covers it (outbox, retransmission).
    Hub,
    /// When the broker has it: PUBACK for QoS 1, written for QoS 0 (no outbox).
    Broker,
}

/// Simulated devices for the hub.
///
/// Every connected device also answers the hub's commands (JSON on devices/{id}/commands, binary
/// on devices/{id}/down or the serial line): `echo` returns its args, `fail` fails (binary code
/// 1), `sleep` with integer arg `ms` answers {"slept_ms": ms} after that long, `ignore` never
/// answers, other names fail (binary code 2). A redelivered command id gets the same answer.
/// For a device that only answers commands, give --idle (until --duration or Ctrl-C/SIGTERM).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Broker address, host:port (MQTT transports).
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// How devices talk to the hub.
    #[arg(long, value_enum, default_value_t = Transport::Json)]
    transport: Transport,
    /// A serial port (or pty) with one device on it; repeat for more devices (--transport serial).
    #[arg(long = "serial", value_name = "PATH")]
    serial: Vec<PathBuf>,
    /// Baud rate of the serial ports.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// How many devices (MQTT transports; serial has one per --serial).
    #[arg(long)]
    devices: Option<usize>,
    /// Device ids are this prefix and a number from 0.
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// Readings per second per device (on average, with --burst); 0 is --idle.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Send no telemetry: connect (binary and serial devices say Hello), answer commands, and
    /// run until --duration or Ctrl-C / SIGTERM.
    #[arg(long)]
    idle: bool,
    /// Readings sent back to back per tick; ticks come every burst/rate seconds.
    #[arg(long, default_value_t = 1)]
    burst: u32,
    /// Readings per device, then stop producing and wait for the acks (0: until --duration or
    /// Ctrl-C). With --outbox this counts seqs: a device produces seqs 0..N-1 once across runs.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Give the readings device timestamps spread evenly over this span before the start (`24h`,
    /// `90m`, `30s`, `7d`, `500ms`): reading i of N (--count) at start - span + i * span / N.
    /// Needs --count. Send as fast as the hub takes them with a high --rate and --burst.
    #[arg(long, value_name = "DURATION")]
    backfill: Option<String>,
    /// Stop producing after this many seconds, then wait for the acks (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    duration: f64,
    /// MQTT QoS of the publishes (0 or 1).
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// When a reading counts as delivered.
    #[arg(long, value_enum, default_value_t = Acks::Hub)]
    acks: Acks,
    /// Keep each device's outbox in files under DIR ({id}.log, {id}.ack), so unacked readings
    /// and the seq survive a restart (default: in memory).
    #[arg(long, value_name = "DIR")]
    outbox: Option<PathBuf>,
    /// Most unacked readings per device; when full, the device stops producing (a stall).
    #[arg(long, default_value_t = 100_000)]
    outbox_max: usize,
    /// fdatasync the outbox after every append (survives a power cut; slower).
    #[arg(long)]
    outbox_fsync: bool,
    /// Most unacked readings on the wire per device (the send window); more wait for acks.
    /// Keep it below the hub's duplicate window of 1024 seqs.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Resend the unacked readings (of the window) when the hub's ack has not moved for this many seconds.
    #[arg(long, default_value_t = 2.0)]
    ack_timeout: f64,
    /// After producing, wait at most this many seconds for the last acks.
    #[arg(long, default_value_t = 60.0)]
    drain_timeout: f64,
    /// Fault: drop each device's connection (close its serial port) every SECS seconds.
    #[arg(long, value_name = "SECS")]
    disconnect_every: Option<f64>,
    /// Fault (serial): per frame, the probability of garbage bytes before it; a quarter of that
    /// is the probability of a flipped bit in it.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    noise: f64,
    /// Write per-device results to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Seed for the values, so a run can be repeated.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The boot number of this run: the seqs start at 0 and count in this boot (a device that
    /// keeps no counter across reboots; run again with another number for a reboot). Not with
    /// --outbox, which keeps the seq counting instead.
    #[arg(long, value_name = "N")]
    boot: Option<u32>,
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value >= 0.0) {
        bail!("--{name} must be a number of seconds, 0 or more");
    }
    Ok(Duration::from_secs_f64(value))
}

/// The device plans, checked.
fn plans(args: &Args, stop: &watch::Receiver<Stop>) -> anyhow::Result<Vec<Plan>> {
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a number, 0 or more (0: --idle)");
    }
    let idle = args.idle || args.rate == 0.0;
    if idle && args.count > 0 {
        bail!("--idle (or --rate 0) sends no telemetry: leave out --count");
    }
    if args.burst == 0 {
        bail!("--burst must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.noise) {
        bail!("--noise is a probability, from 0 to 1");
    }
    if !(1..=1000).contains(&args.window) {
        bail!("--window must be from 1 to 1000 (the hub detects duplicates over 1024 seqs)");
    }
    if args.outbox_max == 0 {
        bail!("--outbox-max must be at least 1");
    }
    let timestamps = match &args.backfill {
        None => Timestamps::Now,
        Some(text) => {
            let span_ms = sensors::parse_span(text)
                .filter(|&ms| ms > 0)
                .with_context(|| {
                    format!("--backfill {text:?}: give a span such as 24h, 90m, 30s, 7d or 500ms")
                })?;
            if args.count == 0 || idle {
                bail!("--backfill spreads --count readings over the span: give --count N");
            }
            let start_ms = sensors::now_ms();
            if span_ms > start_ms {
                bail!("--backfill {text}: that is before 1970");
            }
            Timestamps::Backfill {
                start_ms,
                span_ms,
                count: args.count,
            }
        }
    };
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        other => bail!("--qos {other}: use 0 or 1"),
    };
    let ack_timeout = seconds("ack-timeout", args.ack_timeout)?;
    if ack_timeout < Duration::from_millis(10) {
        bail!("--ack-timeout must be at least 0.01 s");
    }
    let drain_timeout = seconds("drain-timeout", args.drain_timeout)?;
    let disconnect_every = match args.disconnect_every {
        None => None,
        Some(s) => {
            let every = seconds("disconnect-every", s)?;
            if every < Duration::from_millis(10) {
                bail!("--disconnect-every must be at least 0.01 s");
            }
            Some(every)
        }
    };

    let endpoints: Vec<Endpoint> = match args.transport {
        Transport::Serial => {
            if args.serial.is_empty() {
                bail!("--transport serial needs at least one --serial PATH");
            }
            if args.devices.is_some_and(|n| n != args.serial.len()) {
                bail!("--transport serial has one device per --serial; leave out --devices");
            }
            args.serial
                .iter()
                .map(|path| Endpoint::Serial {
                    path: path.clone(),
                    baud: args.baud,
                })
                .collect()
        }
        Transport::Json | Transport::Binary => {
            if !args.serial.is_empty() {
                bail!("--serial needs --transport serial");
            }
            let (host, port) = args
                .broker
                .rsplit_once(':')
                .context("--broker must be host:port")?;
            let port: u16 = port.parse().context("--broker port")?;
            let devices = args.devices.unwrap_or(1);
            if devices == 0 {
                bail!("--devices must be at least 1");
            }
            let endpoint = Endpoint::Mqtt {
                host: host.to_owned(),
                port,
                qos,
                binary: args.transport == Transport::Binary,
            };
            vec![endpoint; devices]
        }
    };
    if args.boot.is_some() && args.outbox.is_some() {
        bail!(
            "--boot is for a device whose seqs start again at every boot; --outbox keeps them counting: give one of them"
        );
    }
    if args.acks == Acks::Broker {
        if args.transport == Transport::Serial {
            bail!("--acks broker needs an MQTT transport (json or binary)");
        }
        if args.outbox.is_some() {
            bail!("--acks broker has no outbox: leave out --outbox");
        }
        if disconnect_every.is_some() {
            bail!("--disconnect-every needs --acks hub");
        }
    }
    if args.noise > 0.0 && args.transport != Transport::Serial {
        eprintln!("firmware-sim: --noise applies to serial lines only; ignored");
    }

    let mut plans = Vec::with_capacity(endpoints.len());
    for (i, endpoint) in endpoints.into_iter().enumerate() {
        let id = format!("{}{i}", args.prefix);
        if !device_protocol::is_valid_id(&id) {
            bail!("device id {id:?} is not valid: 1 to 64 of A-Z a-z 0-9 . _ - (check --prefix)");
        }
        plans.push(Plan {
            id,
            endpoint,
            interval: if idle {
                Duration::from_secs(1)
            } else {
                Duration::from_secs_f64(f64::from(args.burst) / args.rate)
            },
            burst: args.burst,
            window: args.window,
            count: args.count,
            idle,
            timestamps,
            ack_timeout,
            drain_timeout,
            disconnect_every,
            noise: args.noise,
            seed: args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
            boot: args.boot,
            outbox: OutboxPlan {
                dir: args.outbox.clone(),
                max: args.outbox_max,
                fsync: args.outbox_fsync,
            },
            stop: stop.clone(),
        });
    }
    Ok(plans)
}

/// Ctrl-C or SIGTERM once: finish (stop producing, wait for acks); twice: abort.
async fn watch_signals(stop_tx: std::sync::Arc<watch::Sender<Stop>>, idle: bool) {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(not(unix))]
    let mut term: Option<()> = None;
    let mut ctrl_c_works = true;
    loop {
        tokio::select! {
            signal = tokio::signal::ctrl_c(), if ctrl_c_works => {
                if let Err(e) = signal {
                    eprintln!("firmware-sim: cannot watch for Ctrl-C: {e}");
                    ctrl_c_works = false;
                    continue;
                }
            }
            received = sigterm(&mut term), if term.is_some() => {
                if !received {
                    term = None;
                    continue;
                }
            }
            else => return,
        }
        let next = match *stop_tx.borrow() {
            Stop::Run => Stop::Finish,
            _ => Stop::Abort,
        };
        if next == Stop::Finish && !idle {
            eprintln!(
                "firmware-sim: stopping; waiting for the last acks (again to give up at once)"
            );
        }
        stop_tx.send_replace(next);
    }
}

/// The next SIGTERM; false if they can no longer be received.
#[cfg(unix)]
async fn sigterm(term: &mut Option<tokio::signal::unix::Signal>) -> bool {
    match term {
        Some(term) => term.recv().await.is_some(),
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn sigterm(_: &mut Option<()>) -> bool {
    std::future::pending().await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("firmware-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the devices, prints the summary; the exit code says whether every reading was delivered.
async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (stop_tx, stop_rx) = watch::channel(Stop::Run);
    let plans = plans(&args, &stop_rx)?;
    let duration = seconds("duration", args.duration)?;
    if args.count == 0 && duration.is_zero() {
        eprintln!("firmware-sim: running until Ctrl-C (give --count or --duration to stop)");
    }
    let idle = plans.first().is_some_and(|p| p.idle);
    let started = Instant::now();
    let stop_tx = std::sync::Arc::new(stop_tx);
    if !duration.is_zero() {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop_tx.send_if_modified(|stop| {
                let changed = *stop == Stop::Run;
                if changed {
                    *stop = Stop::Finish;
                }
                changed
            });
        });
    }
    tokio::spawn(watch_signals(stop_tx.clone(), idle));

    let devices = plans.len();
    let mut tasks = Vec::with_capacity(devices);
    for plan in plans {
        let id = plan.id.clone();
        let task = match args.acks {
            Acks::Hub => tokio::spawn(device::run(plan)),
            Acks::Broker => tokio::spawn(plain::run(plan)),
        };
        tasks.push((id, task));
    }
    let mut reports: Vec<DeviceReport> = Vec::with_capacity(devices);
    for (id, task) in tasks {
        reports.push(match task.await {
            Ok(report) => report,
            Err(e) => DeviceReport {
                id,
                error: Some(format!("device task died: {e}")),
                ..Default::default()
            },
        });
    }
    let seconds = started.elapsed().as_secs_f64();

    let sum = |f: fn(&DeviceReport) -> u64| reports.iter().map(f).sum::<u64>();
    let published = sum(|r| r.produced);
    let failed: Vec<&DeviceReport> = reports.iter().filter(|r| !r.ok()).collect();
    let summary = serde_json::json!({
        "devices": devices,
        "published": published,
        "acked": sum(|r| r.acked),
        "retransmitted": sum(|r| r.retransmitted),
        "stalls": sum(|r| r.stalls),
        "rejected": sum(|r| r.rejected),
        "gave_up": sum(|r| r.gave_up),
        "commands_received": sum(|r| r.commands_received),
        "commands_answered": sum(|r| r.commands_answered),
        "failed_devices": failed.len(),
        "failed": failed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        "seconds": seconds,
        "rate": published as f64 / seconds.max(1e-9),
    });
    println!("{summary}");
    let _ = std::io::stdout().flush();

    if let Some(path) = &args.report {
        let per_device: BTreeMap<&str, &DeviceReport> =
            reports.iter().map(|r| (r.id.as_str(), r)).collect();
        let text = serde_json::to_vec_pretty(&serde_json::json!({ "devices": per_device }))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }

    if !failed.is_empty() {
        const SHOWN: usize = 20;
        let mut names: Vec<String> = failed
            .iter()
            .take(SHOWN)
            .map(|r| match &r.error {
                Some(e) => format!("{} ({e})", r.id),
                None => format!(
                    "{} ({} unacked, {} rejected, {} given up by the hub)",
                    r.id, r.unacked, r.rejected, r.gave_up
                ),
            })
            .collect();
        if failed.len() > SHOWN {
            names.push(format!("and {} more", failed.len() - SHOWN));
        }
        eprintln!(
            "firmware-sim: {} device(s) did not get every reading delivered: {}",
            failed.len(),
            names.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
