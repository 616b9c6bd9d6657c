//! Removing a device (`DELETE /api/v1/devices/{id}`): it leaves the registry and its latest values
//! go; its readings are kept (readable by its id through the readings routes, and by sync) or
//! erased.
//!
//! Steps, each one transaction under the writer's turn, so ingest goes on between them:
//! 1. the device record is marked removed (a tombstone; with `erase` it also gives its name up,
//!    so the id may be registered anew at once under a new number) and its latest values go;
//! 2. with `erase`: its readings and their time index, [`CHUNK`] at a time, then its rollups, then
//!    its parked copies, its rollup mark and, last, the record itself.
//!
//! Invariants:
//! - offsets never go back and are never given again: an erased reading leaves a gap; the
//!   offsets of the others do not change, so a sink or a pull consumer neither skips nor resends
//!   another device's reading. `erased_gaps` in the meta table counts the gaps between the oldest
//!   reading held and the next offset, so [`Store::reading_count`] stays exact;
//! - a device number is never given twice: the record of an erase in progress holds it, and once
//!   the record goes, `device_floor` does;
//! - a crash between steps leaves a tombstone marked `erase`; [`Store::open`] finishes the erase
//!   before the store is used, so a start never sees half of one, and nothing of another device
//!   is touched: every delete names the device's number.

use std::collections::BTreeSet;

use super::records::Removal;
use super::retention::CHUNK;
use super::*;

/// What removing a device did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Removed {
    /// Readings erased (0 when they were kept).
    pub erased: u64,
}

/// What one step of an erase did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct EraseStep {
    /// Readings erased in it.
    pub(super) readings: u64,
    /// Whether the erase is done (the record is gone).
    pub(super) done: bool,
}

impl Store {
    /// Whether device `id` can be removed as asked: a device that is listed; or, to erase its
    /// readings, also one removed before with its readings kept.
    pub fn removable(&self, id: &str, erase: bool) -> Result<bool, StoreError> {
        let cat = self.catalog()?;
        Ok(
            match cat.device_numbers.get(id).and_then(|n| cat.devices.get(n)) {
                Some(record) => record.removed.is_none() || erase,
                None => false,
            },
        )
    }

    /// Removes device `id`, its readings kept or erased (see the module's steps); `None` when it
    /// is not [`Store::removable`]. Blocks; an erase takes a transaction per [`CHUNK`] readings.
    pub fn remove_device(
        &self,
        id: &str,
        erase: bool,
        now_ms: u64,
    ) -> Result<Option<Removed>, StoreError> {
        let Some(number) = self.mark_removed(id, erase, now_ms)? else {
            return Ok(None);
        };
        let erased = if erase { self.finish_erase(number)? } else { 0 };
        Ok(Some(Removed { erased }))
    }

    /// Step 1: the tombstone, and the latest values gone. `None` when not removable.
    pub(super) fn mark_removed(
        &self,
        id: &str,
        erase: bool,
        now_ms: u64,
    ) -> Result<Option<u32>, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let (number, mut record) = {
            let cat = self.catalog()?;
            let Some(number) = cat.device_numbers.get(id).copied() else {
                return Ok(None);
            };
            match cat.devices.get(&number) {
                Some(record) if record.removed.is_none() || erase => (number, record.clone()),
                _ => return Ok(None),
            }
        };
        record.removed = Some(Removal {
            at_ms: now_ms,
            erase,
        });
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Devices,
            number.to_be_bytes().to_vec(),
            records::encode_device(&record)?,
        );
        let snap = self.engine.snapshot()?;
        for key in keys(&*snap, Table::Latest, &number.to_be_bytes(), usize::MAX)? {
            batch.delete(Table::Latest, key);
        }
        drop(snap);
        self.engine.commit(&batch)?;
        let mut cat = self.catalog.write().map_err(|_| StoreError::Poisoned)?;
        if erase {
            cat.device_numbers.remove(id);
        }
        cat.devices.insert(number, record);
        Ok(Some(number))
    }

    /// Step 2: erase steps until the erase of device `number` is done; the readings erased.
    fn finish_erase(&self, number: u32) -> Result<u64, StoreError> {
        let mut erased = 0;
        loop {
            let step = self.erase_step(number, CHUNK)?;
            erased += step.readings;
            if step.done {
                return Ok(erased);
            }
        }
    }

    /// Finishes every erase a crash interrupted (at open); how many.
    pub(super) fn finish_erases(&self) -> Result<usize, StoreError> {
        let pending: Vec<u32> = self
            .catalog()?
            .devices
            .iter()
            .filter(|(_, r)| r.removed.is_some_and(|r| r.erase))
            .map(|(n, _)| *n)
            .collect();
        for &number in &pending {
            let erased = self.finish_erase(number)?;
            tracing::info!(
                device = number,
                erased,
                "finished erasing a removed device's readings"
            );
        }
        Ok(pending.len())
    }

    /// One transaction of device `number`'s erase: up to `max` of its readings with their index
    /// entries; when none are left, up to `max` of its rollups; when none are left either, its
    /// parked copies, its rollup mark and its record.
    pub(super) fn erase_step(&self, number: u32, max: usize) -> Result<EraseStep, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let prefix = number.to_be_bytes();
        let snap = self.engine.snapshot()?;
        let mut batch = WriteBatch::new();
        let index = keys(&*snap, Table::DeviceTime, &prefix, max)?;
        let mut offsets = BTreeSet::new();
        for key in index {
            let (_, offset) = records::split_device_time_key(&key)
                .ok_or_else(|| StoreError::Corrupt("device time key".into()))?;
            // A reading retention took leaves its index entry only until the same commit.
            if snap
                .get(Table::Readings, &records::reading_key(offset))?
                .is_some()
            {
                offsets.insert(offset);
                batch.delete(Table::Readings, records::reading_key(offset));
            }
            batch.delete(Table::DeviceTime, key);
        }
        // Its sealed readings, whole blocks, up to about `max` readings.
        if batch.is_empty() {
            for block in sealed::device_blocks(&*snap, number)? {
                if !offsets.is_empty() && offsets.len() + block.readings as usize > max {
                    break;
                }
                offsets.extend(sealed::read_block(&*snap, &block)?.iter().map(|(o, _)| *o));
                block.delete_in(&mut batch);
            }
        }
        if !batch.is_empty() {
            let next = self.next_offset()?;
            let gaps = gaps_after(
                &*snap,
                next,
                0,
                |offset| offsets.contains(&offset),
                offsets.len() as u64,
            )?;
            batch.put(
                Table::Meta,
                records::META_ERASED_GAPS.to_vec(),
                gaps.to_be_bytes().to_vec(),
            );
            drop(snap);
            self.engine.commit(&batch)?;
            return Ok(EraseStep {
                readings: offsets.len() as u64,
                done: false,
            });
        }
        let rollups = keys(&*snap, Table::Rollups, &prefix, max)?;
        if !rollups.is_empty() {
            for key in rollups {
                batch.delete(Table::Rollups, key);
            }
            drop(snap);
            self.engine.commit(&batch)?;
            return Ok(EraseStep::default());
        }
        for key in self.parked_of(&*snap, number)? {
            batch.delete(Table::Parked, key);
        }
        batch.delete(Table::Meta, records::rollups_from_key(number));
        batch.delete(Table::Meta, records::block_width_key(number));
        batch.delete(Table::Devices, prefix.to_vec());
        let floor = self.catalog()?.device_floor.max(number.saturating_add(1));
        batch.put(
            Table::Meta,
            records::META_DEVICE_FLOOR.to_vec(),
            floor.to_be_bytes().to_vec(),
        );
        drop(snap);
        self.engine.commit(&batch)?;
        let mut cat = self.catalog.write().map_err(|_| StoreError::Poisoned)?;
        cat.devices.remove(&number);
        cat.device_floor = floor;
        Ok(EraseStep {
            readings: 0,
            done: true,
        })
    }
}

/// The first `max` keys of `table` under `prefix`.
fn keys(
    snap: &dyn engine::Snapshot,
    table: Table,
    prefix: &[u8],
    max: usize,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut found = Vec::new();
    snap.scan(
        table,
        &KeyRange::prefix(prefix),
        Direction::Forward,
        &mut |k, _| {
            found.push(k.to_vec());
            if found.len() >= max {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )?;
    Ok(found)
}

/// The erased gaps (see the module) once the `count` readings for which `deleted` says so (all
/// held in `snap`, none before `from`) are deleted, `next` being the next offset.
pub(super) fn gaps_after(
    snap: &dyn engine::Snapshot,
    next: u64,
    from: u64,
    deleted: impl Fn(u64) -> bool,
    count: u64,
) -> Result<u64, StoreError> {
    // The oldest reading left: the first one held that is not deleted.
    let mut oldest_left = None;
    sealed::scan_offsets(snap, from, u64::MAX, |offset, _| {
        if deleted(offset) {
            return ControlFlow::Continue(());
        }
        oldest_left = Some(offset);
        ControlFlow::Break(())
    })?;
    let held_after = held(snap, next)?.saturating_sub(count);
    Ok(oldest_left.map_or(0, |oldest| {
        next.saturating_sub(oldest).saturating_sub(held_after)
    }))
}

/// Readings held in `snap`, `next` being the next offset: the offsets from the oldest held on,
/// less the erased gaps among them.
pub(super) fn held(snap: &dyn engine::Snapshot, next: u64) -> Result<u64, StoreError> {
    let oldest = super::sync::first_held(snap, 0)?;
    let gaps = erased_gaps(snap)?;
    Ok(oldest.map_or(0, |oldest| next.saturating_sub(oldest).saturating_sub(gaps)))
}

/// The erased gaps as `snap` holds them (0 in a store where nothing was ever erased).
pub(super) fn erased_gaps(snap: &dyn engine::Snapshot) -> Result<u64, StoreError> {
    match snap.get(Table::Meta, records::META_ERASED_GAPS)? {
        Some(v) => records::be_u64(&v, "erased gaps"),
        None => Ok(0),
    }
}
