//! `hub status`: the running hub on one screen.

use super::*;

/// `hub status`: a one-screen summary of the running hub, from its `/metrics` (read twice, a
/// second apart, for the rates) and `/api/v1/sync/status`.
pub async fn status(config: &Config) -> Result<String, CliError> {
    let hub = RunningHub::find(config)
        .await?
        .ok_or_else(|| CliError::NotRunning(config.api.listen.clone()))?;
    let first = hub.call(Method::GET, "/metrics", None).await?;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = hub.call(Method::GET, "/metrics", None).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let sync = hub.call(Method::GET, "/api/v1/sync/status", None).await?;
    let sync: serde_json::Value =
        serde_json::from_slice(&sync).map_err(|e| CliError::Answer(e.to_string()))?;
    let (first, second) = (
        String::from_utf8_lossy(&first).into_owned(),
        String::from_utf8_lossy(&second).into_owned(),
    );
    Ok(status_screen(&hub.url(""), &first, &second, elapsed, &sync))
}

/// The sum of the samples of `family` whose labels contain `having` (all when empty).
pub(super) fn metric(text: &str, family: &str, having: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| l.contains(having))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(super) fn size(bytes: f64) -> String {
    match bytes {
        b if b >= (1u64 << 30) as f64 => format!("{:.1} GiB", b / (1u64 << 30) as f64),
        b if b >= (1u64 << 20) as f64 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        b => format!("{:.0} KiB", b / 1024.0),
    }
}

pub(super) fn status_screen(
    url: &str,
    first: &str,
    second: &str,
    seconds: f64,
    sync: &serde_json::Value,
) -> String {
    use std::fmt::Write as _;
    let rate = |family: &str, having: &str| {
        (metric(second, family, having) - metric(first, family, having)).max(0.0) / seconds
    };
    let up = metric(second, "process_start_time_seconds", "");
    let uptime = (crate::clock::now_ms() / 1000).saturating_sub(up as u64);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hub at {url}  up {}h{:02}m  rss {}  mqtt {}",
        uptime / 3600,
        uptime % 3600 / 60,
        size(metric(second, "process_resident_memory_bytes", "")),
        if metric(second, "hub_mqtt_connected", "") > 0.0 {
            "connected"
        } else {
            "NOT connected"
        }
    );
    let _ = writeln!(
        out,
        "devices    {} known, {} online",
        metric(second, "hub_devices", ""),
        metric(second, "hub_devices_online", "")
    );
    let stalled = metric(second, "hub_ingest_stalled_seconds", "");
    let _ = writeln!(
        out,
        "ingest     {:.0} readings/s stored, {:.0}/s skipped (bad input), {} QoS 0 dropped{}",
        rate("hub_store_items_total", "outcome=\"stored\""),
        rate("hub_ingest_messages_total", "")
            - rate("hub_ingest_messages_total", "outcome=\"accepted\""),
        metric(second, "hub_ingest_dropped_total", ""),
        if stalled > 0.0 {
            format!("  STALLED for {stalled:.0} s: readings wait, no commit finishes")
        } else {
            String::new()
        },
    );
    let store = &sync["store"];
    let _ = writeln!(
        out,
        "store      {} readings, file {} of {} quota{}, {} dropped unsynced",
        store["readings"],
        size(store["file_bytes"].as_f64().unwrap_or(0.0)),
        size(store["max_disk"].as_f64().unwrap_or(0.0)),
        if store["refusing_reason"] == "disk_full" {
            "  DISK FULL: new readings not stored nor acknowledged until the file system has room"
        } else if store["refusing"] == true {
            " FULL: refusing new readings"
        } else {
            ""
        },
        store["dropped"]
    );
    let sinks = sync["sinks"].as_array().cloned().unwrap_or_default();
    let consumers = sync["consumers"].as_array().cloned().unwrap_or_default();
    if sinks.is_empty() && consumers.is_empty() {
        let _ = writeln!(out, "sync       no sinks, no pull consumers");
    }
    for sink in &sinks {
        let f = &sink["follower"];
        let _ = writeln!(
            out,
            "sink       {} ({})  lag {} readings, {} s  delivered {}  parked {}{}",
            f["name"].as_str().unwrap_or(""),
            sink["kind"].as_str().unwrap_or(""),
            f["lag_readings"],
            f["lag_seconds"],
            sink["delivered"],
            sink["parked"],
            sink["error"]
                .as_str()
                .map(|e| format!("  FAILING: {e}"))
                .unwrap_or_default()
        );
    }
    for consumer in &consumers {
        let _ = writeln!(
            out,
            "consumer   {}  lag {} readings, {} s",
            consumer["name"].as_str().unwrap_or(""),
            consumer["lag_readings"],
            consumer["lag_seconds"]
        );
    }
    out
}
