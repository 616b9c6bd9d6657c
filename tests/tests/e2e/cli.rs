//! The command line: print-config, check-config, and configuration errors that list every problem.

use std::process::Command;

use crate::harness::binary;

#[test]
fn print_config_prints_a_config_that_check_config_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("hub"))
        .arg("print-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let example = String::from_utf8(out.stdout).unwrap();
    assert!(example.contains("[api]") && example.contains("listen"));
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, &example).unwrap();
    let out = Command::new(binary("hub"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `hub check-config` on a file holding `text`: its exit code and what it printed on stderr.
pub(crate) fn check_config(dir: &std::path::Path, text: &str) -> (Option<i32>, String) {
    let path = dir.join("hub.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(binary("hub"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = check_config(
        dir.path(),
        "[api]\nlisten = \"nowhere\"\nmax_page = 0\n[mqtt]\nbroker = \"amqp://x\"\n",
    );
    assert_eq!(code, Some(2));
    for needle in ["api.listen", "api.max_page", "mqtt.broker"] {
        assert!(err.contains(needle), "{needle} not in: {err}");
    }
    // A typo in a key is named, not ignored.
    let (code, err) = check_config(dir.path(), "[api]\nlisen = \"127.0.0.1:1\"\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("lisen"), "{err}");
    // Three mistakes of type and unit, three problems, each with its key and line.
    let (code, err) = check_config(
        dir.path(),
        "[api]\nrate_limit = \"x\"\n\n[ingest]\nmax_payload = \"12 parsecs\"\nstall_after = 5\n",
    );
    assert_eq!(code, Some(2));
    for needle in [
        "api.rate_limit (",
        "line 2)",
        "ingest.max_payload (",
        "line 5)",
        "ingest.stall_after (",
        "line 6)",
    ] {
        assert!(err.contains(needle), "{needle} not in: {err}");
    }
    // The environment is checked too.
    let out = Command::new(binary("hub"))
        .arg("check-config")
        .env("HUB_INGEST__BATCH_MAX", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ingest.batch_max"));
}

#[test]
fn a_taken_port_is_a_clear_error_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(binary("hub"))
        .current_dir(dir.path())
        .args(["--api-listen", &addr, "--mqtt-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr) && err.contains("API cannot listen"),
        "{err}"
    );
    // Said once, with its cause once, and the way out.
    assert_eq!(err.matches("API cannot listen").count(), 1, "{err}");
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert!(err.contains("--api-listen"), "{err}");
}

/// `hub watch` prints the live stream of the running hub: readings of the devices asked for, one
/// line each, and ends after `--count` of them.
#[tokio::test(flavor = "multi_thread")]
async fn hub_watch_prints_the_live_stream_and_stops_at_its_count() {
    let root = tempfile::tempdir().unwrap();
    let hub = crate::harness::Hub::start(root.path(), &[]);
    let api = hub.api.to_string();
    let watch = |extra: &[&str]| {
        Command::new(binary("hub"))
            .args(["--api-listen", &api, "--data-dir"])
            .arg(&hub.data)
            .arg("watch")
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let lines = watch(&["--device", "watch-a*", "--count", "2", "--no-events"]);
    let json = watch(&["--json", "--metric", "temp", "--count", "1"]);
    // Both are connected before anything is published (the stream has no history).
    crate::harness::eventually("both watchers connected", || async {
        let (_, text) = crate::metrics::scrape(&hub, &hub.token()).await;
        text.lines()
            .any(|l| l.trim() == "hub_stream_clients 2")
            .then_some(())
    })
    .await;
    // Subscribed too: the subscription is the first message each sends after the handshake.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let port = hub.mqtt_port();
    crate::harness::mosquitto_pub(port, "devices/other/telemetry", br#"{"hum":40}"#, 1);
    crate::harness::mosquitto_pub(
        port,
        "devices/watch-a1/telemetry",
        br#"{"temp":21.5,"mode":"auto"}"#,
        1,
    );
    crate::harness::mosquitto_pub(port, "devices/watch-a2/telemetry", br#"{"temp":22.5}"#, 1);
    let out = lines.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let shown: Vec<&str> = text.lines().collect();
    assert_eq!(shown.len(), 2, "{text}");
    assert!(
        shown[0].ends_with(r#" watch-a1 mode="auto" temp=21.5"#),
        "{text}"
    );
    assert!(shown[1].ends_with(" watch-a2 temp=22.5"), "{text}");
    let out = json.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reading = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|m| m["type"] == "reading")
        .expect("a reading in JSON");
    assert_eq!(reading["device"], "watch-a1");
    assert_eq!(reading["metrics"], serde_json::json!({"temp": 21.5}));
}
