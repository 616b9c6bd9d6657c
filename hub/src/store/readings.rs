//! Reading readings back: pages by offset or time, a device's time span, downsampled buckets.

use super::*;

/// Visits the decoded records of `range` in key order until `visit` breaks; the first record
/// that does not decode ends the scan with its error.
pub(super) fn scan_records<T: serde::de::DeserializeOwned>(
    snap: &dyn engine::Snapshot,
    table: Table,
    range: &KeyRange,
    what: &str,
    mut visit: impl FnMut(&[u8], T) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    let mut failure = None;
    snap.scan(
        table,
        range,
        Direction::Forward,
        &mut |k, v| match records::decode::<T>(v, what) {
            Ok(record) => visit(k, record),
            Err(e) => {
                failure = Some(e);
                ControlFlow::Break(())
            }
        },
    )?;
    failure.map_or(Ok(()), Err)
}

/// Visits the (timestamp, offset) of `device`'s readings timestamped in `[from, to)`, in
/// `direction` order, until `visit` breaks or fails; returns whether it broke.
pub(super) fn scan_device_time(
    snap: &dyn engine::Snapshot,
    device: u32,
    from: u64,
    to: Option<u64>,
    direction: Direction,
    mut visit: impl FnMut(u64, u64) -> Result<ControlFlow<()>, StoreError>,
) -> Result<ControlFlow<()>, StoreError> {
    sealed::scan_device(
        snap,
        device,
        sealed::TimeRange::between(from, to),
        direction,
        |ts, offset, _| visit(ts, offset),
    )
}

/// Visits the values of `metric` in `device`'s readings timestamped in `[from, to)`, with their
/// timestamp and offset, in `direction` order, until `visit` breaks; returns whether it broke.
/// Reads every reading of the range: about a microsecond each as rows, a fraction of that sealed
/// (a block is read for the one metric).
pub(super) fn scan_metric_values(
    snap: &dyn engine::Snapshot,
    device: u32,
    metric: u32,
    from: u64,
    to: Option<u64>,
    direction: Direction,
    mut visit: impl FnMut(u64, u64, &OwnedValue) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, StoreError> {
    sealed::scan_device_metric(
        snap,
        device,
        metric,
        sealed::TimeRange::between(from, to),
        direction,
        |timestamp_ms, offset, value| Ok(visit(timestamp_ms, offset, &value)),
    )
}

/// The reading at `offset`, if it is still stored.
pub(super) fn reading_at(
    snap: &dyn engine::Snapshot,
    offset: u64,
) -> Result<Option<ReadingRecord>, StoreError> {
    sealed::reading_at(snap, offset)
}

impl Store {
    /// A page of raw readings of one device; `None` for an unknown device.
    pub fn readings(&self, query: &ReadingsQuery) -> Result<Option<ReadingsPage>, StoreError> {
        let (device, metric, names) = {
            let cat = self.catalog()?;
            let Some(device) = cat.device_numbers.get(&query.device).copied() else {
                return Ok(None);
            };
            let metric = match &query.metric {
                None => None,
                Some(name) => match cat.metric_numbers.get(name) {
                    Some(n) => Some(*n),
                    // A metric the store has never seen: an empty page, not an error.
                    None => {
                        return Ok(Some(ReadingsPage {
                            readings: vec![],
                            next: None,
                        }));
                    }
                },
            };
            (device, metric, cat.metric_names.clone())
        };
        let from = query.from_ms.unwrap_or(0);
        let mut range = sealed::TimeRange::between(from, query.to_ms.filter(|to| *to != u64::MAX));
        if let Some(after) = query.after {
            let at = Bound::Excluded((after.timestamp_ms, after.offset));
            match query.order {
                Order::Oldest => range.lo = at,
                Order::Newest => range.hi = at,
            }
        }
        let direction = match query.order {
            Order::Oldest => Direction::Forward,
            Order::Newest => Direction::Reverse,
        };
        let snap = self.engine.snapshot()?;
        let mut positions = Vec::new();
        let mut last = None;
        let limit = query.limit;
        let _ = sealed::scan_device(
            &*snap,
            device,
            range,
            direction,
            |timestamp_ms, offset, reading| {
                last = Some(Position {
                    timestamp_ms,
                    offset,
                });
                let seq = reading.numbering();
                let metrics: Vec<(String, OwnedValue)> = reading
                    .metrics
                    .into_iter()
                    .filter(|(m, _)| metric.is_none_or(|want| *m == want))
                    .map(|(m, v)| (names.get(m as usize).cloned().unwrap_or_default(), v))
                    .collect();
                if metrics.is_empty() {
                    return Ok(ControlFlow::Continue(()));
                }
                positions.push(Reading {
                    offset,
                    device: query.device.clone(),
                    seq,
                    timestamp_ms,
                    metrics,
                });
                Ok(if positions.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        )?;
        let next = if positions.len() >= limit && limit > 0 {
            last
        } else {
            None
        };
        Ok(Some(ReadingsPage {
            readings: positions,
            next,
        }))
    }

    /// The earliest and latest reading timestamps of a device; `None` for an unknown device or
    /// one without readings: two short index seeks and a walk of its blocks' time index.
    pub fn reading_span(&self, id: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let Some(device) = self.catalog()?.device_numbers.get(id).copied() else {
            return Ok(None);
        };
        let snap = self.engine.snapshot()?;
        sealed::time_bounds(&*snap, device)
    }

    /// A page of buckets of one metric of one device; `None` for an unknown device.
    ///
    /// Buckets of a whole number of minutes are built from the per-minute rollups (see
    /// [`rollup`]), reading raw readings only in the minutes the range cuts: the cost grows with
    /// the minutes in the range. Other widths take [`Store::downsample_raw`].
    pub fn downsample(&self, query: &DownsampleQuery) -> Result<Option<BucketPage>, StoreError> {
        if rollup::serves(query.bucket_ms) {
            self.downsample_with(query, |snap, device, metric, from, to| {
                rollup::downsample(snap, device, metric, query, from, to)
            })
        } else {
            self.downsample_raw(query)
        }
    }

    /// [`Store::downsample`] from raw readings only, whatever the width: the reference the
    /// rollups are checked against.
    ///
    /// One pass over the device time index in `[from, to)`, in the query's order: each reading is
    /// read, its value of the metric folded into the current bucket, and the scan stops as soon as
    /// the page is full. The cost grows with the readings in the range, never with the store.
    pub fn downsample_raw(
        &self,
        query: &DownsampleQuery,
    ) -> Result<Option<BucketPage>, StoreError> {
        self.downsample_with(query, |snap, device, metric, from, to| {
            let direction = match query.order {
                Order::Oldest => Direction::Forward,
                Order::Newest => Direction::Reverse,
            };
            let mut sampler =
                downsample::Downsampler::new(query.bucket_ms, query.order, query.limit);
            // Whether the scan stopped early, the sampler knows: it stopped it.
            let _ =
                scan_metric_values(snap, device, metric, from, to, direction, |ts, _, value| {
                    sampler.push(ts, value)
                })?;
            Ok(sampler.finish())
        })
    }

    /// Resolves the query's device and metric and its range left to scan, then lets `page` build
    /// the page from one snapshot.
    fn downsample_with(
        &self,
        query: &DownsampleQuery,
        page: impl FnOnce(
            &dyn engine::Snapshot,
            u32,
            u32,
            u64,
            Option<u64>,
        ) -> Result<BucketPage, StoreError>,
    ) -> Result<Option<BucketPage>, StoreError> {
        let empty = BucketPage {
            buckets: vec![],
            next: None,
        };
        let (device, metric) = {
            let cat = self.catalog()?;
            let Some(device) = cat.device_numbers.get(&query.device).copied() else {
                return Ok(None);
            };
            // A metric the store has never seen: an empty page, not an error.
            let Some(metric) = cat.metric_numbers.get(&query.metric).copied() else {
                return Ok(Some(empty));
            };
            (device, metric)
        };
        let Some((from, to)) = query.scan_range() else {
            return Ok(Some(empty));
        };
        let snap = self.engine.snapshot()?;
        Ok(Some(page(&*snap, device, metric, from, to)?))
    }
}
