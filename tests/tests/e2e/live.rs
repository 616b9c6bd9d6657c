//! The live stream (`/api/v1/stream`) end to end: filters, device events, a lagging client,
//! limits, and the same authentication as REST.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::harness::{DEADLINE, Hub, init_tls, mosquitto_pub};

/// A WebSocket client of the hub's stream, over TLS that trusts only the hub's CA.
pub struct Stream {
    socket: WebSocketStream<TlsStream<TcpStream>>,
}

/// Opens a TLS connection to the hub's API, trusting only its CA.
pub(crate) async fn tls_connect(hub: &Hub, recv_buffer: Option<u32>) -> TlsStream<TcpStream> {
    init_tls();
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(hub.data.join("tls/ca.crt")).unwrap();
    for cert in rustls_pemfile_certs(&ca) {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let tcp = socket.connect(hub.api).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}

impl Stream {
    /// Connects with `token` (or none); the HTTP status when the upgrade is refused.
    pub async fn connect(hub: &Hub, token: Option<&str>) -> Result<Stream, u16> {
        Self::connect_with(hub, token, None).await
    }

    async fn connect_with(
        hub: &Hub,
        token: Option<&str>,
        recv_buffer: Option<u32>,
    ) -> Result<Stream, u16> {
        let tls = tls_connect(hub, recv_buffer).await;
        let mut request = format!("wss://localhost:{}/api/v1/stream", hub.api.port())
            .into_client_request()
            .unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        match tokio_tungstenite::client_async(request, tls).await {
            Ok((socket, _)) => Ok(Stream { socket }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("websocket handshake: {e}"),
        }
    }

    pub async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }

    /// The next JSON message (pings are skipped), or `None` when the socket closed.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.socket.next())
                .await
                .expect("a stream message in time")?;
            match message {
                Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next message of `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let message = self.next().await.expect("socket open");
            if message["type"] == kind {
                return message;
            }
        }
    }

    /// Subscribes and waits for the answer.
    pub async fn subscribe(&mut self, subscription: Value) -> Value {
        let mut message = subscription;
        message["op"] = json!("subscribe");
        self.send(message).await;
        self.next_of("subscribed").await
    }
}

fn telemetry(hub: &Hub, device: &str, seq: u64, metrics: Value) {
    let payload = json!({ "seq": seq, "metrics": metrics }).to_string();
    mosquitto_pub(
        hub.mqtt_port(),
        &format!("devices/{device}/telemetry"),
        payload.as_bytes(),
        1,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readings_and_device_events_arrive_filtered_by_device_and_metric() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let mut stream = Stream::connect(&hub, Some(&hub.token())).await.unwrap();
    let answer = stream
        .subscribe(json!({"id": "gh", "devices": ["gh-*"], "metrics": ["temp"]}))
        .await;
    assert_eq!(answer["id"], "gh");

    telemetry(&hub, "door-1", 0, json!({"temp": 1.0, "open": true}));
    telemetry(&hub, "gh-1", 0, json!({"temp": 21.5, "hum": 40}));
    telemetry(&hub, "gh-2", 0, json!({"hum": 41}));
    telemetry(&hub, "gh-2", 1, json!({"temp": 19.0, "hum": 42}));

    // gh-1 is new: its events come first, then its reading with only the subscribed metric.
    let mut readings = Vec::new();
    let mut events = Vec::new();
    while readings.len() < 2 || events.len() < 4 {
        let m = stream.next().await.expect("open");
        assert_ne!(m["device"], "door-1", "filtered out: {m}");
        match m["type"].as_str().unwrap() {
            "reading" => readings.push(m.clone()),
            "device" => events.push((m["device"].clone(), m["event"].clone())),
            other => panic!("unexpected {other}: {m}"),
        }
        if m["device"] == "gh-1" && m["type"] == "reading" {
            // Its events were sent before its reading's batch and go first.
            assert!(
                events.contains(&(json!("gh-1"), json!("new"))),
                "{events:?}"
            );
            assert!(
                events.contains(&(json!("gh-1"), json!("online"))),
                "{events:?}"
            );
        }
    }
    assert_eq!(readings[0]["device"], "gh-1");
    assert_eq!(readings[0]["metrics"], json!({"temp": 21.5}));
    assert_eq!(readings[0]["subscriptions"], json!(["gh"]));
    assert_eq!(readings[1]["device"], "gh-2");
    assert_eq!(readings[1]["seq"], 1, "gh-2's first reading had no temp");
    assert!(readings[1]["offset"].as_u64() > readings[0]["offset"].as_u64());
    assert!(
        events.contains(&(json!("gh-1"), json!("new"))),
        "{events:?}"
    );
    assert!(
        events.contains(&(json!("gh-1"), json!("online"))),
        "{events:?}"
    );

    // The device's last will: offline, told at once.
    mosquitto_pub(hub.mqtt_port(), "devices/gh-1/status", b"offline", 1);
    let offline = stream.next_of("device").await;
    assert_eq!(
        (
            offline["device"].clone(),
            offline["event"].clone(),
            offline["reason"].clone()
        ),
        (json!("gh-1"), json!("offline"), json!("reported"))
    );
    // And back with its next reading.
    telemetry(&hub, "gh-1", 1, json!({"temp": 22.0}));
    let online = stream.next_of("device").await;
    assert_eq!(
        (online["device"].clone(), online["event"].clone()),
        (json!("gh-1"), json!("online"))
    );

    // Unsubscribed: nothing more; a ping still answers.
    stream.send(json!({"op": "unsubscribe", "id": "gh"})).await;
    assert_eq!(stream.next_of("unsubscribed").await["id"], "gh");
    telemetry(&hub, "gh-1", 2, json!({"temp": 23.0}));
    stream.send(json!({"op": "ping"})).await;
    let next = stream.next().await.unwrap();
    assert_eq!(next["type"], "pong", "no reading after unsubscribe: {next}");
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_messages_get_errors_and_limits_hold_and_auth_is_as_for_rest() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    assert_eq!(Stream::connect(&hub, None).await.err(), Some(401));
    assert_eq!(
        Stream::connect(&hub, Some("hub_nonsense")).await.err(),
        Some(401)
    );
    // A plain GET is not an upgrade: a problem, not a crash.
    let response = hub
        .client()
        .get(hub.url("/api/v1/stream"))
        .bearer_auth(hub.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    let mut stream = Stream::connect(&hub, Some(&hub.token())).await.unwrap();
    for (bad, says) in [
        (json!("not an object"), "not a message"),
        (json!({"op": "launch"}), "not a message"),
        (json!({"op": "subscribe", "devices": []}), "`devices`"),
        (
            json!({"op": "subscribe", "metrics": ["x".repeat(200)]}),
            "`metrics`",
        ),
        (
            json!({"op": "unsubscribe", "id": "nope"}),
            "no subscription",
        ),
    ] {
        stream.send(bad.clone()).await;
        let error = stream.next_of("error").await;
        assert!(
            error["detail"].as_str().unwrap().contains(says),
            "{bad} -> {error}"
        );
    }
    for i in 0..32 {
        stream.subscribe(json!({"id": format!("s{i}")})).await;
    }
    stream
        .send(json!({"op": "subscribe", "id": "one-too-many"}))
        .await;
    assert!(
        stream.next_of("error").await["detail"]
            .as_str()
            .unwrap()
            .contains("at most 32")
    );
    // Re-subscribing under a taken id replaces it (not one more).
    stream
        .subscribe(json!({"id": "s0", "devices": ["x"]}))
        .await;

    // An oversized message closes the socket with 1009.
    stream
        .socket
        .send(Message::Text("x".repeat(10_000).into()))
        .await
        .unwrap();
    let closed = loop {
        match tokio::time::timeout(DEADLINE, stream.socket.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => break None,
        }
    };
    assert_eq!(closed, Some(CloseCode::Size));
    // The hub is fine.
    assert_eq!(hub.get("/api/v1/devices").await.0, 200);
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_client_is_told_what_it_missed_and_never_slows_ingest() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    // A tiny receive buffer, and the client stops reading: the hub's queue for it overflows.
    let mut slow = Stream::connect_with(&hub, Some(&hub.token()), Some(4096))
        .await
        .unwrap();
    slow.subscribe(json!({"devices": ["lag-*"]})).await;
    let mut fast = Stream::connect(&hub, Some(&hub.token())).await.unwrap();
    fast.subscribe(json!({"devices": ["lag-*"]})).await;

    let count: u64 = 6000;
    let outbox = root.path().join("outbox");
    let sim = crate::harness::Sim::from_child(
        std::process::Command::new(crate::harness::binary("firmware-sim"))
            .args(["--broker", &format!("127.0.0.1:{}", hub.mqtt_port())])
            .args([
                "--transport",
                "binary",
                "--prefix",
                "lag-",
                "--devices",
                "2",
            ])
            .args(["--count", &count.to_string(), "--rate", "1500"])
            .args(["--ack-timeout", "1", "--drain-timeout", "120"])
            .arg("--outbox")
            .arg(&outbox)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start firmware-sim"),
    );
    // The fast client sees every reading while the slow one reads nothing.
    let mut seen = 0;
    while seen < 2 * count {
        let m = fast.next().await.expect("open");
        if m["type"] == "reading" {
            seen += 1;
        }
        assert_ne!(m["type"], "lagged", "the fast client keeps up");
    }
    let (ok, summary) = sim.wait();
    assert!(ok, "every reading acked by the hub: {summary}");
    crate::harness::check_every_reading_once(&hub, "lag-", 2, count as u32).await;

    // Now the slow client reads: readings, a `lagged` with the count of what it missed, and
    // every reading either sent or counted.
    let mut got = 0;
    let mut dropped = 0;
    while got + dropped < 2 * count {
        let m = slow.next().await.expect("open");
        match m["type"].as_str().unwrap() {
            "reading" => got += 1,
            "lagged" => dropped += m["dropped"].as_u64().unwrap(),
            _ => {}
        }
    }
    assert!(dropped > 0, "the slow client lagged (got {got})");
    assert_eq!(
        got + dropped,
        2 * count,
        "every reading was either sent or counted"
    );
    // And the stream goes on.
    telemetry(&hub, "lag-late", 0, json!({"v": 1}));
    let late = slow.next_of("reading").await;
    assert_eq!(late["device"], "lag-late");
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hubs_close_frame_overtakes_a_lagging_clients_queue() {
    use std::io::Write;
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let mut slow = Stream::connect_with(&hub, Some(&hub.token()), Some(4096))
        .await
        .unwrap();
    slow.subscribe(json!({"devices": ["big-*"]})).await;

    // Large readings (about 1.8 KB as stream messages), far faster than the client reads: the
    // hub's queue for it (1024 messages) fills, and few fit in the sockets' buffers.
    let count: u64 = 3000;
    let text = "x".repeat(200);
    let mut lines = String::new();
    for seq in 0..count {
        let metrics: serde_json::Map<String, Value> =
            (0..8).map(|i| (format!("s{i}"), json!(text))).collect();
        lines.push_str(&json!({"seq": seq, "metrics": metrics}).to_string());
        lines.push('\n');
    }
    let mut publisher = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &hub.mqtt_port().to_string()])
        .args(["-t", "devices/big-1/telemetry", "-q", "1", "-l"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto_pub");
    let mut stdin = publisher.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(lines.as_bytes());
    });
    // The client reads slowly (so the hub's writes never stall) until every reading is stored.
    let mut read = 0u64;
    loop {
        let message = tokio::time::timeout(DEADLINE, slow.socket.next())
            .await
            .expect("a message in time");
        assert!(matches!(message, Some(Ok(_))), "open: {message:?}");
        read += 1;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        if read.is_multiple_of(50) {
            let (_, device) = hub.get("/api/v1/devices/big-1").await;
            if device["counters"]["readings"].as_u64() == Some(count) {
                break;
            }
        }
        assert!(
            read < count,
            "every reading was stored before the client read them all"
        );
    }
    feeder.join().unwrap();
    let _ = publisher.wait();

    // An oversized message: the hub closes with 1009, and the close frame comes before what
    // waits in the client's queue, not after a queue's worth of readings.
    slow.socket
        .send(Message::Text("x".repeat(10_000).into()))
        .await
        .unwrap();
    let mut before_close = 0;
    let closed = loop {
        match tokio::time::timeout(DEADLINE, slow.socket.next())
            .await
            .expect("the close in time")
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
            Some(Ok(_)) => before_close += 1,
            None | Some(Err(_)) => break None,
        }
    };
    assert_eq!(
        closed,
        Some(CloseCode::Size),
        "after {before_close} messages"
    );
    assert!(
        before_close < 512,
        "{before_close} messages came before the close frame"
    );
    assert_eq!(hub.get("/api/v1/devices").await.0, 200);
    hub.stop();
}
