//! The dashboard (issue 15): the page and its assets (CSP, caching), the session cookie, the
//! `Origin` checks, `ETag`/304 on what pollers repeat, and the whole page in a real browser.
//!
//! The browser test runs `tests/py/dashboard_check.py` (Selenium, Debian's chromium and
//! chromium-driver) against this hub, with an idle firmware-sim device answering commands; it
//! saves screenshots under the target directory's `e2e-output/dashboard/`.

use std::process::{Command, Stdio};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::harness::{
    Hub, Sim, binary, eventually, free_port, mosquitto_pub, mosquitto_pub_lines, python_peer,
    wait_for_readings, write_config,
};

/// The `hub_session=...` pair of a sign-in's `Set-Cookie`, and the whole header.
async fn sign_in(hub: &Hub, token: &str) -> (String, String) {
    let response = hub
        .client()
        .post(hub.url("/api/v1/session"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let set = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let pair = set.split(';').next().unwrap().to_owned();
    (pair, set)
}

/// A request with the cookie and any extra headers; status and headers.
async fn with_cookie(
    hub: &Hub,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    extra: &[(&'static str, String)],
    body: Option<Value>,
) -> (StatusCode, HeaderMap) {
    let mut request = hub
        .client()
        .request(method, hub.url(path))
        .header("cookie", cookie);
    for (name, value) in extra {
        request = request.header(*name, value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.headers().clone())
}

fn own_origin(hub: &Hub) -> String {
    format!("https://localhost:{}", hub.api.port())
}

#[tokio::test]
async fn the_session_cookie_is_safe_and_checked_like_a_token_with_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), &[]);
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/door-1/telemetry",
        br#"{"temp":20}"#,
        1,
    );
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/green-1/telemetry",
        br#"{"temp":15}"#,
        1,
    );
    wait_for_readings(&hub, "door-1", 1).await;
    wait_for_readings(&hub, "green-1", 1).await;

    let (set_status, made) = hub
        .send(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(&json!({"name": "green", "scopes": ["read", "command"], "devices": ["green-*"]})),
        )
        .await;
    assert_eq!(set_status, 201, "{made}");
    let green = made["secret"].as_str().unwrap().to_owned();

    // The cookie: HttpOnly, Secure, SameSite=Strict, Path=/, expiring.
    let (cookie, set) = sign_in(&hub, &green).await;
    for part in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=43200",
    ] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains(&green), "the token is not in the cookie");

    // It carries the token's scopes and device patterns.
    let get = reqwest::Method::GET;
    let (status, _) = with_cookie(&hub, get.clone(), "/api/v1/session", &cookie, &[], None).await;
    assert_eq!(status, 200);
    let (status, _) = with_cookie(
        &hub,
        get.clone(),
        "/api/v1/devices/green-1",
        &cookie,
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = with_cookie(
        &hub,
        get.clone(),
        "/api/v1/devices/door-1",
        &cookie,
        &[],
        None,
    )
    .await;
    assert_eq!(status, 404, "door-1 is not for a green-* session");

    // Another site's Origin: refused, even for a read.
    let foreign = [("origin", "https://evil.example".to_owned())];
    let (status, _) = with_cookie(
        &hub,
        get.clone(),
        "/api/v1/devices/green-1",
        &cookie,
        &foreign,
        None,
    )
    .await;
    assert_eq!(status, 403);
    // A write needs the hub's own Origin: none, or another, is refused; its own passes.
    let command = json!({"name": "echo", "ttl": "1m"});
    let post = reqwest::Method::POST;
    let path = "/api/v1/devices/green-1/commands";
    let (status, _) = with_cookie(
        &hub,
        post.clone(),
        path,
        &cookie,
        &[],
        Some(command.clone()),
    )
    .await;
    assert_eq!(status, 403, "a write without Origin");
    let (status, _) = with_cookie(
        &hub,
        post.clone(),
        path,
        &cookie,
        &foreign,
        Some(command.clone()),
    )
    .await;
    assert_eq!(status, 403, "a write from another origin");
    let own = [("origin", own_origin(&hub))];
    let (status, _) = with_cookie(
        &hub,
        post.clone(),
        path,
        &cookie,
        &own,
        Some(command.clone()),
    )
    .await;
    assert_eq!(status, 202, "a write from the hub's own page");
    // The same write with a bearer token needs no Origin: the checks are the cookie's.
    let (status, _) = hub.send(post.clone(), path, Some(&command)).await;
    assert_eq!(status, 202);

    // The WebSocket upgrade with the cookie: only with the hub's own Origin.
    let upgrade = |origin: Option<String>| {
        let mut h = vec![
            ("connection", "upgrade".to_owned()),
            ("upgrade", "websocket".to_owned()),
            ("sec-websocket-version", "13".to_owned()),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
        ];
        if let Some(origin) = origin {
            h.push(("origin", origin));
        }
        h
    };
    let (status, _) = with_cookie(
        &hub,
        get.clone(),
        "/api/v1/stream",
        &cookie,
        &upgrade(None),
        None,
    )
    .await;
    assert_eq!(status, 403, "an upgrade without Origin");
    let evil = Some("https://evil.example".to_owned());
    let (status, _) = with_cookie(
        &hub,
        get.clone(),
        "/api/v1/stream",
        &cookie,
        &upgrade(evil),
        None,
    )
    .await;
    assert_eq!(status, 403, "an upgrade from another origin");
    let mine = Some(own_origin(&hub));
    let (status, _) = with_cookie(
        &hub,
        get.clone(),
        "/api/v1/stream",
        &cookie,
        &upgrade(mine.clone()),
        None,
    )
    .await;
    assert_ne!(
        status, 403,
        "an upgrade from the hub's own page passes the checks"
    );
    assert_ne!(status, 401);

    // Sign-out: 204 and the cookie cleared; then the session is refused everywhere.
    let delete = reqwest::Method::DELETE;
    let (status, _) =
        with_cookie(&hub, delete.clone(), "/api/v1/session", &cookie, &[], None).await;
    assert_eq!(status, 403, "sign-out with the cookie needs the Origin too");
    let (status, headers) =
        with_cookie(&hub, delete.clone(), "/api/v1/session", &cookie, &own, None).await;
    assert_eq!(status, 204);
    assert!(
        headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, _) = with_cookie(&hub, get.clone(), "/api/v1/session", &cookie, &[], None).await;
    assert_eq!(status, 401);
    let (status, _) = with_cookie(
        &hub,
        get.clone(),
        "/api/v1/stream",
        &cookie,
        &upgrade(mine.clone()),
        None,
    )
    .await;
    assert_eq!(status, 401);

    // Revoking the token ends its sessions at once.
    let (cookie, _) = sign_in(&hub, &green).await;
    let id = made["id"].as_str().unwrap();
    let (status, _) = hub
        .send(delete, &format!("/api/v1/tokens/{id}"), None)
        .await;
    assert!(status == 200 || status == 204, "{status}");
    let (status, _) = with_cookie(&hub, get, "/api/v1/devices/green-1", &cookie, &[], None).await;
    assert_eq!(status, 401);

    // A bad token signs nobody in, and no cookie is set.
    let response = hub
        .client()
        .post(hub.url("/api/v1/session"))
        .json(&json!({"token": "hub_0000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy_and_immutable_hashed_assets() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), &[]);
    let client = hub.client();
    let page = client.get(hub.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-cache");
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "nothing inline"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );
    let assets: Vec<&str> = html
        .split("\"/assets/")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert!(assets.len() >= 5, "{assets:?}");
    let mut total = html.len();
    for asset in &assets {
        let response = client
            .get(hub.url(&format!("/assets/{asset}")))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        let h = response.headers().clone();
        assert_eq!(
            h["cache-control"], "public, max-age=31536000, immutable",
            "{asset}"
        );
        assert_eq!(h["content-encoding"], "gzip", "{asset}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{asset}");
        // The name carries 8 hex digits of the content's hash.
        let stem = asset.rsplit_once('.').unwrap().0;
        let hash = stem.rsplit_once('.').unwrap().1;
        assert!(
            hash.len() == 8 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "{asset}"
        );
        total += response.bytes().await.unwrap().len();
    }
    assert!(total <= 150 * 1024, "the page is {total} bytes compressed");
    // Modules name each other by hashed names too, so their imports are assets as well.
    let app = assets.iter().find(|a| a.starts_with("app.")).unwrap();
    let (status, _) = hub.get(&format!("/assets/{app}")).await;
    assert_eq!(status, 200);
    let response = client.get(hub.url("/assets/nope.js")).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

/// GET `path` with the admin token and, if given, `If-None-Match`.
async fn tagged(
    client: &reqwest::Client,
    hub: &Hub,
    token: &str,
    path: &str,
    if_none_match: Option<HeaderValue>,
) -> reqwest::Response {
    let mut request = client.get(hub.url(path)).bearer_auth(token);
    if let Some(tag) = if_none_match {
        request = request.header("if-none-match", tag);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn latest_detail_and_readings_answer_304_to_a_matching_if_none_match() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), &[]);
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/door-1/telemetry",
        br#"{"temp":20}"#,
        1,
    );
    wait_for_readings(&hub, "door-1", 1).await;
    let client = hub.client();
    let token = hub.token();
    for path in [
        "/api/v1/devices/door-1",
        "/api/v1/devices/door-1/latest",
        "/api/v1/devices/door-1/readings?metric=temp",
        "/api/v1/devices/door-1/readings?metric=temp&from=-1h&bucket=1m&agg=avg",
    ] {
        let first = tagged(&client, &hub, &token, path, None).await;
        assert_eq!(first.status(), 200, "{path}");
        let etag = first.headers()["etag"].clone();
        assert_eq!(
            first.headers()["cache-control"],
            "private, no-cache",
            "{path}"
        );
        let again = tagged(&client, &hub, &token, path, Some(etag.clone())).await;
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"], etag, "{path}");
        assert!(again.bytes().await.unwrap().is_empty());
        let other = tagged(
            &client,
            &hub,
            &token,
            path,
            Some(HeaderValue::from_static("\"0000\"")),
        )
        .await;
        assert_eq!(other.status(), 200, "{path}");
    }
    // A new reading changes the tag of latest.
    let path = "/api/v1/devices/door-1/latest";
    let first = tagged(&client, &hub, &token, path, None).await;
    let etag = first.headers()["etag"].clone();
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/door-1/telemetry",
        br#"{"temp":21}"#,
        1,
    );
    wait_for_readings(&hub, "door-1", 2).await;
    let after = tagged(&client, &hub, &token, path, Some(etag.clone())).await;
    assert_eq!(after.status(), 200);
    assert_ne!(after.headers()["etag"], etag);
    // CSV export streams, untagged.
    let csv = client
        .get(hub.url("/api/v1/devices/door-1/readings?format=csv"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(csv.headers().get("etag").is_none());
}

/// The alerts a `green-*` session reads: only its devices', in full pages (the history is
/// filtered as it is read, not after a page was cut), and a cursor only while more follow.
#[tokio::test]
async fn a_device_limited_session_gets_full_alert_pages_of_its_devices_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), ALERT_RULES);
    let hub = Hub::start(dir.path(), &["--config", &config]);
    // Six firing transitions, door and green devices interleaved.
    for i in 0..3 {
        for prefix in ["door", "green"] {
            let topic = format!("devices/{prefix}-{i}/telemetry");
            mosquitto_pub(hub.mqtt_port(), &topic, br#"{"temp":60}"#, 1);
        }
    }
    eventually("six transitions", || async {
        let (_, alerts) = hub.get("/api/v1/alerts").await;
        (alerts["history"].as_array().map(Vec::len) == Some(6)).then_some(())
    })
    .await;
    let (status, made) = hub
        .send(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(&json!({"name": "green", "scopes": ["read"], "devices": ["green-*"]})),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let (cookie, _) = sign_in(&hub, made["secret"].as_str().unwrap()).await;
    let read = |path: String| {
        let request = hub.client().get(hub.url(&path)).header("cookie", &cookie);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            response.json::<Value>().await.unwrap()
        }
    };
    let devices = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|a| a["device"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = read("/api/v1/alerts?limit=2".into()).await;
    assert_eq!(devices(&first["alerts"]), ["green-0", "green-1", "green-2"]);
    assert_eq!(
        devices(&first["history"]),
        ["green-2", "green-1"],
        "{first}"
    );
    let cursor = first["next_cursor"].as_u64().expect("a next page");
    let rest = read(format!("/api/v1/alerts?limit=2&cursor={cursor}")).await;
    assert_eq!(devices(&rest["history"]), ["green-0"], "{rest}");
    assert!(rest["next_cursor"].is_null(), "{rest}");
    // The admin sees all six.
    let (_, all) = hub.get("/api/v1/alerts?limit=6").await;
    assert_eq!(devices(&all["history"]).len(), 6);
}

/// A rule for the alerts page: any device's `temp` above 50 fires, logs, and sends the device an
/// `echo` (which door-1's firmware-sim answers, so its device page lists a command no form sent).
const ALERT_RULES: &str = r#"
[[rules]]
name = "too-warm"
metric = "temp"
above = 50.0
actions = [{ log = "warn" }, { command = { name = "echo", args = { reason = "too-warm" } } }]
"#;

/// An hour of door-1's history, a reading every 30 s: a number (`temp`), a boolean (`open`, which
/// changes every 10 minutes) and a string (`mode`), so each kind of metric has something to draw.
fn door_history(now_ms: u64) -> Vec<String> {
    const READINGS: u64 = 120;
    (0..READINGS)
        .map(|i| {
            let ts = now_ms - (READINGS - i) * 30_000;
            let temp = 21.0 + 3.0 * (i as f64 / 12.0).sin();
            let open = (i / 20) % 2 == 1;
            let mode = ["auto", "eco", "boost"][(i / 45) as usize];
            json!({"seq": i, "ts": ts, "metrics": {"temp": (temp * 100.0).round() / 100.0, "open": open, "mode": mode}})
                .to_string()
        })
        .collect()
}

/// The whole page in chromium: see `tests/py/dashboard_check.py` for the checks.
#[tokio::test]
async fn the_dashboard_works_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    // A sink whose receiver is not there, so the sync page has a sink to show failing.
    let config = format!(
        "{ALERT_RULES}\n[[sync.http]]\nname = \"cloud\"\nurl = \"http://127.0.0.1:{}/readings\"\n",
        free_port()
    );
    let config = write_config(dir.path(), &config);
    let hub = Hub::start(dir.path(), &["--config", &config]);
    let port = hub.mqtt_port();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    mosquitto_pub_lines(port, "devices/door-1/telemetry", &door_history(now_ms), 1);
    for _ in 0..3 {
        mosquitto_pub(
            port,
            "devices/green-1/telemetry",
            br#"{"temp":15,"hum":55}"#,
            1,
        );
    }
    wait_for_readings(&hub, "door-1", 120).await;
    wait_for_readings(&hub, "green-1", 3).await;
    // door-0 and door-1 answer commands (door-0 never reports, so the hub never lists it).
    let _sim = Sim::from_child(
        Command::new(binary("firmware-sim"))
            .args(["--broker", &format!("127.0.0.1:{port}")])
            .args([
                "--transport",
                "json",
                "--prefix",
                "door-",
                "--devices",
                "2",
                "--idle",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start firmware-sim"),
    );
    // The simulated device subscribes a moment after it starts: wait until it answers.
    eventually("door-1 answers commands", || async {
        let (status, body) = hub
            .send(
                reqwest::Method::POST,
                "/api/v1/devices/door-1/commands?wait=2s",
                Some(&json!({"name": "echo", "timeout": "2s"})),
            )
            .await;
        (status == 200 && body["state"] == "succeeded").then_some(())
    })
    .await;

    let out = binary("hub")
        .parent()
        .unwrap()
        .join("e2e-output")
        .join("dashboard");
    let _ = std::fs::remove_dir_all(&out);
    let output = python_peer("dashboard_check.py")
        .args(["--url", &format!("https://localhost:{}", hub.api.port())])
        .arg("--data")
        .arg(&hub.data)
        .args(["--mqtt-port", &port.to_string()])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run tests/py/dashboard_check.py");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}\nhub log:\n{}", hub.log());
    for shot in [
        "fleet.png",
        "device.png",
        "sync.png",
        "alerts.png",
        "signin.png",
        "green-only.png",
        "alerts-green.png",
    ] {
        let bytes = std::fs::metadata(out.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(bytes > 1000, "{shot}: {bytes} bytes\n{text}");
    }
}
