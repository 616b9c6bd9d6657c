//! The store: every reading, device, latest value and token of the hub, over an ordered key-value
//! [`Engine`] (redb by default, sled behind a feature, memory for tests).
//!
//! Inputs: batches of [`NewReading`]s from the store writer (one writer at a time). Outputs: reads for
//! the API and, later, sync. Invariants:
//! - a batch is committed atomically and durably before [`Store::append`] returns;
//! - hub offsets only grow, across restarts (the next offset is committed with every batch);
//! - device and metric names are interned to small numbers, recorded in the same batch that first
//!   uses them, so a reading never refers to a number the file does not know;
//! - the per-minute rollups of the readings (see [`rollup`]) change in the same batch as the
//!   readings they fold, whether stored or deleted.

pub mod backup;
pub mod commands;
pub mod downsample;
pub mod engine;
pub mod memory;
pub mod records;
mod redb_engine;
pub mod rollup;
#[cfg(test)]
mod rollup_tests;
pub mod room;
pub mod sequence;
#[cfg(feature = "sled")]
mod sled_engine;
pub mod space;
pub mod sync;
#[cfg(test)]
mod tests;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, ControlFlow};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use device_protocol::OwnedValue;

pub use commands::{CommandResultIn, Transition};
pub use downsample::{Agg, AggValue, Bucket, BucketPage, DownsampleQuery};
pub use engine::{Direction, Engine, EngineError, KeyRange, Table, Usage, WriteBatch};
pub use records::{CommandRecord, CommandState, DeviceRecord, TokenRecord, Transport, Wire};
use records::{LatestRecord, ReadingRecord};
pub use redb_engine::RedbEngine;
pub use sequence::{ReadingSeq, RunAck};
#[cfg(feature = "sled")]
pub use sled_engine::SledEngine;

/// The layout version this build writes and reads. Version 2 added rollups (see [`rollup`]):
/// a version 1 store is upgraded at open, and an older hub refuses a version 2 one, since it
/// would store readings without their rollups. Version 3 keeps a device's seqs per boot, in
/// device records of a new layout, and tells a reading's numbering (see `records`): older
/// records are read as they are and rewritten when they change, and an older hub refuses a
/// version 3 store, whose device records it could not read.
pub const SCHEMA_VERSION: u32 = 3;
/// The first version with rollups.
const ROLLUPS_VERSION: u32 = 2;
/// Distinct metric names a store accepts; a guard against a device inventing names without end.
pub const MAX_METRICS: usize = 65_536;

/// What the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The file holds something this version cannot read.
    #[error("store data is corrupt or from another version: {0}")]
    Corrupt(String),
    /// The file was written by a newer hub.
    #[error("store schema version {found} is newer than this hub supports ({supported})")]
    SchemaTooNew {
        /// Version in the file.
        found: u32,
        /// Version of this build.
        supported: u32,
    },
    /// Too many distinct metric names.
    #[error("the store already holds {MAX_METRICS} distinct metric names")]
    TooManyMetrics,
    /// A lock was poisoned by a panic elsewhere.
    #[error("store state lock poisoned")]
    Poisoned,
}

impl StoreError {
    /// Whether the file system holding the store is full: the same write can succeed once it has
    /// room again (see [`space`]).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Engine(e) if e.is_disk_full())
    }
}

/// Which engine to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// redb, the default.
    Redb,
    /// sled (needs the `sled` cargo feature).
    Sled,
}

/// Opens the engine of `kind` in `dir`.
pub fn open_engine(
    kind: EngineKind,
    dir: &Path,
    cache_bytes: usize,
) -> Result<Arc<dyn Engine>, StoreError> {
    match kind {
        EngineKind::Redb => Ok(Arc::new(RedbEngine::open(
            &dir.join("store.redb"),
            cache_bytes,
        )?)),
        #[cfg(feature = "sled")]
        EngineKind::Sled => Ok(Arc::new(SledEngine::open(
            &dir.join("store.sled"),
            cache_bytes,
        )?)),
        #[cfg(not(feature = "sled"))]
        EngineKind::Sled => Err(StoreError::Engine(EngineError::Engine(
            "this hub was built without the sled engine (cargo feature `sled`)".into(),
        ))),
    }
}

/// A reading on its way in.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReading {
    /// Device id (already validated).
    pub device: String,
    /// Transport it came over.
    pub transport: Transport,
    /// How it was encoded.
    pub wire: Wire,
    /// The device's seq, if it sent one.
    pub seq: Option<u32>,
    /// The device's boot, if it sent one (a binary device's readings without one count in the
    /// boot of its last `Hello`).
    pub boot: Option<u32>,
    /// The device's timestamp, if it sent one.
    pub timestamp_ms: Option<u64>,
    /// When the hub received it.
    pub received_ms: u64,
    /// Metric names (already validated) and values.
    pub metrics: Vec<(String, OwnedValue)>,
}

/// A reading with a seq that was refused for its content: nothing of it is stored, but its seq
/// is settled, so the ack passes it, and the device is told to drop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedReading {
    /// Device id (already validated).
    pub device: String,
    /// Transport it came over.
    pub transport: Transport,
    /// How it was encoded.
    pub wire: Wire,
    /// Its seq.
    pub seq: u32,
    /// Its boot, if it named one.
    pub boot: Option<u32>,
    /// When the hub received it.
    pub received_ms: u64,
}

/// A stored reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Hub offset.
    pub offset: u64,
    /// Device id.
    pub device: String,
    /// How it is numbered.
    pub seq: ReadingSeq,
    /// Timestamp (device clock, or hub receive time).
    pub timestamp_ms: u64,
    /// Metric names and values.
    pub metrics: Vec<(String, OwnedValue)>,
}

/// The latest value of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestValue {
    /// Metric name.
    pub metric: String,
    /// Timestamp of the reading it came in.
    pub timestamp_ms: u64,
    /// Offset of that reading.
    pub offset: u64,
    /// The value.
    pub value: OwnedValue,
}

/// A device as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// The stored record.
    pub record: DeviceRecord,
    /// Metric names it has sent.
    pub metric_names: Vec<String>,
}

/// What an operator changes on a device; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevicePatch {
    /// New labels (replacing the old ones).
    pub labels: Option<BTreeMap<String, String>>,
    /// New display name; `Some(None)` removes it.
    pub display_name: Option<Option<String>>,
}

/// Order of a readings query.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    Oldest,
    /// Newest first.
    Newest,
}

/// Where a readings page stopped: the last reading returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Its timestamp.
    pub timestamp_ms: u64,
    /// Its offset.
    pub offset: u64,
}

/// A raw readings query over one device's time index.
#[derive(Debug, Clone)]
pub struct ReadingsQuery {
    /// Device id.
    pub device: String,
    /// Only this metric (readings without it are skipped, the others' values left out).
    pub metric: Option<String>,
    /// Inclusive lower time bound.
    pub from_ms: Option<u64>,
    /// Exclusive upper time bound.
    pub to_ms: Option<u64>,
    /// Order.
    pub order: Order,
    /// Most readings to return.
    pub limit: usize,
    /// Continue after this position (from the previous page).
    pub after: Option<Position>,
}

/// One page of readings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingsPage {
    /// The readings.
    pub readings: Vec<Reading>,
    /// Position to continue from, when more may follow.
    pub next: Option<Position>,
}

/// A device introducing itself (binary `Hello`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceHello {
    /// Device id (already validated).
    pub device: String,
    /// Transport it came over.
    pub transport: Transport,
    /// Firmware version.
    pub firmware: String,
    /// Protocol version it speaks.
    pub protocol_version: u16,
    /// Its boot number, if it sends one.
    pub boot: Option<u32>,
    /// When the hub received it.
    pub received_ms: u64,
}

/// A device's connection changed: its MQTT last will or an `online`/`offline` status it
/// published, or its serial line was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Device id (already validated).
    pub device: String,
    /// Transport it concerns.
    pub transport: Transport,
    /// Reachable or not.
    pub online: bool,
    /// Why, for the device event: `announced`, `last_will`, `link_down`.
    pub reason: &'static str,
    /// When the hub learnt it.
    pub received_ms: u64,
}

/// One thing for the store writer.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingest {
    /// A reading to store.
    Reading(NewReading),
    /// A reading refused for its content, to settle.
    Rejected(RejectedReading),
    /// A device registering or updating itself.
    Hello(DeviceHello),
    /// A device's answer to a command.
    CommandResult(CommandResultIn),
    /// A device's connection changed.
    Status(DeviceStatus),
}

impl Ingest {
    /// About the memory the item takes: its own size and what it points to. The store writer's
    /// queue is bounded by the sum of these (see [`writer::SubmissionSender`]).
    pub fn approx_bytes(&self) -> usize {
        let heap = match self {
            Ingest::Reading(r) => {
                r.device.len()
                    + r.metrics.capacity() * std::mem::size_of::<(String, OwnedValue)>()
                    + r.metrics
                        .iter()
                        .map(|(metric, value)| {
                            metric.len()
                                + match value {
                                    OwnedValue::Str(s) => s.len(),
                                    _ => 0,
                                }
                        })
                        .sum::<usize>()
            }
            Ingest::Rejected(r) => r.device.len(),
            Ingest::Hello(h) => h.device.len() + h.firmware.len(),
            Ingest::CommandResult(c) => {
                c.device.len()
                    + c.result.as_ref().map_or(0, String::len)
                    + c.error.as_ref().map_or(0, String::len)
            }
            Ingest::Status(s) => s.device.len(),
        };
        std::mem::size_of::<Ingest>() + heap
    }

    /// The device the item is about.
    pub fn device(&self) -> &str {
        match self {
            Ingest::Reading(r) => &r.device,
            Ingest::Rejected(r) => &r.device,
            Ingest::Hello(h) => &h.device,
            Ingest::CommandResult(c) => &c.device,
            Ingest::Status(s) => &s.device,
        }
    }
}

/// What became of one item of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored at this offset with this seq (given or assigned).
    Stored {
        /// Hub offset.
        offset: u64,
        /// Its numbering.
        seq: ReadingSeq,
    },
    /// Already stored (or rejected) earlier: not stored again.
    Duplicate {
        /// Seq.
        seq: u32,
    },
    /// A reading refused for its content ([`Ingest::Rejected`]): settled, not stored.
    Rejected {
        /// Seq.
        seq: u32,
    },
    /// A `Hello` was recorded.
    Registered,
    /// A command result: the command's new state, or `None` when it was ignored (unknown
    /// command, another device's, or already final).
    CommandResult {
        /// The command id.
        id: u64,
        /// Its state now, if the result changed it.
        state: Option<CommandState>,
    },
    /// A status was noted.
    Status,
    /// A reading refused because the store is full and its policy is `reject_new`.
    Refused,
}

/// The outcome of an item and, for a numbered reading, the cumulative ack of its run (boot) after
/// the batch: every seq of the run up to `ack.seq` is durable, rejected or given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What became of the item.
    pub outcome: Outcome,
    /// The ack of the item's run, when it is a numbered reading.
    pub ack: Option<RunAck>,
    /// The item made the store register its device.
    pub new_device: bool,
    /// Seqs its arrival made the store give up waiting for.
    pub given_up: u64,
}

/// What became of one item of a batch, until its run's ack is read after the commit.
struct ItemOutcome {
    /// The device's number (0 for items without a run).
    device: u32,
    outcome: Outcome,
    /// The boot of the run to ack, for a numbered reading.
    run: Option<Option<u32>>,
    new_device: bool,
    given_up: u64,
}

impl ItemOutcome {
    /// An item that is not a numbered reading.
    fn plain(outcome: Outcome, new_device: bool) -> Self {
        ItemOutcome {
            device: 0,
            outcome,
            run: None,
            new_device,
            given_up: 0,
        }
    }
}

/// The boot a reading counts in: its own, or for a binary device, the boot of its last `Hello`.
fn effective_boot(record: &DeviceRecord, boot: Option<u32>, wire: Wire) -> Option<u32> {
    match wire {
        Wire::Binary => boot.or(record.hello_boot),
        Wire::Json => boot,
    }
}

/// Settles `seq` of `boot` in `record`'s runs, counting what it says.
fn take_seq(record: &mut DeviceRecord, boot: Option<u32>, seq: u32) -> sequence::Taken {
    let taken = record.runs.take(boot, seq);
    record.gave_up += taken.given_up;
    if taken.verdict == sequence::Verdict::Duplicate {
        record.duplicates += 1;
    }
    if taken.far_behind {
        tracing::warn!(device = %record.name, seq, boot, "seq far below what this device already sent in this boot, taken as a duplicate; if its counter restarted, its readings are being dropped (a device must keep seq across restarts, or send a new boot)");
    }
    taken
}

/// Visits the decoded records of `range` in key order until `visit` breaks; the first record
/// that does not decode ends the scan with its error.
fn scan_records<T: serde::de::DeserializeOwned>(
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

/// The device time index range of `device`'s readings timestamped in `[from, to)` (`to` `None`:
/// no upper bound).
fn device_time_range(device: u32, from: u64, to: Option<u64>) -> KeyRange {
    KeyRange {
        start: Bound::Included(records::device_time_key(device, from, 0)),
        end: match to {
            Some(to) => Bound::Excluded(records::device_time_key(device, to, 0)),
            None => Bound::Included(records::device_time_key(device, u64::MAX, u64::MAX)),
        },
    }
}

/// Visits the (timestamp, offset) of `device`'s readings timestamped in `[from, to)`, in
/// `direction` order, until `visit` breaks or fails; returns whether it broke.
fn scan_device_time(
    snap: &dyn engine::Snapshot,
    device: u32,
    from: u64,
    to: Option<u64>,
    direction: Direction,
    mut visit: impl FnMut(u64, u64) -> Result<ControlFlow<()>, StoreError>,
) -> Result<ControlFlow<()>, StoreError> {
    let mut failure = None;
    let mut flow = ControlFlow::Continue(());
    snap.scan(
        Table::DeviceTime,
        &device_time_range(device, from, to),
        direction,
        &mut |k, _| {
            let Some((timestamp_ms, offset)) = records::split_device_time_key(k) else {
                failure = Some(StoreError::Corrupt("device time key".into()));
                return ControlFlow::Break(());
            };
            match visit(timestamp_ms, offset) {
                Ok(step) => {
                    flow = step;
                    step
                }
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            }
        },
    )?;
    failure.map_or(Ok(flow), Err)
}

/// Visits the values of `metric` in `device`'s readings timestamped in `[from, to)`, with their
/// timestamp and offset, in `direction` order, until `visit` breaks; returns whether it broke.
/// Reads every reading of the range: about a microsecond each.
fn scan_metric_values(
    snap: &dyn engine::Snapshot,
    device: u32,
    metric: u32,
    from: u64,
    to: Option<u64>,
    direction: Direction,
    mut visit: impl FnMut(u64, u64, &OwnedValue) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, StoreError> {
    scan_device_time(snap, device, from, to, direction, |timestamp_ms, offset| {
        // No reading behind an index entry: retention removed it between the two.
        let Some(reading) = reading_at(snap, offset)? else {
            return Ok(ControlFlow::Continue(()));
        };
        Ok(match reading.metrics.iter().find(|(m, _)| *m == metric) {
            Some((_, value)) => visit(timestamp_ms, offset, value),
            None => ControlFlow::Continue(()),
        })
    })
}

/// The reading at `offset`, if it is still stored.
fn reading_at(
    snap: &dyn engine::Snapshot,
    offset: u64,
) -> Result<Option<ReadingRecord>, StoreError> {
    match snap.get(Table::Readings, &records::reading_key(offset))? {
        Some(bytes) => Ok(Some(records::decode(&bytes, "reading")?)),
        None => Ok(None),
    }
}

#[derive(Default)]
struct Catalog {
    device_numbers: HashMap<String, u32>,
    devices: BTreeMap<u32, DeviceRecord>,
    metric_numbers: HashMap<String, u32>,
    metric_names: Vec<String>,
    next_offset: u64,
}

/// What one batch changes in the catalog, kept aside until its commit has succeeded: a failed
/// commit then leaves the catalog as the disk has it, without copying the whole catalog for every
/// batch. Holds a copy of only the device records the batch touches.
struct Staged<'c> {
    base: &'c Catalog,
    /// Touched device records (copied from `base`) and new ones.
    devices: BTreeMap<u32, DeviceRecord>,
    new_devices: HashMap<String, u32>,
    /// New metric names, numbered on from `base.metric_names.len()`.
    new_metrics: Vec<String>,
    new_metric_numbers: HashMap<String, u32>,
    next_offset: u64,
}

impl<'c> Staged<'c> {
    fn new(base: &'c Catalog) -> Self {
        Staged {
            base,
            devices: BTreeMap::new(),
            new_devices: HashMap::new(),
            new_metrics: Vec::new(),
            new_metric_numbers: HashMap::new(),
            next_offset: base.next_offset,
        }
    }

    /// Whether device `name` is registered, in the store or earlier in this batch.
    fn knows(&self, name: &str) -> bool {
        self.base.device_numbers.contains_key(name) || self.new_devices.contains_key(name)
    }

    /// The record of device `name`, registering a new device when it has none; with its number.
    fn device(
        &mut self,
        name: &str,
        transport: Transport,
        seen_ms: u64,
    ) -> Result<(u32, &mut DeviceRecord), StoreError> {
        let known = self
            .base
            .device_numbers
            .get(name)
            .or_else(|| self.new_devices.get(name));
        let n = match known {
            Some(n) => *n,
            None => {
                let n = u32::try_from(self.base.devices.len() + self.new_devices.len())
                    .map_err(|_| StoreError::Corrupt("device numbers exhausted".into()))?;
                self.new_devices.insert(name.to_owned(), n);
                n
            }
        };
        let base = self.base;
        let record = self
            .devices
            .entry(n)
            .or_insert_with(|| match base.devices.get(&n) {
                Some(record) => record.clone(),
                None => DeviceRecord {
                    name: name.to_owned(),
                    transport,
                    first_seen_ms: seen_ms,
                    last_seen_ms: seen_ms,
                    last_seq: None,
                    readings: 0,
                    firmware: None,
                    labels: BTreeMap::new(),
                    metrics: Vec::new(),
                    protocol_version: None,
                    runs: sequence::Runs::default(),
                    duplicates: 0,
                    display_name: None,
                    wire: records::Wire::Json,
                    hello_boot: None,
                    hub_seq: None,
                    rejected: 0,
                    gave_up: 0,
                },
            });
        Ok((n, record))
    }

    /// The number of metric `name`, registering it (in `batch`) when new.
    fn metric(&mut self, name: &str, batch: &mut WriteBatch) -> Result<u32, StoreError> {
        if let Some(n) = self
            .base
            .metric_numbers
            .get(name)
            .or_else(|| self.new_metric_numbers.get(name))
        {
            return Ok(*n);
        }
        let count = self.base.metric_names.len() + self.new_metrics.len();
        if count >= MAX_METRICS {
            return Err(StoreError::TooManyMetrics);
        }
        let n = count as u32;
        self.new_metric_numbers.insert(name.to_owned(), n);
        self.new_metrics.push(name.to_owned());
        batch.put(
            Table::Metrics,
            name.as_bytes().to_vec(),
            n.to_be_bytes().to_vec(),
        );
        Ok(n)
    }

    /// The changes, detached from the catalog they were made against.
    fn into_changes(self) -> CatalogChanges {
        CatalogChanges {
            devices: self.devices,
            new_devices: self.new_devices,
            new_metrics: self.new_metrics,
            next_offset: self.next_offset,
        }
    }
}

/// A committed batch's changes, to apply to the catalog.
struct CatalogChanges {
    devices: BTreeMap<u32, DeviceRecord>,
    new_devices: HashMap<String, u32>,
    new_metrics: Vec<String>,
    next_offset: u64,
}

impl CatalogChanges {
    fn apply_to(self, catalog: &mut Catalog) {
        catalog.device_numbers.extend(self.new_devices);
        catalog.devices.extend(self.devices);
        for name in self.new_metrics {
            catalog
                .metric_numbers
                .insert(name.clone(), catalog.metric_names.len() as u32);
            catalog.metric_names.push(name);
        }
        catalog.next_offset = self.next_offset;
    }
}

impl Catalog {
    /// A stored reading with its device and metric names.
    fn resolve(&self, offset: u64, record: ReadingRecord) -> Reading {
        Reading {
            offset,
            device: self
                .devices
                .get(&record.device)
                .map(|d| d.name.clone())
                .unwrap_or_else(|| format!("#{}", record.device)),
            seq: record.numbering(),
            timestamp_ms: record.timestamp_ms,
            metrics: record
                .metrics
                .into_iter()
                .map(|(m, v)| (self.metric_name(m), v))
                .collect(),
        }
    }

    fn metric_name(&self, number: u32) -> String {
        self.metric_names
            .get(number as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{number}"))
    }
}

/// The hub's store. Cheap to clone; reads may run from any thread, appends from one writer.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    catalog: Arc<RwLock<Catalog>>,
    writer: Arc<Mutex<()>>,
    /// Set while the store is full and its policy is to refuse new readings.
    refusing: Arc<AtomicBool>,
    room: Arc<room::Room>,
    /// Whether the file system holding the store is full.
    space: Arc<space::DiskSpace>,
}

impl Store {
    /// Opens the store over `engine`, creating its layout on first use.
    pub fn open(engine: Arc<dyn Engine>) -> Result<Self, StoreError> {
        let mut catalog = Catalog::default();
        // The version of an older layout found in the file, to upgrade once the catalog is read.
        let mut upgrade_from = None;
        {
            let snap = engine.snapshot()?;
            match snap.get(Table::Meta, records::META_SCHEMA_VERSION)? {
                Some(v) => {
                    let found = records::be_u32(&v, "schema version")?;
                    if found > SCHEMA_VERSION {
                        return Err(StoreError::SchemaTooNew {
                            found,
                            supported: SCHEMA_VERSION,
                        });
                    }
                    upgrade_from = Some(found).filter(|v| *v < SCHEMA_VERSION);
                    // The upgrade commits below; an engine may wait for every view to close.
                    drop(snap);
                }
                None => {
                    drop(snap);
                    let mut batch = WriteBatch::new();
                    batch.put(
                        Table::Meta,
                        records::META_SCHEMA_VERSION.to_vec(),
                        SCHEMA_VERSION.to_be_bytes().to_vec(),
                    );
                    engine.commit(&batch)?;
                }
            }
            let snap = engine.snapshot()?;
            if let Some(v) = snap.get(Table::Meta, records::META_NEXT_OFFSET)? {
                catalog.next_offset = records::be_u64(&v, "next offset")?;
            }
            let mut failure = None;
            snap.scan(
                Table::Metrics,
                &KeyRange::all(),
                Direction::Forward,
                &mut |k, v| match (std::str::from_utf8(k), records::be_u32(v, "metric number")) {
                    (Ok(name), Ok(number)) => {
                        catalog.metric_numbers.insert(name.to_owned(), number);
                        let slot = number as usize;
                        if catalog.metric_names.len() <= slot {
                            catalog.metric_names.resize(slot + 1, String::new());
                        }
                        catalog.metric_names[slot] = name.to_owned();
                        ControlFlow::Continue(())
                    }
                    _ => {
                        failure = Some(StoreError::Corrupt("metric name entry".into()));
                        ControlFlow::Break(())
                    }
                },
            )?;
            snap.scan(
                Table::Devices,
                &KeyRange::all(),
                Direction::Forward,
                &mut |k, v| {
                    let parsed = records::be_u32(k, "device number")
                        .and_then(|n| Ok((n, records::decode_device(v)?)));
                    match parsed {
                        Ok((number, record)) => {
                            catalog.device_numbers.insert(record.name.clone(), number);
                            catalog.devices.insert(number, record);
                            ControlFlow::Continue(())
                        }
                        Err(e) => {
                            failure = Some(e);
                            ControlFlow::Break(())
                        }
                    }
                },
            )?;
            if let Some(e) = failure {
                return Err(e);
            }
            if let Some(found) = upgrade_from {
                let mut batch = WriteBatch::new();
                let marked = if found < ROLLUPS_VERSION {
                    rollup::mark_devices_without_rollups(
                        &*snap,
                        catalog.devices.keys().copied(),
                        &mut batch,
                    )?
                } else {
                    0
                };
                batch.put(
                    Table::Meta,
                    records::META_SCHEMA_VERSION.to_vec(),
                    SCHEMA_VERSION.to_be_bytes().to_vec(),
                );
                drop(snap);
                engine.commit(&batch)?;
                tracing::info!(
                    from = found,
                    to = SCHEMA_VERSION,
                    devices_before_rollups = marked,
                    "store upgraded; downsampled queries read raw readings for the time before each device's rollups began"
                );
            }
        }
        Ok(Store {
            engine,
            catalog: Arc::new(RwLock::new(catalog)),
            writer: Arc::new(Mutex::new(())),
            refusing: Arc::new(AtomicBool::new(false)),
            room: Arc::new(room::Room::default()),
            space: Arc::new(space::DiskSpace::default()),
        })
    }

    /// Whether the file system holding the store is full (set by the store writer).
    pub fn space(&self) -> &space::DiskSpace {
        &self.space
    }

    /// Whether the file system holding the store has room for `bytes` more now (see
    /// [`Engine::has_room`]). Blocks: a small write.
    pub fn has_room(&self, bytes: u64) -> Result<bool, StoreError> {
        Ok(self.engine.has_room(bytes)?)
    }

    /// Turn-taking of the writer and retention at the quota.
    pub fn room(&self) -> &room::Room {
        &self.room
    }

    /// Refuses new readings (`true`) or takes them again (`false`); see [`Outcome::Refused`].
    pub fn set_refusing(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::Relaxed);
    }

    /// Whether new readings are refused.
    pub fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Copies the store as it is now into a new store in `dir` (see [`backup::copy_store`]).
    pub fn backup_to(
        &self,
        kind: EngineKind,
        dir: &Path,
        cache_bytes: usize,
    ) -> Result<backup::Copied, StoreError> {
        backup::copy_store(&*self.engine, kind, dir, cache_bytes)
    }

    /// The engine's name.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    fn catalog(&self) -> Result<std::sync::RwLockReadGuard<'_, Catalog>, StoreError> {
        self.catalog.read().map_err(|_| StoreError::Poisoned)
    }

    /// The offset the next stored reading will get.
    pub fn next_offset(&self) -> Result<u64, StoreError> {
        Ok(self.catalog()?.next_offset)
    }

    /// Stores readings only; see [`Store::apply`].
    pub fn append(&self, readings: &[NewReading]) -> Result<Vec<Applied>, StoreError> {
        let items: Vec<Ingest> = readings.iter().cloned().map(Ingest::Reading).collect();
        self.apply(&items)
    }

    /// Applies `items` in one durable transaction and returns what became of each, in order.
    /// Blocks until the batch is on disk. Retransmitted readings (same device, boot and seq) are
    /// recognised and not stored again (see [`sequence`]).
    pub fn apply(&self, items: &[Ingest]) -> Result<Vec<Applied>, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let base = self.catalog()?;
        let mut staged = Staged::new(&base);
        let mut batch = WriteBatch::new();
        let mut latest: BTreeMap<(u32, u32), LatestRecord> = BTreeMap::new();
        let mut outcomes: Vec<ItemOutcome> = Vec::with_capacity(items.len());
        let mut commands = commands::Changes::default();
        let mut rollups = rollup::BatchRollups::default();
        let snap = self.engine.snapshot()?;

        for item in items {
            let new_device = !staged.knows(item.device());
            let (transport, wire, received_ms) = match item {
                Ingest::Reading(r) => (r.transport, r.wire, r.received_ms),
                Ingest::Rejected(r) => (r.transport, r.wire, r.received_ms),
                Ingest::Hello(h) => (h.transport, records::Wire::Binary, h.received_ms),
                Ingest::CommandResult(c) => {
                    // Only a known device's answer counts; it is also a sign of life.
                    let state = if new_device {
                        None
                    } else {
                        let (_, record) = staged.device(&c.device, c.transport, c.received_ms)?;
                        record.last_seen_ms = record.last_seen_ms.max(c.received_ms);
                        commands.apply_result(&*snap, c)?
                    };
                    outcomes.push(ItemOutcome::plain(
                        Outcome::CommandResult { id: c.id, state },
                        false,
                    ));
                    continue;
                }
                Ingest::Status(s) => {
                    // Going offline says nothing new about a device the store does not know.
                    if s.online {
                        let (_, record) = staged.device(&s.device, s.transport, s.received_ms)?;
                        record.last_seen_ms = record.last_seen_ms.max(s.received_ms);
                        outcomes.push(ItemOutcome::plain(Outcome::Status, new_device));
                    } else {
                        outcomes.push(ItemOutcome::plain(Outcome::Status, false));
                    }
                    continue;
                }
            };
            if matches!(item, Ingest::Reading(_)) && self.refusing.load(Ordering::Relaxed) {
                // Full under `reject_new`: not stored and not acknowledged, so the device keeps it.
                outcomes.push(ItemOutcome::plain(Outcome::Refused, false));
                continue;
            }
            let name = item.device();
            let (device, record) = staged.device(name, transport, received_ms)?;
            record.last_seen_ms = record.last_seen_ms.max(received_ms);
            record.transport = transport;
            record.wire = wire;
            let reading = match item {
                Ingest::Hello(hello) => {
                    record.firmware = Some(hello.firmware.clone());
                    record.protocol_version = Some(hello.protocol_version);
                    record.hello_boot = hello.boot;
                    outcomes.push(ItemOutcome::plain(Outcome::Registered, new_device));
                    continue;
                }
                Ingest::Rejected(rejected) => {
                    let boot = effective_boot(record, rejected.boot, rejected.wire);
                    let taken = take_seq(record, boot, rejected.seq);
                    if taken.verdict == sequence::Verdict::New {
                        record.rejected += 1;
                    }
                    outcomes.push(ItemOutcome {
                        device,
                        outcome: Outcome::Rejected { seq: rejected.seq },
                        run: Some(boot),
                        new_device,
                        given_up: taken.given_up,
                    });
                    continue;
                }
                Ingest::Reading(reading) => reading,
                Ingest::CommandResult(_) | Ingest::Status(_) => continue,
            };
            let mut given_up = 0;
            let boot = effective_boot(record, reading.boot, reading.wire);
            let numbering = match reading.seq {
                Some(seq) => {
                    let taken = take_seq(record, boot, seq);
                    if taken.verdict == sequence::Verdict::Duplicate {
                        outcomes.push(ItemOutcome {
                            device,
                            outcome: Outcome::Duplicate { seq },
                            run: Some(boot),
                            new_device: false,
                            given_up: 0,
                        });
                        continue;
                    }
                    given_up = taken.given_up;
                    // The highest seq of the latest run: a late one of the run before is not.
                    if taken.new_run || record.last_seq.is_none() {
                        record.last_seq = Some(seq);
                    } else if record.runs.current_boot() == boot {
                        record.last_seq = record.last_seq.map(|last| last.max(seq));
                    }
                    ReadingSeq::Device { boot, seq }
                }
                None => {
                    // A numbering of the hub's own, never mixed with the device's seqs.
                    let n = record.hub_seq.map_or(0, |s| s.wrapping_add(1));
                    record.hub_seq = Some(n);
                    ReadingSeq::Hub(n)
                }
            };
            record.readings += 1;
            let mut metrics = Vec::with_capacity(reading.metrics.len());
            for (name, value) in &reading.metrics {
                let metric = staged.metric(name, &mut batch)?;
                metrics.push((metric, value.clone()));
            }
            let Some(record) = staged.devices.get_mut(&device) else {
                return Err(StoreError::Corrupt("device vanished from catalog".into()));
            };
            for (metric, _) in &metrics {
                if !record.metrics.contains(metric) {
                    record.metrics.push(*metric);
                }
            }
            let offset = staged.next_offset;
            staged.next_offset += 1;

            let timestamp_ms = reading.timestamp_ms.unwrap_or(reading.received_ms);
            for (metric, value) in rollup::first_values(&metrics) {
                rollups.add(device, metric, timestamp_ms, offset, value);
            }
            for (metric, value) in &metrics {
                let newer = match latest.get(&(device, *metric)) {
                    Some(current) => timestamp_ms >= current.timestamp_ms,
                    None => match snap.get(Table::Latest, &records::latest_key(device, *metric))? {
                        Some(bytes) => {
                            let current: LatestRecord = records::decode(&bytes, "latest value")?;
                            timestamp_ms >= current.timestamp_ms
                        }
                        None => true,
                    },
                };
                if newer {
                    latest.insert(
                        (device, *metric),
                        LatestRecord {
                            timestamp_ms,
                            offset,
                            value: value.clone(),
                        },
                    );
                }
            }
            let (seq, origin) = records::SeqOrigin::of(numbering);
            let record = ReadingRecord {
                device,
                seq,
                timestamp_ms,
                metrics,
                origin,
            };
            batch.put(
                Table::Readings,
                records::reading_key(offset),
                records::encode(&record)?,
            );
            batch.put(
                Table::DeviceTime,
                records::device_time_key(device, timestamp_ms, offset),
                vec![],
            );
            outcomes.push(ItemOutcome {
                device,
                outcome: Outcome::Stored {
                    offset,
                    seq: numbering,
                },
                run: reading.seq.map(|_| boot),
                new_device,
                given_up,
            });
        }
        rollups.write_to(&*snap, &mut batch)?;
        drop(snap);
        for ((device, metric), record) in &latest {
            batch.put(
                Table::Latest,
                records::latest_key(*device, *metric),
                records::encode(record)?,
            );
        }
        for (device, record) in &staged.devices {
            batch.put(
                Table::Devices,
                device.to_be_bytes().to_vec(),
                records::encode_device(record)?,
            );
        }

        commands.write_to(&mut batch)?;
        batch.put(
            Table::Meta,
            records::META_NEXT_OFFSET.to_vec(),
            staged.next_offset.to_be_bytes().to_vec(),
        );
        self.engine.commit(&batch)?;
        // Acks are cumulative: every numbered item gets its run's ack after the whole batch.
        let mut acks: HashMap<(u32, Option<u32>), Option<RunAck>> = HashMap::new();
        let applied = outcomes
            .into_iter()
            .map(|item| {
                let ack = item.run.and_then(|boot| {
                    acks.entry((item.device, boot))
                        .or_insert_with(|| {
                            staged
                                .devices
                                .get(&item.device)
                                .and_then(|r| r.runs.ack(boot))
                        })
                        .clone()
                });
                Applied {
                    outcome: item.outcome,
                    ack,
                    new_device: item.new_device,
                    given_up: item.given_up,
                }
            })
            .collect();
        let changes = staged.into_changes();
        drop(base);
        changes.apply_to(&mut *self.catalog.write().map_err(|_| StoreError::Poisoned)?);
        Ok(applied)
    }

    /// Devices ordered by id, starting after `after`, at most `limit`.
    pub fn devices(&self, after: Option<&str>, limit: usize) -> Result<Vec<Device>, StoreError> {
        let cat = self.catalog()?;
        let mut names: Vec<&String> = cat
            .device_numbers
            .keys()
            .filter(|name| after.is_none_or(|a| name.as_str() > a))
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .take(limit)
            .filter_map(|name| cat.device_numbers.get(name))
            .filter_map(|n| cat.devices.get(n))
            .map(|record| Device {
                metric_names: record.metrics.iter().map(|m| cat.metric_name(*m)).collect(),
                record: record.clone(),
            })
            .collect())
    }

    /// Sets a device's labels and display name (what `patch` gives); the device after the change,
    /// or `None` for an unknown device.
    pub fn update_device(
        &self,
        id: &str,
        patch: &DevicePatch,
    ) -> Result<Option<Device>, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let (number, mut record) = {
            let cat = self.catalog()?;
            let Some(number) = cat.device_numbers.get(id).copied() else {
                return Ok(None);
            };
            let Some(record) = cat.devices.get(&number).cloned() else {
                return Ok(None);
            };
            (number, record)
        };
        if let Some(labels) = &patch.labels {
            record.labels = labels.clone();
        }
        if let Some(name) = &patch.display_name {
            record.display_name = name.clone();
        }
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Devices,
            number.to_be_bytes().to_vec(),
            records::encode_device(&record)?,
        );
        self.engine.commit(&batch)?;
        let mut cat = self.catalog.write().map_err(|_| StoreError::Poisoned)?;
        cat.devices.insert(number, record);
        drop(cat);
        self.device(id)
    }

    /// Every device's id and when it was last heard from; no copies of the records, for start-up.
    pub fn last_seen(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .catalog()?
            .devices
            .values()
            .map(|r| (r.name.clone(), r.last_seen_ms))
            .collect())
    }

    /// How many devices the store knows.
    pub fn device_count(&self) -> Result<usize, StoreError> {
        Ok(self.catalog()?.devices.len())
    }

    /// One device, if known.
    pub fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        let cat = self.catalog()?;
        Ok(cat
            .device_numbers
            .get(id)
            .and_then(|n| cat.devices.get(n))
            .map(|record| Device {
                metric_names: record.metrics.iter().map(|m| cat.metric_name(*m)).collect(),
                record: record.clone(),
            }))
    }

    /// The latest value of each metric of a device, by metric name; `None` for an unknown device.
    pub fn latest(&self, id: &str) -> Result<Option<Vec<LatestValue>>, StoreError> {
        let (device, names) = {
            let cat = self.catalog()?;
            let Some(device) = cat.device_numbers.get(id).copied() else {
                return Ok(None);
            };
            (device, cat.metric_names.clone())
        };
        let snap = self.engine.snapshot()?;
        let mut values = Vec::new();
        let mut failure = None;
        let prefix = device.to_be_bytes();
        snap.scan(
            Table::Latest,
            &KeyRange::prefix(&prefix),
            Direction::Forward,
            &mut |k, v| {
                let metric = k
                    .get(4..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes);
                match (metric, records::decode::<LatestRecord>(v, "latest value")) {
                    (Some(metric), Ok(record)) => {
                        values.push(LatestValue {
                            metric: names.get(metric as usize).cloned().unwrap_or_default(),
                            timestamp_ms: record.timestamp_ms,
                            offset: record.offset,
                            value: record.value,
                        });
                        ControlFlow::Continue(())
                    }
                    (_, Err(e)) => {
                        failure = Some(e);
                        ControlFlow::Break(())
                    }
                    (None, _) => {
                        failure = Some(StoreError::Corrupt("latest key".into()));
                        ControlFlow::Break(())
                    }
                }
            },
        )?;
        if let Some(e) = failure {
            return Err(e);
        }
        values.sort_by(|a, b| a.metric.cmp(&b.metric));
        Ok(Some(values))
    }

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
        let to = query.to_ms.unwrap_or(u64::MAX);
        let mut start = Bound::Included(records::device_time_key(device, from, 0));
        let mut end = if to == u64::MAX {
            Bound::Included(records::device_time_key(device, u64::MAX, u64::MAX))
        } else {
            Bound::Excluded(records::device_time_key(device, to, 0))
        };
        if let Some(after) = query.after {
            let key = records::device_time_key(device, after.timestamp_ms, after.offset);
            match query.order {
                Order::Oldest => start = Bound::Excluded(key),
                Order::Newest => end = Bound::Excluded(key),
            }
        }
        let direction = match query.order {
            Order::Oldest => Direction::Forward,
            Order::Newest => Direction::Reverse,
        };
        let snap = self.engine.snapshot()?;
        let mut positions = Vec::new();
        let mut failure = None;
        let mut last = None;
        let limit = query.limit;
        snap.scan(
            Table::DeviceTime,
            &KeyRange { start, end },
            direction,
            &mut |k, _| {
                let Some((timestamp_ms, offset)) = records::split_device_time_key(k) else {
                    failure = Some(StoreError::Corrupt("device time key".into()));
                    return ControlFlow::Break(());
                };
                last = Some(Position {
                    timestamp_ms,
                    offset,
                });
                let reading = match reading_at(&*snap, offset) {
                    Ok(Some(r)) => r,
                    // Index entry without its reading: retention removed it between the two.
                    Ok(None) => return ControlFlow::Continue(()),
                    Err(e) => {
                        failure = Some(e);
                        return ControlFlow::Break(());
                    }
                };
                let seq = reading.numbering();
                let metrics: Vec<(String, OwnedValue)> = reading
                    .metrics
                    .into_iter()
                    .filter(|(m, _)| metric.is_none_or(|want| *m == want))
                    .map(|(m, v)| (names.get(m as usize).cloned().unwrap_or_default(), v))
                    .collect();
                if metrics.is_empty() {
                    return ControlFlow::Continue(());
                }
                positions.push(Reading {
                    offset,
                    device: query.device.clone(),
                    seq,
                    timestamp_ms,
                    metrics,
                });
                if positions.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        if let Some(e) = failure {
            return Err(e);
        }
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
    /// one without readings. Two short index seeks, whatever the number of readings.
    pub fn reading_span(&self, id: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let Some(device) = self.catalog()?.device_numbers.get(id).copied() else {
            return Ok(None);
        };
        let snap = self.engine.snapshot()?;
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
        match ends {
            [Some(first), Some(last)] => Ok(Some((first, last))),
            _ => Ok(None),
        }
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

    /// Every token record with the keyed hash it is stored under.
    pub fn tokens(&self) -> Result<Vec<(Vec<u8>, TokenRecord)>, StoreError> {
        let snap = self.engine.snapshot()?;
        let mut tokens = Vec::new();
        let mut failure = None;
        snap.scan(
            Table::Tokens,
            &KeyRange::all(),
            Direction::Forward,
            &mut |k, v| match records::decode_token(v) {
                Ok(record) => {
                    tokens.push((k.to_vec(), record));
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            },
        )?;
        failure.map_or(Ok(tokens), Err)
    }

    /// Stores several token records in one commit.
    pub fn put_tokens(&self, tokens: &[(Vec<u8>, TokenRecord)]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        for (hash, record) in tokens {
            batch.put(Table::Tokens, hash.clone(), records::encode(record)?);
        }
        self.engine.commit(&batch)?;
        Ok(())
    }

    /// Stores a token record under the keyed hash of its secret.
    pub fn put_token(&self, hash: &[u8], record: &TokenRecord) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        batch.put(Table::Tokens, hash.to_vec(), records::encode(record)?);
        self.engine.commit(&batch)?;
        Ok(())
    }
}
