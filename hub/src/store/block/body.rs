//! The block's body: the readings as columns, written by [`write`] and read back by [`read`].
//!
//! Layout, each integer sequence in [`put_ints`]'s form:
//! 1. offsets minus the first (from the header);
//! 2. timestamps minus the lowest (wrapping, so any u64 goes);
//! 3. seqs;
//! 4. origins as runs: a tag (0 device, 1 boot, 2 hub), the boot for a boot, the run length;
//! 5. the shapes: their count, then each one's length and its slots, a slot being the metric
//!    id shifted left 2 bits with its value type below (0 f64, 1 i64, 2 bool, 3 string);
//! 6. each reading's shape number;
//! 7. one column per (metric id, type), in that order, of the values of every slot of that
//!    key in reading order; its length is known from the shapes, so it is not written.

use std::collections::{BTreeMap, HashMap};

use device_protocol::OwnedValue;

use super::bits::{Reader, put_varint};
use super::columns::{Strings, get_bools, get_ints, get_strings, put_bools, put_ints, put_strings};
use super::floats::{get_floats, put_floats};
use super::summary::BlockSummary;
use super::{BlockError, MAX_BLOCK_STRING_BYTES, MAX_BLOCK_VALUES, MAX_STRING_BYTES};
use crate::store::records::{ReadingRecord, SeqOrigin};

const TYPE_F64: u8 = 0;
const TYPE_I64: u8 = 1;
const TYPE_BOOL: u8 = 2;
const TYPE_STR: u8 = 3;

const ORIGIN_DEVICE: u8 = 0;
const ORIGIN_BOOT: u8 = 1;
const ORIGIN_HUB: u8 = 2;

fn type_of(value: &OwnedValue) -> u8 {
    match value {
        OwnedValue::F64(_) => TYPE_F64,
        OwnedValue::I64(_) => TYPE_I64,
        OwnedValue::Bool(_) => TYPE_BOOL,
        OwnedValue::Str(_) => TYPE_STR,
    }
}

/// A column's values, gathered for writing.
enum Gathered<'a> {
    F64(Vec<f64>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
    Str(Vec<&'a str>),
}

/// Appends the body of readings that passed [`encode`](super::encode)'s checks.
pub(super) fn write(readings: &[(u64, ReadingRecord)], summary: &BlockSummary, out: &mut Vec<u8>) {
    let ints: Vec<i64> = readings
        .iter()
        .map(|(o, _)| o.wrapping_sub(summary.first_offset) as i64)
        .collect();
    put_ints(out, &ints);
    let ints: Vec<i64> = readings
        .iter()
        .map(|(_, r)| r.timestamp_ms.wrapping_sub(summary.min_timestamp_ms) as i64)
        .collect();
    put_ints(out, &ints);
    let ints: Vec<i64> = readings.iter().map(|(_, r)| i64::from(r.seq)).collect();
    put_ints(out, &ints);

    let mut i = 0;
    while let Some((_, first)) = readings.get(i) {
        let run = readings[i..]
            .iter()
            .take_while(|(_, r)| r.origin == first.origin)
            .count();
        match first.origin {
            SeqOrigin::Device => out.push(ORIGIN_DEVICE),
            SeqOrigin::Boot(boot) => {
                out.push(ORIGIN_BOOT);
                put_varint(out, u64::from(boot));
            }
            SeqOrigin::Hub => out.push(ORIGIN_HUB),
        }
        put_varint(out, run as u64);
        i += run;
    }

    let mut shapes: Vec<Vec<(u32, u8)>> = Vec::new();
    let mut known: HashMap<Vec<(u32, u8)>, usize> = HashMap::new();
    let mut shape_of = Vec::with_capacity(readings.len());
    let mut columns: BTreeMap<(u32, u8), Gathered> = BTreeMap::new();
    let mut shape = Vec::new();
    let mut last = usize::MAX;
    for (_, r) in readings {
        shape.clear();
        shape.extend(r.metrics.iter().map(|(id, v)| (*id, type_of(v))));
        // Most readings have the shape of the one before.
        if shapes.get(last) != Some(&shape) {
            last = *known.entry(shape.clone()).or_insert_with(|| {
                shapes.push(shape.clone());
                shapes.len() - 1
            });
        }
        shape_of.push(last as i64);
        for (id, value) in &r.metrics {
            let column = columns
                .entry((*id, type_of(value)))
                .or_insert_with(|| match value {
                    OwnedValue::F64(_) => Gathered::F64(Vec::new()),
                    OwnedValue::I64(_) => Gathered::I64(Vec::new()),
                    OwnedValue::Bool(_) => Gathered::Bool(Vec::new()),
                    OwnedValue::Str(_) => Gathered::Str(Vec::new()),
                });
            match (column, value) {
                (Gathered::F64(c), OwnedValue::F64(x)) => c.push(*x),
                (Gathered::I64(c), OwnedValue::I64(x)) => c.push(*x),
                (Gathered::Bool(c), OwnedValue::Bool(x)) => c.push(*x),
                (Gathered::Str(c), OwnedValue::Str(x)) => c.push(x),
                // The key holds the type, so the column's is the value's.
                _ => {}
            }
        }
    }
    put_varint(out, shapes.len() as u64);
    for shape in &shapes {
        put_varint(out, shape.len() as u64);
        for &(id, t) in shape {
            put_varint(out, u64::from(id) << 2 | u64::from(t));
        }
    }
    put_ints(out, &shape_of);

    for column in columns.values() {
        match column {
            Gathered::F64(v) => put_floats(out, v),
            Gathered::I64(v) => put_ints(out, v),
            Gathered::Bool(v) => put_bools(out, v),
            Gathered::Str(v) => put_strings(out, v),
        }
    }
}

/// A column decoded.
enum Column {
    F64(Vec<f64>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
    Str(Strings),
}

impl Column {
    /// Value `i`, which the caller keeps within [`Column::len`] (past it: a placeholder, and
    /// the caller's count of values taken tells).
    #[inline]
    fn value(&self, i: usize) -> OwnedValue {
        // Built in place in each arm: through an `Option<OwnedValue>` the release build
        // copied values across a misaligned stack slot, a third of the decoding time.
        match self {
            Column::F64(v) => OwnedValue::F64(v.get(i).copied().unwrap_or_default()),
            Column::I64(v) => OwnedValue::I64(v.get(i).copied().unwrap_or_default()),
            Column::Bool(v) => OwnedValue::Bool(v.get(i).copied().unwrap_or_default()),
            Column::Str(s) => OwnedValue::Str(
                s.indices
                    .get(i)
                    .and_then(|&j| s.dict.get(j as usize))
                    .cloned()
                    .unwrap_or_default(),
            ),
        }
    }

    fn len(&self) -> usize {
        match self {
            Column::F64(v) => v.len(),
            Column::I64(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Str(s) => s.indices.len(),
        }
    }
}

/// The readings of a body, checked against its header.
/// A block's columns, decoded and checked against its header: what readings are assembled from.
struct Decoded<'h> {
    h: &'h BlockSummary,
    offsets: Vec<i64>,
    timestamps: Vec<i64>,
    seqs: Vec<i64>,
    origins: Vec<SeqOrigin>,
    shapes: Shapes,
    columns: Vec<Column>,
    slots: Slots,
}

fn decoded<'h>(h: &'h BlockSummary, body: &[u8]) -> Result<Decoded<'h>, BlockError> {
    let n = h.readings;
    let mut r = Reader::new(body, "offsets");
    let mut offsets = Vec::new();
    get_ints(&mut r, n, &mut offsets)?;
    let mut prev = None;
    for o in &mut offsets {
        let offset = h.first_offset.wrapping_add(*o as u64);
        if prev.is_some_and(|p| offset <= p) {
            return Err(r.corrupt("offsets not ascending"));
        }
        prev = Some(offset);
        *o = offset as i64;
    }
    if offsets.first().map(|&o| o as u64) != Some(h.first_offset) || prev != Some(h.last_offset) {
        return Err(r.corrupt("offsets not those of the header"));
    }

    r.section("timestamps");
    let mut timestamps = Vec::new();
    get_ints(&mut r, n, &mut timestamps)?;
    let (mut lo, mut hi) = (u64::MAX, 0);
    for t in &mut timestamps {
        let ts = h.min_timestamp_ms.wrapping_add(*t as u64);
        lo = lo.min(ts);
        hi = hi.max(ts);
        *t = ts as i64;
    }
    if (lo, hi) != (h.min_timestamp_ms, h.max_timestamp_ms) {
        return Err(r.corrupt("timestamps not those of the header"));
    }

    r.section("seqs");
    let mut seqs = Vec::new();
    get_ints(&mut r, n, &mut seqs)?;
    if seqs.iter().any(|&s| u32::try_from(s).is_err()) {
        return Err(r.corrupt("a seq over 32 bits"));
    }

    let origins = read_origins(&mut r, n)?;
    let shapes = read_shapes(&mut r, n)?;
    let (columns, slots) = read_columns(&mut r, h, &shapes)?;
    if r.remaining() != 0 {
        return Err(r.corrupt("bytes after the last column"));
    }
    Ok(Decoded {
        h,
        offsets,
        timestamps,
        seqs,
        origins,
        shapes,
        columns,
        slots,
    })
}

fn corrupt(what: &'static str) -> BlockError {
    BlockError::Corrupt {
        section: "columns",
        what,
    }
}

pub(super) fn read(h: &BlockSummary, body: &[u8]) -> Result<Vec<(u64, ReadingRecord)>, BlockError> {
    let Decoded {
        h,
        offsets,
        timestamps,
        seqs,
        origins,
        shapes,
        columns,
        slots,
    } = decoded(h, body)?;

    // Built with exact-size iterators, not pushes (see `get_ints`). Each column's length is
    // its count in the shapes, so every value taken exists; checked once at the end.
    let mut taken = vec![0usize; columns.len()];
    let mut unknown = false;
    let readings = offsets
        .iter()
        .zip(&timestamps)
        .zip(&seqs)
        .zip(origins)
        .zip(&shapes.of_reading)
        .map(|((((offset, ts), seq), origin), shape)| {
            let slots = slots.get(*shape as usize).map_or(&[][..], Vec::as_slice);
            let metrics = slots
                .iter()
                .map(|&(id, c)| match (columns.get(c), taken.get_mut(c)) {
                    (Some(column), Some(i)) => {
                        *i += 1;
                        (id, column.value(*i - 1))
                    }
                    _ => {
                        unknown = true;
                        (id, OwnedValue::Bool(false))
                    }
                })
                .collect();
            let record = ReadingRecord {
                device: h.device,
                seq: *seq as u32,
                timestamp_ms: *ts as u64,
                metrics,
                origin,
            };
            (*offset as u64, record)
        })
        .collect();
    if unknown || columns.iter().zip(&taken).any(|(c, &n)| c.len() != n) {
        return Err(corrupt("a column's length not its shapes' count"));
    }
    Ok(readings)
}

/// The values of `metric` (its first in each reading that has it), with each reading's offset
/// and timestamp, in offset order: what a query of one metric needs, without building a record
/// per reading.
pub(super) fn read_metric(
    h: &BlockSummary,
    body: &[u8],
    metric: u32,
) -> Result<Vec<(u64, u64, OwnedValue)>, BlockError> {
    let d = decoded(h, body)?;
    // Only the columns of `metric` are counted: every other column is some other metric's.
    let mut taken = vec![0usize; d.columns.len()];
    let mut values = Vec::new();
    for ((offset, ts), shape) in d
        .offsets
        .iter()
        .zip(&d.timestamps)
        .zip(&d.shapes.of_reading)
    {
        let slots = d.slots.get(*shape as usize).map_or(&[][..], Vec::as_slice);
        let mut found = false;
        for &(id, c) in slots {
            if id != metric {
                continue;
            }
            let (Some(column), Some(i)) = (d.columns.get(c), taken.get_mut(c)) else {
                return Err(corrupt("a slot past the columns"));
            };
            if *i >= column.len() {
                return Err(corrupt("a column's length not its shapes' count"));
            }
            if !found {
                values.push((*offset as u64, *ts as u64, column.value(*i)));
                found = true;
            }
            *i += 1;
        }
    }
    Ok(values)
}

fn read_origins(r: &mut Reader, n: usize) -> Result<Vec<SeqOrigin>, BlockError> {
    r.section("origins");
    let mut origins = Vec::with_capacity(n);
    while origins.len() < n {
        let origin = match r.byte()? {
            ORIGIN_DEVICE => SeqOrigin::Device,
            ORIGIN_BOOT => SeqOrigin::Boot(r.varint_u32("a boot over 32 bits")?),
            ORIGIN_HUB => SeqOrigin::Hub,
            _ => return Err(r.corrupt("an unknown origin")),
        };
        let run = r.count(n - origins.len(), "a run of origins past the readings")?;
        if run == 0 {
            return Err(r.corrupt("an empty run of origins"));
        }
        origins.resize(origins.len() + run, origin);
    }
    Ok(origins)
}

/// The shapes of a block's readings: each shape the (metric id, type) of a reading's metrics
/// in order. Every shape is some reading's, every reading's number a shape's, and their
/// values in all are within [`MAX_BLOCK_VALUES`].
struct Shapes {
    list: Vec<Vec<(u32, u8)>>,
    /// Each reading's shape number.
    of_reading: Vec<i64>,
    /// How many readings have each shape.
    uses: Vec<usize>,
}

/// Each shape's slots as (metric id, column number).
type Slots = Vec<Vec<(u32, usize)>>;

fn read_shapes(r: &mut Reader, n: usize) -> Result<Shapes, BlockError> {
    r.section("shapes");
    // A shape takes a byte at least, and is some reading's.
    let count = r.count(n.min(r.remaining()), "more shapes than readings")?;
    let mut shapes = Vec::with_capacity(count);
    // As every shape is some reading's, their slots are at most the block's values.
    let mut slots_left = MAX_BLOCK_VALUES;
    for _ in 0..count {
        // A slot takes a byte at least.
        let len = r.count(
            slots_left.min(r.remaining()),
            "shapes longer than the limit of values",
        )?;
        slots_left -= len;
        let mut shape = Vec::with_capacity(len);
        for _ in 0..len {
            let slot = r.varint()?;
            let id = u32::try_from(slot >> 2).map_err(|_| r.corrupt("a metric over 32 bits"))?;
            shape.push((id, (slot & 3) as u8));
        }
        shapes.push(shape);
    }

    r.section("shape of each reading");
    let mut of_reading = Vec::new();
    get_ints(r, n, &mut of_reading)?;
    let mut uses = vec![0usize; shapes.len()];
    for &s in &of_reading {
        let u = usize::try_from(s)
            .ok()
            .and_then(|s| uses.get_mut(s))
            .ok_or_else(|| r.corrupt("a shape number past the shapes"))?;
        *u += 1;
    }
    let mut total = 0usize;
    for (shape, &u) in shapes.iter().zip(&uses) {
        if u == 0 {
            return Err(r.corrupt("a shape no reading has"));
        }
        total = total.saturating_add(u.saturating_mul(shape.len()));
    }
    if total > MAX_BLOCK_VALUES {
        return Err(r.corrupt("more values than the limit"));
    }
    Ok(Shapes {
        list: shapes,
        of_reading,
        uses,
    })
}

/// The columns, in (metric id, type) order, each as long as the shapes say, checked against
/// the header's counts; and each shape's slots as (metric id, column number).
fn read_columns(
    r: &mut Reader,
    h: &BlockSummary,
    shapes: &Shapes,
) -> Result<(Vec<Column>, Slots), BlockError> {
    r.section("columns");
    // Each key's count of values, then its column's number: its rank in key order.
    let mut keys: BTreeMap<(u32, u8), (usize, usize)> = BTreeMap::new();
    for (shape, &u) in shapes.list.iter().zip(&shapes.uses) {
        for &key in shape {
            keys.entry(key).or_default().0 += u;
        }
    }
    for (i, (_, number)) in keys.values_mut().enumerate() {
        *number = i;
    }
    let slots = shapes
        .list
        .iter()
        .map(|s| {
            s.iter()
                .map(|&(id, t)| (id, keys.get(&(id, t)).map_or(usize::MAX, |k| k.1)))
                .collect()
        })
        .collect();

    let mut columns = Vec::with_capacity(keys.len());
    let mut ints = Vec::new();
    let mut budget = MAX_BLOCK_STRING_BYTES;
    // Per metric: (id, values, booleans, true ones), as the header counts them.
    let mut tallies: Vec<(u32, u64, u64, u64)> = Vec::new();
    for (&(id, t), &(count, _)) in &keys {
        let column = match t {
            TYPE_F64 => {
                let mut v = Vec::new();
                get_floats(r, count, &mut v, &mut ints)?;
                Column::F64(v)
            }
            TYPE_I64 => {
                let mut v = Vec::new();
                get_ints(r, count, &mut v)?;
                Column::I64(v)
            }
            TYPE_BOOL => {
                let mut v = Vec::new();
                get_bools(r, count, &mut v)?;
                Column::Bool(v)
            }
            _ => Column::Str(get_strings(r, count, MAX_STRING_BYTES, &mut budget)?),
        };
        let (bools, trues) = match &column {
            Column::Bool(v) => (v.len() as u64, v.iter().filter(|&&b| b).count() as u64),
            _ => (0, 0),
        };
        match tallies.last_mut() {
            Some(tally) if tally.0 == id => {
                tally.1 += count as u64;
                tally.2 += bools;
                tally.3 += trues;
            }
            _ => tallies.push((id, count as u64, bools, trues)),
        }
        columns.push(column);
    }
    let header = h
        .metrics
        .iter()
        .map(|m| (m.metric, m.count, m.bools, m.trues));
    if !header.eq(tallies) {
        return Err(r.corrupt("values not those of the header"));
    }
    Ok((columns, slots))
}
