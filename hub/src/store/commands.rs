//! Commands in the store: their records, the forward-only state machine they follow, and the
//! writes that move them.
//!
//! Two parties change a command: the dispatcher (delivered, timed out) and the store writer (the
//! device's result, in the same durable batch as the message that carried it). Both go through
//! [`Transition::apply`] under the store's writer lock, so they cannot overwrite each other, and a
//! state only moves forward: pending, delivered, then succeeded, failed or timed out. A result
//! that arrives before the delivery was recorded still counts; one that arrives after a final
//! state is ignored.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use super::engine::{Direction, KeyRange, Snapshot, Table, WriteBatch};
use super::records::{self, CommandRecord, CommandState, Transport};
use super::{Store, StoreError, scan_records};

/// Deleted at most per transaction when old commands are pruned.
const MAX_PRUNE_PER_COMMIT: usize = 4096;
/// Stored commands examined at most by one [`Store::device_commands`] call: the default of
/// `commands.keep`, so that with the default settings one call sees every stored command, and a
/// hub that keeps more still answers each page in bounded time.
pub const MAX_COMMANDS_SCANNED: usize = 10_000;

/// One page of one device's commands, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandPage {
    /// The commands with their ids, newest (highest id) first.
    pub commands: Vec<(u64, CommandRecord)>,
    /// Where the next, older page starts (commands numbered below it); `None` when none is left.
    pub next_before: Option<u64>,
}

/// A device's answer to a command, on its way in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResultIn {
    /// The device that answered (already validated).
    pub device: String,
    /// Transport it came over.
    pub transport: Transport,
    /// The command id it answers.
    pub id: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// Result data: JSON text.
    pub result: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// A binary device's error code.
    pub error_code: Option<u16>,
    /// When the hub received it.
    pub received_ms: u64,
}

/// A change to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Handed to the device's transport.
    Delivered {
        /// When.
        at_ms: u64,
    },
    /// Gave up: not delivered within its TTL, or no answer within its timeout.
    TimedOut {
        /// When.
        at_ms: u64,
        /// Which of the two.
        reason: String,
    },
    /// The device answered.
    Answered {
        /// Whether it succeeded.
        ok: bool,
        /// Result data: JSON text.
        result: Option<String>,
        /// Why it failed.
        error: Option<String>,
        /// A binary device's error code.
        error_code: Option<u16>,
        /// When.
        at_ms: u64,
    },
}

impl Transition {
    /// Applies the change if the command's state allows it; whether it changed anything.
    pub fn apply(&self, record: &mut CommandRecord) -> bool {
        if record.state.is_final() {
            return false;
        }
        match self {
            Transition::Delivered { at_ms } => {
                if record.state != CommandState::Pending {
                    return false;
                }
                record.state = CommandState::Delivered;
                record.delivered_ms = Some(*at_ms);
            }
            Transition::TimedOut { at_ms, reason } => {
                record.state = CommandState::TimedOut;
                record.finished_ms = Some(*at_ms);
                record.error = Some(reason.clone());
            }
            Transition::Answered {
                ok,
                result,
                error,
                error_code,
                at_ms,
            } => {
                record.state = if *ok {
                    CommandState::Succeeded
                } else {
                    CommandState::Failed
                };
                record.delivered_ms.get_or_insert(*at_ms);
                record.finished_ms = Some(*at_ms);
                record.result = result.clone();
                record.error = error.clone();
                record.error_code = *error_code;
            }
        }
        true
    }
}

fn command_at(snap: &dyn Snapshot, id: u64) -> Result<Option<CommandRecord>, StoreError> {
    match snap.get(Table::Commands, &records::command_key(id))? {
        Some(bytes) => Ok(Some(records::decode(&bytes, "command")?)),
        None => Ok(None),
    }
}

/// The commands one writer batch changes, kept until the batch is written.
#[derive(Default)]
pub(super) struct Changes {
    changed: BTreeMap<u64, CommandRecord>,
}

impl Changes {
    /// Applies a device's result; the command's new state if it changed.
    pub(super) fn apply_result(
        &mut self,
        snap: &dyn Snapshot,
        answer: &CommandResultIn,
    ) -> Result<Option<CommandState>, StoreError> {
        let mut record = match self.changed.get(&answer.id) {
            Some(record) => record.clone(),
            None => match command_at(snap, answer.id)? {
                Some(record) => record,
                None => return Ok(None),
            },
        };
        // A device may only answer its own commands.
        if record.device != answer.device {
            return Ok(None);
        }
        let transition = Transition::Answered {
            ok: answer.ok,
            result: answer.result.clone(),
            error: answer.error.clone(),
            error_code: answer.error_code,
            at_ms: answer.received_ms,
        };
        if !transition.apply(&mut record) {
            return Ok(None);
        }
        let state = record.state;
        self.changed.insert(answer.id, record);
        Ok(Some(state))
    }

    /// Adds the changed records to `batch`.
    pub(super) fn write_to(&self, batch: &mut WriteBatch) -> Result<(), StoreError> {
        for (id, record) in &self.changed {
            batch.put(
                Table::Commands,
                records::command_key(*id),
                records::encode(record)?,
            );
        }
        Ok(())
    }
}

impl Store {
    /// Stores a new command durably and returns its id (ids only grow, from 1).
    pub fn create_command(&self, record: &CommandRecord) -> Result<u64, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let snap = self.engine.snapshot()?;
        let id = match snap.get(Table::Meta, records::META_NEXT_COMMAND)? {
            Some(v) => records::be_u64(&v, "next command id")?,
            None => 1,
        };
        drop(snap);
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Commands,
            records::command_key(id),
            records::encode(record)?,
        );
        batch.put(
            Table::Meta,
            records::META_NEXT_COMMAND.to_vec(),
            (id + 1).to_be_bytes().to_vec(),
        );
        self.engine.commit(&batch)?;
        Ok(id)
    }

    /// One command, if stored.
    pub fn command(&self, id: u64) -> Result<Option<CommandRecord>, StoreError> {
        command_at(&*self.engine.snapshot()?, id)
    }

    /// Applies `transition` durably; the updated record when it changed anything.
    pub fn advance_command(
        &self,
        id: u64,
        transition: &Transition,
    ) -> Result<Option<CommandRecord>, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let Some(mut record) = command_at(&*self.engine.snapshot()?, id)? else {
            return Ok(None);
        };
        if !transition.apply(&mut record) {
            return Ok(None);
        }
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Commands,
            records::command_key(id),
            records::encode(&record)?,
        );
        self.engine.commit(&batch)?;
        Ok(Some(record))
    }

    /// The commands of `device` numbered below `before` (all when `None`), newest first, at most
    /// `limit`. Commands are numbered across devices, so the page is found by walking down the
    /// numbers; at most [`MAX_COMMANDS_SCANNED`] are looked at per call, and a page cut short by
    /// that bound still says where to go on.
    pub fn device_commands(
        &self,
        device: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<CommandPage, StoreError> {
        self.device_commands_within(device, before, limit, MAX_COMMANDS_SCANNED)
    }

    fn device_commands_within(
        &self,
        device: &str,
        before: Option<u64>,
        limit: usize,
        budget: usize,
    ) -> Result<CommandPage, StoreError> {
        let snap = self.engine.snapshot()?;
        let range = KeyRange {
            start: Bound::Unbounded,
            end: before.map_or(Bound::Unbounded, |b| {
                Bound::Excluded(records::command_key(b))
            }),
        };
        let mut page = CommandPage::default();
        let mut scanned = 0;
        let mut failure = None;
        snap.scan(Table::Commands, &range, Direction::Reverse, &mut |k, v| {
            let parsed = records::be_u64(k, "command id")
                .and_then(|id| Ok((id, records::decode::<CommandRecord>(v, "command")?)));
            let (id, record) = match parsed {
                Ok(parsed) => parsed,
                Err(e) => {
                    failure = Some(e);
                    return ControlFlow::Break(());
                }
            };
            scanned += 1;
            if record.device == device {
                // One more than asked for: the page ends at the one before it, and a next page is
                // promised only when there is something on it.
                if page.commands.len() == limit {
                    page.next_before = page.commands.last().map(|(id, _)| *id);
                    return ControlFlow::Break(());
                }
                page.commands.push((id, record));
            }
            if scanned >= budget {
                page.next_before = Some(id);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        failure.map_or(Ok(page), Err)
    }

    /// Every command not yet in a final state, oldest first.
    pub fn open_commands(&self) -> Result<Vec<(u64, CommandRecord)>, StoreError> {
        let snap = self.engine.snapshot()?;
        let mut open = Vec::new();
        let mut bad_key = false;
        scan_records(
            &*snap,
            Table::Commands,
            &KeyRange::all(),
            "command",
            |k, record: CommandRecord| {
                let Ok(id) = records::be_u64(k, "command id") else {
                    bad_key = true;
                    return ControlFlow::Break(());
                };
                if !record.state.is_final() {
                    open.push((id, record));
                }
                ControlFlow::Continue(())
            },
        )?;
        if bad_key {
            return Err(StoreError::Corrupt("command key".into()));
        }
        Ok(open)
    }

    /// Deletes the oldest commands so that at most `keep` remain (at most a few thousand per
    /// call, so one call never holds a long transaction); how many it deleted.
    pub fn prune_commands(&self, keep: u64) -> Result<usize, StoreError> {
        let _writer = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let snap = self.engine.snapshot()?;
        let next = match snap.get(Table::Meta, records::META_NEXT_COMMAND)? {
            Some(v) => records::be_u64(&v, "next command id")?,
            None => return Ok(0),
        };
        let Some(below) = next.checked_sub(keep) else {
            return Ok(0);
        };
        let range = KeyRange {
            start: Bound::Unbounded,
            end: Bound::Excluded(records::command_key(below)),
        };
        let mut batch = WriteBatch::new();
        let mut deleted = 0;
        snap.scan(Table::Commands, &range, Direction::Forward, &mut |k, _| {
            batch.delete(Table::Commands, k.to_vec());
            deleted += 1;
            if deleted >= MAX_PRUNE_PER_COMMIT {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        drop(snap);
        if deleted > 0 {
            self.engine.commit(&batch)?;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryEngine;
    use std::sync::Arc;

    fn command(device: &str) -> CommandRecord {
        CommandRecord {
            device: device.into(),
            name: "echo".into(),
            args: "{}".into(),
            requested_by: "admin".into(),
            state: CommandState::Pending,
            created_ms: 1,
            expires_ms: 100,
            result_timeout_ms: 10,
            delivered_ms: None,
            finished_ms: None,
            result: None,
            error: None,
            error_code: None,
        }
    }

    fn answered(ok: bool) -> Transition {
        Transition::Answered {
            ok,
            result: ok.then(|| "{\"x\":1}".into()),
            error: (!ok).then(|| "no".into()),
            error_code: None,
            at_ms: 5,
        }
    }

    #[test]
    fn states_only_move_forward() {
        let delivered = Transition::Delivered { at_ms: 2 };
        let timed_out = Transition::TimedOut {
            at_ms: 9,
            reason: "no answer".into(),
        };
        let mut c = command("d");
        assert!(delivered.apply(&mut c));
        assert!(!delivered.apply(&mut c), "delivered once");
        assert!(answered(true).apply(&mut c));
        assert_eq!(c.state, CommandState::Succeeded);
        assert!(!timed_out.apply(&mut c), "a final state stays");
        assert!(!answered(false).apply(&mut c));
        assert_eq!(c.result.as_deref(), Some("{\"x\":1}"));

        // A result before the delivery was recorded still counts, and dates the delivery.
        let mut c = command("d");
        assert!(answered(false).apply(&mut c));
        assert_eq!(
            (c.state, c.delivered_ms, c.error.as_deref()),
            (CommandState::Failed, Some(5), Some("no"))
        );
        assert!(!delivered.apply(&mut c));

        let mut c = command("d");
        assert!(timed_out.apply(&mut c));
        assert_eq!(c.state, CommandState::TimedOut);
        assert!(!answered(true).apply(&mut c), "a late answer is ignored");
    }

    #[test]
    fn commands_are_numbered_advanced_listed_and_pruned() {
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let ids: Vec<u64> = (0..5)
            .map(|_| store.create_command(&command("d")).unwrap())
            .collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        let t = Transition::Delivered { at_ms: 3 };
        assert!(store.advance_command(2, &t).unwrap().is_some());
        assert!(store.advance_command(2, &t).unwrap().is_none());
        assert!(store.advance_command(99, &t).unwrap().is_none());
        store.advance_command(3, &answered(true)).unwrap().unwrap();
        let open: Vec<u64> = store
            .open_commands()
            .unwrap()
            .iter()
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(open, vec![1, 2, 4, 5]);
        assert_eq!(store.prune_commands(2).unwrap(), 3);
        assert!(store.command(3).unwrap().is_none());
        assert_eq!(
            store.command(4).unwrap().unwrap().state,
            CommandState::Pending
        );
        assert_eq!(store.create_command(&command("d")).unwrap(), 6);
    }

    #[test]
    fn a_devices_commands_are_paged_newest_first_within_the_scan_bound() {
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        // Ids 1..=12: a, b, a, b, ... (a has the odd ids).
        for i in 0..12 {
            store
                .create_command(&command(if i % 2 == 0 { "a" } else { "b" }))
                .unwrap();
        }
        let ids = |page: &CommandPage| page.commands.iter().map(|(id, _)| *id).collect::<Vec<_>>();
        let first = store.device_commands("a", None, 4).unwrap();
        assert_eq!(ids(&first), vec![11, 9, 7, 5]);
        assert!(first.commands.iter().all(|(_, r)| r.device == "a"));
        assert_eq!(first.next_before, Some(5));
        let last = store.device_commands("a", first.next_before, 4).unwrap();
        assert_eq!((ids(&last), last.next_before), (vec![3, 1], None));
        // A page that ends exactly at the oldest command promises no next page.
        let exact = store.device_commands("b", Some(5), 2).unwrap();
        assert_eq!((ids(&exact), exact.next_before), (vec![4, 2], None));
        assert_eq!(
            store.device_commands("nobody", None, 4).unwrap(),
            CommandPage::default()
        );

        // The scan bound cuts a page short but says where to go on; following it finds the rest.
        let cut = store.device_commands_within("a", None, 4, 3).unwrap();
        assert_eq!((ids(&cut), cut.next_before), (vec![11], Some(10)));
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store.device_commands_within("a", before, 4, 3).unwrap();
            seen.extend(ids(&page));
            match page.next_before {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        assert_eq!(seen, vec![11, 9, 7, 5, 3, 1]);
    }

    #[test]
    fn a_device_answers_only_its_own_commands_in_the_writer_batch() {
        let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
        let id = store.create_command(&command("a")).unwrap();
        let answer = |device: &str, ok| {
            crate::store::Ingest::CommandResult(CommandResultIn {
                device: device.into(),
                transport: Transport::Mqtt,
                id,
                ok,
                result: None,
                error: (!ok).then(|| "e".into()),
                error_code: None,
                received_ms: 7,
            })
        };
        // Register both devices first.
        for d in ["a", "b"] {
            store
                .apply(&[crate::store::Ingest::Status(crate::store::DeviceStatus {
                    device: d.into(),
                    transport: Transport::Mqtt,
                    online: true,
                    reason: "announced",
                    received_ms: 1,
                })])
                .unwrap();
        }
        let applied = store
            .apply(&[answer("b", true), answer("a", false), answer("a", true)])
            .unwrap();
        let states: Vec<_> = applied.iter().map(|a| a.outcome).collect();
        assert_eq!(
            states,
            vec![
                crate::store::Outcome::CommandResult { id, state: None },
                crate::store::Outcome::CommandResult {
                    id,
                    state: Some(CommandState::Failed)
                },
                crate::store::Outcome::CommandResult { id, state: None },
            ]
        );
        assert_eq!(
            store.command(id).unwrap().unwrap().state,
            CommandState::Failed
        );
    }
}
