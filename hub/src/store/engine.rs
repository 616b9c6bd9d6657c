//! The small ordered key-value engine the store is written over.
//!
//! An engine holds a fixed set of [`Table`]s of byte keys and byte values, ordered by key. It offers
//! point reads, ordered scans in either direction from a consistent view, and atomic, durable batch
//! commits. Everything the hub knows about readings, devices and tokens is laid out over this by
//! `store::Store`; nothing else touches an engine.
//!
//! Invariant every engine keeps: when [`Engine::commit`] returns `Ok`, the whole batch is on disk
//! and survives a crash or a power cut; when it returns `Err`, none of it is visible.

use std::ops::{Bound, ControlFlow};

/// The tables of the store. Adding one is allowed; renaming one changes the on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Store-wide values: schema version, next hub offset.
    Meta,
    /// The readings log: hub offset (u64 BE) -> encoded reading.
    Readings,
    /// Per-device time index: device number, timestamp, offset (all BE) -> nothing.
    DeviceTime,
    /// Latest value per device and metric: device number, metric number -> encoded latest value.
    Latest,
    /// Device registry: device number (u32 BE) -> encoded device record.
    Devices,
    /// Metric names: metric name -> metric number (u32 BE).
    Metrics,
    /// API tokens: keyed hash of the secret -> encoded token record.
    Tokens,
    /// Commands sent to devices: command id (u64 BE) -> encoded command record.
    Commands,
    /// Sync positions of sinks and pull consumers: name -> encoded position.
    SyncPositions,
    /// Readings a sink's receiver refused for good: sink name, 0, offset (BE) -> encoded record.
    Parked,
    /// Per-minute aggregates of each metric of each device: device number, metric number,
    /// minute since the epoch (all BE) -> encoded rollup; see `store::rollup`.
    Rollups,
    /// Rules added through the API: rule name -> encoded rule (its definition as JSON text).
    Rules,
    /// The state of each alert: rule name, 0, device id -> encoded alert record.
    Alerts,
    /// Alert transitions, oldest first: event number (u64 BE) -> encoded alert event.
    AlertHistory,
    /// Webhook notifications not yet taken by their receiver: entry number (u64 BE) -> encoded
    /// entry.
    Outbox,
    /// Devices' MQTT passwords: device id -> encoded credential (salt, keyed argon2 hash); see
    /// `store::credentials`.
    Credentials,
    /// Sealed readings, one device's of one checkpoint each: span (the checkpoint's first offset,
    /// u64 BE), device number, first offset -> compressed block; see `store::sealed`.
    Blocks,
    /// The blocks of each device by time: device number, min timestamp, span, first offset ->
    /// max timestamp, last offset, readings; see `store::sealed`.
    BlockTimes,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 18] = [
        Table::Meta,
        Table::Readings,
        Table::DeviceTime,
        Table::Latest,
        Table::Devices,
        Table::Metrics,
        Table::Tokens,
        Table::Commands,
        Table::SyncPositions,
        Table::Parked,
        Table::Rollups,
        Table::Rules,
        Table::Alerts,
        Table::AlertHistory,
        Table::Outbox,
        Table::Credentials,
        Table::Blocks,
        Table::BlockTimes,
    ];

    /// The table's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Readings => "readings",
            Table::DeviceTime => "device_time",
            Table::Latest => "latest",
            Table::Devices => "devices",
            Table::Metrics => "metrics",
            Table::Tokens => "tokens",
            Table::Commands => "commands",
            Table::SyncPositions => "sync_positions",
            Table::Parked => "parked",
            Table::Rollups => "rollups",
            Table::Rules => "rules",
            Table::Alerts => "alerts",
            Table::AlertHistory => "alert_history",
            Table::Outbox => "outbox",
            Table::Credentials => "device_credentials",
            Table::Blocks => "blocks",
            Table::BlockTimes => "block_times",
        }
    }

    /// A one-byte tag, for engines that keep every table in one keyspace.
    pub fn tag(self) -> u8 {
        self as u8
    }
}

/// The direction of a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Smallest key first.
    Forward,
    /// Largest key first.
    Reverse,
}

/// A key range for a scan.
#[derive(Debug, Clone)]
pub struct KeyRange {
    /// Where the range starts.
    pub start: Bound<Vec<u8>>,
    /// Where the range ends.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key of the table.
    pub fn all() -> Self {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        KeyRange {
            start: Bound::Included(prefix.to_vec()),
            end: match prefix_successor(prefix) {
                Some(end) => Bound::Excluded(end),
                None => Bound::Unbounded,
            },
        }
    }

    /// Keys from `start` (included) to `end` (excluded).
    pub fn between(start: Vec<u8>, end: Vec<u8>) -> Self {
        KeyRange {
            start: Bound::Included(start),
            end: Bound::Excluded(end),
        }
    }

    /// Whether `key` lies inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let after_start = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let before_end = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        after_start && before_end
    }
}

/// The smallest key greater than every key with this prefix, if there is one.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// One change in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert or replace a value.
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Remove a key, if present.
    Delete { table: Table, key: Vec<u8> },
}

/// Changes committed together: all or nothing, durable when the commit returns.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    changes: Vec<Change>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an insert.
    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.changes.push(Change::Put { table, key, value });
    }

    /// Adds a removal.
    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.changes.push(Change::Delete { table, key });
    }

    /// The changes, in the order they were added (later ones win).
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// Whether the batch has no change.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// What an engine can fail with. The detail is for logs; it never reaches an API client.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The storage engine reported an error.
    #[error("storage engine: {0}")]
    Engine(String),
    /// The disk or file system failed.
    #[error("storage I/O: {0}")]
    Io(std::io::Error),
    /// The file system has no room left (or the user's disk quota is reached): nothing of the
    /// batch was stored; the same batch can be committed once there is room again.
    #[error("no room left on the file system: {0}")]
    DiskFull(std::io::Error),
}

impl From<std::io::Error> for EngineError {
    fn from(err: std::io::Error) -> Self {
        if is_no_room(&err) {
            EngineError::DiskFull(err)
        } else {
            EngineError::Io(err)
        }
    }
}

impl EngineError {
    /// Wraps any engine-specific error.
    pub fn engine(err: impl std::fmt::Display) -> Self {
        EngineError::Engine(err.to_string())
    }

    /// Whether the file system is full (see [`EngineError::DiskFull`]).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, EngineError::DiskFull(_))
    }
}

/// Whether `err` says the file system (or the user's quota on it) has no room left.
pub fn is_no_room(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Feeds `entries` to `step` in `direction` order until `step` says stop (`true`) or fails; the
/// one loop every engine's scan uses.
pub fn walk<T, E>(
    entries: impl DoubleEndedIterator<Item = T>,
    direction: Direction,
    mut step: impl FnMut(T) -> Result<bool, E>,
) -> Result<(), E> {
    match direction {
        Direction::Forward => {
            for entry in entries {
                if step(entry)? {
                    break;
                }
            }
        }
        Direction::Reverse => {
            for entry in entries.rev() {
                if step(entry)? {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Called for each entry of a scan; return `Break` to stop early.
pub type Visitor<'v> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'v;

/// A consistent read view of the engine.
pub trait Snapshot {
    /// The value of `key`, if present.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    /// Visits the entries of `range` in `direction` order until the visitor breaks.
    fn scan(
        &self,
        table: Table,
        range: &KeyRange,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<(), EngineError>;
}

/// How much disk an engine takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Size of its files.
    pub file_bytes: u64,
    /// Bytes holding live data; the rest of the file is free space the engine reuses.
    pub live_bytes: u64,
}

/// Takes one change: a table, a key and its value (`None`: delete the key).
pub type ChangeSink<'a> = dyn FnMut(Table, &[u8], Option<&[u8]>) -> Result<(), EngineError> + 'a;
/// Gives every change of a commit to the sink it is handed (see [`Engine::commit_fed`]).
pub type Feed<'a> = dyn FnMut(&mut ChangeSink<'_>) -> Result<(), EngineError> + 'a;

/// An ordered key-value engine. All calls block: run them off the async workers.
pub trait Engine: Send + Sync + 'static {
    /// A read view; it sees every batch committed before it was taken.
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, EngineError>;

    /// Applies `batch` atomically and durably.
    fn commit(&self, batch: &WriteBatch) -> Result<(), EngineError>;

    /// Applies the changes `feed` gives its sink, atomically and durably, as `commit` would a
    /// batch of them; an error from `feed` or the sink commits nothing. For a large batch that
    /// exists elsewhere in another form (the log's tail at a checkpoint), so that it is not
    /// copied into a [`WriteBatch`] first. By default it is.
    fn commit_fed(&self, feed: &mut Feed<'_>) -> Result<(), EngineError> {
        let mut batch = WriteBatch::new();
        feed(&mut |table, key, value| {
            match value {
                Some(v) => batch.put(table, key.to_vec(), v.to_vec()),
                None => batch.delete(table, key.to_vec()),
            }
            Ok(())
        })?;
        self.commit(&batch)
    }

    /// The engine's name, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Disk use, for the quota. May walk the whole file: call it seldom.
    fn usage(&self) -> Result<Usage, EngineError>;

    /// Size of the engine's files; cheap.
    fn file_bytes(&self) -> Result<u64, EngineError> {
        Ok(self.usage()?.file_bytes)
    }

    /// The largest file the engine can grow to within `max_disk`, its files being `file` bytes
    /// now: retention keeps live data well below it, so the engine never needs a growth step past
    /// the quota. An engine that grows its files in small steps gets the quota itself.
    fn file_budget(&self, max_disk: u64, file: u64) -> u64 {
        let _ = file;
        max_disk
    }

    /// Gives free space back to the file system; `Ok(false)` when there was nothing to do or the
    /// engine cannot now (open readers). Blocks writers while it runs: call it when idle.
    fn compact(&self) -> Result<bool, EngineError> {
        Ok(false)
    }

    /// Drops the engine's page cache, so the memory a load filled it with goes back to the system
    /// (its pages lie scattered through the heap, where they keep much more than their own size
    /// from being returned); `Ok(false)` when the engine keeps no such cache or cannot now (open
    /// readers). Call it when idle: the cache fills again with what is read next.
    fn release_memory(&self) -> Result<bool, EngineError> {
        Ok(false)
    }

    /// The log this engine is, when it is one (see [`super::log`]): the store then logs its
    /// writer's batches as items and replays them at open.
    fn as_logged(&self) -> Option<&super::log::LoggedEngine> {
        None
    }

    /// Whether the file system holding the engine's files has room for `bytes` more now; asked
    /// while commits fail with [`EngineError::DiskFull`], to know when to try again. Writes
    /// nothing that stays.
    fn has_room(&self, bytes: u64) -> Result<bool, EngineError> {
        let _ = bytes;
        Ok(true)
    }
}

/// Whether the file system of `dir` has room for `bytes` more: a file of that size is written
/// there (into the page cache, never synced) and removed. A real write, not `statvfs`, so reserved
/// blocks, quotas and the file system's own rules all count.
pub fn dir_has_room(dir: &std::path::Path, bytes: u64) -> Result<bool, EngineError> {
    use std::io::Write;
    let path = dir.join(".room-probe");
    let written = (|| {
        let mut file = std::fs::File::create(&path)?;
        write_zeros(&mut file, bytes)?;
        file.flush()
    })();
    // Removed whatever happened, so the probe never holds the room it measured.
    let removed = std::fs::remove_file(&path);
    match written {
        Ok(()) => removed.map(|()| true).map_err(EngineError::from),
        Err(e) if is_no_room(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Writes `bytes` zeros to `file` at its position, in chunks. The chunk is allocated (zeroed
/// pages from the system), not a static: a static of zeros is that many bytes of the binary.
pub fn write_zeros(file: &mut std::fs::File, bytes: u64) -> std::io::Result<()> {
    use std::io::Write;
    let chunk = vec![0u8; (64 << 10).min(bytes) as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}
