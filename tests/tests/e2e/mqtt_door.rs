//! The MQTT door, against the real binary and stock MQTT clients: a PUBACK (QoS 1) or PUBREC
//! (QoS 2) from the hub's own endpoint means durable.
//!
//! - paho-mqtt (tests/py/paho_publisher.py) trusts only the PUBACK: it sends again only what was
//!   never acknowledged. The hub is SIGKILLed 20 times meanwhile. Every acknowledged reading must
//!   be stored, none twice.
//! - A QoS 0 flood from mosquitto_pub: the endpoint stops reading instead of dropping, so every
//!   reading published is stored or counted as dropped (published - stored == the counter).
//! - A persistent session: a command queued while its device is away reaches it when it
//!   reconnects with `clean_session = false`, once; it stays `pending` until the device
//!   acknowledges it, so a kill -9 of the hub meanwhile does not lose it. A thousand paho devices
//!   (tests/py/paho_fleet.py) get their commands that way across a kill -9.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{
    DEADLINE, Hub, check_every_reading_once, eventually, free_port, python_peer, restartable,
};

/// Kills the child when dropped, so a failing test leaves no publisher behind.
pub(crate) struct Peer(Option<Child>);

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Peer {
    /// Waits for it to end; its success and stdout.
    pub(crate) fn finish(mut self) -> (bool, String) {
        let child = self.0.take().unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

pub(crate) fn paho_publisher(port: u16, device: &str, count: u32, qos: u8, version: u8) -> Peer {
    paho_publisher_with(port, device, count, qos, version, &[])
}

/// [`paho_publisher`] with variables in its environment (`PAHO_FORM=tasmota`: a Tasmota device).
pub(crate) fn paho_publisher_with(
    port: u16,
    device: &str,
    count: u32,
    qos: u8,
    version: u8,
    env: &[(&str, &str)],
) -> Peer {
    let child = python_peer("paho_publisher.py")
        .envs(env.iter().copied())
        .args([
            "127.0.0.1",
            &port.to_string(),
            device,
            &count.to_string(),
            &qos.to_string(),
            "50",
            "240",
            &version.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python with paho-mqtt (tests/run makes the venv)");
    Peer(Some(child))
}

/// paho publishes readings at `qos` in MQTT `version` while the hub is killed and restarted
/// `kills` times; then every reading is stored once.
async fn kill_loop(qos: u8, version: u8, kills: u32) {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let mqtt = format!("127.0.0.1:{port}");
    let base = restartable("--mqtt-listen", &mqtt);
    let hub = Hub::start_in(root.path(), &base, &[]);
    // Enough readings that paho is still publishing when the last kill comes (each kill waits
    // for 200 more).
    let (devices, count) = (2u32, 40_000u32);
    let prefix = format!("paho-v{version}-q{qos}-");
    let publishers: Vec<Peer> = (0..devices)
        .map(|d| paho_publisher(port, &format!("{prefix}{d}"), count, qos, version))
        .collect();
    let seed = 0x9e37_79b9_u64 ^ u64::from(qos);
    let hub = kill_while_flowing(root.path(), &base, hub, (&prefix, devices), kills, seed).await;
    for publisher in publishers {
        let (ok, out) = publisher.finish();
        assert!(ok, "paho did not get every reading acknowledged: {out}");
        let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        eprintln!("paho at QoS {qos}: {report}");
        // The kills came while it published: it had to connect again and again.
        assert!(
            report["connections"].as_u64().unwrap() > u64::from(kills / 2),
            "the kills missed the publishing: {report}"
        );
    }
    check_every_reading_once(&hub, &prefix, devices, count).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_puback_means_durable_through_20_kill_9s_at_qos_1() {
    kill_loop(1, 3, 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pubrec_means_durable_through_20_kill_9s_at_qos_2() {
    kill_loop(2, 3, 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_puback_means_durable_in_mqtt_5_too() {
    kill_loop(1, 5, 6).await;
}

/// Kills the hub with SIGKILL `kills` times and starts it again on `base`, each kill coming while
/// readings flow: after at least 200 more readings of devices `{prefix}0..devices` were stored
/// since the last start, and a moment chosen from `seed`.
pub(crate) async fn kill_while_flowing(
    root: &std::path::Path,
    base: &[&str],
    mut hub: Hub,
    (prefix, devices): (&str, u32),
    kills: u32,
    mut seed: u64,
) -> Hub {
    for _ in 0..kills {
        let before = stored(&hub, prefix, devices).await;
        eventually("readings flowing before the next kill", || async {
            (stored(&hub, prefix, devices).await >= before + 200).then_some(())
        })
        .await;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 100));
        hub.kill9();
        hub = Hub::start_in(root, base, &[]);
    }
    hub
}

/// Readings stored of devices `{prefix}0..devices`.
pub(crate) async fn stored(hub: &Hub, prefix: &str, devices: u32) -> u64 {
    let mut total = 0;
    for d in 0..devices {
        let (_, body) = hub.get(&format!("/api/v1/devices/{prefix}{d}")).await;
        total += body["counters"]["readings"].as_u64().unwrap_or(0);
    }
    total
}

/// The value of a counter sample in the `/metrics` text.
async fn metric(hub: &Hub, sample: &str) -> f64 {
    let (status, text) = crate::metrics::scrape(hub, &hub.token()).await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{sample} missing from /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qos_0_flood_is_stored_or_counted_never_dropped_unseen() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let count = 20_000u32;
    let lines: String = (0..count)
        .map(|i| format!("{{\"seq\":{i},\"metrics\":{{\"v\":{i}}}}}\n"))
        .collect();
    let mut flood = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &hub.mqtt_port().to_string()])
        .args(["-t", "devices/flood-0/telemetry", "-q", "0", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_pub");
    {
        use std::io::Write;
        let mut stdin = flood.stdin.take().unwrap();
        stdin.write_all(lines.as_bytes()).unwrap();
    }
    assert!(flood.wait().unwrap().success());
    // Settled: what is stored plus what was counted as dropped is every reading published.
    let dropped_sample = "hub_ingest_dropped_total{transport=\"mqtt\",reason=\"commit_failed\"}";
    let (stored, dropped) = eventually("every flooded reading stored or counted", || async {
        let (_, body) = hub.get("/api/v1/devices/flood-0").await;
        let stored = body["counters"]["readings"].as_u64().unwrap_or(0);
        let dropped = metric(&hub, dropped_sample).await as u64;
        (stored + dropped == u64::from(count)).then_some((stored, dropped))
    })
    .await;
    eprintln!("QoS 0 flood: {count} published, {stored} stored, {dropped} dropped");
    // Nothing failed here, so back-pressure, not dropping, held the flood: all stored.
    assert_eq!(dropped, 0);
    check_every_reading_once(&hub, "flood-", 1, count).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_for_a_device_away_waits_in_its_persistent_session() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let port = hub.mqtt_port().to_string();
    // The device subscribes in a persistent session and goes away.
    let subscribe = |extra: &[&str]| {
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-i",
                "away-1",
                "-c",
                "-q",
                "1",
            ])
            .args(["-t", "devices/away-1/commands"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub")
    };
    let first = Peer(Some(subscribe(&["-W", "1"])));
    let _ = first.finish();
    // It is online (a reading), then a command is queued for it while it is disconnected.
    crate::harness::mosquitto_pub(
        hub.mqtt_port(),
        "devices/away-1/telemetry",
        br#"{"metrics":{"v":1}}"#,
        1,
    );
    crate::harness::wait_for_readings(&hub, "away-1", 1).await;
    let (status, body) = hub
        .send(
            reqwest::Method::POST,
            "/api/v1/devices/away-1/commands",
            Some(&serde_json::json!({"name": "reboot", "args": {}})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_u64().unwrap();
    // Handed to the device's session, not delivered: the device has not acknowledged it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, body) = hub
        .get(&format!("/api/v1/devices/away-1/commands/{id}"))
        .await;
    assert_eq!(body["state"], "pending", "{body}");
    // Back with the same client id and no clean session: the command arrives, once.
    let back = Peer(Some(subscribe(&[
        "-C",
        "1",
        "-W",
        &DEADLINE.as_secs().to_string(),
    ])));
    let (ok, out) = back.finish();
    assert!(ok, "the queued command did not arrive: {out}");
    let command: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(command["id"], id);
    assert_eq!(command["name"], "reboot");
    eventually(
        "the command delivered once the device acknowledged it",
        || async {
            let (_, body) = hub
                .get(&format!("/api/v1/devices/away-1/commands/{id}"))
                .await;
            (body["state"] == "delivered").then_some(())
        },
    )
    .await;
}

/// Runs the paho fleet (tests/py/paho_fleet.py) in `mode` for `count` devices `{prefix}NNNN`;
/// its JSON report.
fn paho_fleet(mode: &str, port: u16, prefix: &str, count: u32) -> serde_json::Value {
    let child = python_peer("paho_fleet.py")
        .args([
            mode,
            "127.0.0.1",
            &port.to_string(),
            prefix,
            &count.to_string(),
            "240",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python with paho-mqtt (tests/run makes the venv)");
    let (ok, out) = Peer(Some(child)).finish();
    let report: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("paho_fleet {mode} printed {out:?}: {e}"));
    assert!(ok, "paho_fleet {mode} fell short: {report}");
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_persistent_sessions_get_their_queued_commands_across_a_kill_9() {
    const DEVICES: u32 = 1000;
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let mqtt = format!("127.0.0.1:{port}");
    let base = restartable("--mqtt-listen", &mqtt);
    let hub = Hub::start_in(root.path(), &base, &[]);
    // A thousand devices subscribe in persistent sessions, report once and go away.
    let enrolled = paho_fleet("enrol", port, "fleet-", DEVICES);
    assert_eq!(enrolled["enrolled"], DEVICES);
    // A command for each, handed to its waiting session (the device counts as online: it just
    // reported).
    let mut ids = Vec::new();
    for d in 0..DEVICES {
        let command = serde_json::json!({"name": "blink", "args": {"n": d}});
        let path = format!("/api/v1/devices/fleet-{d:04}/commands");
        let (status, body) = loop {
            match hub.send(reqwest::Method::POST, &path, Some(&command)).await {
                // Over the token's request rate (100/s by default): wait as a client would.
                (429, _) => tokio::time::sleep(Duration::from_millis(200)).await,
                answer => break answer,
            }
        };
        assert_eq!(status, 202, "{body}");
        ids.push((d, body["id"].as_u64().unwrap()));
    }
    // No device acknowledged its command: every one is still pending.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (d, id) in ids.iter().step_by(97) {
        let (_, body) = hub
            .get(&format!("/api/v1/devices/fleet-{d:04}/commands/{id}"))
            .await;
        assert_eq!(body["state"], "pending", "{body}");
    }
    // The hub dies with every command sitting in a session that lived only in its memory.
    hub.kill9();
    let hub = Hub::start_in(root.path(), &base, &[]);
    let served = paho_fleet("serve", port, "fleet-", DEVICES);
    eprintln!("paho fleet after the kill: {served}");
    assert_eq!(served["devices_served"], DEVICES);
    for (d, id) in &ids {
        eventually("each command answered by its device", || async {
            let (_, body) = hub
                .get(&format!("/api/v1/devices/fleet-{d:04}/commands/{id}"))
                .await;
            (body["state"] == "succeeded").then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_uplink_is_counted_whether_the_hub_reads_it_or_closes_on_it() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let port = hub.mqtt_port();
    // Over ingest.max_payload (16 KiB) but within the listener's packet limit: read, counted,
    // acknowledged so the device goes on.
    crate::harness::mosquitto_pub(port, "devices/big-1/up", &vec![0u8; 100 << 10], 1);
    // Over the listener's packet limit (1 MiB): the connection cannot go on, but it is counted.
    let _ = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "devices/big-1/up", "-q", "1", "-s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(&vec![0u8; 2 << 20]);
            drop(stdin);
            child.wait()
        });
    let sample = "hub_ingest_messages_total{transport=\"mqtt\",outcome=\"too_large\"}";
    eventually("both oversized uplinks counted", || async {
        (metric(&hub, sample).await == 2.0).then_some(())
    })
    .await;
    // The hub goes on: a reading after them is stored.
    crate::harness::mosquitto_pub(
        port,
        "devices/big-1/telemetry",
        br#"{"metrics":{"v":1}}"#,
        1,
    );
    crate::harness::wait_for_readings(&hub, "big-1", 1).await;
}
