//! Rules and alerts end to end: the real hub, readings over its MQTT endpoint, a webhook receiver
//! written here (down, then 503, then taking), a restart while an alert fires, a command action
//! answered by firmware-sim, and bad rules refused by `hub check-config` and by the API.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::cli::check_config;
use crate::harness::{Hub, Sim, binary, eventually, metric, mosquitto_pub};

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
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[sync]
hub_id = "gw-1"

[[rules]]
name = "oven-hot"
devices = "oven-*"
metric = "temp"
above = 50.0
hysteresis = 5.0
actions = [{{ webhook = "http://{addr}/hook" }}]
"#
        ),
    );
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
