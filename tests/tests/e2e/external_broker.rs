//! The hub behind a real mosquitto: readings arrive through it, and QoS 1 messages published while
//! the hub is down are kept by the broker's persistent session and stored when the hub returns.

use crate::harness::{Hub, Mosquitto, eventually, mosquitto_pub};

#[tokio::test(flavor = "multi_thread")]
async fn readings_through_mosquitto_including_those_sent_while_the_hub_was_down() {
    let root = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(root.path());
    let broker = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let args = ["--mqtt-broker", broker.as_str()];
    let hub = Hub::start(root.path(), &args);
    assert!(
        hub.mqtt.is_none(),
        "no embedded broker when an external one is configured"
    );
    // Readiness follows the subscription.
    eventually("ready", || async {
        let (status, _) = hub.get("/readyz").await;
        (status == 200).then_some(())
    })
    .await;

    mosquitto_pub(
        mosquitto.port,
        "devices/ext-1/telemetry",
        br#"{"seq":1,"metrics":{"t":1}}"#,
        1,
    );
    eventually("the first reading", || async {
        let (status, body) = hub.get("/api/v1/devices/ext-1/readings").await;
        (status == 200 && body["readings"].as_array()?.len() == 1).then_some(())
    })
    .await;

    assert!(hub.stop().success());
    for seq in 2..=6 {
        let payload = format!(r#"{{"seq":{seq},"metrics":{{"t":{seq}}}}}"#);
        mosquitto_pub(
            mosquitto.port,
            "devices/ext-1/telemetry",
            payload.as_bytes(),
            1,
        );
    }
    let hub = Hub::start(root.path(), &args);
    let body = eventually("the readings sent while the hub was down", || async {
        let (_, body) = hub.get("/api/v1/devices/ext-1/readings?order=oldest").await;
        (body["readings"].as_array()?.len() >= 6).then_some(body)
    })
    .await;
    let seqs: Vec<u64> = body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hub_reconnects_when_mosquitto_restarts() {
    let root = tempfile::tempdir().unwrap();
    let mut mosquitto = Mosquitto::start(root.path());
    let broker = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let hub = Hub::start(root.path(), &["--mqtt-broker", broker.as_str()]);
    eventually("ready", || async {
        (hub.get("/readyz").await.0 == 200).then_some(())
    })
    .await;

    mosquitto.stop();
    eventually("not ready while the broker is gone", || async {
        let (status, body) = hub.get("/readyz").await;
        (status == 503 && body["detail"].as_str()?.contains("MQTT")).then_some(())
    })
    .await;
    mosquitto.restart();
    eventually("ready again", || async {
        (hub.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    mosquitto_pub(mosquitto.port, "devices/ext-2/telemetry", br#"{"t":2}"#, 1);
    eventually("a reading after the reconnect", || async {
        let (status, _) = hub.get("/api/v1/devices/ext-2").await;
        (status == 200).then_some(())
    })
    .await;
}

/// Certificates made at test time: a CA, a server certificate for localhost, and client ones.
struct Pki {
    dir: std::path::PathBuf,
}

impl Pki {
    fn new(dir: &std::path::Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "test broker CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        write("ca.crt", ca.self_signed(&ca_key).unwrap().pem());
        let issuer = Issuer::new(ca, ca_key);
        for (name, sans) in [
            (
                "server",
                vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            ),
            ("hub", vec![]),
            ("device", vec![]),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            write(
                &format!("{name}.crt"),
                params.signed_by(&key, &issuer).unwrap().pem(),
            );
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Pki {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtts_with_client_certificates_and_a_password() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path());
    let port = crate::harness::free_port();
    let passwords = root.path().join("passwords");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["hub", "s3cret"])
        .status()
        .unwrap();
    assert!(status.success());
    let conf = root.path().join("mosquitto-tls.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
             allow_anonymous false\npassword_file {}\npersistence false\n",
            pki.path("ca.crt"),
            pki.path("server.crt"),
            pki.path("server.key"),
            passwords.display()
        ),
    )
    .unwrap();
    let _mosquitto = crate::harness::Mosquitto::start_with(&conf, port);

    let hub_conf = root.path().join("hub.toml");
    std::fs::write(
        &hub_conf,
        format!(
            "[mqtt]\nbroker = \"mqtts://localhost:{port}\"\nca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\nusername = \"hub\"\npassword = \"s3cret\"\n",
            pki.path("ca.crt"),
            pki.path("hub.crt"),
            pki.path("hub.key")
        ),
    )
    .unwrap();
    let config_path = hub_conf.display().to_string();
    let hub = Hub::start_in(
        root.path(),
        &["--api-listen", "127.0.0.1:0", "--config", &config_path],
        &[],
    );
    eventually("subscribed over TLS", || async {
        (hub.get("/readyz").await.0 == 200).then_some(())
    })
    .await;

    let out = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-u",
            "hub",
            "-P",
            "s3cret",
        ])
        .args([
            "--cafile",
            &pki.path("ca.crt"),
            "--cert",
            &pki.path("device.crt"),
            "--key",
            &pki.path("device.key"),
        ])
        .args([
            "-t",
            "devices/tls-1/telemetry",
            "-m",
            r#"{"seq":0,"metrics":{"t":1}}"#,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the reading over TLS", || async {
        let (status, _) = hub.get("/api/v1/devices/tls-1").await;
        (status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_stopped_and_restarted_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let root = tempfile::tempdir().unwrap();
    let mut mosquitto = Mosquitto::start(root.path());
    let broker = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let hub = Hub::start(root.path(), &["--mqtt-broker", broker.as_str()]);
    let (devices, count) = (4, 200);
    let sim = crate::harness::Sim::start(
        &format!("127.0.0.1:{}", mosquitto.port),
        "json",
        "mid-",
        devices,
        count,
        &root.path().join("outbox"),
    );
    eventually("readings flowing", || async {
        let (_, d) = hub.get("/api/v1/devices/mid-0").await;
        (d["counters"]["readings"].as_u64()? > 20).then_some(())
    })
    .await;
    // The outage: the broker is gone for a second, and comes back without the sessions it had.
    mosquitto.stop();
    std::thread::sleep(std::time::Duration::from_secs(1));
    mosquitto.restart();
    let (ok, output) = sim.wait();
    assert!(ok, "not every reading was acknowledged:\n{output}");
    crate::harness::check_every_reading_once(&hub, "mid-", devices, count).await;
}

/// Under more load than the hub can take, it slows the devices down (back-pressure) but never
/// stalls: every reading is still stored once and acknowledged. Once, the task that polls the MQTT
/// connection could wait on the acker, which waited on that polling; throughput fell to a few
/// readings a second. This run would never finish then.
#[tokio::test(flavor = "multi_thread")]
async fn overload_behind_mosquitto_slows_devices_down_but_never_stalls() {
    let root = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(root.path());
    let broker = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let hub = Hub::start(root.path(), &["--mqtt-broker", broker.as_str()]);
    let (devices, count) = (20, 1000);
    let child = std::process::Command::new(crate::harness::binary("firmware-sim"))
        .args([
            "--broker",
            &format!("127.0.0.1:{}", mosquitto.port),
            "--prefix",
            "load-",
        ])
        .args([
            "--devices",
            &devices.to_string(),
            "--count",
            &count.to_string(),
            "--rate",
            "1000",
        ])
        .args(["--drain-timeout", "300"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, output) = crate::harness::Sim::from_child(child).wait();
    assert!(ok, "not every reading was acknowledged:\n{output}");
    crate::harness::check_every_reading_once(&hub, "load-", devices, count).await;
}
