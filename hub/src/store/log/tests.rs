//! Tests of the log through the store: recovery after a torn last record, and after a kill at
//! every stage of a checkpoint (the checkpoint stops there and the engine is dropped without
//! any cleanup, which on disk is what a kill leaves: every write the log made is either synced
//! or was never acknowledged).

use device_protocol::OwnedValue;

use super::super::tests::{Harness, Logged};
use super::super::*;
use super::{Stage, segment};

fn reading(device: &str, seq: u32, value: i64) -> NewReading {
    NewReading {
        device: device.into(),
        transport: Transport::Mqtt,
        wire: Wire::Json,
        seq: Some(seq),
        boot: None,
        timestamp_ms: Some(1_700_000_000_000 + u64::from(seq) * 1000),
        received_ms: 1_700_000_000_000 + u64::from(seq) * 1000,
        metrics: vec![("v".into(), OwnedValue::I64(value))],
    }
}

/// Batches of 5 readings of devices a and b, seqs 0.., values equal to the seq.
fn batches(n: u32) -> Vec<Vec<NewReading>> {
    (0..n)
        .map(|b| {
            (0..5)
                .map(|i| {
                    let seq = b * 5 + i;
                    reading(if i % 2 == 0 { "a" } else { "b" }, seq, i64::from(seq))
                })
                .collect()
        })
        .collect()
}

/// Every reading of `device`, oldest first, as (seq, value).
fn stored(store: &Store, device: &str) -> Vec<(u32, i64)> {
    let query = super::super::tests::query(device, Order::Oldest, 100_000);
    match store.readings(&query).expect("readings") {
        Some(page) => page
            .readings
            .iter()
            .map(|r| {
                let value = match r.metrics.first() {
                    Some((_, OwnedValue::I64(v))) => *v,
                    _ => -1,
                };
                (r.seq.device_seq().unwrap_or(u32::MAX), value)
            })
            .collect(),
        None => Vec::new(),
    }
}

/// What a store that took `all` holds, and that each is stored once: offsets 0..n, every
/// reading back, a retransmission recognised, the latest value the newest.
fn check_holds(store: &Store, all: &[Vec<NewReading>]) {
    let n: usize = all.iter().map(Vec::len).sum();
    assert_eq!(store.next_offset().unwrap(), n as u64);
    for device in ["a", "b"] {
        let expected: Vec<(u32, i64)> = all
            .iter()
            .flatten()
            .filter(|r| r.device == device)
            .map(|r| (r.seq.unwrap_or(0), i64::from(r.seq.unwrap_or(0))))
            .collect();
        assert_eq!(stored(store, device), expected, "readings of {device}");
        let latest = store.latest(device).unwrap().expect("latest");
        assert_eq!(
            latest.first().map(|l| l.value.clone()),
            expected.last().map(|(_, v)| OwnedValue::I64(*v)),
            "latest of {device}"
        );
    }
    if let Some(last) = all.last() {
        let again = store.append(last).unwrap();
        assert!(
            again
                .iter()
                .all(|a| matches!(a.outcome, Outcome::Duplicate { .. })),
            "a retransmission is stored again: {again:?}"
        );
    }
}

#[test]
fn a_torn_last_record_is_cut_off_and_the_log_goes_on() {
    let mut harness = Logged::redb();
    // No checkpoint on its own: every batch stays in the log, in one segment.
    harness.config.checkpoint_bytes = 1 << 30;
    harness.config.segment_bytes = 64 << 10;
    let all = batches(6);
    {
        let store = Store::open(harness.open()).unwrap();
        for batch in &all {
            store.append(batch).unwrap();
        }
    }
    // The log now starts in a new segment after the open's checkpoint; tear the newest record
    // of the newest segment at every length, each time on a fresh copy.
    let (segments, _) = segment::list(&log_dir(harness.dir.path())).unwrap();
    let newest = segments.last().expect("a segment").path.clone();
    let bytes = std::fs::read(&newest).unwrap();
    let records = segment::records(&bytes);
    // The schema version the first open wrote, then one record a batch.
    assert_eq!(records.len(), 7);
    let last_start: usize = records[..6]
        .iter()
        .map(|r| segment::padded(segment::HEADER_BYTES + r.payload.len()))
        .sum();
    let last_len = segment::HEADER_BYTES + records[6].payload.len();
    let end = last_start + last_len;
    for cut in [1, 8, 16, last_len / 2, last_len - 1] {
        let copy = Logged {
            dir: tempfile::tempdir().unwrap(),
            memory: None,
            config: harness.config,
        };
        copy_dir(harness.dir.path(), copy.dir.path());
        let mut torn = bytes.clone();
        // What was written of the last record before the cut; the rest stays as it was (zeros).
        for b in &mut torn[end - last_len + cut..end] {
            *b = 0;
        }
        let name = newest.file_name().unwrap();
        std::fs::write(log_dir(copy.dir.path()).join(name), &torn).unwrap();
        let mut copy = copy;
        let store = Store::open(copy.open()).unwrap();
        check_holds(&store, &all[..5]);
        // The log goes on past the cut, and what follows survives a reopen.
        let more = batches(8);
        store.append(&more[6]).unwrap();
        drop(store);
        let store = Store::open(copy.open()).unwrap();
        let mut expected = all[..5].to_vec();
        // Seqs 25..29 were torn off, so the device's retransmission is stored; then 30..34.
        expected.push(all[5].clone());
        expected.push(more[6].clone());
        assert_eq!(store.append(&all[5]).unwrap().len(), 5);
        check_holds(&store, &expected);
    }
}

#[test]
fn a_kill_at_any_stage_of_a_checkpoint_loses_nothing_and_doubles_nothing() {
    for stage in [
        Stage::BeforeFold,
        Stage::AfterFold,
        Stage::BeforeRecycle,
        Stage::MidRecycle,
    ] {
        let mut harness = Logged::redb();
        harness.config.checkpoint_bytes = 1 << 30;
        harness.config.segment_bytes = 1 << 10;
        let all = batches(40);
        let log = harness.open_log();
        {
            let store = Store::open(log.clone()).unwrap();
            for batch in &all[..30] {
                store.append(batch).unwrap();
            }
            let (segments, _) = segment::list(&log_dir(harness.dir.path())).unwrap();
            assert!(segments.len() >= 3, "{} segments", segments.len());
            log.stop_checkpoint_at(Some(stage));
            assert!(log.checkpoint_now().is_err(), "{stage:?}");
        }
        drop(log);
        let store = Store::open(harness.open()).unwrap();
        check_holds(&store, &all[..30]);
        for batch in &all[30..] {
            store.append(batch).unwrap();
        }
        drop(store);
        let store = Store::open(harness.open()).unwrap();
        check_holds(&store, &all);
    }
}

#[test]
fn a_store_that_switches_write_path_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        checkpoint_bytes: 1 << 30,
        ..LogConfig::default()
    };
    let all = batches(4);
    let open = |path| open(EngineKind::Redb, dir.path(), 1 << 20, path, config).unwrap();
    {
        let store = open(WritePath::Log);
        store.append(&all[0]).unwrap();
        store.append(&all[1]).unwrap();
    }
    {
        // Log records not yet folded: opened directly, they are replayed first.
        let store = open(WritePath::Direct);
        check_holds(&store, &all[..2]);
        store.append(&all[2]).unwrap();
        assert!(!log_dir(dir.path()).exists());
    }
    let store = open(WritePath::Log);
    store.append(&all[3]).unwrap();
    drop(store);
    let store = open(WritePath::Log);
    check_holds(&store, &all);
}

#[test]
fn reads_see_the_log_before_and_after_a_checkpoint() {
    let mut harness = Logged::redb();
    harness.config.checkpoint_bytes = 1 << 30;
    let log = harness.open_log();
    let store = Store::open(log.clone()).unwrap();
    let all = batches(3);
    for batch in &all {
        store.append(batch).unwrap();
    }
    check_holds(&store, &all);
    log.checkpoint_now().unwrap();
    check_holds(&store, &all);
    assert_eq!(store.devices(None, 10).unwrap().len(), 2);
    drop((store, log));
    let store = Store::open(harness.open()).unwrap();
    check_holds(&store, &all);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Bytes this thread has had written to storage so far (`write_bytes` of its `/proc` io file).
#[cfg(target_os = "linux")]
fn thread_write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("write_bytes")
}

/// A segment's zeros were written in 64 KiB chunks; on a kernel whose ext4 caches files in
/// large folios, each small record written into that cache dirtied (and sent to the card) a
/// whole 64 KiB folio: eight times an 8 KiB record. The log drops those pages after writing them.
#[cfg(target_os = "linux")]
#[test]
fn a_commit_writes_its_own_pages_not_a_folio_of_zeros() {
    let mut harness = Logged::redb();
    harness.config.checkpoint_bytes = 1 << 30;
    harness.config.segment_bytes = 1 << 20;
    let store = Store::open(harness.open()).unwrap();
    let all = batches(21);
    // The first commit may make the running log's segment (zeros, written in this thread).
    store.append(&all[0]).unwrap();
    let before = thread_write_bytes();
    for batch in &all[1..] {
        store.append(batch).unwrap();
    }
    let written = thread_write_bytes() - before;
    // Each record of 5 small readings fits one 4 KiB page.
    assert!(
        written <= 20 * 4096,
        "{written} bytes written for 20 commits of one page each"
    );
    check_holds(&store, &all);
}
