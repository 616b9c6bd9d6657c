//! The catalog: device and metric names interned to small numbers, and the changes a batch makes
//! to it (staged, then applied once the batch is durable).

use super::*;

/// Device records by number, and the numbers by name: every device that is live or removed with
/// its readings kept (so they can be read by name); a device whose readings are being erased keeps
/// its record (naming what is left) but not its name, which a new device may take.
#[derive(Default)]
pub(super) struct Catalog {
    pub(super) device_numbers: HashMap<String, u32>,
    pub(super) devices: BTreeMap<u32, DeviceRecord>,
    pub(super) metric_numbers: HashMap<String, u32>,
    pub(super) metric_names: Vec<String>,
    pub(super) next_offset: u64,
    /// The lowest number a new device may get (see `records::META_DEVICE_FLOOR`).
    pub(super) device_floor: u32,
}

impl Catalog {
    /// Copies the catalog into fresh allocations and frees the old ones. Its names and records
    /// were allocated one by one as devices came and commits changed them, each wherever the
    /// allocator had room at the time, among a load's short-lived buffers; there they keep the
    /// freed pages around them from going back to the system. Copied together once the load is
    /// over, they sit side by side (see [`crate::memory::packed`]).
    pub(super) fn repack(&mut self) {
        let packed = crate::memory::packed(|| Catalog {
            device_numbers: self
                .device_numbers
                .iter()
                .map(|(name, n)| (name.clone(), *n))
                .collect(),
            devices: self.devices.clone(),
            metric_numbers: self
                .metric_numbers
                .iter()
                .map(|(name, n)| (name.clone(), *n))
                .collect(),
            metric_names: self.metric_names.clone(),
            next_offset: self.next_offset,
            device_floor: self.device_floor,
        });
        *self = packed;
    }
}

/// What one batch changes in the catalog, kept aside until its commit has succeeded: a failed
/// commit then leaves the catalog as the disk has it, without copying the whole catalog for every
/// batch. Holds a copy of only the device records the batch touches.
pub(super) struct Staged<'c> {
    pub(super) base: &'c Catalog,
    /// Touched device records (copied from `base`) and new ones.
    pub(super) devices: BTreeMap<u32, DeviceRecord>,
    pub(super) new_devices: HashMap<String, u32>,
    /// New metric names, numbered on from `base.metric_names.len()`.
    pub(super) new_metrics: Vec<String>,
    pub(super) new_metric_numbers: HashMap<String, u32>,
    pub(super) next_offset: u64,
}

impl<'c> Staged<'c> {
    pub(super) fn new(base: &'c Catalog) -> Self {
        Staged {
            base,
            devices: BTreeMap::new(),
            new_devices: HashMap::new(),
            new_metrics: Vec::new(),
            new_metric_numbers: HashMap::new(),
            next_offset: base.next_offset,
        }
    }

    /// Whether device `name` is registered (and not removed), in the store or earlier in this
    /// batch.
    pub(super) fn knows(&self, name: &str) -> bool {
        if self.new_devices.contains_key(name) {
            return true;
        }
        self.base.device_numbers.get(name).is_some_and(|n| {
            self.devices
                .get(n)
                .or_else(|| self.base.devices.get(n))
                .is_some_and(|r| r.removed.is_none())
        })
    }

    /// The record of device `name`, registering a new device when it has none; with its number.
    pub(super) fn device(
        &mut self,
        name: &str,
        transport: Transport,
        seen_ms: u64,
    ) -> Result<(u32, &mut DeviceRecord), StoreError> {
        let known = self
            .base
            .device_numbers
            .get(name)
            .or_else(|| self.new_devices.get(name));
        let n = match known {
            Some(n) => *n,
            None => {
                let n = u32::try_from(self.new_devices.len())
                    .ok()
                    .and_then(|new| self.base.next_device_number().checked_add(new))
                    .ok_or_else(|| StoreError::Corrupt("device numbers exhausted".into()))?;
                self.new_devices.insert(name.to_owned(), n);
                n
            }
        };
        let base = self.base;
        let record = self
            .devices
            .entry(n)
            .or_insert_with(|| match base.devices.get(&n) {
                Some(record) if record.removed.is_none() => record.clone(),
                // A device removed with its readings kept, back: registered anew under its
                // number, knowing the metrics of its kept readings (retention's rollups need them).
                Some(removed) => DeviceRecord {
                    metrics: removed.metrics.clone(),
                    ..DeviceRecord::new(name, transport, seen_ms)
                },
                None => DeviceRecord::new(name, transport, seen_ms),
            });
        Ok((n, record))
    }

    /// The number of metric `name`, registering it (in `batch`) when new.
    pub(super) fn metric(&mut self, name: &str, batch: &mut WriteBatch) -> Result<u32, StoreError> {
        if let Some(n) = self
            .base
            .metric_numbers
            .get(name)
            .or_else(|| self.new_metric_numbers.get(name))
        {
            return Ok(*n);
        }
        let count = self.base.metric_names.len() + self.new_metrics.len();
        if count >= MAX_METRICS {
            return Err(StoreError::TooManyMetrics);
        }
        let n = count as u32;
        self.new_metric_numbers.insert(name.to_owned(), n);
        self.new_metrics.push(name.to_owned());
        batch.put(
            Table::Metrics,
            name.as_bytes().to_vec(),
            n.to_be_bytes().to_vec(),
        );
        Ok(n)
    }

    /// The changes, detached from the catalog they were made against.
    pub(super) fn into_changes(self) -> CatalogChanges {
        CatalogChanges {
            devices: self.devices,
            new_devices: self.new_devices,
            new_metrics: self.new_metrics,
            next_offset: self.next_offset,
        }
    }
}

/// A committed batch's changes, to apply to the catalog.
pub(super) struct CatalogChanges {
    pub(super) devices: BTreeMap<u32, DeviceRecord>,
    pub(super) new_devices: HashMap<String, u32>,
    pub(super) new_metrics: Vec<String>,
    pub(super) next_offset: u64,
}

impl CatalogChanges {
    pub(super) fn apply_to(self, catalog: &mut Catalog) {
        catalog.device_numbers.extend(self.new_devices);
        catalog.devices.extend(self.devices);
        for name in self.new_metrics {
            catalog
                .metric_numbers
                .insert(name.clone(), catalog.metric_names.len() as u32);
            catalog.metric_names.push(name);
        }
        catalog.next_offset = self.next_offset;
    }
}

impl DeviceRecord {
    /// The record of a device first seen at `seen_ms` over `transport`.
    pub(super) fn new(name: &str, transport: Transport, seen_ms: u64) -> Self {
        DeviceRecord {
            name: name.to_owned(),
            transport,
            first_seen_ms: seen_ms,
            last_seen_ms: seen_ms,
            last_seq: None,
            readings: 0,
            firmware: None,
            labels: BTreeMap::new(),
            metrics: Vec::new(),
            protocol_version: None,
            runs: sequence::Runs::default(),
            duplicates: 0,
            display_name: None,
            wire: records::Wire::Json,
            hello_boot: None,
            hub_seq: None,
            rejected: 0,
            gave_up: 0,
            removed: None,
        }
    }
}

impl Catalog {
    /// The number the next new device gets: past every record held and past the floor, so a
    /// number is never given twice (an erased device's record is gone, its number not).
    pub(super) fn next_device_number(&self) -> u32 {
        let past_records = self
            .devices
            .last_key_value()
            .map_or(0, |(n, _)| n.saturating_add(1));
        past_records.max(self.device_floor)
    }

    /// The number and record of device `name` if it is live (not removed).
    pub(super) fn live(&self, name: &str) -> Option<(u32, &DeviceRecord)> {
        let n = *self.device_numbers.get(name)?;
        self.devices
            .get(&n)
            .filter(|r| r.removed.is_none())
            .map(|r| (n, r))
    }

    /// A stored reading with its device and metric names.
    pub(super) fn resolve(&self, offset: u64, record: ReadingRecord) -> Reading {
        Reading {
            offset,
            device: self
                .devices
                .get(&record.device)
                .map(|d| d.name.clone())
                .unwrap_or_else(|| format!("#{}", record.device)),
            seq: record.numbering(),
            timestamp_ms: record.timestamp_ms,
            metrics: record
                .metrics
                .into_iter()
                .map(|(m, v)| (self.metric_name(m), v))
                .collect(),
        }
    }

    pub(super) fn metric_name(&self, number: u32) -> String {
        self.metric_names
            .get(number as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{number}"))
    }
}
