//! Sparkplug B against the real binary and an independent edge node (tests/py/spb_edge_node.py:
//! mqtt-spb-wrapper's Tahu protobuf over paho-mqtt), through mosquitto and through the hub's own
//! endpoint: BIRTHs then DATA by alias stored under `{group}.{edge}[.{device}]`, a sequence gap
//! answered with a Rebirth NCMD, a command sent as DCMD, a bad payload counted with nothing lost,
//! DDEATH and the NDEATH last will marking devices offline.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::Receiver;

use serde_json::{Value, json};

use crate::harness::{
    DEADLINE, Hub, Mosquitto, eventually, hub_behind, metric, mosquitto_pub, python_peer_in,
    write_config,
};

const CONFIG: &str = "[mqtt.sparkplug]\nenabled = true\n";

/// The edge node, killed when dropped.
struct EdgeNode {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl EdgeNode {
    fn start(port: u16, group: &str, edge: &str) -> EdgeNode {
        let mut child = python_peer_in("E2E_SPB_PYTHON", "spb_edge_node.py")
            .args(["127.0.0.1", &port.to_string(), group, edge])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python with mqtt-spb-wrapper (tests/run makes the venv)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        EdgeNode {
            child,
            stdin,
            lines,
        }
    }

    /// Sends one command and returns its answer.
    fn say(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("the edge node reads its commands");
        self.lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("the edge node did not answer {command:?}"))
    }

    /// Drops the connection without a DISCONNECT: the broker publishes its NDEATH.
    fn vanish(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EdgeNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn latest(hub: &Hub, device: &str, name: &str, want: Value) {
    eventually(&format!("{device}'s {name} = {want}"), || async {
        let (_, body) = hub.get(&format!("/api/v1/devices/{device}/latest")).await;
        (body["metrics"][name]["value"] == want).then_some(())
    })
    .await;
}

async fn online(hub: &Hub, device: &str, want: bool) {
    eventually(&format!("{device} online = {want}"), || async {
        let (_, body) = hub.get(&format!("/api/v1/devices/{device}")).await;
        (body["online"] == want).then_some(())
    })
    .await;
}

async fn edge_node_session(hub: &Hub, port: u16, group: &str) {
    let node_id = format!("{group}.gw1");
    let boiler = format!("{group}.gw1.boiler");
    let mut node = EdgeNode::start(port, group, "gw1");
    assert_eq!(node.say("birth"), "born");
    assert_eq!(node.say("data 1"), "sent");
    assert_eq!(node.say("data 2"), "sent");

    // BIRTH values, then DATA by alias only, under the contract's ids and transport.
    latest(hub, &node_id, "Inputs.Counter", json!(2)).await;
    latest(hub, &boiler, "Inputs.Temp", json!(22.0)).await;
    latest(hub, &node_id, "Properties.Hardware_Make", json!("acme")).await;
    let (_, device) = hub.get(&format!("/api/v1/devices/{boiler}")).await;
    assert_eq!(device["transport"], "sparkplug", "{device}");
    assert_eq!(device["online"], true, "{device}");
    let (_, history) = hub
        .get(&format!(
            "/api/v1/devices/{node_id}/readings?metric=Inputs.Counter&order=oldest"
        ))
        .await;
    let counters: Vec<i64> = history["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metrics"]["Inputs.Counter"].as_i64().unwrap())
        .collect();
    assert_eq!(
        counters,
        [-5, 1, 2],
        "the Int32 of the BIRTH is signed: {history}"
    );

    // A lost message: the next one's seq is not the one due, and the hub asks for a Rebirth.
    assert_eq!(node.say("gap"), "gapped");
    assert_eq!(node.say("data 3"), "sent");
    assert_eq!(node.say("rebirth?"), "rebirth");
    assert!(metric(hub, "hub_sparkplug_seq_gaps_total", "").await >= 1.0);
    assert!(metric(hub, "hub_sparkplug_rebirths_requested_total", "").await >= 1.0);
    latest(hub, &node_id, "Inputs.Counter", json!(-5)).await;
    let gaps = metric(hub, "hub_sparkplug_seq_gaps_total", "").await;
    assert_eq!(node.say("data 4"), "sent");
    latest(hub, &node_id, "Inputs.Counter", json!(4)).await;
    assert_eq!(
        metric(hub, "hub_sparkplug_seq_gaps_total", "").await,
        gaps,
        "in sequence again"
    );

    // A payload that is not Sparkplug B: counted, and the node's next readings still stored.
    mosquitto_pub(
        port,
        &format!("spBv1.0/{group}/NDATA/gw1"),
        b"not protobuf \xff\xff",
        1,
    );
    eventually("the bad payload counted", || async {
        let n = metric(hub, "hub_ingest_messages_total", "outcome=\"bad_payload\"").await;
        (n >= 1.0).then_some(())
    })
    .await;
    assert_eq!(node.say("data 5"), "sent");
    latest(hub, &boiler, "Inputs.Temp", json!(25.0)).await;

    // A command for the device leaves as its DCMD, with the datatype of its BIRTH.
    let (status, body) = hub
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/devices/{boiler}/commands"),
            Some(&json!({"name": "Outputs.LED", "args": {"value": true}})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let dcmd: Value = serde_json::from_str(&node.say("dcmd?")).expect("a DCMD");
    assert_eq!(dcmd, json!({"name": "Outputs/LED", "value": true}));

    // DDEATH: the device offline; then the node vanishes and its NDEATH (its will) takes it too.
    assert_eq!(node.say("ddeath"), "dead");
    online(hub, &boiler, false).await;
    online(hub, &node_id, true).await;
    node.vanish();
    online(hub, &node_id, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_node_through_mosquitto() {
    let root = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(root.path());
    let hub = hub_behind(root.path(), mosquitto.port, CONFIG).await;
    edge_node_session(&hub, mosquitto.port, "plant").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_node_through_the_embedded_endpoint() {
    let root = tempfile::tempdir().unwrap();
    let config = write_config(root.path(), CONFIG);
    let hub = Hub::start(root.path(), &["--config", &config]);
    edge_node_session(&hub, hub.mqtt_port(), "line2").await;
}
