//! Backups of the running hub: taken while devices publish, they open as a hub's data directory
//! and hold every reading committed before the backup began.

use crate::harness::{Hub, check_every_reading_once, mosquitto_pub, wait_for_readings};

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_while_running_restores_into_a_working_hub() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    for seq in 0..20 {
        mosquitto_pub(
            hub.mqtt_port(),
            "devices/bk-0/telemetry",
            format!(r#"{{"seq":{seq},"metrics":{{"v":{seq}}}}}"#).as_bytes(),
            1,
        );
    }
    wait_for_readings(&hub, "bk-0", 20).await;
    // More arrive while the backup is made; they may or may not be in it.
    let port = hub.mqtt_port();
    let publisher = std::thread::spawn(move || {
        for seq in 0..20 {
            mosquitto_pub(
                port,
                "devices/bk-1/telemetry",
                format!(r#"{{"seq":{seq},"metrics":{{"v":{seq}}}}}"#).as_bytes(),
                1,
            );
        }
    });
    let (status, made) = hub
        .send(reqwest::Method::POST, "/api/v1/backups", None)
        .await;
    assert_eq!(status, 201, "{made}");
    publisher.join().unwrap();
    let dir = hub.data.join(made["dir"].as_str().unwrap());
    assert!(dir.join("store.redb").exists());
    assert!(made["entries"].as_u64().unwrap() > 20);
    let token = hub.token();
    hub.stop();

    // The backup is a data directory: a hub started on a copy of it serves what it holds, with
    // the same admin token (the token key came along).
    let restored = tempfile::tempdir().unwrap();
    let data = restored.path().join("hub-data");
    std::fs::create_dir(&data).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let target = data.join(path.file_name().unwrap());
        if path.is_dir() {
            std::fs::create_dir(&target).unwrap();
            for file in std::fs::read_dir(&path).unwrap() {
                let file = file.unwrap().path();
                std::fs::copy(&file, target.join(file.file_name().unwrap())).unwrap();
            }
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
    let hub = Hub::start(restored.path(), &[]);
    assert_eq!(hub.token(), token);
    check_every_reading_once(&hub, "bk-", 1, 20).await;
    hub.stop();
}

/// Runs `hub ARGS` in `root` (where the hub's data is) and returns status, stdout and stderr.
pub(crate) fn hub_cli(root: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(crate::harness::binary("hub"))
        .current_dir(root)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn status_backup_and_restore_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let hub = Hub::start(root.path(), &[]);
    let api = format!("127.0.0.1:{}", hub.api.port());
    for seq in 0..10 {
        mosquitto_pub(
            hub.mqtt_port(),
            "devices/cli-0/telemetry",
            format!(r#"{{"seq":{seq},"metrics":{{"v":{seq}}}}}"#).as_bytes(),
            1,
        );
    }
    wait_for_readings(&hub, "cli-0", 10).await;
    let root_path = root.path().to_owned();
    let api_for_cli = api.clone();
    let (ok, screen, err) = tokio::task::spawn_blocking(move || {
        hub_cli(&root_path, &["status", "--api-listen", &api_for_cli])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(screen.contains("devices    1 known, 1 online"), "{screen}");
    assert!(screen.contains("store      10 readings"), "{screen}");

    // A backup through the running hub, moved where the operator says.
    let out = root.path().join("saved");
    let (root_path, api_for_cli, out_arg) = (
        root.path().to_owned(),
        api.clone(),
        out.display().to_string(),
    );
    let (ok, printed, err) = tokio::task::spawn_blocking(move || {
        hub_cli(
            &root_path,
            &["backup", "--api-listen", &api_for_cli, "--out", &out_arg],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(printed.trim(), out.display().to_string());
    // Restore refuses while the hub runs.
    let (root_path, api_for_cli, from) = (
        root.path().to_owned(),
        api.clone(),
        out.display().to_string(),
    );
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        hub_cli(
            &root_path,
            &["restore", &from, "--api-listen", &api_for_cli],
        )
    })
    .await
    .unwrap();
    assert!(!ok && err.contains("stop it first"), "{err}");
    hub.stop();

    // Into a fresh directory, with the hub stopped: a hub there serves the readings.
    let fresh = tempfile::tempdir().unwrap();
    let (ok, _, err) = hub_cli(fresh.path(), &["restore", &out.display().to_string()]);
    assert!(ok, "{err}");
    // A second restore over it needs --force.
    let (ok, _, err) = hub_cli(fresh.path(), &["restore", &out.display().to_string()]);
    assert!(!ok && err.contains("--force"), "{err}");
    let hub = Hub::start(fresh.path(), &[]);
    check_every_reading_once(&hub, "cli-", 1, 10).await;
    hub.stop();
}
