//! The store's side of upstream sync: readings in offset order, the persisted position of every
//! sink and pull consumer, readings parked because a receiver refused them for good, and the
//! deletes retention makes.
//!
//! Invariants:
//! - readings are deleted oldest first (retention), or a removed device's all at once (see
//!   `removal`): the readings held are the offsets from the oldest held to the next to assign,
//!   less the erased gaps among them, which the meta table counts;
//! - a position only says what its follower has passed; retention decides what to delete from the
//!   positions, never the other way round.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use super::records::{self, ReadingFields, ReadingRecord, SeqOrigin};
use super::{Direction, KeyRange, Reading, Store, StoreError, Table, WriteBatch};

/// Who follows the readings log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FollowerKind {
    /// A push sink of this hub's configuration.
    Sink,
    /// A pull consumer that commits its cursor through the API.
    Consumer,
}

/// How far a sink or a pull consumer got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPosition {
    /// Sink or consumer.
    pub kind: FollowerKind,
    /// Every reading below this offset is passed.
    pub next: u64,
    /// The batch on its way (first and last offset): after a restart it is sent again as it was,
    /// so it carries the same idempotency key.
    pub inflight: Option<(u64, u64)>,
    /// Readings passed ahead of `next` (live first, while a backlog drains): every offset from
    /// the first up to, not including, the second.
    pub ahead: Option<(u64, u64)>,
    /// When this position last changed (hub clock).
    pub updated_ms: u64,
}

impl SyncPosition {
    /// A follower that has passed nothing yet.
    pub fn start(kind: FollowerKind, now_ms: u64) -> Self {
        SyncPosition {
            kind,
            next: 0,
            inflight: None,
            ahead: None,
            updated_ms: now_ms,
        }
    }
}

/// A reading a sink's receiver refused for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ParkedRecord {
    reading: ReadingFields,
    status: u16,
    reason: String,
    parked_ms: u64,
    /// The reading's origin, appended in schema 3 (see `records::ReadingFields`).
    #[serde(
        default,
        skip_serializing_if = "SeqOrigin::is_device",
        deserialize_with = "records::appended"
    )]
    origin: SeqOrigin,
}

/// A parked reading, as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    /// The sink that parked it.
    pub sink: String,
    /// The reading.
    pub reading: Reading,
    /// The receiver's status code.
    pub status: u16,
    /// What the receiver said (shortened).
    pub reason: String,
    /// When it was parked (hub clock).
    pub parked_ms: u64,
}

/// Parked readings kept per sink; past this the oldest are dropped, counted and logged.
pub const MAX_PARKED_PER_SINK: usize = 10_000;
/// Longest reason kept with a parked reading.
const MAX_REASON: usize = 512;

/// What a round of deletes removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deleted {
    /// Readings deleted.
    pub readings: u64,
    /// The offset after the last one deleted (the oldest held now), if any was.
    pub next: Option<u64>,
}

fn parked_key(sink: &str, offset: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(sink.len() + 9);
    key.extend_from_slice(sink.as_bytes());
    key.push(0);
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

fn split_parked_key(key: &[u8]) -> Option<(&str, u64)> {
    let split = key.len().checked_sub(9)?;
    let (name, rest) = key.split_at(split);
    let offset = u64::from_be_bytes(rest.get(1..9)?.try_into().ok()?);
    Some((std::str::from_utf8(name).ok()?, offset))
}

/// The offset of the first reading `snap` holds at or after `offset`, if any.
pub(super) fn first_held(
    snap: &dyn super::engine::Snapshot,
    offset: u64,
) -> Result<Option<u64>, StoreError> {
    super::sealed::first_held(snap, offset)
}

impl Store {
    /// The oldest reading held, if any.
    pub fn oldest_offset(&self) -> Result<Option<u64>, StoreError> {
        first_held(&*self.engine.snapshot()?, 0)
    }

    /// Readings held: the offsets from the oldest held to the next to assign, less the gaps
    /// erased devices left among them.
    pub fn reading_count(&self) -> Result<u64, StoreError> {
        let next = self.next_offset()?;
        let snap = self.engine.snapshot()?;
        super::removal::held(&*snap, next)
    }

    /// Readings from offset `from` (included) up to `end` (excluded), oldest first, at most
    /// `limit`.
    pub fn readings_from(
        &self,
        from: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<Reading>, StoreError> {
        let snap = self.engine.snapshot()?;
        let mut stored = Vec::new();
        super::sealed::scan_offsets(&*snap, from, end, |offset, record| {
            stored.push((offset, record));
            if stored.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        drop(snap);
        let cat = self.catalog()?;
        Ok(stored
            .into_iter()
            .map(|(offset, record)| cat.resolve(offset, record))
            .collect())
    }

    /// The timestamp of the reading at `offset`, if it is held.
    pub fn reading_time(&self, offset: u64) -> Result<Option<u64>, StoreError> {
        let snap = self.engine.snapshot()?;
        Ok(super::reading_at(&*snap, offset)?.map(|r| r.timestamp_ms))
    }

    /// How far behind `position` is: readings held that it has not passed, and the age in
    /// seconds (by timestamp, at `now_ms`) of the oldest of them (0 when it is not behind). After
    /// a device's readings were erased, the count takes the offsets it has not passed, at most the
    /// readings held: gaps are counted in all, not per range.
    pub fn lag(&self, position: &SyncPosition, now_ms: u64) -> Result<(u64, u64), StoreError> {
        let head = self.next_offset()?;
        let next = position.next.max(self.oldest_offset()?.unwrap_or(head));
        let ahead = position.ahead.map_or(0, |(start, end)| end - start);
        let readings = head
            .saturating_sub(next)
            .saturating_sub(ahead)
            .min(self.reading_count()?);
        let first = match readings {
            0 => None,
            _ => first_held(&*self.engine.snapshot()?, next)?,
        };
        let seconds = match first {
            Some(offset) => self
                .reading_time(offset)?
                .map_or(0, |ts| now_ms.saturating_sub(ts) / 1000),
            None => 0,
        };
        Ok((readings, seconds))
    }

    /// The position of `name`, if it has one.
    pub fn sync_position(&self, name: &str) -> Result<Option<SyncPosition>, StoreError> {
        let snap = self.engine.snapshot()?;
        match snap.get(Table::SyncPositions, name.as_bytes())? {
            Some(bytes) => Ok(Some(records::decode(&bytes, "sync position")?)),
            None => Ok(None),
        }
    }

    /// Every position, by name.
    pub fn sync_positions(&self) -> Result<Vec<(String, SyncPosition)>, StoreError> {
        let snap = self.engine.snapshot()?;
        let mut positions = Vec::new();
        super::scan_records::<SyncPosition>(
            &*snap,
            Table::SyncPositions,
            &KeyRange::all(),
            "sync position",
            |k, position| {
                positions.push((String::from_utf8_lossy(k).into_owned(), position));
                ControlFlow::Continue(())
            },
        )?;
        Ok(positions)
    }

    /// Saves the position of `name`, durably.
    pub fn set_sync_position(&self, name: &str, position: &SyncPosition) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        batch.put(
            Table::SyncPositions,
            name.as_bytes().to_vec(),
            records::encode(position)?,
        );
        Ok(self.engine.commit(&batch)?)
    }

    /// Forgets the position of `name` (a consumer unregistered, a sink removed from the
    /// configuration); `false` if it had none.
    pub fn remove_sync_position(&self, name: &str) -> Result<bool, StoreError> {
        if self.sync_position(name)?.is_none() {
            return Ok(false);
        }
        let mut batch = WriteBatch::new();
        batch.delete(Table::SyncPositions, name.as_bytes().to_vec());
        self.engine.commit(&batch)?;
        Ok(true)
    }

    /// Parks the readings at `offsets` for `sink` (copies, so retention may delete the originals)
    /// and saves its new position, in one commit. Returns how many older parked readings were
    /// dropped to stay within [`MAX_PARKED_PER_SINK`].
    pub fn park(
        &self,
        sink: &str,
        offsets: &[u64],
        status: u16,
        reason: &str,
        position: &SyncPosition,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let mut reason = reason.to_owned();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let snap = self.engine.snapshot()?;
        let mut batch = WriteBatch::new();
        for &offset in offsets {
            let Some(reading) = super::reading_at(&*snap, offset)? else {
                continue;
            };
            let (reading, origin) = reading.split();
            let record = ParkedRecord {
                reading,
                status,
                reason: reason.clone(),
                parked_ms: now_ms,
                origin,
            };
            batch.put(
                Table::Parked,
                parked_key(sink, offset),
                records::encode(&record)?,
            );
        }
        // Make room: the oldest parked readings of this sink go first.
        let mut held = Vec::new();
        let mut prefix = sink.as_bytes().to_vec();
        prefix.push(0);
        snap.scan(
            Table::Parked,
            &KeyRange::prefix(&prefix),
            Direction::Forward,
            &mut |k, _| {
                held.push(k.to_vec());
                ControlFlow::Continue(())
            },
        )?;
        drop(snap);
        let excess = (held.len() + offsets.len()).saturating_sub(MAX_PARKED_PER_SINK);
        for key in held.into_iter().take(excess) {
            batch.delete(Table::Parked, key);
        }
        batch.put(
            Table::SyncPositions,
            sink.as_bytes().to_vec(),
            records::encode(position)?,
        );
        self.engine.commit(&batch)?;
        Ok(excess as u64)
    }

    /// Parked readings, by sink and offset, at most `limit`.
    pub fn parked(&self, limit: usize) -> Result<Vec<Parked>, StoreError> {
        let snap = self.engine.snapshot()?;
        let range = KeyRange::all();
        let mut found = Vec::new();
        super::scan_records::<ParkedRecord>(&*snap, Table::Parked, &range, "parked", |k, p| {
            if let Some((sink, offset)) = split_parked_key(k) {
                found.push((sink.to_owned(), offset, p));
            }
            if found.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        drop(snap);
        let cat = self.catalog()?;
        Ok(found
            .into_iter()
            .map(|(sink, offset, p)| Parked {
                sink,
                reading: cat.resolve(offset, ReadingRecord::join(p.reading, p.origin)),
                status: p.status,
                reason: p.reason,
                parked_ms: p.parked_ms,
            })
            .collect())
    }

    /// Parked readings held, in all.
    pub fn parked_count(&self) -> Result<u64, StoreError> {
        self.entries(Table::Parked)
    }

    /// The keys of the parked copies of device `number`'s readings (at most
    /// [`MAX_PARKED_PER_SINK`] per sink), for an erase.
    pub(super) fn parked_of(
        &self,
        snap: &dyn super::engine::Snapshot,
        number: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut found = Vec::new();
        super::scan_records::<ParkedRecord>(
            snap,
            Table::Parked,
            &KeyRange::all(),
            "parked",
            |k, p| {
                if p.reading.device == number {
                    found.push(k.to_vec());
                }
                ControlFlow::Continue(())
            },
        )?;
        Ok(found)
    }

    /// Deletes the oldest readings, stopping at the first for which `keep(offset, timestamp_ms)`
    /// says so; see [`Store::delete_oldest_each`].
    pub fn delete_oldest(
        &self,
        max: usize,
        keep: impl FnMut(u64, u64) -> bool,
    ) -> Result<Deleted, StoreError> {
        self.delete_oldest_each(max, keep, |_, _| {})
    }

    /// Deletes the oldest readings in one commit, stopping at the first for which
    /// `keep(offset, timestamp_ms)` says so, and tells `each` of every reading deleted. Rows go
    /// one by one, at most `max`; sealed readings a whole span at a time (see [`super::sealed`]),
    /// and only when `keep` says no to every reading of it, whatever `max`. `keep` must be
    /// monotone (once it keeps a reading it keeps every later one) and may be asked about
    /// readings it then keeps. The readings' index entries go with them, and the rollup rows of
    /// the minutes they were in are recomputed from the readings left, in the same commit;
    /// latest values stay.
    pub fn delete_oldest_each(
        &self,
        max: usize,
        mut keep: impl FnMut(u64, u64) -> bool,
        mut each: impl FnMut(u64, u64),
    ) -> Result<Deleted, StoreError> {
        // One writer at a time: the commit below never waits inside the engine behind a batch.
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let snap = self.engine.snapshot()?;
        let mut batch = WriteBatch::new();
        let mut deleted = Deleted::default();
        let mut rollups = super::rollup::DeletedRollups::default();
        let oldest_span = super::sealed::oldest_span(&*snap)?;
        let rows_end = oldest_span.as_ref().map_or(u64::MAX, |(span, _)| *span);
        let mut failure = None;
        let mut kept = false;
        snap.scan(
            Table::Readings,
            &KeyRange::between(records::reading_key(0), records::reading_key(rows_end)),
            Direction::Forward,
            &mut |k, v| {
                if deleted.readings as usize >= max {
                    kept = true;
                    return ControlFlow::Break(());
                }
                let parsed = records::be_u64(k, "reading key").and_then(|offset| {
                    Ok((offset, records::decode::<ReadingRecord>(v, "reading")?))
                });
                let (offset, record) = match parsed {
                    Ok(entry) => entry,
                    Err(e) => {
                        failure = Some(e);
                        return ControlFlow::Break(());
                    }
                };
                if keep(offset, record.timestamp_ms) {
                    kept = true;
                    return ControlFlow::Break(());
                }
                each(offset, record.timestamp_ms);
                batch.delete(Table::Readings, k.to_vec());
                batch.delete(
                    Table::DeviceTime,
                    records::device_time_key(record.device, record.timestamp_ms, offset),
                );
                rollups.note(&record);
                deleted.readings += 1;
                deleted.next = Some(offset + 1);
                ControlFlow::Continue(())
            },
        )?;
        if let Some(e) = failure {
            return Err(e);
        }
        // No row before the oldest span, or every one deleted: the span, whole or not at all.
        // A block at a time, twice (asked, then deleted), not the span's readings all at once:
        // a span of a large checkpoint decodes to megabytes, and retention runs beside ingest.
        if let (false, Some((_, blocks))) = (kept, &oldest_span) {
            let mut whole = true;
            for block in blocks {
                let readings = super::sealed::read_block(&*snap, block)?;
                if readings.iter().any(|(o, r)| keep(*o, r.timestamp_ms)) {
                    whole = false;
                    break;
                }
            }
            if whole {
                for block in blocks {
                    for (offset, record) in super::sealed::read_block(&*snap, block)? {
                        each(offset, record.timestamp_ms);
                        rollups.note(&record);
                        deleted.readings += 1;
                        deleted.next = deleted.next.max(Some(offset + 1));
                    }
                    block.delete_in(&mut batch);
                }
            }
        }
        if let Some(kept_from) = deleted.next {
            // Deleting the oldest passes the gaps of erased devices' readings among them.
            if super::removal::erased_gaps(&*snap)? > 0 {
                let gaps = super::removal::gaps_after(
                    &*snap,
                    self.next_offset()?,
                    kept_from,
                    |offset| offset < kept_from,
                    deleted.readings,
                )?;
                batch.put(
                    Table::Meta,
                    records::META_ERASED_GAPS.to_vec(),
                    gaps.to_be_bytes().to_vec(),
                );
            }
            let catalog = self.catalog()?;
            let metrics_of = |device: u32| {
                catalog
                    .devices
                    .get(&device)
                    .map(|record| record.metrics.clone())
                    .unwrap_or_default()
            };
            rollups.recompute(&*snap, kept_from, metrics_of, &mut batch)?;
        }
        drop(snap);
        if !batch.is_empty() {
            self.engine.commit(&batch)?;
        }
        Ok(deleted)
    }

    /// Disk use of the store, for the quota; may walk the whole file.
    pub fn usage(&self) -> Result<super::Usage, StoreError> {
        Ok(self.engine.usage()?)
    }

    /// Size of the store's files (cheap, unlike [`Store::usage`]).
    pub fn file_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.engine.file_bytes()?)
    }

    /// The largest file the engine can grow to within `max_disk` (see
    /// [`super::Engine::file_budget`]).
    pub fn file_budget(&self, max_disk: u64, file_bytes: u64) -> u64 {
        self.engine.file_budget(max_disk, file_bytes)
    }

    /// Drops the engine's page cache (see [`super::Engine::release_memory`]).
    pub fn release_memory(&self) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        self.catalog
            .write()
            .map_err(|_| StoreError::Poisoned)?
            .repack();
        Ok(self.engine.release_memory()?)
    }

    /// Gives free space back to the file system (see [`super::Engine::compact`]).
    pub fn compact(&self) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(self.engine.compact()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parked_keys_split_back_into_sink_and_offset() {
        let key = parked_key("cloud", 42);
        assert_eq!(split_parked_key(&key), Some(("cloud", 42)));
        assert_eq!(split_parked_key(b"short"), None);
    }
}
