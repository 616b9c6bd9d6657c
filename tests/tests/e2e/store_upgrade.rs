//! The upgrade in place to store schema 4: a store whose readings are rows (written with
//! `data.write_path = "direct"`, as every store of schema 3 and older holds them) is sealed into
//! compressed blocks in the background once the hub runs on the log path, after a backup; a
//! kill -9 at any moment of it loses no reading and doubles none, and the next start goes on.

use std::time::{Duration, Instant};

use crate::backup::hub_cli;
use crate::harness::{
    Hub, check_every_reading_once, mosquitto_pub_lines, restartable, wait_for_readings,
    write_config,
};

const DEVICES: u32 = 4;
const COUNT: u32 = 3000;

#[tokio::test(flavor = "multi_thread")]
async fn old_rows_are_sealed_after_a_backup_and_a_kill_9_midway_loses_and_doubles_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mqtt = format!("127.0.0.1:{}", crate::harness::free_port());
    let base = restartable("--mqtt-listen", &mqtt);

    // Rows, as an older hub (or the direct path) left them.
    let direct = write_config(root.path(), "[data]\nwrite_path = \"direct\"\n");
    let hub = Hub::start_in(root.path(), &base, &["--config", &direct]);
    for d in 0..DEVICES {
        let lines: Vec<String> = (0..COUNT)
            .map(|seq| {
                format!(
                    r#"{{"seq":{seq},"metrics":{{"t":{}.5,"n":{seq}}}}}"#,
                    seq % 40
                )
            })
            .collect();
        mosquitto_pub_lines(
            hub.mqtt_port(),
            &format!("devices/up-{d}/telemetry"),
            &lines,
            1,
        );
    }
    for d in 0..DEVICES {
        wait_for_readings(&hub, &format!("up-{d}"), u64::from(COUNT)).await;
    }
    hub.stop();

    // The log path, sealing 20 readings a commit: some 600 commits, killed along the way.
    let log = write_config(root.path(), "[data]\nseal_batch = 20\n");
    let mut hub = Hub::start_in(root.path(), &base, &["--config", &log]);
    let mut kills = 0;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !hub.log().contains("every old row is sealed") {
        assert!(
            Instant::now() < deadline,
            "sealing did not end:\n{}",
            hub.log()
        );
        if kills < 5 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(30 + seed % 300));
            if hub.log().contains("every old row is sealed") {
                break;
            }
            hub.kill9();
            kills += 1;
            hub = Hub::start_in(root.path(), &base, &["--config", &log]);
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!("store upgrade: {kills} kills before the sealing ended");
    assert!(
        kills > 0,
        "the sealing ended before any kill:\n{}",
        hub.log()
    );
    check_every_reading_once(&hub, "up-", DEVICES, COUNT).await;
    // Values come back exact from the blocks.
    let (status, body) = hub
        .get("/api/v1/devices/up-1/readings?order=oldest&limit=3")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["readings"][2]["metrics"]["t"], 2.5, "{body}");
    assert_eq!(body["readings"][2]["metrics"]["n"], 2, "{body}");
    hub.stop();

    // Nothing left to seal: the next start says nothing of it.
    let hub = Hub::start_in(root.path(), &base, &["--config", &log]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!hub.log().contains("store upgrade"), "{}", hub.log());
    hub.stop();

    // A backup was taken before the first commit of the sealing (again only if a kill cut the
    // one before it short), and it is the way back: it restores into a data directory where a
    // hub on the direct path serves every reading.
    let mut backups: Vec<_> = std::fs::read_dir(root.path().join("hub-data/backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    backups.sort();
    assert!(
        (1..=3).contains(&backups.len()),
        "{backups:?}: one backup, a second only after a kill during the first"
    );
    let backup = backups.pop().unwrap();
    let back = tempfile::tempdir().unwrap();
    let (ok, _, err) = hub_cli(back.path(), &["restore", &backup.display().to_string()]);
    assert!(ok, "{err}");
    let direct = write_config(back.path(), "[data]\nwrite_path = \"direct\"\n");
    let hub = Hub::start(back.path(), &["--config", &direct]);
    check_every_reading_once(&hub, "up-", DEVICES, COUNT).await;
    hub.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_room_for_the_backup_old_rows_stay_rows_and_nothing_is_lost() {
    let root = tempfile::tempdir().unwrap();
    // The data on a 16 MB file system: far from room for a backup and its 256 MB margin.
    let _tmpfs = match crate::disk_full::Tmpfs::mount(&root.path().join("hub-data")) {
        Ok(tmpfs) => tmpfs,
        Err(why) if !crate::disk_full::must_mount() => {
            eprintln!(
                "SKIPPED without_room_for_the_backup_...: mounting a tmpfs needs root ({why})"
            );
            return;
        }
        Err(why) => panic!("mounting a tmpfs failed (root, or CI): {why}"),
    };
    let mqtt = format!("127.0.0.1:{}", crate::harness::free_port());
    let base = restartable("--mqtt-listen", &mqtt);
    let direct = write_config(root.path(), "[data]\nwrite_path = \"direct\"\n");
    let hub = Hub::start_in(root.path(), &base, &["--config", &direct]);
    let lines: Vec<String> = (0..300)
        .map(|seq| format!(r#"{{"seq":{seq},"metrics":{{"t":{seq}}}}}"#))
        .collect();
    mosquitto_pub_lines(hub.mqtt_port(), "devices/nr-0/telemetry", &lines, 1);
    wait_for_readings(&hub, "nr-0", 300).await;
    hub.stop();

    let log = write_config(root.path(), "[data]\ncheckpoint_bytes = \"1MiB\"\n");
    let hub = Hub::start_in(root.path(), &base, &["--config", &log]);
    crate::harness::eventually("the hub's word on the backup", || async {
        hub.log()
            .contains("cannot back the store up before sealing its old rows")
            .then_some(())
    })
    .await;
    let backups = root.path().join("hub-data/backups");
    let left = std::fs::read_dir(&backups).map_or(0, |d| d.count());
    assert_eq!(left, 0, "no backup, whole or partial, is left");
    check_every_reading_once(&hub, "nr-", 1, 300).await;
    // Ingest goes on, on the log path, beside the rows.
    let more: Vec<String> = (300..310)
        .map(|seq| format!(r#"{{"seq":{seq},"metrics":{{"t":{seq}}}}}"#))
        .collect();
    mosquitto_pub_lines(hub.mqtt_port(), "devices/nr-0/telemetry", &more, 1);
    wait_for_readings(&hub, "nr-0", 310).await;
    check_every_reading_once(&hub, "nr-", 1, 310).await;
    hub.stop();
}
