//! The crash test: the hub is killed with SIGKILL at random moments while simulated devices send,
//! and restarted on the same ports and data. The devices keep an outbox and retransmit whatever the
//! hub has not acknowledged. After the last restart, every device must have every reading it
//! produced stored exactly once: nothing acknowledged lost, nothing stored twice.
//!
//! `CRASH_KILLS` sets the number of kills (default 20); `tests/soak` runs it with many more.

use std::time::{Duration, Instant};

use crate::harness::{Hub, Mosquitto, Sim, check_every_reading_once, free_port, restartable};

/// A small deterministic generator, seeded from the clock and printed, so a failure can be rerun.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn kills() -> u32 {
    env_number("CRASH_KILLS", 20)
}

/// Readings per device: enough that the devices are still sending when the last kill comes
/// (`tests/soak` raises it with the number of kills).
fn count(default: u32) -> u32 {
    env_number("CRASH_COUNT", default)
}

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Kills and restarts the hub at random moments until every simulator has finished.
fn kill_repeatedly(
    root: &std::path::Path,
    base: &[&str],
    mut hub: Hub,
    sims: &mut [&mut Sim],
    kills: u32,
) -> Hub {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test: seed {seed}, {kills} kills");
    let mut rng = Rng(seed);
    for k in 0..kills {
        std::thread::sleep(Duration::from_millis(50 + rng.below(450)));
        if sims.iter_mut().all(|s| !s.running()) {
            eprintln!("crash test: the devices finished after {k} kills");
            break;
        }
        hub.kill9();
        hub = Hub::start_in(root, base, &[]);
    }
    hub
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_ingest_loses_nothing_acknowledged_and_stores_nothing_twice() {
    let root = tempfile::tempdir().unwrap();
    let mqtt = format!("127.0.0.1:{}", free_port());
    let base = restartable("--mqtt-listen", &mqtt);
    let hub = Hub::start_in(root.path(), &base, &[]);
    let (json_devices, binary_devices, count) = (6, 4, count(400));
    let mut json = Sim::start(
        &mqtt,
        "json",
        "crash-json-",
        json_devices,
        count,
        &root.path().join("outbox-json"),
    );
    let mut bin = Sim::start(
        &mqtt,
        "binary",
        "crash-bin-",
        binary_devices,
        count,
        &root.path().join("outbox-bin"),
    );
    let hub = kill_repeatedly(root.path(), &base, hub, &mut [&mut json, &mut bin], kills());

    for (name, sim) in [("json", json), ("binary", bin)] {
        let (ok, output) = sim.wait();
        assert!(
            ok,
            "{name} devices did not get every reading acknowledged:\n{output}"
        );
    }
    check_every_reading_once(&hub, "crash-json-", json_devices, count).await;
    check_every_reading_once(&hub, "crash-bin-", binary_devices, count).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_behind_mosquitto_loses_nothing_and_stores_nothing_twice() {
    let root = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(root.path());
    let broker_url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let base = [
        "--api-listen",
        "127.0.0.1:0",
        "--mqtt-broker",
        broker_url.as_str(),
    ];
    let hub = Hub::start_in(root.path(), &base, &[]);
    let (devices, count) = (6, count(300));
    let broker = format!("127.0.0.1:{}", mosquitto.port);
    let mut sim = Sim::start(
        &broker,
        "json",
        "crash-ext-",
        devices,
        count,
        &root.path().join("outbox"),
    );
    let started = Instant::now();
    let hub = kill_repeatedly(root.path(), &base, hub, &mut [&mut sim], kills());
    let (ok, output) = sim.wait();
    assert!(
        ok,
        "devices did not get every reading acknowledged after {:?}:\n{output}",
        started.elapsed()
    );
    check_every_reading_once(&hub, "crash-ext-", devices, count).await;
}
