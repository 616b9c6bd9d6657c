//! `(device, boot, seq)` identifies a reading: a device whose counter starts again at every reboot
//! sends a new boot and loses nothing, and the hub's own numbers for readings without a seq never
//! mix with a device's seqs.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::{
    Hub, Sim, Subscriber, binary, eventually, mosquitto_pub, mosquitto_pub_lines, wait_for_readings,
};

/// Every reading of `device`, oldest first.
async fn readings(hub: &Hub, device: &str) -> Vec<Value> {
    let (status, body) = hub
        .get(&format!(
            "/api/v1/devices/{device}/readings?order=oldest&limit=1000"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    body["readings"].as_array().expect("readings").clone()
}

/// The (boot, seq) of each reading, sorted; checks that none is there twice.
fn ids(readings: &[Value]) -> Vec<(Option<u64>, u64)> {
    let mut ids: Vec<(Option<u64>, u64)> = readings
        .iter()
        .map(|r| (r["boot"].as_u64(), r["seq"].as_u64().expect("a seq")))
        .collect();
    ids.sort();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "two readings share (boot, seq)");
    ids
}

/// One firmware-sim run of device `{prefix}0` on `transport`, 50 readings, in `boot`; it must end
/// with every reading acknowledged.
fn run_sim(hub: &Hub, transport: &str, prefix: &str, boot: u32) {
    let child = Command::new(binary("firmware-sim"))
        .args(["--broker", &format!("127.0.0.1:{}", hub.mqtt_port())])
        .args(["--transport", transport, "--prefix", prefix])
        .args([
            "--count",
            "50",
            "--rate",
            "200",
            "--boot",
            &boot.to_string(),
        ])
        .args(["--ack-timeout", "1", "--drain-timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start firmware-sim");
    let (ok, output) = Sim::from_child(child).wait();
    assert!(
        ok,
        "boot {boot}: not every reading was acknowledged:\n{output}\nhub log:\n{}",
        hub.log()
    );
    let summary: Value =
        serde_json::from_str(output.lines().next().unwrap_or_default()).expect("the summary line");
    assert_eq!(summary["acked"], 50, "{summary}");
}

/// A device that keeps no counter: firmware-sim runs twice, its seqs from 0 each time, with a new
/// boot. All 50 new readings are stored (none taken for a duplicate of the first run), for a JSON
/// and for a binary device.
#[tokio::test(flavor = "multi_thread")]
async fn a_rebooted_device_that_starts_its_seqs_again_loses_none_of_its_new_readings() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    for (transport, prefix) in [("json", "reboot-j"), ("binary", "reboot-b")] {
        let device = format!("{prefix}0");
        run_sim(&hub, transport, prefix, 1);
        wait_for_readings(&hub, &device, 50).await;
        run_sim(&hub, transport, prefix, 2);
        wait_for_readings(&hub, &device, 100).await;
        let ids = ids(&readings(&hub, &device).await);
        let expected: Vec<(Option<u64>, u64)> = [1, 2]
            .into_iter()
            .flat_map(|boot| (0..50).map(move |seq| (Some(boot), seq)))
            .collect();
        assert_eq!(ids, expected, "{device}: 50 of 50 new readings stored");
        let (_, detail) = hub.get(&format!("/api/v1/devices/{device}")).await;
        assert_eq!(detail["counters"]["boot"], 2, "{detail}");
        assert_eq!(detail["counters"]["last_seq"], 49, "{detail}");
    }
}

/// A JSON device that sends `"boot"`: after its reboot, seqs 0 to 49 again, all stored, and the
/// acks name the boot they are for. A late retransmission of the first boot is still recognised.
#[tokio::test(flavor = "multi_thread")]
async fn a_json_device_that_sends_its_boot_keeps_every_reading_across_a_reboot() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let port = hub.mqtt_port();
    let acks = Subscriber::start(port, "devices/boots/ack");
    let reading =
        |boot: u32, seq: u32| format!(r#"{{"seq":{seq},"boot":{boot},"metrics":{{"v":{seq}}}}}"#);
    for boot in [11, 12] {
        let lines: Vec<String> = (0..50).map(|seq| reading(boot, seq)).collect();
        mosquitto_pub_lines(port, "devices/boots/telemetry", &lines, 1);
    }
    wait_for_readings(&hub, "boots", 100).await;
    let ids = ids(&readings(&hub, "boots").await);
    assert_eq!(ids.len(), 100);
    // The device of boot 12 is told of its own boot; a retransmission of boot 11 gets boot 11's.
    eventually("acks for both boots", || async {
        mosquitto_pub(
            port,
            "devices/boots/telemetry",
            reading(12, 49).as_bytes(),
            1,
        );
        mosquitto_pub(
            port,
            "devices/boots/telemetry",
            reading(11, 3).as_bytes(),
            1,
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let said = acks.json_acks();
        let of = |boot| said.iter().any(|a| a.boot == Some(boot) && a.seq == 49);
        (of(11) && of(12)).then_some(())
    })
    .await;
    let (_, detail) = hub.get("/api/v1/devices/boots").await;
    assert_eq!(detail["counters"]["readings"], 100, "{detail}");
    assert!(
        detail["counters"]["duplicates"].as_u64() >= Some(2),
        "{detail}"
    );
}

/// `{"seq":1}`, `{"t":2}` (no seq: the hub numbers it), `{"seq":2}`: the hub's number lives
/// apart, so no two readings share a seq.
#[tokio::test(flavor = "multi_thread")]
async fn hub_numbers_never_mix_with_a_device_s_own_seqs() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let port = hub.mqtt_port();
    let lines = [
        r#"{"seq":1,"metrics":{"t":1}}"#.to_owned(),
        r#"{"t":2}"#.to_owned(),
        r#"{"seq":2,"metrics":{"t":3}}"#.to_owned(),
    ];
    mosquitto_pub_lines(port, "devices/mixed/telemetry", &lines, 1);
    wait_for_readings(&hub, "mixed", 3).await;
    let readings = readings(&hub, "mixed").await;
    let seqs: Vec<Option<u64>> = readings.iter().map(|r| r["seq"].as_u64()).collect();
    assert_eq!(seqs, [Some(1), None, Some(2)], "{readings:?}");
    let unnumbered = &readings[1];
    assert_eq!(unnumbered["hub_seq"], 0, "{unnumbered}");
    assert_eq!(unnumbered["metrics"]["t"], 2);
    assert!(readings[0].get("hub_seq").is_none() && readings[0].get("boot").is_none());
    // The same in the export, where a reading without seq has an empty seq column.
    let csv = hub
        .client()
        .get(hub.url("/api/v1/devices/mixed/readings?format=csv&order=oldest"))
        .bearer_auth(hub.token())
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("csv");
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let numbers: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r[2], r[3], r[4])).collect();
    assert_eq!(
        numbers,
        [("", "1", ""), ("", "", "0"), ("", "2", "")],
        "{csv}"
    );
    // The hub's numbers go on from its own last one, and leave the device's last seq alone.
    mosquitto_pub(port, "devices/mixed/telemetry", br#"{"t":4}"#, 1);
    wait_for_readings(&hub, "mixed", 4).await;
    let (_, detail) = hub.get("/api/v1/devices/mixed").await;
    assert_eq!(detail["counters"]["last_seq"], 2, "{detail}");
    let readings = self::readings(&hub, "mixed").await;
    assert_eq!(readings[3]["hub_seq"], 1, "{readings:?}");
}
