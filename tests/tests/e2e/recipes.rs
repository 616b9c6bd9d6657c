//! The README's integration recipes, tried against the real hub: Prometheus (Debian's, the one
//! Grafana reads) scraping `/metrics` with the recipe's configuration, and the readings URL of
//! Grafana's Infinity data source fetched with curl as Grafana would.

use std::process::{Command, Stdio};

use crate::harness::{Hub, eventually, free_port, mosquitto_pub, wait_for_readings};

/// A token with only `scopes`, made through the API.
async fn token(hub: &Hub, name: &str, scopes: &[&str]) -> String {
    let (status, body) = hub
        .send(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(&serde_json::json!({"name": name, "scopes": scopes})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["secret"].as_str().unwrap().to_owned()
}

/// GET `url` with curl, as an HTTP client outside the tests would: the hub's CA and `secret` as
/// bearer token; the JSON answer.
fn curl_json(hub: &Hub, secret: &str, url: &str) -> serde_json::Value {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--cacert"])
        .arg(hub.data.join("tls/ca.crt"))
        .arg("-H")
        .arg(format!("Authorization: Bearer {secret}"))
        .arg(url)
        .output()
        .expect("curl must be installed");
    assert!(
        output.status.success(),
        "{url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The recipe's Prometheus configuration with this machine's files and the hub's port.
fn prometheus_config(hub: &Hub, token_file: &str) -> String {
    let recipe = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/recipes/prometheus.yml"),
    )
    .unwrap();
    let ca = hub.data.join("tls/ca.crt").display().to_string();
    let replaced = recipe
        .replace("/etc/prometheus/hub.token", token_file)
        .replace("/etc/prometheus/hub-ca.crt", &ca)
        .replace("gateway.lan:8443", &format!("127.0.0.1:{}", hub.api.port()))
        .replace("scrape_interval: 15s", "scrape_interval: 1s");
    assert!(replaced != recipe && replaced.contains(&ca), "{replaced}");
    replaced
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_hub_with_the_recipe_configuration() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let secret = token(&hub, "prometheus", &["metrics"]).await;
    let token_file = root.path().join("hub.token");
    std::fs::write(&token_file, &secret).unwrap();
    let config = root.path().join("prometheus.yml");
    std::fs::write(
        &config,
        prometheus_config(&hub, &token_file.display().to_string()),
    )
    .unwrap();

    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    assert!(
        check.status.success(),
        "promtool refuses the recipe:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let port = free_port();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            root.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus) must be installed");
    let http = reqwest::Client::new();
    let query = |q: &'static str| {
        let http = http.clone();
        async move {
            let url = format!("http://127.0.0.1:{port}/api/v1/query");
            let body: serde_json::Value = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "query={}",
                    q.replace('"', "%22")
                        .replace('{', "%7B")
                        .replace('}', "%7D")
                ))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            body["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        }
    };
    let up = eventually("Prometheus scraping the hub", || async {
        query("up{job=\"hub\"}").await.filter(|v| v == "1")
    })
    .await;
    assert_eq!(up, "1");
    // A series of the hub itself, not only Prometheus's own `up`.
    eventually("a hub series in Prometheus", || async {
        query("hub_build_info").await
    })
    .await;
    let _ = prometheus.kill();
    let _ = prometheus.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_infinity_data_source_url_answers_with_the_documented_fields() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    for (seq, temp) in [(1, 20.5), (2, 21.0), (3, 21.5)] {
        let payload = format!(r#"{{"seq":{seq},"metrics":{{"temp":{temp},"door":false}}}}"#);
        mosquitto_pub(
            hub.mqtt_port(),
            "devices/greenhouse-1/telemetry",
            payload.as_bytes(),
            1,
        );
    }
    wait_for_readings(&hub, "greenhouse-1", 3).await;
    let secret = token(&hub, "grafana", &["read"]).await;
    let curl = |path: String| curl_json(&hub, &secret, &hub.url(&path));
    // What Grafana sends for the dashboard's time range: ${__from} and ${__to}, unix ms.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let raw = curl(format!(
        "/api/v1/devices/greenhouse-1/readings?metric=temp&from={}&to={}&order=oldest&limit=1000",
        now_ms - 3_600_000,
        now_ms + 60_000
    ));
    let readings = raw["readings"].as_array().unwrap();
    let temps: Vec<f64> = readings
        .iter()
        .map(|r| r["metrics"]["temp"].as_f64().unwrap())
        .collect();
    assert_eq!(temps, [20.5, 21.0, 21.5], "{raw}");
    for r in readings {
        assert!(r["ts"].as_str().unwrap().ends_with('Z'), "{r}");
        assert!(r["metrics"].get("door").is_none(), "metric= keeps one: {r}");
    }
    let buckets = curl(format!(
        "/api/v1/devices/greenhouse-1/readings?metric=temp&bucket=1m&agg=avg,max&from={}&to={}",
        now_ms - 3_600_000,
        now_ms + 60_000
    ));
    let first = &buckets["buckets"][0];
    assert!(first["start"].is_string(), "{buckets}");
    assert!(
        first["avg"].is_number() && first["max"].is_number(),
        "{buckets}"
    );
}

/// The recipe's Node-RED flow, by node id.
fn node_red_flow() -> std::collections::HashMap<String, serde_json::Value> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/recipes/node-red-flow.json"),
    )
    .unwrap();
    let nodes: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    nodes
        .into_iter()
        .map(|n| (n["id"].as_str().unwrap().to_owned(), n))
        .collect()
}

/// The one node of `kind` in the flow.
fn only<'a>(
    flow: &'a std::collections::HashMap<String, serde_json::Value>,
    kind: &str,
) -> &'a serde_json::Value {
    let found: Vec<_> = flow.values().filter(|n| n["type"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} node");
    found[0]
}

/// The types of the nodes `node`'s first output is wired to.
fn wired(
    flow: &std::collections::HashMap<String, serde_json::Value>,
    node: &serde_json::Value,
) -> Vec<String> {
    node["wires"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| {
            flow[id.as_str().unwrap()]["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_red_flow_is_wired_as_documented_and_its_urls_answer() {
    // Node-RED cannot run here: its flow's structure is checked, and its URLs and messages are
    // tried on the real hub.
    let flow = node_red_flow();
    let tab = only(&flow, "tab")["id"].as_str().unwrap().to_owned();
    let tls = only(&flow, "tls-config");
    assert_eq!(tls["verifyservercert"], true);
    for node in flow.values() {
        let kind = node["type"].as_str().unwrap();
        if !["tab", "tls-config", "websocket-client"].contains(&kind) {
            assert_eq!(node["z"], tab.as_str(), "{kind} on the flow's tab");
        }
        let outputs = node["wires"].as_array().into_iter().flatten();
        for id in outputs.filter_map(|o| o.as_array()).flatten() {
            assert!(
                flow.contains_key(id.as_str().unwrap()),
                "{kind} wired to a missing node"
            );
        }
    }
    // inject -> change (bearer header) -> http request -> debug
    let inject = only(&flow, "inject");
    assert_eq!(wired(&flow, inject), ["change"]);
    let header = &flow[inject["wires"][0][0].as_str().unwrap()];
    assert_eq!(header["rules"][0]["p"], "headers");
    assert!(
        header["rules"][0]["to"]
            .as_str()
            .unwrap()
            .contains("$env(\"HUB_AUTHORIZATION\")")
    );
    assert_eq!(wired(&flow, header), ["http request"]);
    let request = only(&flow, "http request");
    assert_eq!(request["method"], "GET");
    assert_eq!(request["ret"], "obj");
    assert_eq!(request["tls"], tls["id"]);
    assert_eq!(wired(&flow, request), ["debug"]);
    // websocket in -> json -> debug; status (of the websocket in) -> switch -> change -> websocket out
    let client = only(&flow, "websocket-client");
    assert_eq!(client["path"], "wss://gateway.lan:8443/api/v1/stream");
    assert_eq!(client["tls"], tls["id"]);
    assert_eq!(client["headers"][0]["keyType"], "Authorization");
    assert_eq!(client["headers"][0]["valueType"], "env");
    assert_eq!(client["headers"][0]["valueValue"], "HUB_AUTHORIZATION");
    let ws_in = only(&flow, "websocket in");
    assert_eq!(ws_in["client"], client["id"]);
    assert_eq!(wired(&flow, ws_in), ["json"]);
    assert_eq!(
        wired(&flow, &flow[ws_in["wires"][0][0].as_str().unwrap()]),
        ["debug"]
    );
    let status = only(&flow, "status");
    assert_eq!(status["scope"][0], ws_in["id"]);
    assert_eq!(wired(&flow, status), ["switch"]);
    let switch = only(&flow, "switch");
    assert_eq!(wired(&flow, switch), ["change"]);
    let subscribe = &flow[switch["wires"][0][0].as_str().unwrap()];
    assert_eq!(wired(&flow, subscribe), ["websocket out"]);
    assert_eq!(only(&flow, "websocket out")["client"], client["id"]);
    let subscription: serde_json::Value =
        serde_json::from_str(subscribe["rules"][0]["to"].as_str().unwrap()).unwrap();

    // The URLs and messages on the real hub, with a read token as HUB_AUTHORIZATION would hold.
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/greenhouse-1/telemetry",
        br#"{"seq":1,"metrics":{"temp":19.5}}"#,
        1,
    );
    wait_for_readings(&hub, "greenhouse-1", 1).await;
    let secret = token(&hub, "node-red", &["read"]).await;
    let url = request["url"]
        .as_str()
        .unwrap()
        .replace("https://gateway.lan:8443", &hub.url(""));
    let page = curl_json(&hub, &secret, &url);
    assert_eq!(page["readings"][0]["metrics"]["temp"], 19.5, "{page}");

    let mut stream = crate::live::Stream::connect(&hub, Some(&secret))
        .await
        .expect("the stream takes the flow's token");
    stream.send(subscription).await;
    assert_eq!(stream.next_of("subscribed").await["id"], "node-red");
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/greenhouse-1/telemetry",
        br#"{"seq":2,"metrics":{"temp":20.0,"hum":40}}"#,
        1,
    );
    let reading = stream.next_of("reading").await;
    assert_eq!(reading["device"], "greenhouse-1");
    assert_eq!(
        reading["metrics"],
        serde_json::json!({"temp": 20.0}),
        "{reading}"
    );
}
