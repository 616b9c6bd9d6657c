//! The MQTT endpoint's TLS listener for devices against the real binary, with real `mosquitto_pub` and `mosquitto_sub` over TLS:
//! a device certificate (made by `hub certs issue-device`) lets a device publish and subscribe
//! to its own topics only; missing, foreign and expired certificates fail the handshake (and
//! SIGHUP reads the device CA again); a silent connection is cut off; mosquitto with the example
//! ACL of `deploy/mosquitto` keeps devices apart too; and the plain listener is refused a
//! non-loopback address unless that is asked for.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::harness::{DEADLINE, Hub, Mosquitto, binary, eventually, free_port, wait_for_readings};
use crate::security::TestCa;

/// A device's TLS files for mosquitto's clients.
pub(crate) struct DeviceTls {
    pub(crate) ca: PathBuf,
    pub(crate) cert: Option<(PathBuf, PathBuf)>,
}

impl DeviceTls {
    pub(crate) fn args(&self) -> Vec<String> {
        let mut args = vec!["--cafile".to_owned(), self.ca.display().to_string()];
        if let Some((cert, key)) = &self.cert {
            args.extend([
                "--cert".to_owned(),
                cert.display().to_string(),
                "--key".to_owned(),
                key.display().to_string(),
            ]);
        }
        args
    }
}

/// Starts a hub whose gate listens on a free port, with `extra` lines in `[mqtt.devices]`.
pub(crate) fn start_hub(root: &Path, extra: &str) -> (Hub, u16) {
    let gate = free_port();
    let config = root.join("hub.toml");
    std::fs::write(
        &config,
        format!("[mqtt.devices]\nlisten = \"127.0.0.1:{gate}\"\n{extra}"),
    )
    .unwrap();
    let hub = Hub::start(root, &["--config", &config.display().to_string()]);
    (hub, gate)
}

/// `hub certs issue-device --id ID`: its certificate and key, signed by the hub's CA.
pub(crate) fn issue_device(hub: &Hub, id: &str) -> DeviceTls {
    issue(&hub.data, "issue-device", "--id", id)
}

/// `hub certs <command> <flag> <name>` in the data directory `data`: the CA and the new files.
fn issue(data: &Path, command: &str, flag: &str, name: &str) -> DeviceTls {
    let out = Command::new(binary("hub"))
        .arg("--data-dir")
        .arg(data)
        .args(["certs", command, flag, name])
        .output()
        .unwrap();
    assert_succeeded(&out, "hub certs");
    let dir = data.join(if command == "issue-device" {
        "tls/devices"
    } else {
        "tls/clients"
    });
    DeviceTls {
        ca: data.join("tls/ca.crt"),
        cert: Some((
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        )),
    }
}

/// Writes a TestCa certificate and key (one PEM) as two files for mosquitto.
fn split_pem(dir: &Path, name: &str, pem: &str, ca: &Path) -> DeviceTls {
    let at = pem.find("-----BEGIN PRIVATE KEY-----").unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, &pem[..at]).unwrap();
    std::fs::write(&key, &pem[at..]).unwrap();
    DeviceTls {
        ca: ca.to_owned(),
        cert: Some((cert, key)),
    }
}

/// `mosquitto_pub` over TLS to the gate as client `client_id`; its output (never panics on
/// failure: refusals are what some tests want).
pub(crate) fn publish(
    port: u16,
    tls: &DeviceTls,
    client_id: &str,
    topic: &str,
    payload: &str,
) -> Output {
    publish_qos(port, tls, client_id, topic, payload, 1)
}

/// A reading with `seq` from device `id` on its own telemetry topic, as client `id`.
pub(crate) fn publish_reading(port: u16, tls: &DeviceTls, id: &str, seq: u32) -> Output {
    let reading = format!(r#"{{"seq":{seq},"metrics":{{"v":1}}}}"#);
    publish(port, tls, id, &format!("devices/{id}/telemetry"), &reading)
}

/// The same at `qos`.
fn publish_qos(
    port: u16,
    tls: &DeviceTls,
    client_id: &str,
    topic: &str,
    payload: &str,
    qos: u8,
) -> Output {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "-q",
            &qos.to_string(),
        ])
        .args(["-i", client_id, "-t", topic, "-m", payload])
        .args(tls.args())
        .stdin(Stdio::null())
        .output()
        .expect("mosquitto_pub (Debian package mosquitto-clients) must be installed")
}

/// Asserts a command succeeded; its stderr otherwise.
pub(crate) fn assert_succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn assert_refused(out: &Output, what: &str) {
    assert!(
        !out.status.success(),
        "{what}: mosquitto_pub should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A `mosquitto_sub -d` whose output lines (stdout and stderr) are collected in the background;
/// killed when dropped.
pub(crate) struct Sub {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Sub {
    /// Subscribes as `client_id` to `filter`, over TLS to the gate.
    pub(crate) fn start(port: u16, tls: &DeviceTls, client_id: &str, filter: &str) -> Sub {
        // Line-buffered (stdbuf, coreutils): mosquitto_sub would otherwise keep its debug lines in
        // the pipe's buffer until it exits.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(["-d", "-h", "localhost", "-p", &port.to_string(), "-q", "1"])
            .args(["-i", client_id, "-t", filter])
            .args(tls.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub (Debian package mosquitto-clients) must be installed");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for out in [stdout, stderr] {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Sub { child, lines }
    }

    /// Waits until a line `matches`; that line. Fails with everything it printed.
    pub(crate) async fn wait_for(&self, what: &str, matches: fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let lines = self.lines.lock().unwrap().clone();
            if let Some(line) = lines.iter().find(|line| matches(line)) {
                return line.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto_sub printed no {what}:\n{}",
                lines.join("\n")
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
}

/// mosquitto_sub -d on a SUBACK 0x80 (or, when every filter was refused, its own words).
fn refused(line: &str) -> bool {
    line == "Subscribed (mid: 1): 128" || line.contains("denied")
}

/// mosquitto_sub -d on a SUBACK granting QoS 1.
pub(crate) fn granted(line: &str) -> bool {
    line == "Subscribed (mid: 1): 1"
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_publishes_and_subscribes_to_its_own_topics_only() {
    let root = tempfile::tempdir().unwrap();
    let (hub, gate) = start_hub(root.path(), "");
    let a = issue_device(&hub, "dev-a");

    let publish_as_a = |topic: &str, payload: &str| {
        assert_succeeded(&publish(gate, &a, "dev-a", topic, payload), "mosquitto_pub");
    };

    // Its own telemetry is stored.
    publish_as_a("devices/dev-a/telemetry", r#"{"seq":0,"metrics":{"v":1}}"#);
    wait_for_readings(&hub, "dev-a", 1).await;

    // Another device's topic: acknowledged (mosquitto_pub succeeds, as with mosquitto's ACL),
    // dropped and counted.
    publish_as_a(
        "devices/dev-b/telemetry",
        r#"{"seq":0,"metrics":{"v":666}}"#,
    );
    // At QoS 2 too: PUBREC, PUBREL, PUBCOMP complete, and nothing is stored.
    let out = publish_qos(
        gate,
        &a,
        "dev-a",
        "devices/dev-b/telemetry",
        r#"{"seq":1,"metrics":{"v":667}}"#,
        2,
    );
    assert_succeeded(&out, "mosquitto_pub -q 2");
    publish_as_a("devices/dev-a/telemetry", r#"{"seq":1,"metrics":{"v":2}}"#);
    wait_for_readings(&hub, "dev-a", 2).await;
    let (status, _) = hub.get("/api/v1/devices/dev-b").await;
    assert_eq!(status, 404, "dev-b's reading was stored");
    eventually("the refused publish in the log", || async {
        let log = hub.log();
        (log.contains("forbidden_topic") && log.contains("devices/dev-b/telemetry")).then_some(())
    })
    .await;

    // Another client id than the certificate's device id: CONNACK "not authorised".
    let out = publish(
        gate,
        &a,
        "dev-b",
        "devices/dev-a/telemetry",
        r#"{"seq":2,"metrics":{"v":3}}"#,
    );
    assert_refused(&out, "a foreign client id");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not authorised"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the refused CONNECT in the log", || async {
        let log = hub.log();
        (log.contains("forbidden_connect") && log.contains("not the certificate's device id"))
            .then_some(())
    })
    .await;

    // The hub has no session of its own on its endpoint (it used to have one on rumqttd, which a
    // device named like its client id could take over): a device named `hub` is a device.
    let named_hub = issue_device(&hub, "hub");
    let out = publish(
        gate,
        &named_hub,
        "hub",
        "devices/hub/telemetry",
        r#"{"metrics":{"v":1}}"#,
    );
    assert_succeeded(&out, "a device named hub");
    wait_for_readings(&hub, "hub", 1).await;

    // An API client's certificate, signed by the same CA, is not a device's.
    let client = issue(&hub.data, "issue-client", "--name", "dev-c");
    let out = publish_reading(gate, &client, "dev-c", 0);
    assert_refused(&out, "an API client's certificate");
    let (status, _) = hub.get("/api/v1/devices/dev-c").await;
    assert_eq!(status, 404, "a reading of dev-c was stored");

    // Another device's downlink: SUBACK 0x80, which mosquitto_sub -d prints as granted QoS 128.
    let denied = Sub::start(gate, &a, "dev-a", "devices/dev-b/down");
    denied.wait_for("SUBACK 0x80", refused).await;
    drop(denied);
    // A wildcard, even inside its own topics, is refused too.
    let denied = Sub::start(gate, &a, "dev-a", "devices/dev-a/#");
    denied.wait_for("SUBACK 0x80", refused).await;
    drop(denied);

    // Its own command topic: granted at QoS 1, and a command sent through the API arrives.
    let commands = Sub::start(gate, &a, "dev-a", "devices/dev-a/commands");
    commands.wait_for("SUBACK QoS 1", granted).await;
    let (status, body) = hub
        .send(
            reqwest::Method::POST,
            "/api/v1/devices/dev-a/commands",
            Some(&json!({"name": "blink"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    commands
        .wait_for("the command", |line| line.contains("blink"))
        .await;
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_foreign_and_expired_certificates_fail_the_handshake_and_sighup_rereads_the_ca() {
    let root = tempfile::tempdir().unwrap();
    let devices_ca = TestCa::new("devices CA");
    let other_ca = TestCa::new("someone else's CA");
    let ca_path = root.path().join("devices-ca.crt");
    std::fs::write(&ca_path, &devices_ca.pem).unwrap();
    let (hub, gate) = start_hub(root.path(), &format!("ca = \"{}\"\n", ca_path.display()));
    // The server certificate is the hub's: mosquitto's clients check it against the hub's CA.
    let hub_ca = hub.data.join("tls/ca.crt");
    let dir = root.path();

    let good = split_pem(
        dir,
        "good",
        &devices_ca.client("dev-1", &["dev-1"], 30),
        &hub_ca,
    );
    assert_succeeded(&publish_reading(gate, &good, "dev-1", 0), "mosquitto_pub");
    wait_for_readings(&hub, "dev-1", 1).await;

    let none = DeviceTls {
        ca: hub_ca.clone(),
        cert: None,
    };
    let foreign = split_pem(
        dir,
        "foreign",
        &other_ca.client("dev-2", &["dev-2"], 30),
        &hub_ca,
    );
    let expired = split_pem(
        dir,
        "expired",
        &devices_ca.client("dev-3", &["dev-3"], -1),
        &hub_ca,
    );
    for (what, tls, id) in [
        ("no client certificate", &none, "dev-0"),
        ("a certificate of another CA", &foreign, "dev-2"),
        ("an expired certificate", &expired, "dev-3"),
    ] {
        assert_refused(&publish_reading(gate, tls, id, 0), what);
    }
    // Plain MQTT to the TLS port: nothing.
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &gate.to_string(), "-q", "1"])
        .args(["-i", "dev-4", "-t", "devices/dev-4/telemetry", "-m", "{}"])
        .output()
        .unwrap();
    assert_refused(&out, "plain MQTT");

    // Only the good certificate's reading is stored.
    for id in ["dev-0", "dev-2", "dev-3", "dev-4"] {
        let (status, _) = hub.get(&format!("/api/v1/devices/{id}")).await;
        assert_eq!(status, 404, "{id} was stored");
    }
    let (status, body) = hub.get("/api/v1/devices").await;
    assert_eq!(
        (status, body["devices"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{body}"
    );

    // SIGHUP reads the device CA again, for new connections: the other CA's device gets in now,
    // and the first CA's no longer does.
    std::fs::write(&ca_path, &other_ca.pem).unwrap();
    hub.hangup();
    eventually("the gate's reload", || async {
        let log = hub.log();
        log.contains("the MQTT device listener's certificates, keys and CRLs reloaded")
            .then_some(())
    })
    .await;
    let out = publish_reading(gate, &foreign, "dev-2", 0);
    assert_succeeded(&out, "mosquitto_pub after the reload");
    wait_for_readings(&hub, "dev-2", 1).await;
    let out = publish_reading(gate, &good, "dev-1", 1);
    assert_refused(&out, "a certificate of the CA no longer named");
    hub.stop();
}

/// `hub certs revoke` in the data directory `data`, with `args`.
pub(crate) fn revoke(data: &Path, args: &[&str]) -> Output {
    Command::new(binary("hub"))
        .arg("--data-dir")
        .arg(data)
        .args(["certs", "revoke"])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_certificate_revoked_with_hub_certs_revoke_is_refused_after_sighup() {
    let root = tempfile::tempdir().unwrap();
    let (hub, gate) = start_hub(root.path(), "");
    let lost = issue_device(&hub, "dev-lost");
    let kept = issue_device(&hub, "dev-kept");
    // An API client's certificate too: the API reads the same list.
    let app = issue(&hub.data, "issue-client", "--name", "app-lost");
    let app_pem = {
        let (cert, key) = app.cert.as_ref().unwrap();
        std::fs::read_to_string(cert).unwrap() + &std::fs::read_to_string(key).unwrap()
    };
    let api_get = |pem: String| {
        let client = crate::security::client(&hub, Some(&pem));
        let url = hub.url("/api/v1/devices");
        let token = hub.token();
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(api_get(app_pem.clone()).await.ok(), Some(200));
    assert_succeeded(&publish_reading(gate, &lost, "dev-lost", 0), "before");
    assert_succeeded(&publish_reading(gate, &kept, "dev-kept", 0), "before");
    wait_for_readings(&hub, "dev-lost", 1).await;

    let out = revoke(&hub.data, &["--id", "dev-lost"]);
    assert_succeeded(&out, "hub certs revoke");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("revoked") && said.contains("SIGHUP"),
        "{said}"
    );
    assert!(hub.data.join("tls/ca.crl").exists());
    // Its files moved aside, so the id can be issued again; revoking it again changes nothing.
    let moved = hub.data.join("tls/devices/dev-lost.crt.revoked");
    assert!(moved.exists());
    let again = revoke(
        &hub.data,
        &["--id", "dev-lost", "--cert", &moved.display().to_string()],
    );
    assert_succeeded(&again, "revoking again");
    assert!(String::from_utf8_lossy(&again.stdout).contains("was revoked already"));
    // Bad input: a device that has no certificate, a certificate of another CA.
    let none = revoke(&hub.data, &["--id", "dev-never"]);
    assert!(!none.status.success());
    let foreign_ca = TestCa::new("someone else's CA");
    let foreign = root.path().join("foreign.pem");
    std::fs::write(&foreign, foreign_ca.client("dev-kept", &["dev-kept"], 30)).unwrap();
    let refused = revoke(
        &hub.data,
        &["--id", "dev-kept", "--cert", &foreign.display().to_string()],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not issued by this hub's CA"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // SIGHUP: the revoked certificate fails the handshake, the others still get in.
    hub.hangup();
    eventually("the gate's reload", || async {
        hub.log()
            .contains("the MQTT device listener's certificates, keys and CRLs reloaded")
            .then_some(())
    })
    .await;
    let revoked = DeviceTls {
        ca: lost.ca.clone(),
        cert: Some((
            moved.clone(),
            hub.data.join("tls/devices/dev-lost.key.revoked"),
        )),
    };
    assert_refused(
        &publish_reading(gate, &revoked, "dev-lost", 1),
        "a revoked certificate",
    );
    assert_succeeded(
        &publish_reading(gate, &kept, "dev-kept", 1),
        "another device",
    );
    assert_succeeded(
        &revoke(&hub.data, &["--name", "app-lost"]),
        "hub certs revoke --name",
    );
    hub.hangup();
    eventually("the API's reload", || async {
        (hub.log()
            .matches("SIGHUP: certificates, keys and CRLs reloaded")
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    assert!(
        api_get(app_pem).await.is_err(),
        "the API took a revoked client certificate"
    );
    // A new certificate for the same id works.
    let renewed = issue_device(&hub, "dev-lost");
    assert_succeeded(
        &publish_reading(gate, &renewed, "dev-lost", 2),
        "a new certificate",
    );
    wait_for_readings(&hub, "dev-lost", 2).await;
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_says_nothing_is_closed_after_the_connect_timeout() {
    use tokio::io::AsyncReadExt;
    let root = tempfile::tempdir().unwrap();
    let (hub, gate) = start_hub(root.path(), "connect_timeout = \"1s\"\n");
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", gate))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(DEADLINE, silent.read(&mut buf))
        .await
        .expect("the gate kept a silent connection open");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the gate sent something: {read:?}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    hub.stop();
}

#[test]
fn a_non_loopback_broker_listener_needs_an_explicit_yes() {
    let dir = tempfile::tempdir().unwrap();
    // Starting is refused, with the reason and the way out.
    let out = Command::new(binary("hub"))
        .current_dir(dir.path())
        .args(["--api-listen", "127.0.0.1:0", "--mqtt-listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mqtt.listen")
            && err.contains("[mqtt.devices]")
            && err.contains("allow_insecure_listen"),
        "{err}"
    );
    assert!(!dir.path().join("hub-data").exists(), "nothing was started");

    // check-config says the same; with the explicit yes it passes.
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, "[mqtt]\nlisten = \"0.0.0.0:1883\"\n").unwrap();
    let check = |config: &Path| {
        Command::new(binary("hub"))
            .args(["check-config", "--config"])
            .arg(config)
            .output()
            .unwrap()
    };
    let out = check(&config);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_insecure_listen"));
    std::fs::write(
        &config,
        "[mqtt]\nlisten = \"0.0.0.0:1883\"\nallow_insecure_listen = true\n",
    )
    .unwrap();
    let out = check(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The example mosquitto files in `deploy/mosquitto` give an external broker the gate's rules.
#[tokio::test(flavor = "multi_thread")]
async fn the_example_mosquitto_acl_gives_an_external_broker_the_same_rules() {
    let root = tempfile::tempdir().unwrap();
    // A first run makes the hub's CA and server certificate (for localhost); mosquitto serves them.
    Hub::start(root.path(), &[]).stop();
    let data = root.path().join("hub-data");
    let a = issue(&data, "issue-device", "--id", "dev-a");
    let hub_client = issue(&data, "issue-client", "--name", "hub");

    // deploy/mosquitto/hub.conf with this test's port and files; root may read the 0600 keys.
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto");
    let port = free_port();
    let tls = data.join("tls");
    let conf = std::fs::read_to_string(deploy.join("hub.conf"))
        .unwrap()
        .replace("listener 8883", &format!("listener {port} 127.0.0.1"))
        .replace(
            "/etc/mosquitto/conf.d/hub-acl.conf",
            &deploy.join("hub-acl.conf").display().to_string(),
        )
        .replace(
            "/etc/mosquitto/certs/hub-ca.crt",
            &tls.join("ca.crt").display().to_string(),
        )
        .replace(
            "/etc/mosquitto/certs/server",
            &tls.join("server").display().to_string(),
        );
    let conf_path = root.path().join("mosquitto.conf");
    std::fs::write(&conf_path, format!("user root\npersistence false\n{conf}")).unwrap();
    let _mosquitto = Mosquitto::start_with(&conf_path, port);

    let (hub_cert, hub_key) = hub_client.cert.as_ref().unwrap();
    let config = root.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nbroker = \"mqtts://localhost:{port}\"\nca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            tls.join("ca.crt").display(),
            hub_cert.display(),
            hub_key.display()
        ),
    )
    .unwrap();
    let hub = Hub::start_in(
        root.path(),
        &[
            "--api-listen",
            "127.0.0.1:0",
            "--config",
            &config.display().to_string(),
        ],
        &[],
    );
    eventually("the hub subscribed through mosquitto", || async {
        (hub.get("/readyz").await.0 == 200).then_some(())
    })
    .await;

    let publish_as_a = |topic: &str, payload: &str| {
        assert_succeeded(&publish(port, &a, "dev-a", topic, payload), "mosquitto_pub");
    };
    publish_as_a("devices/dev-a/telemetry", r#"{"seq":0,"metrics":{"v":1}}"#);
    publish_as_a(
        "devices/dev-b/telemetry",
        r#"{"seq":0,"metrics":{"v":666}}"#,
    );
    publish_as_a("devices/dev-a/telemetry", r#"{"seq":1,"metrics":{"v":2}}"#);
    wait_for_readings(&hub, "dev-a", 2).await;
    assert_eq!(hub.get("/api/v1/devices/dev-b").await.0, 404);

    // mosquitto grants a subscription to another device's downlink but delivers nothing of it:
    // a message the hub sends to dev-b reaches dev-b and not dev-a.
    let b = issue(&data, "issue-device", "--id", "dev-b");
    let a_on_b = Sub::start(port, &a, "dev-a", "devices/dev-b/down");
    let b_on_b = Sub::start(port, &b, "dev-b", "devices/dev-b/down");
    a_on_b
        .wait_for("SUBACK", |line| line.starts_with("Subscribed"))
        .await;
    b_on_b.wait_for("SUBACK QoS 1", granted).await;
    assert_succeeded(
        &publish(
            port,
            &hub_client,
            "hub-test",
            "devices/dev-b/down",
            "for-dev-b",
        ),
        "mosquitto_pub as the hub",
    );
    b_on_b
        .wait_for("dev-b's message", |line| line == "for-dev-b")
        .await;
    let seen_by_a = a_on_b.lines.lock().unwrap().clone();
    assert!(
        !seen_by_a.iter().any(|line| line.contains("for-dev-b")),
        "{seen_by_a:?}"
    );
    hub.stop();
}
