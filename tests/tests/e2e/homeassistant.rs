//! Home Assistant MQTT discovery from the real hub, read from a real mosquitto by a paho-mqtt
//! client standing in for Home Assistant (`tests/py/ha_discovery_check.py`, which also checks
//! every config against Home Assistant's documented discovery schema: Home Assistant itself
//! does not run here). Devices publish to the hub's embedded endpoint; the hub announces them on
//! mosquitto.

use std::process::Output;

use crate::harness::{
    Hub, Mosquitto, Subscriber, eventually, mosquitto_pub, python_peer, wait_for_readings,
};
use crate::metrics::scrape;

/// Runs the stand-in with `args`; its JSON line and whether it exited 0.
async fn stand_in(args: Vec<String>) -> (bool, serde_json::Value, String) {
    let output: Output = tokio::task::spawn_blocking(move || {
        python_peer("ha_discovery_check.py")
            .args(&args)
            .output()
            .expect("run ha_discovery_check.py")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let report = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    let said = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    (output.status.success(), report, said)
}

/// `check` of `device` on the broker at `port`: every expected `metric=state` announced and
/// valid; with `availability`, the device's availability too.
async fn check(port: u16, device: &str, states: &[&str], availability: Option<&str>) {
    let mut args = vec![
        "check".to_owned(),
        "127.0.0.1".into(),
        port.to_string(),
        device.into(),
    ];
    args.extend(states.iter().map(|s| s.to_string()));
    if let Some(a) = availability {
        args.extend(["--availability".to_owned(), a.to_owned()]);
    }
    let (ok, report, said) = stand_in(args).await;
    assert!(
        ok,
        "Home Assistant's view of {device} is not right:\n{said}"
    );
    assert_eq!(report["ok"], true, "{said}");
}

fn telemetry(hub: &Hub, device: &str, payload: &str) {
    mosquitto_pub(
        hub.mqtt_port(),
        &format!("devices/{device}/telemetry"),
        payload.as_bytes(),
        1,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_show_up_in_home_assistant_follow_readings_presence_birth_and_a_broker_restart() {
    let root = tempfile::tempdir().unwrap();
    let mut mosquitto = Mosquitto::start(root.path());
    let config = root.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[devices]\noffline_after = \"2s\"\n\n[sync]\nhub_id = \"gw1\"\n\n\
             [homeassistant]\nenabled = true\nbroker = \"mqtt://127.0.0.1:{}\"\n",
            mosquitto.port
        ),
    )
    .unwrap();
    let hub = Hub::start(root.path(), &["--config", &config.display().to_string()]);

    telemetry(
        &hub,
        "boiler-1",
        r#"{"seq":1,"metrics":{"temp":21.5,"burner":true,"mode":"auto"}}"#,
    );
    wait_for_readings(&hub, "boiler-1", 1).await;
    check(
        mosquitto.port,
        "boiler-1",
        &["temp=21.5", "burner=ON", "mode=auto"],
        Some("online"),
    )
    .await;

    // States follow the readings.
    telemetry(
        &hub,
        "boiler-1",
        r#"{"seq":2,"metrics":{"temp":22.75,"burner":false,"mode":"eco"}}"#,
    );
    check(
        mosquitto.port,
        "boiler-1",
        &["temp=22.75", "burner=OFF", "mode=eco"],
        None,
    )
    .await;

    // The device goes silent: its availability goes offline.
    check(mosquitto.port, "boiler-1", &["temp=22.75"], Some("offline")).await;

    // Home Assistant starts again: its birth message makes the hub announce again.
    let args = [
        "birth",
        "127.0.0.1",
        &mosquitto.port.to_string(),
        "boiler-1",
    ]
    .iter()
    .chain(["temp", "burner", "mode"].iter())
    .map(|s| s.to_string())
    .collect();
    let (ok, _, said) = stand_in(args).await;
    assert!(ok, "no announcement after the birth message:\n{said}");

    // The broker goes away (and forgets every retained message: no persistence); a device that
    // is new meanwhile, and everything announced before, is there once it is back.
    mosquitto.stop();
    telemetry(&hub, "meter-7", r#"{"seq":1,"metrics":{"kwh":1042}}"#);
    wait_for_readings(&hub, "meter-7", 1).await;
    mosquitto.restart();
    // (Its availability depends on the time since: it goes offline 2 s after its reading.)
    check(mosquitto.port, "meter-7", &["kwh=1042"], None).await;
    check(
        mosquitto.port,
        "boiler-1",
        &["temp=22.75", "burner=OFF", "mode=eco"],
        Some("offline"),
    )
    .await;

    let token = hub.token();
    let text = eventually("the publisher's metrics", || async {
        let (_, text) = scrape(&hub, &token).await;
        text.contains("hub_homeassistant_entities 4")
            .then_some(text)
    })
    .await;
    assert!(text.contains("hub_homeassistant_connected 1"), "{text}");
    assert!(
        text.contains("hub_homeassistant_dropped_total{reason=\"queue\"} 0"),
        "{text}"
    );
    assert!(hub.stop().success());
    // A hub that stopped said so: every entity is unavailable in Home Assistant.
    let status = Subscriber::start(mosquitto.port, "hub/status");
    eventually("the hub's status offline", || async {
        (status.payloads().last().map(Vec::as_slice) == Some(b"offline".as_slice())).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configuration_without_a_usable_broker_is_refused_with_the_key_named() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("hub.toml");
    std::fs::write(&config, "[homeassistant]\nenabled = true\n").unwrap();
    let output = std::process::Command::new(crate::harness::binary("hub"))
        .args(["check-config", "--config", &config.display().to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("homeassistant.broker"), "{said}");
}
