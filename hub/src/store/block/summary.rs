//! The block's header: a [`BlockSummary`] of its readings, written before the columns (and
//! outside their compression) so [`summarize`](super::summarize) reads it without touching them.
//!
//! Layout, varints unless said: device; reading count; first offset; last offset minus first;
//! lowest timestamp; highest minus lowest; metric count; then per metric, ids ascending: the id
//! (the first as is, then the gap to the previous minus one), values, booleans, true booleans,
//! numeric values, and when there are numeric values their min, max and sum as little-endian
//! f64 bits.

use std::collections::BTreeMap;

use device_protocol::OwnedValue;

use super::bits::{Reader, put_varint};
use super::{BlockError, MAX_BLOCK_READINGS, MAX_BLOCK_VALUES};
use crate::store::records::ReadingRecord;

/// What a block holds, from its header alone.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSummary {
    /// The device of every reading.
    pub device: u32,
    /// How many readings (1..=[`MAX_BLOCK_READINGS`]).
    pub readings: usize,
    /// The offset of the first reading (the lowest).
    pub first_offset: u64,
    /// The offset of the last reading (the highest).
    pub last_offset: u64,
    /// The lowest timestamp (devices may send them out of order, so not the first's).
    pub min_timestamp_ms: u64,
    /// The highest timestamp.
    pub max_timestamp_ms: u64,
    /// Each metric the readings hold, ids ascending.
    pub metrics: Vec<MetricSummary>,
}

/// One metric's values in a block.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSummary {
    /// The metric number.
    pub metric: u32,
    /// Its values, of any type (a reading may hold a metric more than once).
    pub count: u64,
    /// How many of them are booleans.
    pub bools: u64,
    /// How many of those are true.
    pub trues: u64,
    /// Its finite floats and integers; `None` when it has none.
    pub numeric: Option<NumericSummary>,
}

/// Figures of a metric's finite floats and integers (integers as f64, so those beyond 2^53
/// lose precision, as in downsampling).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumericSummary {
    /// How many (at least one).
    pub count: u64,
    /// The lowest: the first met of equal values (so of 0.0 and -0.0, whichever came first).
    pub min: f64,
    /// The highest, the same way.
    pub max: f64,
    /// Their sum, added in reading order from 0.0 (so it may be ±infinity, never NaN).
    pub sum: f64,
}

impl NumericSummary {
    fn add(this: &mut Option<NumericSummary>, x: f64) {
        match this {
            None => {
                *this = Some(NumericSummary {
                    count: 1,
                    min: x,
                    max: x,
                    sum: 0.0 + x,
                })
            }
            Some(s) => {
                s.count += 1;
                if x < s.min {
                    s.min = x;
                }
                if x > s.max {
                    s.max = x;
                }
                s.sum += x;
            }
        }
    }
}

impl BlockSummary {
    /// The summary of readings that passed [`encode`](super::encode)'s checks (one device, at
    /// least one reading, offsets ascending).
    pub(super) fn of(readings: &[(u64, ReadingRecord)]) -> Self {
        let mut metrics: BTreeMap<u32, MetricSummary> = BTreeMap::new();
        let (mut min_ts, mut max_ts) = (u64::MAX, 0);
        for (_, r) in readings {
            min_ts = min_ts.min(r.timestamp_ms);
            max_ts = max_ts.max(r.timestamp_ms);
            for (id, value) in &r.metrics {
                let m = metrics.entry(*id).or_insert(MetricSummary {
                    metric: *id,
                    count: 0,
                    bools: 0,
                    trues: 0,
                    numeric: None,
                });
                m.count += 1;
                match value {
                    OwnedValue::F64(x) if x.is_finite() => NumericSummary::add(&mut m.numeric, *x),
                    OwnedValue::I64(i) => NumericSummary::add(&mut m.numeric, *i as f64),
                    OwnedValue::Bool(b) => {
                        m.bools += 1;
                        m.trues += u64::from(*b);
                    }
                    OwnedValue::F64(_) | OwnedValue::Str(_) => {}
                }
            }
        }
        BlockSummary {
            device: readings.first().map_or(0, |(_, r)| r.device),
            readings: readings.len(),
            first_offset: readings.first().map_or(0, |(o, _)| *o),
            last_offset: readings.last().map_or(0, |(o, _)| *o),
            min_timestamp_ms: min_ts,
            max_timestamp_ms: max_ts,
            metrics: metrics.into_values().collect(),
        }
    }

    pub(super) fn write(&self, out: &mut Vec<u8>) {
        put_varint(out, u64::from(self.device));
        put_varint(out, self.readings as u64);
        put_varint(out, self.first_offset);
        put_varint(out, self.last_offset - self.first_offset);
        put_varint(out, self.min_timestamp_ms);
        put_varint(out, self.max_timestamp_ms - self.min_timestamp_ms);
        put_varint(out, self.metrics.len() as u64);
        let mut next = 0u64;
        for m in &self.metrics {
            put_varint(out, u64::from(m.metric) - next);
            next = u64::from(m.metric) + 1;
            put_varint(out, m.count);
            put_varint(out, m.bools);
            put_varint(out, m.trues);
            match &m.numeric {
                None => put_varint(out, 0),
                Some(n) => {
                    put_varint(out, n.count);
                    for x in [n.min, n.max, n.sum] {
                        out.extend_from_slice(&x.to_bits().to_le_bytes());
                    }
                }
            }
        }
    }

    /// Reads a header, checking what it says against the caps and itself.
    pub(super) fn read(r: &mut Reader) -> Result<Self, BlockError> {
        r.section("header");
        let device = r.varint_u32("a device number over 32 bits")?;
        let readings = r.count(MAX_BLOCK_READINGS, "more readings than the limit")?;
        if readings == 0 {
            return Err(r.corrupt("no readings"));
        }
        let first_offset = r.varint()?;
        let last_offset = first_offset
            .checked_add(r.varint()?)
            .ok_or_else(|| r.corrupt("the last offset past 2^64"))?;
        let min_timestamp_ms = r.varint()?;
        let max_timestamp_ms = min_timestamp_ms
            .checked_add(r.varint()?)
            .ok_or_else(|| r.corrupt("the highest timestamp past 2^64"))?;
        // A metric takes 5 bytes at least.
        let count = r.count(
            MAX_BLOCK_VALUES.min(r.remaining() / 5),
            "more metrics than the bytes left",
        )?;
        let mut metrics = Vec::with_capacity(count);
        let mut next = 0u64;
        let mut values = 0u64;
        for _ in 0..count {
            let metric = next
                .checked_add(r.varint()?)
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| r.corrupt("a metric number over 32 bits"))?;
            next = u64::from(metric) + 1;
            let count = r.varint()?;
            values = values.saturating_add(count);
            if values > MAX_BLOCK_VALUES as u64 {
                return Err(r.corrupt("more values than the limit"));
            }
            let bools = r.varint()?;
            let trues = r.varint()?;
            let numeric = r.varint()?;
            if count == 0 || bools > count || trues > bools || numeric > count - bools {
                return Err(r.corrupt("a metric's counts disagree"));
            }
            let numeric = if numeric == 0 {
                None
            } else {
                Some(NumericSummary {
                    count: numeric,
                    min: f64::from_bits(r.u64_le()?),
                    max: f64::from_bits(r.u64_le()?),
                    sum: f64::from_bits(r.u64_le()?),
                })
            };
            metrics.push(MetricSummary {
                metric,
                count,
                bools,
                trues,
                numeric,
            });
        }
        Ok(BlockSummary {
            device,
            readings,
            first_offset,
            last_offset,
            min_timestamp_ms,
            max_timestamp_ms,
            metrics,
        })
    }
}
