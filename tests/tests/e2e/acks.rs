//! Devices are told what is durable: JSON devices that send `seq` get `{"seq":n}` on
//! `devices/{id}/ack`; binary devices get `TimeSync` after `Hello` and a cumulative `Ack` on
//! `devices/{id}/down`. Retransmissions are stored once and answered again.

use device_protocol::{Downlink, Field, Fields, Hello, PROTOCOL_VERSION, Telemetry, Uplink, Value};

use crate::harness::{Hub, Subscriber, eventually, mosquitto_pub};

#[tokio::test(flavor = "multi_thread")]
async fn json_devices_get_cumulative_acks_and_retransmissions_are_stored_once() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let port = hub.mqtt_port();
    let acks = Subscriber::start(port, "devices/j1/ack");
    for seq in [0, 1, 2, 4, 3] {
        let payload = format!(r#"{{"seq":{seq},"metrics":{{"v":{seq}}}}}"#);
        mosquitto_pub(port, "devices/j1/telemetry", payload.as_bytes(), 1);
    }
    // The subscription may have started after the first acks: a retransmission is always answered.
    eventually("an ack covering seq 4", || async {
        mosquitto_pub(
            port,
            "devices/j1/telemetry",
            br#"{"seq":4,"metrics":{"v":4}}"#,
            1,
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        acks.payloads()
            .iter()
            .any(|p| p == br#"{"seq":4}"#)
            .then_some(())
    })
    .await;
    // Acks never claim a seq before it is stored: while 3 was missing, no ack said 3 or 4.
    let said: Vec<String> = acks
        .payloads()
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let first_four = said.iter().position(|s| s == r#"{"seq":4}"#).unwrap();
    assert!(
        !said[..first_four].iter().any(|s| s == r#"{"seq":3}"#),
        "{said:?}"
    );

    let (_, device) = hub.get("/api/v1/devices/j1").await;
    assert_eq!(
        device["counters"]["readings"], 5,
        "each seq stored once: {device}"
    );
    let (_, body) = hub.get("/api/v1/devices/j1/readings?order=oldest").await;
    let seqs: Vec<u64> = body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
}

fn telemetry(seq: u32, value: f64) -> Vec<u8> {
    let mut readings = Fields::new();
    readings
        .push(Field {
            name: "temp",
            value: Value::F64(value),
        })
        .unwrap();
    Uplink::Telemetry(Telemetry {
        seq,
        timestamp_ms: Some(1_795_255_200_000 + u64::from(seq)),
        readings,
        boot: None,
    })
    .to_vec()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_devices_get_time_sync_and_acks_on_their_down_topic() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let port = hub.mqtt_port();
    let down = Subscriber::start(port, "devices/b1/down");
    let hello = Uplink::Hello(Hello {
        device_id: "b1",
        firmware: "fw-1.4",
        protocol_version: PROTOCOL_VERSION,
        boot: None,
    })
    .to_vec()
    .unwrap();
    eventually("a time sync after hello", || async {
        mosquitto_pub(port, "devices/b1/up", &hello, 1);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        down.payloads()
            .iter()
            .any(|p| matches!(Downlink::decode(p), Ok(Downlink::TimeSync(_))))
            .then_some(())
    })
    .await;
    for seq in 0..3 {
        mosquitto_pub(
            port,
            "devices/b1/up",
            &telemetry(seq, f64::from(seq) + 0.5),
            1,
        );
    }
    eventually("ack 2", || async {
        mosquitto_pub(port, "devices/b1/up", &telemetry(2, 2.5), 1);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        down.payloads()
            .iter()
            .any(|p| matches!(Downlink::decode(p), Ok(Downlink::Ack(a)) if a.seq == 2))
            .then_some(())
    })
    .await;
    let (_, device) = hub.get("/api/v1/devices/b1").await;
    assert_eq!(device["firmware"], "fw-1.4");
    assert_eq!(device["counters"]["readings"], 3, "{device}");
    let (_, latest) = hub.get("/api/v1/devices/b1/latest").await;
    assert_eq!(latest["metrics"]["temp"]["value"], 2.5);
    assert_eq!(latest["metrics"]["temp"]["ts"], "2026-11-21T10:00:00.002Z");

    // A Hello naming another device on b1's topic, and garbage, are skipped and counted.
    let other = Uplink::Hello(Hello {
        device_id: "b2",
        firmware: "x",
        protocol_version: 1,
        boot: None,
    })
    .to_vec()
    .unwrap();
    mosquitto_pub(port, "devices/b1/up", &other, 1);
    mosquitto_pub(port, "devices/b1/up", b"\xff\xfe\xfd", 1);
    eventually("both skipped with a reason in the log", || async {
        let log = hub.log();
        (log.contains("Hello names another device")
            && log.matches("reason=\"bad_payload\"").count() >= 1)
            .then_some(())
    })
    .await;
    let (status, _) = hub.get("/api/v1/devices/b2").await;
    assert_eq!(status, 404);
}
