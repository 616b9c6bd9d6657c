//! A full disk, against the real binary: the hub's data directory on a small tmpfs, filled up while
//! paho-mqtt publishes at QoS 1 (it trusts only the PUBACK and sends again what has none).
//!
//! While full: nothing more is stored (so nothing acknowledged), every read route answers 200,
//! `/readyz` answers 503 with `"store": "disk_full"`, `/metrics` has
//! `hub_store_refusing{reason="disk_full"} 1`, `hub status` says it, and the log has a few WARN
//! lines and no ERROR. Once the filler is deleted: acks come back within seconds by themselves,
//! every reading is stored once, `/readyz` answers 200.
//!
//! Needs root, to mount the tmpfs. Skipped with a message elsewhere, but never under CI (which
//! runs as root): there a mount that fails is a failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::backup::hub_cli;
use crate::harness::{DEADLINE, Hub, check_every_reading_once, eventually};
use crate::metrics::scrape;
use crate::mqtt_door::paho_publisher;

/// Size of the tmpfs: room for the hub's first-run files and a small store, little more.
const TMPFS_SIZE: &str = "16m";

/// A tmpfs mounted for the test, unmounted (and its mount point removed) when dropped.
pub(crate) struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs at `dir`; `None` (with the reason) when this user may not mount.
    pub(crate) fn mount(dir: &Path) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs {
            dir: dir.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file there: detach it now, the kernel frees it after.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Whether a failed mount must fail the test: under CI, or as root.
pub(crate) fn must_mount() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    root || std::env::var_os("CI").is_some()
}

/// Fills the file system of `dir` with `dir/filler` until it has no room left.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    for chunk in [1 << 20, 4 << 10, 512] {
        let block = vec![0xa5u8; chunk];
        loop {
            match file.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }
    path
}

/// The readings of `device` the hub holds.
async fn stored(hub: &Hub, device: &str) -> u64 {
    let (status, body) = hub.get(&format!("/api/v1/devices/{device}")).await;
    match status {
        200 => body["counters"]["readings"].as_u64().unwrap_or(0),
        404 => 0,
        _ => panic!("GET /api/v1/devices/{device}: {status} {body}"),
    }
}

/// `/metrics` as text.
async fn metrics(hub: &Hub) -> String {
    let (status, text) = scrape(hub, &hub.token()).await;
    assert_eq!(status, 200, "/metrics: {text}");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_readings_keeps_reads_and_recovers_by_itself_when_room_comes_back() {
    let root = tempfile::tempdir().unwrap();
    // The hub's data on the tmpfs; its log stays outside, where there is room.
    let _tmpfs = match Tmpfs::mount(&root.path().join("hub-data")) {
        Ok(tmpfs) => tmpfs,
        Err(why) if !must_mount() => {
            eprintln!("SKIPPED a_full_disk_...: mounting a tmpfs needs root ({why})");
            return;
        }
        Err(why) => panic!("mounting a tmpfs failed (root, or CI): {why}"),
    };
    let hub = Hub::start(root.path(), &[]);
    let port = hub.mqtt_port();

    // Room: readings are stored and acknowledged.
    let (ok, out) = paho_publisher(port, "before0", 200, 1, 3).finish();
    assert!(
        ok,
        "readings before the disk is full were not all acknowledged: {out}"
    );

    let filler = fill(&hub.data);
    let count = 3_000u32;
    let during = paho_publisher(port, "during0", count, 1, 3);

    // Full: the hub says so, and stores nothing more.
    let problem = eventually("/readyz to say the disk is full", || async {
        let (status, body) = hub.get("/readyz").await;
        (status == 503 && body["store"] == "disk_full").then_some(body)
    })
    .await;
    assert_eq!(problem["ingest"], "ok", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("full"),
        "{problem}"
    );
    let held = stored(&hub, "during0").await;
    assert!(
        u64::from(count) > held,
        "every reading was stored before the disk filled: nothing was tested"
    );
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for path in [
            "/api/v1/devices/before0",
            "/api/v1/devices/before0/latest",
            "/api/v1/devices/before0/readings?limit=500",
            "/api/v1/devices",
            "/api/v1/sync/status",
        ] {
            let (status, body) = hub.get(path).await;
            assert_eq!(status, 200, "{path} while the disk is full: {body}");
        }
        let text = metrics(&hub).await;
        assert!(
            text.contains("hub_store_refusing{reason=\"disk_full\"} 1"),
            "{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, readings) = hub.get("/api/v1/devices/before0/readings?limit=500").await;
    assert_eq!(readings["readings"].as_array().unwrap().len(), 200);
    let (_, sync) = hub.get("/api/v1/sync/status").await;
    assert_eq!(sync["store"]["refusing_reason"], "disk_full", "{sync}");
    assert_eq!(
        stored(&hub, "during0").await,
        held,
        "readings were stored (and so acknowledged) while the disk was full"
    );
    let api = format!("127.0.0.1:{}", hub.api.port());
    let root_path = root.path().to_owned();
    let (ok, screen, err) =
        tokio::task::spawn_blocking(move || hub_cli(&root_path, &["status", "--api-listen", &api]))
            .await
            .unwrap();
    assert!(ok, "hub status: {err}");
    assert!(screen.contains("DISK FULL"), "{screen}");

    // Room again: the hub takes readings by itself, and the device gets its acks.
    std::fs::remove_file(&filler).unwrap();
    eventually("/readyz to answer 200 again", || async {
        let (status, body) = hub.get("/readyz").await;
        (status == 200 && body["store"] == "ok").then_some(())
    })
    .await;
    let (ok, out) = tokio::task::spawn_blocking(move || during.finish())
        .await
        .unwrap();
    assert!(
        ok,
        "readings were not all acknowledged once there was room: {out}"
    );
    check_every_reading_once(&hub, "during", 1, count).await;
    check_every_reading_once(&hub, "before", 1, 200).await;
    assert!(
        metrics(&hub)
            .await
            .contains("hub_store_refusing{reason=\"disk_full\"} 0")
    );

    let log = hub.log();
    let warns = log.lines().filter(|l| l.contains("WARN")).count();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "ERROR lines: {errors:#?}");
    assert!(warns <= 5, "{warns} WARN lines:\n{log}");
    let deadline = Instant::now() + DEADLINE;
    let status = hub.stop();
    assert!(status.success() && Instant::now() < deadline, "{status}");
}
