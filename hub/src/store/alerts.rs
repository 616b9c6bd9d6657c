//! The store's side of rules and alerts: rules added through the API, the state of each alert,
//! the history of alert transitions, the webhook outbox, and how far the rules have evaluated
//! the readings.
//!
//! The store knows none of the rules' meaning: a rule is kept as its definition (JSON text), an
//! alert as plain fields. Keys:
//! - `Rules`:        rule name
//! - `Alerts`:       rule name, 0x00, device id
//! - `AlertHistory`: event number u64 BE (only grows)
//! - `Outbox`:       entry number u64 BE (only grows)
//! - `Meta`, `rules_next_offset`: the offset of the next reading the rules have not evaluated
//!
//! Invariants: a round of transitions (new alert states, their history events, their outbox
//! entries, and the offset of the readings evaluated so far) is committed in one batch, so after
//! a crash either all of a transition is known or none of it, and the readings past the offset
//! changed nothing durable; history and outbox are bounded ([`MAX_ALERT_HISTORY`], [`MAX_OUTBOX`]), the oldest
//! going first; new tables are created at open, no schema change.

use std::ops::{Bound, ControlFlow};

use serde::{Deserialize, Serialize};

use super::readings::scan_records;
use super::records;
use super::{Direction, KeyRange, Store, StoreError, Table, WriteBatch};

/// Alert transitions kept for the history; the oldest are deleted past this.
pub const MAX_ALERT_HISTORY: u64 = 10_000;
/// Webhook notifications waiting for their receivers; past this the oldest are dropped (counted
/// and logged by the caller).
pub const MAX_OUTBOX: u64 = 10_000;

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertState {
    /// The condition holds, not yet for its `for` duration (or held back by the minimum interval).
    Pending,
    /// Notified as firing.
    Firing,
    /// Notified as resolved.
    Resolved,
}

impl AlertState {
    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// The state of one alert: one rule for one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// The rule's name.
    pub rule: String,
    /// The device.
    pub device: String,
    /// Where it is.
    pub state: AlertState,
    /// Since when it is in that state (hub clock, unix ms).
    pub since_ms: u64,
    /// Transitions notified so far (firing and resolved each count one): the last one's number.
    pub transition: u64,
    /// When it last fired (for the rule's minimum interval).
    pub fired_ms: Option<u64>,
    /// The value that moved it last, if it had one.
    pub value: Option<f64>,
}

/// One notified transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// The rule's name.
    pub rule: String,
    /// The device.
    pub device: String,
    /// `Firing` or `Resolved`.
    pub state: AlertState,
    /// Its number for this alert (1, 2, ...).
    pub transition: u64,
    /// When (hub clock, unix ms).
    pub at_ms: u64,
    /// The value that moved it, if any.
    pub value: Option<f64>,
}

/// A webhook notification waiting for its receiver to answer 2xx.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Where it is POSTed.
    pub url: String,
    /// Its `Idempotency-Key`.
    pub key: String,
    /// The JSON body.
    pub body: String,
    /// Tries so far.
    pub attempts: u32,
    /// Not to be tried before this (hub clock, unix ms).
    pub next_ms: u64,
}

/// What a round of transitions changes.
#[derive(Debug, Default)]
pub struct AlertChanges {
    /// Alert states written as they are.
    pub states: Vec<AlertRecord>,
    /// Alerts forgotten (rule, device): their rule is gone, or they went back to rest.
    pub forgotten: Vec<(String, String)>,
    /// Transitions for the history.
    pub events: Vec<AlertEvent>,
    /// Webhook notifications to queue.
    pub outbox: Vec<OutboxEntry>,
    /// Every reading below this offset has been evaluated (saved when given).
    pub next_offset: Option<u64>,
}

fn alert_key(rule: &str, device: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(rule.len() + device.len() + 1);
    key.extend_from_slice(rule.as_bytes());
    key.push(0);
    key.extend_from_slice(device.as_bytes());
    key
}

impl Store {
    /// Every rule added through the API: name and definition (JSON text), by name.
    pub fn saved_rules(&self) -> Result<Vec<(String, String)>, StoreError> {
        let snap = self.engine.snapshot()?;
        let mut rules = Vec::new();
        scan_records::<String>(&*snap, Table::Rules, &KeyRange::all(), "rule", |k, def| {
            rules.push((String::from_utf8_lossy(k).into_owned(), def));
            ControlFlow::Continue(())
        })?;
        Ok(rules)
    }

    /// Saves (or replaces) a rule's definition, durably.
    pub fn save_rule(&self, name: &str, definition: &str) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Rules,
            name.as_bytes().to_vec(),
            records::encode(&definition)?,
        );
        Ok(self.engine.commit(&batch)?)
    }

    /// Deletes a saved rule; `false` if there was none.
    pub fn delete_rule(&self, name: &str) -> Result<bool, StoreError> {
        if self
            .engine
            .snapshot()?
            .get(Table::Rules, name.as_bytes())?
            .is_none()
        {
            return Ok(false);
        }
        let mut batch = WriteBatch::new();
        batch.delete(Table::Rules, name.as_bytes().to_vec());
        self.engine.commit(&batch)?;
        Ok(true)
    }

    /// Every alert's state.
    pub fn alerts(&self) -> Result<Vec<AlertRecord>, StoreError> {
        let snap = self.engine.snapshot()?;
        let mut alerts = Vec::new();
        scan_records::<AlertRecord>(&*snap, Table::Alerts, &KeyRange::all(), "alert", |_, a| {
            alerts.push(a);
            ControlFlow::Continue(())
        })?;
        Ok(alerts)
    }

    /// Commits a round of transitions in one batch; how many outbox entries were dropped to stay
    /// within [`MAX_OUTBOX`].
    pub fn record_alerts(&self, changes: &AlertChanges) -> Result<u64, StoreError> {
        let snap = self.engine.snapshot()?;
        let mut batch = WriteBatch::new();
        for alert in &changes.states {
            batch.put(
                Table::Alerts,
                alert_key(&alert.rule, &alert.device),
                records::encode(alert)?,
            );
        }
        for (rule, device) in &changes.forgotten {
            batch.delete(Table::Alerts, alert_key(rule, device));
        }
        append_bounded(
            &*snap,
            Table::AlertHistory,
            &changes.events,
            MAX_ALERT_HISTORY,
            &mut batch,
        )?;
        let dropped = append_bounded(
            &*snap,
            Table::Outbox,
            &changes.outbox,
            MAX_OUTBOX,
            &mut batch,
        )?;
        drop(snap);
        if let Some(offset) = changes.next_offset {
            batch.put(
                Table::Meta,
                records::META_RULES_NEXT_OFFSET.to_vec(),
                offset.to_be_bytes().to_vec(),
            );
        }
        if !batch.is_empty() {
            self.engine.commit(&batch)?;
        }
        Ok(dropped)
    }

    /// The offset of the next reading the rules have not evaluated, if saved.
    pub fn rules_next_offset(&self) -> Result<Option<u64>, StoreError> {
        let snap = self.engine.snapshot()?;
        snap.get(Table::Meta, records::META_RULES_NEXT_OFFSET)?
            .map(|v| records::be_u64(&v, "rules next offset"))
            .transpose()
    }

    /// Forgets how far the rules evaluated (there are no rules now: those added later start
    /// with the readings that come after them).
    pub fn forget_rules_next_offset(&self) -> Result<(), StoreError> {
        if self.rules_next_offset()?.is_none() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        batch.delete(Table::Meta, records::META_RULES_NEXT_OFFSET.to_vec());
        Ok(self.engine.commit(&batch)?)
    }

    /// Alert transitions, newest first, numbered below `before` (all when `None`), at most
    /// `limit`, those in `state` only when given: each with its number (the next page's cursor).
    pub fn alert_history(
        &self,
        state: Option<AlertState>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, AlertEvent)>, StoreError> {
        self.alert_history_of(state, before, limit, &|_| true)
    }

    /// [`Store::alert_history`] of the devices `visible` accepts only, so that a page for an
    /// identity limited to some devices is a full page of theirs. Bounded by the history's own
    /// bound ([`MAX_ALERT_HISTORY`]).
    pub fn alert_history_of(
        &self,
        state: Option<AlertState>,
        before: Option<u64>,
        limit: usize,
        visible: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<(u64, AlertEvent)>, StoreError> {
        let snap = self.engine.snapshot()?;
        let range = KeyRange {
            start: Bound::Unbounded,
            end: before.map_or(Bound::Unbounded, |b| {
                Bound::Excluded(b.to_be_bytes().to_vec())
            }),
        };
        let mut events = Vec::new();
        let mut failure = None;
        snap.scan(
            Table::AlertHistory,
            &range,
            Direction::Reverse,
            &mut |k, v| {
                let parsed = records::be_u64(k, "alert event key")
                    .and_then(|n| Ok((n, records::decode::<AlertEvent>(v, "alert event")?)));
                match parsed {
                    Ok((n, event)) => {
                        if state.is_none_or(|s| s == event.state) && visible(&event.device) {
                            events.push((n, event));
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        return ControlFlow::Break(());
                    }
                }
                if events.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        failure.map_or(Ok(events), Err)
    }

    /// The oldest webhook notifications waiting, at most `limit`, with their numbers.
    pub fn outbox(&self, limit: usize) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let snap = self.engine.snapshot()?;
        let mut entries = Vec::new();
        let mut failure = None;
        scan_records::<OutboxEntry>(&*snap, Table::Outbox, &KeyRange::all(), "outbox", |k, e| {
            match records::be_u64(k, "outbox key") {
                Ok(n) => entries.push((n, e)),
                Err(e) => {
                    failure = Some(e);
                    return ControlFlow::Break(());
                }
            }
            if entries.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        failure.map_or(Ok(entries), Err)
    }

    /// Webhook notifications waiting.
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        self.entries(Table::Outbox)
    }

    /// Saves entry `number` as it is now (a try failed), or deletes it (`None`: delivered).
    pub fn update_outbox(
        &self,
        number: u64,
        entry: Option<&OutboxEntry>,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        let key = number.to_be_bytes().to_vec();
        match entry {
            Some(entry) => batch.put(Table::Outbox, key, records::encode(entry)?),
            None => batch.delete(Table::Outbox, key),
        }
        Ok(self.engine.commit(&batch)?)
    }
}

/// The largest number key of `table`, if any.
fn last_number(
    snap: &dyn super::engine::Snapshot,
    table: Table,
) -> Result<Option<u64>, StoreError> {
    let mut last = None;
    snap.scan(table, &KeyRange::all(), Direction::Reverse, &mut |k, _| {
        last = Some(k.to_vec());
        ControlFlow::Break(())
    })?;
    last.map(|k| records::be_u64(&k, "number key")).transpose()
}

/// Appends `items` to a numbered `table` after its last key, keeping only the newest `max`
/// (older keys deleted, items that would fall below the bound not written); how many went.
fn append_bounded<T: Serialize>(
    snap: &dyn super::engine::Snapshot,
    table: Table,
    items: &[T],
    max: u64,
    batch: &mut WriteBatch,
) -> Result<u64, StoreError> {
    let next = last_number(snap, table)?.map_or(0, |n| n + 1);
    let end = next + items.len() as u64;
    let below = end.saturating_sub(max);
    let mut dropped = trim_below(snap, table, below, batch)?;
    for (n, item) in items.iter().enumerate() {
        let number = next + n as u64;
        if number < below {
            dropped += 1;
            continue;
        }
        batch.put(table, number.to_be_bytes().to_vec(), records::encode(item)?);
    }
    Ok(dropped)
}

/// Deletes every number key of `table` below `below`; how many.
fn trim_below(
    snap: &dyn super::engine::Snapshot,
    table: Table,
    below: u64,
    batch: &mut WriteBatch,
) -> Result<u64, StoreError> {
    if below == 0 {
        return Ok(0);
    }
    let mut deleted = 0;
    snap.scan(
        table,
        &KeyRange::between(Vec::new(), below.to_be_bytes().to_vec()),
        Direction::Forward,
        &mut |k, _| {
            batch.delete(table, k.to_vec());
            deleted += 1;
            ControlFlow::Continue(())
        },
    )?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryEngine;
    use std::sync::Arc;

    fn store() -> Store {
        Store::open(Arc::new(MemoryEngine::new())).expect("open")
    }

    fn event(n: u64, state: AlertState) -> AlertEvent {
        AlertEvent {
            rule: "r".into(),
            device: "d".into(),
            state,
            transition: n,
            at_ms: n,
            value: None,
        }
    }

    #[test]
    fn rules_alerts_history_and_outbox_round_trip() {
        let store = store();
        store.save_rule("b", "{}").expect("save");
        store.save_rule("a", "{\"x\":1}").expect("save");
        assert_eq!(
            store.saved_rules().expect("rules"),
            vec![("a".into(), "{\"x\":1}".into()), ("b".into(), "{}".into())]
        );
        assert!(store.delete_rule("a").expect("delete"));
        assert!(!store.delete_rule("a").expect("delete"));

        let alert = AlertRecord {
            rule: "r".into(),
            device: "d".into(),
            state: AlertState::Firing,
            since_ms: 5,
            transition: 1,
            fired_ms: Some(5),
            value: Some(1.5),
        };
        let changes = AlertChanges {
            states: vec![alert.clone()],
            events: vec![event(1, AlertState::Firing), event(2, AlertState::Resolved)],
            outbox: vec![OutboxEntry {
                url: "http://127.0.0.1:1/".into(),
                key: "k".into(),
                body: "{}".into(),
                attempts: 0,
                next_ms: 0,
            }],
            ..AlertChanges::default()
        };
        assert_eq!(store.record_alerts(&changes).expect("record"), 0);
        assert_eq!(store.alerts().expect("alerts"), vec![alert]);
        let history = store.alert_history(None, None, 10).expect("history");
        assert_eq!(history.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 0]);
        let firing = store
            .alert_history(Some(AlertState::Firing), None, 10)
            .expect("history");
        assert_eq!(firing.len(), 1);
        assert_eq!(
            store.alert_history(None, Some(1), 10).expect("page").len(),
            1
        );
        let waiting = store.outbox(10).expect("outbox");
        assert_eq!(waiting.len(), 1);
        store.update_outbox(waiting[0].0, None).expect("done");
        assert_eq!(store.outbox_len().expect("len"), 0);

        let forget = AlertChanges {
            forgotten: vec![("r".into(), "d".into())],
            ..AlertChanges::default()
        };
        store.record_alerts(&forget).expect("forget");
        assert!(store.alerts().expect("alerts").is_empty());

        // How far the rules evaluated: saved with a round (alone, too), forgotten.
        assert_eq!(store.rules_next_offset().expect("offset"), None);
        let evaluated = AlertChanges {
            next_offset: Some(42),
            ..AlertChanges::default()
        };
        store.record_alerts(&evaluated).expect("offset");
        assert_eq!(store.rules_next_offset().expect("offset"), Some(42));
        store.forget_rules_next_offset().expect("forget");
        assert_eq!(store.rules_next_offset().expect("offset"), None);
    }

    #[test]
    fn a_history_page_of_some_devices_is_full_of_theirs() {
        let store = store();
        let events = (0..10)
            .map(|n| AlertEvent {
                device: if n % 2 == 0 { "a-1" } else { "b-1" }.into(),
                ..event(n, AlertState::Firing)
            })
            .collect();
        let changes = AlertChanges {
            events,
            ..AlertChanges::default()
        };
        store.record_alerts(&changes).expect("record");
        let of_a = |d: &str| d.starts_with("a-");
        let numbers =
            |page: Vec<(u64, AlertEvent)>| page.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        let first = store.alert_history_of(None, None, 3, &of_a).expect("page");
        assert!(first.iter().all(|(_, e)| e.device == "a-1"));
        assert_eq!(numbers(first), [8, 6, 4]);
        let rest = store
            .alert_history_of(None, Some(4), 3, &of_a)
            .expect("page");
        assert_eq!(numbers(rest), [2, 0]);
        assert_eq!(
            numbers(store.alert_history(None, None, 3).expect("page")),
            [9, 8, 7]
        );
    }

    #[test]
    fn history_and_outbox_stay_bounded() {
        let store = store();
        let entry = OutboxEntry {
            url: "u".into(),
            key: "k".into(),
            body: String::new(),
            attempts: 0,
            next_ms: 0,
        };
        let changes = AlertChanges {
            events: (0..MAX_ALERT_HISTORY + 5)
                .map(|n| event(n, AlertState::Firing))
                .collect(),
            outbox: vec![entry; MAX_OUTBOX as usize + 3],
            ..AlertChanges::default()
        };
        assert_eq!(store.record_alerts(&changes).expect("record"), 3);
        assert_eq!(store.outbox_len().expect("len"), MAX_OUTBOX);
        let history = store
            .alert_history(None, None, usize::MAX)
            .expect("history");
        assert_eq!(history.len() as u64, MAX_ALERT_HISTORY);
    }
}
