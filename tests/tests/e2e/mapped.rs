//! Mapped MQTT topics (`[[mqtt.map]]`) against the real binary: Tasmota, Shelly Gen2 and
//! Zigbee2MQTT payloads (as their documentation shows them) published with mosquitto_pub through
//! the hub's own endpoint and through mosquitto; the JSON and value forms; a device name that is
//! no device id refused and counted, never changed; and acknowledged mapped readings kept through
//! kill -9s.

use serde_json::Value;

use crate::harness::{
    Hub, Mosquitto, eventually, free_port, hub_behind, metric, mosquitto_pub, restartable,
    write_config,
};
use crate::mqtt_door::{kill_while_flowing, paho_publisher_with};

/// The three presets; Zigbee2MQTT devices get the prefix `z2m-`.
const PRESETS: &str = r#"
[[mqtt.map]]
preset = "tasmota"

[[mqtt.map]]
preset = "shelly"

[[mqtt.map]]
preset = "zigbee2mqtt"
device_prefix = "z2m-"
"#;

const TASMOTA_ENERGY: &str = r#"{"Time":"2019-12-15T20:36:05","ENERGY":{"TotalStartTime":"2019-12-15T20:26:33","Total":0.003,"Yesterday":0.000,"Today":0.003,"Period":0,"Power":12,"ApparentPower":20,"ReactivePower":16,"Factor":0.60,"Voltage":231,"Current":0.087}}"#;
const TASMOTA_AM2301: &str = r#"{"Time":"2019-05-28T12:32:50","AM2301":{"Temperature":24.6,"Humidity":51.4},"TempUnit":"C"}"#;
const SHELLY_SWITCH: &str = r#"{"id":0, "source":"timer", "output":true, "apower":8.9, "voltage":237.5, "current":0.041, "aenergy":{"total":6.532,"by_minute":[45.199,47.141,88.397],"minute_ts":1654511972}, "temperature":{"tC":23.5, "tF":74.4}}"#;
const Z2M_WEATHER: &str = r#"{"battery":93,"humidity":47.8,"linkquality":147,"power_outage_count":4,"pressure":1005.5,"temperature":23.1,"voltage":2975,"power_on_behavior":null,"update":{"state":"idle"}}"#;

async fn device(hub: &Hub, id: &str) -> Value {
    eventually(&format!("device {id}"), || async {
        let (status, body) = hub.get(&format!("/api/v1/devices/{id}")).await;
        (status == 200).then_some(body)
    })
    .await
}

async fn latest(hub: &Hub, id: &str, metric: &str) -> Value {
    eventually(&format!("{id}'s latest {metric}"), || async {
        let (_, body) = hub.get(&format!("/api/v1/devices/{id}/latest")).await;
        let value = body["metrics"][metric]["value"].clone();
        (!value.is_null()).then_some(value)
    })
    .await
}

/// Publishes every preset's payloads to `port` (the hub's endpoint or mosquitto) and checks what
/// the API shows of them.
async fn presets_through(hub: &Hub, port: u16) {
    mosquitto_pub(
        port,
        "tele/tasmota_1A2B3C/SENSOR",
        TASMOTA_ENERGY.as_bytes(),
        1,
    );
    mosquitto_pub(
        port,
        "tele/tasmota_1A2B3C/SENSOR",
        TASMOTA_AM2301.as_bytes(),
        1,
    );
    mosquitto_pub(
        port,
        "shellyplus1pm-441793d69718/status/switch:0",
        SHELLY_SWITCH.as_bytes(),
        1,
    );
    mosquitto_pub(
        port,
        "zigbee2mqtt/0x00158d0001e1a2b3",
        Z2M_WEATHER.as_bytes(),
        1,
    );
    // A name that is no device id, and a payload that is not the preset's.
    mosquitto_pub(port, "zigbee2mqtt/Living Room", Z2M_WEATHER.as_bytes(), 1);
    mosquitto_pub(port, "tele/tasmota_1A2B3C/SENSOR", b"not json", 1);

    assert_eq!(latest(hub, "tasmota_1A2B3C", "ENERGY.Power").await, 12);
    assert_eq!(
        latest(hub, "tasmota_1A2B3C", "AM2301.Temperature").await,
        24.6
    );
    assert_eq!(
        latest(hub, "shellyplus1pm-441793d69718", "switch_0.apower").await,
        8.9
    );
    assert_eq!(
        latest(hub, "shellyplus1pm-441793d69718", "switch_0.output").await,
        true
    );
    assert_eq!(
        latest(hub, "z2m-0x00158d0001e1a2b3", "temperature").await,
        23.1
    );
    assert_eq!(
        latest(hub, "z2m-0x00158d0001e1a2b3", "update.state").await,
        "idle"
    );

    let tasmota = device(hub, "tasmota_1A2B3C").await;
    assert_eq!(tasmota["transport"], "mqtt", "{tasmota}");
    assert_eq!(tasmota["counters"]["readings"], 2, "{tasmota}");

    // History, downsampled too.
    let (status, body) = hub
        .get("/api/v1/devices/tasmota_1A2B3C/readings?metric=ENERGY.Voltage")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["readings"][0]["metrics"]["ENERGY.Voltage"], 231,
        "{body}"
    );
    let (_, body) = hub
        .get("/api/v1/devices/z2m-0x00158d0001e1a2b3/readings?metric=temperature&bucket=1m&agg=avg,count")
        .await;
    assert_eq!(body["buckets"][0]["count"], 1, "{body}");

    // The bad name is counted and no device was made of it; the bad payload too.
    eventually("the refusals counted", || async {
        let bad_id = metric(
            hub,
            "hub_mapped_messages_total",
            "outcome=\"bad_device_id\"",
        )
        .await;
        let bad_payload = metric(hub, "hub_mapped_messages_total", "outcome=\"bad_payload\"").await;
        (bad_id == 1.0 && bad_payload == 1.0).then_some(())
    })
    .await;
    let (_, list) = hub.get("/api/v1/devices").await;
    let mut ids: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "shellyplus1pm-441793d69718",
            "tasmota_1A2B3C",
            "z2m-0x00158d0001e1a2b3"
        ],
        "{list}"
    );
    assert_eq!(
        metric(hub, "hub_mapped_messages_total", "outcome=\"reading\"").await,
        4.0
    );

    // Status topics: Tasmota's last will says Offline when its connection drops.
    let client = WillHolder::connect(port, "tele/tasmota_1A2B3C/LWT", "Offline");
    client.vanish();
    eventually("tasmota offline by its last will", || async {
        let (_, d) = hub.get("/api/v1/devices/tasmota_1A2B3C").await;
        (d["online"] == false).then_some(())
    })
    .await;
    mosquitto_pub(port, "tele/tasmota_1A2B3C/LWT", b"Online", 1);
    eventually("tasmota online again", || async {
        let (_, d) = hub.get("/api/v1/devices/tasmota_1A2B3C").await;
        (d["online"] == true).then_some(())
    })
    .await;

    // The pull API carries them like any reading.
    let (_, page) = hub.get("/api/v1/sync/readings?limit=100").await;
    let pulled: Vec<&str> = page["readings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["device"].as_str())
        .collect();
    assert_eq!(
        pulled.iter().filter(|d| **d == "tasmota_1A2B3C").count(),
        2,
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn presets_with_real_payloads_through_the_embedded_endpoint() {
    let root = tempfile::tempdir().unwrap();
    let config = write_config(root.path(), PRESETS);
    let hub = Hub::start(root.path(), &["--config", &config]);
    presets_through(&hub, hub.mqtt_port()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn presets_with_real_payloads_through_mosquitto() {
    let root = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(root.path());
    let hub = hub_behind(root.path(), mosquitto.port, PRESETS).await;
    presets_through(&hub, mosquitto.port).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_form_with_fields_and_time_and_value_form() {
    let root = tempfile::tempdir().unwrap();
    let config = write_config(
        root.path(),
        r#"
[[mqtt.map]]
topic = "site/{room}/{device}/state"
payload = "json"
fields = ["env"]
ts_field = "at"
metric = "{room}"

[[mqtt.map]]
topic = "shellies/{device}/relay/{channel}/power"
payload = "value"
metric = "power.{channel}"
"#,
    );
    let hub = Hub::start(root.path(), &["--config", &config]);
    let port = hub.mqtt_port();
    mosquitto_pub(
        port,
        "site/cellar/th-1/state",
        br#"{"at":"2026-11-21T10:00:00Z","env":{"t":4.5,"rh":80},"rssi":-70}"#,
        1,
    );
    mosquitto_pub(port, "shellies/shelly1pm-1/relay/0/power", b"42.47", 1);

    let (_, body) = eventually("the stamped reading", || async {
        let (s, body) = hub.get("/api/v1/devices/th-1/readings").await;
        (body["readings"].as_array().is_some_and(|r| r.len() == 1)).then_some((s, body))
    })
    .await;
    let reading = &body["readings"][0];
    assert_eq!(reading["ts"], "2026-11-21T10:00:00.000Z", "{reading}");
    assert_eq!(reading["metrics"]["cellar.env.t"], 4.5, "{reading}");
    assert_eq!(reading["metrics"]["cellar.env.rh"], 80, "{reading}");
    assert!(reading["metrics"].get("cellar.rssi").is_none(), "{reading}");
    assert_eq!(latest(&hub, "shelly1pm-1", "power.0").await, 42.47);
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_mapped_readings_survive_kill_9() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let mqtt = format!("127.0.0.1:{port}");
    let config = write_config(root.path(), "[[mqtt.map]]\npreset = \"tasmota\"\n");
    let mut base = restartable("--mqtt-listen", &mqtt).to_vec();
    base.extend(["--config", config.as_str()]);
    let hub = Hub::start_in(root.path(), &base, &[]);
    let (devices, count) = (2u32, 6_000u32);
    let prefix = "tas-kill-";
    let publishers: Vec<_> = (0..devices)
        .map(|d| tasmota_publisher(port, &format!("{prefix}{d}"), count))
        .collect();
    let hub = kill_while_flowing(root.path(), &base, hub, (prefix, devices), 4, 0x5eed).await;
    for publisher in publishers {
        let (ok, out) = publisher.finish();
        assert!(ok, "paho did not get every reading acknowledged: {out}");
    }
    // Every acknowledged counter value is stored; a retransmission may be stored twice (mapped
    // devices send no seq), so only loss is a failure.
    for d in 0..devices {
        let id = format!("{prefix}{d}");
        let mut seen = vec![false; count as usize];
        let mut path = format!("/api/v1/devices/{id}/readings?order=oldest&limit=1000");
        loop {
            let (status, body) = hub.get(&path).await;
            assert_eq!(status, 200, "{body}");
            for r in body["readings"].as_array().unwrap() {
                let n = r["metrics"]["COUNTER.C1"].as_u64().unwrap() as usize;
                seen[n] = true;
            }
            match body["next_cursor"].as_str() {
                Some(c) => {
                    path =
                        format!("/api/v1/devices/{id}/readings?order=oldest&limit=1000&cursor={c}")
                }
                None => break,
            }
        }
        let lost: Vec<usize> = (0..count as usize).filter(|n| !seen[*n]).collect();
        assert!(
            lost.is_empty(),
            "{id}: acknowledged readings lost: {lost:?}"
        );
    }
}

/// An MQTT client (mosquitto_sub) connected with a last will, as Tasmota, Shelly and
/// Zigbee2MQTT always are; killed when dropped.
struct WillHolder(std::process::Child);

impl WillHolder {
    /// Connects and subscribes (to the commands Tasmota listens to); returns once subscribed.
    fn connect(port: u16, will_topic: &str, will_payload: &str) -> WillHolder {
        let (child, _lines) = crate::harness::mosquitto_sub_subscribed(
            port,
            &[
                "-t",
                "cmnd/tasmota_1A2B3C/#",
                "-q",
                "1",
                "--will-topic",
                will_topic,
                "--will-payload",
                will_payload,
                "--will-qos",
                "1",
            ],
        );
        WillHolder(child)
    }

    /// Drops the connection without a DISCONNECT (SIGKILL): its will is published.
    fn vanish(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WillHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// paho-mqtt publishing as a Tasmota device (tests/py/paho_publisher.py with PAHO_FORM=tasmota).
fn tasmota_publisher(port: u16, device: &str, count: u32) -> crate::mqtt_door::Peer {
    paho_publisher_with(port, device, count, 1, 3, &[("PAHO_FORM", "tasmota")])
}
