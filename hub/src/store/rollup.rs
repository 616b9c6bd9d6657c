//! Per-minute rollups: every metric of every device folded, minute by minute, into a
//! [`RollupRecord`] kept in [`Table::Rollups`], so a downsampled query over a day reads about
//! 1,440 rows instead of every reading of the day.
//!
//! Inputs: the readings a batch stores (from [`Store::apply`](super::Store::apply)), the readings
//! retention deletes, and downsampled queries whose bucket width is a whole number of minutes.
//! Outputs: rollup rows in the same commits as the readings they fold, and pages of buckets.
//!
//! Invariants:
//! - a row holds exactly the values of its (device, metric, minute) among the readings held, from
//!   the minute the device's rollups begin (see below): appends merge into it in the batch that
//!   stores the readings, and retention recomputes it from the readings left in the commit that
//!   deletes some of them; a row never exists empty;
//! - `first` and `last` are by (timestamp, offset), as the device time index orders readings, so
//!   merging rows in any order gives the raw path's values;
//! - buckets of a whole number of minutes start at whole minutes (they start at multiples of
//!   their width since the epoch), so a bucket is the merge of the rows of its whole minutes,
//!   and of raw readings only where the query's range cuts a minute.
//!
//! Stores written before rollups existed (schema version 1) are not rebuilt: on upgrade, each
//! device gets a marker in `Meta` (`rollups_from/<device>`) at the minute after its newest
//! reading, and queries read raw readings before that. This is one index seek per device at
//! open, whatever the store holds, where a rebuild would read every reading (minutes for 10
//! million readings on a small board) before the hub could take any; the slow part of a query
//! over old data ages out with retention. The version is raised so an older hub, which would
//! store readings without their rollups, refuses the file.
//!
//! Sums are merged minute by minute, so `sum` and `avg` may differ from the raw path's in the last
//! bits (float addition is not associative; the raw path itself differs between orders); every
//! other aggregate is identical.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Bound, ControlFlow};

use device_protocol::OwnedValue;

use super::downsample::{Bucket, BucketPage, DownsampleQuery, bucket_start, numeric};
use super::engine::{Direction, KeyRange, Snapshot, Table, WriteBatch};
use super::records::{self, ReadingRecord, RollupPoint, RollupRecord};
use super::{Order, StoreError};

/// Width of a rollup row.
pub const MINUTE_MS: u64 = 60_000;

/// The minute since the epoch holding `timestamp_ms`.
pub fn minute_of(timestamp_ms: u64) -> u64 {
    timestamp_ms / MINUTE_MS
}

impl RollupRecord {
    /// The rollup of one value.
    pub fn of(timestamp_ms: u64, offset: u64, value: &OwnedValue) -> Self {
        let point = RollupPoint {
            timestamp_ms,
            offset,
            value: value.clone(),
        };
        let x = numeric(value);
        RollupRecord {
            count: 1,
            numeric: u64::from(x.is_some()),
            // 0.0 + x, as the raw path's sum starts (it turns -0.0 into 0.0).
            sum: 0.0 + x.unwrap_or(0.0),
            // f64::min/max ignore a NaN operand, as the raw path does.
            min: f64::INFINITY.min(x.unwrap_or(f64::INFINITY)),
            max: f64::NEG_INFINITY.max(x.unwrap_or(f64::NEG_INFINITY)),
            first: point.clone(),
            last: point,
            partial: false,
        }
    }

    /// Adds one value; cheaper than merging [`RollupRecord::of`] it, as the value is cloned only
    /// when it becomes an end.
    pub fn add(&mut self, timestamp_ms: u64, offset: u64, value: &OwnedValue) {
        self.count += 1;
        if let Some(x) = numeric(value) {
            self.numeric += 1;
            self.sum += x;
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        let key = (timestamp_ms, offset);
        if key < (self.first.timestamp_ms, self.first.offset) {
            self.first = RollupPoint {
                timestamp_ms,
                offset,
                value: value.clone(),
            };
        }
        if key > (self.last.timestamp_ms, self.last.offset) {
            self.last = RollupPoint {
                timestamp_ms,
                offset,
                value: value.clone(),
            };
        }
    }

    /// Folds `other` in, as if its values had been added one by one (up to the order of the
    /// sum's additions).
    pub fn merge(&mut self, other: RollupRecord) {
        self.partial |= other.partial;
        self.count += other.count;
        self.numeric += other.numeric;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if (other.first.timestamp_ms, other.first.offset)
            < (self.first.timestamp_ms, self.first.offset)
        {
            self.first = other.first;
        }
        if (other.last.timestamp_ms, other.last.offset) > (self.last.timestamp_ms, self.last.offset)
        {
            self.last = other.last;
        }
    }

    /// The bucket starting at `start_ms` that holds exactly these values.
    pub fn into_bucket(self, start_ms: u64) -> Bucket {
        Bucket {
            start_ms,
            count: self.count,
            numeric: self.numeric,
            sum: self.sum,
            min: self.min,
            max: self.max,
            first: Some(self.first.value),
            last: Some(self.last.value),
        }
    }
}

/// Each metric of a reading with its first value: a repeated metric's later values are not
/// aggregated, as the raw path reads only the first.
pub fn first_values(
    metrics: &[(u32, OwnedValue)],
) -> impl Iterator<Item = (u32, &OwnedValue)> + '_ {
    metrics
        .iter()
        .enumerate()
        .filter(|(i, (metric, _))| !metrics[..*i].iter().any(|(m, _)| m == metric))
        .map(|(_, (metric, value))| (*metric, value))
}

/// The rollups of one write batch, grouped by (device, metric, minute) in memory so each group
/// costs one read and one write of its row, however many readings it holds.
#[derive(Debug, Default)]
pub(super) struct BatchRollups {
    groups: BTreeMap<(u32, u32, u64), RollupRecord>,
}

impl BatchRollups {
    /// Adds the value of `metric` of a reading the batch stores.
    pub(super) fn add(
        &mut self,
        device: u32,
        metric: u32,
        timestamp_ms: u64,
        offset: u64,
        value: &OwnedValue,
    ) {
        self.groups
            .entry((device, metric, minute_of(timestamp_ms)))
            .and_modify(|r| r.add(timestamp_ms, offset, value))
            .or_insert_with(|| RollupRecord::of(timestamp_ms, offset, value));
    }

    /// Merges every group into its row as `snap` holds it and adds the rows to `batch`. `snap`
    /// must be the view the batch is built on, with no other writer in between.
    pub(super) fn write_to(
        self,
        snap: &dyn Snapshot,
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        for ((device, metric, minute), group) in self.groups {
            let key = records::rollup_key(device, metric, minute);
            // Readings may arrive out of time order (backfill): the minute may already have a row.
            let row = match snap.get(Table::Rollups, &key)? {
                Some(bytes) => {
                    let mut row: RollupRecord = records::decode(&bytes, "rollup")?;
                    row.merge(group);
                    row
                }
                None => group,
            };
            batch.put(Table::Rollups, key, records::encode(&row)?);
        }
        Ok(())
    }
}

/// The rows the deletion of some readings touches: by (device, minute), the metrics.
#[derive(Debug, Default)]
pub(super) struct DeletedRollups {
    minutes: BTreeMap<(u32, u64), BTreeSet<u32>>,
}

impl DeletedRollups {
    /// Notes a reading about to be deleted.
    pub(super) fn note(&mut self, reading: &ReadingRecord) {
        let metrics = self
            .minutes
            .entry((reading.device, minute_of(reading.timestamp_ms)))
            .or_default();
        metrics.extend(reading.metrics.iter().map(|(m, _)| *m));
    }

    /// Adds to `batch` what becomes of the touched rows once the readings below `kept_from` are
    /// gone (deletes go oldest offset first): a minute left without readings of its device loses
    /// its rows; a minute that keeps some has its rows marked partial, and queries read its
    /// remaining readings instead. Costs one index scan per touched minute, up to its first
    /// reading kept, so a delete round reads no more than it deletes; recomputing the rows
    /// instead re-read every reading left in the minute at each round, which made retention
    /// quadratic for a busy device.
    ///
    /// `metrics_of` gives every metric a device has sent: an emptied minute loses the rows of all
    /// of them, as one marked partial in an earlier round may be of a metric not deleted now.
    pub(super) fn recompute(
        self,
        snap: &dyn Snapshot,
        kept_from: u64,
        metrics_of: impl Fn(u32) -> Vec<u32>,
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        for ((device, minute), metrics) in self.minutes {
            let start = minute.checked_mul(MINUTE_MS).ok_or_else(minute_overflow)?;
            let mut keeps_some = false;
            let _ = super::scan_device_time(
                snap,
                device,
                start,
                start.checked_add(MINUTE_MS),
                Direction::Forward,
                |_, offset| {
                    if offset < kept_from {
                        return Ok(ControlFlow::Continue(()));
                    }
                    keeps_some = true;
                    Ok(ControlFlow::Break(()))
                },
            )?;
            if !keeps_some {
                for metric in metrics.into_iter().chain(metrics_of(device)) {
                    batch.delete(Table::Rollups, records::rollup_key(device, metric, minute));
                }
                continue;
            }
            for metric in metrics {
                let key = records::rollup_key(device, metric, minute);
                let Some(bytes) = snap.get(Table::Rollups, &key)? else {
                    continue;
                };
                let mut row: RollupRecord = records::decode(&bytes, "rollup")?;
                if !row.partial {
                    row.partial = true;
                    batch.put(Table::Rollups, key, records::encode(&row)?);
                }
            }
        }
        Ok(())
    }
}

fn minute_overflow() -> StoreError {
    StoreError::Corrupt("rollup minute out of range".into())
}

/// Adds to `batch`, for each of `devices` holding readings in `snap`, the marker saying its
/// rollups begin at the minute after its newest reading; for a store written before rollups.
/// Returns how many devices were marked.
pub(super) fn mark_devices_without_rollups(
    snap: &dyn Snapshot,
    devices: impl IntoIterator<Item = u32>,
    batch: &mut WriteBatch,
) -> Result<usize, StoreError> {
    let mut marked = 0;
    for device in devices {
        let Some((_, newest)) = super::sealed::time_bounds(snap, device)? else {
            continue;
        };
        // No whole minute after the end of time: never use rollups for this device.
        let from = (minute_of(newest) + 1).saturating_mul(MINUTE_MS);
        batch.put(
            Table::Meta,
            records::rollups_from_key(device),
            from.to_be_bytes().to_vec(),
        );
        marked += 1;
    }
    Ok(marked)
}

/// Where `device`'s rollups begin: 0 for a device whose every reading was stored with rollups.
fn rollups_from(snap: &dyn Snapshot, device: u32) -> Result<u64, StoreError> {
    match snap.get(Table::Meta, &records::rollups_from_key(device))? {
        Some(bytes) => records::be_u64(&bytes, "rollups marker"),
        None => Ok(0),
    }
}

/// Whether a query with buckets of `bucket_ms` can be served from rollups.
pub fn serves(bucket_ms: u64) -> bool {
    bucket_ms > 0 && bucket_ms.is_multiple_of(MINUTE_MS)
}

/// Folds parts of buckets (rollup rows and single readings), met in the query's order, into a
/// page of buckets; the same paging as [`super::downsample::Downsampler`].
#[derive(Debug)]
struct RollupSampler {
    width_ms: u64,
    limit: usize,
    current: Option<(u64, RollupRecord)>,
    done: Vec<Bucket>,
    more: bool,
}

impl RollupSampler {
    fn new(width_ms: u64, limit: usize) -> Self {
        let limit = limit.max(1);
        RollupSampler {
            width_ms: width_ms.max(1),
            limit,
            current: None,
            // Bounded by the page size the API allows, not by the data.
            done: Vec::with_capacity(limit.min(1024)),
            more: false,
        }
    }

    /// Adds `part`, whose values lie in the bucket holding `ts_ms`. `Break` means the page is
    /// full and `part` belongs to the next page: stop scanning.
    fn push(&mut self, ts_ms: u64, part: RollupRecord) -> ControlFlow<()> {
        let start = bucket_start(ts_ms, self.width_ms);
        if let Some((current_start, bucket)) = self.current.as_mut()
            && *current_start == start
        {
            bucket.merge(part);
            return ControlFlow::Continue(());
        }
        if let Some((finished_start, finished)) = self.current.take() {
            self.done.push(finished.into_bucket(finished_start));
        }
        if self.done.len() >= self.limit {
            self.more = true;
            return ControlFlow::Break(());
        }
        self.current = Some((start, part));
        ControlFlow::Continue(())
    }

    fn finish(mut self) -> BucketPage {
        if let Some((start, last)) = self.current.take() {
            self.done.push(last.into_bucket(start));
        }
        BucketPage::of(self.done, self.more)
    }
}

/// A stretch of a query's time range and where its values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stretch {
    /// Readings in `[from, to)` (`None`: no end), one by one.
    Raw(u64, Option<u64>),
    /// Rollup rows of the whole minutes in `[from, to)`.
    Rows(u64, Option<u64>),
}

/// Splits `[from, to)` into the whole minutes rollups cover (from `covered_from` on) and the
/// raw stretches around them, oldest first.
fn stretches(from: u64, to: Option<u64>, covered_from: u64) -> Vec<Stretch> {
    let whole_from = from
        .max(covered_from)
        .div_ceil(MINUTE_MS)
        .checked_mul(MINUTE_MS);
    let whole_to = to.map(|t| t - t % MINUTE_MS);
    match whole_from {
        Some(a) if whole_to.is_none_or(|b| a < b) => {
            let mut all = vec![Stretch::Raw(from, Some(a)), Stretch::Rows(a, whole_to)];
            if let Some(b) = whole_to {
                all.push(Stretch::Raw(b, to));
            }
            all
        }
        _ => vec![Stretch::Raw(from, to)],
    }
}

/// A page of buckets of `metric` of `device` over `[from, to)`, the query's range once its cursor
/// is applied, built from rollup rows wherever they cover whole minutes. The query's bucket width
/// must be a whole number of minutes (see [`serves`]).
pub(super) fn downsample(
    snap: &dyn Snapshot,
    device: u32,
    metric: u32,
    query: &DownsampleQuery,
    from: u64,
    to: Option<u64>,
) -> Result<BucketPage, StoreError> {
    let mut sampler = RollupSampler::new(query.bucket_ms, query.limit);
    let mut parts = stretches(from, to, rollups_from(snap, device)?);
    let direction = match query.order {
        Order::Oldest => Direction::Forward,
        Order::Newest => {
            parts.reverse();
            Direction::Reverse
        }
    };
    for part in parts {
        let flow = match part {
            Stretch::Raw(lo, hi) => super::scan_metric_values(
                snap,
                device,
                metric,
                lo,
                hi,
                direction,
                |ts, offset, value| sampler.push(ts, RollupRecord::of(ts, offset, value)),
            )?,
            Stretch::Rows(lo, hi) => {
                let range = KeyRange {
                    start: Bound::Included(records::rollup_key(device, metric, minute_of(lo))),
                    end: match hi {
                        Some(hi) => {
                            Bound::Excluded(records::rollup_key(device, metric, minute_of(hi)))
                        }
                        None => Bound::Included(records::rollup_key(device, metric, u64::MAX)),
                    },
                };
                let mut failure = None;
                let mut flow = ControlFlow::Continue(());
                snap.scan(Table::Rollups, &range, direction, &mut |k, v| {
                    let row = records::split_rollup_key(k)
                        .and_then(|minute| minute.checked_mul(MINUTE_MS))
                        .ok_or_else(|| StoreError::Corrupt("rollup key".into()))
                        .and_then(|start| {
                            Ok((start, records::decode::<RollupRecord>(v, "rollup")?))
                        });
                    let row = row.and_then(|(start, row)| {
                        if !row.partial {
                            return Ok(sampler.push(start, row));
                        }
                        super::scan_metric_values(
                            snap,
                            device,
                            metric,
                            start,
                            start.checked_add(MINUTE_MS),
                            direction,
                            |ts, offset, value| {
                                sampler.push(ts, RollupRecord::of(ts, offset, value))
                            },
                        )
                    });
                    match row {
                        Ok(next) => {
                            flow = next;
                            flow
                        }
                        Err(e) => {
                            failure = Some(e);
                            ControlFlow::Break(())
                        }
                    }
                })?;
                if let Some(e) = failure {
                    return Err(e);
                }
                flow
            }
        };
        if flow.is_break() {
            break;
        }
    }
    Ok(sampler.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_splits_into_whole_minutes_and_raw_edges() {
        use Stretch::{Raw, Rows};
        let m = MINUTE_MS;
        // Cut minutes at both ends.
        assert_eq!(
            stretches(m + 5, Some(4 * m + 7), 0),
            vec![
                Raw(m + 5, Some(2 * m)),
                Rows(2 * m, Some(4 * m)),
                Raw(4 * m, Some(4 * m + 7))
            ]
        );
        // Aligned ends leave empty raw stretches; no end leaves none.
        assert_eq!(
            stretches(m, Some(3 * m), 0),
            vec![
                Raw(m, Some(m)),
                Rows(m, Some(3 * m)),
                Raw(3 * m, Some(3 * m))
            ]
        );
        assert_eq!(stretches(0, None, 0), vec![Raw(0, Some(0)), Rows(0, None)]);
        // Inside one minute: raw only.
        assert_eq!(
            stretches(m + 1, Some(2 * m - 1), 0),
            vec![Raw(m + 1, Some(2 * m - 1))]
        );
        assert_eq!(
            stretches(m + 1, Some(2 * m), 0),
            vec![Raw(m + 1, Some(2 * m))]
        );
        // Rollups beginning later: raw up to there.
        assert_eq!(
            stretches(0, Some(10 * m), 7 * m),
            vec![
                Raw(0, Some(7 * m)),
                Rows(7 * m, Some(10 * m)),
                Raw(10 * m, Some(10 * m))
            ]
        );
        assert_eq!(
            stretches(0, Some(10 * m), u64::MAX),
            vec![Raw(0, Some(10 * m))]
        );
        assert_eq!(
            stretches(u64::MAX - 3, None, 0),
            vec![Raw(u64::MAX - 3, None)]
        );
    }

    #[test]
    fn merging_rollups_equals_adding_their_values() {
        let values = [
            (5, 3, OwnedValue::F64(2.5)),
            (5, 1, OwnedValue::Str("a".into())),
            (1, 9, OwnedValue::Bool(true)),
            (9, 0, OwnedValue::I64(-4)),
            (9, 2, OwnedValue::F64(f64::NAN)),
        ];
        let mut added = RollupRecord::of(values[0].0, values[0].1, &values[0].2);
        for (ts, offset, value) in &values[1..] {
            added.add(*ts, *offset, value);
        }
        // Any split, merged in any order.
        let mut left = RollupRecord::of(values[3].0, values[3].1, &values[3].2);
        left.add(values[1].0, values[1].1, &values[1].2);
        let mut right = RollupRecord::of(values[4].0, values[4].1, &values[4].2);
        right.merge(RollupRecord::of(values[0].0, values[0].1, &values[0].2));
        right.merge(RollupRecord::of(values[2].0, values[2].1, &values[2].2));
        right.merge(left);
        for r in [&added, &right] {
            assert_eq!((r.count, r.numeric), (5, 4));
            assert!(r.sum.is_nan());
            assert_eq!((r.min, r.max), (-4.0, 2.5));
            assert_eq!((r.first.timestamp_ms, r.first.offset), (1, 9));
            assert_eq!((r.last.timestamp_ms, r.last.offset), (9, 2));
        }
        let strings = RollupRecord::of(0, 0, &OwnedValue::Str("x".into()));
        let bucket = strings.into_bucket(0);
        assert_eq!(
            (bucket.numeric, bucket.min, bucket.max),
            (0, f64::INFINITY, f64::NEG_INFINITY)
        );
    }
}
