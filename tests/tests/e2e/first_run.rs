//! A hub started with no configuration works: it makes its TLS material and admin token, takes a
//! reading from mosquitto_pub, and serves it back over HTTPS; a second run reuses everything.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use crate::harness::{Hub, eventually, mosquitto_pub};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn a_published_reading_comes_back_over_https_and_survives_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);

    // First run: the contract's files, private.
    assert_eq!(mode(&hub.data), 0o700);
    assert_eq!(mode(&hub.data.join("tls")), 0o700);
    for f in [
        "admin.token",
        "tls/ca.crt",
        "tls/server.crt",
        "tls/server.key",
        "tls/admin.crt",
        "tls/admin.key",
    ] {
        assert_eq!(mode(&hub.data.join(f)), 0o600, "{f}");
    }
    let token = hub.token();
    assert!(
        token.starts_with("hub_") && token.len() == 68,
        "one line, the token alone: {token:?}"
    );
    assert!(
        hub.stdout
            .iter()
            .any(|l| l.contains("curl --cacert") && l.contains("admin.token")),
        "{:?}",
        hub.stdout
    );

    let port = hub.mqtt_port();
    mosquitto_pub(
        port,
        "devices/greenhouse-1/telemetry",
        br#"{"temp":21.5,"door":false,"label":"north","count":3}"#,
        1,
    );
    mosquitto_pub(
        port,
        "devices/greenhouse-1/telemetry",
        br#"{"seq":7,"ts":"2026-11-21T10:00:00Z","metrics":{"temp":19.25}}"#,
        1,
    );

    let body = eventually("both readings", || async {
        let (status, body) = hub
            .get("/api/v1/devices/greenhouse-1/readings?order=oldest")
            .await;
        (status == 200 && body["readings"].as_array()?.len() == 2).then_some(body)
    })
    .await;
    let readings = body["readings"].as_array().unwrap();
    // Ordered by timestamp: the envelope's device time (10:00) is older than the hub's clock.
    assert_eq!(readings[0]["seq"], 7);
    assert_eq!(readings[0]["ts"], "2026-11-21T10:00:00.000Z");
    assert_eq!(readings[0]["metrics"], json!({"temp": 19.25}));
    assert_eq!(
        readings[1]["metrics"],
        json!({"temp": 21.5, "door": false, "label": "north", "count": 3})
    );
    let ts = readings[1]["ts"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && ts.len() == 24,
        "RFC 3339 UTC with ms: {ts}"
    );

    let (status, latest) = hub.get("/api/v1/devices/greenhouse-1/latest").await;
    assert_eq!(status, 200);
    assert_eq!(
        latest["metrics"]["temp"]["value"], 21.5,
        "the latest by time, not by arrival"
    );
    assert_eq!(latest["metrics"]["count"]["value"], 3);

    let (status, devices) = hub.get("/api/v1/devices").await;
    assert_eq!(status, 200);
    assert_eq!(devices["devices"][0]["id"], "greenhouse-1");
    assert_eq!(devices["devices"][0]["online"], true);
    assert_eq!(devices["devices"][0]["transport"], "mqtt");

    // Without a token, or with a wrong one: 401, as problem+json with the request id.
    for auth in [None, Some("hub_0000"), Some(&token[..token.len() - 1])] {
        let mut request = hub.client().get(hub.url("/api/v1/devices"));
        if let Some(t) = auth {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], 401);
        assert_eq!(body["request_id"], id);
    }
    // /healthz needs nothing.
    let health = hub.client().get(hub.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // SIGTERM: exit 0 after flushing; the second run reuses token, CA and data.
    let ca_before = std::fs::read(hub.data.join("tls/ca.crt")).unwrap();
    let status = hub.stop();
    assert!(status.success(), "exit status {status:?}");

    let hub = Hub::start(root.path(), &[]);
    assert_eq!(hub.token(), token);
    assert_eq!(
        std::fs::read(hub.data.join("tls/ca.crt")).unwrap(),
        ca_before
    );
    let (status, body) = hub.get("/api/v1/devices/greenhouse-1/readings").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["readings"].as_array().unwrap().len(), 2);
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/greenhouse-1/telemetry",
        br#"{"temp":22}"#,
        1,
    );
    let offsets = eventually("the third reading", || async {
        let (_, body) = hub.get("/api/v1/devices/greenhouse-1/readings").await;
        let list = body["readings"].as_array()?.clone();
        (list.len() == 3).then(|| {
            list.iter()
                .map(|r| r["offset"].as_u64().unwrap())
                .collect::<Vec<_>>()
        })
    })
    .await;
    let mut sorted = offsets.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![0, 1, 2],
        "offsets keep growing across restarts"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_store_with_a_kept_token_file_still_accepts_the_token() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let token = hub.token();
    assert!(hub.stop().success());
    std::fs::remove_file(root.path().join("hub-data/store.redb")).unwrap();
    let hub = Hub::start(root.path(), &[]);
    assert_eq!(hub.token(), token);
    let (status, _) = hub.get("/api/v1/devices").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_api_showed_before_a_kill_9_is_there_after_it() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    for seq in 0..20 {
        let payload = format!(r#"{{"seq":{seq},"metrics":{{"v":{seq}}}}}"#);
        mosquitto_pub(
            hub.mqtt_port(),
            "devices/k9/telemetry",
            payload.as_bytes(),
            1,
        );
    }
    let before = eventually("twenty readings", || async {
        let (_, body) = hub.get("/api/v1/devices/k9/readings?order=oldest").await;
        (body["readings"].as_array()?.len() == 20).then_some(body)
    })
    .await;
    hub.kill9();
    let hub = Hub::start(root.path(), &[]);
    let (status, after) = hub.get("/api/v1/devices/k9/readings?order=oldest").await;
    assert_eq!(status, 200);
    assert_eq!(after["readings"], before["readings"]);
}
