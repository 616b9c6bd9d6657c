//! Rules and alerts end to end: the real hub, readings over its MQTT endpoint, a webhook receiver
//! written here (down, then 503, then taking), a restart while an alert fires, a command action
//! answered by firmware-sim, bad rules refused by `hub check-config` and by the API, rules that
//! select devices by the labels set through the API, MQTT actions received by `mosquitto_sub` on
//! the hub's endpoint and on a real mosquitto, and readings committed but not yet evaluated when
//! the hub is killed with SIGKILL, evaluated once after the restart.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::cli::check_config;
use crate::harness::{
    Hub, Mosquitto, Sim, binary, eventually, hub_behind, metric, mosquitto_pub,
    mosquitto_pub_lines, mosquitto_sub_subscribed, restartable,
};

/// One POST the receiver saw: its key, its body, what it answered.
#[derive(Debug, Clone)]
struct Hook {
    key: String,
    body: Value,
    status: u16,
}

/// A webhook receiver on a given port, answering 503 (with `Retry-After: 1`) or 200.
#[derive(Clone)]
struct Receiver {
    available: Arc<Mutex<bool>>,
    seen: Arc<Mutex<Vec<Hook>>>,
}

impl Receiver {
    async fn start(addr: SocketAddr, available: bool) -> Receiver {
        let receiver = Receiver {
            available: Arc::new(Mutex::new(available)),
            seen: Arc::default(),
        };
        let app = Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn seen(&self) -> Vec<Hook> {
        self.seen.lock().unwrap().clone()
    }

    /// Keys answered 200, in arrival order.
    fn taken(&self) -> Vec<Hook> {
        self.seen()
            .into_iter()
            .filter(|h| h.status == 200)
            .collect()
    }
}

async fn hook(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let available = *receiver.available.lock().unwrap();
    let status = if available { 200 } else { 503 };
    receiver.seen.lock().unwrap().push(Hook {
        key: headers
            .get("idempotency-key")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        body: serde_json::from_slice(&body).unwrap(),
        status,
    });
    if available {
        StatusCode::OK.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")]).into_response()
    }
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("hub.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Writes the configuration of hub `gw-1` with one rule, `name`: `temp` of `devices` above 50
/// (hysteresis 5) fires, and each transition is POSTed to `http://{addr}/hook`.
fn webhook_rule_config(dir: &Path, name: &str, devices: &str, addr: SocketAddr) -> String {
    write_config(
        dir,
        &format!(
            r#"
[sync]
hub_id = "gw-1"

[[rules]]
name = "{name}"
devices = "{devices}"
metric = "temp"
above = 50.0
hysteresis = 5.0
actions = [{{ webhook = "http://{addr}/hook" }}]
"#
        ),
    )
}

fn temp(hub: &Hub, device: &str, value: f64) {
    temp_metric(hub, device, "temp", value);
}

/// A loopback address nothing listens on now (the receiver binds it later).
fn unused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_transitions_arrive_once_each_in_order_through_an_outage_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let addr = unused_addr();
    let config = webhook_rule_config(dir.path(), "oven-hot", "oven-*", addr);
    let mqtt = format!("127.0.0.1:{}", crate::harness::free_port());
    let args = ["--api-listen", "127.0.0.1:0", "--mqtt-listen", &mqtt];
    let hub = Hub::start_in(dir.path(), &args, &["--config", &config]);

    // The receiver is down: three transitions wait in the outbox.
    for v in [60.0, 40.0, 70.0] {
        temp(&hub, "oven-1", v);
    }
    eventually("three transitions and a failed try", || async {
        let retried = metric(&hub, "hub_alert_webhook_tries_total", "retried").await;
        let queued = metric(&hub, "hub_alert_actions_total", "queued").await;
        (retried >= 1.0 && queued == 3.0).then_some(())
    })
    .await;

    // Up, but answering 503: tries keep the entries.
    let receiver = Receiver::start(addr, false).await;
    eventually("a 503", || async {
        (!receiver.seen().is_empty()).then_some(())
    })
    .await;
    *receiver.available.lock().unwrap() = true;
    eventually("the three transitions taken", || async {
        (receiver.taken().len() >= 3).then_some(())
    })
    .await;
    let taken: Vec<(String, String)> = receiver
        .taken()
        .iter()
        .map(|h| (h.key.clone(), h.body["state"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        taken,
        [
            ("gw-1.oven-hot.oven-1.1".into(), "firing".into()),
            ("gw-1.oven-hot.oven-1.2".into(), "resolved".into()),
            ("gw-1.oven-hot.oven-1.3".into(), "firing".into()),
        ]
    );
    // Every try before the first 2xx was of the first transition: order held.
    assert!(
        receiver
            .seen()
            .iter()
            .filter(|h| h.status == 503)
            .all(|h| h.key.ends_with(".1")),
        "{:?}",
        receiver.seen()
    );

    // A restart while firing: still firing, nothing notified again; the next transition is 4.
    assert!(hub.stop().success());
    let hub = Hub::start_in(dir.path(), &args, &["--config", &config]);
    let (status, alerts) = hub.get("/api/v1/alerts?state=firing").await;
    assert_eq!(status, 200, "{alerts}");
    assert_eq!(alerts["alerts"][0]["transition"], 3, "{alerts}");
    temp(&hub, "oven-1", 80.0);
    temp(&hub, "oven-1", 10.0);
    eventually("the resolution after the restart", || async {
        (receiver.taken().len() >= 4).then_some(())
    })
    .await;
    let keys: Vec<String> = receiver.taken().into_iter().map(|h| h.key).collect();
    assert_eq!(
        keys,
        [
            "gw-1.oven-hot.oven-1.1",
            "gw-1.oven-hot.oven-1.2",
            "gw-1.oven-hot.oven-1.3",
            "gw-1.oven-hot.oven-1.4",
        ]
    );
    let (_, alerts) = hub.get("/api/v1/alerts").await;
    let history: Vec<u64> = alerts["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["transition"].as_u64().unwrap())
        .collect();
    assert_eq!(history, [4, 3, 2, 1], "{alerts}");
    assert_eq!(
        metric(&hub, "hub_alert_webhook_outbox", "").await,
        0.0,
        "the outbox is empty once taken"
    );
    hub.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_action_is_answered_by_firmware_sim() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        r#"
[[rules]]
name = "too-warm"
devices = "probe-*"
metric = "temp"
above = 30.0
actions = [{ command = { device = "fan-0", name = "echo", args = { speed = 3 } } }]
"#,
    );
    let hub = Hub::start(dir.path(), &["--config", &config]);
    // The fan is known to the hub and listening for commands.
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/fan-0/telemetry",
        br#"{"seq":0,"metrics":{"rpm":0}}"#,
        1,
    );
    let _fan = Sim::from_child(
        Command::new(binary("firmware-sim"))
            .args(["--broker", &format!("127.0.0.1:{}", hub.mqtt_port())])
            .args([
                "--transport",
                "json",
                "--prefix",
                "fan-",
                "--idle",
                "--devices",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start firmware-sim"),
    );
    eventually("the fan is online", || async {
        let (_, device) = hub.get("/api/v1/devices/fan-0").await;
        (device["online"] == true).then_some(())
    })
    .await;
    temp(&hub, "probe-1", 35.0);
    let command = eventually("the fan answered the rule's command", || async {
        let (status, command) = hub.get("/api/v1/devices/fan-0/commands/1").await;
        (status == 200 && command["state"] == "succeeded").then_some(command)
    })
    .await;
    assert_eq!(command["name"], "echo");
    assert_eq!(command["requested_by"], "rule:too-warm");
    assert_eq!(
        metric(
            &hub,
            "hub_alert_actions_total",
            "action=\"command\",outcome=\"done\""
        )
        .await,
        1.0
    );
    hub.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_are_refused_with_every_problem_by_check_config_and_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = check_config(
        dir.path(),
        r#"
[[rules]]
name = "two conditions"
metric = "temp"
above = 1.0
silent = "soon"
actions = [{ webhook = "http://alerts.example.com/hook" }]

[[rules]]
name = "no-metric"
above = 1.0
"#,
    );
    assert_ne!(code, Some(0));
    for want in [
        "rules[0] (two conditions).name:",
        "rules[0] (two conditions).one condition per rule, found above, silent",
        "rules[0] (two conditions).actions[0].webhook:",
        "rules[1] (no-metric).metric: needed by above",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }

    let config = write_config(
        dir.path(),
        "[[rules]]\nname = \"from-file\"\nmetric = \"t\"\nbelow = 0.0\n",
    );
    let hub = Hub::start(dir.path(), &["--config", &config]);
    let bad = json!({
        "name": "x",
        "metric": "t",
        "rate": { "per": "forever" },
        "for": "1m",
        "min_interval": "often",
        "actions": [{ "log": "shout" }],
    });
    let (status, problem) = hub
        .send(reqwest::Method::POST, "/api/v1/rules", Some(&bad))
        .await;
    assert_eq!(status, 400, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    for want in [
        "rate.per:",
        "rate: give one of above or below",
        "min_interval:",
        "actions[0].log:",
    ] {
        assert!(detail.contains(want), "missing {want:?} in {detail}");
    }

    let good = json!({ "name": "api-rule", "devices": "d-*", "metric": "t", "above": 5.0 });
    let (status, body) = hub
        .send(reqwest::Method::POST, "/api/v1/rules", Some(&good))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = hub
        .send(reqwest::Method::POST, "/api/v1/rules", Some(&good))
        .await;
    assert_eq!(status, 200, "replaced");
    let (_, list) = hub.get("/api/v1/rules").await;
    let names: Vec<(&str, &str)> = list["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["origin"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("from-file", "config"), ("api-rule", "api")]);
    let taken = json!({ "name": "from-file", "metric": "t", "above": 1.0 });
    let (status, _) = hub
        .send(reqwest::Method::POST, "/api/v1/rules", Some(&taken))
        .await;
    assert_eq!(status, 409);
    let (status, _) = hub
        .send(reqwest::Method::DELETE, "/api/v1/rules/from-file", None)
        .await;
    assert_eq!(status, 409);
    let (status, _) = hub
        .send(reqwest::Method::DELETE, "/api/v1/rules/api-rule", None)
        .await;
    assert_eq!(status, 204);

    // The API's rule works like the file's: d-1 above 5 fires.
    let (status, _) = hub
        .send(reqwest::Method::POST, "/api/v1/rules", Some(&good))
        .await;
    assert_eq!(status, 201);
    temp_metric(&hub, "d-1", "t", 9.0);
    eventually("the API rule's alert", || async {
        let (_, alerts) = hub.get("/api/v1/alerts?state=firing").await;
        (alerts["alerts"][0]["rule"] == "api-rule").then_some(())
    })
    .await;
    hub.stop();
}

fn temp_metric(hub: &Hub, device: &str, metric: &str, value: f64) {
    mosquitto_pub(
        hub.mqtt_port(),
        &format!("devices/{device}/telemetry"),
        json!({ metric: value }).to_string().as_bytes(),
        1,
    );
}

/// PATCHes a device's labels through the API.
async fn label(hub: &Hub, device: &str, room: &str) {
    let body = json!({ "labels": { "room": room } });
    let (status, answer) = hub
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/devices/{device}"),
            Some(&body),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

/// The devices of the firing alerts of `rule`.
async fn firing(hub: &Hub, rule: &str) -> Vec<String> {
    let (status, alerts) = hub.get("/api/v1/alerts?state=firing").await;
    assert_eq!(status, 200, "{alerts}");
    let mut devices: Vec<String> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["rule"] == rule)
        .map(|a| a["device"].as_str().unwrap().to_owned())
        .collect();
    devices.sort();
    devices
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_select_devices_by_the_labels_set_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        r#"
[[rules]]
name = "cold-room-warm"
labels = { room = "cold" }
metric = "temp"
above = 5.0
"#,
    );
    let hub = Hub::start(dir.path(), &["--config", &config]);
    // Registered by their first readings, unlabelled: the rule selects neither.
    temp(&hub, "fridge-1", 9.0);
    temp(&hub, "oven-1", 9.0);
    label(&hub, "fridge-1", "cold").await;
    label(&hub, "oven-1", "kitchen").await;
    // Readings are evaluated in the order they were stored: once the fridge's alert is there,
    // the oven's reading before it was evaluated too.
    temp(&hub, "oven-1", 250.0);
    temp(&hub, "fridge-1", 8.0);
    eventually("the fridge's alert", || async {
        (!firing(&hub, "cold-room-warm").await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(firing(&hub, "cold-room-warm").await, ["fridge-1"]);

    // The oven moves into the cold room: its next reading is the rule's.
    label(&hub, "oven-1", "cold").await;
    temp(&hub, "oven-1", 7.0);
    eventually("the oven's alert", || async {
        (firing(&hub, "cold-room-warm").await.len() == 2).then_some(())
    })
    .await;
    assert_eq!(firing(&hub, "cold-room-warm").await, ["fridge-1", "oven-1"]);
    hub.stop();
}

/// A real `mosquitto_sub` on `alerts/#` at QoS 1, subscribed before it returns; what it received,
/// as (topic, JSON payload, the QoS it came at).
struct AlertSubscriber {
    child: Child,
    received: Arc<Mutex<Vec<(String, Value, u8)>>>,
}

impl AlertSubscriber {
    fn start(port: u16) -> AlertSubscriber {
        let (child, lines) = mosquitto_sub_subscribed(
            port,
            &["-t", "alerts/#", "-q", "1", "-F", "message %q %t %p"],
        );
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for line in lines {
                if let Some(rest) = line.strip_prefix("message ") {
                    let (qos, rest) = rest.split_once(' ').unwrap();
                    let (topic, payload) = rest.split_once(' ').unwrap();
                    let payload = serde_json::from_str(payload).unwrap();
                    let qos = qos.parse().unwrap();
                    sink.lock().unwrap().push((topic.to_owned(), payload, qos));
                }
            }
        });
        AlertSubscriber { child, received }
    }

    fn received(&self) -> Vec<(String, Value, u8)> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for AlertSubscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MQTT_ACTION_RULE: &str = r#"
[sync]
hub_id = "gw-1"

[[rules]]
name = "hot"
devices = "oven-*"
metric = "temp"
above = 50.0
hysteresis = 5.0
actions = [
  { mqtt = { topic = "alerts/{rule}/{device}", qos = 1 } },
  { mqtt = { topic = "alerts/{rule}/{device}/quiet", qos = 0 } },
]
"#;

/// Sends an oven over the threshold and back through the broker on `readings_port`, and checks
/// that `subscriber` got both transitions, in order, as the README describes them, from each of
/// the rule's two actions at the QoS each asks for.
async fn mqtt_action_delivers_both_transitions(
    hub: &Hub,
    readings_port: u16,
    subscriber: &AlertSubscriber,
) {
    for value in [60.0, 40.0] {
        let reading = json!({ "temp": value }).to_string();
        mosquitto_pub(
            readings_port,
            "devices/oven-1/telemetry",
            reading.as_bytes(),
            1,
        );
    }
    eventually("both transitions, twice", || async {
        (subscriber.received().len() >= 4).then_some(())
    })
    .await;
    let received = subscriber.received();
    assert_eq!(received.len(), 4, "{received:?}");
    for (topic, qos) in [("alerts/hot/oven-1", 1), ("alerts/hot/oven-1/quiet", 0)] {
        let on_topic: Vec<_> = received.iter().filter(|(t, _, _)| t == topic).collect();
        assert_eq!(on_topic.len(), 2, "{received:?}");
        for ((_, message, got_qos), (state, transition, value)) in on_topic
            .into_iter()
            .zip([("firing", 1, 60.0), ("resolved", 2, 40.0)])
        {
            assert_eq!(*got_qos, qos, "{topic}: {message}");
            assert_eq!(message["type"], "alert", "{message}");
            assert_eq!(message["hub"], "gw-1", "{message}");
            assert_eq!(message["rule"], "hot", "{message}");
            assert_eq!(message["device"], "oven-1", "{message}");
            assert_eq!(message["metric"], "temp", "{message}");
            assert_eq!(message["state"], state, "{message}");
            assert_eq!(message["transition"], transition, "{message}");
            assert_eq!(message["value"], value, "{message}");
            assert!(message["ts"].is_string(), "{message}");
        }
    }
    let done = metric(
        hub,
        "hub_alert_actions_total",
        "action=\"mqtt\",outcome=\"done\"",
    )
    .await;
    assert_eq!(done, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_actions_reach_a_subscriber_of_the_hubs_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), MQTT_ACTION_RULE);
    let hub = Hub::start(dir.path(), &["--config", &config]);
    let subscriber = AlertSubscriber::start(hub.mqtt_port());
    mqtt_action_delivers_both_transitions(&hub, hub.mqtt_port(), &subscriber).await;
    hub.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_actions_reach_a_subscriber_of_an_external_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path());
    let hub = hub_behind(dir.path(), mosquitto.port, MQTT_ACTION_RULE).await;
    let subscriber = AlertSubscriber::start(mosquitto.port);
    mqtt_action_delivers_both_transitions(&hub, mosquitto.port, &subscriber).await;
    hub.stop();
}

/// The distinct idempotency keys the receiver took, in the order it first took them; fails if
/// a key came twice with different bodies (a redelivery must be the same notification).
fn distinct_keys(receiver: &Receiver) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut bodies: Vec<&Value> = Vec::new();
    let taken = receiver.taken();
    for hook in &taken {
        match keys.iter().position(|k| *k == hook.key) {
            Some(at) => assert_eq!(bodies[at], &hook.body, "{} redelivered changed", hook.key),
            None => {
                keys.push(hook.key.clone());
                bodies.push(&hook.body);
            }
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_not_yet_evaluated_at_a_kill_9_are_evaluated_once_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let addr = unused_addr();
    let receiver = Receiver::start(addr, true).await;
    let config = webhook_rule_config(dir.path(), "hot", "k-b", addr);
    let mqtt = format!("127.0.0.1:{}", crate::harness::free_port());
    let args = restartable("--mqtt-listen", &mqtt);
    let hub = Hub::start_in(dir.path(), &args, &["--config", &config]);
    let port = hub.mqtt_port();
    let burst: Vec<String> = (0..300)
        .map(|i| json!({ "temp": i % 40 }).to_string())
        .collect();
    // Readings the rule does not select, the crossing, and more readings: each acknowledged
    // (durable) before the next is sent; the hub is killed at once after the last.
    mosquitto_pub_lines(port, "devices/k-a/telemetry", &burst, 1);
    mosquitto_pub(port, "devices/k-b/telemetry", br#"{"temp":60}"#, 1);
    mosquitto_pub_lines(port, "devices/k-a/telemetry", &burst, 1);
    hub.kill9();

    // After the restart the readings past the offset the rules had saved are read back and
    // evaluated: the crossing fired once, whether it was evaluated before the kill or not.
    let hub = Hub::start_in(dir.path(), &args, &["--config", &config]);
    eventually("the firing notification", || async {
        (!receiver.taken().is_empty()).then_some(())
    })
    .await;
    eventually("the outbox drained", || async {
        (metric(&hub, "hub_alert_webhook_outbox", "").await == 0.0).then_some(())
    })
    .await;
    let read_back = metric(&hub, "hub_rules_caught_up_readings_total", "").await;
    assert!(
        read_back >= 1.0,
        "readings read back after the restart: {read_back}"
    );
    assert_eq!(distinct_keys(&receiver), ["gw-1.hot.k-b.1"]);
    assert_eq!(firing(&hub, "hot").await, ["k-b"]);

    // Killed again while the alert fires: nothing is notified again; the resolution is the
    // next transition.
    hub.kill9();
    let hub = Hub::start_in(dir.path(), &args, &["--config", &config]);
    mosquitto_pub(port, "devices/k-b/telemetry", br#"{"temp":10}"#, 1);
    eventually("the resolution", || async {
        (distinct_keys(&receiver).len() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        distinct_keys(&receiver),
        ["gw-1.hot.k-b.1", "gw-1.hot.k-b.2"]
    );
    let (_, alerts) = hub.get("/api/v1/alerts").await;
    let history: Vec<u64> = alerts["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["transition"].as_u64().unwrap())
        .collect();
    assert_eq!(history, [2, 1], "{alerts}");
    hub.stop();
}
