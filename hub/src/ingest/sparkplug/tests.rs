use std::sync::Arc;

use device_protocol::OwnedValue;
use prost::Message;
use rumqttc::mqttbytes::QoS;
use tokio_util::sync::CancellationToken;

use super::proto::{Metric, Payload, Value, datatype::*};
use super::*;
use crate::ingest::endpoint::EndpointDownlink;
use crate::ingest::endpoint::router::Router;

fn bytes(seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(1_000),
        seq: Some(seq),
        metrics,
        ..Payload::default()
    }
    .encode_to_vec()
}

fn metric(name: &str, alias: u64, datatype: u32, value: Value) -> Metric {
    Metric {
        name: Some(name.into()),
        alias: Some(alias),
        datatype: Some(datatype),
        value: Some(value),
        ..Metric::default()
    }
}

fn by_alias(alias: u64, value: Value) -> Metric {
    Metric {
        alias: Some(alias),
        value: Some(value),
        ..Metric::default()
    }
}

fn decode(
    host: &Sparkplug,
    topic: &str,
    payload: &[u8],
) -> Result<Vec<Ingest>, (Rejection, String)> {
    host.decode(topic, payload, 16 << 10, 77)
        .expect("a Sparkplug topic")
}

/// A host whose NCMDs go to a session subscribed to every Sparkplug command.
fn host_with_listener() -> (Sparkplug, Arc<crate::ingest::endpoint::router::Session>) {
    let router = Arc::new(Router::new(4, None));
    let session = router
        .connect("edge", true, 1, CancellationToken::new())
        .session;
    router.subscribe(&session, &[("spBv1.0/+/NCMD/+".into(), QoS::AtLeastOnce)]);
    let host = Sparkplug::default();
    host.attach(MqttDownlink::Endpoint(EndpointDownlink::on(router)));
    (host, session)
}

#[test]
fn births_and_data_become_statuses_and_readings_of_group_edge_device() {
    let host = Sparkplug::default();
    let nbirth = bytes(
        0,
        vec![
            metric("bdSeq", 0, INT64, Value::Long(1)),
            metric("Up Time", 1, INT64, Value::Long(5)),
        ],
    );
    let items = decode(&host, "spBv1.0/plant/NBIRTH/gw1", &nbirth).unwrap();
    assert!(
        matches!(&items[0], Ingest::Status(s) if s.device == "plant.gw1" && s.online && s.transport == Transport::Sparkplug)
    );
    assert!(
        matches!(&items[1], Ingest::Reading(r) if r.device == "plant.gw1" && r.metrics == vec![("Up_Time".into(), OwnedValue::I64(5))])
    );
    let dbirth = bytes(1, vec![metric("Inputs/Temp", 7, FLOAT, Value::Float(20.5))]);
    decode(&host, "spBv1.0/plant/DBIRTH/gw1/boiler", &dbirth).unwrap();
    let ddata = bytes(2, vec![by_alias(7, Value::Float(21.0))]);
    let items = decode(&host, "spBv1.0/plant/DDATA/gw1/boiler", &ddata).unwrap();
    match &items[..] {
        [Ingest::Reading(r)] => {
            assert_eq!(r.device, "plant.gw1.boiler");
            assert_eq!(r.timestamp_ms, Some(1_000));
            assert_eq!(
                r.metrics,
                vec![("Inputs.Temp".into(), OwnedValue::F64(21.0))]
            );
            assert_eq!((r.seq, r.transport), (None, Transport::Sparkplug));
        }
        other => panic!("{other:?}"),
    }
    // NDEATH: the node and its device offline, the statuses last.
    let ndeath = Payload {
        metrics: vec![metric("bdSeq", 0, INT64, Value::Long(1))],
        ..Payload::default()
    }
    .encode_to_vec();
    let items = decode(&host, "spBv1.0/plant/NDEATH/gw1", &ndeath).unwrap();
    let offline: Vec<(&str, bool)> = items
        .iter()
        .map(|i| match i {
            Ingest::Status(s) => (s.device.as_str(), s.online),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(offline, [("plant.gw1", false), ("plant.gw1.boiler", false)]);
}

#[test]
fn a_gap_asks_for_one_rebirth_per_interval() {
    let (host, edge) = host_with_listener();
    decode(
        &host,
        "spBv1.0/g/NBIRTH/e",
        &bytes(0, vec![metric("a", 1, INT32, Value::Int(1))]),
    )
    .unwrap();
    decode(
        &host,
        "spBv1.0/g/NDATA/e",
        &bytes(1, vec![by_alias(1, Value::Int(2))]),
    )
    .unwrap();
    assert!(edge.take_sendable().messages.is_empty());
    decode(
        &host,
        "spBv1.0/g/NDATA/e",
        &bytes(5, vec![by_alias(1, Value::Int(3))]),
    )
    .unwrap();
    decode(
        &host,
        "spBv1.0/g/NDATA/e",
        &bytes(9, vec![by_alias(1, Value::Int(4))]),
    )
    .unwrap();
    assert_eq!((host.stats().seq_gaps(), host.stats().rebirths()), (2, 1));
    let sent = edge.take_sendable().messages;
    assert_eq!(sent.len(), 1);
    assert_eq!(&*sent[0].topic, "spBv1.0/g/NCMD/e");
    let ncmd = Payload::decode(&sent[0].payload[..]).unwrap();
    assert_eq!(
        ncmd.metrics[0].name.as_deref(),
        Some("Node Control/Rebirth")
    );
    assert_eq!(ncmd.metrics[0].value, Some(Value::Boolean(true)));
}

#[test]
fn bad_topics_ids_and_payloads_are_refused_with_a_reason() {
    let host = Sparkplug::default();
    assert!(host.decode("devices/x/telemetry", b"", 10, 0).is_none());
    for (topic, reason) in [
        ("spBv1.0/g/NBIRTH", Rejection::BadTopic),
        ("spBv1.0/g/NBIRTH/e/d", Rejection::BadTopic),
        ("spBv1.0/g/DDATA/e", Rejection::BadTopic),
        ("spBv1.0/g/NOPE/e", Rejection::BadTopic),
        ("spBv1.0/g.x/NBIRTH/e", Rejection::BadDeviceId),
        ("spBv1.0/g/NBIRTH/e y", Rejection::BadDeviceId),
    ] {
        assert_eq!(
            decode(&host, topic, &bytes(0, vec![])).unwrap_err().0,
            reason,
            "{topic}"
        );
    }
    let long = format!("spBv1.0/{}/NBIRTH/{}", "g".repeat(40), "e".repeat(40));
    assert_eq!(
        decode(&host, &long, &bytes(0, vec![])).unwrap_err().0,
        Rejection::BadDeviceId
    );
    assert_eq!(
        decode(&host, "spBv1.0/g/NDATA/e", b"\xff\xff\xff")
            .unwrap_err()
            .0,
        Rejection::BadPayload
    );
    assert_eq!(
        host.decode("spBv1.0/g/NDATA/e", &[0; 20], 10, 0)
            .unwrap()
            .unwrap_err()
            .0,
        Rejection::TooLarge
    );
    // Commands and host states are not the hub's to read: nothing, and no refusal.
    assert_eq!(decode(&host, "spBv1.0/g/NCMD/e", b"\xff").unwrap(), vec![]);
    assert_eq!(
        decode(&host, "spBv1.0/STATE/scada", b"ONLINE").unwrap(),
        vec![]
    );
}

#[test]
fn commands_take_the_birth_datatype_and_name() {
    let host = Sparkplug::default();
    decode(&host, "spBv1.0/g/NBIRTH/e", &bytes(0, vec![])).unwrap();
    decode(
        &host,
        "spBv1.0/g/DBIRTH/e/d",
        &bytes(1, vec![metric("Outputs/Level", 3, UINT8, Value::Int(1))]),
    )
    .unwrap();
    let args = |v: serde_json::Value| match serde_json::json!({ "value": v }) {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    };
    let (topic, payload) = host
        .command("g.e.d", "Outputs.Level", &args(serde_json::json!(200)))
        .unwrap();
    assert_eq!(topic, "spBv1.0/g/DCMD/e/d");
    let m = &Payload::decode(&payload[..]).unwrap().metrics[0];
    assert_eq!(
        (m.name.as_deref(), m.datatype, &m.value),
        (Some("Outputs/Level"), Some(UINT8), &Some(Value::Int(200)))
    );
    assert!(
        host.command("g.e.d", "Outputs.Level", &args(serde_json::json!(300)))
            .unwrap_err()
            .contains("datatype")
    );
    let (topic, _) = host
        .command(
            "g.e",
            "Node Control/Rebirth",
            &args(serde_json::json!(true)),
        )
        .unwrap();
    assert_eq!(topic, "spBv1.0/g/NCMD/e");
    assert!(
        host.command("nodots", "x", &args(serde_json::json!(1)))
            .is_err()
    );
    assert!(host.command("g.e", "x", &serde_json::Map::new()).is_err());
}

#[test]
fn any_payload_is_decoded_or_refused() {
    use proptest::prelude::*;
    proptest!(|(payload in proptest::collection::vec(any::<u8>(), 0..300))| {
        let host = Sparkplug::default();
        let _ = host.decode("spBv1.0/g/NBIRTH/e", &payload, 1024, 0);
        let _ = host.decode("spBv1.0/g/DDATA/e/d", &payload, 1024, 0);
    });
}
