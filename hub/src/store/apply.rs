//! Applying a batch of ingest items in one durable commit: duplicate detection per (device, boot,
//! seq), interning, readings, latest values, rollups, device records and command results.

use super::*;

/// How [`Store::apply_as`] commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Commit {
    /// Durably: to the log as items when there is one, else to the engine.
    Live,
    /// Replaying a logged record at open: laid over the engine in memory only.
    Replay,
}

/// What became of one item of a batch, until its run's ack is read after the commit.
pub(super) struct ItemOutcome {
    /// The device's number (0 for items without a run).
    device: u32,
    outcome: Outcome,
    /// The boot of the run to ack, for a numbered reading.
    run: Option<Option<u32>>,
    new_device: bool,
    given_up: u64,
}

impl ItemOutcome {
    /// An item that is not a numbered reading.
    pub(super) fn plain(outcome: Outcome, new_device: bool) -> Self {
        ItemOutcome {
            device: 0,
            outcome,
            run: None,
            new_device,
            given_up: 0,
        }
    }
}

/// The boot a reading counts in: its own, or for a binary device, the boot of its last `Hello`.
pub(super) fn effective_boot(record: &DeviceRecord, boot: Option<u32>, wire: Wire) -> Option<u32> {
    match wire {
        Wire::Binary => boot.or(record.hello_boot),
        Wire::Json => boot,
    }
}

/// Settles `seq` of `boot` in `record`'s runs, counting what it says.
pub(super) fn take_seq(record: &mut DeviceRecord, boot: Option<u32>, seq: u32) -> sequence::Taken {
    let taken = record.runs.take(boot, seq);
    record.gave_up += taken.given_up;
    if taken.verdict == sequence::Verdict::Duplicate {
        record.duplicates += 1;
    }
    if taken.far_behind {
        tracing::warn!(device = %record.name, seq, boot, "seq far below what this device already sent in this boot, taken as a duplicate; if its counter restarted, its readings are being dropped (a device must keep seq across restarts, or send a new boot)");
    }
    taken
}

impl Store {
    /// Stores readings only; see [`Store::apply`].
    pub fn append(&self, readings: &[NewReading]) -> Result<Vec<Applied>, StoreError> {
        let items: Vec<Ingest> = readings.iter().cloned().map(Ingest::Reading).collect();
        self.apply(&items)
    }

    /// Applies `items` in one durable transaction and returns what became of each, in order.
    /// Blocks until the batch is on disk. Retransmitted readings (same device, boot and seq) are
    /// recognised and not stored again (see [`sequence`]).
    pub fn apply(&self, items: &[Ingest]) -> Result<Vec<Applied>, StoreError> {
        self.apply_as(items, self.refusing.load(Ordering::Relaxed), Commit::Live)
    }

    /// Applies `items` as [`Store::apply`] does, new readings refused or not as `refusing` says
    /// (read once, so a replay meets the same answer), committed as `commit` says.
    pub(super) fn apply_as(
        &self,
        items: &[Ingest],
        refusing: bool,
        commit: Commit,
    ) -> Result<Vec<Applied>, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        // Logged as items, the batch must be computed from the state the record follows in the
        // log: the log's turn is held from the snapshot below to the commit.
        let log = self.engine.as_logged();
        let mut turn = match (log, commit) {
            (Some(log), Commit::Live) => Some(log.turn()?),
            _ => None,
        };
        let base = self.catalog()?;
        let mut staged = Staged::new(&base);
        let mut batch = WriteBatch::new();
        let mut latest: BTreeMap<(u32, u32), LatestRecord> = BTreeMap::new();
        let mut outcomes: Vec<ItemOutcome> = Vec::with_capacity(items.len());
        let mut commands = commands::Changes::default();
        let mut rollups = rollup::BatchRollups::default();
        let snap = self.engine.snapshot()?;

        for item in items {
            let new_device = !staged.knows(item.device());
            let (transport, wire, received_ms) = match item {
                Ingest::Reading(r) => (r.transport, r.wire, r.received_ms),
                Ingest::Rejected(r) => (r.transport, r.wire, r.received_ms),
                Ingest::Hello(h) => (h.transport, records::Wire::Binary, h.received_ms),
                Ingest::CommandResult(c) => {
                    // Only a known device's answer counts; it is also a sign of life.
                    let state = if new_device {
                        None
                    } else {
                        let (_, record) = staged.device(&c.device, c.transport, c.received_ms)?;
                        record.last_seen_ms = record.last_seen_ms.max(c.received_ms);
                        commands.apply_result(&*snap, c)?
                    };
                    outcomes.push(ItemOutcome::plain(
                        Outcome::CommandResult { id: c.id, state },
                        false,
                    ));
                    continue;
                }
                Ingest::Status(s) => {
                    // Going offline says nothing new about a device the store does not know.
                    if s.online {
                        let (_, record) = staged.device(&s.device, s.transport, s.received_ms)?;
                        record.last_seen_ms = record.last_seen_ms.max(s.received_ms);
                        outcomes.push(ItemOutcome::plain(Outcome::Status, new_device));
                    } else {
                        outcomes.push(ItemOutcome::plain(Outcome::Status, false));
                    }
                    continue;
                }
            };
            if matches!(item, Ingest::Reading(_)) && refusing {
                // Full under `reject_new`: not stored and not acknowledged, so the device keeps it.
                outcomes.push(ItemOutcome::plain(Outcome::Refused, false));
                continue;
            }
            let name = item.device();
            let (device, record) = staged.device(name, transport, received_ms)?;
            record.last_seen_ms = record.last_seen_ms.max(received_ms);
            record.transport = transport;
            record.wire = wire;
            let reading = match item {
                Ingest::Hello(hello) => {
                    record.firmware = Some(hello.firmware.clone());
                    record.protocol_version = Some(hello.protocol_version);
                    record.hello_boot = hello.boot;
                    outcomes.push(ItemOutcome::plain(Outcome::Registered, new_device));
                    continue;
                }
                Ingest::Rejected(rejected) => {
                    let boot = effective_boot(record, rejected.boot, rejected.wire);
                    let taken = take_seq(record, boot, rejected.seq);
                    if taken.verdict == sequence::Verdict::New {
                        record.rejected += 1;
                    }
                    outcomes.push(ItemOutcome {
                        device,
                        outcome: Outcome::Rejected { seq: rejected.seq },
                        run: Some(boot),
                        new_device,
                        given_up: taken.given_up,
                    });
                    continue;
                }
                Ingest::Reading(reading) => reading,
                Ingest::CommandResult(_) | Ingest::Status(_) => continue,
            };
            let mut given_up = 0;
            let boot = effective_boot(record, reading.boot, reading.wire);
            let numbering = match reading.seq {
                Some(seq) => {
                    let taken = take_seq(record, boot, seq);
                    if taken.verdict == sequence::Verdict::Duplicate {
                        outcomes.push(ItemOutcome {
                            device,
                            outcome: Outcome::Duplicate { seq },
                            run: Some(boot),
                            new_device: false,
                            given_up: 0,
                        });
                        continue;
                    }
                    given_up = taken.given_up;
                    // The highest seq of the latest run: a late one of the run before is not.
                    if taken.new_run || record.last_seq.is_none() {
                        record.last_seq = Some(seq);
                    } else if record.runs.current_boot() == boot {
                        record.last_seq = record.last_seq.map(|last| last.max(seq));
                    }
                    ReadingSeq::Device { boot, seq }
                }
                None => {
                    // A numbering of the hub's own, never mixed with the device's seqs.
                    let n = record.hub_seq.map_or(0, |s| s.wrapping_add(1));
                    record.hub_seq = Some(n);
                    ReadingSeq::Hub(n)
                }
            };
            record.readings += 1;
            let mut metrics = Vec::with_capacity(reading.metrics.len());
            for (name, value) in &reading.metrics {
                let metric = staged.metric(name, &mut batch)?;
                metrics.push((metric, value.clone()));
            }
            let Some(record) = staged.devices.get_mut(&device) else {
                return Err(StoreError::Corrupt("device vanished from catalog".into()));
            };
            for (metric, _) in &metrics {
                if !record.metrics.contains(metric) {
                    record.metrics.push(*metric);
                }
            }
            let offset = staged.next_offset;
            staged.next_offset += 1;

            let timestamp_ms = reading.timestamp_ms.unwrap_or(reading.received_ms);
            for (metric, value) in rollup::first_values(&metrics) {
                rollups.add(device, metric, timestamp_ms, offset, value);
            }
            for (metric, value) in &metrics {
                let newer = match latest.get(&(device, *metric)) {
                    Some(current) => timestamp_ms >= current.timestamp_ms,
                    None => match snap.get(Table::Latest, &records::latest_key(device, *metric))? {
                        Some(bytes) => {
                            let current: LatestRecord = records::decode(&bytes, "latest value")?;
                            timestamp_ms >= current.timestamp_ms
                        }
                        None => true,
                    },
                };
                if newer {
                    latest.insert(
                        (device, *metric),
                        LatestRecord {
                            timestamp_ms,
                            offset,
                            value: value.clone(),
                        },
                    );
                }
            }
            let (seq, origin) = records::SeqOrigin::of(numbering);
            let record = ReadingRecord {
                device,
                seq,
                timestamp_ms,
                metrics,
                origin,
            };
            batch.put(
                Table::Readings,
                records::reading_key(offset),
                records::encode(&record)?,
            );
            batch.put(
                Table::DeviceTime,
                records::device_time_key(device, timestamp_ms, offset),
                vec![],
            );
            outcomes.push(ItemOutcome {
                device,
                outcome: Outcome::Stored {
                    offset,
                    seq: numbering,
                },
                run: reading.seq.map(|_| boot),
                new_device,
                given_up,
            });
        }
        rollups.write_to(&*snap, &mut batch)?;
        drop(snap);
        for ((device, metric), record) in &latest {
            batch.put(
                Table::Latest,
                records::latest_key(*device, *metric),
                records::encode(record)?,
            );
        }
        for (device, record) in &staged.devices {
            batch.put(
                Table::Devices,
                device.to_be_bytes().to_vec(),
                records::encode_device(record)?,
            );
        }

        commands.write_to(&mut batch)?;
        batch.put(
            Table::Meta,
            records::META_NEXT_OFFSET.to_vec(),
            staged.next_offset.to_be_bytes().to_vec(),
        );
        match (commit, log, turn.as_mut()) {
            (Commit::Live, Some(log), Some(turn)) => {
                log.commit_items(turn, &log_items::encode(items, refusing)?, &batch)?
            }
            (Commit::Replay, Some(log), _) => log.replay(&batch)?,
            (Commit::Replay, None, _) => {
                return Err(StoreError::Corrupt("a replay without a log".into()));
            }
            _ => self.engine.commit(&batch)?,
        }
        drop(turn);
        // Acks are cumulative: every numbered item gets its run's ack after the whole batch.
        let mut acks: HashMap<(u32, Option<u32>), Option<RunAck>> = HashMap::new();
        let applied = outcomes
            .into_iter()
            .map(|item| {
                let ack = item.run.and_then(|boot| {
                    acks.entry((item.device, boot))
                        .or_insert_with(|| {
                            staged
                                .devices
                                .get(&item.device)
                                .and_then(|r| r.runs.ack(boot))
                        })
                        .clone()
                });
                Applied {
                    outcome: item.outcome,
                    ack,
                    new_device: item.new_device,
                    given_up: item.given_up,
                }
            })
            .collect();
        let changes = staged.into_changes();
        drop(base);
        changes.apply_to(&mut *self.catalog.write().map_err(|_| StoreError::Poisoned)?);
        Ok(applied)
    }
}
