//! An outbox on disk: two files per device in a directory, loaded when the outbox is opened:
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

use super::{Outbox, Record};

/// Acked records in the log that trigger a rewrite, at least.
pub const COMPACT_MIN: usize = 4096;

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
pub(super) struct Disk {
    dir: PathBuf,
    log_path: PathBuf,
    ack_path: PathBuf,
    pub(super) log: File,
    /// Records in the log file, acked or not.
    pub(super) records_in_file: usize,
    /// The ack changed since the ack file was written.
    pub(super) ack_dirty: bool,
    pub(super) fsync: bool,
    compact_min: usize,
}

impl Outbox {
    /// Opens (or creates) the outbox of device `id` in `dir` and loads its unacked readings.
    pub fn open(dir: &Path, id: &str, max: usize, fsync: bool) -> io::Result<(Self, Loaded)> {
        Self::open_with(dir, id, max, fsync, COMPACT_MIN)
    }

    pub(super) fn open_with(
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
    pub(super) fn maybe_compact(&mut self) -> io::Result<()> {
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
pub(super) fn push_frame(message: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
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
