//! What a hostile tester broke, each against the real binary: a reader moving the cloud's
//! consumer, a device certificate acting as an API admin, slow or huge requests holding the API,
//! token expiries that never come, bare 414/431/308 answers, formulas in CSV exports, the device
//! ids `.` and `..`, and leap-second timestamps.

use crate::harness::binary;
use crate::harness::{Hub, eventually, mosquitto_pub, wait_for_readings};
use crate::security::{client, write_config};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};

/// A new token with `scopes`, made by the admin; its secret.
async fn token(hub: &Hub, name: &str, scopes: &[&str]) -> String {
    let (status, body) = hub
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&json!({"name": name, "scopes": scopes})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["secret"].as_str().unwrap().to_owned()
}

/// A request with `token`: status and JSON body (null when there is none).
async fn call(hub: &Hub, token: &str, method: Method, path: &str, body: Value) -> (u16, Value) {
    let response = hub
        .client()
        .request(method, hub.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `hub certs ...` in the hub's data directory.
fn certs(data: &Path, args: &[&str]) -> Output {
    let out = Command::new(binary("hub"))
        .arg("--data-dir")
        .arg(data)
        .arg("certs")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hub certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The PEM identity (certificate and key) in `dir` under `name`.
fn identity(dir: &Path, name: &str) -> String {
    let cert = std::fs::read_to_string(dir.join(format!("{name}.crt"))).unwrap();
    let key = std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap();
    format!("{cert}{key}")
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_consumers_own_sync_identity_or_an_admin_moves_its_cursor() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    for seq in 0..3 {
        mosquitto_pub(
            hub.mqtt_port(),
            "devices/pull-1/telemetry",
            format!(r#"{{"seq":{seq},"metrics":{{"v":1}}}}"#).as_bytes(),
            1,
        );
    }
    wait_for_readings(&hub, "pull-1", 3).await;
    let reader = token(&hub, "reader", &["read"]).await;
    let cloud = token(&hub, "cloud", &["read", "sync"]).await;
    let other = token(&hub, "other", &["sync"]).await;
    let put = |secret: String, name: &'static str, cursor: u64| {
        let hub = &hub;
        async move {
            call(
                hub,
                &secret,
                Method::PUT,
                &format!("/api/v1/sync/consumers/{name}"),
                json!({"cursor": cursor}),
            )
            .await
        }
    };
    // The cloud's own token registers and moves its consumer.
    assert_eq!(put(cloud.clone(), "cloud", 0).await.0, 200);
    // A reader, another consumer's token, cannot move it forward (the attack), nor register
    // one; the cloud's token cannot move another consumer.
    let (status, body) = put(reader.clone(), "cloud", 2).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("sync"), "{body}");
    assert_eq!(put(reader, "reader", 2).await.0, 403);
    assert_eq!(put(other, "cloud", 2).await.0, 403);
    assert_eq!(put(cloud.clone(), "other", 2).await.0, 403);
    let (_, status) = hub.get("/api/v1/sync/status").await;
    let consumers = status["consumers"].as_array().unwrap();
    assert_eq!(consumers.len(), 1, "{status}");
    assert_eq!(consumers[0]["name"], "cloud");
    assert_eq!(consumers[0]["cursor"], 0, "nobody else moved it: {status}");
    // An admin may, and the refused attempt was logged with who tried.
    let (status, body) = hub
        .send(
            Method::PUT,
            "/api/v1/sync/consumers/cloud",
            Some(&json!({"cursor": 1})),
        )
        .await;
    assert_eq!((status, body["cursor"].as_u64()), (200, Some(1)));
    assert!(hub.log().contains("by=reader"), "the refusal is logged");
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_certificate_is_no_api_identity_whatever_its_id() {
    let root = tempfile::tempdir().unwrap();
    let config = write_config(
        root.path(),
        "[[api.clients]]\nname = \"app-1\"\nscopes = [\"read\"]\n",
    );
    let hub = Hub::start(root.path(), &["--config", &config]);
    let data = hub.data.clone();
    certs(&data, &["issue-device", "--id", "admin"]);
    certs(&data, &["issue-device", "--id", "app-1"]);
    certs(&data, &["issue-client", "--name", "app-1"]);
    let devices = data.join("tls/devices");
    let clients = data.join("tls/clients");
    let new_token = json!({"name": "stolen", "scopes": ["admin"]});

    // The device `admin` is refused where the first-run admin certificate is served.
    let device_admin = client(&hub, Some(&identity(&devices, "admin")));
    let response = device_admin
        .post(hub.url("/api/v1/tokens"))
        .json(&new_token)
        .send()
        .await
        .unwrap();
    assert!(
        [401, 403].contains(&response.status().as_u16()),
        "a device certificate made a token: {}",
        response.status()
    );
    let admin = client(&hub, Some(&identity(&data.join("tls"), "admin")));
    let response = admin
        .post(hub.url("/api/v1/tokens"))
        .json(&json!({"name": "fine", "scopes": ["read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);

    // The same for a configured client's name: the client's certificate reads, the device's
    // of the same name does not.
    let status = |c: reqwest::Client| {
        let url = hub.url("/api/v1/devices");
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        status(client(&hub, Some(&identity(&clients, "app-1")))).await,
        200
    );
    assert_eq!(
        status(client(&hub, Some(&identity(&devices, "app-1")))).await,
        401
    );
    assert!(!hub.log().contains("name=stolen"));
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn absurd_token_expiries_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    for expires in ["3000000d", "36501d", "99999999999999999999d"] {
        let (status, body) = hub
            .send(
                Method::POST,
                "/api/v1/tokens",
                Some(&json!({"name": "forever", "scopes": ["read"], "expires": expires})),
            )
            .await;
        assert_eq!(status, 400, "{expires}: {body}");
        assert!(
            body["detail"].as_str().unwrap().starts_with("`expires`"),
            "{body}"
        );
    }
    let (status, body) = hub
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&json!({"name": "century", "scopes": ["read"], "expires": "36500d"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body["expires"].as_str().unwrap().starts_with("21"),
        "{body}"
    );
    hub.stop();
}

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
