//! loadgen: N simulated devices, one MQTT connection each, publishing telemetry for a warm-up
//! and a measured window, then a drain. Prints one JSON object.
//!
//! Counts: what it published; what the hub acked (its per-device cumulative acks); with
//! `--api`, the hub's own stored-readings counter (`hub_store_items_total{outcome="stored"}`
//! from GET /metrics); with `--subscriber-pid`, the messages a `mosquitto_sub -F x` wrote (2
//! bytes each, from `/proc/PID/io`), for the broker-alone baseline. Rates are over the measured
//! window only (counters sampled at its start and end): no connection set-up, no warm-up, no
//! drain. After the window devices send nothing new but resend what is unacknowledged until it is
//! acknowledged (see `device::DRAIN_LIMIT`); then it waits until the hub has stored everything published (or
//! nothing moves for `--quiet`), and reports lost = published - stored.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use hub_bench::device::{Device, Format, Name as _, Plan, Totals};
use hub_bench::https::Api;
use hub_bench::{mqtt, proc};
use serde_json::{Value, json};
use tokio::time::Instant;

const STORED: &str = "hub_store_items_total{outcome=\"stored\"}";
const DUPLICATES: &str = "hub_store_items_total{outcome=\"duplicate\"}";

#[derive(Parser, Debug)]
#[command(about = "MQTT load generator for the hub's benchmarks")]
struct Args {
    /// The broker, host:port.
    #[arg(long)]
    broker: String,
    /// Devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// MQTT connections the devices share (device i on connection i % C); default: one per
    /// device, as devices do.
    #[arg(long)]
    connections: Option<usize>,
    /// Device id prefix (ids are PREFIX0, PREFIX1, ...).
    #[arg(long, default_value = "lg-")]
    prefix: String,
    /// Encoding.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// QoS of the PUBLISHes (0 or 1).
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Total readings per second over all devices; 0 for as fast as the limits allow.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Readings each device may have out without the hub's ack (0: do not wait for acks, for a
    /// broker alone). Default: 8192 / devices, at least 8.
    #[arg(long)]
    window: Option<u64>,
    /// QoS 1 PUBLISHes each device may have out without PUBACK.
    #[arg(long, default_value_t = 100)]
    inflight: u64,
    /// Seconds of warm-up before the measured window.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds of the measured window.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Seconds to wait at most, after the publishers stop, for everything to be stored.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// The drain also ends when no counter moved for this many seconds.
    #[arg(long, default_value_t = 3.0)]
    quiet: f64,
    /// The hub's API (host:port), to read its stored counter from /metrics.
    #[arg(long)]
    api: Option<String>,
    /// The hub's CA (PEM), with --api.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The admin token file, with --api.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The hub's pid: its VmRSS is sampled through the run, its CPU time over the window.
    #[arg(long)]
    hub_pid: Option<u32>,
    /// A `mosquitto_sub -F x` writing to /dev/null: its messages are counted from /proc.
    #[arg(long)]
    subscriber_pid: Option<u32>,
    /// With --subscriber-pid: readings out, all devices together, that the subscriber has not
    /// received yet (the baseline's counterpart of the hub's ack windows, 8192 in all by
    /// default); 0 for flat out, which only measures the broker's queue growing.
    #[arg(long, default_value_t = 8192)]
    subscriber_window: u64,
    /// Messages published before the run to measure how many bytes the subscriber writes per
    /// message (its "x\n", and at QoS 1 its PUBACKs: /proc counts every write).
    #[arg(long, default_value_t = 2000)]
    calibrate: u64,
    /// Milliseconds without ack progress before a device resends its oldest unacked reading.
    #[arg(long, default_value_t = 1000)]
    stall_ms: u64,
    /// Connections opened at once while connecting.
    #[arg(long, default_value_t = 64)]
    connect_parallel: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    at: f64,
    published: u64,
    acked: u64,
    stored: Option<f64>,
    received: Option<u64>,
    hub_cpu: Option<u64>,
    own_cpu: Option<u64>,
    /// Bytes the hub sent to the storage device so far (`write_bytes` of `/proc/PID/io`).
    hub_device_bytes: Option<u64>,
}

struct Probe {
    api: Option<Api>,
    hub_pid: Option<u32>,
    subscriber: Option<(u32, f64)>,
    totals: Arc<Totals>,
    t0: Instant,
}

impl Probe {
    async fn sample(&self) -> anyhow::Result<Sample> {
        let stored = match &self.api {
            Some(api) => Some(api.metric(STORED).await?),
            None => None,
        };
        Ok(Sample {
            at: self.t0.elapsed().as_secs_f64(),
            published: self.totals.published.load(Ordering::Relaxed),
            acked: self.totals.acked.load(Ordering::Relaxed),
            stored,
            received: self.subscriber.and_then(|(pid, per)| {
                proc::written_bytes(pid).map(|b| (b as f64 / per).round() as u64)
            }),
            hub_cpu: self
                .hub_pid
                .and_then(|pid| proc::cpu_ticks(&pid.to_string())),
            own_cpu: proc::cpu_ticks("self"),
            hub_device_bytes: self.hub_pid.and_then(proc::device_write_bytes),
        })
    }
}

/// Bytes the subscriber `pid` writes per message: `count` messages published at a gentle rate,
/// and what its write counter moved once it is still.
async fn calibrate(addr: SocketAddr, pid: u32, plan: &Plan, count: u64) -> anyhow::Result<f64> {
    let plan = Plan {
        rate: 5000.0,
        window: 0,
        total_window: 0,
        ..plan.clone()
    };
    let written = || proc::written_bytes(pid).context("reading the subscriber's /proc/PID/io");
    let before = written()?;
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let device = Device::connect(
        addr,
        &["calibrate".to_owned()],
        &plan,
        totals.clone(),
        stop.clone(),
    )
    .await?;
    let task = tokio::spawn(device.run(plan, totals.clone(), Instant::now(), stop.clone()));
    while totals.published.load(Ordering::Relaxed) < count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    task.await??;
    let published = totals.published.load(Ordering::Relaxed);
    let mut last = written()?;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = written()?;
        if now == last {
            break;
        }
        last = now;
    }
    let per = (last - before) as f64 / published as f64;
    if per < 1.0 {
        bail!(
            "the subscriber wrote {} bytes for {published} messages: is it subscribed?",
            last - before
        );
    }
    Ok(per)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let addr: SocketAddr = hub_bench::parse_addr(&args.broker)?;
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let window = match (args.format, args.window) {
        // Mapped topics carry no seq: the hub never acks them, only PUBACKs (QoS 1).
        (Format::Tasmota, None | Some(0)) => 0,
        (Format::Tasmota, Some(_)) => bail!("--format tasmota gets no hub acks: --window 0"),
        (_, window) => window.unwrap_or_else(|| (8192 / args.devices as u64).max(8)),
    };
    let plan = Plan {
        format: args.format,
        qos: mqtt::qos(args.qos)?,
        rate: args.rate / args.devices as f64,
        window,
        inflight: args.inflight.max(1),
        stall: Duration::from_millis(args.stall_ms),
        chunk: 64,
        sent_us: false,
        total_window: if args.subscriber_pid.is_some() {
            args.subscriber_window
        } else {
            0
        },
    };
    let api = match &args.api {
        Some(a) => {
            let ca = args.ca.as_deref().context("--api needs --ca")?;
            let token = args
                .token_file
                .as_deref()
                .context("--api needs --token-file")?;
            Some(Api::new(hub_bench::parse_addr(a)?, ca, token)?)
        }
        None => None,
    };
    let subscriber = match args.subscriber_pid {
        Some(pid) => Some((pid, calibrate(addr, pid, &plan, args.calibrate).await?)),
        None => None,
    };
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let probe = Probe {
        api,
        hub_pid: args.hub_pid,
        subscriber,
        totals: totals.clone(),
        t0: Instant::now(),
    };
    let before = probe.sample().await?;
    // The subscriber's count, polled every millisecond, is the baseline's credit.
    if let Some((pid, per)) = subscriber {
        let (totals, stop) = (totals.clone(), stop.clone());
        let base = before.received.unwrap_or(0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Some(b) = proc::written_bytes(pid) {
                    let received = ((b as f64 / per).round() as u64).saturating_sub(base);
                    if totals.received.swap(received, Ordering::Relaxed) != received {
                        totals.credit.notify_waiters();
                    }
                }
            }
        });
    }
    let dup_before = match &probe.api {
        Some(api) => Some(api.metric(DUPLICATES).await?),
        None => None,
    };

    // Connect every device first: set-up is not part of any figure.
    let connect_started = Instant::now();
    let mut devices = Vec::with_capacity(args.devices);
    let ids: Vec<String> = (0..args.devices)
        .map(|i| format!("{}{i}", args.prefix))
        .collect();
    let connections = args
        .connections
        .unwrap_or(args.devices)
        .clamp(1, args.devices);
    // Device i goes on connection i % connections.
    let groups: Vec<Vec<String>> = (0..connections)
        .map(|c| ids.iter().skip(c).step_by(connections).cloned().collect())
        .collect();
    for chunk in groups.chunks(args.connect_parallel.max(1)) {
        let mut pending = Vec::new();
        for group in chunk {
            let (plan, totals, stop, group) =
                (plan.clone(), totals.clone(), stop.clone(), group.clone());
            pending.push(tokio::spawn(async move {
                Device::connect(addr, &group, &plan, totals, stop).await
            }));
        }
        for p in pending {
            devices.push(p.await??);
        }
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();

    // Publish: warm-up, the measured window, stop.
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(devices.len());
    for device in devices {
        let (plan, totals, stop) = (plan.clone(), totals.clone(), stop.clone());
        tasks.push(tokio::spawn(device.run(plan, totals, start, stop)));
    }
    let mut peak_rss_kb = 0;
    let sample_rss = |peak: &mut u64| {
        if let Some((rss, _)) = args.hub_pid.and_then(proc::memory_kb) {
            *peak = (*peak).max(rss);
        }
    };
    let warm_until = start + Duration::from_secs_f64(args.warmup);
    while Instant::now() < warm_until {
        sample_rss(&mut peak_rss_kb);
        tokio::time::sleep(Duration::from_millis(200).min(warm_until - Instant::now())).await;
    }
    let a = probe.sample().await?;
    let window_until = Instant::now() + Duration::from_secs_f64(args.seconds);
    while Instant::now() < window_until {
        sample_rss(&mut peak_rss_kb);
        tokio::time::sleep(
            Duration::from_millis(200).min(window_until.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    let b = probe.sample().await?;
    let memory_at_window_end = args.hub_pid.and_then(proc::memory_kb);
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let published = totals.published.load(Ordering::Relaxed);

    // Drain: until the hub (or the subscriber) has everything, or nothing moves.
    let drain_started = Instant::now();
    let mut last = probe.sample().await?;
    let mut last_change = Instant::now();
    loop {
        let done = match (last.stored, last.received) {
            (Some(stored), _) => stored - before.stored.unwrap_or(0.0) >= published as f64,
            (None, Some(received)) => received - before.received.unwrap_or(0) >= published,
            (None, None) => plan.window == 0 || last.acked >= published,
        };
        if done
            || drain_started.elapsed().as_secs_f64() > args.drain_timeout
            || last_change.elapsed().as_secs_f64() > args.quiet
        {
            break;
        }
        sample_rss(&mut peak_rss_kb);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let next = probe.sample().await?;
        if (next.stored, next.received, next.acked) != (last.stored, last.received, last.acked) {
            last_change = Instant::now();
        }
        last = next;
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    let dup_b = match &probe.api {
        Some(api) => Some(api.metric(DUPLICATES).await?),
        None => None,
    };
    let end = last;

    let dt = b.at - a.at;
    let per_s = |x: f64| x / dt;
    let hub_memory = args.hub_pid.and_then(proc::memory_kb);
    let stored_total = end.stored.map(|s| s - before.stored.unwrap_or(0.0));
    let received_total = end.received.map(|r| r - before.received.unwrap_or(0));
    let lost = stored_total
        .map(|s| published as f64 - s)
        .or(received_total.map(|r| published as f64 - r as f64));
    let out = json!({
        "tool": "loadgen",
        "devices": args.devices,
        "connections": connections,
        "format": args.format.name(),
        "qos": args.qos,
        "offered_rate": if args.rate > 0.0 { json!(args.rate) } else { json!("flat out") },
        "window_per_device": window,
        "subscriber_window": plan.total_window,
        "inflight_per_connection": plan.inflight,
        "connect_seconds": connect_seconds,
        "subscriber_bytes_per_message": subscriber.map(|s| s.1),
        "warmup_seconds": args.warmup,
        "window_seconds": dt,
        "published_per_s": per_s((b.published - a.published) as f64),
        "acked_per_s": per_s((b.acked - a.acked) as f64),
        "stored_per_s": a.stored.zip(b.stored).map(|(a, b)| per_s(b - a)),
        "received_per_s": a.received.zip(b.received).map(|(a, b)| per_s((b - a) as f64)),
        "hub_cpu_cores": a.hub_cpu.zip(b.hub_cpu).map(|(a, b)| (b - a) as f64 / proc::TICKS_PER_SECOND / dt),
        // Bytes the hub had written to the device per reading it stored over the window.
        "hub_device_bytes_per_stored": a.hub_device_bytes.zip(b.hub_device_bytes)
            .zip(a.stored.zip(b.stored))
            .and_then(|((wa, wb), (sa, sb))| (sb > sa).then(|| (wb - wa) as f64 / (sb - sa))),
        "loadgen_cpu_cores": a.own_cpu.zip(b.own_cpu).map(|(a, b)| (b - a) as f64 / proc::TICKS_PER_SECOND / dt),
        "published": published,
        "acked": end.acked,
        "stored": stored_total,
        "received": received_total,
        "lost": lost,
        "drain_seconds": drain_seconds,
        "resent_after_stall": totals.stalls.load(Ordering::Relaxed),
        "hub_duplicates": dup_b.zip(dup_before).map(|(b, a)| b - a),
        "failed_devices": totals.failed.load(Ordering::Relaxed),
        "hub_peak_rss_kb": args.hub_pid.map(|_| peak_rss_kb),
        "hub_rss_kb_window_end": memory_at_window_end.map(|m| m.0),
        "hub_hwm_kb": hub_memory.map(|m| m.1),
        "errors": errors.iter().take(5).collect::<Vec<_>>(),
    });
    println!("{out}");
    let failed: Value = out["failed_devices"].clone();
    if failed.as_u64().unwrap_or(0) > 0 {
        eprintln!("loadgen: {failed} device connection(s) failed during the run");
    }
    Ok(())
}
