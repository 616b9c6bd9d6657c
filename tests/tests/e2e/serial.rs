//! Serial devices end to end: the real hub reads device-protocol frames from a pseudo-terminal that
//! firmware-sim writes to, through line noise and a cable pulled and plugged in again.

use std::process::{Command, Stdio};

use crate::harness::{Hub, SerialCable, binary, check_every_reading_once, eventually};

#[tokio::test(flavor = "multi_thread")]
async fn serial_readings_survive_noise_and_an_unplugged_cable() {
    let root = tempfile::tempdir().unwrap();
    let mut cable = SerialCable::plug(root.path(), "tty0");
    let config = root.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[[serial]]\npath = \"{}\"\nsilence_timeout = \"5s\"\n",
            cable.hub.display()
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let hub = Hub::start(root.path(), &["--config", &config_arg]);

    let count = 400;
    let sim = Command::new(binary("firmware-sim"))
        .args([
            "--transport",
            "serial",
            "--prefix",
            "ser-",
            "--count",
            &count.to_string(),
        ])
        .args([
            "--rate",
            "100",
            "--noise",
            "0.1",
            "--ack-timeout",
            "1",
            "--drain-timeout",
            "60",
        ])
        .arg("--serial")
        .arg(&cable.device)
        .arg("--outbox")
        .arg(root.path().join("outbox"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sim = crate::harness::Sim::from_child(sim);

    eventually("readings over the serial line", || async {
        let (_, d) = hub.get("/api/v1/devices/ser-0").await;
        (d["counters"]["readings"].as_u64()? > 50).then_some(())
    })
    .await;
    // Pull the cable mid-stream and plug it in again: both sides reopen their ports.
    cable.unplug();
    std::thread::sleep(std::time::Duration::from_millis(500));
    cable.replug();

    let (ok, output) = sim.wait();
    assert!(
        ok,
        "not every reading was acknowledged:\n{output}\nhub log:\n{}",
        hub.log()
    );
    check_every_reading_once(&hub, "ser-", 1, count).await;
    let (_, device) = hub.get("/api/v1/devices/ser-0").await;
    assert_eq!(device["transport"], "serial");
    let log = hub.log();
    assert!(
        log.contains("reason=\"bad_frame\""),
        "noise is counted and logged:\n{log}"
    );
}
