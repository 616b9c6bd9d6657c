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
//!
//! Here: the store's handle, opening (schema and upgrade) and its errors. Beside it, one job a
//! file: `types.rs` (what goes in and comes out), `catalog.rs` (interned names), `apply.rs`
//! (committing a batch), `devices.rs`, `readings.rs` (reads and downsampling), `tokens.rs`,
//! `credentials.rs` (devices' MQTT passwords), `removal.rs` (removing a device), and
//! the `impl Store` files of commands, sync and alerts.

pub mod alerts;
mod apply;
pub mod backup;
pub mod block;
mod catalog;
pub mod commands;
pub mod credentials;
mod devices;
pub mod downsample;
pub mod durable;
pub mod engine;
pub mod log;
mod log_items;
pub mod memory;
pub mod metrics;
mod readings;
pub mod records;
mod redb_engine;
pub mod removal;
#[cfg(test)]
mod removal_tests;
pub mod retention;
pub mod rollup;
#[cfg(test)]
mod rollup_tests;
pub mod room;
mod seal_rows;
mod sealed;
#[cfg(test)]
mod sealed_tests;
pub mod sequence;
#[cfg(feature = "sled")]
mod sled_engine;
pub mod space;
pub mod sync;
#[cfg(test)]
mod tests;
mod tokens;
mod types;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, ControlFlow};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use device_protocol::OwnedValue;

use apply::Commit;
use catalog::{Catalog, Staged};
pub use commands::{CommandPage, CommandResultIn, MAX_COMMANDS_SCANNED, Transition};
pub use downsample::{Agg, AggValue, Bucket, BucketPage, DownsampleQuery};
pub use engine::{Direction, Engine, EngineError, KeyRange, Table, Usage, WriteBatch};
pub use log::{LogConfig, LoggedEngine};
use readings::*;
pub use records::{CommandRecord, CommandState, DeviceRecord, TokenRecord, Transport, Wire};
use records::{LatestRecord, ReadingRecord};
pub use redb_engine::RedbEngine;
pub use seal_rows::SealedRows;
pub use sequence::{ReadingSeq, RunAck};
#[cfg(feature = "sled")]
pub use sled_engine::SledEngine;
pub use types::*;

/// The layout version this build writes and reads. Version 2 added rollups (see [`rollup`]):
/// a version 1 store is upgraded at open, and an older hub refuses a version 2 one, since it
/// would store readings without their rollups. Version 3 keeps a device's seqs per boot, in
/// device records of a new layout, and tells a reading's numbering (see `records`): older
/// records are read as they are and rewritten when they change, and an older hub refuses a
/// version 3 store, whose device records it could not read. Version 4 seals the readings each
/// checkpoint of the log folds into compressed blocks (see `sealed`): a version 3 store is
/// upgraded by its number alone (its rows are read as they are, beside the blocks), and an
/// older hub refuses a version 4 store, whose sealed readings it would not see.
pub const SCHEMA_VERSION: u32 = 4;
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

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WritePath {
    /// Log first (the default): each commit is one write and one `fdatasync` into the log, and
    /// the engine takes the changes in large checkpoints (see [`log`]). Written per reading: a
    /// few hundred bytes instead of several B-tree pages.
    #[default]
    Log,
    /// Straight into the engine: each commit is an engine transaction (the path before the log).
    Direct,
}

/// The directory of the log in a data directory.
pub fn log_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("log")
}

/// Opens the store in `dir`: the engine of `kind`, behind the log when `path` says so. A store
/// opened directly whose log still holds records (it last ran log first) gets them replayed and
/// folded first, so switching paths loses nothing.
pub fn open(
    kind: EngineKind,
    dir: &Path,
    cache_bytes: usize,
    path: WritePath,
    log_config: LogConfig,
) -> Result<Store, StoreError> {
    let logs = log_dir(dir);
    match path {
        WritePath::Log => {
            let engine = open_engine(kind, dir, cache_bytes)?;
            Store::open(Arc::new(LoggedEngine::open(engine, &logs, log_config)?))
        }
        WritePath::Direct => {
            if logs.is_dir() {
                let engine = open_engine(kind, dir, cache_bytes)?;
                let log = Arc::new(LoggedEngine::open(engine, &logs, log_config)?);
                drop(Store::open(log.clone())?);
                // What opening committed (an interrupted erase it finished) into the engine too.
                log.checkpoint_now()?;
                drop(log);
                std::fs::remove_dir_all(&logs).map_err(EngineError::from)?;
            }
            Store::open(open_engine(kind, dir, cache_bytes)?)
        }
    }
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
    /// Bumped on each change of a device's labels (see [`Store::labels_version`]).
    labels_version: Arc<AtomicU64>,
}

impl Store {
    /// Opens the store over `engine`, creating its layout on first use. Over a
    /// [`LoggedEngine`], the records of its log past the last checkpoint are replayed first (see
    /// [`Store::replay_log`]).
    pub fn open(engine: Arc<dyn Engine>) -> Result<Self, StoreError> {
        if let Some(log) = engine.as_logged() {
            Store::replay_log(&engine, log)?;
        }
        let catalog;
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
            catalog = read_catalog(&*snap)?;
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
                if found < ROLLUPS_VERSION {
                    tracing::info!(
                        from = found,
                        to = SCHEMA_VERSION,
                        devices_before_rollups = marked,
                        "store upgraded; downsampled queries read raw readings for the time before each device's rollups began"
                    );
                } else {
                    tracing::info!(
                        from = found,
                        to = SCHEMA_VERSION,
                        "store upgraded; on the log path, the readings it keeps as rows are sealed into blocks in the background"
                    );
                }
            }
        }
        let store = Store::with_catalog(engine, catalog);
        // A removed device's erase that a crash interrupted is finished before anything reads.
        store.finish_erases()?;
        Ok(store)
    }

    fn with_catalog(engine: Arc<dyn Engine>, catalog: Catalog) -> Self {
        Store {
            engine,
            catalog: Arc::new(RwLock::new(catalog)),
            writer: Arc::new(Mutex::new(())),
            refusing: Arc::new(AtomicBool::new(false)),
            room: Arc::new(room::Room::default()),
            space: Arc::new(space::DiskSpace::default()),
            labels_version: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Replays the records `log` found past its last checkpoint, in order, and checkpoints
    /// them. Replaying a batch of the store writer applies its items again to the same state, so
    /// it changes exactly what it changed the first time: the same offsets, the same duplicates,
    /// latest values, device records and rollups.
    fn replay_log(engine: &Arc<dyn Engine>, log: &LoggedEngine) -> Result<(), StoreError> {
        let pending = log.take_pending()?;
        if !pending.is_empty() {
            let snap = engine.snapshot()?;
            if let Some(v) = snap.get(Table::Meta, records::META_SCHEMA_VERSION)? {
                let found = records::be_u32(&v, "schema version")?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::SchemaTooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
            let catalog = read_catalog(&*snap)?;
            drop(snap);
            let replayer = Store::with_catalog(engine.clone(), catalog);
            for record in pending {
                match record.kind {
                    log::Kind::Batch => {
                        log.replay(&LoggedEngine::decode_batch(&record.payload)?)?;
                        // Such a batch may name devices or metrics: read the catalog again.
                        let snap = engine.snapshot()?;
                        let catalog = read_catalog(&*snap)?;
                        drop(snap);
                        *replayer.catalog.write().map_err(|_| StoreError::Poisoned)? = catalog;
                    }
                    log::Kind::Items => {
                        let (items, refusing) = log_items::decode(&record.payload)?;
                        replayer.apply_as(&items, refusing, Commit::Replay)?;
                    }
                }
            }
        }
        Ok(log.finish_open()?)
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

    /// Folds the log's tail into the engine now, sealing its readings; nothing to do on the
    /// direct path. For tools that measure the engine's file.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        match self.engine.as_logged() {
            Some(log) => Ok(log.checkpoint_now()?),
            None => Ok(()),
        }
    }

    /// Every table's entries and bytes (keys and values), by name: what the store keeps, for
    /// tools that measure it. Walks the whole store.
    pub fn table_bytes(&self) -> Result<Vec<(&'static str, u64, u64)>, StoreError> {
        let snap = self.engine.snapshot()?;
        let mut tables = Vec::new();
        for table in Table::ALL {
            let (mut entries, mut bytes) = (0u64, 0u64);
            snap.scan(table, &KeyRange::all(), Direction::Forward, &mut |k, v| {
                entries += 1;
                bytes += (k.len() + v.len()) as u64;
                ControlFlow::Continue(())
            })?;
            tables.push((table.name(), entries, bytes));
        }
        Ok(tables)
    }

    /// The engine's name.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    fn catalog(&self) -> Result<std::sync::RwLockReadGuard<'_, Catalog>, StoreError> {
        self.catalog.read().map_err(|_| StoreError::Poisoned)
    }

    /// How many entries `table` holds: walks it, so for the small tables only.
    fn entries(&self, table: Table) -> Result<u64, StoreError> {
        let snap = self.engine.snapshot()?;
        let mut count = 0u64;
        snap.scan(table, &KeyRange::all(), Direction::Forward, &mut |_, _| {
            count += 1;
            ControlFlow::Continue(())
        })?;
        Ok(count)
    }

    /// The offset the next stored reading will get.
    pub fn next_offset(&self) -> Result<u64, StoreError> {
        Ok(self.catalog()?.next_offset)
    }
}

/// The catalog (next offset, metric names, device records) as `snap` holds it.
fn read_catalog(snap: &dyn engine::Snapshot) -> Result<Catalog, StoreError> {
    let mut catalog = Catalog::default();
    if let Some(v) = snap.get(Table::Meta, records::META_NEXT_OFFSET)? {
        catalog.next_offset = records::be_u64(&v, "next offset")?;
    }
    if let Some(v) = snap.get(Table::Meta, records::META_DEVICE_FLOOR)? {
        catalog.device_floor = records::be_u32(&v, "device floor")?;
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
                    // A device being erased gives its name up (a new device may take it).
                    if !record.removed.is_some_and(|r| r.erase) {
                        catalog.device_numbers.insert(record.name.clone(), number);
                    }
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
    Ok(catalog)
}
