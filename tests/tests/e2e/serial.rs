//! Serial devices end to end: the real hub reads device-protocol frames from a pseudo-terminal that
//! firmware-sim (or the test) writes to, through line noise and a cable pulled and plugged in
//! again.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use device_protocol::{
    Ack, Downlink, FeedResult, Field, Fields, FrameDecoder, Hello, PROTOCOL_VERSION, Telemetry,
    Uplink, Value, encode_line_frame,
};

use crate::harness::{Hub, SerialCable, binary, check_every_reading_once, eventually, metric};

#[tokio::test(flavor = "multi_thread")]
async fn serial_readings_survive_noise_and_an_unplugged_cable() {
    let root = tempfile::tempdir().unwrap();
    let mut cable = SerialCable::plug(root.path(), "tty0");
    let config = root.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[[serial]]\npath = \"{}\"\nsilence_timeout = \"5s\"\n",
            cable.hub.display()
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let hub = Hub::start(root.path(), &["--config", &config_arg]);

    let count = 400;
    let sim = Command::new(binary("firmware-sim"))
        .args([
            "--transport",
            "serial",
            "--prefix",
            "ser-",
            "--count",
            &count.to_string(),
        ])
        .args([
            "--rate",
            "100",
            "--noise",
            "0.1",
            "--ack-timeout",
            "1",
            "--drain-timeout",
            "60",
        ])
        .arg("--serial")
        .arg(&cable.device)
        .arg("--outbox")
        .arg(root.path().join("outbox"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sim = crate::harness::Sim::from_child(sim);

    eventually("readings over the serial line", || async {
        let (_, d) = hub.get("/api/v1/devices/ser-0").await;
        (d["counters"]["readings"].as_u64()? > 50).then_some(())
    })
    .await;
    // Pull the cable mid-stream and plug it in again: both sides reopen their ports.
    cable.unplug();
    std::thread::sleep(std::time::Duration::from_millis(500));
    cable.replug();

    let (ok, output) = sim.wait();
    assert!(
        ok,
        "not every reading was acknowledged:\n{output}\nhub log:\n{}",
        hub.log()
    );
    check_every_reading_once(&hub, "ser-", 1, count).await;
    let (_, device) = hub.get("/api/v1/devices/ser-0").await;
    assert_eq!(device["transport"], "serial");
    let log = hub.log();
    assert!(
        log.contains("reason=\"bad_frame\""),
        "noise is counted and logged:\n{log}"
    );
}

/// The bytes of `message` on a serial line, as device-protocol asks every sender to write them:
/// a 0x00, then the frame.
fn line_frame(message: &Uplink<'_>) -> Vec<u8> {
    let mut buf = [0u8; device_protocol::MAX_FRAME_LEN + 2];
    let len = encode_line_frame(message, &mut buf).expect("a frame");
    buf[..len].to_vec()
}

/// Garbage on the line, then a frame with its 0x00 before it: the frame is stored at its first
/// sending, the garbage is counted once per run of it, and the 0x00s are not counted at all. The
/// hub's answers come the same way, each after a 0x00.
#[tokio::test(flavor = "multi_thread")]
async fn a_frame_after_garbage_is_stored_at_its_first_sending() {
    let root = tempfile::tempdir().unwrap();
    let cable = SerialCable::plug(root.path(), "tty1");
    let config = root.path().join("hub.toml");
    std::fs::write(
        &config,
        format!("[[serial]]\npath = \"{}\"\n", cable.hub.display()),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let hub = Hub::start(root.path(), &["--config", &config_arg]);
    eventually("the line open", || async {
        hub.log().contains("serial line open").then_some(())
    })
    .await;

    let mut line = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cable.device)
        .expect("the device's end of the cable");
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut reader = line.try_clone().expect("a second handle");
    let sink = heard.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 256];
        // Ends when the cable is unplugged at the end of the test.
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });

    let hello = Uplink::Hello(Hello {
        device_id: "noisy-1",
        firmware: "fw",
        protocol_version: PROTOCOL_VERSION,
        boot: Some(5),
    });
    let mut readings = Fields::new();
    readings
        .push(Field {
            name: "v",
            value: Value::I64(1),
        })
        .unwrap();
    let telemetry = Uplink::Telemetry(Telemetry {
        seq: 0,
        timestamp_ms: None,
        readings,
        boot: None,
    });
    let garbage = [0x11, 0x22, 0x33, 0xfe, 0x05];
    let mut bytes = garbage.to_vec();
    bytes.extend(line_frame(&hello));
    bytes.extend_from_slice(&garbage);
    bytes.extend(line_frame(&telemetry));
    line.write_all(&bytes).expect("write to the line");
    line.flush().expect("flush");

    crate::harness::wait_for_readings(&hub, "noisy-1", 1).await;
    let (_, device) = hub.get("/api/v1/devices/noisy-1").await;
    assert_eq!(device["counters"]["duplicates"], 0, "sent once: {device}");
    assert_eq!(device["counters"]["boot"], 5, "the Hello's boot: {device}");
    let bad_frames = metric(
        &hub,
        "hub_ingest_messages_total",
        "transport=\"serial\",outcome=\"bad_frame\"",
    )
    .await;
    assert_eq!(bad_frames, 2.0, "each run of garbage once, no empty frame");

    // The answers: a 0x00 before each frame, then TimeSync and the ack of boot 5.
    let answers = eventually("the time sync and the ack on the line", || async {
        let heard = heard.lock().unwrap().clone();
        let mut decoder = FrameDecoder::new();
        let mut input = &heard[..];
        let mut answers = Vec::new();
        loop {
            match decoder.feed(input) {
                FeedResult::Consumed => break,
                FeedResult::Frame { payload, remaining } => {
                    answers.push(payload.to_vec());
                    input = remaining;
                }
                FeedResult::Dropped { remaining, .. } => input = remaining,
            }
        }
        (answers.len() >= 2 && heard.first() == Some(&0)).then_some(answers)
    })
    .await;
    assert!(matches!(
        Downlink::decode(&answers[0]),
        Ok(Downlink::TimeSync(_))
    ));
    assert_eq!(
        Downlink::decode(&answers[1]),
        Ok(Downlink::Ack(Ack {
            seq: 0,
            boot: Some(5)
        }))
    );
    drop(cable);
}
