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
