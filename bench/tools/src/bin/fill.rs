//! fill: writes readings straight into a hub data directory through the hub's store API
//! (`Store::append` in batches, one durable commit each: the store writer's path), much faster
//! than over MQTT. The hub is then started on that directory.
//!
//! Shape: `--devices` typical devices share `readings - dense` readings evenly, and one device
//! `dense-0` has `--dense` readings; each device's readings are spread evenly over the `--span`
//! (hours) before now, written in time order across devices, four metrics each (temperature,
//! humidity, battery, door) as firmware-sim sends. Prints one JSON object.
//!
//! `--write-path` picks the hub's write path: `log` (the default, as the hub's) commits to the
//! log and checkpoints into the engine, sealing readings into blocks, with a last checkpoint at
//! the end so that the engine's file holds every reading; `direct` writes rows straight into
//! the engine (the layout of schema 3).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::Parser;
use device_protocol::OwnedValue;
use hub::store::{self, EngineKind, LogConfig, NewReading, Transport, Wire, WritePath};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Fills a hub store directly through the hub's store API")]
struct Args {
    /// The hub's data directory (the store file is created in it).
    #[arg(long)]
    dir: PathBuf,
    /// Readings in all.
    #[arg(long)]
    readings: u64,
    /// Typical devices (typical-0, typical-1, ...).
    #[arg(long, default_value_t = 100)]
    devices: u64,
    /// Readings of the one dense device (dense-0); 0 for none.
    #[arg(long, default_value_t = 0)]
    dense: u64,
    /// Hours before now the readings cover.
    #[arg(long, default_value_t = 24.0)]
    span_hours: f64,
    /// Readings per commit.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Store engine.
    #[arg(long, default_value = "redb")]
    engine: String,
    /// The engine's cache in bytes (the hub's default: 4 MiB).
    #[arg(long, default_value_t = 4 << 20)]
    cache: usize,
    /// `log` (the hub's default) or `direct`.
    #[arg(long, default_value = "log")]
    write_path: String,
}

fn reading(device: String, seq: u64, timestamp_ms: u64) -> NewReading {
    let wobble = (seq % 200) as f64;
    NewReading {
        device,
        transport: Transport::Mqtt,
        wire: Wire::Binary,
        seq: Some(seq as u32),
        boot: None,
        timestamp_ms: Some(timestamp_ms),
        received_ms: timestamp_ms,
        metrics: vec![
            (
                "battery".into(),
                OwnedValue::F64(100.0 - (seq % 10_000) as f64 * 0.001),
            ),
            ("door".into(), OwnedValue::Bool(seq.is_multiple_of(50))),
            ("humidity".into(), OwnedValue::F64(40.0 + wobble * 0.1)),
            ("temperature".into(), OwnedValue::F64(18.0 + wobble * 0.03)),
        ],
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.dense > args.readings {
        bail!("--dense is more than --readings");
    }
    let typical_total = args.readings - args.dense;
    if typical_total > 0 && args.devices == 0 {
        bail!("--devices 0 leaves readings without a device");
    }
    let per_typical = typical_total.checked_div(args.devices).unwrap_or(0);
    // What does not divide evenly goes to the first devices, one each.
    let extra = typical_total - per_typical * args.devices;
    let kind = match args.engine.as_str() {
        "redb" => EngineKind::Redb,
        "sled" => EngineKind::Sled,
        other => bail!("unknown engine {other}"),
    };
    std::fs::create_dir_all(&args.dir)?;
    let path = match args.write_path.as_str() {
        "log" => WritePath::Log,
        "direct" => WritePath::Direct,
        other => bail!("unknown write path {other}"),
    };
    let store = store::open(kind, &args.dir, args.cache, path, LogConfig::default())?;
    if store.next_offset()? != 0 {
        bail!("{} already holds readings", args.dir.display());
    }
    let span_ms = (args.span_hours * 3_600_000.0) as u64;
    let end_ms = hub_bench::now_ms();
    let start_ms = end_ms - span_ms;

    // Every device's readings are evenly spaced; walk them in time order with one cursor per
    // device (its next reading's time), smallest first.
    struct Cursor {
        name: String,
        count: u64,
        next: u64,
    }
    let mut cursors: Vec<Cursor> = (0..args.devices)
        .map(|i| Cursor {
            name: format!("typical-{i}"),
            count: per_typical + u64::from(i < extra),
            next: 0,
        })
        .filter(|c| c.count > 0)
        .collect();
    if args.dense > 0 {
        cursors.push(Cursor {
            name: "dense-0".into(),
            count: args.dense,
            next: 0,
        });
    }
    let time_of =
        |c: &Cursor, k: u64| start_ms + ((k as u128 * span_ms as u128) / c.count as u128) as u64;
    let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>> = cursors
        .iter()
        .enumerate()
        .map(|(i, c)| std::cmp::Reverse((time_of(c, 0), i)))
        .collect();

    let started = Instant::now();
    let mut batch = Vec::with_capacity(args.batch);
    let mut written = 0u64;
    let mut commits = 0u64;
    while let Some(std::cmp::Reverse((ts, i))) = heap.pop() {
        let c = &mut cursors[i];
        batch.push(reading(c.name.clone(), c.next, ts));
        c.next += 1;
        if c.next < c.count {
            heap.push(std::cmp::Reverse((time_of(c, c.next), i)));
        }
        if batch.len() >= args.batch {
            store.append(&batch)?;
            written += batch.len() as u64;
            commits += 1;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.append(&batch)?;
        written += batch.len() as u64;
        commits += 1;
    }
    store.checkpoint()?;
    let seconds = started.elapsed().as_secs_f64();
    let file = args.dir.join(match kind {
        EngineKind::Redb => "store.redb",
        EngineKind::Sled => "store.sled",
    });
    let file_bytes = std::fs::metadata(&file).map(|m| m.len()).ok();
    // Bytes holding live data, as the quota counts them (the log's files included).
    let usage = store.usage()?;
    let tables: serde_json::Map<String, serde_json::Value> = store
        .table_bytes()?
        .into_iter()
        .filter(|(_, entries, _)| *entries > 0)
        .map(|(name, entries, bytes)| {
            (name.to_owned(), json!({"entries": entries, "bytes": bytes}))
        })
        .collect();
    let out = json!({
        "tool": "fill",
        "engine": args.engine,
        "write_path": args.write_path,
        "readings": written,
        "typical_devices": args.devices,
        "readings_per_typical_device": per_typical,
        "dense_readings": args.dense,
        "span_hours": args.span_hours,
        "batch": args.batch,
        "commits": commits,
        "seconds": seconds,
        "readings_per_s": written as f64 / seconds,
        "store_next_offset": store.next_offset()?,
        "file_bytes": file_bytes,
        "live_bytes": usage.live_bytes,
        "usage_file_bytes": usage.file_bytes,
        "tables": tables,
    });
    println!("{out}");
    Ok(())
}
