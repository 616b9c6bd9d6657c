//! Reads and changes of devices: the list, one device, its latest values, its labels. A removed
//! device (see `removal`) is none of these: only its kept readings can still be read.

use super::*;

impl Store {
    /// Devices ordered by id, starting after `after`, at most `limit`.
    pub fn devices(&self, after: Option<&str>, limit: usize) -> Result<Vec<Device>, StoreError> {
        let cat = self.catalog()?;
        let mut names: Vec<&String> = cat
            .device_numbers
            .keys()
            .filter(|name| after.is_none_or(|a| name.as_str() > a))
            .filter(|name| cat.live(name).is_some())
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .take(limit)
            .filter_map(|name| cat.live(name))
            .map(|(_, record)| Device {
                metric_names: record.metrics.iter().map(|m| cat.metric_name(*m)).collect(),
                record: record.clone(),
            })
            .collect())
    }

    /// Sets a device's labels and display name (what `patch` gives); the device after the change,
    /// or `None` for an unknown device.
    pub fn update_device(
        &self,
        id: &str,
        patch: &DevicePatch,
    ) -> Result<Option<Device>, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let (number, mut record) = {
            let cat = self.catalog()?;
            let Some((number, record)) = cat.live(id) else {
                return Ok(None);
            };
            (number, record.clone())
        };
        if let Some(labels) = &patch.labels {
            record.labels = labels.clone();
        }
        if let Some(name) = &patch.display_name {
            record.display_name = name.clone();
        }
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Devices,
            number.to_be_bytes().to_vec(),
            records::encode_device(&record)?,
        );
        self.engine.commit(&batch)?;
        let mut cat = self.catalog.write().map_err(|_| StoreError::Poisoned)?;
        cat.devices.insert(number, record);
        drop(cat);
        if patch.labels.is_some() {
            self.labels_version.fetch_add(1, Ordering::Relaxed);
        }
        self.device(id)
    }

    /// A number that changes whenever a device's labels change, so that what selects devices by
    /// label (the rules) can tell, cheaply, when to look again.
    pub fn labels_version(&self) -> u64 {
        self.labels_version.load(Ordering::Relaxed)
    }

    /// Every device's id and when it was last heard from; no copies of the records, for start-up.
    pub fn last_seen(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .catalog()?
            .devices
            .values()
            .filter(|r| r.removed.is_none())
            .map(|r| (r.name.clone(), r.last_seen_ms))
            .collect())
    }

    /// A device's labels; `None` for an unknown device. No copy of the rest of its record.
    pub fn device_labels(
        &self,
        id: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, StoreError> {
        let cat = self.catalog()?;
        Ok(cat.live(id).map(|(_, record)| record.labels.clone()))
    }

    /// How many devices the store knows (removed ones not counted).
    pub fn device_count(&self) -> Result<usize, StoreError> {
        let cat = self.catalog()?;
        Ok(cat.devices.values().filter(|r| r.removed.is_none()).count())
    }

    /// One device, if known (and not removed).
    pub fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        let cat = self.catalog()?;
        Ok(cat.live(id).map(|(_, record)| Device {
            metric_names: record.metrics.iter().map(|m| cat.metric_name(*m)).collect(),
            record: record.clone(),
        }))
    }

    /// The latest value of each metric of a device, by metric name; `None` for an unknown (or
    /// removed) device.
    pub fn latest(&self, id: &str) -> Result<Option<Vec<LatestValue>>, StoreError> {
        let (device, names) = {
            let cat = self.catalog()?;
            let Some((device, _)) = cat.live(id) else {
                return Ok(None);
            };
            (device, cat.metric_names.clone())
        };
        let snap = self.engine.snapshot()?;
        let mut values = Vec::new();
        let mut failure = None;
        let prefix = device.to_be_bytes();
        snap.scan(
            Table::Latest,
            &KeyRange::prefix(&prefix),
            Direction::Forward,
            &mut |k, v| {
                let metric = k
                    .get(4..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes);
                match (metric, records::decode::<LatestRecord>(v, "latest value")) {
                    (Some(metric), Ok(record)) => {
                        values.push(LatestValue {
                            metric: names.get(metric as usize).cloned().unwrap_or_default(),
                            timestamp_ms: record.timestamp_ms,
                            offset: record.offset,
                            value: record.value,
                        });
                        ControlFlow::Continue(())
                    }
                    (_, Err(e)) => {
                        failure = Some(e);
                        ControlFlow::Break(())
                    }
                    (None, _) => {
                        failure = Some(StoreError::Corrupt("latest key".into()));
                        ControlFlow::Break(())
                    }
                }
            },
        )?;
        if let Some(e) = failure {
            return Err(e);
        }
        values.sort_by(|a, b| a.metric.cmp(&b.metric));
        Ok(Some(values))
    }
}
