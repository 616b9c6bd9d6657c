//! Runs the real `hub` binary (and firmware-sim, mosquitto, mosquitto_pub) for end-to-end tests.
//!
//! Binaries come from the workspace's target directory: `tests/run` builds them before the tests.
//! Every child process is killed by a `Drop` guard, so a failing test never leaves one running.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Generous deadlines: CI machines are shared and slow; polls return as soon as the thing is there.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The path of a workspace binary, built by `tests/run` (or `cargo build -p hub -p firmware-sim`).
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with tests/run, or `cargo build -p hub -p firmware-sim` first",
        path.display()
    );
    path
}

/// Installs the TLS provider for the test's HTTP client, once.
pub fn init_tls() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A free TCP port on loopback for a server the test starts: a broker, say.
///
/// Ports come from a range below the kernel's ephemeral ports (32768 and up on Linux), handed out
/// once each per test process, so neither another test's server nor an outgoing client socket can
/// take one between this check and the server's own bind. (Binding port 0 and releasing it is not
/// safe: the kernel hands the same port to the next bind(0) or connect().)
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 600) as u16 * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_000, "ran out of test ports");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running hub.
pub struct Hub {
    child: Option<Child>,
    /// The data directory.
    pub data: PathBuf,
    /// Where its stderr goes.
    pub log_path: PathBuf,
    /// The API address.
    pub api: SocketAddr,
    /// The MQTT endpoint's plain listener, if it runs one.
    pub mqtt: Option<SocketAddr>,
    /// Lines the hub printed on stdout up to readiness.
    pub stdout: Vec<String>,
}

/// Flags for a hub that is restarted on the same MQTT address or broker (`flag` and `value`, e.g.
/// `--mqtt-listen 127.0.0.1:1883`), so its clients find it again; the API on a free port.
pub fn restartable<'a>(flag: &'a str, value: &'a str) -> [&'a str; 4] {
    ["--api-listen", "127.0.0.1:0", flag, value]
}

impl Hub {
    /// Starts a hub with its data in `root/hub-data`, on free ports, plus `args`.
    pub fn start(root: &Path, args: &[&str]) -> Hub {
        // The API binds port 0 itself and reports it; the broker gets a port of its own (see free_port).
        let mqtt = format!("127.0.0.1:{}", free_port());
        Self::start_in(
            root,
            &["--api-listen", "127.0.0.1:0", "--mqtt-listen", &mqtt],
            args,
        )
    }

    /// Starts a hub with exactly `base` and `args` as flags, in `root` as working directory.
    pub fn start_in(root: &Path, base: &[&str], args: &[&str]) -> Hub {
        let data = root.join("hub-data");
        let log_path = root.join(format!("hub-{}.log", std::process::id() ^ rand_suffix()));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(binary("hub"))
            .current_dir(root)
            .args(base)
            .args(args)
            .env_remove("RUST_LOG")
            .env("HUB_LOG__LEVEL", "info,hub=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start hub");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut hub = Hub {
            child: Some(child),
            data,
            log_path,
            api: "0.0.0.0:0".parse().unwrap(),
            mqtt: None,
            stdout: vec![],
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    hub.stdout.push(line.clone());
                    if let Some(rest) = line.strip_prefix("hub ready: ") {
                        for part in rest.split_whitespace() {
                            if let Some(api) = part.strip_prefix("api=https://") {
                                hub.api = api.parse().unwrap();
                            } else if let Some(mqtt) = part.strip_prefix("mqtt=") {
                                hub.mqtt = mqtt.parse().ok();
                            }
                        }
                        // Keep reading the rest of stdout in the background.
                        if let Ok(next) = rx.recv_timeout(Duration::from_secs(2)) {
                            hub.stdout.push(next);
                        }
                        std::thread::spawn(move || while rx.recv().is_ok() {});
                        return hub;
                    }
                }
                Err(_) => panic!("hub did not become ready; log:\n{}", hub.log()),
            }
        }
    }

    /// The hub's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The MQTT endpoint's port.
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt.expect("hub runs its MQTT endpoint").port()
    }

    /// The admin token from the first run.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// An HTTPS client that trusts the hub's CA and nothing else.
    pub fn client(&self) -> reqwest::Client {
        init_tls();
        let ca = std::fs::read(self.data.join("tls/ca.crt")).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// `https://localhost:<port><path>`: the name the server certificate is made for.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.api.port())
    }

    /// GET with the admin token; returns status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .client()
            .get(self.url(path))
            .bearer_auth(self.token())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// A request with the admin token and an optional JSON body; status and JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .client()
            .request(method, self.url(path))
            .bearer_auth(self.token());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// Everything the hub logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(&child, "TERM");
        wait_with_deadline(&mut child)
            .unwrap_or_else(|| panic!("hub did not stop on SIGTERM; log:\n{}", self.log()))
    }

    /// Kills the hub with SIGKILL, as a power cut would stop it.
    /// Sends SIGHUP (reload certificates, keys and CRLs).
    pub fn hangup(&self) {
        signal(self.child.as_ref().expect("running"), "HUP");
    }

    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- hub log ({}) ----\n{}",
                self.log_path.display(),
                self.log()
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_with_deadline(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Publishes with the real `mosquitto_pub`.
pub fn mosquitto_pub(port: u16, topic: &str, payload: &[u8], qos: u8) {
    use std::io::Write;
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
            &qos.to_string(),
            "-s",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (Debian package mosquitto-clients) must be installed");
    child.stdin.take().unwrap().write_all(payload).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Publishes each of `lines` as one message, in order, over one connection of the real
/// `mosquitto_pub` (its `-l` mode): a burst of many messages without a process each.
pub fn mosquitto_pub_lines(port: u16, topic: &str, lines: &[String], qos: u8) {
    use std::io::Write;
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(["-q", &qos.to_string(), "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (Debian package mosquitto-clients) must be installed");
    let mut stdin = child.stdin.take().expect("stdin");
    for line in lines {
        assert!(!line.contains('\n'), "one message a line");
        writeln!(stdin, "{line}").expect("write to mosquitto_pub");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("mosquitto_pub ends");
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sum of the samples of `/metrics` family `name` whose labels contain `labels`.
pub async fn metric(hub: &Hub, name: &str, labels: &str) -> f64 {
    let text = hub
        .client()
        .get(hub.url("/metrics"))
        .bearer_auth(hub.token())
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writes `text` as `root/hub.toml`; its path, for `--config`.
pub fn write_config(root: &Path, text: &str) -> String {
    let path = root.join("hub.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Starts a hub with the configuration `text` behind the broker on `port`, and waits until it
/// is subscribed (ready).
pub async fn hub_behind(root: &Path, port: u16, text: &str) -> Hub {
    let config = write_config(root, text);
    let broker = format!("mqtt://127.0.0.1:{port}");
    let hub = Hub::start(root, &["--config", &config, "--mqtt-broker", &broker]);
    eventually("subscribed", || async {
        (hub.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    hub
}

/// Polls `check` until it returns `Some`, or panics with `what` after the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A real mosquitto broker on a free loopback port.
pub struct Mosquitto {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    /// Starts mosquitto with the given configuration file, listening on `port`.
    pub fn start_with(conf: &Path, port: u16) -> Mosquitto {
        let mut m = Mosquitto {
            child: None,
            port,
            conf: conf.to_owned(),
        };
        m.restart();
        m
    }

    /// Starts mosquitto with a config of its own in `dir`.
    pub fn start(dir: &Path) -> Mosquitto {
        let port = free_port();
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n"),
        )
        .unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            conf,
        };
        m.restart();
        m
    }

    /// (Re)starts the broker process on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (Debian package mosquitto) must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real `mosquitto_sub` on the broker at `port` with `args` (topics, QoS, a will...), returned
/// once it is subscribed (its SUBACK seen in its debug output, which `stdbuf` keeps
/// line-buffered): the process, and the lines it prints from then on, as they come.
pub fn mosquitto_sub_subscribed(
    port: u16,
    args: &[&str],
) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-d",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub (Debian package mosquitto-clients) must be installed");
    let stdout = child.stdout.take().unwrap();
    let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        for line in lines.by_ref() {
            if line.contains("received SUBACK") {
                let _ = subscribed_tx.send(());
                break;
            }
        }
        for line in lines {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    if subscribed_rx.recv_timeout(DEADLINE).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("mosquitto_sub did not subscribe");
    }
    (child, lines_rx)
}

/// A `mosquitto_sub` whose output lines (payloads as hex) are collected in the background.
pub struct Subscriber {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Subscriber {
    /// Subscribes to `topic` on the broker at `port`; payloads are printed as hex.
    pub fn start(port: u16, topic: &str) -> Subscriber {
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                topic,
                "-F",
                "%x",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (Debian package mosquitto-clients) must be installed");
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Subscriber { child, lines }
    }

    /// The payloads received so far.
    pub fn payloads(&self) -> Vec<Vec<u8>> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|hex| {
                (0..hex.len() / 2)
                    .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                    .collect()
            })
            .collect()
    }
}

impl Subscriber {
    /// The JSON acks (`devices/{id}/ack`) received so far.
    pub fn json_acks(&self) -> Vec<device_protocol::json::JsonAck> {
        self.payloads()
            .iter()
            .filter_map(|p| serde_json::from_slice(p).ok())
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A firmware-sim run, killed if the test fails before it ends.
pub struct Sim(Option<Child>);

impl Sim {
    /// Starts `devices` simulated devices that each produce `count` readings, keeping an outbox.
    pub fn start(
        broker: &str,
        transport: &str,
        prefix: &str,
        devices: u32,
        count: u32,
        outbox: &std::path::Path,
    ) -> Sim {
        let child = Command::new(binary("firmware-sim"))
            .args([
                "--broker",
                broker,
                "--transport",
                transport,
                "--prefix",
                prefix,
            ])
            .args([
                "--devices",
                &devices.to_string(),
                "--count",
                &count.to_string(),
                "--rate",
                "40",
            ])
            .args(["--ack-timeout", "1", "--drain-timeout", "600"])
            .arg("--outbox")
            .arg(outbox)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start firmware-sim");
        Sim(Some(child))
    }

    /// Wraps a firmware-sim process started by the test itself.
    pub fn from_child(child: Child) -> Sim {
        Sim(Some(child))
    }

    /// Waits for the end: whether every reading was acknowledged, and the output.
    pub fn wait(mut self) -> (bool, String) {
        let child = self.0.take().unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Checks that devices `{prefix}0..devices` each have readings with seq 0..count, each once.
pub async fn check_every_reading_once(hub: &Hub, prefix: &str, devices: u32, count: u32) {
    for d in 0..devices {
        let id = format!("{prefix}{d}");
        let mut seqs = Vec::new();
        let mut path = format!("/api/v1/devices/{id}/readings?order=oldest&limit=1000");
        loop {
            let (status, body) = hub.get(&path).await;
            assert_eq!(status, 200, "{id}: {body}");
            seqs.extend(
                body["readings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["seq"].as_u64().unwrap()),
            );
            match body["next_cursor"].as_str() {
                Some(c) => {
                    path =
                        format!("/api/v1/devices/{id}/readings?order=oldest&limit=1000&cursor={c}")
                }
                None => break,
            }
        }
        seqs.sort();
        let mut unique = seqs.clone();
        unique.dedup();
        assert_eq!(unique.len(), seqs.len(), "{id}: a reading stored twice");
        assert_eq!(
            unique,
            (0..u64::from(count)).collect::<Vec<_>>(),
            "{id}: readings lost"
        );
    }
}

/// A pair of linked pseudo-terminals made by socat: `hub` and `device` ends, like a serial cable.
pub struct SerialCable {
    child: Option<Child>,
    /// The hub's end (what `[[serial]] path` names).
    pub hub: PathBuf,
    /// The device's end.
    pub device: PathBuf,
}

impl SerialCable {
    /// Plugs a new cable with its ends at `dir/name-hub` and `dir/name-dev`.
    pub fn plug(dir: &Path, name: &str) -> SerialCable {
        let mut cable = SerialCable {
            child: None,
            hub: dir.join(format!("{name}-hub")),
            device: dir.join(format!("{name}-dev")),
        };
        cable.replug();
        cable
    }

    /// Pulls the cable: both ends disappear.
    pub fn unplug(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.hub);
        let _ = std::fs::remove_file(&self.device);
    }

    /// Plugs it in again: the same paths, new pseudo-terminals.
    pub fn replug(&mut self) {
        self.unplug();
        let link = |p: &Path| format!("pty,raw,echo=0,link={}", p.display());
        let child = Command::new("socat")
            .args(["-d", "-d", &link(&self.hub), &link(&self.device)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (Debian package socat) must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while !(self.hub.exists() && self.device.exists()) {
            assert!(
                Instant::now() < deadline,
                "socat did not make the pseudo-terminals"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for SerialCable {
    fn drop(&mut self) {
        self.unplug();
    }
}

/// Waits until `device` has exactly `n` readings stored; fails with what it saw last.
pub async fn wait_for_readings(hub: &Hub, device: &str, n: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, d) = hub.get(&format!("/api/v1/devices/{device}")).await;
        if d["counters"]["readings"].as_u64() == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} readings of {device}, last saw {d}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A command running `tests/py/{script}` with the Python of the test peers' venv (`tests/run`
/// makes it and sets `E2E_PYTHON`; without it, `python3` from the PATH, which must then have
/// the packages of `tests/py/requirements.txt`).
pub fn python_peer(script: &str) -> Command {
    python_peer_in("E2E_PYTHON", script)
}

/// [`python_peer`] with the Python named by the variable `venv` (`E2E_SPB_PYTHON`: the venv of
/// `tests/py/requirements-sparkplug.txt`, whose mqtt-spb-wrapper pins an older paho-mqtt).
pub fn python_peer_in(venv: &str, script: &str) -> Command {
    let python = std::env::var_os(venv)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(script);
    assert!(script.exists(), "{} is missing", script.display());
    let mut command = Command::new(python);
    command.arg(script);
    command
}
