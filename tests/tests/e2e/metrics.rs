//! `/metrics` of the real hub: Prometheus text that `promtool check metrics` accepts (Debian package
//! `prometheus`), the counters moving with real traffic, the `metrics` scope, and no secret in it.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::harness::{Hub, mosquitto_pub, wait_for_readings};

pub async fn scrape(hub: &Hub, token: &str) -> (u16, String) {
    let response = hub
        .client()
        .get(hub.url("/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The value of the first sample whose line starts with `prefix`.
fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_valid_prometheus_text_move_with_traffic_and_hold_no_secret() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("hub.toml");
    std::fs::write(
        &config,
        "[[sync.http]]\nname = \"cloud\"\nurl = \"http://127.0.0.1:9/ingest\"\ntoken = \"sink-secret-1\"\nretry_min = \"100ms\"\nretry_max = \"200ms\"\n",
    )
    .unwrap();
    let hub = Hub::start(root.path(), &["--config", &config.display().to_string()]);
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/mt-1/telemetry",
        br#"{"seq":0,"metrics":{"v":1}}"#,
        1,
    );
    mosquitto_pub(hub.mqtt_port(), "devices/mt-1/telemetry", b"not json", 1);
    wait_for_readings(&hub, "mt-1", 1).await;
    hub.get("/api/v1/devices/mt-1").await;

    // A token with the metrics scope only.
    let (_, token) = hub
        .send(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(&serde_json::json!({"name": "prom", "scopes": ["metrics"]})),
        )
        .await;
    let secret = token["secret"].as_str().unwrap().to_owned();
    let (status, text) = scrape(&hub, &secret).await;
    assert_eq!(status, 200, "{text}");

    assert_eq!(
        value(
            &text,
            "hub_ingest_messages_total{transport=\"mqtt\",outcome=\"accepted\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "hub_ingest_messages_total{transport=\"mqtt\",outcome=\"bad_payload\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "hub_store_items_total{outcome=\"stored\"}"),
        1.0
    );
    assert!(value(&text, "hub_store_commit_duration_seconds_count") >= 1.0);
    assert_eq!(value(&text, "hub_store_readings "), 1.0);
    assert_eq!(value(&text, "hub_devices "), 1.0);
    assert_eq!(
        value(
            &text,
            "hub_sync_lag_readings{follower=\"cloud\",kind=\"sink\"}"
        ),
        1.0
    );
    assert!(
        text.contains(
            "hub_api_requests_total{route=\"/api/v1/devices/{id}\",method=\"GET\",status=\"200\"}"
        ),
        "requests are labelled by route template:\n{text}"
    );
    assert!(
        value(
            &text,
            "hub_certificate_expiry_timestamp_seconds{certificate=\"server\"}"
        ) > 1.7e9
    );
    assert!(value(&text, "process_resident_memory_bytes") > 0.0);

    // No secret: not the admin token, not this token, not the sink's.
    for secret in [hub.token(), secret.clone(), "sink-secret-1".to_owned()] {
        assert!(!text.contains(&secret), "a secret is in /metrics");
    }

    // promtool agrees it is valid exposition text.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Another scope is refused.
    let (_, read_token) = hub
        .send(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(&serde_json::json!({"name": "reader", "scopes": ["read"]})),
        )
        .await;
    let (status, _) = scrape(&hub, read_token["secret"].as_str().unwrap()).await;
    assert_eq!(status, 403);
    hub.stop();
}
