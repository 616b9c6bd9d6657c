//! The default engine: redb, one file, copy-on-write B-trees, `fdatasync` on every commit.
//!
//! Quick repair is on, so reopening after a crash takes milliseconds instead of a full scan, and the
//! page cache is capped by the caller so memory stays flat whatever the size of the file.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition};

use super::engine::{
    Change, Direction, Engine, EngineError, KeyRange, Snapshot, Table, Usage, Visitor, WriteBatch,
};

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// A redb database file.
pub struct RedbEngine {
    /// Compaction needs the database to itself; everything else shares it.
    db: RwLock<Database>,
    path: PathBuf,
}

impl RedbEngine {
    /// Opens or creates the database at `path` with a page cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, EngineError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(EngineError::engine)?;
        // Create every table up front so readers never meet a missing one.
        let mut txn = db.begin_write().map_err(EngineError::engine)?;
        txn.set_quick_repair(true);
        for table in Table::ALL {
            txn.open_table(definition(table))
                .map_err(EngineError::engine)?;
        }
        txn.commit().map_err(EngineError::engine)?;
        Ok(RedbEngine {
            db: RwLock::new(db),
            path: path.to_owned(),
        })
    }

    fn db(&self) -> Result<RwLockReadGuard<'_, Database>, EngineError> {
        self.db
            .read()
            .map_err(|_| EngineError::engine("database lock poisoned"))
    }
}

struct RedbSnapshot {
    txn: ReadTransaction,
}

impl Snapshot for RedbSnapshot {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let table = self
            .txn
            .open_table(definition(table))
            .map_err(EngineError::engine)?;
        let value = table.get(key).map_err(EngineError::engine)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        range: &KeyRange,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<(), EngineError> {
        let table = self
            .txn
            .open_table(definition(table))
            .map_err(EngineError::engine)?;
        let bounds = (
            range.start.as_ref().map(|k| k.as_slice()),
            range.end.as_ref().map(|k| k.as_slice()),
        );
        let iter = table.range::<&[u8]>(bounds).map_err(EngineError::engine)?;
        let mut step = |entry: Result<_, redb::StorageError>| -> Result<bool, EngineError> {
            let (k, v): (redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>) =
                entry.map_err(EngineError::engine)?;
            Ok(visit(k.value(), v.value()) == ControlFlow::Break(()))
        };
        super::engine::walk(iter, direction, &mut step)
    }
}

impl Engine for RedbEngine {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, EngineError> {
        let txn = self.db()?.begin_read().map_err(EngineError::engine)?;
        Ok(Box::new(RedbSnapshot { txn }))
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), EngineError> {
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(EngineError::engine)?;
        txn.set_quick_repair(true);
        {
            let mut open = std::collections::BTreeMap::new();
            for change in batch.changes() {
                let table = match change {
                    Change::Put { table, .. } | Change::Delete { table, .. } => *table,
                };
                let handle = match open.entry(table) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => e.insert(
                        txn.open_table(definition(table))
                            .map_err(EngineError::engine)?,
                    ),
                };
                match change {
                    Change::Put { key, value, .. } => {
                        handle
                            .insert(key.as_slice(), value.as_slice())
                            .map_err(EngineError::engine)?;
                    }
                    Change::Delete { key, .. } => {
                        handle.remove(key.as_slice()).map_err(EngineError::engine)?;
                    }
                }
            }
        }
        // Durability::Immediate is the default: commit returns after fdatasync.
        txn.commit().map_err(EngineError::engine)
    }

    fn name(&self) -> &'static str {
        "redb"
    }

    fn usage(&self) -> Result<Usage, EngineError> {
        let file_bytes = std::fs::metadata(&self.path)?.len();
        let db = self.db()?;
        let txn = db.begin_write().map_err(EngineError::engine)?;
        let stats = txn.stats().map_err(EngineError::engine)?;
        let live_bytes = stats.allocated_pages() * stats.page_size() as u64;
        txn.abort().map_err(EngineError::engine)?;
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
        let mut db = self
            .db
            .write()
            .map_err(|_| EngineError::engine("database lock poisoned"))?;
        match db.compact() {
            Ok(done) => Ok(done),
            // An API request still reads: try again at the next idle moment.
            Err(redb::CompactionError::TransactionInProgress) => Ok(false),
            Err(e) => Err(EngineError::engine(e)),
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
