//! The maps with the presets' real payloads (in the shape their documentation shows), and the
//! configuration checks.

use super::*;
use device_protocol::OwnedValue;

fn maps(configs: &[TopicMapConfig]) -> TopicMaps {
    TopicMaps::compile(configs).unwrap()
}

fn preset_map(preset: MapPreset) -> TopicMaps {
    maps(&[TopicMapConfig {
        preset: Some(preset),
        ..TopicMapConfig::default()
    }])
}

fn reading(maps: &TopicMaps, topic: &str, payload: &str) -> NewReading {
    match maps.decode(topic, payload.as_bytes(), 16 << 10, 5) {
        Some(Ok(Mapped::Reading(r))) => r,
        other => panic!("{topic}: {other:?}"),
    }
}

fn refusal(maps: &TopicMaps, topic: &str, payload: &str) -> (Rejection, String) {
    match maps.decode(topic, payload.as_bytes(), 16 << 10, 5) {
        Some(Err(refused)) => refused,
        other => panic!("{topic}: {other:?}"),
    }
}

fn value(r: &NewReading, name: &str) -> OwnedValue {
    r.metrics
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.metrics))
}

fn status(maps: &TopicMaps, topic: &str, payload: &str) -> (String, bool) {
    match maps.decode(topic, payload.as_bytes(), 1024, 5) {
        Some(Ok(Mapped::Status(s))) => (s.device, s.online),
        other => panic!("{topic}: {other:?}"),
    }
}

#[test]
fn tasmota_sensor_and_lwt() {
    let m = preset_map(MapPreset::Tasmota);
    let r = reading(
        &m,
        "tele/tasmota_1A2B3C/SENSOR",
        r#"{"Time":"2019-12-15T20:36:05","ENERGY":{"TotalStartTime":"2019-12-15T20:26:33","Total":0.003,"Yesterday":0.000,"Today":0.003,"Period":0,"Power":12,"ApparentPower":20,"ReactivePower":16,"Factor":0.60,"Voltage":231,"Current":0.087}}"#,
    );
    assert_eq!(r.device, "tasmota_1A2B3C");
    assert_eq!(
        (r.transport, r.seq, r.timestamp_ms),
        (Transport::Mqtt, None, None)
    );
    assert_eq!(value(&r, "ENERGY.Power"), OwnedValue::I64(12));
    assert_eq!(value(&r, "ENERGY.Current"), OwnedValue::F64(0.087));
    assert!(
        !r.metrics.iter().any(|(n, _)| n == "Time"),
        "local time without a zone is skipped"
    );
    let r = reading(
        &m,
        "tele/tasmota_1A2B3C/SENSOR",
        r#"{"Time":"2019-05-28T12:32:50","AM2301":{"Temperature":24.6,"Humidity":51.4},"TempUnit":"C"}"#,
    );
    assert_eq!(value(&r, "AM2301.Temperature"), OwnedValue::F64(24.6));
    assert_eq!(value(&r, "TempUnit"), OwnedValue::Str("C".into()));
    assert_eq!(
        status(&m, "tele/tasmota_1A2B3C/LWT", "Offline"),
        ("tasmota_1A2B3C".into(), false)
    );
    assert!(status(&m, "tele/tasmota_1A2B3C/LWT", "Online").1);
    // Other Tasmota topics are not this map's.
    assert!(
        m.decode("tele/tasmota_1A2B3C/STATE", b"{}", 1024, 5)
            .is_none()
    );
}

#[test]
fn shelly_gen2_component_status_and_online() {
    let m = preset_map(MapPreset::Shelly);
    let r = reading(
        &m,
        "shellyplus1pm-441793d69718/status/switch:0",
        r#"{"id":0, "source":"timer", "output":true, "apower":8.9, "voltage":237.5, "current":0.041, "aenergy":{"total":6.532,"by_minute":[45.199,47.141,88.397],"minute_ts":1654511972}, "temperature":{"tC":23.5, "tF":74.4}}"#,
    );
    assert_eq!(r.device, "shellyplus1pm-441793d69718");
    assert_eq!(value(&r, "switch_0.apower"), OwnedValue::F64(8.9));
    assert_eq!(value(&r, "switch_0.output"), OwnedValue::Bool(true));
    assert_eq!(
        value(&r, "switch_0.aenergy.by_minute.2"),
        OwnedValue::F64(88.397)
    );
    assert_eq!(value(&r, "switch_0.temperature.tC"), OwnedValue::F64(23.5));
    assert_eq!(
        status(&m, "shellyplus1pm-441793d69718/online", "false"),
        ("shellyplus1pm-441793d69718".into(), false)
    );
}

#[test]
fn zigbee2mqtt_device_state_and_availability() {
    let m = preset_map(MapPreset::Zigbee2mqtt);
    let r = reading(
        &m,
        "zigbee2mqtt/0x00158d0001e1a2b3",
        r#"{"battery":93,"humidity":47.8,"linkquality":147,"power_outage_count":4,"pressure":1005.5,"temperature":23.1,"voltage":2975,"power_on_behavior":null,"update":{"state":"idle"}}"#,
    );
    assert_eq!(r.device, "0x00158d0001e1a2b3");
    assert_eq!(value(&r, "temperature"), OwnedValue::F64(23.1));
    assert_eq!(value(&r, "update.state"), OwnedValue::Str("idle".into()));
    assert!(!r.metrics.iter().any(|(n, _)| n == "power_on_behavior"));
    let availability = "zigbee2mqtt/0x00158d0001e1a2b3/availability";
    assert_eq!(
        status(&m, availability, r#"{"state":"offline"}"#),
        ("0x00158d0001e1a2b3".into(), false)
    );
    // The bridge's own topics are not a device's.
    assert!(
        m.decode(
            "zigbee2mqtt/bridge/state",
            b"{\"state\":\"online\"}",
            1024,
            5
        )
        .is_none()
    );
}

#[test]
fn a_name_that_is_no_device_id_is_refused_never_changed() {
    let m = preset_map(MapPreset::Zigbee2mqtt);
    let (reason, detail) = refusal(&m, "zigbee2mqtt/Living Room", r#"{"temperature":20}"#);
    assert_eq!(reason, Rejection::BadDeviceId);
    assert!(detail.contains("Living Room"), "{detail}");
    let m = preset_map(MapPreset::Tasmota);
    assert_eq!(
        refusal(&m, "tele//SENSOR", "{\"a\":1}").0,
        Rejection::BadDeviceId
    );
    assert_eq!(
        refusal(&m, "tele/x:y/LWT", "Online").0,
        Rejection::BadDeviceId
    );
    let long = format!("tele/{}/SENSOR", "a".repeat(65));
    assert_eq!(refusal(&m, &long, "{\"a\":1}").0, Rejection::BadDeviceId);
}

#[test]
fn json_form_with_fields_ts_field_and_prefix() {
    let m = maps(&[TopicMapConfig {
        topic: Some("site/{room}/{device}/state".into()),
        payload: Some(PayloadForm::Json),
        fields: Some(vec!["env".into()]),
        ts_field: Some("at".into()),
        metric: Some("{room}".into()),
        device_prefix: Some("site-".into()),
        ..TopicMapConfig::default()
    }]);
    let r = reading(
        &m,
        "site/cellar/th1/state",
        r#"{"at":"2026-11-21T10:00:00+01:00","env":{"t":4.5,"rh":80},"rssi":-70}"#,
    );
    assert_eq!(r.device, "site-th1");
    assert_eq!(r.timestamp_ms, Some(1_795_251_600_000));
    let names: Vec<&str> = r.metrics.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["cellar.env.rh", "cellar.env.t"]);
    let (reason, detail) = refusal(
        &m,
        "site/cellar/th1/state",
        r#"{"at":"yesterday","env":{"t":1}}"#,
    );
    assert_eq!(reason, Rejection::BadPayload);
    assert!(detail.contains("RFC 3339"), "{detail}");
    assert_eq!(
        m.decode("site/cellar/th1/state", &[b' '; 65], 64, 5),
        Some(Err((Rejection::TooLarge, "65 bytes, limit 64".into())))
    );
}

#[test]
fn value_form_names_the_metric_from_a_level() {
    let m = maps(&[
        TopicMapConfig {
            topic: Some("shellies/{device}/relay/{channel}/power".into()),
            payload: Some(PayloadForm::Value),
            metric: Some("power.{channel}".into()),
            ..TopicMapConfig::default()
        },
        TopicMapConfig {
            topic: Some("sensors/{device}/{metric}".into()),
            payload: Some(PayloadForm::Value),
            metric: Some("{metric}".into()),
            status_topic: Some("".into()),
            ..TopicMapConfig::default()
        },
    ]);
    let r = reading(&m, "shellies/shelly1pm-1/relay/0/power", "42.47");
    assert_eq!(r.metrics, vec![("power.0".into(), OwnedValue::F64(42.47))]);
    let r = reading(&m, "sensors/s1/door", "true");
    assert_eq!(r.metrics, vec![("door".into(), OwnedValue::Bool(true))]);
    let r = reading(&m, "sensors/s1/mode", "eco");
    assert_eq!(
        r.metrics,
        vec![("mode".into(), OwnedValue::Str("eco".into()))]
    );
    assert_eq!(
        refusal(&m, "sensors/s1/bad name", "1").0,
        Rejection::BadPayload
    );
    assert_eq!(refusal(&m, "sensors/s1/t", "").0, Rejection::BadPayload);
    assert_eq!(m.filters(), ["shellies/+/relay/+/power", "sensors/+/+"]);
}

#[test]
fn configuration_problems_are_listed_with_their_map() {
    let bad = [
        TopicMapConfig::default(),
        TopicMapConfig {
            topic: Some("devices/{device}/telemetry".into()),
            payload: Some(PayloadForm::Json),
            ..TopicMapConfig::default()
        },
        TopicMapConfig {
            topic: Some("a/{device}".into()),
            payload: Some(PayloadForm::Value),
            fields: Some(vec![]),
            ..TopicMapConfig::default()
        },
        TopicMapConfig {
            preset: Some(MapPreset::Tasmota),
            metric: Some("{nope}".into()),
            device_prefix: Some("bad prefix".into()),
            ..TopicMapConfig::default()
        },
        TopicMapConfig {
            topic: Some("a/+/b".into()),
            payload: Some(PayloadForm::Json),
            ..TopicMapConfig::default()
        },
    ];
    let problems = TopicMaps::compile(&bad).unwrap_err().join("\n");
    for expected in [
        "mqtt.map[0].topic: needed",
        "mqtt.map[0].payload",
        "mqtt.map[1].topic: \"devices/{device}/telemetry\" would take messages of the hub's own topic",
        "mqtt.map[2].fields: only for payload = \"json\"",
        "mqtt.map[2].metric: payload = \"value\" needs",
        "mqtt.map[3].metric",
        "mqtt.map[3].device_prefix",
        "mqtt.map[4].topic: level \"+\": no wildcards",
    ] {
        assert!(
            problems.contains(expected),
            "{expected} not in:\n{problems}"
        );
    }
    // A status topic on the hub's own (devices/{id}/status) is refused too.
    let own_status = TopicMapConfig {
        preset: Some(MapPreset::Tasmota),
        status_topic: Some("devices/{device}/status".into()),
        ..TopicMapConfig::default()
    };
    assert!(TopicMaps::compile(&[own_status]).is_err());
}
