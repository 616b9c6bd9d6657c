//! The hub behind a real mosquitto: readings arrive through it, and QoS 1 messages published while
//! the hub is down are kept by the broker's persistent session and stored when the hub returns.

use crate::harness::{Hub, Mosquitto, eventually, mosquitto_pub};

#[tokio::test(flavor = "multi_thread")]
async fn readings_through_mosquitto_including_those_sent_while_the_hub_was_down() {
    let root = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(root.path());
    let broker = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let args = ["--mqtt-broker", broker.as_str()];
    let hub = Hub::start(root.path(), &args);
    assert!(
        hub.mqtt.is_none(),
        "no embedded broker when an external one is configured"
    );
    // Readiness follows the subscription.
    eventually("ready", || async {
        let (status, _) = hub.get("/readyz").await;
        (status == 200).then_some(())
    })
    .await;

    mosquitto_pub(
        mosquitto.port,
        "devices/ext-1/telemetry",
        br#"{"seq":1,"metrics":{"t":1}}"#,
        1,
    );
    eventually("the first reading", || async {
        let (status, body) = hub.get("/api/v1/devices/ext-1/readings").await;
        (status == 200 && body["readings"].as_array()?.len() == 1).then_some(())
    })
    .await;

    assert!(hub.stop().success());
    for seq in 2..=6 {
        let payload = format!(r#"{{"seq":{seq},"metrics":{{"t":{seq}}}}}"#);
        mosquitto_pub(
            mosquitto.port,
            "devices/ext-1/telemetry",
            payload.as_bytes(),
            1,
        );
    }
    let hub = Hub::start(root.path(), &args);
    let body = eventually("the readings sent while the hub was down", || async {
        let (_, body) = hub.get("/api/v1/devices/ext-1/readings?order=oldest").await;
        (body["readings"].as_array()?.len() >= 6).then_some(body)
    })
    .await;
    let seqs: Vec<u64> = body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hub_reconnects_when_mosquitto_restarts() {
    let root = tempfile::tempdir().unwrap();
    let mut mosquitto = Mosquitto::start(root.path());
    let broker = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let hub = Hub::start(root.path(), &["--mqtt-broker", broker.as_str()]);
    eventually("ready", || async {
        (hub.get("/readyz").await.0 == 200).then_some(())
    })
    .await;

    mosquitto.stop();
    eventually("not ready while the broker is gone", || async {
        let (status, body) = hub.get("/readyz").await;
        (status == 503 && body["detail"].as_str()?.contains("MQTT")).then_some(())
    })
    .await;
    mosquitto.restart();
    eventually("ready again", || async {
        (hub.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    mosquitto_pub(mosquitto.port, "devices/ext-2/telemetry", br#"{"t":2}"#, 1);
    eventually("a reading after the reconnect", || async {
        let (status, _) = hub.get("/api/v1/devices/ext-2").await;
        (status == 200).then_some(())
    })
    .await;
}
