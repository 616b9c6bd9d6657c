//! `DELETE /api/v1/devices/{id}` against the real binary: who may, readings kept or erased (and
//! what the readings, pull and status routes then say, also after a restart), a device publishing
//! again, a sink's in-flight batch keeping its key across an erase and a kill, the credentials
//! (password, certificate, tokens for it alone) revoked and the connections closed, and kill -9
//! in the middle of an erase on both store write paths.

use serde_json::{Value, json};

use crate::broker_gate::{DeviceTls, Sub, assert_refused, granted, issue_device, start_hub};
use crate::device_passwords::{assert_connack, hold, json_lines, publish_as};
use crate::harness::{Hub, eventually, free_port, metric, mosquitto_pub, wait_for_readings};
use crate::sync::{
    Answer, Receiver, assert_once_in_order, http_sink_config, publish, publish_lines, sync_status,
};

/// `DELETE /api/v1/devices/{id}{query}` with `token` (the admin's if `None`).
async fn delete(hub: &Hub, id: &str, query: &str, token: Option<&str>) -> (u16, Value) {
    let token = token.map_or_else(|| hub.token(), str::to_owned);
    let response = hub
        .client()
        .delete(hub.url(&format!("/api/v1/devices/{id}{query}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every reading of the pull API from the start, `limit` a page; and the last page.
async fn pull_all(hub: &Hub, limit: u32) -> (Vec<Value>, Value) {
    let mut readings = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let path = match cursor {
            Some(c) => format!("/api/v1/sync/readings?limit={limit}&cursor={c}"),
            None => format!("/api/v1/sync/readings?limit={limit}"),
        };
        let (status, page) = hub.get(&path).await;
        assert_eq!(status, 200, "{page}");
        readings.extend(page["readings"].as_array().unwrap().iter().cloned());
        if page["more"] != true {
            return (readings, page);
        }
        let next = page["next_cursor"].as_u64().unwrap();
        assert!(
            cursor.is_none_or(|c| next > c),
            "the cursor went back: {page}"
        );
        cursor = Some(next);
    }
}

/// The offsets of `device`'s readings through its readings route; `None` on 404.
async fn offsets(hub: &Hub, device: &str) -> Option<Vec<u64>> {
    let (status, page) = hub
        .get(&format!(
            "/api/v1/devices/{device}/readings?order=oldest&limit=1000"
        ))
        .await;
    match status {
        404 => None,
        200 => Some(
            page["readings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["offset"].as_u64().unwrap())
                .collect(),
        ),
        _ => panic!("{status} {page}"),
    }
}

async fn listed(hub: &Hub) -> Vec<String> {
    let (_, body) = hub.get("/api/v1/devices").await;
    body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

/// What the routes say after k-1 was removed with its readings kept and e-1 with them erased.
async fn check_removed(hub: &Hub) {
    assert_eq!(listed(hub).await, vec!["o-1".to_owned()]);
    for device in ["k-1", "e-1"] {
        for route in ["", "/latest"] {
            let (status, _) = hub.get(&format!("/api/v1/devices/{device}{route}")).await;
            assert_eq!(status, 404, "{device}{route}");
        }
    }
    assert_eq!(offsets(hub, "k-1").await.map(|o| o.len()), Some(5));
    assert_eq!(offsets(hub, "e-1").await, None);
    // The pull API pages past the erased offsets (some are at the end): every other reading once,
    // in offset order, and a last page whose cursor is the last offset given.
    let (readings, last) = pull_all(hub, 3).await;
    let devices: Vec<&str> = readings
        .iter()
        .map(|r| r["device"].as_str().unwrap())
        .collect();
    assert!(!devices.contains(&"e-1"), "{devices:?}");
    assert_eq!(readings.len(), 10, "{devices:?}");
    let order: Vec<u64> = readings
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert_once_in_order(&readings, &["k-1", "o-1"], 5);
    let status = sync_status(hub).await;
    let head = status["store"]["next_offset"].as_u64().unwrap();
    assert_eq!(last["next_cursor"].as_u64(), Some(head - 1), "{last}");
    assert_eq!(status["store"]["readings"], 10, "{status}");
    assert_eq!(metric(hub, "hub_store_readings", "").await, 10.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_device_keeps_or_loses_its_readings_as_asked_also_after_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let mqtt = format!("127.0.0.1:{}", free_port());
    let args = ["--api-listen", "127.0.0.1:0", "--mqtt-listen", &mqtt];
    let hub = Hub::start_in(root.path(), &args, &[]);
    publish(&hub, &["k-1", "e-1", "o-1"], 0, 5);
    // e-1's last readings are the newest: erasing them leaves gaps at the head.
    publish(&hub, &["e-1"], 5, 3);
    for (device, n) in [("k-1", 5), ("o-1", 5), ("e-1", 8)] {
        wait_for_readings(&hub, device, n).await;
    }

    // Who may, and what is refused.
    let (_, reader) = hub
        .send(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(&json!({"name": "reader", "scopes": ["read", "command"]})),
        )
        .await;
    let reader = reader["secret"].as_str().unwrap().to_owned();
    assert_eq!(delete(&hub, "k-1", "", Some(&reader)).await.0, 403);
    assert_eq!(delete(&hub, "nobody-1", "", None).await.0, 404);
    assert_eq!(delete(&hub, "k-1", "?readings=maybe", None).await.0, 400);
    assert_eq!(delete(&hub, "bad%20id", "", None).await.0, 400);
    assert_eq!(listed(&hub).await.len(), 3, "nothing removed yet");

    // Kept (the default) and erased.
    let (status, kept) = delete(&hub, "k-1", "", None).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(
        (kept["readings"].as_str(), kept["erased"].as_u64()),
        (Some("keep"), Some(0))
    );
    let (status, erased) = delete(&hub, "e-1", "?readings=erase", None).await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        (erased["readings"].as_str(), erased["erased"].as_u64()),
        (Some("erase"), Some(8))
    );
    assert_eq!(
        delete(&hub, "k-1", "?readings=keep", None).await.0,
        404,
        "removed already"
    );
    check_removed(&hub).await;

    // The same after a restart.
    hub.stop();
    let hub = Hub::start_in(root.path(), &args, &[]);
    check_removed(&hub).await;

    // Publishing again registers a removed device anew: e-1 with only its new reading, k-1 with
    // its kept readings and the new one.
    publish(&hub, &["e-1", "k-1"], 100, 1);
    wait_for_readings(&hub, "e-1", 1).await;
    wait_for_readings(&hub, "k-1", 1).await;
    assert_eq!(offsets(&hub, "e-1").await.map(|o| o.len()), Some(1));
    assert_eq!(offsets(&hub, "k-1").await.map(|o| o.len()), Some(6));
    // A device removed with its readings kept can have them erased later.
    assert_eq!(delete(&hub, "k-1", "", None).await.0, 200);
    let (status, erased) = delete(&hub, "k-1", "?readings=erase", None).await;
    assert_eq!(
        (status, erased["erased"].as_u64()),
        (200, Some(6)),
        "{erased}"
    );
    assert_eq!(offsets(&hub, "k-1").await, None);
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erase_under_a_batch_in_flight_keeps_its_key_across_a_kill_and_nothing_else_moves() {
    let root = tempfile::tempdir().unwrap();
    let (receiver, addr) = Receiver::start(Answer::Hang).await;
    let config = http_sink_config(root.path(), addr, "");
    let mqtt = format!("127.0.0.1:{}", free_port());
    let args = ["--api-listen", "127.0.0.1:0", "--mqtt-listen", &mqtt];
    let hub = Hub::start_in(root.path(), &args, &["--config", &config]);
    publish(&hub, &["k-1", "e-1"], 0, 10);
    eventually("a batch on its way", || async {
        (!receiver.seen().is_empty()).then_some(())
    })
    .await;
    wait_for_readings(&hub, "k-1", 10).await;
    wait_for_readings(&hub, "e-1", 10).await;
    let hung = receiver.seen()[0].clone();
    let held = |body: &Value, device: &str| -> Vec<Value> {
        body["readings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["device"] == device)
            .cloned()
            .collect()
    };
    assert!(
        !held(&hung.body, "e-1").is_empty(),
        "the hung batch holds e-1's readings"
    );
    let (status, erased) = delete(&hub, "e-1", "?readings=erase", None).await;
    assert_eq!(
        (status, erased["erased"].as_u64()),
        (200, Some(10)),
        "{erased}"
    );
    hub.kill9();

    receiver.answer(Answer::Take);
    let hub = Hub::start_in(root.path(), &args, &["--config", &config]);
    publish(&hub, &["k-1"], 10, 5);
    eventually("every k-1 reading delivered", || async {
        let taken = receiver.taken();
        (taken.iter().filter(|r| r["device"] == "k-1").count() >= 15).then_some(())
    })
    .await;
    let resent = receiver
        .seen()
        .into_iter()
        .skip(1)
        .find(|s| s.status == 200)
        .unwrap();
    // The batch in flight went again with its key and the readings left of it.
    assert_eq!(resent.key, hung.key, "the resent batch kept its key");
    assert_eq!(
        resent.body["readings"].as_array().unwrap(),
        &held(&hung.body, "k-1")
    );
    let taken = receiver.taken();
    assert!(
        taken.iter().all(|r| r["device"] == "k-1"),
        "an erased reading was sent after the erase"
    );
    assert_once_in_order(&taken, &["k-1"], 15);
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn removal_revokes_the_password_certificate_and_tokens_and_closes_connections() {
    let root = tempfile::tempdir().unwrap();
    let (hub, gate) = start_hub(root.path(), "passwords = \"allow\"\n");
    let (_, made) = hub
        .send(
            reqwest::Method::POST,
            "/api/v1/device-credentials",
            Some(&json!({"device": "pw-1"})),
        )
        .await;
    let password = made["password"].as_str().unwrap().to_owned();
    // ct-1's certificate, copied where the test keeps it (the removal moves the hub's copy aside).
    let issued = issue_device(&hub, "ct-1");
    let (cert, key) = issued.cert.clone().unwrap();
    let kept = DeviceTls {
        ca: issued.ca.clone(),
        cert: Some((root.path().join("ct-1.crt"), root.path().join("ct-1.key"))),
    };
    std::fs::copy(&cert, root.path().join("ct-1.crt")).unwrap();
    std::fs::copy(&key, root.path().join("ct-1.key")).unwrap();
    let token = |devices: &[&str]| {
        let hub = &hub;
        let body = json!({"name": "app", "scopes": ["read"], "devices": devices});
        async move {
            let (_, t) = hub
                .send(reqwest::Method::POST, "/api/v1/tokens", Some(&body))
                .await;
            (
                t["id"].as_str().unwrap().to_owned(),
                t["secret"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (alone_id, alone) = token(&["ct-1"]).await;
    let (_, wider) = token(&["ct-*"]).await;

    // Both devices publish and hold a connection.
    assert!(publish_as(gate, &hub, "pw-1", &password).status.success());
    let out = crate::broker_gate::publish_reading(gate, &kept, "ct-1", 0);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_readings(&hub, "pw-1", 1).await;
    wait_for_readings(&hub, "ct-1", 1).await;
    let held_pw = hold(&hub, gate, ("pw-1", &password));
    let held_ct = Sub::start(gate, &kept, "ct-1", "devices/ct-1/commands");
    held_ct.wait_for("SUBACK QoS 1", granted).await;
    eventually("pw-1's connection", || async {
        (metric(&hub, "hub_mqtt_logins_total", "outcome=\"accepted\"").await >= 2.0).then_some(())
    })
    .await;

    let (status, removed) = delete(&hub, "pw-1", "", None).await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["revoked"]["password"], true, "{removed}");
    let lines = json_lines(&held_pw.wait_with_output().unwrap());
    assert_eq!(
        lines[1]["disconnected"], true,
        "pw-1's connection stayed: {lines:?}"
    );
    assert_connack(
        &publish_as(gate, &hub, "pw-1", &password),
        "bad user name or password",
        "pw-1 removed",
    );

    let (status, removed) = delete(&hub, "ct-1", "", None).await;
    assert_eq!(status, 200, "{removed}");
    assert!(removed["revoked"]["certificate"].is_string(), "{removed}");
    assert_eq!(removed["revoked"]["tokens"], json!([alone_id]), "{removed}");
    assert!(hub.data.join("tls/devices/ct-1.crt.revoked").exists());
    // Its connection closed; its certificate now fails the handshake (no SIGHUP needed).
    eventually("ct-1's connection closed", || async {
        let log = hub.log();
        (log.matches("the device's credentials changed, or the device was removed")
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    drop(held_ct);
    assert_refused(
        &crate::broker_gate::publish_reading(gate, &kept, "ct-1", 1),
        "a removed device's certificate",
    );
    // The token for ct-1 alone is refused; the one for ct-* is not.
    let status = |secret: String| {
        let hub = &hub;
        async move {
            hub.client()
                .get(hub.url("/api/v1/devices"))
                .bearer_auth(secret)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(alone).await, 401);
    assert_eq!(status(wider).await, 200);
    hub.stop();
}

/// kill -9 while device v-1's 8,000 readings are being erased, on `write_path`: the next start
/// finishes the erase, and o-1's readings, the offsets and the count are untouched.
async fn killed_during_an_erase(write_path: &str) {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("hub.toml");
    std::fs::write(&config, format!("[data]\nwrite_path = \"{write_path}\"\n")).unwrap();
    let config = config.display().to_string();
    let mqtt = format!("127.0.0.1:{}", free_port());
    let args = ["--api-listen", "127.0.0.1:0", "--mqtt-listen", &mqtt];
    let hub = Hub::start_in(root.path(), &args, &["--config", &config]);
    let port = hub.mqtt_port();
    publish_lines(port, "o-1", 0..300, 0);
    publish_lines(port, "v-1", 0..8000, 0);
    publish_lines(port, "o-1", 300..600, 0);
    wait_for_readings(&hub, "o-1", 600).await;
    wait_for_readings(&hub, "v-1", 8000).await;
    let before = offsets(&hub, "o-1").await.unwrap();

    let client = hub.client();
    let (url, token) = (hub.url("/api/v1/devices/v-1?readings=erase"), hub.token());
    let request = tokio::spawn(async move { client.delete(url).bearer_auth(token).send().await });
    // The first step (v-1 leaves the registry) is durable once it reads 404: kill then.
    eventually("v-1 marked removed", || async {
        (hub.get("/api/v1/devices/v-1").await.0 == 404).then_some(())
    })
    .await;
    hub.kill9();
    let _ = request.await;

    let hub = Hub::start_in(root.path(), &args, &["--config", &config]);
    let interrupted = hub
        .log()
        .contains("finished erasing a removed device's readings");
    eprintln!("{write_path}: the kill came in the middle of the erase: {interrupted}");
    assert_eq!(offsets(&hub, "v-1").await, None);
    assert_eq!(offsets(&hub, "o-1").await, Some(before));
    let (readings, _) = pull_all(&hub, 1000).await;
    assert_eq!(readings.len(), 600);
    assert_once_in_order(&readings, &["o-1"], 600);
    assert_eq!(sync_status(&hub).await["store"]["readings"], 600);
    // And it goes on.
    mosquitto_pub(
        port,
        "devices/o-1/telemetry",
        br#"{"seq":600,"metrics":{"v":1}}"#,
        1,
    );
    wait_for_readings(&hub, "o-1", 601).await;
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_an_erase_loses_nothing_else_on_the_direct_write_path() {
    killed_during_an_erase("direct").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_an_erase_loses_nothing_else_on_the_log_write_path() {
    killed_during_an_erase("log").await;
}
