//! The log's files: fixed-size segment files in `<data dir>/log/`, and the records in them.
//!
//! A segment is `NNNNNNNNNNNNNNNN.seg` (its number, hex, 16 digits): numbers only grow, so the
//! segments in number order hold the records in log order. A segment is preallocated to its full
//! size with zeros written and synced when it is made, and records are then written over those
//! zeros: appending never changes the file's size, so the `fdatasync` after each record has no
//! size or block map to journal. A segment no checkpoint needs any more is renamed to
//! `spare-N.seg` and taken again for a later number (its old records stay in it until
//! overwritten).
//!
//! Every record starts on a page (`PAGE_BYTES`) and is written padded with zeros to the end of its
//! last page: a commit never writes into a page that holds an earlier, acknowledged record, so a
//! page torn by a power cut mid-write can only take the record being written, never one before it.
//! (It costs nothing in pages written: `fdatasync` writes the whole last page anyway.)
//!
//! A record: `len` (u32 LE, of the payload), `crc` (u32 LE, CRC-32 of everything after it),
//! `lsn` (u64 LE, the record's number in the log, one more than the record before it), `kind`
//! (u8), then `len` bytes of payload. A record whose header is zero, whose length runs past the
//! file or whose CRC does not match ends the segment's readable part: a torn last write, or the
//! zeros or old records of a preallocated or recycled segment. Old records of a recycled segment
//! keep their CRC, so the reader also checks that `lsn` follows on (see `super::open`).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes before a record's payload.
pub const HEADER_BYTES: usize = 17;
/// Records start on multiples of this: the page the kernel writes and syncs as a whole.
pub const PAGE_BYTES: usize = 4096;
/// The largest payload a record may claim: longer claims are garbage, not a record.
pub const MAX_PAYLOAD_BYTES: usize = 256 << 20;

/// One record read back from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its number in the log.
    pub lsn: u64,
    /// What the payload is (see `super::Kind`).
    pub kind: u8,
    /// The payload.
    pub payload: Vec<u8>,
}

/// `record` framed for a segment, padded with zeros to a whole number of pages.
pub fn frame(lsn: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(padded(HEADER_BYTES + payload.len()));
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[8..]) ^ crc32fast::hash(&out[..4]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out.resize(padded(out.len()), 0);
    out
}

/// `len` rounded up to whole pages.
pub fn padded(len: usize) -> usize {
    len.div_ceil(PAGE_BYTES) * PAGE_BYTES
}

/// The records at the start of `bytes`, in order, up to the first that is not whole and intact.
pub fn records(bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + HEADER_BYTES) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_PAYLOAD_BYTES || header.iter().all(|b| *b == 0) {
            break;
        }
        let Some(body) = bytes.get(at + 8..at + HEADER_BYTES + len) else {
            break;
        };
        if crc32fast::hash(body) ^ crc32fast::hash(&header[..4]) != crc {
            break;
        }
        let mut lsn = [0u8; 8];
        lsn.copy_from_slice(&body[..8]);
        out.push(Record {
            lsn: u64::from_le_bytes(lsn),
            kind: body[8],
            payload: body[9..].to_vec(),
        });
        at += padded(HEADER_BYTES + len);
    }
    out
}

/// A segment file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// Its number.
    pub number: u64,
    /// Its path.
    pub path: PathBuf,
}

/// The segments and the spares in `dir`, segments in number order. Other files are left alone.
pub fn list(dir: &Path) -> std::io::Result<(Vec<SegmentFile>, Vec<PathBuf>)> {
    let mut segments = Vec::new();
    let mut spares = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.starts_with("spare-") {
            spares.push(entry.path());
        } else if stem.len() == 16
            && let Ok(number) = u64::from_str_radix(stem, 16)
        {
            segments.push(SegmentFile {
                number,
                path: entry.path(),
            });
        }
    }
    segments.sort_by_key(|s| s.number);
    spares.sort();
    Ok((segments, spares))
}

/// The path of segment `number` in `dir`.
pub fn path_of(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016x}.seg"))
}

/// Makes `path` a file of `bytes` zeros, written and synced (its directory is synced by the
/// caller, after the rename that makes it a segment).
pub fn preallocate(path: &Path, bytes: u64) -> std::io::Result<File> {
    let made = (|| {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        crate::store::engine::write_zeros(&mut file, bytes)?;
        file.sync_all()?;
        forget_cached(&file);
        Ok(file)
    })();
    if made.is_err() {
        // A partial file would hold room the store needs; the next try makes it again.
        let _ = fs::remove_file(path);
    }
    made
}

/// Opens an existing segment or spare for writing records into.
pub fn open_for_writing(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    forget_cached(&file);
    Ok(file)
}

/// Drops the file's clean pages from the page cache. The zeros were written, and a segment read
/// at open was read ahead, in large folios (64 KiB and more on kernels whose ext4 has them); a
/// record written into such a folio dirties all of it, and all of it goes to the card: 64 KiB
/// for a record of 8 (measured: `/proc/PID/io` `write_bytes` eight times the records' bytes).
/// Written into an uncached range, a record's folios are its own size. Advice only: where the
/// kernel ignores it nothing breaks.
#[cfg(target_os = "linux")]
pub fn forget_cached(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise reads no memory of ours; the descriptor is open for the call.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Elsewhere the page cache is left to itself.
#[cfg(not(target_os = "linux"))]
pub fn forget_cached(_file: &File) {}

/// Writes `framed` at `at` and makes it durable: one write, one `fdatasync`.
pub fn write_durably(file: &File, at: u64, framed: &[u8]) -> std::io::Result<()> {
    file.write_all_at(framed, at)?;
    file.sync_data()
}

/// Makes renames and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_until_a_torn_or_zero_one_whatever_the_cut() {
        let mut bytes = Vec::new();
        for lsn in 1..=3u64 {
            bytes.extend(frame(lsn, 1, &vec![lsn as u8; 10 * lsn as usize]));
        }
        let whole = bytes.len();
        assert_eq!(whole, 3 * PAGE_BYTES, "each record on its own page");
        bytes.extend(vec![0u8; 100]);
        let all = records(&bytes);
        assert_eq!(all.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(all[2].payload, vec![3u8; 30]);
        // Cut anywhere: the records wholly before the cut, never an error or a panic.
        let ends: Vec<usize> = {
            let mut at = 0;
            (1..=3u64)
                .map(|lsn| {
                    let end = at + HEADER_BYTES + 10 * lsn as usize;
                    at += PAGE_BYTES;
                    end
                })
                .collect()
        };
        for cut in 0..=whole {
            let n = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(records(&bytes[..cut]).len(), n, "cut at {cut}");
        }
        // A flipped bit anywhere in the last record drops it and only it.
        for at in 2 * PAGE_BYTES..ends[2] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert_eq!(records(&flipped).len(), 2, "bit flipped at {at}");
        }
    }

    #[test]
    fn segments_and_spares_are_listed_in_order_and_other_files_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        for n in [3u64, 1, 2] {
            fs::write(path_of(dir.path(), n), b"").unwrap();
        }
        fs::write(dir.path().join("spare-0.seg"), b"").unwrap();
        fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let (segments, spares) = list(dir.path()).unwrap();
        assert_eq!(
            segments.iter().map(|s| s.number).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(spares.len(), 1);
        let file = preallocate(&dir.path().join("x.seg"), 100_000).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 100_000);
    }
}
