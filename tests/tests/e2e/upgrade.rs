//! A data directory written by the first release (store schema 2: tests/fixtures, made by
//! tests/fixtures/make-first-release-data) opens in this hub: the store is upgraded in place, and
//! its devices, readings, labels and tokens are all there; new readings follow the old ones.

use std::process::Command;

use crate::harness::{Hub, eventually, mosquitto_pub};

#[tokio::test(flavor = "multi_thread")]
async fn a_data_directory_of_the_first_release_opens_and_keeps_everything() {
    let root = tempfile::tempdir().unwrap();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/first-release-data.tar.gz");
    let unpacked = Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(root.path())
        .status()
        .unwrap();
    assert!(unpacked.success(), "tar xzf {}", fixture.display());
    let hub = Hub::start(root.path(), &[]);
    assert!(
        hub.log().contains("store upgraded") && hub.log().contains("from=2"),
        "{}",
        hub.log()
    );

    let (status, body) = hub.get("/api/v1/devices/greenhouse-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["counters"]["readings"], 20, "{body}");
    assert_eq!(body["labels"]["room"], "north", "{body}");
    let (status, page) = hub
        .get("/api/v1/devices/greenhouse-1/readings?limit=100&order=oldest")
        .await;
    assert_eq!(status, 200, "{page}");
    let readings = page["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 20, "{page}");
    for (i, reading) in readings.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(reading["seq"], seq, "{reading}");
        assert_eq!(
            reading["ts"],
            format!("2026-11-20T10:00:{seq:02}.000Z"),
            "{reading}"
        );
        let temp = reading["metrics"]["temp"].as_f64().unwrap();
        assert!(
            (temp - (20.0 + seq as f64 / 10.0)).abs() < 1e-9,
            "{reading}"
        );
    }
    let (status, page) = hub
        .get("/api/v1/devices/door-1/readings?order=oldest")
        .await;
    assert_eq!(status, 200, "{page}");
    let opens: Vec<_> = page["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metrics"]["open"].clone())
        .collect();
    assert_eq!(opens, [true, false, true]);

    // The old hub's tokens still open the API: the admin's (used above) and app-1's.
    let app = std::fs::read_to_string(root.path().join("app-1.token")).unwrap();
    let answer = hub
        .client()
        .get(hub.url("/api/v1/devices"))
        .bearer_auth(app.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);

    // A retransmission of an old reading is recognised; a new one follows the old offsets.
    let port = hub.mqtt_port();
    mosquitto_pub(
        port,
        "devices/greenhouse-1/telemetry",
        br#"{"seq":20,"ts":"2026-11-20T10:00:20Z","metrics":{"temp":22.0}}"#,
        1,
    );
    mosquitto_pub(
        port,
        "devices/greenhouse-1/telemetry",
        br#"{"seq":21,"metrics":{"temp":22.1}}"#,
        1,
    );
    let last = readings.last().unwrap()["offset"].as_u64().unwrap();
    eventually("the new reading", || async {
        let (_, page) = hub
            .get("/api/v1/devices/greenhouse-1/readings?limit=100&order=oldest")
            .await;
        let readings = page["readings"].as_array()?.clone();
        (readings.len() == 21).then_some(readings)
    })
    .await
    .last()
    .map(|r| assert!(r["offset"].as_u64().unwrap() > last, "{r}"))
    .unwrap();
    hub.stop();
}
