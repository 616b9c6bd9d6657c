//! Reads and changes of devices: the list, one device, its latest values, its labels.

use super::*;

impl Store {
    /// Devices ordered by id, starting after `after`, at most `limit`.
    pub fn devices(&self, after: Option<&str>, limit: usize) -> Result<Vec<Device>, StoreError> {
        let cat = self.catalog()?;
        let mut names: Vec<&String> = cat
            .device_numbers
            .keys()
            .filter(|name| after.is_none_or(|a| name.as_str() > a))
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .take(limit)
            .filter_map(|name| cat.device_numbers.get(name))
            .filter_map(|n| cat.devices.get(n))
            .map(|record| Device {
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
            let Some(number) = cat.device_numbers.get(id).copied() else {
                return Ok(None);
            };
            let Some(record) = cat.devices.get(&number).cloned() else {
                return Ok(None);
            };
            (number, record)
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
        self.device(id)
    }

    /// Every device's id and when it was last heard from; no copies of the records, for start-up.
    pub fn last_seen(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .catalog()?
            .devices
            .values()
            .map(|r| (r.name.clone(), r.last_seen_ms))
            .collect())
    }

    /// A device's labels; `None` for an unknown device. No copy of the rest of its record.
    pub fn device_labels(
        &self,
        id: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, StoreError> {
        let cat = self.catalog()?;
        Ok(cat
            .device_numbers
            .get(id)
            .and_then(|n| cat.devices.get(n))
            .map(|record| record.labels.clone()))
    }

    /// How many devices the store knows.
    pub fn device_count(&self) -> Result<usize, StoreError> {
        Ok(self.catalog()?.devices.len())
    }

    /// One device, if known.
    pub fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        let cat = self.catalog()?;
        Ok(cat
            .device_numbers
            .get(id)
            .and_then(|n| cat.devices.get(n))
            .map(|record| Device {
                metric_names: record.metrics.iter().map(|m| cat.metric_name(*m)).collect(),
                record: record.clone(),
            }))
    }

    /// The latest value of each metric of a device, by metric name; `None` for an unknown device.
    pub fn latest(&self, id: &str) -> Result<Option<Vec<LatestValue>>, StoreError> {
        let (device, names) = {
            let cat = self.catalog()?;
            let Some(device) = cat.device_numbers.get(id).copied() else {
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
