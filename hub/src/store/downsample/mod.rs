//! Downsampling: one metric of one device folded into fixed-width time buckets.
//!
//! Inputs: the values of the metric in the order the device time index is scanned (oldest or
//! newest first), fed one at a time to a [`Downsampler`]. Outputs: a [`BucketPage`] of non-empty
//! buckets in scan order and, when more follow, where the next page resumes.
//!
//! Invariants:
//! - a bucket starts at a multiple of its width since the unix epoch (UTC): a reading at `ts`
//!   falls into the bucket starting at `ts - ts % width`;
//! - only the bucket being filled is held in memory besides the finished ones of the page, so
//!   a page costs `limit` buckets whatever the number of readings behind it;
//! - `first` and `last` are by time (then hub offset) in either scan order, so a bucket's content
//!   does not depend on `order`;
//! - numbers (integers and floats) aggregate as f64 and booleans as 0 or 1; strings count only for
//!   `count`, `first` and `last`, and a bucket with no numeric value has no `avg`/`min`/`max`/`sum`.

#[cfg(test)]
mod tests;

use std::ops::ControlFlow;

use device_protocol::OwnedValue;

use super::Order;

/// Most buckets a downsampled query may span, so a tiny bucket over a long range is refused
/// before any work is done.
pub const MAX_BUCKETS_IN_RANGE: u64 = 100_000;
/// The narrowest bucket.
pub const MIN_BUCKET_MS: u64 = 1_000;

/// An aggregate of the values in one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agg {
    /// Mean of the numeric values.
    Avg,
    /// Smallest numeric value.
    Min,
    /// Largest numeric value.
    Max,
    /// Number of values, of any type.
    Count,
    /// The earliest value, of any type.
    First,
    /// The latest value, of any type.
    Last,
    /// Sum of the numeric values.
    Sum,
}

impl Agg {
    /// Every aggregate, in the order the API documents them.
    pub const ALL: [Agg; 7] = [
        Agg::Avg,
        Agg::Min,
        Agg::Max,
        Agg::Count,
        Agg::First,
        Agg::Last,
        Agg::Sum,
    ];

    /// The name the API uses.
    pub fn name(self) -> &'static str {
        match self {
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Count => "count",
            Agg::First => "first",
            Agg::Last => "last",
            Agg::Sum => "sum",
        }
    }

    /// The aggregate called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Agg> {
        Agg::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// The value of one aggregate of a bucket.
#[derive(Debug, Clone, PartialEq)]
pub enum AggValue {
    /// A count.
    Count(u64),
    /// A numeric aggregate; `None` when the bucket holds no numeric value.
    Number(Option<f64>),
    /// A value as the device sent it (`first`, `last`).
    Value(Option<OwnedValue>),
}

/// One non-empty bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Start of the bucket, unix ms, a multiple of the width.
    pub start_ms: u64,
    /// Values in the bucket, of any type.
    pub count: u64,
    /// Numeric (and boolean) values in the bucket.
    pub numeric: u64,
    /// Their sum.
    pub sum: f64,
    /// Their minimum (meaningless while `numeric` is 0).
    pub min: f64,
    /// Their maximum (meaningless while `numeric` is 0).
    pub max: f64,
    /// The earliest value.
    pub first: Option<OwnedValue>,
    /// The latest value.
    pub last: Option<OwnedValue>,
}

impl Bucket {
    /// An empty bucket starting at `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Bucket {
            start_ms,
            count: 0,
            numeric: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            first: None,
            last: None,
        }
    }

    /// Adds `value`, met in scan `order`.
    pub fn add(&mut self, value: &OwnedValue, order: Order) {
        self.count += 1;
        if let Some(x) = numeric(value) {
            self.numeric += 1;
            self.sum += x;
            // f64::min/max ignore a NaN operand, so one NaN does not poison the bucket.
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        // Scanning oldest first, the first value met is the bucket's first; newest first, it is
        // the bucket's last. Either way the other end is overwritten until the bucket closes.
        let (kept, replaced) = match order {
            Order::Oldest => (&mut self.first, &mut self.last),
            Order::Newest => (&mut self.last, &mut self.first),
        };
        if kept.is_none() {
            *kept = Some(value.clone());
        }
        *replaced = Some(value.clone());
    }

    /// The value of `agg`.
    pub fn get(&self, agg: Agg) -> AggValue {
        let has_numbers = self.numeric > 0;
        let number = |x: f64| AggValue::Number(has_numbers.then_some(x));
        match agg {
            Agg::Count => AggValue::Count(self.count),
            Agg::Sum => number(self.sum),
            Agg::Avg => number(self.sum / self.numeric.max(1) as f64),
            Agg::Min => number(self.min),
            Agg::Max => number(self.max),
            Agg::First => AggValue::Value(self.first.clone()),
            Agg::Last => AggValue::Value(self.last.clone()),
        }
    }
}

/// A value as a number for the numeric aggregates: integers and floats as f64 (integers beyond
/// 2^53 lose precision), booleans as 0 or 1, strings not at all.
pub fn numeric(value: &OwnedValue) -> Option<f64> {
    match value {
        OwnedValue::F64(x) => Some(*x),
        OwnedValue::I64(i) => Some(*i as f64),
        OwnedValue::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        OwnedValue::Str(_) => None,
    }
}

/// The start of the bucket of width `width_ms` holding `ts_ms`.
pub fn bucket_start(ts_ms: u64, width_ms: u64) -> u64 {
    ts_ms - ts_ms % width_ms.max(1)
}

/// How many buckets of `width_ms` the range `[from_ms, to_ms)` touches.
pub fn buckets_in_range(from_ms: u64, to_ms: u64, width_ms: u64) -> u64 {
    if to_ms <= from_ms {
        return 0;
    }
    let width = width_ms.max(1);
    (bucket_start(to_ms - 1, width) - bucket_start(from_ms, width)) / width + 1
}

/// A downsampled query over one device's time index.
#[derive(Debug, Clone)]
pub struct DownsampleQuery {
    /// Device id.
    pub device: String,
    /// The metric to aggregate.
    pub metric: String,
    /// Inclusive lower time bound.
    pub from_ms: Option<u64>,
    /// Exclusive upper time bound.
    pub to_ms: Option<u64>,
    /// Bucket width, at least [`MIN_BUCKET_MS`].
    pub bucket_ms: u64,
    /// Order of the buckets.
    pub order: Order,
    /// Most buckets to return.
    pub limit: usize,
    /// Continue after the bucket starting here (from the previous page).
    pub after: Option<u64>,
}

impl DownsampleQuery {
    /// The time range left to scan, `[from, to)` (`None` for `to`: no upper bound), once the
    /// cursor is taken into account; `None` when nothing is left.
    pub fn scan_range(&self) -> Option<(u64, Option<u64>)> {
        let width = self.bucket_ms.max(1);
        let mut from = self.from_ms.unwrap_or(0);
        let mut to = self.to_ms;
        if let Some(after) = self.after {
            let start = bucket_start(after, width);
            match self.order {
                // Past the end of the last bucket returned (nothing is past the end of time).
                Order::Oldest => from = from.max(start.checked_add(width)?),
                // Before its start.
                Order::Newest => to = Some(to.map_or(start, |t| t.min(start))),
            }
        }
        match to {
            Some(t) if t <= from => None,
            _ => Some((from, to)),
        }
    }
}

/// One page of buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketPage {
    /// Non-empty buckets in the query's order.
    pub buckets: Vec<Bucket>,
    /// Start of the last bucket returned, when more buckets follow.
    pub next: Option<u64>,
}

/// Folds values met in scan order into a page of buckets.
#[derive(Debug)]
pub struct Downsampler {
    width_ms: u64,
    order: Order,
    limit: usize,
    current: Option<Bucket>,
    done: Vec<Bucket>,
    more: bool,
}

impl Downsampler {
    /// A downsampler for buckets of `width_ms`, values met in `order`, pages of `limit` buckets.
    pub fn new(width_ms: u64, order: Order, limit: usize) -> Self {
        let limit = limit.max(1);
        Downsampler {
            width_ms: width_ms.max(1),
            order,
            limit,
            current: None,
            // Bounded by the page size the API allows, not by the data.
            done: Vec::with_capacity(limit.min(1024)),
            more: false,
        }
    }

    /// Adds a value at `ts_ms`. `Break` means the page is full and this value belongs to the
    /// next page: stop scanning.
    pub fn push(&mut self, ts_ms: u64, value: &OwnedValue) -> ControlFlow<()> {
        let start = bucket_start(ts_ms, self.width_ms);
        if let Some(bucket) = self.current.as_mut()
            && bucket.start_ms == start
        {
            bucket.add(value, self.order);
            return ControlFlow::Continue(());
        }
        if let Some(finished) = self.current.take() {
            self.done.push(finished);
        }
        if self.done.len() >= self.limit {
            self.more = true;
            return ControlFlow::Break(());
        }
        let mut bucket = Bucket::new(start);
        bucket.add(value, self.order);
        self.current = Some(bucket);
        ControlFlow::Continue(())
    }

    /// The page: every bucket closed so far and the one being filled.
    pub fn finish(mut self) -> BucketPage {
        if let Some(last) = self.current.take() {
            self.done.push(last);
        }
        BucketPage::of(self.done, self.more)
    }
}

impl BucketPage {
    /// A page of `buckets`, continuing after the last of them when `more` may follow.
    pub(super) fn of(buckets: Vec<Bucket>, more: bool) -> Self {
        let next = if more {
            buckets.last().map(|b| b.start_ms)
        } else {
            None
        };
        BucketPage { buckets, next }
    }
}
