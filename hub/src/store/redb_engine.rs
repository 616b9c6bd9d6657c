//! The default engine: redb, one file, copy-on-write B-trees, `fdatasync` on every commit.
//!
//! Quick repair is on, so reopening after a crash takes milliseconds instead of a full scan, and the
//! page cache is capped by the caller so memory stays flat whatever the size of the file.
//!
//! After an I/O error (a full disk, above all) redb refuses every later operation, reads included,
//! until the database is closed and opened again. So the engine reopens it at once, itself: the
//! failed commit left nothing behind (redb is copy-on-write), reads go on from the last commit, and
//! the next commit succeeds as soon as there is room. Reopening needs no free space (measured on a
//! full tmpfs: a few milliseconds, reads and a small commit into freed pages worked).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition};

use super::engine::{
    Change, Direction, Engine, EngineError, Feed, KeyRange, Snapshot, Table, Usage, Visitor,
    WriteBatch,
};

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// A redb error as an engine error, keeping the I/O error (a full disk must be told apart).
fn engine_error(err: impl Into<redb::Error>) -> EngineError {
    match err.into() {
        redb::Error::Io(io) => io.into(),
        other => EngineError::engine(other),
    }
}

/// Whether `err` leaves the database refusing everything until it is reopened.
fn needs_reopen(err: &EngineError) -> bool {
    match err {
        EngineError::Io(_) | EngineError::DiskFull(_) => true,
        EngineError::Engine(detail) => detail == &redb::Error::PreviousIo.to_string(),
    }
}

/// A redb database file.
pub struct RedbEngine {
    /// Compaction and reopening need the database to themselves; everything else shares it.
    db: RwLock<Handle>,
    path: PathBuf,
    cache_bytes: usize,
    /// Snapshots alive: a reopen would cut their reads off.
    snapshots: AtomicUsize,
}

/// The open database and how many times it was opened, so that of two calls that met the same
/// failure only one reopens it.
struct Handle {
    /// `None` only when reopening after an I/O error failed; the next call tries again.
    db: Option<Database>,
    generation: u64,
}

impl RedbEngine {
    /// Opens or creates the database at `path` with a page cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, EngineError> {
        let db = open_database(path, cache_bytes)?;
        // Create every table up front so readers never meet a missing one.
        let mut txn = db.begin_write().map_err(engine_error)?;
        txn.set_quick_repair(true);
        for table in Table::ALL {
            txn.open_table(definition(table)).map_err(engine_error)?;
        }
        txn.commit().map_err(engine_error)?;
        Ok(RedbEngine {
            db: RwLock::new(Handle {
                db: Some(db),
                generation: 0,
            }),
            path: path.to_owned(),
            cache_bytes,
            snapshots: AtomicUsize::new(0),
        })
    }

    /// Runs `op` on the database; after an error that leaves redb refusing everything, reopens
    /// it, so the calls after this one work again.
    fn with_db<T>(
        &self,
        op: impl FnOnce(&Database, u64) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let (outcome, generation) = {
            let handle = self.handle()?;
            let outcome = match &handle.db {
                Some(db) => op(db, handle.generation),
                None => Err(EngineError::engine(redb::Error::PreviousIo)),
            };
            (outcome, handle.generation)
        };
        if let Err(e) = &outcome {
            self.recover(e, generation);
        }
        outcome
    }

    /// Reopens the database if `err`, met on its `generation`, leaves it refusing everything.
    fn recover(&self, err: &EngineError, generation: u64) {
        if needs_reopen(err) {
            self.reopen(generation);
        }
    }

    /// Closes the database and opens it again (see the module's doc), unless another call already
    /// did since `generation`. A failure is logged; the database then stays closed until a later
    /// call reopens it.
    fn reopen(&self, generation: u64) {
        let Ok(mut handle) = self.db.write() else {
            return;
        };
        if handle.generation != generation {
            return;
        }
        handle.generation += 1;
        // Dropped first: the new handle needs the file's lock.
        handle.db = None;
        match open_database(&self.path, self.cache_bytes) {
            Ok(db) => {
                tracing::info!(
                    "store reopened after an I/O error; reads go on from the last commit"
                );
                handle.db = Some(db);
            }
            Err(e) => {
                tracing::warn!(error = %e, "store could not be reopened after an I/O error; trying again at its next use")
            }
        }
    }

    /// The handle, reopening the database first if an earlier reopen failed.
    fn handle(&self) -> Result<RwLockReadGuard<'_, Handle>, EngineError> {
        let read = || {
            self.db
                .read()
                .map_err(|_| EngineError::engine("database lock poisoned"))
        };
        let handle = read()?;
        if handle.db.is_some() {
            return Ok(handle);
        }
        let generation = handle.generation;
        drop(handle);
        self.reopen(generation);
        read()
    }
}

fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, EngineError> {
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(engine_error)
}

struct RedbSnapshot<'e> {
    txn: ReadTransaction,
    /// To reopen the database when a read meets an I/O error.
    engine: &'e RedbEngine,
    generation: u64,
}

impl RedbSnapshot<'_> {
    fn checked<T>(&self, outcome: Result<T, EngineError>) -> Result<T, EngineError> {
        if let Err(e) = &outcome {
            self.engine.recover(e, self.generation);
        }
        outcome
    }
}

impl Drop for RedbSnapshot<'_> {
    fn drop(&mut self) {
        self.engine.snapshots.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Snapshot for RedbSnapshot<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.checked((|| {
            let table = self
                .txn
                .open_table(definition(table))
                .map_err(engine_error)?;
            let value = table.get(key).map_err(engine_error)?;
            Ok(value.map(|v| v.value().to_vec()))
        })())
    }

    fn scan(
        &self,
        table: Table,
        range: &KeyRange,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<(), EngineError> {
        self.checked((|| {
            let table = self
                .txn
                .open_table(definition(table))
                .map_err(engine_error)?;
            let bounds = (
                range.start.as_ref().map(|k| k.as_slice()),
                range.end.as_ref().map(|k| k.as_slice()),
            );
            let iter = table.range::<&[u8]>(bounds).map_err(engine_error)?;
            let mut step = |entry: Result<_, redb::StorageError>| -> Result<bool, EngineError> {
                let (k, v): (redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>) =
                    entry.map_err(engine_error)?;
                Ok(visit(k.value(), v.value()) == ControlFlow::Break(()))
            };
            super::engine::walk(iter, direction, &mut step)
        })())
    }
}

impl Engine for RedbEngine {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, EngineError> {
        // Counted under the handle's read lock, so `release_memory` (under its write lock) sees
        // every snapshot that could read from the database it would close.
        let (txn, generation) = self.with_db(|db, generation| {
            let txn = db.begin_read().map_err(engine_error)?;
            self.snapshots.fetch_add(1, Ordering::AcqRel);
            Ok((txn, generation))
        })?;
        Ok(Box::new(RedbSnapshot {
            txn,
            engine: self,
            generation,
        }))
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), EngineError> {
        self.commit_fed(&mut |sink| {
            for change in batch.changes() {
                match change {
                    Change::Put { table, key, value } => sink(*table, key, Some(value))?,
                    Change::Delete { table, key } => sink(*table, key, None)?,
                }
            }
            Ok(())
        })
    }

    fn commit_fed(&self, feed: &mut Feed<'_>) -> Result<(), EngineError> {
        self.with_db(|db, _| {
            let mut txn = db.begin_write().map_err(engine_error)?;
            txn.set_quick_repair(true);
            {
                let mut open = std::collections::BTreeMap::new();
                feed(&mut |table, key, value| {
                    let handle = match open.entry(table) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert(txn.open_table(definition(table)).map_err(engine_error)?)
                        }
                    };
                    match value {
                        Some(value) => {
                            handle.insert(key, value).map_err(engine_error)?;
                        }
                        None => {
                            handle.remove(key).map_err(engine_error)?;
                        }
                    }
                    Ok(())
                })?;
            }
            // Durability::Immediate is the default: commit returns after fdatasync.
            txn.commit().map_err(engine_error)
        })
    }

    fn name(&self) -> &'static str {
        "redb"
    }

    fn usage(&self) -> Result<Usage, EngineError> {
        let file_bytes = std::fs::metadata(&self.path)?.len();
        let live_bytes = self.with_db(|db, _| {
            let txn = db.begin_write().map_err(engine_error)?;
            let stats = txn.stats().map_err(engine_error)?;
            let live_bytes = stats.allocated_pages() * stats.page_size() as u64;
            txn.abort().map_err(engine_error)?;
            Ok(live_bytes)
        })?;
        Ok(Usage {
            file_bytes,
            live_bytes: live_bytes.min(file_bytes),
        })
    }

    fn file_bytes(&self) -> Result<u64, EngineError> {
        Ok(std::fs::metadata(&self.path)?.len())
    }

    fn file_budget(&self, max_disk: u64, file: u64) -> u64 {
        file_budget_within(max_disk, file)
    }

    fn compact(&self) -> Result<bool, EngineError> {
        let mut handle = self
            .db
            .write()
            .map_err(|_| EngineError::engine("database lock poisoned"))?;
        let generation = handle.generation;
        let Some(db) = handle.db.as_mut() else {
            return Ok(false);
        };
        let outcome = match db.compact() {
            Ok(done) => Ok(done),
            // An API request still reads: try again at the next idle moment.
            Err(redb::CompactionError::TransactionInProgress) => Ok(false),
            Err(e) => Err(engine_error(e)),
        };
        drop(handle);
        if let Err(e) = &outcome {
            self.recover(e, generation);
        }
        outcome
    }

    /// redb has no call to empty its cache: the database is closed and opened again, which takes
    /// milliseconds (quick repair is on and the last commit was clean), only while no snapshot
    /// is open and, holding the handle, while nothing else runs.
    fn release_memory(&self) -> Result<bool, EngineError> {
        let mut handle = self
            .db
            .write()
            .map_err(|_| EngineError::engine("database lock poisoned"))?;
        if self.snapshots.load(Ordering::Acquire) > 0 {
            return Ok(false);
        }
        let Some(db) = handle.db.take() else {
            return Ok(false);
        };
        handle.generation += 1;
        let closed = db.close();
        match open_database(&self.path, self.cache_bytes) {
            Ok(db) => {
                handle.db = Some(db);
                closed.map_err(engine_error)?;
                Ok(true)
            }
            // `handle` reopens it at the next call.
            Err(e) => Err(e),
        }
    }

    fn has_room(&self, bytes: u64) -> Result<bool, EngineError> {
        match self.path.parent() {
            Some(dir) => super::engine::dir_has_room(dir, bytes),
            None => Ok(true),
        }
    }
}

/// The largest file within `max_disk`, given how redb grows its file from `file` bytes now: it
/// doubles it up to 4 GiB (so it only reaches `file` times a power of two, which may be
/// little more than half the quota), then grows it by 4 GiB regions. Live data is kept under 75%
/// of this, leaving room for the copy-on-write pages of the last commits, so the engine never
/// needs the growth step that would take the file past the quota. A file already past the quota
/// (the quota was lowered) keeps to the quota and shrinks at the next idle compaction.
fn file_budget_within(max_disk: u64, file: u64) -> u64 {
    const REGION: u64 = 4 << 30;
    if file == 0 || file > max_disk {
        return max_disk;
    }
    let mut budget = file;
    while budget < REGION && budget * 2 <= max_disk {
        budget *= 2;
    }
    if max_disk >= REGION {
        budget = budget.max(max_disk / REGION * REGION);
    }
    budget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_budget_follows_the_engine_growth_steps() {
        const MIB: u64 = 1 << 20;
        const GIB: u64 = 1 << 30;
        // No file yet, or one past a lowered quota: the quota itself.
        assert_eq!(file_budget_within(16 * MIB, 0), 16 * MIB);
        assert_eq!(file_budget_within(16 * MIB, 40 * MIB), 16 * MIB);
        // Doublings of the file as it is now, while they stay within the quota.
        assert_eq!(file_budget_within(16 * MIB, MIB), 16 * MIB);
        assert_eq!(file_budget_within(64 * MIB, 39_325_696), 39_325_696);
        assert_eq!(file_budget_within(64 * MIB, 9_831_424), 39_325_696);
        assert_eq!(file_budget_within(3 * GIB, GIB), 2 * GIB);
        // Past 4 GiB the file grows by 4 GiB regions.
        assert_eq!(file_budget_within(10 * GIB, GIB), 8 * GIB);
        assert_eq!(file_budget_within(10 * GIB, 3 * GIB), 8 * GIB);
    }
}
