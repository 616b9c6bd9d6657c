//! What a hostile tester broke, each against the real binary: a reader moving the cloud's
//! consumer, a device certificate acting as an API admin, slow or huge requests holding the API,
//! token expiries that never come, bare 414/431/308 answers, formulas in CSV exports, the device
//! ids `.` and `..`, and leap-second timestamps.

use crate::harness::{Hub, eventually, mosquitto_pub, wait_for_readings};

#[tokio::test(flavor = "multi_thread")]
async fn dot_ids_and_leap_seconds_are_refused_at_the_edge() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let port = hub.mqtt_port();
    mosquitto_pub(port, "devices/./telemetry", br#"{"t":1}"#, 1);
    mosquitto_pub(port, "devices/../telemetry", br#"{"t":1}"#, 1);
    mosquitto_pub(
        port,
        "devices/leap-1/telemetry",
        br#"{"seq":1,"ts":"2016-12-31T23:59:60Z","metrics":{"t":1}}"#,
        1,
    );
    mosquitto_pub(
        port,
        "devices/leap-1/telemetry",
        br#"{"seq":2,"ts":"2017-01-01T00:00:00Z","metrics":{"t":2}}"#,
        1,
    );
    wait_for_readings(&hub, "leap-1", 1).await;
    // The refusals are counted: two bad ids and one bad payload.
    let metric = |text: &str, reason: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("hub_ingest_messages_total")
                    && l.contains(&format!("outcome=\"{reason}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    };
    eventually("both ids and the leap second are refused", || async {
        let text = hub
            .client()
            .get(hub.url("/metrics"))
            .bearer_auth(hub.token())
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (metric(&text, "bad_device_id") >= 2 && metric(&text, "bad_payload") >= 1).then_some(())
    })
    .await;
    let (_, devices) = hub.get("/api/v1/devices").await;
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["leap-1"], "{devices}");
    let (_, readings) = hub.get("/api/v1/devices/leap-1/readings").await;
    let readings = readings["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 1, "{readings:?}");
    assert_eq!(readings[0]["seq"], 2);
    hub.stop();
}
