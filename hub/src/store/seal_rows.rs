//! Sealing the rows a store holds from before its log sealed them (a store of schema 3 or
//! older, or one written straight into the engine) into blocks: the upgrade in place to
//! schema 4, a transaction at a time.
//!
//! Each step takes the oldest rows below a bound (the next offset when the store was opened: a
//! row above it is in the log's tail, which its checkpoint seals) up to the next span, at most a
//! given number, and in one commit writes their blocks and deletes the rows and their index
//! entries. A kill at any moment leaves each reading a row or in a block, never both and never
//! neither, and the next open goes on from the rows left.

use super::*;

/// What a step of [`Store::seal_rows`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SealedRows {
    /// Rows sealed.
    pub readings: u64,
    /// Whether rows below the bound are left.
    pub more: bool,
}

impl Store {
    /// The backup taken before sealing began, while rows are left to seal (so that a restart
    /// does not take another).
    pub fn seal_backup(&self) -> Result<Option<String>, StoreError> {
        let snap = self.engine.snapshot()?;
        Ok(snap
            .get(Table::Meta, records::META_SEAL_BACKUP)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records (or with `None` forgets) the backup taken before sealing began.
    pub fn set_seal_backup(&self, dir: Option<&str>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        match dir {
            Some(dir) => batch.put(
                Table::Meta,
                records::META_SEAL_BACKUP.to_vec(),
                dir.as_bytes().to_vec(),
            ),
            None => batch.delete(Table::Meta, records::META_SEAL_BACKUP.to_vec()),
        }
        Ok(self.engine.commit(&batch)?)
    }

    /// Readings held as rows below offset `below`.
    pub fn rows_below(&self, below: u64) -> Result<u64, StoreError> {
        let snap = self.engine.snapshot()?;
        let mut rows = 0;
        let range = KeyRange::between(records::reading_key(0), records::reading_key(below));
        snap.scan(Table::Readings, &range, Direction::Forward, &mut |_, _| {
            rows += 1;
            ControlFlow::Continue(())
        })?;
        Ok(rows)
    }

    /// Seals the oldest rows below offset `below`, at most `max`, into blocks in one commit.
    pub fn seal_rows(&self, below: u64, max: usize) -> Result<SealedRows, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let snap = self.engine.snapshot()?;
        let range = KeyRange::between(records::reading_key(0), records::reading_key(below));
        let mut first = None;
        snap.scan(Table::Readings, &range, Direction::Forward, &mut |k, _| {
            first = records::be_u64(k, "reading key").ok();
            ControlFlow::Break(())
        })?;
        let Some(first) = first else {
            return Ok(SealedRows::default());
        };
        // A span holds every offset up to the next span: the rows taken stop before it.
        let end = sealed::next_span(&*snap, first)?.map_or(below, |span| span.min(below));
        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut more = false;
        let range = KeyRange::between(records::reading_key(first), records::reading_key(end));
        snap.scan(Table::Readings, &range, Direction::Forward, &mut |k, v| {
            if rows.len() >= max.max(1) {
                more = true;
                return ControlFlow::Break(());
            }
            rows.push((k.to_vec(), v.to_vec()));
            ControlFlow::Continue(())
        })?;
        let mut batch = WriteBatch::new();
        let borrowed: Vec<(&[u8], &[u8])> = rows
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        for (table, key, value) in sealed::seal(&borrowed, &*snap)? {
            batch.put(table, key, value);
        }
        for (key, value) in &rows {
            let offset = records::be_u64(key, "reading key")?;
            let record: ReadingRecord = records::decode(value, "reading")?;
            batch.delete(Table::Readings, key.clone());
            batch.delete(
                Table::DeviceTime,
                records::device_time_key(record.device, record.timestamp_ms, offset),
            );
        }
        drop(snap);
        self.engine.commit(&batch)?;
        Ok(SealedRows {
            readings: rows.len() as u64,
            more: more || end < below,
        })
    }
}
