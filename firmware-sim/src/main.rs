//! `firmware-sim`: simulated devices publishing JSON telemetry over MQTT, for tests, demos and load.
//!
//! Each device has its own MQTT connection, a `seq` that counts up from 0, and plausible values: a
//! temperature and humidity that drift, a battery that drains, a door switch that sometimes flips.
//! It prints one JSON summary line on stdout when it is done.

mod device;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rumqttc::QoS;

/// Simulated devices for the hub.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Broker address, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// How many devices.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Device ids are this prefix and a number.
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// Readings per second per device.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Readings per device, then stop (0: until --duration or Ctrl-C).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Stop after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// MQTT QoS of the publishes (0 or 1).
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Seed for the values, so a run can be repeated.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (host, port) = args
        .broker
        .rsplit_once(':')
        .context("--broker must be host:port")?;
    let port: u16 = port.parse().context("--broker port")?;
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        other => bail!("--qos {other}: use 0 or 1"),
    };
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a positive number");
    }
    if args.count == 0 && args.duration == 0 {
        eprintln!("firmware-sim: running until Ctrl-C (give --count or --duration to stop)");
    }
    let deadline = (args.duration > 0).then(|| Instant::now() + Duration::from_secs(args.duration));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.devices);
    for i in 0..args.devices {
        let plan = device::Plan {
            id: format!("{}{i}", args.prefix),
            host: host.to_owned(),
            port,
            qos,
            interval: Duration::from_secs_f64(1.0 / args.rate),
            count: args.count,
            deadline,
            seed: args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
        };
        tasks.push(tokio::spawn(device::run(plan)));
    }
    let mut published = 0u64;
    let mut failed = 0usize;
    for task in tasks {
        match task.await {
            Ok(Ok(n)) => published += n,
            Ok(Err(e)) => {
                failed += 1;
                eprintln!("firmware-sim: {e:#}");
            }
            Err(e) => {
                failed += 1;
                eprintln!("firmware-sim: device task died: {e}");
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "devices": args.devices,
            "published": published,
            "failed_devices": failed,
            "seconds": seconds,
            "rate": published as f64 / seconds.max(1e-9),
        })
    );
    if failed > 0 {
        bail!("{failed} device(s) failed");
    }
    Ok(())
}
