//! Rollups against the raw path: random readings (out of time order, retransmitted, of every
//! value type) appended and deleted in random steps, then every query answered both ways; the
//! rows themselves checked against the readings held; reopening, retention and stores written
//! before rollups existed.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use device_protocol::OwnedValue;
use proptest::prelude::*;

use super::engine::{Direction, Engine, KeyRange, Table, WriteBatch};
use super::memory::MemoryEngine;
use super::records::{self, RollupRecord};
use super::rollup::{self, MINUTE_MS, minute_of};
use super::*;

/// 2026-11-21T10:00:00Z: a whole minute, as any real clock's start would not be.
const T0: u64 = 1_795_255_200_000;

fn reading(device: &str, seq: Option<u32>, ts: u64, metrics: &[(&str, OwnedValue)]) -> NewReading {
    NewReading {
        device: device.into(),
        transport: Transport::Mqtt,
        wire: Wire::Json,
        seq,
        boot: None,
        timestamp_ms: Some(ts),
        received_ms: 0,
        metrics: metrics
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect(),
    }
}

fn query(
    device: &str,
    metric: &str,
    bucket_ms: u64,
    (from_ms, to_ms): (Option<u64>, Option<u64>),
    order: Order,
    limit: usize,
) -> DownsampleQuery {
    DownsampleQuery {
        device: device.into(),
        metric: metric.into(),
        from_ms,
        to_ms,
        bucket_ms,
        order,
        limit,
        after: None,
    }
}

/// Every page of `query`, following the cursor, from rollups or from raw readings.
fn pages(store: &Store, query: &DownsampleQuery, raw: bool) -> Vec<Option<BucketPage>> {
    let mut query = query.clone();
    let mut all = Vec::new();
    for _ in 0..10_000 {
        let page = if raw {
            store.downsample_raw(&query).unwrap()
        } else {
            store.downsample(&query).unwrap()
        };
        let next = page.as_ref().and_then(|p| p.next);
        all.push(page);
        match next {
            Some(n) => query.after = Some(n),
            None => return all,
        }
    }
    panic!("paging did not end");
}

/// Both paths page alike, bucket for bucket (the values are chosen so sums are exact in any
/// order, so even `sum` must be equal to the bit).
fn assert_same_answer(store: &Store, query: &DownsampleQuery) {
    assert_eq!(
        pages(store, query, false),
        pages(store, query, true),
        "{query:?}"
    );
}

/// Every rollup row from where its device's rollups begin is exactly what the readings held
/// give, and no row exists for a minute without them; a row marked partial (retention cut its
/// minute) only has to be in a minute that still holds readings of its device.
fn assert_rows_exact(store: &Store) {
    let snap = store.engine.snapshot().unwrap();
    let mut want: BTreeMap<(u32, u32, u64), RollupRecord> = BTreeMap::new();
    // Rows and sealed blocks alike.
    super::sealed::scan_offsets(&*snap, 0, u64::MAX, |offset, r| {
        for (metric, value) in rollup::first_values(&r.metrics) {
            want.entry((r.device, metric, minute_of(r.timestamp_ms)))
                .and_modify(|row| row.add(r.timestamp_ms, offset, value))
                .or_insert_with(|| RollupRecord::of(r.timestamp_ms, offset, value));
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    let mut got = BTreeMap::new();
    snap.scan(
        Table::Rollups,
        &KeyRange::all(),
        Direction::Forward,
        &mut |k, v| {
            let device = records::be_u32(&k[0..4], "device").unwrap();
            let metric = records::be_u32(&k[4..8], "metric").unwrap();
            let minute = records::split_rollup_key(k).unwrap();
            let row: RollupRecord = records::decode(v, "rollup").unwrap();
            assert!(row.count > 0, "empty row stored");
            got.insert((device, metric, minute), row);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    let from = |device: u32| {
        snap.get(Table::Meta, &records::rollups_from_key(device))
            .unwrap()
            .map_or(0, |b| records::be_u64(&b, "marker").unwrap())
    };
    want.retain(|(d, _, minute), _| minute * MINUTE_MS >= from(*d));
    got.retain(|(d, _, minute), _| minute * MINUTE_MS >= from(*d));
    let partial: Vec<(u32, u32, u64)> = got
        .iter()
        .filter(|(_, row)| row.partial)
        .map(|(key, _)| *key)
        .collect();
    for &(device, metric, minute) in &partial {
        assert!(
            want.keys().any(|(d, _, m)| (*d, *m) == (device, minute)),
            "partial row of a minute without readings: {device} {metric} {minute}"
        );
    }
    for key in &partial {
        got.remove(key);
        want.remove(key);
    }
    assert_eq!(got, want);
}

fn value() -> impl Strategy<Value = OwnedValue> {
    prop_oneof![
        (-1_000i64..1_000).prop_map(OwnedValue::I64),
        // Quarters: every sum of a few hundred of them is exact, whatever the order.
        (-4_000i32..4_000).prop_map(|q| OwnedValue::F64(f64::from(q) / 4.0)),
        any::<bool>().prop_map(OwnedValue::Bool),
        "[a-c]{0,2}".prop_map(OwnedValue::Str),
    ]
}

const DEVICES: [&str; 2] = ["a", "b"];
const METRICS: [&str; 3] = ["t", "h", "s"];

/// A reading to append: device, seq, ms after T0, values of t, h and s when present.
type Item = (usize, Option<u32>, u64, [Option<OwnedValue>; 3]);

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Item>),
    /// Retention: the oldest readings, at most this many.
    Delete(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let stamp = prop_oneof![
        0u64..25 * MINUTE_MS,
        // Minute edges and ties.
        (0u64..25).prop_map(|m| m * MINUTE_MS),
        (0u64..25).prop_map(|m| m * MINUTE_MS + MINUTE_MS - 1),
    ];
    let one = (
        0..DEVICES.len(),
        proptest::option::of(0u32..60),
        stamp,
        proptest::array::uniform3(proptest::option::of(value())),
    );
    prop_oneof![
        4 => proptest::collection::vec(one, 1..40).prop_map(Op::Append),
        1 => (0usize..30).prop_map(Op::Delete),
    ]
}

fn apply_ops(store: &Store, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Append(items) => {
                let batch: Vec<NewReading> = items
                    .iter()
                    .filter_map(|(d, seq, ts, values)| {
                        let metrics: Vec<(&str, OwnedValue)> = METRICS
                            .iter()
                            .zip(values)
                            .filter_map(|(m, v)| Some((*m, v.clone()?)))
                            .collect();
                        (!metrics.is_empty()).then(|| reading(DEVICES[*d], *seq, T0 + ts, &metrics))
                    })
                    .collect();
                store.append(&batch).unwrap();
            }
            Op::Delete(n) => {
                store.delete_oldest(*n, |_, _| false).unwrap();
            }
        }
    }
}

fn bounds() -> impl Strategy<Value = (Option<u64>, Option<u64>)> {
    let edge = prop_oneof![
        (0u64..26 * MINUTE_MS).prop_map(|t| T0 + t),
        (0u64..26).prop_map(|m| T0 + m * MINUTE_MS),
    ];
    (
        proptest::option::of(edge.clone()),
        proptest::option::of(edge),
    )
}

fn width() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(MINUTE_MS),
        Just(2 * MINUTE_MS),
        Just(5 * MINUTE_MS),
        Just(7 * MINUTE_MS),
        Just(3_600_000),
        Just(86_400_000),
    ]
}

proptest! {
    #[test]
    fn rollups_answer_exactly_like_the_raw_path(
        ops in proptest::collection::vec(op(), 1..12),
        queries in proptest::collection::vec(
            (0..3usize, 0..4usize, width(), bounds(), any::<bool>(), 1usize..8),
            1..12,
        ),
    ) {
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        apply_ops(&store, &ops);
        assert_rows_exact(&store);
        for (d, m, width, range, newest, limit) in queries {
            let device = ["a", "b", "nobody"][d];
            let metric = ["t", "h", "s", "never-sent"][m];
            let order = if newest { Order::Newest } else { Order::Oldest };
            assert_same_answer(&store, &query(device, metric, width, range, order, limit));
        }
    }
}

/// Random floats: sums merged minute by minute differ from the raw path's only by rounding.
#[test]
fn arbitrary_floats_differ_only_by_rounding_in_sums() {
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let batch: Vec<NewReading> = (0..3_000u32)
        .map(|i| {
            let ts = T0 + next() % (30 * MINUTE_MS);
            let v = (next() % 2_000_000) as f64 / 7.0 - 100_000.0;
            reading("a", Some(i), ts, &[("t", OwnedValue::F64(v))])
        })
        .collect();
    for chunk in batch.chunks(100) {
        store.append(chunk).unwrap();
    }
    for order in [Order::Oldest, Order::Newest] {
        let q = query(
            "a",
            "t",
            5 * MINUTE_MS,
            (Some(T0 + 1_234), None),
            order,
            100,
        );
        let got = store.downsample(&q).unwrap().unwrap();
        let want = store.downsample_raw(&q).unwrap().unwrap();
        assert_eq!(got.buckets.len(), want.buckets.len());
        for (g, w) in got.buckets.iter().zip(&want.buckets) {
            assert_eq!(
                (g.start_ms, g.count, g.min, g.max, &g.first, &g.last),
                (w.start_ms, w.count, w.min, w.max, &w.first, &w.last)
            );
            assert!(
                (g.sum - w.sum).abs() <= 1e-9 * w.sum.abs().max(1.0),
                "{g:?} {w:?}"
            );
        }
    }
}

#[test]
fn a_metric_repeated_in_a_reading_counts_once_like_the_raw_path() {
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    let twice = [("t", OwnedValue::I64(1)), ("t", OwnedValue::I64(50))];
    store
        .append(&[reading("a", Some(1), T0 + 5, &twice)])
        .unwrap();
    store
        .append(&[reading("a", Some(2), T0 + 9, &twice)])
        .unwrap();
    store.delete_oldest(1, |_, _| false).unwrap();
    let q = query("a", "t", MINUTE_MS, (None, None), Order::Oldest, 10);
    assert_same_answer(&store, &q);
    let page = store.downsample(&q).unwrap().unwrap();
    assert_eq!((page.buckets[0].count, page.buckets[0].max), (1, 1.0));
}

#[test]
fn widths_that_are_not_whole_minutes_keep_the_raw_path() {
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    let batch: Vec<NewReading> = (0..500u32)
        .map(|i| {
            let ts = T0 + u64::from(i * 7_919 % 600) * 1_000;
            reading("a", None, ts, &[("t", OwnedValue::I64(i64::from(i)))])
        })
        .collect();
    store.append(&batch).unwrap();
    for width in [1_000, 30_000, 90_000, 150_000] {
        for order in [Order::Oldest, Order::Newest] {
            assert_same_answer(&store, &query("a", "t", width, (None, None), order, 4));
        }
    }
}

/// A device's readings, backfilled out of order, then deleted oldest first across minute edges.
#[test]
fn retention_marks_the_minutes_it_cuts_and_drops_the_emptied_ones() {
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    // Offsets 0..30: ten readings in each of minutes 0, 1 and 2, in time order.
    let live: Vec<NewReading> = (0..30u32)
        .map(|i| {
            let ts = T0 + u64::from(i / 10) * MINUTE_MS + u64::from(i % 10) * 1_000;
            reading("a", Some(i), ts, &[("t", OwnedValue::I64(i64::from(i)))])
        })
        .collect();
    store.append(&live).unwrap();
    // Offsets 30..33: backfill into minute 0 (one with a tie on time), and a second metric.
    store
        .append(&[
            reading("a", Some(100), T0 + 500, &[("t", OwnedValue::I64(100))]),
            reading("a", Some(101), T0, &[("t", OwnedValue::Str("late".into()))]),
            reading("a", Some(102), T0 + 1_000, &[("h", OwnedValue::Bool(true))]),
        ])
        .unwrap();
    let day = query("a", "t", 86_400_000, (None, None), Order::Oldest, 10);

    // Minute 0 loses its ten live readings but keeps the backfilled ones; minute 1 is cut.
    let deleted = store.delete_oldest(15, |_, _| false).unwrap();
    assert_eq!((deleted.readings, deleted.next), (15, Some(15)));
    assert_rows_exact(&store);
    assert_same_answer(&store, &day);
    let page = store.downsample(&day).unwrap().unwrap();
    let bucket = &page.buckets[0];
    assert_eq!(bucket.count, 15 + 2);
    assert_eq!(bucket.first, Some(OwnedValue::Str("late".into())));
    assert_eq!(bucket.last, Some(OwnedValue::I64(29)));
    assert_eq!(bucket.min, 15.0);

    // Everything but the last reading: minutes 1 and 2 of `t` go, and so does all of `t`.
    store.delete_oldest(17, |_, _| false).unwrap();
    assert_rows_exact(&store);
    assert_eq!(
        store.downsample(&day).unwrap().unwrap().buckets,
        Vec::<Bucket>::new()
    );
    let h = query("a", "h", MINUTE_MS, (None, None), Order::Newest, 10);
    assert_eq!(store.downsample(&h).unwrap().unwrap().buckets.len(), 1);
    assert_same_answer(&store, &h);
}

/// The age-based retention deletes through the same call, with a `keep` on timestamps.
#[test]
fn deleting_by_age_leaves_the_rows_of_what_is_kept() {
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    let batch: Vec<NewReading> = (0..600u32)
        .map(|i| {
            let ts = T0 + u64::from(i) * 1_700;
            reading(
                "a",
                Some(i),
                ts,
                &[("t", OwnedValue::I64(i64::from(i % 17)))],
            )
        })
        .collect();
    store.append(&batch).unwrap();
    let cut = T0 + 5 * MINUTE_MS + 12_345;
    while store.delete_oldest(50, |_, ts| ts >= cut).unwrap().readings > 0 {}
    assert_rows_exact(&store);
    for width in [MINUTE_MS, 5 * MINUTE_MS] {
        assert_same_answer(
            &store,
            &query("a", "t", width, (None, None), Order::Oldest, 3),
        );
    }
}

#[test]
fn rollups_survive_reopen_and_take_later_backfill() {
    for (name, mut harness) in super::tests::harnesses() {
        let store = Store::open(harness.open()).unwrap();
        let first: Vec<NewReading> = (0..400u32)
            .map(|i| {
                let ts = T0 + u64::from(i) * 3_000;
                reading("a", Some(i), ts, &[("t", OwnedValue::I64(i64::from(i)))])
            })
            .collect();
        store.append(&first).unwrap();
        drop(store);
        let store = Store::open(harness.open()).unwrap();
        // Backfill into minutes that already have rows, retransmissions, and new minutes.
        let more: Vec<NewReading> = (390..400u32)
            .map(|i| reading("a", Some(i), T0, &[("t", OwnedValue::I64(-1))]))
            .chain((0..400u32).map(|i| {
                let ts = T0 + u64::from(i) * 3_000 + 1_500;
                reading("a", Some(1_000 + i), ts, &[("t", OwnedValue::F64(-0.5))])
            }))
            .collect();
        store.append(&more).unwrap();
        drop(store);
        let store = Store::open(harness.open()).unwrap();
        assert_rows_exact(&store);
        for order in [Order::Oldest, Order::Newest] {
            let q = query("a", "t", 5 * MINUTE_MS, (Some(T0 + 7), None), order, 2);
            assert_same_answer(&store, &q);
        }
        let all = query("a", "t", 86_400_000, (None, None), Order::Oldest, 1);
        let page = store.downsample(&all).unwrap().unwrap();
        assert_eq!(
            page.buckets[0].count, 800,
            "{name}: retransmissions not counted"
        );
    }
}

/// Makes the store look as a hub before rollups left it: no rows, no markers, version 1.
fn as_written_before_rollups(engine: &dyn Engine) {
    let snap = engine.snapshot().unwrap();
    let mut batch = WriteBatch::new();
    for table in [Table::Rollups, Table::Meta] {
        snap.scan(table, &KeyRange::all(), Direction::Forward, &mut |k, _| {
            if table == Table::Rollups || k.starts_with(records::META_ROLLUPS_FROM) {
                batch.delete(table, k.to_vec());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    }
    drop(snap);
    batch.put(
        Table::Meta,
        records::META_SCHEMA_VERSION.to_vec(),
        1u32.to_be_bytes().to_vec(),
    );
    engine.commit(&batch).unwrap();
}

#[test]
fn a_store_written_before_rollups_reads_raw_readings_for_its_old_minutes() {
    for (name, mut harness) in super::tests::harnesses() {
        let store = Store::open(harness.open()).unwrap();
        let old: Vec<NewReading> = (0..300u32)
            .map(|i| {
                let ts = T0 + u64::from(i) * 2_100;
                reading("a", Some(i), ts, &[("t", OwnedValue::I64(i64::from(i)))])
            })
            .collect();
        store.append(&old).unwrap();
        store
            .append(&[reading("b", Some(1), T0, &[("t", OwnedValue::I64(1))])])
            .unwrap();
        // A device known without readings.
        store
            .apply(&[Ingest::Hello(DeviceHello {
                device: "c".into(),
                transport: Transport::Serial,
                firmware: "1.0".into(),
                protocol_version: 1,
                boot: None,
                received_ms: 0,
            })])
            .unwrap();
        drop(store);
        as_written_before_rollups(&*harness.open());

        let store = Store::open(harness.open()).unwrap();
        let snap = store.engine.snapshot().unwrap();
        let version = snap.get(Table::Meta, records::META_SCHEMA_VERSION).unwrap();
        assert_eq!(
            version,
            Some(SCHEMA_VERSION.to_be_bytes().to_vec()),
            "{name}"
        );
        // The newest old reading is at T0 + 627.9 s, in minute 10: rollups begin at minute 11.
        let marker = snap
            .get(Table::Meta, &records::rollups_from_key(0))
            .unwrap();
        assert_eq!(
            marker,
            Some((T0 + 11 * MINUTE_MS).to_be_bytes().to_vec()),
            "{name}"
        );
        let marker = snap
            .get(Table::Meta, &records::rollups_from_key(1))
            .unwrap();
        assert_eq!(
            marker,
            Some((T0 + MINUTE_MS).to_be_bytes().to_vec()),
            "{name}"
        );
        let marker = snap
            .get(Table::Meta, &records::rollups_from_key(2))
            .unwrap();
        assert_eq!(marker, None, "{name}");
        drop(snap);
        for order in [Order::Oldest, Order::Newest] {
            let q = query("a", "t", 5 * MINUTE_MS, (None, None), order, 2);
            assert_same_answer(&store, &q);
        }

        // New readings after the old ones and backfill among them, then retention.
        let new: Vec<NewReading> = (0..300u32)
            .map(|i| {
                let ts = T0 + 9 * MINUTE_MS + u64::from(i) * 1_300;
                reading(
                    "a",
                    Some(1_000 + i),
                    ts,
                    &[("t", OwnedValue::I64(-i64::from(i)))],
                )
            })
            .chain((0..20u32).map(|i| {
                let ts = T0 + u64::from(i) * 10_000 + 1;
                reading("a", Some(2_000 + i), ts, &[("t", OwnedValue::Bool(true))])
            }))
            .collect();
        store.append(&new).unwrap();
        assert_rows_exact(&store);
        for width in [MINUTE_MS, 5 * MINUTE_MS, 86_400_000] {
            for order in [Order::Oldest, Order::Newest] {
                let q = query("a", "t", width, (Some(T0 + 30_001), None), order, 3);
                assert_same_answer(&store, &q);
            }
        }
        store.delete_oldest(250, |_, _| false).unwrap();
        assert_rows_exact(&store);
        let q = query("a", "t", 5 * MINUTE_MS, (None, None), Order::Oldest, 100);
        assert_same_answer(&store, &q);
        // Reopening an upgraded store changes nothing more.
        drop(store);
        let store = Store::open(harness.open()).unwrap();
        assert_same_answer(&store, &q);
    }
}

#[test]
fn a_new_store_has_rollups_from_its_first_reading() {
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    store
        .append(&[reading("a", Some(1), T0 + 5, &[("t", OwnedValue::I64(3))])])
        .unwrap();
    let snap = store.engine.snapshot().unwrap();
    assert_eq!(
        snap.get(Table::Meta, &records::rollups_from_key(0))
            .unwrap(),
        None
    );
    let row = snap
        .get(Table::Rollups, &records::rollup_key(0, 0, minute_of(T0)))
        .unwrap()
        .unwrap();
    let row: RollupRecord = records::decode(&row, "rollup").unwrap();
    assert_eq!((row.count, row.sum, row.first.offset), (1, 3.0, 0));
}

/// An engine that drops every write to the rollups: what appending cost before rollups, less
/// the grouping in memory and one missed lookup per group (the rows are never there).
struct WithoutRollups(Arc<dyn Engine>);

impl Engine for WithoutRollups {
    fn snapshot(&self) -> Result<Box<dyn super::engine::Snapshot + '_>, EngineError> {
        self.0.snapshot()
    }
    fn commit(&self, batch: &WriteBatch) -> Result<(), EngineError> {
        let mut kept = WriteBatch::new();
        for change in batch.changes() {
            match change {
                super::engine::Change::Put { table, key, value } if *table != Table::Rollups => {
                    kept.put(*table, key.clone(), value.clone())
                }
                super::engine::Change::Delete { table, key } if *table != Table::Rollups => {
                    kept.delete(*table, key.clone())
                }
                _ => {}
            }
        }
        self.0.commit(&kept)
    }
    fn name(&self) -> &'static str {
        "without-rollups"
    }
    fn usage(&self) -> Result<Usage, EngineError> {
        self.0.usage()
    }
}

/// Appends a day of `readings` readings of `devices` devices taking turns, in batches of 1,000;
/// the time spent in `append`.
fn fill_a_day(store: &Store, start: u64, readings: u64, devices: u64) -> std::time::Duration {
    const BATCH: u64 = 1_000;
    let mut appending = std::time::Duration::ZERO;
    for b in 0..readings / BATCH {
        let batch: Vec<NewReading> = (b * BATCH..(b + 1) * BATCH)
            .map(|i| {
                let ts = start + i * 86_400_000 / readings;
                let v = OwnedValue::F64(20.0 + (i % 1_000) as f64 / 100.0);
                let device = format!("sensor-{}", i % devices + 1);
                reading(
                    &device,
                    Some((i / devices) as u32),
                    ts,
                    &[("temperature", v)],
                )
            })
            .collect();
        let t = std::time::Instant::now();
        store.append(&batch).unwrap();
        appending += t.elapsed();
    }
    appending
}

/// The target: a 24-hour, 5-minute downsample over one device's million readings. Run with
/// `cargo test --release -p hub --lib bench_day_of_a_million -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: fills a store with a million readings"]
fn bench_day_of_a_million_readings() {
    use std::time::Instant;

    let day_ms = 86_400_000u64;
    let start = T0 + 12_345;
    let dir = tempfile::tempdir().unwrap();
    // Ingest cost, alternating with and without rollup writes so neither gets a warmer machine:
    // one device (about two rows per batch), then 1,000 devices (a row per reading).
    for (readings, devices) in [(1_000_000, 1), (200_000, 1_000)] {
        let mut spent = [std::time::Duration::ZERO; 2];
        for round in 0..4 {
            let sub = dir.path().join(format!("{devices}-{round}"));
            std::fs::create_dir(&sub).unwrap();
            let engine = open_engine(EngineKind::Redb, &sub, 4 << 20).unwrap();
            let with = round % 2 == 1;
            let store = if with {
                Store::open(engine).unwrap()
            } else {
                Store::open(Arc::new(WithoutRollups(engine))).unwrap()
            };
            spent[usize::from(with)] += fill_a_day(&store, start, readings, devices);
        }
        println!(
            "append {readings} readings of {devices} device(s) in batches of 1,000, twice: {:?} without rollup writes, {:?} with ({:+.1}%)",
            spent[0],
            spent[1],
            (spent[1].as_secs_f64() / spent[0].as_secs_f64() - 1.0) * 100.0
        );
    }
    let engine = open_engine(EngineKind::Redb, dir.path(), 4 << 20).unwrap();
    let store = Store::open(engine).unwrap();
    fill_a_day(&store, start, 1_000_000, 1);
    // `from=-24h` at a moment just after the last reading: not minute-aligned.
    let now = start + day_ms + 7_777;
    let q = query(
        "sensor-1",
        "temperature",
        5 * MINUTE_MS,
        (Some(now - day_ms), Some(now)),
        Order::Oldest,
        300,
    );
    for (label, raw, runs) in [("raw", true, 5), ("rollups", false, 200)] {
        let mut times = Vec::new();
        let mut buckets = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let page = if raw {
                store.downsample_raw(&q).unwrap().unwrap()
            } else {
                store.downsample(&q).unwrap().unwrap()
            };
            times.push(t.elapsed());
            buckets = page.buckets.len();
        }
        times.sort();
        let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!(
            "downsample {label}: {buckets} buckets, {runs} runs: median {:?}, p99 {:?}, max {:?}",
            p(0.5),
            p(0.99),
            p(1.0)
        );
    }
    let got = store.downsample(&q).unwrap().unwrap();
    let want = store.downsample_raw(&q).unwrap().unwrap();
    assert_eq!(
        (got.buckets.len(), got.next),
        (want.buckets.len(), want.next)
    );
    for (g, w) in got.buckets.iter().zip(&want.buckets) {
        assert_eq!(
            (g.start_ms, g.count, g.min, g.max, &g.first, &g.last),
            (w.start_ms, w.count, w.min, w.max, &w.first, &w.last)
        );
        // Sums of these values may differ in the last bits only.
        assert!((g.sum - w.sum).abs() <= 1e-9 * w.sum.abs(), "{g:?} {w:?}");
    }
}
