//! One conformance suite, run against every engine: the engine contract itself, then the store's
//! domain behaviour, each including close and reopen.

use std::ops::ControlFlow;
use std::sync::Arc;

use device_protocol::OwnedValue;

use super::engine::{Direction, Engine, KeyRange, Table, WriteBatch};
use super::memory::MemoryEngine;
use super::*;

/// A seq of a device that sends no boot.
fn dev(seq: u32) -> ReadingSeq {
    ReadingSeq::Device { boot: None, seq }
}

/// Opens an engine, closes it and opens it again over the same data.
pub(super) trait Harness {
    fn open(&mut self) -> Arc<dyn Engine>;
}

struct Memory(MemoryEngine);
impl Harness for Memory {
    fn open(&mut self) -> Arc<dyn Engine> {
        Arc::new(self.0.reopen())
    }
}

pub(super) struct OnDisk(pub(super) tempfile::TempDir, pub(super) EngineKind);
impl Harness for OnDisk {
    fn open(&mut self) -> Arc<dyn Engine> {
        // sled's background flusher may hold the file lock for a moment after the previous
        // handle is dropped (in one process; a restarted hub is a new one): retry briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match open_engine(self.1, self.0.path(), 1 << 20) {
                Ok(engine) => return engine,
                Err(e)
                    if e.to_string().contains("lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("open engine: {e}"),
            }
        }
    }
}

/// An engine behind the log, with sizes small enough that segments roll over and checkpoints
/// run within a test.
pub(super) struct Logged {
    pub(super) dir: tempfile::TempDir,
    /// The engine under the log: memory (kept here across reopens) or, when `None`, redb.
    pub(super) memory: Option<MemoryEngine>,
    pub(super) config: LogConfig,
}

impl Logged {
    /// Over redb, with tiny segments and checkpoints every few kilobytes.
    pub(super) fn redb() -> Self {
        Logged {
            dir: tempfile::tempdir().expect("tempdir"),
            memory: None,
            config: LogConfig {
                segment_bytes: 4 << 10,
                checkpoint_bytes: 8 << 10,
                checkpoint_every: std::time::Duration::from_secs(3600),
                spare_segments: 2,
            },
        }
    }

    /// Opens the log over its engine (as [`Harness::open`]), returning the log itself.
    pub(super) fn open_log(&mut self) -> Arc<LoggedEngine> {
        let inner: Arc<dyn Engine> = match &self.memory {
            Some(memory) => Arc::new(memory.reopen()),
            None => open_engine(EngineKind::Redb, self.dir.path(), 1 << 20).expect("open redb"),
        };
        Arc::new(
            LoggedEngine::open(inner, &log_dir(self.dir.path()), self.config).expect("open log"),
        )
    }
}

impl Harness for Logged {
    fn open(&mut self) -> Arc<dyn Engine> {
        self.open_log()
    }
}

pub(super) fn harnesses() -> Vec<(&'static str, Box<dyn Harness>)> {
    #[cfg_attr(not(feature = "sled"), allow(unused_mut))]
    let mut all: Vec<(&'static str, Box<dyn Harness>)> = vec![
        ("memory", Box::new(Memory(MemoryEngine::new()))),
        ("redb+log", Box::new(Logged::redb())),
        (
            "memory+log",
            Box::new(Logged {
                memory: Some(MemoryEngine::new()),
                ..Logged::redb()
            }),
        ),
        (
            "redb",
            Box::new(OnDisk(
                tempfile::tempdir().expect("tempdir"),
                EngineKind::Redb,
            )),
        ),
    ];
    #[cfg(feature = "sled")]
    all.push((
        "sled",
        Box::new(OnDisk(
            tempfile::tempdir().expect("tempdir"),
            EngineKind::Sled,
        )),
    ));
    all
}

fn collect(engine: &dyn Engine, table: Table, range: KeyRange, dir: Direction) -> Vec<Vec<u8>> {
    let snap = engine.snapshot().unwrap();
    let mut keys = Vec::new();
    snap.scan(table, &range, dir, &mut |k, _| {
        keys.push(k.to_vec());
        ControlFlow::Continue(())
    })
    .unwrap();
    keys
}

#[test]
fn engine_put_get_delete_and_reopen() {
    for (name, mut h) in harnesses() {
        let engine = h.open();
        let mut batch = WriteBatch::new();
        batch.put(Table::Meta, b"a".to_vec(), b"1".to_vec());
        batch.put(Table::Meta, b"b".to_vec(), b"2".to_vec());
        batch.put(Table::Devices, b"a".to_vec(), b"other table".to_vec());
        batch.put(Table::Meta, b"a".to_vec(), b"1b".to_vec()); // later change wins
        batch.delete(Table::Meta, b"b".to_vec());
        engine.commit(&batch).unwrap();
        drop(engine);

        let engine = h.open();
        let snap = engine.snapshot().unwrap();
        assert_eq!(
            snap.get(Table::Meta, b"a").unwrap().as_deref(),
            Some(&b"1b"[..]),
            "{name}"
        );
        assert_eq!(snap.get(Table::Meta, b"b").unwrap(), None, "{name}");
        assert_eq!(
            snap.get(Table::Devices, b"a").unwrap().as_deref(),
            Some(&b"other table"[..])
        );
        assert_eq!(
            snap.get(Table::Readings, b"a").unwrap(),
            None,
            "{name}: tables are separate"
        );
    }
}

#[test]
fn engine_scans_in_order_both_ways_with_ranges_and_early_stop() {
    for (name, mut h) in harnesses() {
        let engine = h.open();
        let mut batch = WriteBatch::new();
        for i in [5u64, 1, 300, 2, 256, 255] {
            batch.put(Table::Readings, i.to_be_bytes().to_vec(), vec![i as u8]);
        }
        batch.put(Table::Latest, vec![0xff, 0xff], vec![]);
        batch.put(Table::Latest, vec![0xff], vec![]);
        batch.put(Table::Latest, vec![0x01, 0x02], vec![]);
        engine.commit(&batch).unwrap();
        let nums = |keys: Vec<Vec<u8>>| -> Vec<u64> {
            keys.into_iter()
                .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
                .collect()
        };
        let all = collect(
            &*engine,
            Table::Readings,
            KeyRange::all(),
            Direction::Forward,
        );
        assert_eq!(nums(all), vec![1, 2, 5, 255, 256, 300], "{name}");
        let rev = collect(
            &*engine,
            Table::Readings,
            KeyRange::all(),
            Direction::Reverse,
        );
        assert_eq!(nums(rev), vec![300, 256, 255, 5, 2, 1], "{name}");
        let mid = KeyRange::between(2u64.to_be_bytes().to_vec(), 256u64.to_be_bytes().to_vec());
        assert_eq!(
            nums(collect(
                &*engine,
                Table::Readings,
                mid.clone(),
                Direction::Forward
            )),
            vec![2, 5, 255]
        );
        assert_eq!(
            nums(collect(&*engine, Table::Readings, mid, Direction::Reverse)),
            vec![255, 5, 2]
        );
        // A prefix of all 0xff bytes has no successor: the range runs to the end of the table.
        let ff = collect(
            &*engine,
            Table::Latest,
            KeyRange::prefix(&[0xff]),
            Direction::Forward,
        );
        assert_eq!(ff, vec![vec![0xff], vec![0xff, 0xff]], "{name}");

        let snap = engine.snapshot().unwrap();
        let mut seen = 0;
        snap.scan(
            Table::Readings,
            &KeyRange::all(),
            Direction::Reverse,
            &mut |_, _| {
                seen += 1;
                if seen == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
        .unwrap();
        assert_eq!(seen, 2, "{name}: scan stops when the visitor breaks");
    }
}

fn reading(
    device: &str,
    seq: Option<u32>,
    ts: Option<u64>,
    metrics: &[(&str, OwnedValue)],
) -> NewReading {
    NewReading {
        device: device.into(),
        transport: Transport::Mqtt,
        wire: crate::store::Wire::Json,
        seq,
        boot: None,
        timestamp_ms: ts,
        received_ms: 1_000_000,
        metrics: metrics
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect(),
    }
}

pub(super) fn query(device: &str, order: Order, limit: usize) -> ReadingsQuery {
    ReadingsQuery {
        device: device.into(),
        metric: None,
        from_ms: None,
        to_ms: None,
        order,
        limit,
        after: None,
    }
}

#[test]
fn store_appends_reads_back_and_keeps_everything_across_reopen() {
    for (name, mut h) in harnesses() {
        let store = Store::open(h.open()).unwrap();
        let batch = vec![
            reading(
                "dev-1",
                Some(7),
                Some(1000),
                &[
                    ("temp", OwnedValue::F64(21.5)),
                    ("door", OwnedValue::Bool(false)),
                ],
            ),
            reading(
                "dev-2",
                None,
                None,
                &[("label", OwnedValue::Str("a".into()))],
            ),
            reading(
                "dev-1",
                Some(8),
                Some(2000),
                &[
                    ("temp", OwnedValue::F64(22.0)),
                    ("count", OwnedValue::I64(-3)),
                ],
            ),
        ];
        let assigned = store.append(&batch).unwrap();
        let stored: Vec<_> = assigned.iter().map(|a| a.outcome).collect();
        assert_eq!(
            stored,
            vec![
                Outcome::Stored {
                    offset: 0,
                    seq: dev(7)
                },
                Outcome::Stored {
                    offset: 1,
                    seq: ReadingSeq::Hub(0)
                },
                Outcome::Stored {
                    offset: 2,
                    seq: dev(8)
                }
            ],
            "{name}: a device without seq gets one assigned, apart from device seqs"
        );
        assert_eq!(
            assigned[0].ack.as_ref().map(|a| a.seq),
            Some(8),
            "{name}: the ack is the device's after the batch"
        );
        assert_eq!(
            assigned[1].ack, None,
            "{name}: no ack for a device that sends no seq"
        );

        drop(store);

        let store = Store::open(h.open()).unwrap();
        assert_eq!(
            store.next_offset().unwrap(),
            3,
            "{name}: offsets survive reopen"
        );
        let more = store
            .append(&[reading(
                "dev-2",
                None,
                None,
                &[("label", OwnedValue::Str("b".into()))],
            )])
            .unwrap();
        assert_eq!(
            more[0].outcome,
            Outcome::Stored {
                offset: 3,
                seq: ReadingSeq::Hub(1)
            },
            "{name}: the hub's numbering survives reopen"
        );

        let page = store
            .readings(&query("dev-1", Order::Oldest, 10))
            .unwrap()
            .unwrap();
        assert_eq!(page.readings.len(), 2, "{name}");
        assert_eq!(page.readings[0].seq, dev(7));
        assert_eq!(page.readings[0].timestamp_ms, 1000);
        assert!(
            page.readings[0]
                .metrics
                .contains(&("temp".into(), OwnedValue::F64(21.5)))
        );
        assert_eq!(page.next, None);

        let latest = store.latest("dev-1").unwrap().unwrap();
        let names: Vec<_> = latest.iter().map(|l| l.metric.as_str()).collect();
        assert_eq!(names, vec!["count", "door", "temp"], "{name}");
        let temp = latest.iter().find(|l| l.metric == "temp").unwrap();
        assert_eq!(
            (temp.value.clone(), temp.timestamp_ms, temp.offset),
            (OwnedValue::F64(22.0), 2000, 2)
        );

        let devices = store.devices(None, 10).unwrap();
        assert_eq!(
            devices
                .iter()
                .map(|d| d.record.name.as_str())
                .collect::<Vec<_>>(),
            vec!["dev-1", "dev-2"]
        );
        assert_eq!(devices[0].record.readings, 2);
        assert_eq!(devices[0].record.last_seq, Some(8));
        assert_eq!(
            store.devices(Some("dev-1"), 10).unwrap().len(),
            1,
            "{name}: paging by id"
        );
        assert!(store.device("nope").unwrap().is_none());
        assert!(store.latest("nope").unwrap().is_none());
        assert!(
            store
                .readings(&query("nope", Order::Oldest, 10))
                .unwrap()
                .is_none()
        );
    }
}

#[test]
fn store_pages_by_cursor_in_both_orders_with_time_and_metric_filters() {
    for (name, mut h) in harnesses() {
        let store = Store::open(h.open()).unwrap();
        let batch: Vec<_> = (0..25u64)
            .map(|i| {
                let mut metrics = vec![("temp", OwnedValue::F64(i as f64))];
                if i % 5 == 0 {
                    metrics.push(("door", OwnedValue::Bool(true)));
                }
                // Timestamps out of arrival order: the index orders by time, not by offset.
                reading("d", Some(i as u32), Some(10_000 - i * 100), &metrics)
            })
            .collect();
        store.append(&batch).unwrap();

        for order in [Order::Oldest, Order::Newest] {
            let mut after = None;
            let mut seen = Vec::new();
            loop {
                let mut q = query("d", order, 7);
                q.after = after;
                let page = store.readings(&q).unwrap().unwrap();
                seen.extend(page.readings.iter().map(|r| r.timestamp_ms));
                match page.next {
                    Some(p) => after = Some(p),
                    None => break,
                }
            }
            let mut expected: Vec<u64> = (0..25u64).map(|i| 10_000 - i * 100).collect();
            expected.sort();
            if order == Order::Newest {
                expected.reverse();
            }
            assert_eq!(seen, expected, "{name} {order:?}");
        }

        let mut q = query("d", Order::Oldest, 100);
        q.from_ms = Some(8_000);
        q.to_ms = Some(9_000);
        let page = store.readings(&q).unwrap().unwrap();
        let ts: Vec<_> = page.readings.iter().map(|r| r.timestamp_ms).collect();
        assert_eq!(
            ts,
            (0..10).map(|i| 8_000 + i * 100).collect::<Vec<_>>(),
            "{name}: from inclusive, to exclusive"
        );

        let mut q = query("d", Order::Oldest, 100);
        q.metric = Some("door".into());
        let page = store.readings(&q).unwrap().unwrap();
        assert_eq!(page.readings.len(), 5, "{name}");
        assert!(
            page.readings
                .iter()
                .all(|r| r.metrics.len() == 1 && r.metrics[0].0 == "door")
        );
        q.metric = Some("never-sent".into());
        assert!(store.readings(&q).unwrap().unwrap().readings.is_empty());
    }
}

#[test]
fn store_refuses_a_newer_schema() {
    let engine = MemoryEngine::new();
    let mut batch = WriteBatch::new();
    batch.put(
        Table::Meta,
        records::META_SCHEMA_VERSION.to_vec(),
        (SCHEMA_VERSION + 1).to_be_bytes().to_vec(),
    );
    engine.commit(&batch).unwrap();
    assert!(matches!(
        Store::open(Arc::new(engine)),
        Err(StoreError::SchemaTooNew { .. })
    ));
}

#[test]
fn tokens_round_trip() {
    for (name, mut h) in harnesses() {
        let store = Store::open(h.open()).unwrap();
        let record = TokenRecord {
            name: "admin".into(),
            scopes: vec!["admin".into()],
            devices: vec![],
            created_ms: 5,
            expires_ms: None,
            revoked: false,
            last_used_ms: None,
        };
        store.put_token(&[1, 2, 3], &record).unwrap();
        drop(store);
        let store = Store::open(h.open()).unwrap();
        assert_eq!(
            store.tokens().unwrap(),
            vec![(vec![1, 2, 3], record)],
            "{name}"
        );
    }
}

#[test]
fn retransmissions_are_stored_once_even_across_reopen() {
    for (name, mut h) in harnesses() {
        let store = Store::open(h.open()).unwrap();
        let batch: Vec<_> = (0..5)
            .map(|s| reading("d", Some(s), None, &[("v", OwnedValue::I64(1))]))
            .collect();
        store.append(&batch).unwrap();
        drop(store);
        let store = Store::open(h.open()).unwrap();
        let batch: Vec<_> = (3..8)
            .map(|s| reading("d", Some(s), None, &[("v", OwnedValue::I64(2))]))
            .collect();
        let applied = store.append(&batch).unwrap();
        let outcomes: Vec<_> = applied.iter().map(|a| a.outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Duplicate { seq: 3 },
                Outcome::Duplicate { seq: 4 },
                Outcome::Stored {
                    offset: 5,
                    seq: dev(5)
                },
                Outcome::Stored {
                    offset: 6,
                    seq: dev(6)
                },
                Outcome::Stored {
                    offset: 7,
                    seq: dev(7)
                },
            ],
            "{name}"
        );
        assert!(
            applied
                .iter()
                .all(|a| a.ack.as_ref().map(|a| a.seq) == Some(7)),
            "{name}"
        );
        let device = store.device("d").unwrap().unwrap();
        assert_eq!(
            (device.record.readings, device.record.duplicates),
            (8, 2),
            "{name}"
        );
        let page = store
            .readings(&query("d", Order::Oldest, 100))
            .unwrap()
            .unwrap();
        let seqs: Vec<_> = page.readings.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..8).map(dev).collect::<Vec<_>>(), "{name}");
    }
}

#[test]
fn hello_registers_firmware_and_protocol() {
    for (name, mut h) in harnesses() {
        let store = Store::open(h.open()).unwrap();
        let hello = DeviceHello {
            device: "bin-1".into(),
            transport: Transport::Serial,
            firmware: "1.2.3".into(),
            protocol_version: 1,
            boot: None,
            received_ms: 5,
        };
        let applied = store.apply(&[Ingest::Hello(hello)]).unwrap();
        assert_eq!(applied[0].outcome, Outcome::Registered);
        drop(store);
        let store = Store::open(h.open()).unwrap();
        let device = store.device("bin-1").unwrap().unwrap();
        assert_eq!(device.record.firmware.as_deref(), Some("1.2.3"), "{name}");
        assert_eq!(device.record.protocol_version, Some(1));
        assert_eq!(device.record.transport, Transport::Serial);
        assert_eq!(
            store.next_offset().unwrap(),
            0,
            "{name}: a hello is not a reading"
        );
    }
}

mod model {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A batch of (device index, seq or none).
        Append(Vec<(u8, Option<u32>)>),
        /// Close and open the store again (never cleanly: as after a kill).
        Reopen,
        /// Fold the log into the engine now (a no-op without a log).
        Checkpoint,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::collection::vec((0u8..3, proptest::option::weighted(0.8, 0u32..40)), 1..12).prop_map(Op::Append),
            1 => Just(Op::Reopen),
            1 => Just(Op::Checkpoint),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The store against a model that remembers every (device, seq): each reading is stored
        /// exactly once, offsets count up from 0 without gaps across reopen, hub-assigned seqs
        /// count up per device on their own, and the device's readings are exactly the model's.
        #[test]
        fn store_matches_a_simple_model(ops in proptest::collection::vec(op(), 1..25)) {
            let mut harness = OnDisk(tempfile::tempdir().unwrap(), EngineKind::Redb);
            run_model(&mut harness, ops)?;
        }

        /// The same behind the log, with checkpoints every few kilobytes and at random, and
        /// reopens that replay the log past the last one.
        #[test]
        fn a_logged_store_matches_the_same_model_across_checkpoints_and_reopens(
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let mut harness = Logged::redb();
            harness.config.checkpoint_bytes = 3 << 10;
            run_model(&mut harness, ops)?;
        }
    }

    fn run_model(harness: &mut dyn Harness, ops: Vec<Op>) -> Result<(), TestCaseError> {
        {
            let mut store = Store::open(harness.open()).unwrap();
            // Per device: the seqs the device numbered (for dedup), every stored seq (a multiset:
            // a hub-assigned seq may equal one the device sends), and the hub's last number.
            let mut seen: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
            let mut all: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            let mut highest: BTreeMap<String, u32> = BTreeMap::new();
            let mut first: BTreeMap<String, u32> = BTreeMap::new();
            let mut next_offset = 0u64;
            for op in ops {
                match op {
                    Op::Reopen => {
                        drop(store);
                        store = Store::open(harness.open()).unwrap();
                    }
                    Op::Checkpoint => {
                        if let Some(log) = store.engine.as_logged() {
                            log.checkpoint_now().unwrap();
                        }
                    }
                    Op::Append(items) => {
                        let batch: Vec<NewReading> = items
                            .iter()
                            .map(|(d, seq)| {
                                // Devices 0 and 1 send seqs; device 2 never does.
                                let seq = if *d == 2 { None } else { *seq };
                                reading(&format!("d{d}"), seq, None, &[("v", OwnedValue::I64(1))])
                            })
                            .collect();
                        let applied = store.append(&batch).unwrap();
                        for (r, a) in batch.iter().zip(&applied) {
                            let set = seen.entry(r.device.clone()).or_default();
                            let stored = all.entry(r.device.clone()).or_default();
                            let high = highest.get(&r.device).copied();
                            let expected = match r.seq {
                                Some(s) => {
                                    let start = *first.entry(r.device.clone()).or_insert(s);
                                    (s >= start && set.insert(s)).then_some(s)
                                }
                                // Unnumbered: the hub's next number for the device, outside dedup.
                                None => Some(high.map_or(0, |h| h + 1)),
                            };
                            match expected {
                                Some(s) => {
                                    let seq = if r.seq.is_some() {
                                        dev(s)
                                    } else {
                                        ReadingSeq::Hub(s)
                                    };
                                    prop_assert_eq!(
                                        a.outcome,
                                        Outcome::Stored {
                                            offset: next_offset,
                                            seq
                                        }
                                    );
                                    next_offset += 1;
                                    stored.push(s);
                                    if r.seq.is_none() {
                                        highest.insert(r.device.clone(), s);
                                    }
                                }
                                None => {
                                    prop_assert_eq!(
                                        a.outcome,
                                        Outcome::Duplicate {
                                            seq: r.seq.unwrap()
                                        }
                                    );
                                }
                            }
                        }
                    }
                }
            }
            prop_assert_eq!(store.next_offset().unwrap(), next_offset);
            for (device, seqs) in &all {
                let page = store
                    .readings(&query(device, Order::Oldest, 10_000))
                    .unwrap()
                    .unwrap();
                let mut stored: Vec<u32> = page
                    .readings
                    .iter()
                    .filter_map(|r| r.seq.device_seq().or(r.seq.hub_seq()))
                    .collect();
                stored.sort();
                let mut expected = seqs.clone();
                expected.sort();
                prop_assert_eq!(stored, expected);
            }
        }
        Ok(())
    }
}

#[test]
fn sync_positions_parking_and_oldest_first_deletes_survive_reopen() {
    use super::sync::{FollowerKind, SyncPosition};
    for (name, mut harness) in harnesses() {
        let store = Store::open(harness.open()).unwrap();
        let batch: Vec<NewReading> = (0..10u32)
            .map(|i| {
                reading(
                    if i % 2 == 0 { "a" } else { "b" },
                    Some(i),
                    Some(1_000 + u64::from(i)),
                    &[("v", OwnedValue::I64(i64::from(i)))],
                )
            })
            .collect();
        store.append(&batch).unwrap();
        let page = store.readings_from(3, 8, 100).unwrap();
        let offsets: Vec<u64> = page.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [3, 4, 5, 6, 7], "{name}");
        assert_eq!(page[0].device, "b", "{name}");
        assert_eq!(store.readings_from(0, 10, 2).unwrap().len(), 2, "{name}");

        let position = SyncPosition {
            next: 4,
            inflight: Some((4, 6)),
            ..SyncPosition::start(FollowerKind::Sink, 5)
        };
        store.set_sync_position("cloud", &position).unwrap();
        let moved = SyncPosition {
            next: 6,
            inflight: None,
            ..position
        };
        // Parking copies the reading and moves the position in one commit.
        store
            .park("cloud", &[5], 400, "bad value", &moved, 77)
            .unwrap();

        // Oldest first, stopping where told; index entries go too.
        let deleted = store.delete_oldest(3, |_, _| false).unwrap();
        assert_eq!(deleted.readings, 3, "{name}");
        assert_eq!(deleted.next, Some(3), "{name}");
        let deleted = store.delete_oldest(100, |offset, _| offset >= 6).unwrap();
        assert_eq!(deleted.readings, 3, "{name}");
        drop(store);

        let store = Store::open(harness.open()).unwrap();
        assert_eq!(store.oldest_offset().unwrap(), Some(6), "{name}");
        assert_eq!(store.reading_count().unwrap(), 4, "{name}");
        assert_eq!(store.sync_position("cloud").unwrap(), Some(moved), "{name}");
        assert_eq!(store.sync_positions().unwrap().len(), 1, "{name}");
        let parked = store.parked(10).unwrap();
        assert_eq!(parked.len(), 1, "{name}");
        assert_eq!(parked[0].reading.offset, 5, "{name}");
        assert_eq!(parked[0].reading.device, "b", "{name}");
        assert_eq!(
            (parked[0].status, parked[0].reason.as_str()),
            (400, "bad value")
        );
        // The device's index no longer lists what was deleted.
        let page = store
            .readings(&query("a", Order::Oldest, 100))
            .unwrap()
            .unwrap();
        let offsets: Vec<u64> = page.readings.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [6, 8], "{name}");
        assert!(store.remove_sync_position("cloud").unwrap(), "{name}");
        assert!(!store.remove_sync_position("cloud").unwrap(), "{name}");
    }
}

#[test]
fn a_refusing_store_stores_no_reading_and_acks_none() {
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    store.set_refusing(true);
    let applied = store
        .append(&[reading("a", Some(1), None, &[("v", OwnedValue::I64(1))])])
        .unwrap();
    assert_eq!(applied[0].outcome, Outcome::Refused);
    assert_eq!(applied[0].ack, None);
    assert_eq!(store.next_offset().unwrap(), 0);
    store.set_refusing(false);
    let applied = store
        .append(&[reading("a", Some(1), None, &[("v", OwnedValue::I64(1))])])
        .unwrap();
    assert_eq!(
        applied[0].outcome,
        Outcome::Stored {
            offset: 0,
            seq: dev(1)
        }
    );
}

#[test]
fn redb_reuses_the_space_of_deleted_readings_and_compaction_shrinks_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(EngineKind::Redb, dir.path(), 1 << 20).unwrap();
    let store = Store::open(engine).unwrap();
    let write = |from: u32| {
        for chunk in 0..20u32 {
            let batch: Vec<NewReading> = (0..500u32)
                .map(|i| {
                    let seq = from + chunk * 500 + i;
                    reading(
                        "d",
                        Some(seq),
                        None,
                        &[("v", OwnedValue::F64(f64::from(seq)))],
                    )
                })
                .collect();
            store.append(&batch).unwrap();
        }
    };
    write(0);
    let file = |s: &Store| s.usage().unwrap().file_bytes;
    // Keep 10,000 readings: delete as many as were written, then write again, a few times.
    write(10_000);
    while store
        .delete_oldest(2_000, |o, _| o >= 10_000)
        .unwrap()
        .readings
        > 0
    {}
    let steady = file(&store);
    for round in 2..6u32 {
        write(round * 10_000);
        let keep_from = (round - 1) * 10_000;
        while store
            .delete_oldest(2_000, |o, _| o >= u64::from(keep_from) + 10_000)
            .unwrap()
            .readings
            > 0
        {}
    }
    let after = file(&store);
    assert!(
        after <= steady + steady / 2,
        "the file kept growing while retention ran: {steady} -> {after} bytes"
    );
    // Delete nearly everything: compaction gives the space back.
    while store
        .delete_oldest(2_000, |o, _| o >= 59_900)
        .unwrap()
        .readings
        > 0
    {}
    let before = file(&store);
    while store.compact().unwrap() {}
    assert!(file(&store) < before, "compaction did not shrink the file");
    assert_eq!(store.reading_count().unwrap(), 100);
}

#[test]
fn redb_empties_its_cache_only_while_no_snapshot_reads_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(EngineKind::Redb, dir.path(), 1 << 20).unwrap();
    let store = Store::open(engine.clone()).unwrap();
    let batch: Vec<NewReading> = (0..500u32)
        .map(|seq| {
            reading(
                "d",
                Some(seq),
                None,
                &[("v", OwnedValue::I64(i64::from(seq)))],
            )
        })
        .collect();
    store.append(&batch).unwrap();
    {
        // A reader is in the middle of something: closing the file under it would fail it.
        let _snapshot = engine.snapshot().unwrap();
        assert!(!store.release_memory().unwrap());
    }
    assert!(store.release_memory().unwrap());
    // Everything is still there, and the store takes more.
    assert_eq!(store.next_offset().unwrap(), 500);
    assert!(store.device("d").unwrap().is_some());
    store
        .append(&[reading(
            "d",
            Some(500),
            None,
            &[("v", OwnedValue::I64(500))],
        )])
        .unwrap();
    assert_eq!(store.next_offset().unwrap(), 501);
    // The catalog, copied afresh by the release, still knows the device's seqs (a resent one is
    // a duplicate) and its metric.
    store
        .append(&[reading(
            "d",
            Some(499),
            None,
            &[("v", OwnedValue::I64(499))],
        )])
        .unwrap();
    assert_eq!(store.next_offset().unwrap(), 501);
    assert_eq!(store.devices(None, 10).unwrap().len(), 1);
    // Engines without such a cache have nothing to release.
    let memory = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    assert!(!memory.release_memory().unwrap());
}

#[test]
fn a_parked_reading_keeps_its_numbering() {
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    let mut numbered = reading("b", Some(4), None, &[("v", OwnedValue::I64(1))]);
    numbered.boot = Some(9);
    let unnumbered = reading("c", None, None, &[("v", OwnedValue::I64(2))]);
    store.append(&[numbered, unnumbered]).unwrap();
    let position = sync::SyncPosition::start(sync::FollowerKind::Sink, 2);
    store
        .park("cloud", &[0, 1], 400, "bad value", &position, 7)
        .unwrap();
    let parked: Vec<_> = store
        .parked(10)
        .unwrap()
        .into_iter()
        .map(|p| (p.reading.seq, p.status, p.reason, p.parked_ms))
        .collect();
    assert_eq!(
        parked,
        vec![
            (
                ReadingSeq::Device {
                    boot: Some(9),
                    seq: 4
                },
                400,
                "bad value".to_owned(),
                7
            ),
            (ReadingSeq::Hub(0), 400, "bad value".to_owned(), 7),
        ]
    );
}

fn booted(boot: Option<u32>, seq: u32) -> NewReading {
    let mut r = reading("d", Some(seq), None, &[("v", OwnedValue::I64(1))]);
    r.boot = boot;
    r
}

#[test]
fn a_rebooted_device_gets_its_new_readings_stored_and_each_boot_its_own_ack() {
    for (name, mut h) in harnesses() {
        let store = Store::open(h.open()).unwrap();
        let first: Vec<_> = (0..50).map(|s| booted(Some(1), s)).collect();
        store.append(&first).unwrap();
        drop(store);
        let store = Store::open(h.open()).unwrap();
        // Rebooted: its counter starts again, with a new boot. Nothing is taken for a duplicate.
        let second: Vec<_> = (0..50).map(|s| booted(Some(2), s)).collect();
        let applied = store.append(&second).unwrap();
        assert!(
            applied
                .iter()
                .all(|a| matches!(a.outcome, Outcome::Stored { .. })),
            "{name}: 50 of 50 stored"
        );
        let ack = applied[0].ack.clone().unwrap();
        assert_eq!((ack.boot, ack.seq), (Some(2), 49), "{name}");
        // A late retransmission of the first boot is still known, and answered for its boot.
        let late = store.append(&[booted(Some(1), 10)]).unwrap();
        assert_eq!(late[0].outcome, Outcome::Duplicate { seq: 10 }, "{name}");
        let ack = late[0].ack.clone().unwrap();
        assert_eq!((ack.boot, ack.seq), (Some(1), 49), "{name}");
        let device = store.device("d").unwrap().unwrap();
        assert_eq!(
            (
                device.record.readings,
                device.record.last_seq,
                device.record.runs.current_boot()
            ),
            (100, Some(49), Some(2)),
            "{name}"
        );
        let page = store
            .readings(&query("d", Order::Oldest, 1000))
            .unwrap()
            .unwrap();
        let mut ids: Vec<_> = page
            .readings
            .iter()
            .map(|r| (r.seq.boot(), r.seq.device_seq()))
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 100, "{name}: no two readings share (boot, seq)");
    }
}

#[test]
fn a_reading_rejected_for_its_content_is_settled_so_the_ack_goes_on() {
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    let rejected = |seq| {
        Ingest::Rejected(RejectedReading {
            device: "d".into(),
            transport: Transport::Mqtt,
            wire: Wire::Json,
            seq,
            boot: None,
            received_ms: 1,
        })
    };
    let mut items = vec![rejected(1)];
    items.extend((2..=1200).map(|s| Ingest::Reading(booted(None, s))));
    let applied = store.apply(&items).unwrap();
    assert_eq!(applied[0].outcome, Outcome::Rejected { seq: 1 });
    assert!(
        applied
            .iter()
            .all(|a| a.ack.as_ref().map(|a| a.seq) == Some(1200))
    );
    // Sent again, it is rejected again (and taken for no new reading).
    let again = store.apply(&[rejected(1)]).unwrap();
    assert_eq!(again[0].outcome, Outcome::Rejected { seq: 1 });
    assert_eq!(again[0].ack.as_ref().map(|a| a.seq), Some(1200));
    // A valid reading under a rejected seq is not stored: the seq is settled.
    let dup = store.append(&[booted(None, 1)]).unwrap();
    assert_eq!(dup[0].outcome, Outcome::Duplicate { seq: 1 });
    let device = store.device("d").unwrap().unwrap();
    assert_eq!((device.record.readings, device.record.rejected), (1199, 1));
}

#[test]
fn a_binary_device_s_telemetry_counts_in_the_boot_of_its_hello() {
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    let hello = |boot| {
        Ingest::Hello(DeviceHello {
            device: "d".into(),
            transport: Transport::Serial,
            firmware: "fw".into(),
            protocol_version: 2,
            boot,
            received_ms: 1,
        })
    };
    let binary = |seq| {
        let mut r = booted(None, seq);
        r.wire = Wire::Binary;
        Ingest::Reading(r)
    };
    let applied = store
        .apply(&[hello(Some(5)), binary(0), binary(1)])
        .unwrap();
    assert_eq!(
        applied[2].outcome,
        Outcome::Stored {
            offset: 1,
            seq: ReadingSeq::Device {
                boot: Some(5),
                seq: 1
            }
        }
    );
    assert_eq!(applied[2].ack.as_ref().map(|a| a.boot), Some(Some(5)));
    // Rebooted: a new Hello, the counter from 0 again.
    let applied = store.apply(&[hello(Some(6)), binary(0)]).unwrap();
    assert!(matches!(applied[1].outcome, Outcome::Stored { .. }));
    // A JSON reading has only its own boot.
    let json = store.append(&[booted(None, 0)]).unwrap();
    assert!(matches!(json[0].outcome, Outcome::Stored { .. }));
}

#[test]
fn a_store_of_schema_2_opens_and_its_devices_keep_their_duplicate_detection() {
    use super::records::{DeviceRecordV1, DeviceRecordV2};
    use super::sequence::WindowV1;
    for (name, mut h) in harnesses() {
        let store = Store::open(h.open()).unwrap();
        let batch: Vec<_> = (0..10).map(|s| booted(None, s)).collect();
        store.append(&batch).unwrap();
        drop(store);
        // Rewrite it as schema 2 left it: its device record in the old layout.
        let engine = h.open();
        let old = DeviceRecordV2 {
            v1: DeviceRecordV1 {
                name: "d".into(),
                transport: Transport::Mqtt,
                first_seen_ms: 1,
                last_seen_ms: 1,
                last_seq: Some(9),
                readings: 10,
                firmware: None,
                labels: BTreeMap::new(),
                metrics: vec![0],
                protocol_version: None,
                seq_window: Some(WindowV1 {
                    base: 9,
                    bits: vec![0; 128],
                    missing: vec![],
                    given_up: 0,
                }),
                duplicates: 0,
            },
            display_name: Some("hall".into()),
            wire: Wire::Json,
        };
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Devices,
            0u32.to_be_bytes().to_vec(),
            records::encode(&old).unwrap(),
        );
        batch.put(
            Table::Meta,
            records::META_SCHEMA_VERSION.to_vec(),
            2u32.to_be_bytes().to_vec(),
        );
        engine.commit(&batch).unwrap();
        drop(engine);

        let store = Store::open(h.open()).unwrap();
        let device = store.device("d").unwrap().unwrap();
        assert_eq!(
            (
                device.record.display_name.as_deref(),
                device.record.readings
            ),
            (Some("hall"), 10),
            "{name}"
        );
        let applied = store.append(&[booted(None, 5), booted(None, 10)]).unwrap();
        assert_eq!(applied[0].outcome, Outcome::Duplicate { seq: 5 }, "{name}");
        assert!(
            matches!(applied[1].outcome, Outcome::Stored { .. }),
            "{name}"
        );
        let snap = store.engine.snapshot().unwrap();
        assert_eq!(
            snap.get(Table::Meta, records::META_SCHEMA_VERSION).unwrap(),
            Some(SCHEMA_VERSION.to_be_bytes().to_vec()),
            "{name}"
        );
        let written = snap.get(Table::Devices, &0u32.to_be_bytes()).unwrap();
        assert_eq!(
            written.as_deref().map(|b| &b[..2]),
            Some(&[0u8, 3][..]),
            "{name}: written back in the new layout"
        );
        let page = store
            .readings(&query("d", Order::Oldest, 100))
            .unwrap()
            .unwrap();
        assert_eq!(page.readings.len(), 11, "{name}");
    }
}
