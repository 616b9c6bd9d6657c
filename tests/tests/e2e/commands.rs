//! Commands end to end: firmware-sim devices answer over JSON MQTT, binary MQTT and a serial line;
//! offline devices get their commands when they come back or the command times out; bad requests
//! get a useful 4xx and change nothing.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::harness::{Hub, SerialCable, Sim, binary, eventually, mosquitto_pub};

/// POSTs a command with the admin token; status, body and `Location`.
async fn post(hub: &Hub, device: &str, query: &str, body: Value) -> (u16, Value, Option<String>) {
    let response = hub
        .client()
        .post(hub.url(&format!("/api/v1/devices/{device}/commands{query}")))
        .bearer_auth(hub.token())
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        location,
    )
}

/// Sends a command with `?wait=5s`, checks that it ended in `state`, and returns it.
async fn final_state(hub: &Hub, device: &str, request: Value, state: &str) -> Value {
    let (status, body, _) = post(hub, device, "?wait=5s", request).await;
    assert_eq!(
        (status, body["state"].clone()),
        (200, json!(state)),
        "{body}"
    );
    body
}

/// An idle firmware-sim device (answers commands, sends no telemetry).
fn idle_device(hub: &Hub, transport: &str, prefix: &str, extra: &[&str]) -> Sim {
    Sim::from_child(
        Command::new(binary("firmware-sim"))
            .args(["--broker", &format!("127.0.0.1:{}", hub.mqtt_port())])
            .args(["--transport", transport, "--prefix", prefix, "--idle"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start firmware-sim"),
    )
}

fn register_json_device(hub: &Hub, device: &str) {
    mosquitto_pub(
        hub.mqtt_port(),
        &format!("devices/{device}/telemetry"),
        br#"{"seq":0,"metrics":{"v":1}}"#,
        1,
    );
}

/// Sends `echo` until the device answers: its subscription may take a moment to exist.
async fn until_answering(hub: &Hub, device: &str) {
    eventually("the device answers commands", || async {
        let (status, body, _) = post(
            hub,
            device,
            "?wait=2s",
            json!({"name": "echo", "timeout": "2s"}),
        )
        .await;
        (status == 200 && body["state"] == "succeeded").then_some(())
    })
    .await;
}

/// The round trips every transport must pass: echo with arguments, a failure, a slow answer, no
/// answer at all (timed out), and the same record through GET.
async fn round_trips(hub: &Hub, device: &str, binary_device: bool) {
    until_answering(hub, device).await;

    let args = json!({"level": 3, "mode": "eco", "on": true});
    let (status, body, location) = post(
        hub,
        device,
        "?wait=5s",
        json!({"name": "echo", "args": args}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "succeeded");
    assert_eq!(body["result"], args);
    assert_eq!(body["device"], device);
    assert!(
        body["delivered"].is_string() && body["finished"].is_string(),
        "{body}"
    );
    let id = body["id"].as_u64().unwrap();
    assert_eq!(
        location.as_deref(),
        Some(format!("/api/v1/devices/{device}/commands/{id}").as_str())
    );
    let (status, fetched) = hub
        .get(&format!("/api/v1/devices/{device}/commands/{id}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(fetched, body, "GET shows the same record");

    let body = final_state(hub, device, json!({"name": "fail"}), "failed").await;
    if binary_device {
        assert_eq!(body["error_code"], 1);
    } else {
        assert_eq!(body["error"], "requested failure");
    }

    let body = final_state(
        hub,
        device,
        json!({"name": "sleep", "args": {"ms": 300}}),
        "succeeded",
    )
    .await;
    assert_eq!(body["result"]["slept_ms"], 300);

    let body = final_state(
        hub,
        device,
        json!({"name": "ignore", "timeout": "1s"}),
        "timed_out",
    )
    .await;
    assert!(
        body["error"].as_str().unwrap().contains("no result"),
        "{body}"
    );

    // Without wait: 202 at once, then the state moves on its own.
    let (status, body, _) = post(hub, device, "", json!({"name": "echo"})).await;
    assert_eq!(status, 202, "{body}");
    assert!(
        ["pending", "delivered"].contains(&body["state"].as_str().unwrap()),
        "{body}"
    );
    let id = body["id"].as_u64().unwrap();
    eventually("the command succeeds", || async {
        let (_, body) = hub
            .get(&format!("/api/v1/devices/{device}/commands/{id}"))
            .await;
        (body["state"] == "succeeded").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_and_binary_devices_answer_commands_over_mqtt() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);

    register_json_device(&hub, "cmdj-0");
    let _json_device = idle_device(&hub, "json", "cmdj-", &["--devices", "1"]);
    round_trips(&hub, "cmdj-0", false).await;

    let _binary_device = idle_device(&hub, "binary", "cmdb-", &["--devices", "1"]);
    eventually("the binary device says Hello", || async {
        (hub.get("/api/v1/devices/cmdb-0").await.0 == 200).then_some(())
    })
    .await;
    round_trips(&hub, "cmdb-0", true).await;
    // What a binary device cannot take is refused before it is stored.
    let (status, body, _) = post(
        &hub,
        "cmdb-0",
        "",
        json!({"name": "set", "args": {"a": {"b": 1}}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("binary"),
        "{body}"
    );

    // A command's path names its device: another device's path does not show it.
    let (_, body, _) = post(&hub, "cmdj-0", "", json!({"name": "echo"})).await;
    let id = body["id"].as_u64().unwrap();
    assert_eq!(
        hub.get(&format!("/api/v1/devices/cmdb-0/commands/{id}"))
            .await
            .0,
        404
    );
    assert_eq!(
        hub.get("/api/v1/devices/cmdj-0/commands/999999").await.0,
        404
    );
    assert_eq!(hub.get("/api/v1/devices/cmdj-0/commands/x").await.0, 404);
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_serial_device_answers_commands_on_its_line() {
    let root = tempfile::tempdir().unwrap();
    let cable = SerialCable::plug(root.path(), "tty-cmd");
    let config = root.path().join("hub.toml");
    std::fs::write(
        &config,
        format!("[[serial]]\npath = \"{}\"\n", cable.hub.display()),
    )
    .unwrap();
    let hub = Hub::start(root.path(), &["--config", &config.display().to_string()]);
    let device = cable.device.display().to_string();
    let _sim = idle_device(&hub, "serial", "cmds-", &["--serial", &device]);
    eventually("the serial device says Hello", || async {
        (hub.get("/api/v1/devices/cmds-0").await.0 == 200).then_some(())
    })
    .await;
    round_trips(&hub, "cmds-0", true).await;
    hub.stop();
}

fn config_file(dir: &Path, text: &str) -> String {
    let path = dir.join("hub.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_devices_get_commands_when_they_return_even_after_a_restart_or_time_out() {
    let root = tempfile::tempdir().unwrap();
    let config = config_file(root.path(), "[devices]\noffline_after = \"1s\"\n");
    let hub = Hub::start(root.path(), &["--config", &config]);
    register_json_device(&hub, "away-1");
    eventually("away-1 is offline after a second of silence", || async {
        let (_, body) = hub.get("/api/v1/devices/away-1").await;
        (body["online"] == false).then_some(())
    })
    .await;

    // ttl 0: refused rather than queued.
    let (status, body, _) = post(&hub, "away-1", "", json!({"name": "echo", "ttl": "0s"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("offline"));

    // A short ttl runs out.
    let body = final_state(
        &hub,
        "away-1",
        json!({"name": "echo", "ttl": "1s"}),
        "timed_out",
    )
    .await;
    assert!(
        body["error"].as_str().unwrap().contains("not delivered"),
        "{body}"
    );
    assert!(body["delivered"].is_null());

    // A long one waits, across a restart of the hub.
    let (status, body, _) = post(
        &hub,
        "away-1",
        "",
        json!({"name": "echo", "args": {"n": 7}, "ttl": "5m"}),
    )
    .await;
    assert_eq!(
        (status, body["state"].clone()),
        (202, json!("pending")),
        "{body}"
    );
    let id = body["id"].as_u64().unwrap();
    assert!(hub.stop().success());
    let hub = Hub::start_in(
        root.path(),
        &[
            "--api-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            &format!("127.0.0.1:{}", crate::harness::free_port()),
        ],
        &["--config", &config],
    );
    let (_, body) = hub
        .get(&format!("/api/v1/devices/away-1/commands/{id}"))
        .await;
    assert_eq!(body["state"], "pending", "{body}");
    // The device comes back: it connects and says so; the command goes out and is answered.
    let _device = idle_device(
        &hub,
        "json",
        "away-",
        &["--devices", "2", "--duration", "60"],
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    mosquitto_pub(hub.mqtt_port(), "devices/away-1/status", b"online", 1);
    eventually("the queued command is answered", || async {
        let (_, body) = hub
            .get(&format!("/api/v1/devices/away-1/commands/{id}"))
            .await;
        (body["state"] == "succeeded").then_some(body)
    })
    .await;
    let (_, body) = hub
        .get(&format!("/api/v1/devices/away-1/commands/{id}"))
        .await;
    assert_eq!(body["result"], json!({"n": 7}));
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_command_requests_get_a_reason_and_limits_hold() {
    let root = tempfile::tempdir().unwrap();
    let config = config_file(
        root.path(),
        "[commands]\nmax_open_per_device = 2\nmax_wait = \"10s\"\n",
    );
    let hub = Hub::start(root.path(), &["--config", &config]);
    register_json_device(&hub, "bad-1");
    crate::harness::wait_for_readings(&hub, "bad-1", 1).await;

    assert_eq!(
        post(&hub, "nobody", "", json!({"name": "echo"})).await.0,
        404
    );
    assert_eq!(
        post(&hub, "bad id!", "", json!({"name": "echo"})).await.0,
        400
    );
    for (query, body, says) in [
        ("", json!({"name": "no spaces"}), "`name`"),
        ("", json!({"args": {}}), "name"),
        ("", json!({"name": "x", "args": [1]}), "args"),
        ("", json!({"name": "x", "ttl": "soon"}), "`ttl`"),
        ("", json!({"name": "x", "ttl": "2d"}), "`ttl`"),
        ("", json!({"name": "x", "timeout": "0s"}), "`timeout`"),
        ("", json!({"name": "x", "colour": "red"}), "colour"),
        ("?wait=1m", json!({"name": "x"}), "`wait`"),
        ("?wait=x", json!({"name": "x"}), "`wait`"),
        ("?later=1", json!({"name": "x"}), "later"),
    ] {
        let (status, answer, _) = post(&hub, "bad-1", query, body.clone()).await;
        assert_eq!(status, 400, "{query} {body} -> {answer}");
        assert_eq!(answer["status"], 400);
        assert!(
            answer["detail"].as_str().unwrap().contains(says),
            "{query} {body} -> {answer}"
        );
    }
    // Not JSON, and too big.
    let client = hub.client();
    let url = hub.url("/api/v1/devices/bad-1/commands");
    let not_json = client
        .post(&url)
        .bearer_auth(hub.token())
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status().as_u16(), 400);
    let big = json!({"name": "x", "args": {"s": "x".repeat(20_000)}}).to_string();
    let too_big = client
        .post(&url)
        .bearer_auth(hub.token())
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status().as_u16(), 413);
    // Nobody answers (no device connected): two open commands, then 429 with Retry-After.
    for _ in 0..2 {
        assert_eq!(
            post(&hub, "bad-1", "", json!({"name": "echo"})).await.0,
            202
        );
    }
    let response = client
        .post(&url)
        .bearer_auth(hub.token())
        .json(&json!({"name": "echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));
    // No token: 401, nothing stored.
    let response = client
        .post(&url)
        .json(&json!({"name": "echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_cannot_answer_another_devices_command() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    register_json_device(&hub, "owner-1");
    register_json_device(&hub, "intruder-1");
    crate::harness::wait_for_readings(&hub, "intruder-1", 1).await;
    let (status, body, _) = post(
        &hub,
        "owner-1",
        "",
        json!({"name": "echo", "timeout": "10m"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_u64().unwrap();
    let forged = json!({"id": id, "ok": false, "error": "forged"}).to_string();
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/intruder-1/command-results",
        forged.as_bytes(),
        1,
    );
    // A real answer from the owner afterwards still counts: the forged one changed nothing.
    let real = json!({"id": id, "ok": true, "result": {"from": "owner"}}).to_string();
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/owner-1/command-results",
        real.as_bytes(),
        1,
    );
    let body = eventually("the owner's answer is recorded", || async {
        let (_, body) = hub
            .get(&format!("/api/v1/devices/owner-1/commands/{id}"))
            .await;
        (body["state"] != "pending" && body["state"] != "delivered").then_some(body)
    })
    .await;
    assert_eq!(body["state"], "succeeded", "{body}");
    assert_eq!(body["result"], json!({"from": "owner"}));
    hub.stop();
}

/// GET `path` with `token`; status, content type and JSON body.
async fn get_as(hub: &Hub, token: &str, path: &str) -> (u16, String, Value) {
    let response = hub
        .client()
        .get(hub.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|c| c.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Makes a token with `scopes` limited to `devices`; its secret.
async fn token(hub: &Hub, name: &str, scopes: &[&str], devices: &[&str]) -> String {
    let (status, made) = hub
        .send(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(&json!({"name": name, "scopes": scopes, "devices": devices})),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    made["secret"].as_str().unwrap().to_owned()
}

/// Every command of `device` through `GET .../commands`, `limit` a page, following the cursors.
async fn all_pages(hub: &Hub, device: &str, limit: usize) -> Vec<Value> {
    let mut listed = Vec::new();
    let mut cursor: Option<u64> = None;
    for _ in 0..100 {
        let mut path = format!("/api/v1/devices/{device}/commands?limit={limit}");
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = hub.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let commands = page["commands"].as_array().unwrap();
        assert!(commands.len() <= limit, "{page}");
        listed.extend(commands.iter().cloned());
        match page["next_cursor"].as_u64() {
            Some(next) => cursor = Some(next),
            None => return listed,
        }
    }
    panic!("more than 100 pages");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_devices_commands_are_listed_newest_first_with_their_results_paged_and_bounded() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    for device in ["lst-0", "lst-1"] {
        register_json_device(&hub, device);
        crate::harness::wait_for_readings(&hub, device, 1).await;
    }
    let _devices = idle_device(&hub, "json", "lst-", &["--devices", "2"]);
    until_answering(&hub, "lst-0").await;
    until_answering(&hub, "lst-1").await;

    // Commands for both devices, interleaved, each answered: echoes, and one failure.
    let mut sent = Vec::new();
    for n in 0..5 {
        let body = final_state(
            &hub,
            "lst-0",
            json!({"name": "echo", "args": {"n": n}}),
            "succeeded",
        )
        .await;
        sent.push(body);
        final_state(&hub, "lst-1", json!({"name": "echo"}), "succeeded").await;
    }
    sent.push(final_state(&hub, "lst-0", json!({"name": "fail"}), "failed").await);

    // Newest first, each as GET .../commands/{cid} shows it, with its result or error. (The
    // echoes of `until_answering` come after: some may still be moving, so only the final
    // commands sent here are compared whole.)
    let (status, content_type, page) =
        get_as(&hub, &hub.token(), "/api/v1/devices/lst-0/commands").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/json"),
        "{page}"
    );
    assert_eq!(page["device"], "lst-0");
    let listed = page["commands"].as_array().unwrap().clone();
    let ids = |commands: &[Value]| -> Vec<u64> {
        commands.iter().map(|c| c["id"].as_u64().unwrap()).collect()
    };
    let newest: Vec<Value> = sent.iter().rev().cloned().collect();
    assert_eq!(listed[..newest.len()], newest[..], "{page}");
    assert_eq!(listed[0]["state"], "failed");
    assert_eq!(listed[0]["error"], "requested failure");
    assert_eq!(listed[1]["result"], json!({"n": 4}));
    assert!(listed.iter().all(|c| c["device"] == "lst-0"), "{page}");
    let all_ids = ids(&listed);
    assert!(
        all_ids.windows(2).all(|w| w[0] > w[1]),
        "newest first: {all_ids:?}"
    );
    for c in &newest {
        let (_, one) = hub
            .get(&format!("/api/v1/devices/lst-0/commands/{}", c["id"]))
            .await;
        assert_eq!(&one, c);
    }
    assert!(page["next_cursor"].is_null(), "one page holds them: {page}");

    // Pages of 2 (and of 1), following next_cursor, give the same commands; the last page says
    // there is no next.
    for limit in [1, 2] {
        let paged = all_pages(&hub, "lst-0", limit).await;
        assert_eq!(ids(&paged), all_ids, "pages of {limit}");
        assert_eq!(paged[..newest.len()], newest[..], "pages of {limit}");
    }
    let (_, first) = hub.get("/api/v1/devices/lst-0/commands?limit=2").await;
    assert_eq!(first["commands"].as_array().unwrap().len(), 2);
    assert_eq!(first["next_cursor"], first["commands"][1]["id"]);
    // Below the oldest id, nothing; the largest page allowed is served.
    let (status, none) = hub.get("/api/v1/devices/lst-0/commands?cursor=1").await;
    assert_eq!(
        (status, none["commands"].as_array().unwrap().len()),
        (200, 0)
    );
    assert!(none["next_cursor"].is_null());
    let (status, _) = hub.get("/api/v1/devices/lst-0/commands?limit=1000").await;
    assert_eq!(status, 200, "limit = api.max_page");

    // Bad parameters: 400, a problem naming the parameter.
    for (query, says) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("cursor=x", "cursor"),
        ("colour=red", "colour"),
    ] {
        let path = format!("/api/v1/devices/lst-0/commands?{query}");
        let (status, content_type, problem) = get_as(&hub, &hub.token(), &path).await;
        assert_eq!(status, 400, "{query}: {problem}");
        assert_eq!(content_type, "application/problem+json", "{query}");
        assert_eq!(problem["status"], 400);
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{query}: {problem}"
        );
    }

    // No such device, or a bad id.
    let (status, content_type, problem) =
        get_as(&hub, &hub.token(), "/api/v1/devices/nobody/commands").await;
    assert_eq!(
        (status, content_type.as_str()),
        (404, "application/problem+json"),
        "{problem}"
    );
    let (status, _, _) = get_as(&hub, &hub.token(), "/api/v1/devices/bad%20id/commands").await;
    assert_eq!(status, 400);

    // Scopes and device patterns: a reader of lst-* lists; a reader of other devices gets the
    // same 404 as for a device that does not exist; a token without `read` gets 403.
    let reader = token(&hub, "lst-reader", &["read"], &["lst-*"]).await;
    let (status, _, page) = get_as(&hub, &reader, "/api/v1/devices/lst-0/commands").await;
    assert_eq!(status, 200);
    assert_eq!(ids(page["commands"].as_array().unwrap()), all_ids);
    let elsewhere = token(&hub, "green-reader", &["read", "command"], &["green-*"]).await;
    let (status, _, problem) = get_as(&hub, &elsewhere, "/api/v1/devices/lst-0/commands").await;
    assert_eq!(status, 404, "{problem}");
    let (_, _, unknown) = get_as(&hub, &hub.token(), "/api/v1/devices/nobody/commands").await;
    assert_eq!(problem["title"], unknown["title"]);
    let syncer = token(&hub, "syncer", &["sync"], &[]).await;
    let (status, _, _) = get_as(&hub, &syncer, "/api/v1/devices/lst-0/commands").await;
    assert_eq!(status, 403);

    // The list is the store's: the same after a restart.
    assert!(hub.stop().success());
    let hub = Hub::start(root.path(), &[]);
    let (status, page) = hub.get("/api/v1/devices/lst-0/commands").await;
    assert_eq!(status, 200);
    let after = page["commands"].as_array().unwrap();
    assert_eq!(ids(after), all_ids);
    assert_eq!(after[..newest.len()], newest[..]);
    hub.stop();
}
