//! Ingest end to end: firmware-sim devices, and bad input that is counted, logged and skipped.

use std::process::Command;

use crate::harness::{Hub, binary, eventually, mosquitto_pub};

#[tokio::test(flavor = "multi_thread")]
async fn every_reading_of_every_simulated_device_is_stored_once_with_its_seq() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let (devices, count) = (8, 60);
    let out = Command::new(binary("firmware-sim"))
        .args(["--broker", &format!("127.0.0.1:{}", hub.mqtt_port())])
        .args([
            "--devices",
            &devices.to_string(),
            "--count",
            &count.to_string(),
            "--rate",
            "200",
            "--prefix",
            "sim-",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "firmware-sim: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["published"], devices * count);

    for d in 0..devices {
        let path = format!("/api/v1/devices/sim-{d}/readings?order=oldest&limit=1000");
        let readings = eventually(&format!("all readings of sim-{d}"), || async {
            let (status, body) = hub.get(&path).await;
            let list = body["readings"].as_array()?.clone();
            (status == 200 && list.len() >= count as usize).then_some(list)
        })
        .await;
        let mut seqs: Vec<u64> = readings
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        seqs.sort();
        assert_eq!(
            seqs,
            (0..count).collect::<Vec<_>>(),
            "sim-{d}: each seq once"
        );
        for r in &readings {
            let m = &r["metrics"];
            let t = m["temperature"].as_f64().unwrap();
            assert!((-20.0..=50.0).contains(&t), "{m}");
            assert!(
                m["humidity"].is_f64() && m["battery"].is_f64() && m["door"].is_boolean(),
                "{m}"
            );
        }
    }
    let (_, list) = hub.get("/api/v1/devices?limit=100").await;
    assert_eq!(list["devices"].as_array().unwrap().len(), devices as usize);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_counted_logged_and_skipped_and_the_hub_keeps_going() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let port = hub.mqtt_port();
    let oversized = format!(r#"{{"blob":"{}"}}"#, "x".repeat(20 * 1024));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("devices/d1/telemetry", b"{not json".to_vec(), "bad_payload"),
        ("devices/d1/telemetry", b"[1,2,3]".to_vec(), "bad_payload"),
        ("devices/d1/telemetry", b"42".to_vec(), "bad_payload"),
        (
            "devices/d1/telemetry",
            br#"{"a":{"nested":1}}"#.to_vec(),
            "bad_payload",
        ),
        (
            "devices/d1/telemetry",
            br#"{"bad name!":1}"#.to_vec(),
            "bad_payload",
        ),
        ("devices/d1/telemetry", oversized.into_bytes(), "too_large"),
        (
            "devices/no spaces allowed/telemetry",
            br#"{"a":1}"#.to_vec(),
            "bad_device_id",
        ),
        (
            "devices/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/telemetry",
            br#"{"a":1}"#.to_vec(),
            "bad_device_id",
        ),
    ];
    for (topic, payload, _) in &cases {
        mosquitto_pub(port, topic, payload, 1);
    }
    // A good reading after all of them still arrives.
    mosquitto_pub(port, "devices/d1/telemetry", br#"{"ok":1}"#, 1);
    let body = eventually("the good reading", || async {
        let (status, body) = hub.get("/api/v1/devices/d1/readings").await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(
        body["readings"].as_array().unwrap().len(),
        1,
        "only the good one is stored: {body}"
    );
    assert_eq!(body["readings"][0]["metrics"]["ok"], 1);
    let (_, devices) = hub.get("/api/v1/devices").await;
    assert_eq!(
        devices["devices"].as_array().unwrap().len(),
        1,
        "no device made from bad input"
    );

    let log = hub.log();
    for reason in ["bad_payload", "too_large", "bad_device_id"] {
        assert!(
            log.contains(&format!("reason=\"{reason}\"")),
            "no log line for {reason}:\n{log}"
        );
    }
    // Lines are limited to one a second per reason, so only the first bad payload's detail shows.
    assert!(
        log.contains("payload is not JSON"),
        "the log says why:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(hub.stop().success());
}
