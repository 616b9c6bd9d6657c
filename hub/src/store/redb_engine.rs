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
