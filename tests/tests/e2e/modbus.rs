//! Modbus end to end: the real hub polls a pymodbus server (an independent implementation) over
//! TCP and over RTU on a socat pseudo-terminal, through exceptions, a unit that stops answering,
//! an adapter pulled and plugged in again, writes, a bad configuration and a kill -9.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;

use serde_json::{Value, json};

use crate::cli::check_config;
use crate::harness::{DEADLINE, Hub, SerialCable, eventually, free_port, metric, python_peer};

/// The points of tests/py/modbus_server.py's map, as a device's `points`: every type, both
/// orders, scale, a string, coils and a discrete input. Read in 8 requests: input 0-5, input
/// 10-13, holding 0-3, holding 10-12, holding 20-21, holding 30-33, coils 0-2, discrete 0.
const METER_POINTS: &str = r#"points = [
  { name = "voltage", table = "input", address = 0, type = "f32", unit = "V" },
  { name = "current", table = "input", address = 2, type = "f32", word_order = "little" },
  { name = "frequency", table = "input", address = 4, type = "u16", scale = 0.01 },
  { name = "temperature", table = "input", address = 5, type = "i16", scale = 0.1 },
  { name = "energy", table = "input", address = 10, type = "u64" },
  { name = "model", table = "holding", address = 0, type = "string", length = 8 },
  { name = "setpoint", table = "holding", address = 10, type = "i16", scale = 0.1, writable = true },
  { name = "serial", table = "holding", address = 11, type = "u32", word_order = "little", byte_order = "little" },
  { name = "balance", table = "holding", address = 20, type = "i32" },
  { name = "constant", table = "holding", address = 30, type = "f64" },
  { name = "running", table = "coil", address = 0, type = "bool" },
  { name = "alarm", table = "coil", address = 1, type = "bool" },
  { name = "relay", table = "coil", address = 2, type = "bool", writable = true },
  { name = "door", table = "discrete", address = 0, type = "bool" },
]"#;
const METER_REQUESTS: f64 = 8.0;

/// A few points, for a slow line.
const LINE_POINTS: &str = r#"points = [
  { name = "voltage", table = "input", address = 0, type = "f32" },
  { name = "energy", table = "input", address = 10, type = "u64" },
  { name = "relay", table = "coil", address = 2, type = "bool", writable = true },
]"#;

/// tests/py/modbus_server.py, killed on drop.
struct ModbusPeer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl ModbusPeer {
    fn start(args: &[&str]) -> ModbusPeer {
        let mut child = python_peer("modbus_server.py")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start modbus_server.py (pymodbus: tests/py/requirements.txt)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = ModbusPeer {
            child,
            stdin,
            lines,
        };
        peer.expect("ready");
        peer
    }

    fn tcp(port: u16, units: &str) -> ModbusPeer {
        ModbusPeer::start(&["--tcp", &format!("127.0.0.1:{port}"), "--units", units])
    }

    fn rtu(path: &Path, units: &str) -> ModbusPeer {
        let path = path.display().to_string();
        ModbusPeer::start(&["--rtu", &path, "--baud", "19200", "--units", units])
    }

    fn expect(&mut self, wanted: &str) {
        let line = self
            .lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("modbus_server.py did not say {wanted:?}"));
        assert_eq!(line, wanted);
    }

    /// `silent U`, `exception U` or `answer U`.
    fn tell(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        self.expect("ok");
    }
}

impl Drop for ModbusPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hub whose config is `text`, written to `root/hub.toml`. Presence comes from the poller
/// alone: silence would make a device offline only after an hour.
fn start_hub(root: &Path, text: &str) -> Hub {
    let config = root.join("hub.toml");
    let text = format!("[devices]\noffline_after = \"1h\"\n\n{text}");
    std::fs::write(&config, text).unwrap();
    let config = config.display().to_string();
    Hub::start(root, &["--config", &config])
}

/// A `[[modbus]]` bus "plant" on the TCP server at `port`, with `devices` on it.
fn tcp_bus(port: u16, devices: String) -> String {
    format!(
        "[[modbus]]\nname = \"plant\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\ntimeout = \"300ms\"\n\n{devices}"
    )
}

/// `[[modbus.devices]]` tables for `units` (ids `meter-{unit}`) with `points`.
fn devices(units: &[u8], interval: &str, points: &str) -> String {
    units
        .iter()
        .map(|u| format!("[[modbus.devices]]\nid = \"meter-{u}\"\nunit = {u}\ninterval = \"{interval}\"\n{points}\n\n"))
        .collect()
}

/// The device's latest values by metric, once it has all of `metrics`.
async fn latest(hub: &Hub, device: &str, metrics: usize) -> Value {
    eventually(&format!("{metrics} latest values of {device}"), || async {
        let (status, body) = hub.get(&format!("/api/v1/devices/{device}/latest")).await;
        let m = &body["metrics"];
        (status == 200 && m.as_object().is_some_and(|o| o.len() == metrics)).then(|| m.clone())
    })
    .await
}

async fn online(hub: &Hub, device: &str) -> Option<bool> {
    let (status, body) = hub.get(&format!("/api/v1/devices/{device}")).await;
    (status == 200).then(|| body["online"].as_bool()).flatten()
}

async fn until_online(hub: &Hub, device: &str, wanted: bool) {
    eventually(&format!("{device} online = {wanted}"), || async {
        (online(hub, device).await == Some(wanted)).then_some(())
    })
    .await
}

async fn readings(hub: &Hub, device: &str) -> u64 {
    let (_, d) = hub.get(&format!("/api/v1/devices/{device}")).await;
    d["counters"]["readings"].as_u64().unwrap_or(0)
}

/// Waits until `device` has `more` readings beyond `from`.
async fn until_more_readings(hub: &Hub, device: &str, from: u64, more: u64) {
    eventually(&format!("{more} more readings of {device}"), || async {
        (readings(hub, device).await >= from + more).then_some(())
    })
    .await;
}

fn close(value: &Value, wanted: f64) -> bool {
    value.as_f64().is_some_and(|x| (x - wanted).abs() < 1e-9)
}

/// POSTs a write and waits up to 5 s for its end: status and body.
async fn write(hub: &Hub, device: &str, point: &str, value: Value) -> (u16, Value) {
    let body = json!({"name": "write", "args": {"point": point, "value": value}});
    hub.send(
        reqwest::Method::POST,
        &format!("/api/v1/devices/{device}/commands?wait=5s"),
        Some(&body),
    )
    .await
}

async fn errors(hub: &Hub, reason: &str) -> f64 {
    metric(
        hub,
        "hub_modbus_errors_total",
        &format!("reason=\"{reason}\""),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn modbus_tcp_reads_every_type_and_writes_with_read_back() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = ModbusPeer::tcp(port, "1");
    let hub = start_hub(
        root.path(),
        &tcp_bus(port, devices(&[1], "200ms", METER_POINTS)),
    );
    let m = latest(&hub, "meter-1", 14).await;
    let value = |name: &str| m[name]["value"].clone();
    assert!(close(&value("voltage"), 230.5), "{m}");
    assert!(close(&value("current"), 4.25), "little word order: {m}");
    assert!(close(&value("frequency"), 50.0), "scale: {m}");
    assert!(close(&value("temperature"), -12.6), "i16 with scale: {m}");
    assert_eq!(value("model"), "SDM630");
    assert!(close(&value("setpoint"), 20.1), "{m}");
    assert_eq!(value("serial"), 123_456_790, "little words, little bytes");
    assert_eq!(value("balance"), -100_000);
    assert!(close(&value("constant"), 1234.5678), "{m}");
    assert_eq!(
        [
            value("running"),
            value("alarm"),
            value("relay"),
            value("door")
        ],
        [json!(true), json!(false), json!(true), json!(true)]
    );
    let (_, device) = hub.get("/api/v1/devices/meter-1").await;
    assert_eq!(device["transport"], "modbus");
    assert_eq!(device["online"], true);

    // Each poll is one reading, and the energy counter moves between them.
    let first = value("energy").as_u64().unwrap();
    eventually("the energy counter to move", || async {
        let (_, l) = hub.get("/api/v1/devices/meter-1/latest").await;
        (l["metrics"]["energy"]["value"].as_u64()? > first).then_some(())
    })
    .await;
    let (_, page) = hub
        .get("/api/v1/devices/meter-1/readings?metric=energy&order=oldest&limit=1000")
        .await;
    let energies: Vec<u64> = page["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metrics"]["energy"].as_u64().unwrap())
        .collect();
    assert!(
        energies.len() >= 2 && energies.windows(2).all(|w| w[0] <= w[1]),
        "{energies:?}"
    );
    // Contiguous points share requests: 8 a poll for 14 points (a poll may be under way).
    let polls = metric(&hub, "hub_modbus_polls_total", "bus=\"plant\"").await;
    let requests = metric(&hub, "hub_modbus_requests_total", "bus=\"plant\"").await;
    assert!(
        requests >= polls * METER_REQUESTS && requests <= (polls + 1.0) * METER_REQUESTS,
        "{requests} requests for {polls} polls"
    );

    // A write, its scale undone, read back: the result is what the device holds.
    let (status, body) = write(&hub, "meter-1", "setpoint", json!(21.5)).await;
    assert_eq!(
        (status, &body["state"]),
        (200, &json!("succeeded")),
        "{body}"
    );
    assert_eq!(body["result"]["point"], "setpoint");
    assert!(close(&body["result"]["value"], 21.5), "{body}");
    let (status, body) = write(&hub, "meter-1", "relay", json!(false)).await;
    assert_eq!(
        (status, &body["result"]["value"]),
        (200, &json!(false)),
        "{body}"
    );
    eventually("the next polls to see the writes", || async {
        let (_, l) = hub.get("/api/v1/devices/meter-1/latest").await;
        let m = &l["metrics"];
        (close(&m["setpoint"]["value"], 21.5) && m["relay"]["value"] == json!(false)).then_some(())
    })
    .await;

    // Refused when asked for, with why; nothing is written.
    let (status, body) = write(&hub, "meter-1", "voltage", json!(240)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("not writable"), "{body}");
    let (status, body) = write(&hub, "meter-1", "nope", json!(1)).await;
    assert!(
        status == 400 && body.to_string().contains("no point"),
        "{body}"
    );
    let (status, body) = write(&hub, "meter-1", "setpoint", json!(99_999)).await;
    assert!(
        status == 400 && body.to_string().contains("does not fit"),
        "{body}"
    );
    let (_, l) = hub.get("/api/v1/devices/meter-1/latest").await;
    assert!(close(&l["metrics"]["setpoint"]["value"], 21.5), "{l}");
}

#[tokio::test(flavor = "multi_thread")]
async fn modbus_units_that_fail_go_offline_without_holding_up_the_others() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = ModbusPeer::tcp(port, "1,2,3");
    let hub = start_hub(
        root.path(),
        &tcp_bus(port, devices(&[1, 2, 3], "200ms", LINE_POINTS)),
    );
    for unit in 1..=3 {
        let m = latest(&hub, &format!("meter-{unit}"), 3).await;
        assert!(
            close(&m["voltage"]["value"], 230.0 + f64::from(unit) / 2.0),
            "{m}"
        );
    }

    // Unit 2 answers with an exception, unit 3 not at all: both counted, both offline.
    server.tell("exception 2");
    server.tell("silent 3");
    until_online(&hub, "meter-2", false).await;
    until_online(&hub, "meter-3", false).await;
    assert!(errors(&hub, "exception").await >= 2.0);
    assert!(errors(&hub, "timeout").await >= 2.0);
    // Meanwhile unit 1 keeps its schedule.
    let from = readings(&hub, "meter-1").await;
    until_more_readings(&hub, "meter-1", from, 10).await;
    assert_eq!(online(&hub, "meter-1").await, Some(true));

    server.tell("answer 2");
    server.tell("answer 3");
    until_online(&hub, "meter-2", true).await;
    until_online(&hub, "meter-3", true).await;
    let from = readings(&hub, "meter-3").await;
    until_more_readings(&hub, "meter-3", from, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn modbus_rtu_units_share_a_line_and_a_replugged_adapter_is_picked_up() {
    let root = tempfile::tempdir().unwrap();
    let mut cable = SerialCable::plug(root.path(), "rs485");
    let mut server = ModbusPeer::rtu(&cable.device, "1,2,3");
    let hub = start_hub(
        root.path(),
        &format!(
            "[[modbus]]\nname = \"line-1\"\ntransport = \"rtu\"\npath = \"{}\"\nbaud = 19200\ntimeout = \"300ms\"\n\n{}",
            cable.hub.display(),
            devices(&[1, 2, 3], "300ms", LINE_POINTS)
        ),
    );
    for unit in 1..=3 {
        let m = latest(&hub, &format!("meter-{unit}"), 3).await;
        assert!(
            close(&m["voltage"]["value"], 230.0 + f64::from(unit) / 2.0),
            "{m}"
        );
    }

    // A unit that stops answering costs the line its timeouts, not the others' readings.
    server.tell("silent 2");
    until_online(&hub, "meter-2", false).await;
    assert!(errors(&hub, "timeout").await >= 2.0);
    let (from1, from3) = (
        readings(&hub, "meter-1").await,
        readings(&hub, "meter-3").await,
    );
    until_more_readings(&hub, "meter-1", from1, 10).await;
    until_more_readings(&hub, "meter-3", from3, 10).await;
    server.tell("answer 2");
    until_online(&hub, "meter-2", true).await;
    // An exception on the line: counted, and the unit offline until it answers again.
    server.tell("exception 1");
    until_online(&hub, "meter-1", false).await;
    assert!(errors(&hub, "exception").await >= 2.0);
    server.tell("answer 1");
    until_online(&hub, "meter-1", true).await;

    // A write on the line, read back.
    let (status, body) = write(&hub, "meter-3", "relay", json!(false)).await;
    assert_eq!(
        (status, &body["result"]["value"]),
        (200, &json!(false)),
        "{body}"
    );

    // The adapter is pulled: every device on the line goes offline.
    drop(server);
    cable.unplug();
    for unit in 1..=3 {
        until_online(&hub, &format!("meter-{unit}"), false).await;
    }
    assert!(errors(&hub, "link_down").await >= 1.0);
    // Plugged in again (new pseudo-terminals under the same path): picked up again.
    cable.replug();
    let _server = ModbusPeer::rtu(&cable.device, "1,2,3");
    for unit in 1..=3 {
        let device = format!("meter-{unit}");
        until_online(&hub, &device, true).await;
        let from = readings(&hub, &device).await;
        until_more_readings(&hub, &device, from, 2).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn modbus_readings_seen_before_a_kill_9_are_there_after_it() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = ModbusPeer::tcp(port, "1");
    let config = tcp_bus(port, devices(&[1], "50ms", LINE_POINTS));
    let hub = start_hub(root.path(), &config);
    until_more_readings(&hub, "meter-1", 0, 20).await;
    // The API shows only durable readings: all of these must survive.
    let path = "/api/v1/devices/meter-1/readings?order=oldest&limit=1000";
    let (_, before) = hub.get(path).await;
    let before = before["readings"].as_array().unwrap().clone();
    assert!(before.len() >= 20);
    hub.kill9();

    let hub = start_hub(root.path(), &config);
    let (_, after) = hub.get(path).await;
    let after = after["readings"].as_array().unwrap();
    assert!(after.len() >= before.len());
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "readings changed or were lost"
    );
    // And polling goes on where it left off.
    until_more_readings(&hub, "meter-1", before.len() as u64, 5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn modbus_readings_show_in_the_stream_downsampling_and_the_pull_api() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = ModbusPeer::tcp(port, "1");
    let hub = start_hub(
        root.path(),
        &tcp_bus(port, devices(&[1], "100ms", LINE_POINTS)),
    );
    // The stream: `hub watch` prints each durable reading as the stream sends it.
    let watch = std::process::Command::new(crate::harness::binary("hub"))
        .args(["--api-listen", &hub.api.to_string(), "--data-dir"])
        .arg(&hub.data)
        .args([
            "watch",
            "--json",
            "--device",
            "meter-*",
            "--no-events",
            "--count",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || watch.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The subscription's acknowledgement, then three readings.
    let readings: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|m: &Value| m["type"] == "reading")
        .collect();
    assert_eq!(readings.len(), 3, "{text}");
    assert!(
        readings
            .iter()
            .all(|r| r["device"] == "meter-1" && close(&r["metrics"]["voltage"], 230.5)),
        "{text}"
    );

    // Downsampled: one-minute buckets of the voltage.
    until_more_readings(&hub, "meter-1", 0, 5).await;
    let (status, body) = hub
        .get("/api/v1/devices/meter-1/readings?metric=voltage&bucket=1m&agg=avg,min,max,count&from=-1h")
        .await;
    assert_eq!(status, 200, "{body}");
    let buckets = body["buckets"].as_array().unwrap();
    assert!(!buckets.is_empty(), "{body}");
    assert!(
        buckets
            .iter()
            .all(|b| close(&b["avg"], 230.5) && close(&b["max"], 230.5)),
        "{body}"
    );

    // The cloud's pull: the readings are there, in offset order, with the device's id.
    let (status, page) = hub.get("/api/v1/sync/readings?limit=1000").await;
    assert_eq!(status, 200, "{page}");
    let pulled: Vec<&Value> = page["readings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["device"] == "meter-1")
        .collect();
    assert!(pulled.len() >= 5, "{page}");
    assert!(
        pulled
            .iter()
            .all(|r| close(&r["metrics"]["voltage"], 230.5)),
        "{page}"
    );
}

#[test]
fn a_bad_modbus_config_is_refused_by_check_config_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bus = "[[modbus]]\nname = \"line-1\"\ntransport = \"rtu\"\n\n[[modbus.devices]]\nid = \"meter-1\"\n";
    let point =
        r#"points = [{ name = "v", table = "input", address = 0, type = "f32", writable = true }]"#;
    let (code, err) = check_config(dir.path(), &format!("{bus}unit = 300\n{point}\n"));
    assert_ne!(code, Some(0), "{err}");
    // A unit id beyond a byte is a type error, named with its key, line and value.
    assert!(
        err.contains("modbus.devices.unit") && err.contains("line 7") && err.contains("300"),
        "{err}"
    );
    let (code, err) = check_config(dir.path(), &format!("{bus}unit = 1\n{point}\n"));
    assert_ne!(code, Some(0), "{err}");
    for expected in [
        "modbus[0].path: an rtu bus needs the serial port",
        "modbus[0].devices[0].points[0].writable: only holding registers and coils",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in {err}");
    }
}
