//! Upstream sync against real receivers: an HTTP server written here (it decompresses, records
//! every request and answers as the test tells it), and mosquitto as a cloud broker. The hub is
//! the real binary; outages are real (500s, 429s, a receiver that hangs, a broker stopped), and so
//! are crashes (SIGKILL mid-batch).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::harness::{Hub, Mosquitto, Subscriber, eventually, mosquitto_pub};

/// How the receiver answers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// 200.
    Take,
    /// 500.
    Fail,
    /// 429 with `Retry-After: 1`.
    Throttle,
    /// Records the request, then never answers.
    Hang,
    /// 400 for a batch holding a reading of this device; 200 otherwise.
    RefuseDevice(String),
}

/// One request the receiver saw.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) key: String,
    encoding: Option<String>,
    authorization: Option<String>,
    pub(crate) body: Value,
    pub(crate) status: u16,
    at: std::time::Instant,
}

#[derive(Clone)]
pub(crate) struct Receiver {
    answer: Arc<Mutex<Answer>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    /// Starts the receiver on a free port; it runs until the test ends.
    pub(crate) async fn start(answer: Answer) -> (Receiver, SocketAddr) {
        let receiver = Receiver {
            answer: Arc::new(Mutex::new(answer)),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let app = Router::new()
            .route("/ingest", axum::routing::post(take))
            .with_state(receiver.clone());
        // In-process: the kernel picks the port and the test reads it back, so no other process
        // can take it between a check and the bind.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, addr)
    }

    pub(crate) fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Readings of the batches it took (2xx), deduplicated by idempotency key, in arrival order.
    pub(crate) fn taken(&self) -> Vec<Value> {
        let mut keys = std::collections::HashSet::new();
        let mut readings = Vec::new();
        for seen in self.seen() {
            if seen.status == 200 && keys.insert(seen.key.clone()) {
                readings.extend(seen.body["readings"].as_array().unwrap().iter().cloned());
            }
        }
        readings
    }
}

async fn take(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let encoding = headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_owned());
    let raw = match encoding.as_deref() {
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        _ => body.to_vec(),
    };
    let body: Value = serde_json::from_slice(&raw).unwrap();
    let answer = receiver.answer.lock().unwrap().clone();
    let status = match &answer {
        Answer::Take => 200,
        Answer::Fail => 500,
        Answer::Throttle => 429,
        Answer::Hang => 0,
        Answer::RefuseDevice(device) => {
            let holds = body["readings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["device"] == device.as_str());
            if holds { 400 } else { 200 }
        }
    };
    receiver.seen.lock().unwrap().push(Seen {
        key: headers
            .get("idempotency-key")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        encoding,
        authorization: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
        body,
        status,
        at: std::time::Instant::now(),
    });
    match status {
        0 => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        429 => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response(),
        400 => (StatusCode::BAD_REQUEST, "reading refused: bad device").into_response(),
        code => StatusCode::from_u16(code).unwrap().into_response(),
    }
}

/// A config file with one http sink to `addr` (strict offset order unless `live_first_after`).
pub(crate) fn http_sink_config(root: &Path, addr: SocketAddr, extra: &str) -> String {
    // `extra` goes into the [[sync.http]] table.
    let path = root.join("hub.toml");
    std::fs::write(
        &path,
        format!(
            "[sync]\nhub_id = \"gw-test\"\n\n[[sync.http]]\nname = \"cloud\"\nurl = \"http://{addr}/ingest\"\n\
             token = \"cloud-secret\"\nbatch_max = 50\nbatch_wait = \"100ms\"\nretry_min = \"100ms\"\n\
             retry_max = \"500ms\"\ntimeout = \"2s\"\nlive_first_after = 0\n{extra}"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Publishes `count` readings with seqs `from..from+count` for each device, QoS 1.
pub(crate) fn publish(hub: &Hub, devices: &[&str], from: u32, count: u32) {
    for seq in from..from + count {
        for device in devices {
            mosquitto_pub(
                hub.mqtt_port(),
                &format!("devices/{device}/telemetry"),
                format!(r#"{{"seq":{seq},"metrics":{{"v":{seq}}}}}"#).as_bytes(),
                1,
            );
        }
    }
}

/// Publishes many readings quickly: one mosquitto_pub per device reading lines from stdin.
pub(crate) fn publish_lines(port: u16, device: &str, seqs: std::ops::Range<u32>, pad: usize) {
    use std::io::Write;
    let mut child = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-t",
            &format!("devices/{device}/telemetry"),
            "-q",
            "1",
            "-l",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Strings are at most 256 bytes: the padding is spread over several metrics. It differs
    // from reading to reading (xorshift letters), so that it takes its room in the store as well:
    // the store's compressed blocks keep a repeated string once.
    let mut state = 0x2545_f491_4f6c_dd1du64 ^ u64::from(seqs.start) ^ (device.len() as u64) << 32;
    let mut letter = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        char::from(b'a' + (state % 26) as u8)
    };
    for seq in seqs {
        let pad: String = (0..pad.div_ceil(250))
            .map(|i| {
                let text: String = (0..250.min(pad - i * 250)).map(|_| letter()).collect();
                format!(r#","pad{i}":"{text}""#)
            })
            .collect();
        writeln!(stdin, r#"{{"seq":{seq},"metrics":{{"v":{seq}{pad}}}}}"#).unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// Checks that `readings` hold each device's seqs `0..count` exactly once, in order per device.
pub(crate) fn assert_once_in_order(readings: &[Value], devices: &[&str], count: u64) {
    let mut by_device: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in readings {
        by_device
            .entry(r["device"].as_str().unwrap().to_owned())
            .or_default()
            .push(r["seq"].as_u64().unwrap());
    }
    for device in devices {
        let seqs = by_device.get(*device).cloned().unwrap_or_default();
        assert_eq!(
            seqs,
            (0..count).collect::<Vec<_>>(),
            "{device}: every reading once, in order"
        );
    }
}

pub(crate) async fn sync_status(hub: &Hub) -> Value {
    let (status, body) = hub.get("/api/v1/sync/status").await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_down_then_throttling_then_up_everything_arrives_once_in_order() {
    let root = tempfile::tempdir().unwrap();
    let (receiver, addr) = Receiver::start(Answer::Fail).await;
    let config = http_sink_config(root.path(), addr, "");
    let hub = Hub::start(root.path(), &["--config", &config]);
    let devices = ["s-a", "s-b", "s-c"];
    publish(&hub, &devices, 0, 40);
    // Down: the hub keeps trying, and keeps every reading.
    eventually("several failed deliveries", || async {
        (receiver.seen().len() >= 3).then_some(())
    })
    .await;
    let status = sync_status(&hub).await;
    let sink = &status["sinks"][0];
    assert_eq!(sink["follower"]["name"], "cloud");
    assert!(sink["failures"].as_u64().unwrap() >= 2, "{status}");
    assert!(sink["error"].as_str().unwrap().contains("500"), "{status}");
    eventually("every reading stored and waiting", || async {
        let status = sync_status(&hub).await;
        (status["sinks"][0]["follower"]["lag_readings"] == 120).then_some(())
    })
    .await;
    // Throttled: the hub waits as told.
    receiver.answer(Answer::Throttle);
    let throttled = receiver.seen().len();
    eventually("a throttled delivery", || async {
        (receiver.seen().len() > throttled + 1).then_some(())
    })
    .await;
    // After a 429 with `Retry-After: 1`, the next attempt waited at least that long (the
    // back-off alone is at most 500 ms here).
    let seen = receiver.seen();
    let retried = &seen[throttled..];
    assert!(
        retried[1].at.duration_since(retried[0].at) >= Duration::from_millis(900),
        "Retry-After was not honoured"
    );
    receiver.answer(Answer::Take);
    eventually("every reading delivered", || async {
        (receiver.taken().len() >= 120).then_some(())
    })
    .await;
    assert_once_in_order(&receiver.taken(), &devices, 40);

    let seen = receiver.seen();
    // Every attempt of a batch carried the same key and the same readings.
    let mut by_key: HashMap<String, Value> = HashMap::new();
    for s in &seen {
        assert_eq!(s.encoding.as_deref(), Some("gzip"));
        assert_eq!(s.authorization.as_deref(), Some("Bearer cloud-secret"));
        let previous = by_key.entry(s.key.clone()).or_insert(s.body.clone());
        assert_eq!(previous["readings"], s.body["readings"], "{}", s.key);
        assert_eq!(s.body["key"], s.key.as_str());
        assert_eq!(s.body["hub"], "gw-test");
    }
    // Batches are bounded and their keys name their offsets.
    for s in &seen {
        let readings = s.body["readings"].as_array().unwrap();
        assert!(readings.len() <= 50);
        let (first, last) = (
            s.body["first_offset"].as_u64().unwrap(),
            s.body["last_offset"].as_u64().unwrap(),
        );
        assert_eq!(s.key, format!("gw-test.cloud.{first}-{last}"));
    }
    let status = sync_status(&hub).await;
    assert_eq!(
        status["sinks"][0]["follower"]["lag_readings"], 0,
        "{status}"
    );
    assert!(status["sinks"][0]["error"].is_null(), "{status}");
    // The hub's log never shows the sink's token.
    let log = hub.log();
    assert!(!log.contains("cloud-secret"), "the token is in the log");
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reading_refused_for_good_is_parked_and_the_rest_arrives() {
    let root = tempfile::tempdir().unwrap();
    let (receiver, addr) = Receiver::start(Answer::RefuseDevice("bad-1".into())).await;
    let config = http_sink_config(root.path(), addr, "");
    let hub = Hub::start(root.path(), &["--config", &config]);
    // Good readings around one the receiver refuses, so the split has to find it.
    publish(&hub, &["good-1", "good-2"], 0, 10);
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/bad-1/telemetry",
        br#"{"seq":0,"metrics":{"v":-1}}"#,
        1,
    );
    publish(&hub, &["good-1", "good-2"], 10, 10);
    eventually("the good readings delivered", || async {
        (receiver.taken().len() >= 40).then_some(())
    })
    .await;
    assert_once_in_order(&receiver.taken(), &["good-1", "good-2"], 20);
    assert!(
        !receiver.taken().iter().any(|r| r["device"] == "bad-1"),
        "the refused reading was not taken"
    );
    let (status, parked) = hub.get("/api/v1/sync/parked").await;
    assert_eq!(status, 200, "{parked}");
    let parked = parked["parked"].as_array().unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["sink"], "cloud");
    assert_eq!(parked[0]["status"], 400);
    assert_eq!(parked[0]["reading"]["device"], "bad-1");
    assert!(parked[0]["reason"].as_str().unwrap().contains("bad device"));
    let status = sync_status(&hub).await;
    assert_eq!(status["sinks"][0]["parked"], 1, "{status}");
    assert_eq!(
        status["sinks"][0]["follower"]["lag_readings"], 0,
        "{status}"
    );
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_mid_batch_the_hub_sends_the_same_batch_with_the_same_key_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (receiver, addr) = Receiver::start(Answer::Hang).await;
    let config = http_sink_config(root.path(), addr, "");
    let hub = Hub::start(root.path(), &["--config", &config]);
    publish(&hub, &["k-1"], 0, 30);
    eventually("a batch on its way", || async {
        (!receiver.seen().is_empty()).then_some(())
    })
    .await;
    // The broker acks mosquitto_pub on receipt; a reading is the hub's only once it is durable, so
    // the kill waits for all 30 (the device-level promise is the `ack` topic, not the broker's PUBACK).
    eventually("all 30 readings durable", || async {
        let status = sync_status(&hub).await;
        (status["sinks"][0]["follower"]["lag_readings"] == 30).then_some(())
    })
    .await;
    let hung = receiver.seen()[0].clone();
    let mqtt = hub.mqtt_port();
    hub.kill9();
    // More readings arrive after the restart: the resent batch must still be the same.
    receiver.answer(Answer::Take);
    let hub = Hub::start_in(
        root.path(),
        &[
            "--api-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            &format!("127.0.0.1:{mqtt}"),
        ],
        &["--config", &config],
    );
    publish(&hub, &["k-1"], 30, 10);
    let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
    while receiver.taken().len() < 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "not every reading delivered: {:?}\n{}",
            receiver
                .seen()
                .iter()
                .map(|s| (&s.key, s.status))
                .collect::<Vec<_>>(),
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_restart = receiver
        .seen()
        .into_iter()
        .skip(1)
        .find(|s| s.status == 200)
        .unwrap();
    assert_eq!(after_restart.key, hung.key, "the resent batch kept its key");
    assert_eq!(after_restart.body["readings"], hung.body["readings"]);
    assert_once_in_order(&receiver.taken(), &["k-1"], 40);
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_outage_fresh_readings_go_first_while_the_backlog_drains() {
    let root = tempfile::tempdir().unwrap();
    let (receiver, addr) = Receiver::start(Answer::Fail).await;
    // Live first past 100 readings behind; the backlog paced to 200 readings/s.
    let config = http_sink_config(root.path(), addr, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "live_first_after = 0",
        "live_first_after = 100\nbacklog_rate = 200",
    );
    std::fs::write(&config, text).unwrap();
    let hub = Hub::start(root.path(), &["--config", &config]);
    publish_lines(hub.mqtt_port(), "old", 0..1000, 40);
    eventually("the backlog stored", || async {
        let (_, body) = hub.get("/api/v1/devices/old").await;
        (body["counters"]["readings"].as_u64() == Some(1000)).then_some(())
    })
    .await;
    receiver.answer(Answer::Take);
    // The sink sees how far behind it is once the cloud takes its batch again; a reading stored
    // before that is part of the backlog.
    eventually("the sink far behind", || async {
        hub.log()
            .contains("sink is far behind: fresh readings go first")
            .then_some(())
    })
    .await;
    // A fresh reading arrives while ~1000 wait: it is delivered before the backlog has drained.
    publish(&hub, &["fresh"], 0, 1);
    eventually("the fresh reading delivered", || async {
        receiver
            .taken()
            .iter()
            .any(|r| r["device"] == "fresh")
            .then_some(())
    })
    .await;
    let old_before_fresh = receiver
        .taken()
        .iter()
        .take_while(|r| r["device"] != "fresh")
        .count();
    assert!(
        old_before_fresh < 1000,
        "the fresh reading waited behind the whole backlog"
    );
    eventually("the backlog drained", || async {
        (receiver.taken().len() >= 1001).then_some(())
    })
    .await;
    let taken = receiver.taken();
    // Nothing lost or doubled; the device's readings come as two runs in its order: the backlog,
    // and the live part that went ahead of it (live first began while it still published).
    let seqs: Vec<u64> = taken
        .iter()
        .filter(|r| r["device"] == "old")
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>(), "every reading once");
    // Two runs, each in order: the backlog (0..live) and the live part (live..1000), which may
    // take turns batch by batch; where live first began depends on how fast ingest went.
    let two_runs = (0..=1000u64).any(|live| {
        let backlog: Vec<u64> = seqs.iter().copied().filter(|s| *s < live).collect();
        let fresh: Vec<u64> = seqs.iter().copied().filter(|s| *s >= live).collect();
        backlog == (0..live).collect::<Vec<_>>() && fresh == (live..1000).collect::<Vec<_>>()
    });
    assert!(two_runs, "not two runs each in order: {seqs:?}");
    assert_once_in_order(&taken, &["fresh"], 1);
    let status = sync_status(&hub).await;
    assert_eq!(
        status["sinks"][0]["follower"]["lag_readings"], 0,
        "{status}"
    );
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt_sink_delivers_through_a_cloud_link_that_goes_away_and_comes_back() {
    let root = tempfile::tempdir().unwrap();
    let cloud = Mosquitto::start(root.path());
    // The subscriber stays connected to the broker throughout; the hub's link to it goes through
    // a relay the test cuts, like an uplink that drops.
    let subscriber = Subscriber::start(cloud.port, "gateways/gw-test/readings");
    let link = Relay::start(cloud.port).await;
    let path = root.path().join("hub.toml");
    std::fs::write(
        &path,
        format!(
            "[sync]\nhub_id = \"gw-test\"\n\n[[sync.mqtt]]\nname = \"cloud-mqtt\"\n\
             url = \"mqtt://127.0.0.1:{}\"\nbatch_max = 20\nbatch_wait = \"100ms\"\n\
             retry_min = \"100ms\"\nretry_max = \"500ms\"\ntimeout = \"2s\"\nlive_first_after = 0\n",
            link.port
        ),
    )
    .unwrap();
    let config = path.display().to_string();
    let hub = Hub::start(root.path(), &["--config", &config]);
    publish(&hub, &["m-1"], 0, 20);
    let readings = |payloads: Vec<Vec<u8>>| {
        let mut keys = std::collections::HashSet::new();
        let mut readings = Vec::new();
        for p in payloads {
            let batch: Value = serde_json::from_slice(&p).unwrap();
            if keys.insert(batch["key"].as_str().unwrap().to_owned()) {
                readings.extend(batch["readings"].as_array().unwrap().iter().cloned());
            }
        }
        readings
    };
    eventually("the first readings at the cloud broker", || async {
        (readings(subscriber.payloads()).len() >= 20).then_some(())
    })
    .await;
    link.cut(true);
    publish(&hub, &["m-1"], 20, 20);
    eventually("the sink noticing the link is gone", || async {
        let status = sync_status(&hub).await;
        (status["sinks"][0]["failures"].as_u64() > Some(0)).then_some(())
    })
    .await;
    link.cut(false);
    eventually("the rest at the cloud broker", || async {
        let status = sync_status(&hub).await;
        (status["sinks"][0]["follower"]["lag_readings"] == 0).then_some(())
    })
    .await;
    eventually("every reading at the subscriber", || async {
        (readings(subscriber.payloads()).len() >= 40).then_some(())
    })
    .await;
    assert_once_in_order(&readings(subscriber.payloads()), &["m-1"], 40);
    hub.stop();
}

/// A TCP relay to a local port that the test can cut: while cut, open connections are dropped
/// and new ones closed at once.
struct Relay {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c, g) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let born = g.load(Ordering::SeqCst);
                let g = g.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let relay = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let watch = async {
                        while g.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = relay => {}
                        _ = watch => {}
                    }
                });
            }
        });
        Relay {
            port,
            cut,
            generation,
        }
    }

    fn cut(&self, cut: bool) {
        use std::sync::atomic::Ordering;
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_with_wait_is_answered_as_soon_as_a_reading_is_durable() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    publish(&hub, &["w-1"], 0, 1);
    let (status, page) = hub.get("/api/v1/sync/readings").await;
    assert_eq!(status, 200, "{page}");
    let cursor = page["next_cursor"].as_u64().unwrap();
    // Nothing after the cursor yet: the request is held until the next reading is durable.
    let held = {
        let path = format!("/api/v1/sync/readings?cursor={cursor}&wait=30s");
        let hub = &hub;
        async move { hub.get(&path).await }
    };
    let publisher = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        publish(&hub, &["w-1"], 1, 1);
    };
    let ((status, page), ()) = tokio::join!(held, publisher);
    assert_eq!(status, 200, "{page}");
    let readings = page["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 1, "{page}");
    assert_eq!(readings[0]["seq"], 1, "{page}");
    assert_eq!(page["next_cursor"].as_u64(), Some(cursor + 1), "{page}");
    // A wait that ends with nothing new answers an empty page with the same cursor.
    let (status, page) = hub
        .get(&format!(
            "/api/v1/sync/readings?cursor={}&wait=200ms",
            cursor + 1
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["readings"], json!([]), "{page}");
    assert_eq!(page["next_cursor"].as_u64(), Some(cursor + 1), "{page}");
    // Bad waits are refused with the reason.
    for bad in ["61s", "soon", "-1s"] {
        let (status, body) = hub.get(&format!("/api/v1/sync/readings?wait={bad}")).await;
        assert_eq!(status, 400, "wait={bad}: {body}");
        assert!(body.to_string().contains("wait"), "{body}");
    }
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cloud_pulls_by_offset_and_commits_its_cursor() {
    let root = tempfile::tempdir().unwrap();
    let (_receiver, addr) = Receiver::start(Answer::Take).await;
    let config = http_sink_config(root.path(), addr, "");
    let hub = Hub::start(root.path(), &["--config", &config]);
    publish(&hub, &["p-1", "p-2"], 0, 5);
    let mut cursor: Option<u64> = None;
    let mut pulled = Vec::new();
    let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
    while pulled.len() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "pulled only {pulled:?}"
        );
        let path = match cursor {
            Some(c) => format!("/api/v1/sync/readings?limit=3&cursor={c}"),
            None => "/api/v1/sync/readings?limit=3".into(),
        };
        let (status, page) = hub.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let readings = page["readings"].as_array().unwrap();
        assert!(readings.len() <= 3);
        pulled.extend(readings.iter().cloned());
        cursor = page["next_cursor"].as_u64();
        if readings.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_once_in_order(&pulled, &["p-1", "p-2"], 5);
    let offsets: Vec<u64> = pulled
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offset order: {offsets:?}"
    );

    // Commit: the consumer is registered and its lag shows.
    let (status, body) = hub
        .send(
            reqwest::Method::PUT,
            "/api/v1/sync/consumers/cloud-pull",
            Some(&json!({"cursor": offsets[4]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lag_readings"], 5, "{body}");
    let status = sync_status(&hub).await;
    assert_eq!(status["consumers"][0]["name"], "cloud-pull", "{status}");
    assert_eq!(status["consumers"][0]["cursor"], offsets[4], "{status}");
    // Bad input: a cursor past the newest reading, a sink's name, a body without a cursor.
    let (code, _) = hub
        .send(
            reqwest::Method::PUT,
            "/api/v1/sync/consumers/cloud-pull",
            Some(&json!({"cursor": 1_000_000})),
        )
        .await;
    assert_eq!(code, 400);
    let (code, _) = hub
        .send(
            reqwest::Method::PUT,
            "/api/v1/sync/consumers/cloud",
            Some(&json!({"cursor": 0})),
        )
        .await;
    assert_eq!(code, 409);
    let (code, _) = hub
        .send(
            reqwest::Method::PUT,
            "/api/v1/sync/consumers/cloud-pull",
            Some(&json!({})),
        )
        .await;
    assert_eq!(code, 400);
    // The commit survives a restart; deleting the consumer forgets it.
    let hub = {
        let mqtt = hub.mqtt_port();
        hub.stop();
        Hub::start_in(
            root.path(),
            &[
                "--api-listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                &format!("127.0.0.1:{mqtt}"),
            ],
            &["--config", &config],
        )
    };
    let status = sync_status(&hub).await;
    assert_eq!(status["consumers"][0]["cursor"], offsets[4], "{status}");
    let (code, _) = hub
        .send(
            reqwest::Method::DELETE,
            "/api/v1/sync/consumers/cloud-pull",
            None,
        )
        .await;
    assert_eq!(code, 204);
    let status = sync_status(&hub).await;
    assert_eq!(status["consumers"], json!([]), "{status}");
    hub.stop();
}

/// Publishes 24,000 readings of about 1.1 KB (26 MB) from four devices `{prefix}-0..3`.
fn fill(hub: &Hub, prefix: &str) {
    for w in 0..4 {
        publish_lines(hub.mqtt_port(), &format!("{prefix}-{w}"), 0..6_000, 1_000);
    }
}

/// Fills a hub with a 16 MiB quota and its only sink down, so nothing is synced.
async fn fill_past_the_quota(
    policy: &str,
    write_path: &str,
) -> (tempfile::TempDir, Receiver, Hub, String) {
    let root = tempfile::tempdir().unwrap();
    let (receiver, addr) = Receiver::start(Answer::Fail).await;
    let config = http_sink_config(root.path(), addr, "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "[data]\nmax_disk = \"16MiB\"\nfull_policy = \"{policy}\"\nwrite_path = \"{write_path}\"\n\n{text}"
        ),
    )
    .unwrap();
    let hub = Hub::start(root.path(), &["--config", &config]);
    // About 1.1 KB each: some 15,000 readings fill 16 MiB.
    fill(&hub, "q");
    (root, receiver, hub, config)
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_quota_drop_oldest_deletes_the_oldest_counts_them_and_the_file_stops_growing() {
    drop_oldest_at_the_quota("direct").await;
}

/// The same on the log write path, where a checkpoint writes a tail's new readings and
/// retention's deletes in one transaction: the store file doubled past the quota at one before
/// the log kept room for it.
#[tokio::test(flavor = "multi_thread")]
async fn at_the_quota_drop_oldest_keeps_the_log_path_s_files_within_it_too() {
    drop_oldest_at_the_quota("log").await;
}

async fn drop_oldest_at_the_quota(write_path: &str) {
    let (_root, receiver, hub, _config) = fill_past_the_quota("drop_oldest", write_path).await;
    let status = eventually("retention dropping unsynced readings", || async {
        let status = sync_status(&hub).await;
        (status["store"]["dropped"].as_u64() > Some(0)).then_some(status)
    })
    .await;
    assert!(
        status["store"]["oldest_offset"].as_u64() > Some(0),
        "{status}"
    );
    // The files stay within the quota: the engine reuses what retention frees. (The log's
    // segments count too, where there is a log.)
    let file = || {
        let segments: u64 = std::fs::read_dir(hub.data.join("log"))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        std::fs::metadata(hub.data.join("store.redb"))
            .unwrap()
            .len()
            + segments
    };
    // Within the quota: retention keeps live data under the largest size the engine's growth
    // steps reach within it; the 33 MB more written below would take it far past that if retention
    // did not make room.
    assert!(
        file() <= 16 << 20,
        "the store file grew to {} bytes",
        file()
    );
    let log = hub.log();
    assert!(
        log.contains("deleted readings that were not synced yet"),
        "the loss is logged"
    );
    // More readings still come in, and the file still does not grow.
    let before = sync_status(&hub).await["store"]["next_offset"]
        .as_u64()
        .unwrap();
    // At the quota commits take turns with retention's deletes, so the hub takes readings more
    // slowly than mosquitto_pub sends them, and the broker drops what overflows its buffer (a
    // device would send again what the hub did not acknowledge; mosquitto_pub does not). So the
    // readings go in chunks the broker can hold, each stored before the next is sent.
    for chunk in 0..15u32 {
        let seqs = chunk * 500..(chunk + 1) * 500;
        for w in 0..4 {
            publish_lines(hub.mqtt_port(), &format!("q-late-{w}"), seqs.clone(), 1_000);
        }
        for w in 0..4 {
            let path = format!("/api/v1/devices/q-late-{w}/latest");
            eventually("a chunk of late readings stored", || async {
                let (_, latest) = hub.get(&path).await;
                (latest["metrics"]["v"]["value"] == seqs.end - 1).then_some(())
            })
            .await;
        }
    }
    let after = sync_status(&hub).await["store"]["next_offset"]
        .as_u64()
        .unwrap();
    assert!(after >= before + 30_000, "{before} then {after}");
    assert!(
        file() <= 16 << 20,
        "the store file grew to {} bytes",
        file()
    );
    // The cloud comes back: the sink skips what was dropped and delivers the rest.
    receiver.answer(Answer::Take);
    eventually("the sink caught up", || async {
        let status = sync_status(&hub).await;
        (status["sinks"][0]["follower"]["lag_readings"] == 0).then_some(())
    })
    .await;
    let taken = receiver.taken();
    let late: Vec<u64> = taken
        .iter()
        .filter(|r| r["device"] == "q-late-3")
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(!late.is_empty(), "the newest readings were delivered");
    assert!(late.windows(2).all(|w| w[0] < w[1]), "in order, once");
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_quota_reject_new_refuses_readings_until_the_sink_catches_up() {
    let (_root, receiver, hub, _config) = fill_past_the_quota("reject_new", "direct").await;
    eventually("the store refusing new readings", || async {
        let status = sync_status(&hub).await;
        (status["store"]["refusing"] == true).then_some(())
    })
    .await;
    let before = sync_status(&hub).await["store"]["next_offset"]
        .as_u64()
        .unwrap();
    // A device's reading now is not stored and not acknowledged.
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/q-refused/telemetry",
        br#"{"seq":0,"metrics":{"v":1}}"#,
        1,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = sync_status(&hub).await;
    assert_eq!(status["store"]["next_offset"], before, "{status}");
    assert_eq!(
        status["store"]["dropped"], 0,
        "nothing unsynced was deleted: {status}"
    );
    // The cloud comes back: synced readings make room, and readings are taken again.
    receiver.answer(Answer::Take);
    eventually("the store taking readings again", || async {
        let status = sync_status(&hub).await;
        (status["store"]["refusing"] == false).then_some(())
    })
    .await;
    mosquitto_pub(
        hub.mqtt_port(),
        "devices/q-refused/telemetry",
        br#"{"seq":1,"metrics":{"v":1}}"#,
        1,
    );
    eventually("a reading stored again", || async {
        let (status, _) = hub.get("/api/v1/devices/q-refused/latest").await;
        (status == 200).then_some(())
    })
    .await;
    let status = sync_status(&hub).await;
    assert_eq!(status["store"]["dropped"], 0, "{status}");
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_swaps_sinks_without_a_restart_and_names_what_needs_one() {
    let root = tempfile::tempdir().unwrap();
    let (first, first_addr) = Receiver::start(Answer::Take).await;
    let (second, second_addr) = Receiver::start(Answer::Take).await;
    let config = http_sink_config(root.path(), first_addr, "");
    let hub = Hub::start(root.path(), &["--config", &config]);
    publish(&hub, &["r-1"], 0, 5);
    eventually("the first receiver has them", || async {
        (first.taken().len() >= 5).then_some(())
    })
    .await;
    // The sink now points elsewhere under another name, and a key that needs a restart changes.
    // (The log level cannot be seen to change here: the harness sets HUB_LOG__LEVEL, which wins
    // over the file.)
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&first_addr.to_string(), &second_addr.to_string())
        .replace("name = \"cloud\"", "name = \"cloud-2\"");
    std::fs::write(
        &config,
        format!("[devices]\noffline_after = \"10m\"\n{text}"),
    )
    .unwrap();
    hub.hangup();
    eventually("the new sink running", || async {
        let status = sync_status(&hub).await;
        let names: Vec<&str> = status["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["follower"]["name"].as_str().unwrap())
            .collect();
        (names == ["cloud-2"]).then_some(())
    })
    .await;
    publish(&hub, &["r-1"], 5, 5);
    // A new sink starts from the beginning: the second receiver gets all ten.
    eventually("the second receiver has them", || async {
        (second.taken().len() >= 10).then_some(())
    })
    .await;
    assert_once_in_order(&second.taken(), &["r-1"], 10);
    assert_eq!(first.taken().len(), 5, "the removed sink stopped");
    let log = hub.log();
    assert!(log.contains("reload: sink removed"), "{log}");
    assert!(log.contains("take effect at the next restart"), "{log}");
    assert!(log.contains("devices"), "{log}");
    // The removed sink no longer holds readings back from retention.
    let status = sync_status(&hub).await;
    assert_eq!(status["sinks"].as_array().unwrap().len(), 1, "{status}");
    hub.stop();
}
