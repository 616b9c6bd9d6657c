//! What a hostile tester broke, each against the real binary: a reader moving the cloud's
//! consumer, a device certificate acting as an API admin, slow or huge requests holding the API,
//! token expiries that never come, bare 414/431/308 answers, formulas in CSV exports, the device
//! ids `.` and `..`, and leap-second timestamps.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Hub, binary, eventually, init_tls, mosquitto_pub, wait_for_readings};
use crate::live::tls_connect;
use crate::security::{client, write_config};

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

/// Reads until the end of a response head (or the end of the stream): the head's text.
async fn read_head<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match reader.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
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
async fn a_trickled_body_is_cut_at_its_deadline_and_admins_are_still_served() {
    let root = tempfile::tempdir().unwrap();
    let config = write_config(
        root.path(),
        "[api]\nbody_timeout = \"2s\"\nrate_limit = 0\n",
    );
    let hub = Hub::start(root.path(), &["--config", &config]);
    let reader = token(&hub, "trickler", &["read"]).await;
    let tls = tls_connect(&hub, None).await;
    let (mut from_hub, mut to_hub) = tokio::io::split(tls);
    let head = format!(
        "PUT /api/v1/sync/consumers/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {reader}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    );
    to_hub.write_all(head.as_bytes()).await.unwrap();
    // A byte every 250 ms: the whole body would take 50 s.
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            if to_hub.write_all(b" ").await.is_err() || to_hub.flush().await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        true
    });
    // Meanwhile the admin is served.
    assert_eq!(hub.get("/api/v1/devices").await.0, 200);
    // The hub answers 408 (or closes) long before the body is whole.
    let answer = tokio::time::timeout(Duration::from_secs(30), read_head(&mut from_hub))
        .await
        .expect("the hub cut the trickled body");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    if !answer.is_empty() {
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{answer}"
        );
    }
    assert!(!trickle.is_finished() || !trickle.await.unwrap());
    assert_eq!(hub.get("/api/v1/devices").await.0, 200);
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_take_every_connection_slot() {
    let root = tempfile::tempdir().unwrap();
    let config = write_config(
        root.path(),
        "[api]\nmax_connections = 8\nmax_connections_per_address = 4\nheader_timeout = \"60s\"\n",
    );
    let hub = Hub::start(root.path(), &["--config", &config]);
    // Eight bare connections from 127.0.0.1 that never start TLS: enough for every slot.
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut held = Vec::new();
    for i in 0..8 {
        let mut tcp = tokio::net::TcpStream::connect(hub.api).await.unwrap();
        let closed_tx = closed_tx.clone();
        held.push(tokio::spawn(async move {
            let mut buf = [0u8; 16];
            // Returns when the hub closes it.
            let _ = tcp.read(&mut buf).await;
            let _ = closed_tx.send(i);
        }));
    }
    // The hub closed what is over the address's share at once (not after header_timeout).
    let mut closed = 0;
    eventually("the hub closed the connections over the cap", || {
        while closed_rx.try_recv().is_ok() {
            closed += 1;
        }
        std::future::ready((closed >= 4).then_some(()))
    })
    .await;
    // Another address is served while 127.0.0.1 holds its four.
    init_tls();
    let ca = std::fs::read(hub.data.join("tls/ca.crt")).unwrap();
    let other = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .resolve("localhost", hub.api)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let response = other
        .get(hub.url("/api/v1/devices"))
        .bearer_auth(hub.token())
        .send()
        .await
        .expect("a second address gets a slot");
    assert_eq!(response.status().as_u16(), 200);
    assert!(hub.log().contains("too many open from one address"));
    for task in held {
        task.abort();
    }
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_body_gets_413_before_any_100_continue_and_a_clean_close() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let mut tls = tls_connect(&hub, None).await;
    let head = format!(
        "POST /api/v1/devices/x/commands HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        hub.token(),
        10 << 20
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), read_head(&mut tls))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert!(lower.contains("connection: close"), "{answer}");
    // The problem body, then an orderly end of the stream (no reset).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(read.is_ok(), "closed cleanly: {read:?}");
    let body: Value = serde_json::from_slice(&rest).unwrap();
    assert_eq!(body["status"], 413);
    assert_eq!(hub.get("/api/v1/devices").await.0, 200);
    hub.stop();
}

/// A chunked body has no length to refuse it by: the hub reads past the limit, throwing it away,
/// so the client sends its body whole and reads the 413, instead of failing on a reset while it
/// sends (what curl reports).
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_chunked_body_gets_its_413_not_a_reset() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    for _ in 0..5 {
        let tls = tls_connect(&hub, None).await;
        let (mut read, mut write) = tokio::io::split(tls);
        let head = format!(
            "POST /api/v1/devices/x/commands HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            hub.token()
        );
        // 10 MiB in 64 KiB chunks, sent whatever the hub does meanwhile.
        let sender = tokio::spawn(async move {
            write.write_all(head.as_bytes()).await?;
            let chunk = vec![b' '; 64 << 10];
            for _ in 0..160 {
                write
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                write.write_all(&chunk).await?;
                write.write_all(b"\r\n").await?;
            }
            write.write_all(b"0\r\n\r\n").await?;
            write.flush().await
        });
        let answer = tokio::time::timeout(Duration::from_secs(30), read_head(&mut read))
            .await
            .expect("an answer in time");
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
        let sent = sender.await.expect("the sender task");
        assert!(sent.is_ok(), "the body could not be sent whole: {sent:?}");
    }
    assert_eq!(hub.get("/api/v1/devices").await.0, 200);
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn long_targets_many_headers_and_the_docs_redirect_answer_problems() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let c = hub.client();
    let is_problem = |response: &reqwest::Response| {
        response.headers()["content-type"] == "application/problem+json"
    };
    let long = format!("/api/v1/devices?x={}", "a".repeat(9000));
    let response = c
        .get(hub.url(&long))
        .bearer_auth(hub.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 414);
    assert!(is_problem(&response));
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 414);
    assert!(problem["request_id"].is_string());

    let mut request = c.get(hub.url("/api/v1/devices")).bearer_auth(hub.token());
    for i in 0..120 {
        request = request.header(format!("x-filler-{i}"), "1");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 431);
    assert!(is_problem(&response));
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 431);

    let no_redirects = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(
            &std::fs::read(hub.data.join("tls/ca.crt")).unwrap(),
        )
        .unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects.get(hub.url("/docs/")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 308);
    assert_eq!(response.headers()["location"], "/docs");
    assert!(is_problem(&response));
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 308);
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
async fn csv_exports_neutralise_formulas() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/csv-1/telemetry",
        br#"{"seq":0,"metrics":{"note":"=HYPERLINK(\"http://evil\",\"x\")","-dbm":-70,"at":"@SUM(A1)"}}"#,
        1,
    );
    wait_for_readings(&hub, "csv-1", 1).await;
    let response = hub
        .client()
        .get(hub.url("/api/v1/devices/csv-1/readings"))
        .bearer_auth(hub.token())
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let csv = response.text().await.unwrap();
    assert!(
        csv.contains(r#",note,"'=HYPERLINK(""http://evil"",""x"")""#),
        "{csv}"
    );
    assert!(csv.contains(r#",at,"'@SUM(A1)""#), "{csv}");
    // A metric name is a cell too; a negative number stays a number.
    assert!(csv.contains(",'-dbm,-70\r\n"), "{csv}");
    for line in csv.lines() {
        for cell in line.split(',') {
            assert!(!cell.starts_with(['=', '+', '@']), "{line}");
            assert!(!cell.trim_start_matches('"').starts_with('='), "{line}");
        }
    }
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

#[tokio::test(flavor = "multi_thread")]
async fn one_identity_cannot_hold_more_than_its_share_of_requests() {
    let root = tempfile::tempdir().unwrap();
    let config = write_config(
        root.path(),
        "[api]\nbody_timeout = \"60s\"\nrate_limit = 0\n",
    );
    let hub = Hub::start(root.path(), &["--config", &config]);
    let slow = token(&hub, "slow", &["read"]).await;
    // 32 requests of one token whose bodies never come: each is in progress until the deadline.
    let mut held = Vec::new();
    for _ in 0..32 {
        let mut tls = tls_connect(&hub, None).await;
        let head = format!(
            "PUT /api/v1/sync/consumers/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {slow}\r\n\
             Content-Type: application/json\r\nContent-Length: 10\r\n\r\n"
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        held.push(tls);
    }
    // One more of the same token is refused at once; another identity is served.
    let status = |secret: String| {
        let hub = &hub;
        async move {
            hub.client()
                .get(hub.url("/api/v1/devices"))
                .bearer_auth(secret)
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16())
        }
    };
    eventually("the 33rd request of one token is refused", || async {
        (status(slow.clone()).await == Some(429)).then_some(())
    })
    .await;
    assert_eq!(status(hub.token()).await, Some(200));
    // Once they end, the token is served again.
    drop(held);
    eventually("the token is served again", || async {
        (status(slow.clone()).await == Some(200)).then_some(())
    })
    .await;
    hub.stop();
}
