//! The compressed column block: one device's readings, sealed into immutable bytes.
//!
//! Inputs: 1..=[`MAX_BLOCK_READINGS`] readings of one device with their store offsets, strictly
//! ascending (gaps allowed). Outputs: the block's bytes ([`encode`]), the readings back, equal
//! bit for bit ([`decode`]), and a [`BlockSummary`] read from the header alone ([`summarize`]).
//!
//! # Format (version 1)
//!
//! ```text
//! format   u8 = 1
//! header   the summary: device, count, first/last offset, min/max timestamp, and per metric
//!          its counts and numeric min, max, sum (see summary.rs)
//! body     u8: 0 the columns follow as they are, 1 they follow as one zstd frame (level 1,
//!          content size declared), kept only when smaller
//! columns  offsets, timestamps, seqs, origins, the distinct shapes of the readings (the
//!          ordered list of (metric, type)), each reading's shape, then one column of values
//!          per (metric, type) in reading order (see body.rs)
//! ```
//!
//! Integer sequences (offsets, timestamps, seqs, shape numbers, i64 values, string indices)
//! are each stored plain, as deltas or as deltas of deltas, zig-zagged, then packed as varints,
//! runs or fixed-width bits: whichever of the nine is smallest (columns.rs, over the varints,
//! zig-zag and bit streams of bits.rs). Floats take the smallest of decimal-scaled integers
//! with exceptions, Gorilla XOR and raw bits (floats.rs); booleans runs or bits; strings a
//! dictionary and indices.
//!
//! Invariants: decoding is exact (every f64 by its bits, metric order and repeats within a
//! reading, types per value); decoding never panics and allocates within the caps below
//! whatever the bytes (each count is checked against the bytes left or a cap first), and
//! checks the columns against the header's counts, offsets and timestamps. The header's
//! numeric min, max and sum are not recomputed by [`decode`]: a store that needs to trust them
//! on damaged media checks the block's bytes (a CRC) as it does its other records.
//!
//! # Measured
//!
//! Bytes per reading, everything included (format byte, header, body), for readings like
//! firmware-sim's (temperature to 2 decimals drifting ±0.2, humidity to 1 decimal drifting
//! ±0.5, battery to 2 decimals draining, a door flipping with p=0.02; timestamps 1000 ms apart,
//! one in ten off by up to ±20 ms; seq +1; offsets stepping by 90..=110 as in a store of 100
//! devices), averaged over 20 seeded devices by the ignored test `tests::measure` (`cargo test
//! --release -p hub --lib store::block::tests::measure -- --ignored --nocapture`). The postcard
//! record of such a reading is 42.9 bytes.
//!
//! ```text
//! readings  bytes/reading  of which header  columns before zstd
//!       64           6.17             1.70                 5.34
//!      256           3.82             0.46                 4.87
//!     1024           3.06             0.12                 4.75
//!     4096           2.84             0.03                 4.71
//! ```
//!
//! Hence [`BLOCK_READINGS`] = 1024: four times the readings gain only 7 % more, and a read of
//! one reading decodes a whole block. Decoding such a block, release build, best of 100 batches
//! on a shared 2-core Xeon VM: 71 ns a reading with dropping the readings, 77 ns keeping ten
//! blocks of them alive; cloning the same readings and dropping them, the floor for any decoder
//! that returns `ReadingRecord`s (an allocation each), takes 63 ns. Encoding: 290 ns a reading.
//! [`decode_metric`], one metric's values without the records (what a downsampled query reads):
//! 30 ns a reading against 66 for [`decode`] with the drop, in the same run.

mod bits;
mod body;
mod columns;
mod floats;
mod summary;
#[cfg(test)]
mod tests;

pub use summary::{BlockSummary, MetricSummary, NumericSummary};

use device_protocol::OwnedValue;

use crate::store::records::ReadingRecord;

/// The readings a block should hold: where the measured bytes per reading stop falling much.
pub const BLOCK_READINGS: usize = 1024;
/// The most readings a block may hold.
pub const MAX_BLOCK_READINGS: usize = 4096;
/// The most metric values a block may hold: [`BLOCK_READINGS`] readings of 64 metrics (the
/// JSON limit of a reading); a store seals a block sooner for readings with many metrics.
pub const MAX_BLOCK_VALUES: usize = 64 * BLOCK_READINGS;
/// The longest string value (the store's are at most 256 bytes).
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// The most string bytes a block's readings may hold in all, counting each value's own copy:
/// decoding makes each one, so this bounds the memory of a decode.
pub const MAX_BLOCK_STRING_BYTES: usize = 4 << 20;
/// The most bytes of columns, before compression (64 × [`MAX_BLOCK_READINGS`] × 32): a block
/// within the other caps takes less (18 bytes a value at worst, plus its strings, about 6 MiB
/// in all), so this refuses only a damaged or hostile frame, before decompressing it.
pub const MAX_BODY_BYTES: usize = 64 * MAX_BLOCK_READINGS * 32;

/// The first byte of a block of this format.
const FORMAT_V1: u8 = 1;
/// The byte between header and columns: how the columns are stored.
const BODY_PLAIN: u8 = 0;
const BODY_ZSTD: u8 = 1;
/// Fast, and most of the gain: the columns are already small.
const ZSTD_LEVEL: i32 = 1;

/// Why readings could not be made into a block, or bytes are not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    /// No readings to encode.
    #[error("a block needs at least one reading")]
    Empty,
    /// More readings than [`MAX_BLOCK_READINGS`].
    #[error("{count} readings, more than the {MAX_BLOCK_READINGS} a block holds")]
    TooManyReadings {
        /// How many were given.
        count: usize,
    },
    /// Readings of two devices.
    #[error("a block holds one device, not {first} and {other}")]
    MixedDevices {
        /// The first reading's device.
        first: u32,
        /// Another device met.
        other: u32,
    },
    /// An offset not above the one before.
    #[error("offsets must ascend strictly: {offset} after {previous}")]
    OffsetsNotAscending {
        /// The offset before.
        previous: u64,
        /// The offset after it.
        offset: u64,
    },
    /// More metric values than [`MAX_BLOCK_VALUES`].
    #[error("{count} metric values, more than the {MAX_BLOCK_VALUES} a block holds")]
    TooManyValues {
        /// How many were given.
        count: usize,
    },
    /// A string longer than [`MAX_STRING_BYTES`].
    #[error("a string of {len} bytes, longer than the limit of {MAX_STRING_BYTES}")]
    StringTooLong {
        /// Its length.
        len: usize,
    },
    /// More string bytes than [`MAX_BLOCK_STRING_BYTES`].
    #[error("{bytes} bytes of strings, more than the {MAX_BLOCK_STRING_BYTES} a block holds")]
    TooManyStringBytes {
        /// How many were given.
        bytes: usize,
    },
    /// Columns larger than [`MAX_BODY_BYTES`].
    #[error("{bytes} bytes of columns, more than the limit of {MAX_BODY_BYTES}")]
    TooLarge {
        /// Their size.
        bytes: usize,
    },
    /// The first byte is no format this hub reads.
    #[error("not a block of a known format (first byte {0})")]
    UnknownFormat(u8),
    /// The bytes end in the middle of something.
    #[error("block truncated in its {0}")]
    Truncated(&'static str),
    /// The bytes say something impossible.
    #[error("corrupt block, {section}: {what}")]
    Corrupt {
        /// The part being read.
        section: &'static str,
        /// What is wrong.
        what: &'static str,
    },
    /// The compressed columns do not decompress.
    #[error("corrupt block: its columns do not decompress: {0}")]
    Decompress(String),
}

/// Encodes the readings of one device as a block: 1..=[`MAX_BLOCK_READINGS`] of them, offsets
/// strictly ascending, within the other caps of this module.
pub fn encode(readings: &[(u64, ReadingRecord)]) -> Result<Vec<u8>, BlockError> {
    check(readings)?;
    let summary = BlockSummary::of(readings);
    let mut out = vec![FORMAT_V1];
    summary.write(&mut out);
    let mut plain = Vec::with_capacity(8 * readings.len());
    body::write(readings, &summary, &mut plain);
    if plain.len() > MAX_BODY_BYTES {
        return Err(BlockError::TooLarge { bytes: plain.len() });
    }
    // Compression that fails (it cannot, short of memory) only costs the gain.
    match compress(&plain) {
        Ok(packed) if packed.len() < plain.len() => {
            out.push(BODY_ZSTD);
            out.extend_from_slice(&packed);
        }
        _ => {
            out.push(BODY_PLAIN);
            out.extend_from_slice(&plain);
        }
    }
    Ok(out)
}

/// The caps and the one-device, ascending-offsets rule.
fn check(readings: &[(u64, ReadingRecord)]) -> Result<(), BlockError> {
    let Some((_, first)) = readings.first() else {
        return Err(BlockError::Empty);
    };
    if readings.len() > MAX_BLOCK_READINGS {
        return Err(BlockError::TooManyReadings {
            count: readings.len(),
        });
    }
    let mut previous = None;
    let (mut values, mut string_bytes) = (0usize, 0usize);
    for (offset, r) in readings {
        if r.device != first.device {
            return Err(BlockError::MixedDevices {
                first: first.device,
                other: r.device,
            });
        }
        if let Some(previous) = previous
            && *offset <= previous
        {
            return Err(BlockError::OffsetsNotAscending {
                previous,
                offset: *offset,
            });
        }
        previous = Some(*offset);
        values += r.metrics.len();
        for (_, v) in &r.metrics {
            if let OwnedValue::Str(s) = v {
                if s.len() > MAX_STRING_BYTES {
                    return Err(BlockError::StringTooLong { len: s.len() });
                }
                string_bytes += s.len();
            }
        }
    }
    if values > MAX_BLOCK_VALUES {
        return Err(BlockError::TooManyValues { count: values });
    }
    if string_bytes > MAX_BLOCK_STRING_BYTES {
        return Err(BlockError::TooManyStringBytes {
            bytes: string_bytes,
        });
    }
    Ok(())
}

/// The readings of a block, exactly as given to [`encode`].
pub fn decode(bytes: &[u8]) -> Result<Vec<(u64, ReadingRecord)>, BlockError> {
    let mut unpacked = Vec::new();
    let (summary, body) = open(bytes, &mut unpacked)?;
    body::read(&summary, body)
}

/// The values of `metric` in a block, with each reading's offset and timestamp: as [`decode`]
/// would give them (the first value of `metric` in each reading that has one), without the
/// records. Checks what it reads as [`decode`] does.
pub fn decode_metric(bytes: &[u8], metric: u32) -> Result<Vec<(u64, u64, OwnedValue)>, BlockError> {
    let mut unpacked = Vec::new();
    let (summary, body) = open(bytes, &mut unpacked)?;
    body::read_metric(&summary, body, metric)
}

/// A block's header, and its columns' bytes (decompressed into `unpacked` when packed).
fn open<'a>(
    bytes: &'a [u8],
    unpacked: &'a mut Vec<u8>,
) -> Result<(BlockSummary, &'a [u8]), BlockError> {
    let mut r = bits::Reader::new(bytes, "format");
    let summary = header(&mut r)?;
    r.section("body");
    let body = match r.byte()? {
        BODY_PLAIN => r.rest(),
        BODY_ZSTD => {
            *unpacked = decompress(r.rest())?;
            &unpacked[..]
        }
        _ => return Err(r.corrupt("an unknown body encoding")),
    };
    Ok((summary, body))
}

/// The summary of a block, from its header: what [`BlockSummary`] says of the readings
/// [`decode`] would give (its counts, offsets and timestamps are checked by decoding).
pub fn summarize(bytes: &[u8]) -> Result<BlockSummary, BlockError> {
    header(&mut bits::Reader::new(bytes, "format"))
}

fn header(r: &mut bits::Reader) -> Result<BlockSummary, BlockError> {
    match r.byte()? {
        FORMAT_V1 => BlockSummary::read(r),
        other => Err(BlockError::UnknownFormat(other)),
    }
}

thread_local! {
    /// A decompression context kept by each thread that decodes blocks: making one costs more
    /// than decompressing a block (its buffers are some 100 KiB, which glibc maps and unmaps
    /// each time).
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

thread_local! {
    /// A compression context kept by each thread that encodes blocks (the log's checkpoints: the
    /// store writer's): a checkpoint of a thousand devices seals a thousand small blocks, and a
    /// context made and freed for each churned the heap at the peaks of ingest.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// `plain` as one zstd frame (level [`ZSTD_LEVEL`], its size declared).
fn compress(plain: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        // Never borrowed twice: nothing in here encodes a block.
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return zstd::bulk::compress(plain, ZSTD_LEVEL);
        };
        let compressor = match &mut *slot {
            Some(c) => c,
            empty => empty.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
        };
        compressor.compress(plain)
    })
}

/// The columns of a zstd frame, refused before any allocation when the frame does not declare
/// its size or declares more than [`MAX_BODY_BYTES`].
fn decompress(frame: &[u8]) -> Result<Vec<u8>, BlockError> {
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|_| BlockError::Decompress("not a zstd frame".into()))?
        .ok_or_else(|| BlockError::Decompress("the frame does not declare its size".into()))?;
    if size > MAX_BODY_BYTES as u64 {
        return Err(BlockError::Decompress(format!(
            "the frame declares {size} bytes, more than the limit of {MAX_BODY_BYTES}"
        )));
    }
    let failed = |e: std::io::Error| BlockError::Decompress(e.to_string());
    let plain = DECOMPRESSOR.with(|cell| {
        // Never borrowed twice: nothing in here decodes a block.
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return zstd::bulk::decompress(frame, size as usize).map_err(failed);
        };
        let decompressor = match &mut *slot {
            Some(d) => d,
            empty => empty.insert(zstd::bulk::Decompressor::new().map_err(failed)?),
        };
        decompressor
            .decompress(frame, size as usize)
            .map_err(failed)
    })?;
    if plain.len() as u64 != size {
        return Err(BlockError::Decompress(
            "the frame holds less than it declares".into(),
        ));
    }
    Ok(plain)
}
