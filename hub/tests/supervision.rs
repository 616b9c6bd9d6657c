//! Every kind of task the hub runs is supervised: when one fails or panics (injected with the
//! `fault-injection` feature, `INJECT_FAULT_INTO`), the real `hub` binary says which at ERROR and
//! exits non-zero, so systemd restarts it; and without a fault it stops cleanly with 0.
#![cfg(feature = "fault-injection")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers may panic"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Longest a hub may take to start or to stop.
const DEADLINE: Duration = Duration::from_secs(60);

/// A configuration with every task of the embedded-broker hub: a sink, a serial line (whose
/// device is missing: it is looked for again and again), a Modbus bus (whose server does not
/// answer), retention, and Home Assistant discovery (whose broker does not answer).
const EMBEDDED: &str = r#"
[mqtt]
listen = "127.0.0.1:0"

[[serial]]
path = "/nonexistent/ttyUSB-for-supervision-test"

[[modbus]]
name = "plant"
transport = "tcp"
address = "127.0.0.1:9"

[[modbus.devices]]
id = "meter-1"
unit = 1
interval = "1s"
points = [{ name = "voltage", table = "input", address = 0, type = "f32" }]

[[sync.http]]
name = "cloud"
url = "http://127.0.0.1:9/ingest"

[homeassistant]
enabled = true
broker = "mqtt://127.0.0.1:9"
"#;

/// A hub behind an external broker (which does not answer: the client keeps trying).
const EXTERNAL: &str = r#"
[mqtt]
broker = "mqtt://127.0.0.1:9"
"#;

/// Starts the hub with `config`, faulting `fault`; returns its exit status and its log once it
/// has exited by itself, or after SIGTERM when it is still running `stop_after` past readiness.
fn run_hub(dir: &Path, config: &str, fault: &str, stop_after: Duration) -> (ExitStatus, String) {
    let config_path = dir.join("hub.toml");
    std::fs::write(
        &config_path,
        format!(
            "[data]\ndir = {:?}\n[api]\nlisten = \"127.0.0.1:0\"\n{config}",
            dir.join("data")
        ),
    )
    .unwrap();
    let log_path = dir.join(format!("hub-{}.log", fault.replace(':', "-")));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hub"))
        .arg("--config")
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .env("HUB_LOG__LEVEL", "info")
        .env("INJECT_FAULT_INTO", fault)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start hub");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let ready = stdout
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with("hub ready: "));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(ready, "the hub did not get ready:\n{}", log());
    let stop_at = Instant::now() + stop_after;
    let deadline = stop_at + DEADLINE;
    let mut stopped = false;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, log());
        }
        if !stopped && Instant::now() >= stop_at {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            stopped = true;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the hub did not exit:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_stops_for(config: &str, task: &str, how: &str) {
    let dir = tempfile::tempdir().unwrap();
    let fault = match how {
        "panic" => format!("{task}:panic"),
        _ => task.to_owned(),
    };
    // A supervised fault ends the hub long before the SIGTERM sent after this wait.
    let (status, log) = run_hub(dir.path(), config, &fault, Duration::from_secs(30));
    assert!(
        !status.success() && status.code().is_some(),
        "{fault}: the hub must exit non-zero, it ended with {status}:\n{log}"
    );
    let said = log.lines().any(|line| {
        line.contains("ERROR")
            && line.contains("a task stopped unexpectedly")
            && line.contains(&format!("task={task}"))
            && line.contains("fault injected")
    });
    assert!(said, "{fault}: no ERROR line naming the task:\n{log}");
}

#[test]
fn every_kind_of_task_that_fails_stops_the_hub_with_a_clear_error() {
    for task in [
        "store-writer",
        "mqtt-endpoint",
        "serial-ingest",
        "modbus-poller",
        "liveness",
        "command-dispatcher",
        "presence-sweep",
        "token-use",
        "sink-supervisor",
        "retention",
        "rules",
        "webhooks",
        "homeassistant",
        "reload",
        "api",
    ] {
        assert_stops_for(EMBEDDED, task, "error");
    }
    assert_stops_for(EXTERNAL, "mqtt-ingest", "error");
}

#[test]
fn a_panicking_task_stops_the_hub_too() {
    for task in ["store-writer", "api", "mqtt-endpoint"] {
        assert_stops_for(EMBEDDED, task, "panic");
    }
}

#[test]
fn without_a_fault_the_hub_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (status, log) = run_hub(dir.path(), EMBEDDED, "", Duration::from_millis(1500));
    assert!(status.success(), "ended with {status}:\n{log}");
    assert!(!log.contains("ERROR"), "{log}");
}
