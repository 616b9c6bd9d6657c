//! Memory under a load past what the hub commits (issue 18, item 6), against the real binary:
//! 1000 devices on 1000 connections, each publishing faster than the hub stores, all at once. Every
//! buffer between a socket and the store writer is bounded in bytes, so the hub's memory grows by a
//! bounded amount and falls again once the load is over. The bounds are loose (a debug build on a
//! shared machine) and catch unbounded buffering, which took the release hub to 423 MB under such
//! a load and left it at 103 MB after; the figures themselves come from `bench/run --only overload`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Hub, binary, init_tls};

/// VmRSS of `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// How far the hub may grow past its idle footprint under the load (measured here, debug build:
/// 34 to 35 MiB), and how far above it it may stay once the load is over (11 to 14 MiB, within
/// 45 s).
const MAX_GROWTH_MIB: f64 = 96.0;
const MAX_LEFT_AFTER_MIB: f64 = 24.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_devices_past_what_the_hub_commits_stay_within_bounded_memory() {
    init_tls();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), &[]);
    let pid = hub.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_mib(pid);

    // 1000 devices, 100 readings a second each: 100,000 a second offered, more than a debug hub
    // commits, for 15 s; each device keeps what is not acknowledged and sends it again.
    let mut sim = Command::new(binary("firmware-sim"))
        .args([
            "--broker",
            &hub.mqtt.unwrap().to_string(),
            "--prefix",
            "load-",
        ])
        .args(["--devices", "1000", "--rate", "100", "--duration", "15"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = idle;
    let started = Instant::now();
    while sim.try_wait().unwrap().is_none() {
        peak = peak.max(rss_mib(pid));
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "firmware-sim did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = sim.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    // Every reading the devices sent was acknowledged, so stored: the load was taken, not shed.
    assert_eq!(report["failed_devices"], 0, "{report}");
    assert!(report["published"].as_u64().unwrap() > 10_000, "{report}");
    assert_eq!(report["acked"], report["published"], "{report}");
    assert!(
        peak - idle < MAX_GROWTH_MIB,
        "the hub grew from {idle:.1} to {peak:.1} MiB under the load"
    );

    // Freed memory goes back to the system (the hub trims every 10 s).
    let mut after = rss_mib(pid);
    let calm = Instant::now();
    while after - idle >= MAX_LEFT_AFTER_MIB && calm.elapsed() < Duration::from_secs(45) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = rss_mib(pid);
    }
    assert!(
        after - idle < MAX_LEFT_AFTER_MIB,
        "the hub stayed at {after:.1} MiB after the load (idle before: {idle:.1} MiB, peak {peak:.1})"
    );
    eprintln!("RSS: idle {idle:.1} MiB, peak {peak:.1} MiB, after {after:.1} MiB");
    hub.stop();
}
