//! Consistent copies of the store, taken by the program while it runs (never by copying the live
//! file: a copy taken mid-write does not open).
//!
//! A backup is one read snapshot of every table written into a fresh engine file in batches, so
//! it holds exactly what was committed at one moment, while ingest goes on.

use std::ops::ControlFlow;
use std::path::Path;

use super::engine::{Direction, Engine, KeyRange, Table, WriteBatch};
use super::{EngineKind, StoreError};

/// Entries written per transaction of the copy.
const COPY_BATCH: usize = 10_000;

/// What a backup copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Copied {
    /// Entries of every table.
    pub entries: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

/// Copies everything `source` holds now into a new store of `kind` in `dir` (which must not hold
/// one yet). The copy sees one snapshot: commits made while it runs are not in it.
pub fn copy_store(
    source: &dyn Engine,
    kind: EngineKind,
    dir: &Path,
    cache_bytes: usize,
) -> Result<Copied, StoreError> {
    let target = super::open_engine(kind, dir, cache_bytes)?;
    let snap = source.snapshot()?;
    let mut copied = Copied::default();
    for table in Table::ALL {
        let mut batch = WriteBatch::new();
        let mut failure = None;
        snap.scan(table, &KeyRange::all(), Direction::Forward, &mut |k, v| {
            batch.put(table, k.to_vec(), v.to_vec());
            copied.entries += 1;
            copied.bytes += (k.len() + v.len()) as u64;
            if batch.changes().len() >= COPY_BATCH {
                if let Err(e) = target.commit(&batch) {
                    failure = Some(e);
                    return ControlFlow::Break(());
                }
                batch = WriteBatch::new();
            }
            ControlFlow::Continue(())
        })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        if !batch.is_empty() {
            target.commit(&batch)?;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewReading, Store, Transport, Wire};
    use device_protocol::OwnedValue;

    #[test]
    fn a_copy_opens_and_holds_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let engine = crate::store::open_engine(EngineKind::Redb, dir.path(), 1 << 20).unwrap();
        let store = Store::open(engine.clone()).unwrap();
        let readings: Vec<NewReading> = (0..25_000u32)
            .map(|i| NewReading {
                device: format!("d{}", i % 7),
                transport: Transport::Mqtt,
                wire: Wire::Json,
                seq: Some(i / 7),
                boot: None,
                timestamp_ms: Some(1_000 + u64::from(i)),
                received_ms: 0,
                metrics: vec![("v".into(), OwnedValue::I64(i64::from(i)))],
            })
            .collect();
        store.append(&readings).unwrap();
        let backup = dir.path().join("backup");
        std::fs::create_dir(&backup).unwrap();
        let copied = copy_store(&*engine, EngineKind::Redb, &backup, 1 << 20).unwrap();
        assert!(copied.entries > 50_000, "{copied:?}");
        let restored =
            Store::open(crate::store::open_engine(EngineKind::Redb, &backup, 1 << 20).unwrap())
                .unwrap();
        assert_eq!(restored.next_offset().unwrap(), 25_000);
        assert_eq!(restored.device_count().unwrap(), 7);
        assert_eq!(restored.readings_from(24_999, 25_000, 1).unwrap().len(), 1);
        // Rollups are copied with the rest (every table is), so the copy downsamples alike.
        let query = crate::store::DownsampleQuery {
            device: "d3".into(),
            metric: "v".into(),
            from_ms: None,
            to_ms: None,
            bucket_ms: 60_000,
            order: crate::store::Order::Oldest,
            limit: 10,
            after: None,
        };
        let page = restored.downsample(&query).unwrap();
        assert_eq!(page, store.downsample(&query).unwrap());
        assert_eq!(page, restored.downsample_raw(&query).unwrap());
    }
}
