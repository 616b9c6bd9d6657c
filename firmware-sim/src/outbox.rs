//! A device's outbox: every reading is appended here before it is sent, and stays until the hub's
//! cumulative ack covers its seq. It also remembers the device's next seq, so that seqs keep
//! counting up across restarts of the simulator.
//!
//! # In memory or on disk
//!
//! [`Outbox::in_memory`] keeps the readings in memory only (retransmission works, a restarted
//! simulator starts again at seq 0). [`Outbox::open`] keeps them in two files per device in a
//! directory, loaded when the outbox is opened:
//!
//! - `{id}.log`: append-only, one record per reading, in seq order. A record is a device-protocol
//!   serial frame, `COBS(postcard(Uplink::Telemetry) ++ CRC-32 LE) ++ 0x00`, the very bytes a
//!   serial device sends (so [`device_protocol::FrameDecoder`] reads the file back, and a record
//!   carries its own length, its delimiter and its checksum).
//! - `{id}.ack`: `{"acked_through":K}` (JSON, one line): every seq up to `K` has been acked by the
//!   hub. It is replaced atomically: written to `{id}.ack.tmp`, then renamed over. No file means
//!   nothing has been acked yet.
//!
//! Loading: records with `seq <= K` are skipped; a record that fails its CRC (or is not telemetry)
//! is counted and skipped; the bytes after the last 0x00 are a record torn by a crash: they are
//! counted, ignored and cut off the file, so the next append starts on a frame boundary. The next
//! seq is one more than the highest of the last record's seq and `K` (0 for a new device).
//!
//! Compaction: when every record is acked, the ack file is written first, then the log is
//! truncated to nothing (so the ack file alone remembers the next seq). When acked records in the
//! log outnumber both the unacked ones and a minimum (4096 by default), the log is rewritten with
//! the unacked records only (to `{id}.log.tmp`, renamed over). The ack file is always written
//! before either, so a crash at any point loses no unacked record and never reuses a seq.
//!
//! Acks reach the ack file when [`Outbox::persist_ack`] is called (the device does that a few
//! times a second) or before a compaction. An ack file that lags only makes a restarted simulator
//! resend readings the hub already has, which the hub stores once and acks again.
//!
//! Durability: without `fsync`, every append is one `write` to the file, so the outbox survives
//! the simulator being killed at any point, but not a power cut. With `fsync`, each append is
//! followed by `fdatasync`, and the ack file, a rewritten log and their directory are synced
//! before they are relied upon.
//!
//! One process at a time may use a directory: the files are not locked.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use device_protocol::{FeedResult, FrameDecoder, MAX_FRAME_LEN, Uplink, encode_frame};
use serde::{Deserialize, Serialize};

/// Acked records in the log that trigger a rewrite, at least.
pub const COMPACT_MIN: usize = 4096;

/// One reading waiting for its ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The reading's seq.
    pub seq: u32,
    /// The postcard bytes of its `Uplink::Telemetry`.
    pub message: Vec<u8>,
    /// How many times it was sent (loaded records count as sent once by an earlier run).
    pub sends: u32,
}

/// What [`Outbox::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Unacked readings loaded.
    pub unacked: usize,
    /// Records skipped because they failed their CRC or were not telemetry.
    pub corrupt: usize,
    /// Bytes of a torn last record, cut off.
    pub torn_bytes: u64,
}

/// The ack file's content.
#[derive(Debug, Serialize, Deserialize)]
struct AckFile {
    acked_through: u32,
}

/// The files of an outbox on disk.
#[derive(Debug)]
struct Disk {
    dir: PathBuf,
    log_path: PathBuf,
    ack_path: PathBuf,
    log: File,
    /// Records in the log file, acked or not.
    records_in_file: usize,
    /// The ack changed since the ack file was written.
    ack_dirty: bool,
    fsync: bool,
    compact_min: usize,
}

/// The readings of one device that the hub has not acked yet, oldest first.
#[derive(Debug)]
pub struct Outbox {
    pending: VecDeque<Record>,
    /// The seq of the next reading (`u32::MAX + 1` once every seq is used).
    next_seq: u64,
    acked_through: Option<u32>,
    max: usize,
    disk: Option<Disk>,
    /// Acks for seqs this outbox never produced (the hub remembers another run of this device).
    pub acks_beyond: u64,
}

impl Outbox {
    /// An outbox in memory that holds at most `max` readings.
    pub fn in_memory(max: usize) -> Self {
        Outbox {
            pending: VecDeque::new(),
            next_seq: 0,
            acked_through: None,
            max: max.max(1),
            disk: None,
            acks_beyond: 0,
        }
    }

    /// Opens (or creates) the outbox of device `id` in `dir` and loads its unacked readings.
    pub fn open(dir: &Path, id: &str, max: usize, fsync: bool) -> io::Result<(Self, Loaded)> {
        Self::open_with(dir, id, max, fsync, COMPACT_MIN)
    }

    fn open_with(
        dir: &Path,
        id: &str,
        max: usize,
        fsync: bool,
        compact_min: usize,
    ) -> io::Result<(Self, Loaded)> {
        fs::create_dir_all(dir)?;
        let log_path = dir.join(format!("{id}.log"));
        let ack_path = dir.join(format!("{id}.ack"));
        let acked_through = match fs::read(&ack_path) {
            Ok(bytes) => Some(
                serde_json::from_slice::<AckFile>(&bytes)
                    .map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{} is not a valid ack file ({e}); remove the outbox to start over",
                                ack_path.display()
                            ),
                        )
                    })?
                    .acked_through,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let bytes = match fs::read(&log_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };

        let mut loaded = Loaded::default();
        let mut pending: VecDeque<Record> = VecDeque::new();
        let mut records_in_file = 0;
        let mut decoder = FrameDecoder::new();
        let mut input = &bytes[..];
        loop {
            match decoder.feed(input) {
                FeedResult::Consumed => break,
                FeedResult::Dropped { remaining, .. } => {
                    loaded.corrupt += 1;
                    records_in_file += 1;
                    input = remaining;
                }
                FeedResult::Frame { payload, remaining } => {
                    records_in_file += 1;
                    input = remaining;
                    let seq = match Uplink::decode(payload) {
                        Ok(Uplink::Telemetry(t)) => t.seq,
                        _ => {
                            loaded.corrupt += 1;
                            continue;
                        }
                    };
                    let unacked = acked_through.is_none_or(|k| seq > k);
                    let in_order = pending.back().is_none_or(|r| seq > r.seq);
                    if unacked && in_order {
                        pending.push_back(Record {
                            seq,
                            message: payload.to_vec(),
                            sends: 1,
                        });
                    }
                }
            }
        }
        // Everything after the last 0x00 is a record torn by a crash: cut it off, so that the
        // next append starts on a frame boundary.
        let valid_end = bytes.iter().rposition(|&b| b == 0).map_or(0, |at| at + 1);
        if valid_end < bytes.len() {
            loaded.torn_bytes = (bytes.len() - valid_end) as u64;
            let file = OpenOptions::new().write(true).open(&log_path)?;
            file.set_len(valid_end as u64)?;
            if fsync {
                file.sync_all()?;
            }
        }
        loaded.unacked = pending.len();

        let next_seq = [
            pending.back().map(|r| u64::from(r.seq) + 1),
            acked_through.map(|k| u64::from(k) + 1),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut outbox = Outbox {
            pending,
            next_seq,
            acked_through,
            max: max.max(1),
            disk: Some(Disk {
                dir: dir.to_owned(),
                log_path,
                ack_path,
                log,
                records_in_file,
                ack_dirty: false,
                fsync,
                compact_min,
            }),
            acks_beyond: 0,
        };
        outbox.maybe_compact()?;
        Ok((outbox, loaded))
    }

    /// Unacked readings.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when every reading is acked.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// True when it holds `max` readings (or more, if `max` was lowered): produce no more.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.max
    }

    /// The seq the next reading gets (`u32::MAX + 1` once they are all used).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Every seq up to this one is acked.
    pub fn acked_through(&self) -> Option<u32> {
        self.acked_through
    }

    /// The unacked readings, oldest first.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.pending.iter()
    }

    /// The `i`-th unacked reading, oldest first.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Record> {
        self.pending.get_mut(i)
    }

    /// Drops the unacked reading `seq` (the hub rejected it); its index before, if it was held.
    /// Not written to disk: the ack that passes it follows.
    pub fn remove(&mut self, seq: u32) -> Option<usize> {
        let i = self.pending.iter().position(|r| r.seq == seq)?;
        self.pending.remove(i);
        Some(i)
    }

    /// The indexes of the unacked readings whose seq lies in one of `ranges` (inclusive).
    pub fn held_in(&self, ranges: &[(u32, u32)]) -> Vec<usize> {
        self.pending
            .iter()
            .enumerate()
            .filter(|(_, r)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&r.seq)))
            .map(|(i, _)| i)
            .collect()
    }

    /// Appends the reading `seq`, which must be [`Outbox::next_seq`], whose postcard
    /// `Uplink::Telemetry` bytes are `message`. It is written to the log (and synced, with
    /// `fsync`) before this returns. The caller checks [`Outbox::is_full`] first.
    pub fn append(&mut self, seq: u32, message: Vec<u8>) -> io::Result<()> {
        if u64::from(seq) != self.next_seq {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("appending seq {seq}, expected {}", self.next_seq),
            ));
        }
        if let Some(disk) = self.disk.as_mut() {
            let mut frame = Vec::with_capacity(message.len() + 16);
            push_frame(&message, &mut frame)?;
            disk.log.write_all(&frame)?;
            if disk.fsync {
                disk.log.sync_data()?;
            }
            disk.records_in_file += 1;
        }
        self.pending.push_back(Record {
            seq,
            message,
            sends: 0,
        });
        self.next_seq += 1;
        Ok(())
    }

    /// Applies the hub's cumulative ack: every seq up to `seq` is stored. Returns how many readings
    /// it newly acked. An ack below the current one changes nothing; one above every produced seq
    /// is counted in [`Outbox::acks_beyond`] and acks everything.
    pub fn ack_through(&mut self, seq: u32) -> io::Result<usize> {
        let Some(last) = self.next_seq.checked_sub(1) else {
            self.acks_beyond += 1;
            return Ok(0);
        };
        let mut seq = u64::from(seq);
        if seq > last {
            self.acks_beyond += 1;
            seq = last;
        }
        if self.acked_through.is_some_and(|k| u64::from(k) >= seq) {
            return Ok(0);
        }
        let mut acked = 0;
        while self
            .pending
            .front()
            .is_some_and(|r| u64::from(r.seq) <= seq)
        {
            self.pending.pop_front();
            acked += 1;
        }
        // `seq <= last <= u32::MAX`.
        self.acked_through = Some(seq as u32);
        if let Some(disk) = self.disk.as_mut() {
            disk.ack_dirty = true;
        }
        self.maybe_compact()?;
        Ok(acked)
    }

    /// Writes the ack file if the ack changed since it was last written.
    pub fn persist_ack(&mut self) -> io::Result<()> {
        let Some(disk) = self.disk.as_mut() else {
            return Ok(());
        };
        let Some(acked_through) = self.acked_through else {
            return Ok(());
        };
        if !disk.ack_dirty {
            return Ok(());
        }
        let tmp = disk.dir.join(tmp_name(&disk.ack_path));
        {
            let mut file = File::create(&tmp)?;
            let mut text = serde_json::to_vec(&AckFile { acked_through })?;
            text.push(b'\n');
            file.write_all(&text)?;
            if disk.fsync {
                file.sync_all()?;
            }
        }
        fs::rename(&tmp, &disk.ack_path)?;
        if disk.fsync {
            sync_dir(&disk.dir)?;
        }
        disk.ack_dirty = false;
        Ok(())
    }

    /// Truncates the log when everything is acked, rewrites it when it is mostly acked.
    fn maybe_compact(&mut self) -> io::Result<()> {
        let Some(disk) = self.disk.as_ref() else {
            return Ok(());
        };
        let unacked = self.pending.len();
        let acked_in_file = disk.records_in_file.saturating_sub(unacked);
        if unacked == 0 && disk.records_in_file > 0 {
            self.persist_ack()?;
            let disk = self.disk.as_mut().expect("checked above");
            disk.log.set_len(0)?;
            if disk.fsync {
                disk.log.sync_all()?;
            }
            disk.records_in_file = 0;
        } else if acked_in_file > disk.compact_min.max(unacked) {
            self.persist_ack()?;
            self.rewrite()?;
        }
        Ok(())
    }

    /// Rewrites the log with the unacked records only.
    fn rewrite(&mut self) -> io::Result<()> {
        let Some(disk) = self.disk.as_mut() else {
            return Ok(());
        };
        let tmp = disk.dir.join(tmp_name(&disk.log_path));
        {
            let mut out = io::BufWriter::new(File::create(&tmp)?);
            let mut frame = Vec::new();
            for record in &self.pending {
                frame.clear();
                push_frame(&record.message, &mut frame)?;
                out.write_all(&frame)?;
            }
            let file = out.into_inner().map_err(|e| e.into_error())?;
            if disk.fsync {
                file.sync_all()?;
            }
        }
        fs::rename(&tmp, &disk.log_path)?;
        if disk.fsync {
            sync_dir(&disk.dir)?;
        }
        disk.log = OpenOptions::new().append(true).open(&disk.log_path)?;
        disk.records_in_file = self.pending.len();
        Ok(())
    }
}

/// `{name}.tmp` for a path's file name.
fn tmp_name(path: &Path) -> String {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    format!("{name}.tmp")
}

/// Appends the frame of a telemetry message's postcard bytes to `out`.
fn push_frame(message: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let invalid = |e: device_protocol::Error| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an outbox record is not a valid message: {e}"),
        )
    };
    let uplink = Uplink::decode(message).map_err(invalid)?;
    let mut buf = [0u8; MAX_FRAME_LEN + 1];
    let len = encode_frame(&uplink, &mut buf).map_err(invalid)?;
    out.extend_from_slice(&buf[..len]);
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

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
}
