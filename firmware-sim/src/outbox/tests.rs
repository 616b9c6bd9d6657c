//! The outbox on disk across reloads (order, the seq carried on, acks, compaction, a torn or
//! corrupt record, a bad ack file) and in memory.

use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::disk::Loaded;
use super::*;
use crate::sensors::Sensors;

/// A fresh directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "firmware-sim-outbox-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn append_n(outbox: &mut Outbox, sensors: &mut Sensors, n: u32) {
    for _ in 0..n {
        let seq = outbox.next_seq() as u32;
        outbox
            .append(seq, sensors.reading(seq, 1_000 + u64::from(seq)))
            .unwrap();
    }
}

fn seqs(outbox: &Outbox) -> Vec<u32> {
    outbox.iter().map(|r| r.seq).collect()
}

fn log_len(dir: &TempDir) -> u64 {
    fs::metadata(dir.0.join("d.log")).unwrap().len()
}

#[test]
fn appended_readings_come_back_after_a_reload_in_order_and_the_seq_continues() {
    let dir = TempDir::new();
    let mut sensors = Sensors::new(1);
    let (mut outbox, loaded) = Outbox::open(&dir.0, "d", 100, false).unwrap();
    assert_eq!(loaded, Loaded::default());
    assert_eq!(outbox.next_seq(), 0);
    append_n(&mut outbox, &mut sensors, 5);
    let before: Vec<Record> = outbox.iter().cloned().collect();
    drop(outbox);

    let (mut outbox, loaded) = Outbox::open(&dir.0, "d", 100, false).unwrap();
    assert_eq!(loaded.unacked, 5);
    assert_eq!(seqs(&outbox), [0, 1, 2, 3, 4]);
    for (a, b) in before.iter().zip(outbox.iter()) {
        assert_eq!(a.message, b.message);
        assert_eq!(b.sends, 1, "a loaded reading counts as sent before");
    }
    assert_eq!(outbox.next_seq(), 5);
    assert_eq!(outbox.acked_through(), None);
    assert!(
        outbox.append(7, sensors.reading(7, 0)).is_err(),
        "seqs have no gaps"
    );
    append_n(&mut outbox, &mut sensors, 1);
    assert_eq!(seqs(&outbox), [0, 1, 2, 3, 4, 5]);
}

#[test]
fn acked_readings_are_not_loaded_again() {
    let dir = TempDir::new();
    let mut sensors = Sensors::new(2);
    let (mut outbox, _) = Outbox::open(&dir.0, "d", 100, true).unwrap();
    append_n(&mut outbox, &mut sensors, 6);
    assert_eq!(outbox.ack_through(2).unwrap(), 3);
    assert_eq!(
        outbox.ack_through(1).unwrap(),
        0,
        "an older ack changes nothing"
    );
    assert_eq!(seqs(&outbox), [3, 4, 5]);
    outbox.persist_ack().unwrap();
    drop(outbox);

    let (outbox, loaded) = Outbox::open(&dir.0, "d", 100, true).unwrap();
    assert_eq!(loaded.unacked, 3);
    assert_eq!(seqs(&outbox), [3, 4, 5]);
    assert_eq!(outbox.acked_through(), Some(2));
    assert_eq!(outbox.next_seq(), 6);
}

#[test]
fn an_ack_that_was_not_persisted_only_means_resending() {
    let dir = TempDir::new();
    let mut sensors = Sensors::new(3);
    let (mut outbox, _) = Outbox::open(&dir.0, "d", 100, false).unwrap();
    append_n(&mut outbox, &mut sensors, 4);
    outbox.ack_through(1).unwrap();
    drop(outbox); // "crash" before persist_ack

    let (outbox, _) = Outbox::open(&dir.0, "d", 100, false).unwrap();
    assert_eq!(seqs(&outbox), [0, 1, 2, 3]);
    assert_eq!(outbox.next_seq(), 4);
}

#[test]
fn when_everything_is_acked_the_log_is_emptied_and_the_ack_file_keeps_the_seq() {
    let dir = TempDir::new();
    let mut sensors = Sensors::new(4);
    let (mut outbox, _) = Outbox::open(&dir.0, "d", 100, false).unwrap();
    append_n(&mut outbox, &mut sensors, 10);
    assert!(log_len(&dir) > 0);
    assert_eq!(outbox.ack_through(9).unwrap(), 10);
    assert!(outbox.is_empty());
    assert_eq!(log_len(&dir), 0, "compacted");
    drop(outbox);

    let (mut outbox, loaded) = Outbox::open(&dir.0, "d", 100, false).unwrap();
    assert_eq!(loaded.unacked, 0);
    assert_eq!(outbox.next_seq(), 10, "seqs are never reused");
    append_n(&mut outbox, &mut sensors, 2);
    drop(outbox);
    let (outbox, _) = Outbox::open(&dir.0, "d", 100, false).unwrap();
    assert_eq!(seqs(&outbox), [10, 11]);
}

#[test]
fn a_mostly_acked_log_is_rewritten_with_the_unacked_records() {
    let dir = TempDir::new();
    let mut sensors = Sensors::new(5);
    let (mut outbox, _) = Outbox::open_with(&dir.0, "d", 100, false, 4).unwrap();
    append_n(&mut outbox, &mut sensors, 12);
    let full = log_len(&dir);
    outbox.ack_through(3).unwrap(); // 4 acked in the file: not more than 4
    assert_eq!(log_len(&dir), full);
    outbox.ack_through(8).unwrap(); // 9 acked > max(4, 3 unacked): rewrite
    assert!(log_len(&dir) < full / 2);
    append_n(&mut outbox, &mut sensors, 1);
    drop(outbox);

    let (outbox, loaded) = Outbox::open(&dir.0, "d", 100, false).unwrap();
    assert_eq!(loaded.corrupt, 0);
    assert_eq!(seqs(&outbox), [9, 10, 11, 12]);
    assert_eq!(outbox.next_seq(), 13);
    assert!(
        !dir.0.join("d.log.tmp").exists() && !dir.0.join("d.ack.tmp").exists(),
        "no temporary file is left"
    );
}

#[test]
fn a_torn_last_record_is_ignored_and_cut_off() {
    let dir = TempDir::new();
    let mut sensors = Sensors::new(6);
    let (mut outbox, _) = Outbox::open(&dir.0, "d", 100, false).unwrap();
    append_n(&mut outbox, &mut sensors, 3);
    let good = log_len(&dir);
    // The first half of a fourth record, as a crash in the middle of a write leaves it.
    let mut frame = Vec::new();
    push_frame(&sensors.reading(3, 0), &mut frame).unwrap();
    let mut file = OpenOptions::new()
        .append(true)
        .open(dir.0.join("d.log"))
        .unwrap();
    file.write_all(&frame[..frame.len() / 2]).unwrap();
    drop((file, outbox));

    let (mut outbox, loaded) = Outbox::open(&dir.0, "d", 100, false).unwrap();
    assert_eq!(loaded.unacked, 3);
    assert_eq!(loaded.torn_bytes, (frame.len() / 2) as u64);
    assert_eq!(log_len(&dir), good, "the torn bytes are cut off");
    assert_eq!(outbox.next_seq(), 3);
    append_n(&mut outbox, &mut sensors, 1);
    drop(outbox);

    let (outbox, loaded) = Outbox::open(&dir.0, "d", 100, false).unwrap();
    assert_eq!((loaded.corrupt, loaded.torn_bytes), (0, 0));
    assert_eq!(seqs(&outbox), [0, 1, 2, 3]);
}

#[test]
fn a_corrupt_record_is_skipped_and_counted() {
    let dir = TempDir::new();
    let mut sensors = Sensors::new(7);
    let (mut outbox, _) = Outbox::open(&dir.0, "d", 100, false).unwrap();
    append_n(&mut outbox, &mut sensors, 3);
    drop(outbox);
    let path = dir.0.join("d.log");
    let mut bytes = fs::read(&path).unwrap();
    let first_end = bytes.iter().position(|&b| b == 0).unwrap();
    // Change a byte inside the second record (never to 0x00, which would split it).
    let at = first_end + 3;
    bytes[at] = if bytes[at] == 0x55 { 0x56 } else { 0x55 };
    fs::write(&path, &bytes).unwrap();

    let (outbox, loaded) = Outbox::open(&dir.0, "d", 100, false).unwrap();
    assert_eq!(loaded.corrupt, 1);
    assert_eq!(seqs(&outbox), [0, 2]);
    assert_eq!(outbox.next_seq(), 3);
}

#[test]
fn a_garbage_ack_file_is_an_error_not_a_reset() {
    let dir = TempDir::new();
    fs::write(dir.0.join("d.ack"), b"{\"acked").unwrap();
    let err = Outbox::open(&dir.0, "d", 100, false).unwrap_err();
    assert!(err.to_string().contains("d.ack"), "{err}");
}

#[test]
fn in_memory_it_fills_up_and_acks_free_space() {
    let mut sensors = Sensors::new(8);
    let mut outbox = Outbox::in_memory(3);
    append_n(&mut outbox, &mut sensors, 3);
    assert!(outbox.is_full());
    assert_eq!(outbox.ack_through(0).unwrap(), 1);
    assert!(!outbox.is_full());
    assert_eq!(outbox.ack_through(50).unwrap(), 2);
    assert_eq!(outbox.acks_beyond, 1);
    assert_eq!(outbox.acked_through(), Some(2));
    assert!(outbox.is_empty());
    assert_eq!(outbox.next_seq(), 3);
}

#[test]
fn a_rejected_reading_leaves_and_given_up_ones_are_found() {
    let mut sensors = Sensors::new(9);
    let mut outbox = Outbox::in_memory(10);
    append_n(&mut outbox, &mut sensors, 6);
    assert_eq!(outbox.remove(2), Some(2));
    assert_eq!(outbox.remove(2), None);
    assert_eq!(seqs(&outbox), [0, 1, 3, 4, 5]);
    assert_eq!(outbox.held_in(&[(1, 3), (5, 9)]), vec![1, 2, 4]);
    assert_eq!(outbox.ack_through(5).unwrap(), 5);
    assert!(outbox.is_empty());
}
