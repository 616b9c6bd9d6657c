//! An in-memory engine for component tests. It keeps the same contract as the disk engines except
//! durability: a "reopen" is a new [`MemoryEngine`] over the same shared tables. A test can fill
//! its "disk" ([`MemoryEngine::set_full`]): commits then fail as on a full file system.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use super::engine::{
    Change, Direction, Engine, EngineError, KeyRange, Snapshot, Table, Usage, Visitor, WriteBatch,
    walk,
};

type Tables = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// Tables held in memory, shared between clones so a test can "reopen" them.
#[derive(Clone, Default)]
pub struct MemoryEngine {
    tables: Arc<RwLock<Tables>>,
    /// Commits fail with [`EngineError::DiskFull`] while set.
    full: Arc<AtomicBool>,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every commit fail as on a full file system (`true`), or succeed again.
    pub fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::Relaxed);
    }

    /// A second engine over the same data, as if the store were closed and opened again.
    pub fn reopen(&self) -> Self {
        self.clone()
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Tables>, EngineError> {
        self.tables
            .read()
            .map_err(|_| EngineError::engine("memory engine lock poisoned"))
    }
}

struct MemorySnapshot<'a> {
    tables: RwLockReadGuard<'a, Tables>,
}

impl Snapshot for MemorySnapshot<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.tables.get(&(table, key.to_vec())).cloned())
    }

    fn scan(
        &self,
        table: Table,
        range: &KeyRange,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<(), EngineError> {
        let entries = self
            .tables
            .range((table, Vec::new())..)
            .take_while(|((t, _), _)| *t == table)
            .filter(|((_, k), _)| range.contains(k));
        // A test engine: collecting first keeps it simple (the range is not double-ended).
        let entries: Vec<_> = entries.collect();
        walk(entries.into_iter(), direction, |((_, k), v)| {
            Ok::<_, EngineError>(visit(k, v).is_break())
        })
    }
}

impl Engine for MemoryEngine {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, EngineError> {
        Ok(Box::new(MemorySnapshot {
            tables: self.read()?,
        }))
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), EngineError> {
        if self.full.load(Ordering::Relaxed) {
            return Err(std::io::Error::from(std::io::ErrorKind::StorageFull).into());
        }
        let mut tables = self
            .tables
            .write()
            .map_err(|_| EngineError::engine("memory engine lock poisoned"))?;
        for change in batch.changes() {
            match change {
                Change::Put { table, key, value } => {
                    tables.insert((*table, key.clone()), value.clone());
                }
                Change::Delete { table, key } => {
                    tables.remove(&(*table, key.clone()));
                }
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn has_room(&self, _bytes: u64) -> Result<bool, EngineError> {
        Ok(!self.full.load(Ordering::Relaxed))
    }

    fn usage(&self) -> Result<Usage, EngineError> {
        let live = self
            .read()?
            .iter()
            .map(|((_, k), v)| (k.len() + v.len()) as u64)
            .sum();
        Ok(Usage {
            file_bytes: live,
            live_bytes: live,
        })
    }
}
