//! The sled engine, behind the `sled` cargo feature for those who ask for it.
//!
//! Every table lives in sled's default tree under a one-byte table tag, so a batch is one atomic
//! `apply_batch` followed by `flush`. Measured caveats (README, "Storage"): memory grows while old
//! readings are deleted, space is never given back, and `flush` uses `sync_file_range`, which does
//! not survive a power cut. redb is the default for those reasons.
//!
//! A full disk: sled's I/O errors are told apart like redb's ([`EngineError::DiskFull`]), so the
//! writer waits for room instead of failing readings. Whether sled takes commits again once there
//! is room without a restart is sled's own affair: unlike redb, it is not reopened here.

use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};

use super::engine::{
    Change, Direction, Engine, EngineError, KeyRange, Snapshot, Table, Usage, Visitor, WriteBatch,
};

/// A sled database directory.
pub struct SledEngine {
    db: sled::Db,
    dir: PathBuf,
}

impl SledEngine {
    /// Opens or creates the database in `dir` with a cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<Self, EngineError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes as u64)
            .open()
            .map_err(sled_error)?;
        Ok(SledEngine {
            db,
            dir: dir.to_owned(),
        })
    }
}

/// A sled error as an engine error, keeping the I/O error (a full disk must be told apart).
fn sled_error(err: sled::Error) -> EngineError {
    match err {
        sled::Error::Io(io) => io.into(),
        other => EngineError::engine(other),
    }
}

fn tagged(table: Table, key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(key.len() + 1);
    full.push(table.tag());
    full.extend_from_slice(key);
    full
}

fn tagged_bound(table: Table, bound: &Bound<Vec<u8>>, is_start: bool) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(k) => Bound::Included(tagged(table, k)),
        Bound::Excluded(k) => Bound::Excluded(tagged(table, k)),
        // The whole table: from its tag to the next tag.
        Bound::Unbounded if is_start => Bound::Included(vec![table.tag()]),
        Bound::Unbounded => Bound::Excluded(vec![table.tag() + 1]),
    }
}

/// sled has no multi-key snapshot; reads see the latest committed state.
struct SledSnapshot<'a> {
    db: &'a sled::Db,
}

impl Snapshot for SledSnapshot<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let value = self.db.get(tagged(table, key)).map_err(sled_error)?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        range: &KeyRange,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<(), EngineError> {
        let bounds = (
            tagged_bound(table, &range.start, true),
            tagged_bound(table, &range.end, false),
        );
        let iter = self.db.range(bounds);
        let mut step =
            |entry: sled::Result<(sled::IVec, sled::IVec)>| -> Result<bool, EngineError> {
                let (k, v) = entry.map_err(sled_error)?;
                Ok(visit(&k[1..], &v) == ControlFlow::Break(()))
            };
        super::engine::walk(iter, direction, &mut step)
    }
}

impl Engine for SledEngine {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, EngineError> {
        Ok(Box::new(SledSnapshot { db: &self.db }))
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), EngineError> {
        let mut sled_batch = sled::Batch::default();
        for change in batch.changes() {
            match change {
                Change::Put { table, key, value } => {
                    sled_batch.insert(tagged(*table, key), value.as_slice())
                }
                Change::Delete { table, key } => sled_batch.remove(tagged(*table, key)),
            }
        }
        self.db.apply_batch(sled_batch).map_err(sled_error)?;
        self.db.flush().map_err(sled_error)?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "sled"
    }

    fn usage(&self) -> Result<Usage, EngineError> {
        // sled never gives space back, so what its files take is what it uses.
        let bytes = self.db.size_on_disk().map_err(sled_error)?;
        Ok(Usage {
            file_bytes: bytes,
            live_bytes: bytes,
        })
    }

    fn has_room(&self, bytes: u64) -> Result<bool, EngineError> {
        super::engine::dir_has_room(&self.dir, bytes)
    }
}
