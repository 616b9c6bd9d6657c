//! ws-latency: publish-to-WebSocket latency. Devices publish JSON readings at a fixed total
//! rate over MQTT, each carrying `sent_us` (unix µs just before it was written to the socket);
//! one client reads `GET /api/v1/stream` (subscribed to those devices' `sent_us` only) and takes
//! receive time minus `sent_us` for every reading that arrives in the measured window (warm-up
//! excluded). Prints one JSON object with p50/p99/p99.9.
//!
//! The publishers and the client run on this machine's clock, so no clock offset enters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use hub_bench::device::{Device, Format, Plan, Totals};
use hub_bench::https::Api;
use hub_bench::{mqtt, percentile, proc};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Parser, Debug)]
#[command(about = "Publish-to-WebSocket latency of the hub's live stream")]
struct Args {
    /// The broker, host:port.
    #[arg(long)]
    broker: String,
    /// The hub's API, host:port.
    #[arg(long)]
    api: String,
    /// The hub's CA (PEM).
    #[arg(long)]
    ca: std::path::PathBuf,
    /// The admin token file.
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// Readings per second, all devices together.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Devices sharing the rate.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// QoS of the PUBLISHes.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Device id prefix.
    #[arg(long, default_value = "wsl-")]
    prefix: String,
    /// The hub's pid, for its memory and CPU.
    #[arg(long)]
    hub_pid: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = hub_bench::parse_addr(&args.broker)?;
    let api = Api::new(
        hub_bench::parse_addr(&args.api)?,
        &args.ca,
        &args.token_file,
    )?;

    // The stream, subscribed before anything is published.
    let tls = api.connect().await?;
    let mut request =
        format!("wss://localhost:{}/api/v1/stream", api.addr.port()).into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", api.token).parse()?);
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .context("opening the WebSocket stream")?;
    let pattern = format!("{}*", args.prefix);
    let subscribe = json!({"op":"subscribe","id":"lat","devices":[pattern],"metrics":["sent_us"],"events":false});
    ws.send(Message::Text(subscribe.to_string().into())).await?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no answer to subscribe")?
            .context("the stream closed")??;
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t)?;
            match v["type"].as_str() {
                Some("subscribed") => break,
                Some("error") => bail!("subscribe refused: {v}"),
                _ => {}
            }
        }
    }

    let plan = Plan {
        format: Format::Json,
        qos: mqtt::qos(args.qos)?,
        rate: args.rate / args.devices as f64,
        window: 0,
        inflight: 1000,
        stall: Duration::from_secs(2),
        // A device's readings go out one per write: each carries the time it was sent.
        chunk: 1,
        sent_us: true,
        total_window: 0,
    };
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut devices = Vec::new();
    for i in 0..args.devices {
        let id = format!("{}{i}", args.prefix);
        devices.push(Device::connect(broker, &[id], &plan, totals.clone(), stop.clone()).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for d in devices {
        tasks.push(tokio::spawn(d.run(
            plan.clone(),
            totals.clone(),
            start,
            stop.clone(),
        )));
    }
    let window_start = start + Duration::from_secs_f64(args.warmup);
    let window_end = window_start + Duration::from_secs_f64(args.seconds);
    let mut latencies: Vec<u64> = Vec::with_capacity((args.rate * args.seconds * 1.1) as usize);
    let (mut lagged_dropped, mut received, mut negative) = (0u64, 0u64, 0u64);
    let mut published_at_start = None;
    let mut cpu_at_start = None;
    loop {
        let next = tokio::time::timeout_at(window_end, ws.next()).await;
        let now = Instant::now();
        let Ok(next) = next else { break };
        let Some(message) = next else {
            bail!("the stream closed during the run")
        };
        let text = match message? {
            Message::Text(t) => t,
            _ => continue,
        };
        let receive_us = hub_bench::now_us();
        if now < window_start {
            continue;
        }
        if published_at_start.is_none() {
            published_at_start = Some(totals.published.load(Ordering::Relaxed));
            cpu_at_start = args.hub_pid.and_then(|p| proc::cpu_ticks(&p.to_string()));
        }
        let v: Value = serde_json::from_str(&text)?;
        match v["type"].as_str() {
            Some("reading") => {
                received += 1;
                match v["metrics"]["sent_us"].as_u64() {
                    Some(sent) if sent <= receive_us => latencies.push(receive_us - sent),
                    Some(_) => negative += 1,
                    None => {}
                }
            }
            Some("lagged") => lagged_dropped += v["dropped"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    let published_in_window =
        totals.published.load(Ordering::Relaxed) - published_at_start.unwrap_or(0);
    let cpu = args
        .hub_pid
        .and_then(|p| proc::cpu_ticks(&p.to_string()))
        .zip(cpu_at_start)
        .map(|(b, a)| (b - a) as f64 / proc::TICKS_PER_SECOND / args.seconds);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let _ = ws.close(None).await;
    latencies.sort_unstable();
    let ms = |p: f64| percentile(&latencies, p).map(|us| us as f64 / 1000.0);
    let mean = if latencies.is_empty() {
        None
    } else {
        Some(latencies.iter().sum::<u64>() as f64 / latencies.len() as f64 / 1000.0)
    };
    let out = json!({
        "tool": "ws-latency",
        "rate": args.rate,
        "devices": args.devices,
        "qos": args.qos,
        "warmup_seconds": args.warmup,
        "window_seconds": args.seconds,
        "published_in_window": published_in_window,
        "received_in_window": received,
        "achieved_rate": received as f64 / args.seconds,
        "samples": latencies.len(),
        "lagged_dropped": lagged_dropped,
        "clock_went_back": negative,
        "p50_ms": ms(50.0),
        "p90_ms": ms(90.0),
        "p99_ms": ms(99.0),
        "p999_ms": ms(99.9),
        "max_ms": latencies.last().map(|us| *us as f64 / 1000.0),
        "mean_ms": mean,
        "hub_cpu_cores": cpu,
        "hub_memory_kb": args.hub_pid.and_then(proc::memory_kb).map(|(rss, hwm)| json!({"VmRSS": rss, "VmHWM": hwm})),
        "failed_devices": totals.failed.load(Ordering::Relaxed),
    });
    println!("{out}");
    Ok(())
}
