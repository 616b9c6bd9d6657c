//! The store against a plain model across sealing: appends, checkpoints (which seal the log's
//! readings into blocks), retention by whole spans, erases and reopens, on the log over redb,
//! with rows written straight into the engine mixed in (a store that changed write path).

use std::collections::BTreeMap;

use device_protocol::OwnedValue;
use proptest::prelude::*;

use super::tests::{Harness, Logged, query};
use super::*;

/// A reading of the model: device, timestamp, value.
type Modelled = (String, u64, f64);

fn reading(device: &str, seq: u32, ts: u64, value: f64) -> NewReading {
    NewReading {
        device: device.into(),
        transport: Transport::Mqtt,
        wire: Wire::Json,
        seq: Some(seq),
        boot: None,
        timestamp_ms: Some(ts),
        received_ms: ts,
        metrics: vec![
            ("t".into(), OwnedValue::F64(value)),
            ("n".into(), OwnedValue::I64(i64::from(seq))),
        ],
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Readings of (device 0..4, timestamp step, value), appended in one batch.
    Append(Vec<(u8, u64, i32)>),
    /// Folds the log's tail into the engine, sealing its readings.
    Checkpoint,
    /// Retention: the oldest, at most this many rows (a span goes whole).
    DeleteOldest(usize),
    /// Retention by age: everything before this timestamp step.
    Expire(u64),
    /// Erases a device.
    Erase(u8),
    /// Closes and opens the store again; `true`: straight into the engine until the next one.
    Reopen(bool),
    /// Seals at most this many of the oldest rows (the upgrade's step; rows of the tail too).
    SealRows(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec((0u8..4, 0u64..200, -500i32..500), 1..80).prop_map(Op::Append),
        2 => Just(Op::Checkpoint),
        1 => (1usize..60).prop_map(Op::DeleteOldest),
        1 => (0u64..200).prop_map(Op::Expire),
        1 => (0u8..4).prop_map(Op::Erase),
        1 => any::<bool>().prop_map(Op::Reopen),
        1 => (1usize..40).prop_map(Op::SealRows),
    ]
}

const T0: u64 = 1_790_000_000_000;

/// Opens the store of `harness`, behind the log or straight into its engine.
/// Switching to the direct path folds what the log holds first, as the hub does.
fn open(harness: &mut Logged, direct: bool) -> Store {
    let path = if direct {
        WritePath::Direct
    } else {
        WritePath::Log
    };
    super::open(
        EngineKind::Redb,
        harness.dir.path(),
        1 << 20,
        path,
        harness.config,
    )
    .unwrap()
}

/// Everything the store answers about its readings equals the model.
fn check(store: &Store, model: &BTreeMap<u64, Modelled>) -> Result<(), TestCaseError> {
    let next = store.next_offset().unwrap();
    // By offset, in pages, as sync reads.
    let mut paged = Vec::new();
    let mut from = 0;
    loop {
        let page = store.readings_from(from, next, 13).unwrap();
        let Some(last) = page.last() else { break };
        from = last.offset + 1;
        paged.extend(page.into_iter().map(|r| {
            let t = match &r.metrics[0].1 {
                OwnedValue::F64(v) => *v,
                other => panic!("unexpected value {other:?}"),
            };
            (r.offset, (r.device, r.timestamp_ms, t))
        }));
    }
    let want: Vec<(u64, Modelled)> = model.iter().map(|(o, m)| (*o, m.clone())).collect();
    prop_assert_eq!(&paged, &want);
    prop_assert_eq!(store.reading_count().unwrap(), model.len() as u64);
    prop_assert_eq!(store.oldest_offset().unwrap(), model.keys().next().copied());
    for d in 0..4u8 {
        let device = format!("d{d}");
        let mut mine: Vec<(u64, u64)> = model
            .iter()
            .filter(|(_, m)| m.0 == device)
            .map(|(o, m)| (m.1, *o))
            .collect();
        mine.sort_unstable();
        // By time, in both orders, in pages that go on from a cursor.
        for order in [Order::Oldest, Order::Newest] {
            let mut got = Vec::new();
            let mut q = query(&device, order, 5);
            while let Some(page) = store.readings(&q).unwrap() {
                got.extend(page.readings.iter().map(|r| (r.timestamp_ms, r.offset)));
                match page.next {
                    Some(next) => q.after = Some(next),
                    None => break,
                }
            }
            let mut want = mine.clone();
            if order == Order::Newest {
                want.reverse();
            }
            prop_assert_eq!(&got, &want, "{} {:?}", device, order);
        }
        // A time window.
        let (lo, hi) = (T0 + 50_000, T0 + 120_000);
        let mut q = query(&device, Order::Oldest, 10_000);
        q.from_ms = Some(lo);
        q.to_ms = Some(hi);
        let got: Vec<(u64, u64)> = store
            .readings(&q)
            .unwrap()
            .map(|p| {
                p.readings
                    .iter()
                    .map(|r| (r.timestamp_ms, r.offset))
                    .collect()
            })
            .unwrap_or_default();
        let want: Vec<(u64, u64)> = mine
            .iter()
            .copied()
            .filter(|(ts, _)| (lo..hi).contains(ts))
            .collect();
        prop_assert_eq!(got, want);
        let span = store.reading_span(&device).unwrap();
        let want = mine.first().map(|f| (f.0, mine[mine.len() - 1].0));
        prop_assert_eq!(span, want);
    }
    for (offset, m) in model.iter().take(3) {
        prop_assert_eq!(store.reading_time(*offset).unwrap(), Some(m.1));
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut harness = Logged::redb();
    harness.config.checkpoint_bytes = 6 << 10;
    let mut direct = false;
    let mut store = open(&mut harness, direct);
    let mut model: BTreeMap<u64, Modelled> = BTreeMap::new();
    let mut seqs = [0u32; 4];
    for op in ops {
        match op {
            Op::Append(readings) => {
                let batch: Vec<NewReading> = readings
                    .iter()
                    .map(|(d, step, v)| {
                        seqs[*d as usize] += 1;
                        let value = f64::from(*v) / 10.0;
                        reading(&format!("d{d}"), seqs[*d as usize], T0 + step * 1000, value)
                    })
                    .collect();
                let applied = store.append(&batch).unwrap();
                for (r, a) in batch.iter().zip(applied) {
                    let Outcome::Stored { offset, .. } = a.outcome else {
                        panic!("not stored: {:?}", a.outcome);
                    };
                    let OwnedValue::F64(v) = r.metrics[0].1 else {
                        unreachable!()
                    };
                    model.insert(offset, (r.device.clone(), r.timestamp_ms.unwrap_or(0), v));
                }
            }
            Op::Checkpoint => {
                if let Some(log) = store.engine.as_logged() {
                    log.checkpoint_now().unwrap();
                }
            }
            Op::DeleteOldest(max) => {
                let before: Vec<u64> = model.keys().copied().collect();
                let deleted = store.delete_oldest(max, |_, _| false).unwrap();
                let kept_from = deleted.next.unwrap_or(0);
                model.retain(|o, _| *o >= kept_from);
                // A prefix of what was held, as many as it says.
                prop_assert_eq!(before.len() - model.len(), deleted.readings as usize);
            }
            Op::Expire(step) => {
                let cutoff = T0 + step * 1000;
                loop {
                    let mut told = Vec::new();
                    let deleted = store
                        .delete_oldest_each(10, |_, ts| ts >= cutoff, |o, ts| told.push((o, ts)))
                        .unwrap();
                    for (o, ts) in &told {
                        prop_assert!(*ts < cutoff);
                        prop_assert_eq!(model.remove(o).map(|m| m.1), Some(*ts));
                    }
                    prop_assert_eq!(told.len() as u64, deleted.readings);
                    // Only the oldest go.
                    if let Some(first_kept) = model.keys().next() {
                        prop_assert!(told.iter().all(|(o, _)| o < first_kept));
                    }
                    if deleted.readings == 0 {
                        break;
                    }
                }
            }
            Op::Erase(d) => {
                let device = format!("d{d}");
                if store.remove_device(&device, true, 1).unwrap().is_some() {
                    model.retain(|_, m| m.0 != device);
                }
            }
            Op::SealRows(max) => {
                let rows = store.rows_below(u64::MAX).unwrap();
                let step = store.seal_rows(u64::MAX, max).unwrap();
                prop_assert!(step.readings as usize <= max);
                // A checkpoint the commit set off may have sealed the log's rows too.
                prop_assert!(store.rows_below(u64::MAX).unwrap() <= rows - step.readings);
                prop_assert!(step.readings > 0 || rows == 0);
            }
            Op::Reopen(straight) => {
                drop(store);
                direct = straight;
                store = open(&mut harness, direct);
            }
        }
        check(&store, &model)?;
    }
    drop(store);
    let store = open(&mut harness, false);
    check(&store, &model)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn sealed_and_row_readings_read_as_one_store_through_every_change(
        ops in proptest::collection::vec(op(), 1..30)
    ) {
        run(ops)?;
    }
}

/// The upgrade's sealing of old rows, a step of `batch` at a time, the store dropped (as by a
/// kill) after `steps` of them, then finished after a reopen: every reading once, none left as a
/// row, readings appended in between untouched.
fn seal_old_rows_cut_after(
    readings: &[(u8, u64, i32)],
    batch: usize,
    steps: usize,
) -> Result<(), TestCaseError> {
    let mut harness = Logged::redb();
    let mut model = BTreeMap::new();
    let mut seqs = [0u32; 4];
    let mut append =
        |store: &Store, model: &mut BTreeMap<u64, Modelled>, part: &[(u8, u64, i32)]| {
            let batch: Vec<NewReading> = part
                .iter()
                .map(|(d, step, v)| {
                    seqs[*d as usize] += 1;
                    reading(
                        &format!("d{d}"),
                        seqs[*d as usize],
                        T0 + step * 1000,
                        f64::from(*v),
                    )
                })
                .collect();
            let applied = store.append(&batch).unwrap();
            for ((r, (_, _, v)), a) in batch.iter().zip(part).zip(applied) {
                let Outcome::Stored { offset, .. } = a.outcome else {
                    panic!("not stored");
                };
                model.insert(
                    offset,
                    (r.device.clone(), r.timestamp_ms.unwrap_or(0), f64::from(*v)),
                );
            }
        };
    // Rows, as the direct path (and every older store) keeps them.
    let store = open(&mut harness, true);
    for part in readings.chunks(17) {
        append(&store, &mut model, part);
    }
    drop(store);
    let store = open(&mut harness, false);
    let below = store.next_offset().unwrap();
    for _ in 0..steps {
        if !store.seal_rows(below, batch).unwrap().more {
            break;
        }
    }
    drop(store);
    let store = open(&mut harness, false);
    append(&store, &mut model, &readings[..readings.len().min(5)]);
    let below = below.min(store.next_offset().unwrap());
    while store.seal_rows(below, batch).unwrap().more {}
    prop_assert_eq!(store.rows_below(below).unwrap(), 0);
    model_ignoring_values(&store, &model)
}

/// The readings by offset, as the model says of their offsets, devices and times.
fn model_ignoring_values(
    store: &Store,
    model: &BTreeMap<u64, Modelled>,
) -> Result<(), TestCaseError> {
    let next = store.next_offset().unwrap();
    let got: Vec<(u64, String, u64)> = store
        .readings_from(0, next, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.offset, r.device, r.timestamp_ms))
        .collect();
    let want: Vec<(u64, String, u64)> = model.iter().map(|(o, m)| (*o, m.0.clone(), m.1)).collect();
    prop_assert_eq!(got, want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn old_rows_sealed_a_step_at_a_time_and_cut_anywhere_lose_and_double_nothing(
        readings in proptest::collection::vec((0u8..4, 0u64..200, -500i32..500), 1..300),
        batch in 1usize..50,
        steps in 0usize..20,
    ) {
        seal_old_rows_cut_after(&readings, batch, steps)?;
    }
}

#[test]
fn a_checkpoint_seals_the_log_s_readings_into_blocks_and_leaves_no_rows() {
    let mut harness = Logged::redb();
    let store = Store::open(harness.open()).unwrap();
    let batch: Vec<NewReading> = (0..3000u32)
        .map(|i| {
            reading(
                &format!("d{}", i % 3),
                i / 3,
                T0 + u64::from(i / 3) * 1000,
                20.0,
            )
        })
        .collect();
    store.append(&batch).unwrap();
    store.engine.as_logged().unwrap().checkpoint_now().unwrap();
    let snap = store.engine.snapshot().unwrap();
    let count = |table| {
        let mut n = 0;
        snap.scan(table, &KeyRange::all(), Direction::Forward, &mut |_, _| {
            n += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        n
    };
    assert_eq!(count(Table::Readings), 0);
    assert_eq!(count(Table::DeviceTime), 0);
    // 1000 readings a device: one block each, one index entry each.
    assert_eq!(count(Table::Blocks), 3);
    assert_eq!(count(Table::BlockTimes), 3);
    let mut bytes = 0;
    snap.scan(
        Table::Blocks,
        &KeyRange::all(),
        Direction::Forward,
        &mut |_, v| {
            bytes += v.len();
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert!(
        bytes < 3000 * 8,
        "{bytes} bytes of blocks for 3000 readings"
    );
    drop(snap);
    assert_eq!(store.readings_from(0, 3000, 5000).unwrap().len(), 3000);
}

#[test]
fn offsets_past_a_window_of_erased_readings_inside_one_span_are_still_read() {
    let mut harness = Logged::redb();
    harness.config.checkpoint_bytes = 64 << 20;
    let store = Store::open(harness.open()).unwrap();
    let mut batch = Vec::new();
    let mut seq = 0;
    let mut push = |device: &str, n: u32, batch: &mut Vec<NewReading>| {
        for _ in 0..n {
            seq += 1;
            batch.push(reading(device, seq, T0 + u64::from(seq), 1.0));
        }
    };
    push("kept", 10, &mut batch);
    push("gone", 10_000, &mut batch);
    push("kept", 10, &mut batch);
    store.append(&batch).unwrap();
    store.checkpoint().unwrap();
    store.remove_device("gone", true, 1).unwrap().unwrap();
    let offsets: Vec<u64> = store
        .readings_from(0, u64::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect();
    let want: Vec<u64> = (0..10).chain(10_010..10_020).collect();
    assert_eq!(offsets, want);
    assert_eq!(store.reading_count().unwrap(), 20);
    assert_eq!(
        store.readings_from(11, u64::MAX, 1).unwrap()[0].offset,
        10_010
    );
}
