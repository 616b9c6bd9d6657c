//! The read API end to end: paging by cursor, time bounds, filters, and errors that say what is wrong.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::harness::{Hub, eventually, mosquitto_pub};

async fn seed(hub: &Hub, device: &str, n: u64) {
    let port = hub.mqtt_port();
    for i in 0..n {
        // One minute apart, in the past, so time bounds are easy to reason about.
        let ts = format!("2026-11-20T{:02}:{:02}:00Z", 10 + i / 60, i % 60);
        let payload = format!(
            r#"{{"seq":{i},"ts":"{ts}","metrics":{{"v":{i},"even":{}}}}}"#,
            i % 2 == 0
        );
        mosquitto_pub(
            port,
            &format!("devices/{device}/telemetry"),
            payload.as_bytes(),
            1,
        );
    }
    crate::harness::wait_for_readings(hub, device, n).await;
}

fn seqs(body: &Value) -> Vec<u64> {
    body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn readings_page_by_cursor_filter_by_time_and_metric_and_errors_are_problems() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    seed(&hub, "pager", 25).await;

    // Newest first by default; walk every page.
    let mut cursor: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/devices/pager/readings?limit=10&cursor={c}"),
            None => "/api/v1/devices/pager/readings?limit=10".to_owned(),
        };
        let (status, body) = hub.get(&path).await;
        assert_eq!(status, 200, "{body}");
        all.extend(seqs(&body));
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(all, (0..25).rev().collect::<Vec<_>>());

    // A cursor stays correct while new readings arrive: the next page continues where it stopped.
    let (_, first) = hub
        .get("/api/v1/devices/pager/readings?order=oldest&limit=5")
        .await;
    assert_eq!(seqs(&first), vec![0, 1, 2, 3, 4]);
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/pager/telemetry",
        br#"{"seq":99,"ts":"2026-11-20T09:00:00Z","metrics":{"v":-1}}"#,
        1,
    );
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/pager/telemetry",
        br#"{"seq":100,"metrics":{"v":100}}"#,
        1,
    );
    eventually("two more readings", || async {
        let (_, d) = hub.get("/api/v1/devices/pager").await;
        (d["counters"]["readings"].as_u64()? == 27).then_some(())
    })
    .await;
    let c = first["next_cursor"].as_str().unwrap();
    let (_, rest) = hub
        .get(&format!(
            "/api/v1/devices/pager/readings?order=oldest&limit=100&cursor={c}"
        ))
        .await;
    let rest = seqs(&rest);
    assert_eq!(
        &rest[..20],
        &(5..25).collect::<Vec<_>>()[..],
        "no reading skipped or repeated"
    );
    assert_eq!(
        rest[20], 100,
        "a newer reading appears at the end; an older one (seq 99) is before the cursor"
    );

    // Time bounds: from inclusive, to exclusive; RFC 3339 and unix ms both work.
    let (_, body) = hub.get("/api/v1/devices/pager/readings?order=oldest&from=2026-11-20T10:05:00Z&to=2026-11-20T10:08:00Z").await;
    assert_eq!(seqs(&body), vec![5, 6, 7]);
    let from_ms = 1_795_255_200_000u64 - 86_400_000 + 5 * 60_000; // 2026-11-20T10:05:00Z
    let (_, body) = hub
        .get(&format!(
            "/api/v1/devices/pager/readings?order=oldest&from={from_ms}&limit=2"
        ))
        .await;
    assert_eq!(seqs(&body), vec![5, 6]);

    // Metric filter keeps only that metric.
    let (_, body) = hub
        .get("/api/v1/devices/pager/readings?metric=even&limit=3")
        .await;
    for r in body["readings"].as_array().unwrap() {
        let keys: BTreeSet<_> = r["metrics"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, BTreeSet::from(["even".to_owned()]));
    }

    // Bad parameters: 400 problem+json naming the parameter; unknown device: 404.
    let cases = [
        ("/api/v1/devices/pager/readings?limit=0", 400, "limit"),
        (
            "/api/v1/devices/pager/readings?limit=100000000",
            400,
            "limit",
        ),
        ("/api/v1/devices/pager/readings?limit=ten", 400, "limit"),
        ("/api/v1/devices/pager/readings?from=yesterday", 400, "from"),
        (
            "/api/v1/devices/pager/readings?from=2026-11-21T00:00:00Z&to=2026-11-20T00:00:00Z",
            400,
            "from",
        ),
        (
            "/api/v1/devices/pager/readings?cursor=garbage",
            400,
            "cursor",
        ),
        (
            "/api/v1/devices/pager/readings?order=sideways",
            400,
            "order",
        ),
        (
            "/api/v1/devices/pager/readings?metric=bad%20name",
            400,
            "metric",
        ),
        ("/api/v1/devices/pager/readings?colour=red", 400, "colour"),
        ("/api/v1/devices/bad%20id/readings", 400, "device id"),
        ("/api/v1/devices/nobody/readings", 404, "nobody"),
        ("/api/v1/devices/nobody/latest", 404, "nobody"),
        ("/api/v1/devices/nobody", 404, "nobody"),
        ("/api/v1/nothing-here", 404, ""),
        ("/api/v1/devices?cursor=%20", 400, "cursor"),
    ];
    for (path, status, needle) in cases {
        let response = hub
            .client()
            .get(hub.url(path))
            .bearer_auth(hub.token())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        assert!(response.headers().contains_key("x-request-id"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], status, "{path}");
        let detail = body["detail"].as_str().unwrap_or("");
        assert!(
            detail.contains(needle),
            "{path}: detail {detail:?} should name {needle:?}"
        );
        assert!(
            !detail.contains("hub-data") && !detail.contains('/') || path.contains("nothing"),
            "{path}: no paths in errors: {detail}"
        );
    }
    // A wrong method is a problem too.
    let response = hub
        .client()
        .delete(hub.url("/api/v1/devices"))
        .bearer_auth(hub.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn device_list_pages_by_cursor() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    for i in 0..7 {
        mosquitto_pub(
            hub.mqtt_port(),
            &format!("devices/dev-{i}/telemetry"),
            br#"{"x":1}"#,
            1,
        );
    }
    eventually("seven devices", || async {
        let (_, b) = hub.get("/api/v1/devices?limit=100").await;
        (b["devices"].as_array()?.len() == 7).then_some(())
    })
    .await;
    let mut ids = Vec::new();
    let mut path = "/api/v1/devices?limit=3".to_owned();
    loop {
        let (status, body) = hub.get(&path).await;
        assert_eq!(status, 200);
        let page = body["devices"].as_array().unwrap();
        assert!(page.len() <= 3);
        ids.extend(page.iter().map(|d| d["id"].as_str().unwrap().to_owned()));
        match body["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/devices?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(ids, (0..7).map(|i| format!("dev-{i}")).collect::<Vec<_>>());
}

/// PATCHes a device with the admin token; status and body.
async fn patch(hub: &Hub, device: &str, body: Value) -> (u16, Value) {
    hub.send(
        reqwest::Method::PATCH,
        &format!("/api/v1/devices/{device}"),
        Some(&body),
    )
    .await
}

fn ids(body: &Value) -> Vec<String> {
    body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_and_display_names_are_set_kept_and_filtered_on() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("hub.toml");
    std::fs::write(&config, "[devices]\noffline_after = \"2s\"\n").unwrap();
    let config = config.display().to_string();
    let hub = Hub::start(root.path(), &["--config", &config]);
    for device in ["lab-1", "lab-2", "lab-3"] {
        seed(&hub, device, 1).await;
    }

    let (status, body) = patch(
        &hub,
        "lab-1",
        serde_json::json!({"labels": {"room": "greenhouse", "bench": "north"}, "display_name": "North bench"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["display_name"], "North bench");
    assert_eq!(body["labels"]["room"], "greenhouse");
    assert_eq!(body["wire"], "json");
    let (status, _) = patch(
        &hub,
        "lab-2",
        serde_json::json!({"labels": {"room": "cellar"}}),
    )
    .await;
    assert_eq!(status, 200);
    // A field left out stays; null removes the display name.
    let (_, body) = patch(&hub, "lab-1", serde_json::json!({"display_name": null})).await;
    assert_eq!(body["display_name"], Value::Null);
    assert_eq!(body["labels"]["bench"], "north");
    let (_, body) = patch(&hub, "lab-1", serde_json::json!({"display_name": "North"})).await;
    assert_eq!(body["display_name"], "North");

    let (_, body) = hub.get("/api/v1/devices?label=room").await;
    assert_eq!(ids(&body), ["lab-1", "lab-2"]);
    let (_, body) = hub.get("/api/v1/devices?label=room%3Dcellar").await;
    assert_eq!(ids(&body), ["lab-2"]);
    let (_, body) = hub.get("/api/v1/devices?transport=mqtt&limit=1").await;
    assert_eq!(ids(&body), ["lab-1"], "filters page like the plain list");
    assert_eq!(body["next_cursor"], "lab-1");
    let (_, body) = hub.get("/api/v1/devices?transport=serial").await;
    assert!(ids(&body).is_empty());
    let (status, _) = hub.get("/api/v1/devices?transport=pigeon").await;
    assert_eq!(status, 400);
    let (status, _) = hub.get("/api/v1/devices?online=maybe").await;
    assert_eq!(status, 400);

    // Silent for two seconds: offline; then lab-3 speaks again and only it is online.
    eventually("every device offline", || async {
        let (_, body) = hub.get("/api/v1/devices?online=false").await;
        (ids(&body).len() == 3).then_some(())
    })
    .await;
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/lab-3/telemetry",
        br#"{"seq":1,"metrics":{"v":2}}"#,
        1,
    );
    eventually("lab-3 online", || async {
        let (_, body) = hub.get("/api/v1/devices?online=true").await;
        (ids(&body) == ["lab-3"]).then_some(())
    })
    .await;

    // Kept across a restart.
    assert!(hub.stop().success());
    let hub = Hub::start(root.path(), &["--config", &config]);
    let (_, body) = hub.get("/api/v1/devices/lab-1").await;
    assert_eq!(body["display_name"], "North");
    assert_eq!(body["labels"]["room"], "greenhouse");

    // Bad updates change nothing.
    for bad in [
        serde_json::json!({"labels": {"bad key": "x"}}),
        serde_json::json!({"labels": {"k": ""}}),
        serde_json::json!({"labels": {"k": "a\u{7}b"}}),
        serde_json::json!({"display_name": "x".repeat(300)}),
        serde_json::json!({"colour": "red"}),
        serde_json::json!({"labels": (0..33).map(|i| (format!("k{i}"), Value::from("v"))).collect::<serde_json::Map<_, _>>()}),
    ] {
        let (status, body) = patch(&hub, "lab-1", bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {body}");
    }
    assert_eq!(patch(&hub, "nobody", serde_json::json!({})).await.0, 404);
    let (_, body) = hub.get("/api/v1/devices/lab-1").await;
    assert_eq!(body["display_name"], "North");
    assert_eq!(body["labels"].as_object().unwrap().len(), 2);
    hub.stop();
}
