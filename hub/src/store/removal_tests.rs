//! Removing devices, on every engine and both write paths: kept readings stay readable by id,
//! erased ones go with their index, rollups and parked copies while nothing of another device
//! moves; an erase cut at any step (as by a kill) is finished at the next open; offsets and device
//! numbers are never given twice.

use std::collections::{BTreeMap, BTreeSet};

use device_protocol::OwnedValue;
use proptest::prelude::*;

use super::sync::{FollowerKind, SyncPosition};
use super::tests::{Harness, Logged, harnesses, query};
use super::*;

fn reading(device: &str, seq: u32, ts: u64) -> NewReading {
    NewReading {
        device: device.into(),
        transport: Transport::Mqtt,
        wire: Wire::Json,
        seq: Some(seq),
        boot: None,
        timestamp_ms: Some(ts),
        received_ms: ts,
        metrics: vec![("v".into(), OwnedValue::I64(i64::from(seq)))],
    }
}

/// Every reading held, by offset, with its device.
fn held(store: &Store) -> BTreeMap<u64, String> {
    let next = store.next_offset().unwrap();
    store
        .readings_from(0, next, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.offset, r.device))
        .collect()
}

/// The offsets of `device`'s readings, through the readings route's query.
fn offsets_of(store: &Store, device: &str) -> Option<Vec<u64>> {
    store
        .readings(&query(device, Order::Oldest, 100_000))
        .unwrap()
        .map(|page| page.readings.iter().map(|r| r.offset).collect())
}

/// Keys of `table` under device `number`.
fn rows(store: &Store, table: Table, number: u32) -> usize {
    let snap = store.engine.snapshot().unwrap();
    let mut n = 0;
    snap.scan(
        table,
        &KeyRange::prefix(&number.to_be_bytes()),
        Direction::Forward,
        &mut |_, _| {
            n += 1;
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    n
}

fn number(store: &Store, device: &str) -> u32 {
    store.catalog().unwrap().device_numbers[device]
}

#[test]
fn kept_readings_stay_readable_erased_ones_go_and_nothing_else_moves_on_every_engine() {
    for (name, mut harness) in harnesses() {
        let store = Store::open(harness.open()).unwrap();
        // a, b, c interleaved, a's timestamps going backwards so its index is not in offset order.
        let batch: Vec<NewReading> = (0..300u32)
            .map(|i| {
                let device = ["a", "b", "c"][i as usize % 3];
                let ts = if device == "a" {
                    2_000_000 - u64::from(i) * 1000
                } else {
                    1_000_000 + u64::from(i) * 1000
                };
                reading(device, i, ts)
            })
            .collect();
        store.append(&batch).unwrap();
        // A sink parked one reading of a and one of b.
        let position = SyncPosition::start(FollowerKind::Sink, 0);
        store
            .park("cloud", &[0, 1], 400, "no", &position, 1)
            .unwrap();
        let before = held(&store);
        let (number_a, number_b) = (number(&store, "a"), number(&store, "b"));
        assert!(rows(&store, Table::Rollups, number_a) > 0, "{name}");

        // b removed, readings kept: gone from the registry and its latest values, readable by id.
        assert!(!store.removable("nobody", false).unwrap());
        let removed = store.remove_device("b", false, 5).unwrap().unwrap();
        assert_eq!(removed.erased, 0, "{name}");
        assert!(store.device("b").unwrap().is_none(), "{name}");
        assert!(store.latest("b").unwrap().is_none(), "{name}");
        assert!(
            store
                .devices(None, 100)
                .unwrap()
                .iter()
                .all(|d| d.record.name != "b")
        );
        assert_eq!(store.device_count().unwrap(), 2, "{name}");
        assert_eq!(offsets_of(&store, "b").unwrap().len(), 100, "{name}");
        assert_eq!(held(&store), before, "{name}: keep moves nothing");
        assert!(
            store.remove_device("b", false, 6).unwrap().is_none(),
            "{name}: twice"
        );

        // a removed and erased: its readings, index, rollups, latest values and parked copy go;
        // every other reading keeps its offset; the count is exact.
        let removed = store.remove_device("a", true, 7).unwrap().unwrap();
        assert_eq!(removed.erased, 100, "{name}");
        let expected: BTreeMap<u64, String> = before
            .iter()
            .filter(|(_, d)| *d != "a")
            .map(|(o, d)| (*o, d.clone()))
            .collect();
        assert_eq!(held(&store), expected, "{name}");
        assert_eq!(store.reading_count().unwrap(), 200, "{name}");
        assert_eq!(store.next_offset().unwrap(), 300, "{name}");
        assert!(offsets_of(&store, "a").is_none(), "{name}");
        for table in [
            Table::DeviceTime,
            Table::BlockTimes,
            Table::Rollups,
            Table::Latest,
        ] {
            assert_eq!(rows(&store, table, number_a), 0, "{name}: {table:?}");
        }
        let parked: Vec<String> = store
            .parked(10)
            .unwrap()
            .into_iter()
            .map(|p| p.reading.device)
            .collect();
        assert_eq!(parked, vec!["b".to_owned()], "{name}");

        // After a reopen (as after a kill): the same, and the numbers are not given again.
        drop(store);
        let store = Store::open(harness.open()).unwrap();
        assert_eq!(held(&store), expected, "{name}: reopened");
        assert_eq!(store.reading_count().unwrap(), 200, "{name}: reopened");
        store
            .append(&[reading("a", 0, 3_000_000), reading("z", 0, 3_000_000)])
            .unwrap();
        let (again_a, z) = (number(&store, "a"), number(&store, "z"));
        assert!(
            again_a > number_a && z > number_a && again_a != z,
            "{name}: {number_a} {again_a} {z}"
        );
        assert_eq!(
            offsets_of(&store, "a").unwrap(),
            vec![300],
            "{name}: a anew"
        );
        // b back: registered anew under its number, its kept readings and the new one by id.
        store.append(&[reading("b", 0, 3_000_000)]).unwrap();
        assert_eq!(number(&store, "b"), number_b, "{name}");
        let b = store.device("b").unwrap().expect("b back");
        assert_eq!(
            (b.record.readings, b.record.first_seen_ms),
            (1, 3_000_000),
            "{name}"
        );
        assert_eq!(offsets_of(&store, "b").unwrap().len(), 101, "{name}");
        // Erasing b now takes its kept readings too.
        assert_eq!(
            store.remove_device("b", true, 8).unwrap().unwrap().erased,
            101,
            "{name}"
        );
        assert_eq!(store.reading_count().unwrap(), 102, "{name}");
    }
}

#[test]
fn a_device_removed_with_its_readings_kept_may_have_them_erased_later() {
    let store = Store::open(Arc::new(memory::MemoryEngine::new())).unwrap();
    store
        .append(&[reading("a", 0, 1_000), reading("b", 0, 1_000)])
        .unwrap();
    store.remove_device("a", false, 1).unwrap().unwrap();
    assert!(!store.removable("a", false).unwrap());
    assert!(store.removable("a", true).unwrap());
    assert_eq!(
        store.remove_device("a", true, 2).unwrap().unwrap().erased,
        1
    );
    assert!(!store.removable("a", true).unwrap());
    assert_eq!(held(&store).len(), 1);
}

#[derive(Debug, Clone)]
struct Case {
    /// Devices 0..4 of each reading, with a timestamp.
    readings: Vec<(u8, u64)>,
    /// Readings retention deletes from the front first.
    retained_from: usize,
    /// The device removed.
    victim: u8,
    /// Readings per erase step.
    chunk: usize,
    /// Steps done before the "kill" (more than the erase needs: it finishes).
    steps: usize,
    /// Whether retention deletes some more of the oldest after the reopen.
    trim_after: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec((0u8..4, 0u64..50), 1..120),
        0usize..40,
        0u8..4,
        1usize..25,
        0usize..12,
        0usize..30,
    )
        .prop_map(
            |(readings, retained_from, victim, chunk, steps, trim_after)| Case {
                readings,
                retained_from,
                victim,
                chunk,
                steps,
                trim_after,
            },
        )
}

/// Runs `case` over `harness`; the store against a model of offsets and devices.
fn run(harness: &mut dyn Harness, case: Case) -> Result<(), TestCaseError> {
    let store = Store::open(harness.open()).unwrap();
    let batch: Vec<NewReading> = case
        .readings
        .iter()
        .enumerate()
        .map(|(i, (d, ts))| reading(&format!("d{d}"), i as u32, 1_000_000 + ts * 1000))
        .collect();
    store.append(&batch).unwrap();
    let mut model: BTreeMap<u64, String> = batch
        .iter()
        .enumerate()
        .map(|(i, r)| (i as u64, r.device.clone()))
        .collect();
    // Retention took the oldest first.
    // Rows one by one, sealed readings a whole span at a time: more may go than asked.
    let cut = case.retained_from.min(model.len());
    let deleted = store.delete_oldest(cut, |_, _| false).unwrap();
    let kept_from = deleted.next.unwrap_or(0);
    model.retain(|offset, _| *offset >= kept_from);
    let victim = format!("d{}", case.victim);
    let next = store.next_offset().unwrap();

    // The erase, cut after some steps; then the store is dropped without any cleanup.
    let removable = store.removable(&victim, true).unwrap();
    prop_assert_eq!(removable, batch.iter().any(|r| r.device == victim));
    let victim_number = removable.then(|| number(&store, &victim));
    if removable {
        let number = store.mark_removed(&victim, true, 1).unwrap().unwrap();
        for _ in 0..case.steps {
            if store.erase_step(number, case.chunk).unwrap().done {
                break;
            }
        }
    }
    drop(store);
    let store = Store::open(harness.open()).unwrap();
    model.retain(|_, device| *device != victim);
    prop_assert_eq!(held(&store), model.clone());
    prop_assert_eq!(store.reading_count().unwrap(), model.len() as u64);
    prop_assert_eq!(store.next_offset().unwrap(), next);
    prop_assert!(store.device(&victim).unwrap().is_none());
    prop_assert!(offsets_of(&store, &victim).is_none());
    if let Some(n) = victim_number {
        for table in [
            Table::DeviceTime,
            Table::BlockTimes,
            Table::Rollups,
            Table::Latest,
        ] {
            prop_assert_eq!(rows(&store, table, n), 0);
        }
    }
    // The others: their readings by id are the model's.
    for d in (0..4).map(|d| format!("d{d}")).filter(|d| *d != victim) {
        let expected: Vec<u64> = model
            .iter()
            .filter(|(_, dev)| **dev == d)
            .map(|(o, _)| *o)
            .collect();
        let found = offsets_of(&store, &d).map(|mut o| {
            o.sort_unstable();
            o
        });
        if batch.iter().any(|r| r.device == d) {
            prop_assert_eq!(found, Some(expected));
        }
    }
    // A follower paging by offset sees every reading left once, in order.
    let mut from = 0;
    let mut paged = Vec::new();
    loop {
        let page = store.readings_from(from, next, 7).unwrap();
        let Some(last) = page.last() else { break };
        from = last.offset + 1;
        paged.extend(page.into_iter().map(|r| r.offset));
    }
    prop_assert_eq!(paged, model.keys().copied().collect::<Vec<_>>());
    // Retention passing the gaps keeps the count exact.
    let trimmed = store.delete_oldest(case.trim_after, |_, _| false).unwrap();
    let gone: BTreeSet<u64> = model
        .keys()
        .take(trimmed.readings as usize)
        .copied()
        .collect();
    model.retain(|offset, _| !gone.contains(offset));
    prop_assert_eq!(store.reading_count().unwrap(), model.len() as u64);
    prop_assert_eq!(held(&store), model);
    // The victim's id is free: a new device takes it under a new number.
    store.append(&[reading(&victim, 0, 9_000_000)]).unwrap();
    prop_assert!(victim_number.is_none_or(|old| number(&store, &victim) > old));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Direct to the engine (memory), cut at any step.
    #[test]
    fn an_erase_cut_at_any_step_is_finished_at_open_and_touches_nothing_else(case in case()) {
        let mut harness: Box<dyn Harness> = harnesses().into_iter().find(|(n, _)| *n == "memory").unwrap().1;
        run(harness.as_mut(), case)?;
    }

    /// The same behind the log, whose records past the last checkpoint are replayed at open.
    #[test]
    fn an_erase_cut_at_any_step_behind_the_log_is_finished_at_open(case in case()) {
        let mut harness = Logged {
            memory: Some(memory::MemoryEngine::new()),
            ..Logged::redb()
        };
        harness.config.checkpoint_bytes = 2 << 10;
        run(&mut harness, case)?;
    }
}
