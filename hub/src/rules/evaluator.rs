//! The rules' state machine: which rules a reading concerns, and what each alert (one rule for
//! one device) does with it. Pure: no store, no clock, no I/O; the rules task feeds it readings,
//! presence changes and ticks with the time, and persists and acts on what a [`Round`] collects.
//!
//! An alert moves idle -> pending -> firing -> resolved (-> pending -> firing ...). Pending lasts
//! while the condition holds for less than the rule's `for`, or while the rule's minimum interval
//! since the alert last fired has not passed (so a flapping metric cannot fire more often); a
//! pending alert whose condition stops holding goes back to where it was, silently. Only firing
//! and resolving are notified, each with the next transition number of the alert.
//!
//! Cost: rules are indexed by metric; a reading's metric with no rule costs one hash lookup, and
//! which rules of that metric select the device is worked out once per device and metric and
//! cached. So the work per reading grows with the rules that concern it, never with the others.
//! Invariants: alerts are bounded ([`MAX_ALERTS`]); a rate window holds at most [`MAX_WINDOW`]
//! samples.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use device_protocol::OwnedValue;

use super::rule::{Condition, Rule};
use crate::store::alerts::{AlertEvent, AlertRecord, AlertState};

/// Alerts (rule and device pairs with state) held at most; past this, new ones are not made.
pub const MAX_ALERTS: usize = 100_000;
/// Samples a rate window keeps; older ones go first when it is full.
pub const MAX_WINDOW: usize = 64;
/// Devices whose matching rules are cached; the cache starts afresh past this.
const MAX_CACHED_DEVICES: usize = 100_000;

/// Where an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Pending,
    Firing,
    Resolved,
}

/// One alert's state and its condition's memory.
#[derive(Debug)]
struct Slot {
    phase: Phase,
    /// Where a pending alert goes back to if its condition stops holding.
    before_pending: Phase,
    since_ms: u64,
    pending_since_ms: u64,
    transition: u64,
    fired_ms: Option<u64>,
    value: Option<f64>,
    /// Silence: the last reading.
    last_seen_ms: u64,
    /// Rate: (reading time, value), oldest first.
    window: VecDeque<(u64, f64)>,
    /// Change: the value it last fired at (or first saw).
    reference: Option<f64>,
}

impl Slot {
    fn new(now_ms: u64) -> Self {
        Slot {
            phase: Phase::Idle,
            before_pending: Phase::Idle,
            since_ms: now_ms,
            pending_since_ms: now_ms,
            transition: 0,
            fired_ms: None,
            value: None,
            last_seen_ms: now_ms,
            window: VecDeque::new(),
            reference: None,
        }
    }

    fn record(&self, rule: &str, device: &str) -> AlertRecord {
        AlertRecord {
            rule: rule.to_owned(),
            device: device.to_owned(),
            state: match self.phase {
                Phase::Pending => AlertState::Pending,
                Phase::Firing => AlertState::Firing,
                Phase::Idle | Phase::Resolved => AlertState::Resolved,
            },
            since_ms: self.since_ms,
            transition: self.transition,
            fired_ms: self.fired_ms,
            value: self.value,
        }
    }
}

/// A notified transition and the rule it belongs to (for its actions).
#[derive(Debug, Clone)]
pub struct Notified {
    /// The rule.
    pub rule: Arc<Rule>,
    /// The transition.
    pub event: AlertEvent,
}

/// What one round of evaluation changed: to persist, then act on.
#[derive(Debug, Default)]
pub struct Round {
    /// Alert states as they are now (later ones of the same alert win).
    pub states: Vec<AlertRecord>,
    /// Alerts gone back to rest, or whose rule is gone: (rule, device).
    pub forgotten: Vec<(String, String)>,
    /// Transitions to notify, in order.
    pub notified: Vec<Notified>,
    /// Expressions that could not be evaluated.
    pub expr_errors: u64,
    /// Alerts not made because [`MAX_ALERTS`] were held.
    pub refused: u64,
}

impl Round {
    /// Whether there is nothing to persist or do.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.forgotten.is_empty() && self.notified.is_empty()
    }
}

/// The device's labels, asked only when a rule selects by label and the cache misses.
pub type Labels<'a> = &'a dyn Fn(&str) -> Option<BTreeMap<String, String>>;

/// The rules, their index, and every alert's state.
#[derive(Default)]
pub struct Evaluator {
    rules: Vec<Arc<Rule>>,
    by_metric: HashMap<String, Vec<usize>>,
    /// Silence rules that read no particular metric: any reading counts.
    any_metric: Vec<usize>,
    offline: Vec<usize>,
    /// device -> metric ("" for `any_metric`) -> the rules of that metric selecting the device.
    matches: HashMap<String, HashMap<String, Arc<[usize]>>>,
    /// rule -> device -> alert.
    alerts: HashMap<String, HashMap<String, Slot>>,
    alert_count: usize,
}

impl Evaluator {
    /// Replaces the rules; alerts of rules that are gone are forgotten (into `round`).
    pub fn set_rules(&mut self, rules: Vec<Rule>, round: &mut Round) {
        self.rules = rules.into_iter().map(Arc::new).collect();
        self.by_metric.clear();
        self.any_metric.clear();
        self.offline.clear();
        self.matches.clear();
        for (i, rule) in self.rules.iter().enumerate() {
            match (&rule.condition, &rule.metric) {
                (Condition::Offline, _) => self.offline.push(i),
                (_, Some(metric)) => self.by_metric.entry(metric.clone()).or_default().push(i),
                (_, None) => self.any_metric.push(i),
            }
        }
        let names: std::collections::HashSet<&str> =
            self.rules.iter().map(|r| r.name.as_str()).collect();
        let gone: Vec<String> = self
            .alerts
            .keys()
            .filter(|name| !names.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(devices) = self.alerts.remove(&name) {
                self.alert_count -= devices.len();
                round
                    .forgotten
                    .extend(devices.into_keys().map(|d| (name.clone(), d)));
            }
        }
    }

    /// The rules now.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// Takes back alert states kept in the store (at start): firing alerts stay firing and are
    /// not notified again. Alerts of unknown rules are forgotten (into `round`).
    pub fn restore(&mut self, records: Vec<AlertRecord>, now_ms: u64, round: &mut Round) {
        for record in records {
            if !self.rules.iter().any(|r| r.name == record.rule) {
                round.forgotten.push((record.rule, record.device));
                continue;
            }
            let mut slot = Slot::new(now_ms);
            slot.phase = match record.state {
                AlertState::Pending => Phase::Pending,
                AlertState::Firing => Phase::Firing,
                AlertState::Resolved => Phase::Resolved,
            };
            slot.before_pending = if record.transition > 0 {
                Phase::Resolved
            } else {
                Phase::Idle
            };
            slot.since_ms = record.since_ms;
            slot.pending_since_ms = record.since_ms;
            slot.transition = record.transition;
            slot.fired_ms = record.fired_ms;
            slot.value = record.value;
            slot.reference = record.value;
            self.alert_count += 1;
            self.alerts
                .entry(record.rule)
                .or_default()
                .insert(record.device, slot);
        }
    }

    /// How many alerts are firing now.
    pub fn firing(&self) -> usize {
        self.alerts
            .values()
            .flat_map(|devices| devices.values())
            .filter(|slot| slot.phase == Phase::Firing)
            .count()
    }

    /// Starts the silence clock of the devices the store knows (id, last reading), so a device
    /// silent since before the start is noticed too.
    pub fn seed_silence(&mut self, devices: &[(String, u64)], labels: Labels<'_>, now_ms: u64) {
        let silent: Vec<usize> = (0..self.rules.len())
            .filter(|&i| matches!(self.rules[i].condition, Condition::Silent { .. }))
            .collect();
        for (device, last_ms) in devices {
            let device_labels = labels(device);
            for &i in &silent {
                let rule = self.rules[i].clone();
                if !rule.selects(device, device_labels.as_ref()) {
                    continue;
                }
                let mut refused = 0;
                if let Some(slot) = self.slot(&rule.name, device, now_ms, &mut refused) {
                    slot.last_seen_ms = slot.last_seen_ms.min(*last_ms);
                }
            }
        }
    }

    fn slot(
        &mut self,
        rule: &str,
        device: &str,
        now_ms: u64,
        refused: &mut u64,
    ) -> Option<&mut Slot> {
        let full = self.alert_count >= MAX_ALERTS;
        let devices = self.alerts.entry(rule.to_owned()).or_default();
        if !devices.contains_key(device) {
            if full {
                *refused += 1;
                return None;
            }
            devices.insert(device.to_owned(), Slot::new(now_ms));
            self.alert_count += 1;
        }
        devices.get_mut(device)
    }

    fn existing(&mut self, rule: &str, device: &str) -> Option<&mut Slot> {
        self.alerts.get_mut(rule)?.get_mut(device)
    }

    /// The rules of `metric` ("" for those of any metric) that select `device`.
    fn matching(&mut self, device: &str, metric: &str, labels: Labels<'_>) -> Arc<[usize]> {
        if let Some(found) = self.matches.get(device).and_then(|m| m.get(metric)) {
            return found.clone();
        }
        let candidates: &[usize] = if metric.is_empty() {
            &self.any_metric
        } else {
            self.by_metric.get(metric).map_or(&[], Vec::as_slice)
        };
        let needs_labels = candidates.iter().any(|&i| !self.rules[i].labels.is_empty());
        let device_labels = if needs_labels { labels(device) } else { None };
        let found: Arc<[usize]> = candidates
            .iter()
            .copied()
            .filter(|&i| self.rules[i].selects(device, device_labels.as_ref()))
            .collect();
        if self.matches.len() >= MAX_CACHED_DEVICES {
            self.matches.clear();
        }
        self.matches
            .entry(device.to_owned())
            .or_default()
            .insert(metric.to_owned(), found.clone());
        found
    }

    /// Forgets which rules select which devices (labels may have changed).
    pub fn forget_matches(&mut self) {
        self.matches.clear();
    }

    /// Evaluates one durable reading of `device` at `timestamp_ms` (its own time, for rates),
    /// arriving at `now_ms` (the hub's).
    pub fn reading(
        &mut self,
        device: &str,
        timestamp_ms: u64,
        metrics: &[(String, OwnedValue)],
        now_ms: u64,
        labels: Labels<'_>,
        round: &mut Round,
    ) {
        for (metric, value) in metrics {
            if !self.by_metric.contains_key(metric.as_str()) {
                continue;
            }
            let rules = self.matching(device, metric, labels);
            for &i in rules.iter() {
                let rule = self.rules[i].clone();
                self.evaluate(&rule, device, timestamp_ms, value, metrics, now_ms, round);
            }
        }
        if !self.any_metric.is_empty() {
            let rules = self.matching(device, "", labels);
            for &i in rules.iter() {
                let rule = self.rules[i].clone();
                self.heard(&rule, device, now_ms, round);
            }
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one reading's parts, passed through"
    )]
    fn evaluate(
        &mut self,
        rule: &Arc<Rule>,
        device: &str,
        timestamp_ms: u64,
        value: &OwnedValue,
        metrics: &[(String, OwnedValue)],
        now_ms: u64,
        round: &mut Round,
    ) {
        let number = match value {
            OwnedValue::F64(v) => Some(*v).filter(|v| v.is_finite()),
            OwnedValue::I64(v) => Some(*v as f64),
            OwnedValue::Bool(v) => Some(f64::from(u8::from(*v))),
            OwnedValue::Str(_) => None,
        };
        match &rule.condition {
            Condition::Threshold {
                above,
                limit,
                hysteresis,
            } => {
                let Some(v) = number else { return };
                let firing = self
                    .existing(&rule.name, device)
                    .is_some_and(|s| s.phase == Phase::Firing);
                // Firing, it holds until the value is `hysteresis` back on the good side.
                let active = match (*above, firing) {
                    (true, false) => v > *limit,
                    (true, true) => v > limit - hysteresis,
                    (false, false) => v < *limit,
                    (false, true) => v < limit + hysteresis,
                };
                self.step(rule, device, active, Some(v), now_ms, round);
            }
            Condition::Rate {
                per_ms,
                above,
                below,
            } => {
                let Some(v) = number else { return };
                let mut refused = 0;
                let Some(slot) = self.slot(&rule.name, device, now_ms, &mut refused) else {
                    round.refused += refused;
                    return;
                };
                let window = &mut slot.window;
                if window.back().is_some_and(|(t, _)| *t > timestamp_ms) {
                    return; // an older reading (a backlog): the window moves forward only
                }
                window.push_back((timestamp_ms, v));
                while window.len() > MAX_WINDOW
                    || window
                        .front()
                        .is_some_and(|(t, _)| timestamp_ms.saturating_sub(*t) > *per_ms)
                {
                    window.pop_front();
                }
                let (Some(&(t0, v0)), Some(&(t1, v1))) = (window.front(), window.back()) else {
                    return;
                };
                if t1 <= t0 {
                    return;
                }
                let rate = (v1 - v0) / (t1 - t0) as f64 * *per_ms as f64;
                let active = above.is_some_and(|a| rate > a) || below.is_some_and(|b| rate < b);
                self.step(rule, device, active, Some(rate), now_ms, round);
            }
            Condition::Change { deadband } => {
                let Some(v) = number else { return };
                let mut refused = 0;
                let Some(slot) = self.slot(&rule.name, device, now_ms, &mut refused) else {
                    round.refused += refused;
                    return;
                };
                let Some(reference) = slot.reference else {
                    slot.reference = Some(v);
                    return;
                };
                let allowed = slot
                    .fired_ms
                    .is_none_or(|at| now_ms.saturating_sub(at) >= rule.min_interval_ms);
                if (v - reference).abs() > *deadband && allowed {
                    slot.reference = Some(v);
                    fire(rule, device, slot, Some(v), now_ms, round);
                }
            }
            Condition::Silent { .. } => self.heard(rule, device, now_ms, round),
            Condition::Offline => {}
            Condition::Expr(expr) => match expr.eval(device, value, metrics) {
                Ok(active) => self.step(rule, device, active, number, now_ms, round),
                Err(_) => round.expr_errors += 1,
            },
        }
    }

    /// A reading of a silence rule's device: the silence ends.
    fn heard(&mut self, rule: &Arc<Rule>, device: &str, now_ms: u64, round: &mut Round) {
        let mut refused = 0;
        if let Some(slot) = self.slot(&rule.name, device, now_ms, &mut refused) {
            slot.last_seen_ms = now_ms;
        }
        round.refused += refused;
        self.step(rule, device, false, None, now_ms, round);
    }

    /// A device went offline (`online` false) or came back.
    pub fn presence(
        &mut self,
        device: &str,
        online: bool,
        now_ms: u64,
        labels: Labels<'_>,
        round: &mut Round,
    ) {
        if self.offline.is_empty() {
            return;
        }
        let device_labels = labels(device);
        let rules: Vec<Arc<Rule>> = self
            .offline
            .iter()
            .map(|&i| self.rules[i].clone())
            .filter(|r| r.selects(device, device_labels.as_ref()))
            .collect();
        for rule in rules {
            self.step(&rule, device, !online, None, now_ms, round);
        }
    }

    /// Time passed: pending alerts whose `for` or minimum interval is over fire, silent devices'
    /// alerts fire.
    pub fn tick(&mut self, now_ms: u64, round: &mut Round) {
        for rule in self.rules.clone() {
            let Some(devices) = self.alerts.get_mut(&rule.name) else {
                continue;
            };
            let silent_after = match rule.condition {
                Condition::Silent { after_ms } => Some(after_ms),
                _ => None,
            };
            for (device, slot) in devices.iter_mut() {
                if let Some(after_ms) = silent_after
                    && slot.phase != Phase::Firing
                    && now_ms.saturating_sub(slot.last_seen_ms) >= after_ms
                {
                    fire(&rule, device, slot, None, now_ms, round);
                } else if slot.phase == Phase::Pending {
                    try_fire(&rule, device, slot, now_ms, round);
                }
            }
        }
    }

    /// One evaluation of an alert's condition: `active` or not, at `now_ms`.
    fn step(
        &mut self,
        rule: &Arc<Rule>,
        device: &str,
        active: bool,
        value: Option<f64>,
        now_ms: u64,
        round: &mut Round,
    ) {
        let slot = if active {
            let mut refused = 0;
            let slot = self.slot(&rule.name, device, now_ms, &mut refused);
            round.refused += refused;
            slot
        } else {
            self.existing(&rule.name, device)
        };
        let Some(slot) = slot else { return };
        match (active, slot.phase) {
            (true, Phase::Idle | Phase::Resolved) => {
                slot.before_pending = slot.phase;
                slot.phase = Phase::Pending;
                slot.pending_since_ms = now_ms;
                slot.since_ms = now_ms;
                slot.value = value;
                round.states.push(slot.record(&rule.name, device));
                try_fire(rule, device, slot, now_ms, round);
            }
            (true, Phase::Pending) => {
                slot.value = value;
                try_fire(rule, device, slot, now_ms, round);
            }
            (true, Phase::Firing) | (false, Phase::Idle | Phase::Resolved) => {}
            (false, Phase::Pending) => {
                slot.phase = slot.before_pending;
                if slot.phase == Phase::Idle && !keeps_memory(rule) {
                    self.remove(&rule.name, device, round);
                } else if let Some(slot) = self.existing(&rule.name, device) {
                    round.states.push(slot.record(&rule.name, device));
                }
            }
            (false, Phase::Firing) => {
                slot.phase = Phase::Resolved;
                slot.since_ms = now_ms;
                slot.transition += 1;
                slot.value = value.or(slot.value);
                notify(rule, device, slot, AlertState::Resolved, now_ms, round);
            }
        }
    }

    fn remove(&mut self, rule: &str, device: &str, round: &mut Round) {
        if let Some(devices) = self.alerts.get_mut(rule)
            && devices.remove(device).is_some()
        {
            self.alert_count -= 1;
            round.forgotten.push((rule.to_owned(), device.to_owned()));
        }
    }
}

/// Whether a rule's alerts keep memory between readings even at rest (a rate window, a
/// silence clock, a change reference).
fn keeps_memory(rule: &Rule) -> bool {
    matches!(
        rule.condition,
        Condition::Rate { .. } | Condition::Change { .. } | Condition::Silent { .. }
    )
}

/// Fires a pending alert once its `for` and the rule's minimum interval are over.
fn try_fire(rule: &Arc<Rule>, device: &str, slot: &mut Slot, now_ms: u64, round: &mut Round) {
    let held_for = now_ms.saturating_sub(slot.pending_since_ms) >= rule.for_ms;
    let interval_over = slot
        .fired_ms
        .is_none_or(|at| now_ms.saturating_sub(at) >= rule.min_interval_ms);
    if held_for && interval_over {
        let value = slot.value;
        fire(rule, device, slot, value, now_ms, round);
    }
}

fn fire(
    rule: &Arc<Rule>,
    device: &str,
    slot: &mut Slot,
    value: Option<f64>,
    now_ms: u64,
    round: &mut Round,
) {
    slot.phase = Phase::Firing;
    slot.since_ms = now_ms;
    slot.fired_ms = Some(now_ms);
    slot.transition += 1;
    slot.value = value;
    notify(rule, device, slot, AlertState::Firing, now_ms, round);
}

fn notify(
    rule: &Arc<Rule>,
    device: &str,
    slot: &Slot,
    state: AlertState,
    now_ms: u64,
    round: &mut Round,
) {
    round.states.push(slot.record(&rule.name, device));
    round.notified.push(Notified {
        rule: rule.clone(),
        event: AlertEvent {
            rule: rule.name.clone(),
            device: device.to_owned(),
            state,
            transition: slot.transition,
            at_ms: now_ms,
            value: slot.value,
        },
    });
}
