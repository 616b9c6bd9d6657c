//! The serial line's tests, over pseudo-terminal pairs: frames, acks in order, reopening.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use device_protocol::{
    CommandResult, CommandStatus, Downlink, Field, Fields, Hello, MAX_FRAME_LEN, Telemetry, Value,
    encode_frame,
};
use tokio::io::AsyncWriteExt;
use tokio_serial::SerialPortBuilderExt;

use super::*;
use crate::store::memory::MemoryEngine;
use crate::store::writer::{StoreWriter, WriterStats};
use crate::store::{Order, Reading, ReadingsQuery, Store};

/// Longest any single wait of a test may take (a shared 2-core CI machine).
const WAIT: Duration = Duration::from_secs(10);

/// Polls `done` every 10 ms until it holds; panics with `what` after `WAIT`.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A socat joining two pseudo-terminals, `hub-end` and `dev-end`: a serial cable. Killed on
/// drop, so a failing test leaves no socat behind.
struct Socat {
    child: Child,
}

impl Socat {
    async fn start(dir: &Path) -> Socat {
        let end = |name: &str| {
            format!(
                "pty,raw,echo=0,link={}",
                dir.join(name).to_str().expect("utf-8 temp path")
            )
        };
        let child = Command::new("socat")
            .args(["-d", "-d", &end("hub-end"), &end("dev-end")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is installed");
        let socat = Socat { child };
        // Both links exist and point at live pseudo-terminals (metadata follows the link).
        let (hub, dev) = (dir.join("hub-end"), dir.join("dev-end"));
        wait_for("socat's links", || {
            hub.metadata().is_ok() && dev.metadata().is_ok()
        })
        .await;
        socat
    }

    /// Ends socat like an unplug: SIGTERM, so it closes both ends and removes its links.
    fn unplug(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(status.expect("kill runs").success());
        let _ = self.child.wait();
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hub-side `SerialIngest` over a real store on `hub-end`, and the socat under it.
struct Hub {
    dir: tempfile::TempDir,
    socat: Option<Socat>,
    store: Store,
    presence: Arc<crate::live::Presence>,
    stats: Arc<IngestStats>,
    line: Arc<LineStats>,
    shutdown: CancellationToken,
    ingest: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Hub {
    async fn start(device_id: Option<&str>, silence_timeout: Duration) -> Hub {
        let dir = tempfile::tempdir().expect("tempdir");
        let socat = Socat::start(dir.path()).await;
        let store = Store::open(Arc::new(MemoryEngine::new())).expect("store");
        let (submissions_tx, submissions_rx) = crate::store::writer::queue(64, 1 << 20);
        let writer = StoreWriter::new(
            store.clone(),
            64,
            Duration::from_millis(2),
            Arc::new(WriterStats::default()),
        );
        let presence = Arc::new(crate::live::Presence::new(Duration::from_secs(3600)));
        let writer = writer.publishing(crate::live::Live::new(), presence.clone());
        let writer = tokio::spawn(writer.run(submissions_rx));
        let stats = Arc::new(IngestStats::default());
        let settings = SerialSettings {
            path: dir.path().join("hub-end"),
            baud: 115_200,
            device_id: device_id.map(str::to_owned),
            silence_timeout,
        };
        let ingest = SerialIngest::new(settings, submissions_tx, stats.clone());
        let line = ingest.line_stats();
        let shutdown = CancellationToken::new();
        let ingest = tokio::spawn(ingest.run(shutdown.clone()));
        // The port flushes its input when opened: the device talks once the hub listens.
        wait_for("the hub to open its end", || {
            line.opens.load(Ordering::Relaxed) >= 1
        })
        .await;
        Hub {
            dir,
            socat: Some(socat),
            store,
            presence,
            stats,
            line,
            shutdown,
            ingest,
            writer,
        }
    }

    fn dev_end(&self) -> PathBuf {
        self.dir.path().join("dev-end")
    }

    fn opens(&self) -> u64 {
        self.line.opens.load(Ordering::Relaxed)
    }

    /// The stored readings of `device`, oldest first.
    fn readings(&self, device: &str) -> Vec<Reading> {
        let query = ReadingsQuery {
            device: device.into(),
            metric: None,
            from_ms: None,
            to_ms: None,
            order: Order::Oldest,
            limit: 10_000,
            after: None,
        };
        self.store
            .readings(&query)
            .expect("query")
            .map(|page| page.readings)
            .unwrap_or_default()
    }

    fn seqs(&self, device: &str) -> Vec<u32> {
        self.readings(device)
            .iter()
            .filter_map(|r| r.seq.device_seq())
            .collect()
    }

    /// Stops the component (it must return promptly) and the store writer after it.
    async fn stop(self) {
        self.shutdown.cancel();
        // Nothing is pending here, so well within the grace given to pending commits.
        tokio::time::timeout(SHUTDOWN_GRACE * 3, self.ingest)
            .await
            .expect("run returns promptly after shutdown")
            .expect("run does not panic");
        // The component dropped its sender, so the writer drains and stops.
        tokio::time::timeout(WAIT, self.writer)
            .await
            .expect("the store writer drains")
            .expect("writer does not panic");
        drop(self.socat);
    }
}

/// What the hub wrote back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Down {
    Ack(u32),
    TimeSync(u64),
}

/// The device end of the cable.
struct Device {
    port: SerialStream,
    decoder: FrameDecoder,
    received: VecDeque<Down>,
}

impl Device {
    fn open(path: &Path) -> Device {
        let port = tokio_serial::new(path.to_str().expect("utf-8 path"), 115_200)
            .open_native_async()
            .expect("open dev-end");
        Device {
            port,
            decoder: FrameDecoder::new(),
            received: VecDeque::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.port.write_all(bytes).await.expect("device write");
    }

    /// A 0x00 resync marker, then the frame, as a careful device sends.
    async fn send(&mut self, message: &Uplink<'_>) {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&frame_of(message));
        self.write(&bytes).await;
    }

    async fn send_seqs(&mut self, seqs: std::ops::Range<u32>) {
        for seq in seqs {
            self.send(&telemetry(seq)).await;
        }
    }

    /// The next reply, or `None` at `deadline`.
    async fn recv(&mut self, deadline: Instant) -> Option<Down> {
        let mut buf = [0u8; 256];
        loop {
            if let Some(down) = self.received.pop_front() {
                return Some(down);
            }
            let n = match tokio::time::timeout_at(deadline, self.port.read(&mut buf)).await {
                Err(_) => return None,
                Ok(read) => read.expect("device read"),
            };
            let mut input = &buf[..n];
            loop {
                match self.decoder.feed(input) {
                    FeedResult::Consumed => break,
                    FeedResult::Dropped { reason, .. } => {
                        panic!("the hub wrote a bad frame: {reason}")
                    }
                    FeedResult::Frame { payload, remaining } => {
                        input = remaining;
                        let down = match Downlink::decode(payload).expect("a downlink") {
                            Downlink::Ack(ack) => Down::Ack(ack.seq),
                            Downlink::TimeSync(t) => Down::TimeSync(t.unix_ms),
                            other => panic!("unexpected {other:?}"),
                        };
                        self.received.push_back(down);
                    }
                }
            }
        }
    }

    /// Reads replies until a `TimeSync`; returns its time.
    async fn expect_time_sync(&mut self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.recv(deadline).await {
                Some(Down::TimeSync(ms)) => return ms,
                Some(Down::Ack(_)) => {}
                None => panic!("no TimeSync"),
            }
        }
    }

    /// Reads replies until `Ack(target)`, checking acks only grow and never pass `target`;
    /// `None` at `deadline`.
    async fn ack_reaching(&mut self, target: u32, deadline: Instant) -> Option<u32> {
        let mut last = None;
        loop {
            match self.recv(deadline).await? {
                Down::Ack(seq) => {
                    assert!(seq <= target, "ack {seq} beyond the last seq sent {target}");
                    assert!(
                        last.is_none_or(|l| seq >= l),
                        "acks went back: {last:?} then {seq}"
                    );
                    last = Some(seq);
                    if seq == target {
                        return Some(seq);
                    }
                }
                Down::TimeSync(_) => {}
            }
        }
    }

    /// Like a device that keeps unacked readings: sends `seqs` and resends them until the
    /// hub acks the last one.
    async fn send_until_acked(&mut self, seqs: std::ops::Range<u32>) {
        let target = seqs.end - 1;
        let deadline = Instant::now() + WAIT;
        loop {
            self.send_seqs(seqs.clone()).await;
            let attempt = (Instant::now() + Duration::from_millis(700)).min(deadline);
            if self.ack_reaching(target, attempt).await.is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "seqs {seqs:?} never acked");
        }
    }
}

fn frame_of(message: &Uplink<'_>) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN + 1];
    let len = encode_frame(message, &mut buf).expect("encode");
    buf[..len].to_vec()
}

fn hello<'a>(id: &'a str, firmware: &'a str) -> Uplink<'a> {
    Uplink::Hello(Hello {
        device_id: id,
        firmware,
        protocol_version: 1,
        boot: None,
    })
}

fn telemetry(seq: u32) -> Uplink<'static> {
    let mut readings = Fields::new();
    readings
        .push(Field {
            name: "v",
            value: Value::I64(i64::from(seq)),
        })
        .expect("one field fits");
    Uplink::Telemetry(Telemetry {
        seq,
        timestamp_ms: None,
        readings,
        boot: None,
    })
}

/// xorshift64: reproducible noise without a dependency.
fn noise(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            (*state >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_then_readings_are_stored_once_and_acked() {
    let hub = Hub::start(None, Duration::from_secs(30)).await;
    let mut device = Device::open(&hub.dev_end());
    device.send(&hello("line-1", "fw-1.2")).await;
    let synced = device.expect_time_sync().await;
    assert!(
        synced.abs_diff(now_ms()) < 60_000,
        "TimeSync carries the hub's clock"
    );

    const N: u32 = 40;
    device.send_seqs(0..N).await;
    let deadline = Instant::now() + WAIT;
    assert_eq!(device.ack_reaching(N - 1, deadline).await, Some(N - 1));
    assert_eq!(hub.seqs("line-1"), (0..N).collect::<Vec<_>>());
    let stored = hub.readings("line-1");
    assert!(stored.iter().all(|r| r.metrics
        == vec![(
            "v".into(),
            device_protocol::OwnedValue::I64(i64::from(r.seq.device_seq().unwrap_or(u32::MAX)))
        )]));
    let record = hub
        .store
        .device("line-1")
        .expect("query")
        .expect("known")
        .record;
    assert_eq!(record.firmware.as_deref(), Some("fw-1.2"));
    assert_eq!(record.transport, Transport::Serial);

    // Retransmissions (the device missed acks): nothing new, and acked again.
    device.send_seqs(10..13).await;
    let deadline = Instant::now() + WAIT;
    assert_eq!(device.ack_reaching(N - 1, deadline).await, Some(N - 1));
    assert_eq!(hub.seqs("line-1"), (0..N).collect::<Vec<_>>());
    wait_for("the duplicates to be counted", || {
        hub.store
            .device("line-1")
            .ok()
            .flatten()
            .is_some_and(|d| d.record.duplicates == 3)
    })
    .await;
    assert_eq!(
        hub.stats.accepted.load(Ordering::Relaxed),
        u64::from(1 + N + 3)
    );
    assert_eq!(hub.opens(), 1, "a healthy line is opened once");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn noise_and_corrupt_frames_are_skipped_and_valid_frames_kept() {
    let hub = Hub::start(None, Duration::from_secs(30)).await;
    let mut device = Device::open(&hub.dev_end());
    device.send(&hello("noisy-1", "fw")).await;
    device.expect_time_sync().await;

    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    for seq in 0..20 {
        let len = 1 + (seq as usize * 37) % 300;
        let garbage = noise(&mut rng, len);
        device.write(&garbage).await;
        if seq % 4 == 1 {
            // A frame with one bit flipped: its CRC fails. Its seq is never sent intact.
            let mut bad = frame_of(&telemetry(1000 + seq));
            let at = bad.len() / 2;
            bad[at] ^= 0x10;
            device.write(&[0]).await;
            device.write(&bad).await;
        }
        if seq == 7 {
            // Longer than any frame: dropped as too long, without costing the next frame.
            let run: Vec<u8> = noise(&mut rng, 3000).into_iter().map(|b| b | 1).collect();
            device.write(&run).await;
        }
        device.send(&telemetry(seq)).await;
    }
    let deadline = Instant::now() + WAIT;
    assert_eq!(device.ack_reaching(19, deadline).await, Some(19));
    assert_eq!(hub.seqs("noisy-1"), (0..20).collect::<Vec<_>>());
    assert!(
        hub.stats.rejected(Rejection::BadFrame) >= 5,
        "corrupt frames counted"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_line_is_reopened_after_an_unplug_and_a_replug() {
    let mut hub = Hub::start(None, Duration::from_secs(30)).await;
    let mut device = Device::open(&hub.dev_end());
    device.send(&hello("plug-1", "fw")).await;
    device.expect_time_sync().await;
    device.send_until_acked(0..5).await;
    assert!(hub.presence.is_online("plug-1"));

    // Unplug: the cable goes away with both its ends and their links, and the device is
    // offline at once (not only after devices.offline_after, an hour here).
    hub.socat.take().expect("socat").unplug();
    drop(device);
    let hub_end = hub.dir.path().join("hub-end");
    wait_for("the links to go", || {
        std::fs::symlink_metadata(&hub_end).is_err()
    })
    .await;
    wait_for("the device to be offline", || {
        !hub.presence.is_online("plug-1")
    })
    .await;

    // Replug: same paths, new pseudo-terminals. No Hello: the line keeps its device.
    hub.socat = Some(Socat::start(hub.dir.path()).await);
    wait_for("the hub to reopen", || hub.opens() >= 2).await;
    let mut device = Device::open(&hub.dev_end());
    device.send_until_acked(5..12).await;
    assert_eq!(hub.seqs("plug-1"), (0..12).collect::<Vec<_>>());
    assert!(
        hub.presence.is_online("plug-1"),
        "back online with its readings"
    );
    assert_eq!(hub.stats.rejected(Rejection::UnknownDevice), 0);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_line_is_reopened_by_the_watchdog() {
    let hub = Hub::start(None, Duration::from_millis(300)).await;
    let mut device = Device::open(&hub.dev_end());
    device.send(&hello("quiet-1", "fw")).await;
    device.expect_time_sync().await;
    device.send_until_acked(0..3).await;

    // The device says nothing: the watchdog closes and reopens the port.
    wait_for("the watchdog to reopen the port", || {
        hub.line.silences.load(Ordering::Relaxed) >= 1 && hub.opens() >= 2
    })
    .await;
    device.send_until_acked(3..8).await;
    assert_eq!(hub.seqs("quiet-1"), (0..8).collect::<Vec<_>>());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_hello_telemetry_needs_a_configured_id() {
    // No Hello and no configured id: nobody to store it under.
    let hub = Hub::start(None, Duration::from_secs(30)).await;
    let mut device = Device::open(&hub.dev_end());
    device.send_seqs(0..3).await;
    let result = Uplink::CommandResult(CommandResult {
        command_id: 1,
        status: CommandStatus::Ok,
        payload: Fields::new(),
    });
    device.send(&result).await;
    // A command result from an unknown device is skipped the same way.
    wait_for("the rejections", || {
        hub.stats.rejected(Rejection::UnknownDevice) == 4
    })
    .await;
    assert_eq!(hub.store.device_count().expect("count"), 0);
    assert_eq!(hub.stats.accepted.load(Ordering::Relaxed), 0);
    hub.stop().await;

    // A configured id: stored under it; a Hello naming another id only updates its firmware.
    let hub = Hub::start(Some("fixed-1"), Duration::from_secs(30)).await;
    let mut device = Device::open(&hub.dev_end());
    device.send_seqs(0..3).await;
    let deadline = Instant::now() + WAIT;
    assert_eq!(device.ack_reaching(2, deadline).await, Some(2));
    assert_eq!(hub.seqs("fixed-1"), vec![0, 1, 2]);
    device.send(&hello("other-9", "fw-9")).await;
    device.expect_time_sync().await;
    let record = hub
        .store
        .device("fixed-1")
        .expect("query")
        .expect("known")
        .record;
    assert_eq!(record.firmware.as_deref(), Some("fw-9"));
    assert!(hub.store.device("other-9").expect("query").is_none());
    hub.stop().await;
}
