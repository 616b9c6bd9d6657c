//! Sealed readings: a checkpoint of the log writes the readings of its tail as compressed column
//! blocks (see [`super::block`]), one or more per device, instead of one row and one index entry
//! each; and the reads that see rows and blocks as one store.
//!
//! Keys (big-endian):
//! - `Blocks`: span u64, device u32, first offset u64 -> the block. A span is the first offset
//!   of the readings one checkpoint sealed; a block holds one device's readings of that span, in
//!   offset order, at most [`block::BLOCK_READINGS`].
//! - `BlockTimes`: device u32, min timestamp u64, span u64, first offset u64 -> max timestamp
//!   u64, last offset u64, readings u32: a device's blocks by time, without reading them.
//!
//! Rows (the `Readings` and `DeviceTime` tables) stay for the readings not sealed: those in the
//! log's tail, those written straight into the engine (`data.write_path = "direct"`), and those
//! of a store of an older version, read as they are. Every read here merges the two by offset or
//! by (timestamp, offset), so a reading is seen once, row or block.
//!
//! Invariants: a reading is in a row or in a block, never both (a checkpoint writes its blocks
//! and leaves out its rows in one transaction, and so does sealing old rows, see `seal_rows`);
//! spans do not interleave: every offset a span's blocks hold lies below the next span, which is
//! what finds the span of an offset; rows may lie anywhere, the reads merge them; blocks are
//! immutable: retention deletes whole spans and an erase whole blocks.

use std::collections::{BinaryHeap, VecDeque};

use super::block;
use super::engine::Snapshot;
use super::*;

/// Readings an offset read decodes at once: a page of sync or of the pull API fits in it. Small
/// in tests, so that their stores cross many windows.
const OFFSET_WINDOW: u64 = if cfg!(test) { 16 } else { 4096 };

/// `Blocks` key.
pub(super) fn block_key(span: u64, device: u32, first: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(20);
    key.extend_from_slice(&span.to_be_bytes());
    key.extend_from_slice(&device.to_be_bytes());
    key.extend_from_slice(&first.to_be_bytes());
    key
}

/// The big-endian u64 at `at` in `bytes`.
fn u64_at(bytes: &[u8], at: usize, what: &str) -> Result<u64, StoreError> {
    records::be_u64(bytes.get(at..at + 8).unwrap_or_default(), what)
}

/// The big-endian u32 at `at` in `bytes`.
fn u32_at(bytes: &[u8], at: usize, what: &str) -> Result<u32, StoreError> {
    records::be_u32(bytes.get(at..at + 4).unwrap_or_default(), what)
}

fn split_block_key(key: &[u8]) -> Result<(u64, u32, u64), StoreError> {
    let what = "block key";
    Ok((
        u64_at(key, 0, what)?,
        u32_at(key, 8, what)?,
        u64_at(key, 12, what)?,
    ))
}

/// An entry to write: table, key, value.
pub(super) type Entry = (Table, Vec<u8>, Vec<u8>);

/// What the store knows of a block without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BlockRef {
    pub span: u64,
    pub device: u32,
    pub first: u64,
    pub last: u64,
    pub min_ts: u64,
    pub max_ts: u64,
    pub readings: u32,
}

impl BlockRef {
    fn of(span: u64, summary: &block::BlockSummary) -> Self {
        BlockRef {
            span,
            device: summary.device,
            first: summary.first_offset,
            last: summary.last_offset,
            min_ts: summary.min_timestamp_ms,
            max_ts: summary.max_timestamp_ms,
            readings: summary.readings as u32,
        }
    }

    fn key(&self) -> Vec<u8> {
        block_key(self.span, self.device, self.first)
    }

    /// Its time range's width.
    fn width(&self) -> u64 {
        self.max_ts.saturating_sub(self.min_ts)
    }

    fn time_key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(28);
        key.extend_from_slice(&self.device.to_be_bytes());
        key.extend_from_slice(&self.min_ts.to_be_bytes());
        key.extend_from_slice(&self.span.to_be_bytes());
        key.extend_from_slice(&self.first.to_be_bytes());
        key
    }

    fn time_value(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(20);
        value.extend_from_slice(&self.max_ts.to_be_bytes());
        value.extend_from_slice(&self.last.to_be_bytes());
        value.extend_from_slice(&self.readings.to_be_bytes());
        value
    }

    fn from_time_entry(key: &[u8], value: &[u8]) -> Result<Self, StoreError> {
        let what = "block time index entry";
        Ok(BlockRef {
            device: u32_at(key, 0, what)?,
            min_ts: u64_at(key, 4, what)?,
            span: u64_at(key, 12, what)?,
            first: u64_at(key, 20, what)?,
            max_ts: u64_at(value, 0, what)?,
            last: u64_at(value, 8, what)?,
            readings: u32_at(value, 16, what)?,
        })
    }

    /// The entries of the two tables that hold the block `bytes`.
    fn entries(&self, bytes: Vec<u8>) -> [Entry; 2] {
        [
            (Table::Blocks, self.key(), bytes),
            (Table::BlockTimes, self.time_key(), self.time_value()),
        ]
    }

    /// Deletes the block and its index entry.
    pub fn delete_in(&self, batch: &mut WriteBatch) {
        batch.delete(Table::Blocks, self.key());
        batch.delete(Table::BlockTimes, self.time_key());
    }
}

fn block_error(e: block::BlockError) -> StoreError {
    StoreError::Corrupt(format!("block: {e}"))
}

/// The blocks of `readings` (rows: offset key, record bytes, in offset order), one device's
/// readings each, with their index entries and each device's widest block where it grows (as
/// `snap` has it): what a checkpoint writes in place of the rows.
pub(super) fn seal(rows: &[(&[u8], &[u8])], snap: &dyn Snapshot) -> Result<Vec<Entry>, StoreError> {
    // One list sorted by device then offset, not a list per device: a thousand devices made a
    // thousand growing lists at every checkpoint.
    let mut by_device: Vec<(u32, u64, &[u8])> = Vec::with_capacity(rows.len());
    for (key, value) in rows {
        let offset = records::be_u64(key, "reading key")?;
        let (device, _) = postcard::take_from_bytes::<u32>(value)
            .map_err(|e| StoreError::Corrupt(format!("reading: {e}")))?;
        by_device.push((device, offset, value));
    }
    let Some(span) = by_device.iter().map(|(_, offset, _)| *offset).min() else {
        return Ok(Vec::new());
    };
    by_device.sort_unstable_by_key(|(device, offset, _)| (*device, *offset));
    let mut out = Vec::new();
    for rows in by_device.chunk_by(|a, b| a.0 == b.0) {
        let Some(&(device, ..)) = rows.first() else {
            continue;
        };
        let rows = rows.iter().map(|(_, offset, bytes)| (*offset, *bytes));
        let blocks_from = out.len();
        let mut readings = Vec::with_capacity(rows.len().min(block::BLOCK_READINGS));
        let mut values = 0;
        let mut strings = 0;
        for (offset, bytes) in rows {
            let record: ReadingRecord = records::decode(bytes, "reading")?;
            let (v, s) = weight(&record);
            if !readings.is_empty()
                && (readings.len() >= block::BLOCK_READINGS
                    || values + v > block::MAX_BLOCK_VALUES
                    || strings + s > block::MAX_BLOCK_STRING_BYTES)
            {
                out.extend(sealed_block(span, &readings)?);
                readings.clear();
                (values, strings) = (0, 0);
            }
            values += v;
            strings += s;
            readings.push((offset, record));
        }
        if !readings.is_empty() {
            out.extend(sealed_block(span, &readings)?);
        }
        let widest = out[blocks_from..]
            .iter()
            .filter(|(table, ..)| *table == Table::BlockTimes)
            .map(|(_, key, value)| BlockRef::from_time_entry(key, value).map(|b| b.width()))
            .try_fold(0, |w, b| b.map(|b| w.max(b)))?;
        if block_width(snap, device)?.is_none_or(|known| widest > known) {
            out.push((
                Table::Meta,
                records::block_width_key(device),
                widest.to_be_bytes().to_vec(),
            ));
        }
    }
    Ok(out)
}

/// The widest time range of `device`'s blocks, if it has had any (see
/// [`records::META_BLOCK_WIDTH`]).
fn block_width(snap: &dyn Snapshot, device: u32) -> Result<Option<u64>, StoreError> {
    snap.get(Table::Meta, &records::block_width_key(device))?
        .map(|v| records::be_u64(&v, "block width"))
        .transpose()
}

/// A reading's values and string bytes, as the block's caps count them.
fn weight(record: &ReadingRecord) -> (usize, usize) {
    let strings = record
        .metrics
        .iter()
        .map(|(_, v)| match v {
            OwnedValue::Str(s) => s.len(),
            _ => 0,
        })
        .sum();
    (record.metrics.len(), strings)
}

fn sealed_block(span: u64, readings: &[(u64, ReadingRecord)]) -> Result<[Entry; 2], StoreError> {
    let bytes = block::encode(readings).map_err(block_error)?;
    let summary = block::summarize(&bytes).map_err(block_error)?;
    Ok(BlockRef::of(span, &summary).entries(bytes))
}

/// Visits the entries of `range` of `table` in `direction` order until `visit` breaks or
/// fails; returns whether it broke.
fn try_scan(
    snap: &dyn Snapshot,
    table: Table,
    range: &KeyRange,
    direction: Direction,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, StoreError>,
) -> Result<ControlFlow<()>, StoreError> {
    let mut failure = None;
    let mut flow = ControlFlow::Continue(());
    snap.scan(table, range, direction, &mut |k, v| match visit(k, v) {
        Ok(step) => {
            flow = step;
            step
        }
        Err(e) => {
            failure = Some(e);
            ControlFlow::Break(())
        }
    })?;
    failure.map_or(Ok(flow), Err)
}

/// Visits the blocks whose keys lie in `range`, in `direction` order, with their key's parts,
/// until `visit` breaks or fails.
fn scan_blocks(
    snap: &dyn Snapshot,
    range: &KeyRange,
    direction: Direction,
    mut visit: impl FnMut(u64, u32, u64, &[u8]) -> Result<ControlFlow<()>, StoreError>,
) -> Result<(), StoreError> {
    try_scan(snap, Table::Blocks, range, direction, |k, v| {
        let (span, device, first) = split_block_key(k)?;
        visit(span, device, first, v)
    })
    .map(drop)
}

/// The span holding `offset`: the greatest span at or before it, if any.
fn span_at(snap: &dyn Snapshot, offset: u64) -> Result<Option<u64>, StoreError> {
    let range = KeyRange {
        start: Bound::Unbounded,
        end: Bound::Excluded(block_key(offset.saturating_add(1), 0, 0)),
    };
    let mut span = None;
    scan_blocks(snap, &range, Direction::Reverse, |s, _, _, _| {
        span = Some(s);
        Ok(ControlFlow::Break(()))
    })?;
    Ok(span)
}

/// The first span after `offset`, if any.
pub(super) fn next_span(snap: &dyn Snapshot, offset: u64) -> Result<Option<u64>, StoreError> {
    let range = KeyRange {
        start: Bound::Included(block_key(offset.saturating_add(1), 0, 0)),
        end: Bound::Unbounded,
    };
    let mut span = None;
    scan_blocks(snap, &range, Direction::Forward, |s, _, _, _| {
        span = Some(s);
        Ok(ControlFlow::Break(()))
    })?;
    Ok(span)
}

/// The blocks of the span holding `from` and of every later span before `end`, in key order.
fn blocks_between(
    snap: &dyn Snapshot,
    from: u64,
    end: u64,
    mut visit: impl FnMut(u64, &[u8]) -> Result<ControlFlow<()>, StoreError>,
) -> Result<(), StoreError> {
    let start = span_at(snap, from)?.unwrap_or(from);
    let range = KeyRange::between(block_key(start, 0, 0), block_key(end, 0, 0));
    scan_blocks(snap, &range, Direction::Forward, |span, _, _, bytes| {
        visit(span, bytes)
    })
}

/// Sealed readings from offset `from` up to `end` (excluded), in offset order, decoded a window
/// of offsets at a time.
struct OffsetCursor<'s> {
    snap: &'s dyn Snapshot,
    next_from: u64,
    end: u64,
    ready: VecDeque<(u64, ReadingRecord)>,
}

impl<'s> OffsetCursor<'s> {
    fn new(snap: &'s dyn Snapshot, from: u64, end: u64) -> Self {
        OffsetCursor {
            snap,
            next_from: from,
            end,
            ready: VecDeque::new(),
        }
    }

    /// The offset of the next reading, decoding the next window when needed.
    fn peek(&mut self) -> Result<Option<u64>, StoreError> {
        while self.ready.is_empty() && self.next_from < self.end {
            let from = self.next_from;
            let until = self.end.min(from.saturating_add(OFFSET_WINDOW));
            let mut found = Vec::new();
            // The first offset held at or after `until`, among the blocks seen: where to go on
            // from when the window holds nothing.
            let mut beyond: Option<u64> = None;
            let mut note = |offset: u64| beyond = Some(beyond.map_or(offset, |b| b.min(offset)));
            blocks_between(self.snap, from, self.end, |span, bytes| {
                if span >= until {
                    note(span);
                    return Ok(ControlFlow::Break(()));
                }
                let summary = block::summarize(bytes).map_err(block_error)?;
                if summary.last_offset < from {
                    return Ok(ControlFlow::Continue(()));
                }
                if summary.first_offset >= until {
                    note(summary.first_offset);
                    return Ok(ControlFlow::Continue(()));
                }
                for (offset, record) in block::decode(bytes).map_err(block_error)? {
                    if offset >= until {
                        note(offset);
                        break;
                    }
                    if offset >= from {
                        found.push((offset, record));
                    }
                }
                Ok(ControlFlow::Continue(()))
            })?;
            found.sort_unstable_by_key(|(o, _)| *o);
            self.ready = found.into();
            self.next_from = match (self.ready.is_empty(), beyond) {
                (false, _) => until,
                // Nothing in the window: on from the next reading held, or stop.
                (true, Some(next)) => next.max(until),
                (true, None) => self.end,
            };
        }
        Ok(self.ready.front().map(|(o, _)| *o))
    }

    fn pop(&mut self) -> Option<(u64, ReadingRecord)> {
        self.ready.pop_front()
    }
}

/// Visits the readings held, rows and blocks, from offset `from` up to `end` (excluded), in
/// offset order, until `visit` breaks.
pub(super) fn scan_offsets(
    snap: &dyn Snapshot,
    from: u64,
    end: u64,
    mut visit: impl FnMut(u64, ReadingRecord) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    if from >= end {
        return Ok(());
    }
    let mut blocks = OffsetCursor::new(snap, from, end);
    let range = KeyRange::between(records::reading_key(from), records::reading_key(end));
    let flow = try_scan(snap, Table::Readings, &range, Direction::Forward, |k, v| {
        let offset = records::be_u64(k, "reading key")?;
        while let Some(o) = blocks.peek()? {
            if o >= offset {
                break;
            }
            if let Some((o, r)) = blocks.pop()
                && visit(o, r).is_break()
            {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(visit(offset, records::decode(v, "reading")?))
    })?;
    if flow.is_break() {
        return Ok(());
    }
    while blocks.peek()?.is_some() {
        if let Some((o, r)) = blocks.pop()
            && visit(o, r).is_break()
        {
            break;
        }
    }
    Ok(())
}

/// The first reading held at or after `offset`, rows or blocks.
pub(super) fn first_held(snap: &dyn Snapshot, offset: u64) -> Result<Option<u64>, StoreError> {
    let mut row = None;
    let range = KeyRange {
        start: Bound::Included(records::reading_key(offset)),
        end: Bound::Unbounded,
    };
    snap.scan(Table::Readings, &range, Direction::Forward, &mut |k, _| {
        row = records::be_u64(k, "reading key").ok();
        ControlFlow::Break(())
    })?;
    // In the first span with a block reaching `offset`: a block starting at or after it gives
    // its first offset, a block straddling it is read.
    let mut sealed: Option<u64> = None;
    let mut in_span = None;
    blocks_between(snap, offset, row.unwrap_or(u64::MAX), |span, bytes| {
        if in_span.is_some_and(|s| s != span) && sealed.is_some() {
            return Ok(ControlFlow::Break(()));
        }
        in_span = Some(span);
        let summary = block::summarize(bytes).map_err(block_error)?;
        let candidate = if summary.last_offset < offset {
            None
        } else if summary.first_offset >= offset {
            Some(summary.first_offset)
        } else {
            block::decode(bytes)
                .map_err(block_error)?
                .iter()
                .map(|(o, _)| *o)
                .find(|o| *o >= offset)
        };
        if let Some(c) = candidate {
            sealed = Some(sealed.map_or(c, |s| s.min(c)));
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(match (row, sealed) {
        (Some(r), Some(s)) => Some(r.min(s)),
        (r, s) => r.or(s),
    })
}

/// The reading at `offset`, row or block, if it is held.
pub(super) fn reading_at(
    snap: &dyn Snapshot,
    offset: u64,
) -> Result<Option<ReadingRecord>, StoreError> {
    if let Some(bytes) = snap.get(Table::Readings, &records::reading_key(offset))? {
        return Ok(Some(records::decode(&bytes, "reading")?));
    }
    let Some(span) = span_at(snap, offset)? else {
        return Ok(None);
    };
    let mut found = None;
    let range = KeyRange::prefix(&span.to_be_bytes());
    scan_blocks(snap, &range, Direction::Forward, |_, _, _, bytes| {
        let summary = block::summarize(bytes).map_err(block_error)?;
        if !(summary.first_offset..=summary.last_offset).contains(&offset) {
            return Ok(ControlFlow::Continue(()));
        }
        found = block::decode(bytes)
            .map_err(block_error)?
            .into_iter()
            .find(|(o, _)| *o == offset)
            .map(|(_, r)| r);
        Ok(if found.is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })?;
    Ok(found)
}

/// A range of a device's readings by (timestamp, offset).
#[derive(Debug, Clone, Copy)]
pub(super) struct TimeRange {
    pub lo: Bound<(u64, u64)>,
    pub hi: Bound<(u64, u64)>,
}

impl TimeRange {
    /// Timestamps in `[from, to)` (`to` `None`: no upper bound).
    pub fn between(from: u64, to: Option<u64>) -> Self {
        TimeRange {
            lo: Bound::Included((from, 0)),
            hi: match to {
                Some(to) => Bound::Excluded((to, 0)),
                None => Bound::Unbounded,
            },
        }
    }

    fn contains(&self, at: (u64, u64)) -> bool {
        // A reading is a block of one.
        self.meets(at, at)
    }

    /// Whether a block spanning `[low, high]` may hold a reading of the range.
    fn meets(&self, low: (u64, u64), high: (u64, u64)) -> bool {
        let above = match self.lo {
            Bound::Included(lo) => high >= lo,
            Bound::Excluded(lo) => high > lo,
            Bound::Unbounded => true,
        };
        let below = match self.hi {
            Bound::Included(hi) => low <= hi,
            Bound::Excluded(hi) => low < hi,
            Bound::Unbounded => true,
        };
        above && below
    }

    /// The device time index range of `device`'s rows in the range.
    fn index_range(&self, device: u32) -> KeyRange {
        let key = |(ts, offset): (u64, u64)| records::device_time_key(device, ts, offset);
        KeyRange {
            start: match self.lo {
                Bound::Included(lo) => Bound::Included(key(lo)),
                Bound::Excluded(lo) => Bound::Excluded(key(lo)),
                Bound::Unbounded => Bound::Included(key((0, 0))),
            },
            end: match self.hi {
                Bound::Included(hi) => Bound::Included(key(hi)),
                Bound::Excluded(hi) => Bound::Excluded(key(hi)),
                Bound::Unbounded => Bound::Included(key((u64::MAX, u64::MAX))),
            },
        }
    }
}

/// `device`'s blocks, by the time index.
pub(super) fn device_blocks(snap: &dyn Snapshot, device: u32) -> Result<Vec<BlockRef>, StoreError> {
    blocks_by_time(snap, &KeyRange::prefix(&device.to_be_bytes()))
}

/// `device`'s blocks that may hold a reading of `range`: only the index entries of blocks that
/// begin late enough to reach it (by the device's widest block) and before it ends are read.
fn device_blocks_in(
    snap: &dyn Snapshot,
    device: u32,
    range: &TimeRange,
) -> Result<Vec<BlockRef>, StoreError> {
    let lo = match range.lo {
        Bound::Included((ts, _)) | Bound::Excluded((ts, _)) => ts,
        Bound::Unbounded => 0,
    };
    let hi = match range.hi {
        Bound::Included((ts, _)) | Bound::Excluded((ts, _)) => ts,
        Bound::Unbounded => u64::MAX,
    };
    let from = match block_width(snap, device)? {
        Some(width) => lo.saturating_sub(width),
        None => 0,
    };
    let key = |ts: u64| {
        let mut key = device.to_be_bytes().to_vec();
        key.extend_from_slice(&ts.to_be_bytes());
        key
    };
    let index = KeyRange {
        start: Bound::Included(key(from)),
        end: match engine::prefix_successor(&key(hi)) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        },
    };
    Ok(blocks_by_time(snap, &index)?
        .into_iter()
        .filter(|b| range.meets((b.min_ts, b.first), (b.max_ts, b.last)))
        .collect())
}

/// The blocks whose time index entries lie in `index`.
fn blocks_by_time(snap: &dyn Snapshot, index: &KeyRange) -> Result<Vec<BlockRef>, StoreError> {
    let mut blocks = Vec::new();
    let _ = try_scan(
        snap,
        Table::BlockTimes,
        index,
        Direction::Forward,
        |k, v| {
            blocks.push(BlockRef::from_time_entry(k, v)?);
            Ok(ControlFlow::Continue(()))
        },
    )?;
    Ok(blocks)
}

/// A decoded reading (or value) waiting in [`DeviceCursor`]'s heap, ordered so that the next one
/// to give is the greatest.
struct Waiting<T> {
    rank: (u64, u64),
    at: (u64, u64),
    item: T,
}

impl<T> PartialEq for Waiting<T> {
    fn eq(&self, other: &Self) -> bool {
        self.rank == other.rank
    }
}
impl<T> Eq for Waiting<T> {}
impl<T> PartialOrd for Waiting<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Waiting<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank.cmp(&other.rank)
    }
}

/// Reads a block's bytes into (offset, timestamp, item)s in offset order.
type Reader<'r, T> = dyn Fn(&[u8]) -> Result<Vec<(u64, u64, T)>, StoreError> + 'r;

/// One device's sealed readings in a [`TimeRange`], by (timestamp, offset) in a direction: its
/// blocks are read in the order their bounds come, and a reading is given once no block left
/// can hold one before it. `T` is what a block's reading is read as: a record, or one metric's
/// value.
struct DeviceCursor<'s, T> {
    snap: &'s dyn Snapshot,
    range: TimeRange,
    direction: Direction,
    /// Blocks not read yet, the one whose bound comes first in front.
    unread: VecDeque<BlockRef>,
    heap: BinaryHeap<Waiting<T>>,
    read: &'s Reader<'s, T>,
}

impl<'s, T> DeviceCursor<'s, T> {
    fn new(
        snap: &'s dyn Snapshot,
        device: u32,
        range: TimeRange,
        direction: Direction,
        read: &'s Reader<'s, T>,
    ) -> Result<Self, StoreError> {
        let mut unread = device_blocks_in(snap, device, &range)?;
        match direction {
            Direction::Forward => unread.sort_by_key(|b| (b.min_ts, b.first)),
            Direction::Reverse => unread.sort_by_key(|b| std::cmp::Reverse((b.max_ts, b.last))),
        }
        Ok(DeviceCursor {
            snap,
            range,
            direction,
            unread: unread.into(),
            heap: BinaryHeap::new(),
            read,
        })
    }

    /// The rank of a position: greater comes first.
    fn rank(&self, at: (u64, u64)) -> (u64, u64) {
        match self.direction {
            Direction::Forward => (u64::MAX - at.0, u64::MAX - at.1),
            Direction::Reverse => at,
        }
    }

    /// The bound of a block: no reading of it comes before it.
    fn bound(&self, block: &BlockRef) -> (u64, u64) {
        match self.direction {
            Direction::Forward => (block.min_ts, block.first),
            Direction::Reverse => (block.max_ts, block.last),
        }
    }

    /// The (timestamp, offset) of the next reading, reading blocks as needed.
    fn peek(&mut self) -> Result<Option<(u64, u64)>, StoreError> {
        loop {
            let next_block = self.unread.front().map(|b| self.rank(self.bound(b)));
            match (self.heap.peek().map(|w| w.rank), next_block) {
                (Some(top), Some(block)) if top > block => break,
                (_, None) => break,
                _ => {}
            }
            let Some(block) = self.unread.pop_front() else {
                break;
            };
            let Some(bytes) = self.snap.get(Table::Blocks, &block.key())? else {
                // The same view holds the index and the blocks: only a broken store gets here.
                return Err(StoreError::Corrupt(
                    "a block named by the time index is missing".into(),
                ));
            };
            for (offset, ts, item) in (self.read)(&bytes)? {
                let at = (ts, offset);
                if self.range.contains(at) {
                    let rank = self.rank(at);
                    self.heap.push(Waiting { rank, at, item });
                }
            }
        }
        Ok(self.heap.peek().map(|w| w.at))
    }

    fn pop(&mut self) -> Option<(u64, u64, T)> {
        self.heap.pop().map(|w| (w.at.0, w.at.1, w.item))
    }
}

/// Visits `device`'s readings in `range`, rows and blocks, with their timestamp and offset, by
/// (timestamp, offset) in `direction` order, until `visit` breaks or fails; returns whether it
/// broke.
pub(super) fn scan_device(
    snap: &dyn Snapshot,
    device: u32,
    range: TimeRange,
    direction: Direction,
    visit: impl FnMut(u64, u64, ReadingRecord) -> Result<ControlFlow<()>, StoreError>,
) -> Result<ControlFlow<()>, StoreError> {
    let read = |bytes: &[u8]| -> Result<Vec<(u64, u64, ReadingRecord)>, StoreError> {
        Ok(block::decode(bytes)
            .map_err(block_error)?
            .into_iter()
            .map(|(offset, r)| (offset, r.timestamp_ms, r))
            .collect())
    };
    merge_device(snap, device, range, direction, &read, Some, visit)
}

/// Visits the values of `metric` in `device`'s readings in `range` (the first in each reading
/// that has one), as [`scan_device`] visits readings: a block is read for that metric alone.
pub(super) fn scan_device_metric(
    snap: &dyn Snapshot,
    device: u32,
    metric: u32,
    range: TimeRange,
    direction: Direction,
    visit: impl FnMut(u64, u64, OwnedValue) -> Result<ControlFlow<()>, StoreError>,
) -> Result<ControlFlow<()>, StoreError> {
    let read = |bytes: &[u8]| block::decode_metric(bytes, metric).map_err(block_error);
    let of_row = |record: ReadingRecord| {
        record
            .metrics
            .into_iter()
            .find(|(m, _)| *m == metric)
            .map(|(_, v)| v)
    };
    merge_device(snap, device, range, direction, &read, of_row, visit)
}

/// The merge of [`scan_device`] and [`scan_device_metric`]: the device's rows by its time
/// index, its blocks by their cursor, each reading as `T` (a row's by `of_row`, `None`: skipped).
fn merge_device<T>(
    snap: &dyn Snapshot,
    device: u32,
    range: TimeRange,
    direction: Direction,
    read: &Reader<'_, T>,
    of_row: impl Fn(ReadingRecord) -> Option<T>,
    mut visit: impl FnMut(u64, u64, T) -> Result<ControlFlow<()>, StoreError>,
) -> Result<ControlFlow<()>, StoreError> {
    let mut blocks = DeviceCursor::new(snap, device, range, direction, read)?;
    let before = |a: (u64, u64), b: (u64, u64)| match direction {
        Direction::Forward => a < b,
        Direction::Reverse => a > b,
    };
    let index = range.index_range(device);
    let flow = try_scan(snap, Table::DeviceTime, &index, direction, |k, _| {
        let at = records::split_device_time_key(k)
            .ok_or_else(|| StoreError::Corrupt("device time key".into()))?;
        while let Some(next) = blocks.peek()? {
            if !before(next, at) {
                break;
            }
            if let Some((ts, offset, item)) = blocks.pop()
                && visit(ts, offset, item)?.is_break()
            {
                return Ok(ControlFlow::Break(()));
            }
        }
        // No row behind an index entry: retention removed it between the two.
        let Some(bytes) = snap.get(Table::Readings, &records::reading_key(at.1))? else {
            return Ok(ControlFlow::Continue(()));
        };
        match of_row(records::decode(&bytes, "reading")?) {
            Some(item) => visit(at.0, at.1, item),
            None => Ok(ControlFlow::Continue(())),
        }
    })?;
    if flow.is_break() {
        return Ok(flow);
    }
    while blocks.peek()?.is_some() {
        if let Some((ts, offset, item)) = blocks.pop()
            && visit(ts, offset, item)?.is_break()
        {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// The earliest and latest timestamps of `device`'s readings, rows and blocks.
pub(super) fn time_bounds(
    snap: &dyn Snapshot,
    device: u32,
) -> Result<Option<(u64, u64)>, StoreError> {
    let range = KeyRange::prefix(&device.to_be_bytes());
    let mut ends = [None, None];
    for (end, direction) in ends
        .iter_mut()
        .zip([Direction::Forward, Direction::Reverse])
    {
        snap.scan(Table::DeviceTime, &range, direction, &mut |k, _| {
            *end = records::split_device_time_key(k).map(|(ts, _)| ts);
            ControlFlow::Break(())
        })?;
    }
    // The earliest: the first block by its min timestamp. The latest: the greatest max among
    // the blocks that begin within the widest block's width of the last one's beginning.
    let prefix = KeyRange::prefix(&device.to_be_bytes());
    let mut first = None;
    let _ = try_scan(
        snap,
        Table::BlockTimes,
        &prefix,
        Direction::Forward,
        |k, v| {
            first = Some(BlockRef::from_time_entry(k, v)?.min_ts);
            Ok(ControlFlow::Break(()))
        },
    )?;
    let width = block_width(snap, device)?;
    let mut last: Option<u64> = None;
    let _ = try_scan(
        snap,
        Table::BlockTimes,
        &prefix,
        Direction::Reverse,
        |k, v| {
            let block = BlockRef::from_time_entry(k, v)?;
            if let (Some(latest), Some(width)) = (last, width)
                && block.min_ts.saturating_add(width) < latest
            {
                return Ok(ControlFlow::Break(()));
            }
            last = Some(last.map_or(block.max_ts, |l| l.max(block.max_ts)));
            Ok(ControlFlow::Continue(()))
        },
    )?;
    if let (Some(first), Some(last)) = (first, last) {
        ends[0] = Some(ends[0].map_or(first, |t: u64| t.min(first)));
        ends[1] = Some(ends[1].map_or(last, |t: u64| t.max(last)));
    }
    match ends {
        [Some(first), Some(last)] => Ok(Some((first, last))),
        _ => Ok(None),
    }
}

/// The oldest span's blocks, if the store holds any.
pub(super) fn oldest_span(snap: &dyn Snapshot) -> Result<Option<(u64, Vec<BlockRef>)>, StoreError> {
    let mut span = None;
    let mut blocks = Vec::new();
    scan_blocks(
        snap,
        &KeyRange::all(),
        Direction::Forward,
        |s, _, _, bytes| {
            if span.is_some_and(|first| first != s) {
                return Ok(ControlFlow::Break(()));
            }
            span = Some(s);
            blocks.push(BlockRef::of(
                s,
                &block::summarize(bytes).map_err(block_error)?,
            ));
            Ok(ControlFlow::Continue(()))
        },
    )?;
    Ok(span.map(|s| (s, blocks)))
}

/// The readings of a block.
pub(super) fn read_block(
    snap: &dyn Snapshot,
    block: &BlockRef,
) -> Result<Vec<(u64, ReadingRecord)>, StoreError> {
    match snap.get(Table::Blocks, &block.key())? {
        Some(bytes) => block::decode(&bytes).map_err(block_error),
        None => Ok(Vec::new()),
    }
}
