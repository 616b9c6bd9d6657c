//! One alert (one rule for one device): where it is, its condition's memory, and how a reading,
//! a presence change or time moves it. An alert moves idle -> pending -> firing -> resolved
//! (-> pending -> firing ...). Pending lasts while the condition holds for less than the rule's
//! `for`, or while the rule's minimum interval since the alert last fired has not passed (so a
//! flapping metric cannot fire more often); a pending alert whose condition stops holding goes
//! back to where it was, silently. Only firing and resolving are notified, each with the next
//! transition number of the alert.

use std::collections::{BTreeMap, VecDeque, btree_map};
use std::sync::Arc;

use device_protocol::OwnedValue;

use super::super::expr::Variables;
use super::super::rule::{Condition, Rule};
use super::{MAX_ALERTS, MAX_WINDOW, Notified, Reading, Round};
use crate::store::alerts::{AlertEvent, AlertRecord, AlertState};

/// Where an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Idle,
    Pending,
    Firing,
    Resolved,
}

/// One alert's state and its condition's memory.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) phase: Phase,
    /// Where a pending alert goes back to if its condition stops holding.
    pub(super) before_pending: Phase,
    pub(super) since_ms: u64,
    pub(super) pending_since_ms: u64,
    pub(super) transition: u64,
    pub(super) fired_ms: Option<u64>,
    pub(super) value: Option<f64>,
    /// Silence: the last reading.
    pub(super) last_seen_ms: u64,
    /// Rate: (reading time, value), oldest first.
    window: VecDeque<(u64, f64)>,
    /// Change: the value it last fired at (or first saw).
    pub(super) reference: Option<f64>,
}

impl Slot {
    pub(super) fn new(now_ms: u64) -> Self {
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

    /// The slot of an alert kept in the store: firing stays firing, not notified again.
    pub(super) fn restored(record: &AlertRecord, now_ms: u64) -> Self {
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
        slot
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

/// The alerts of one device (by rule index), and the count of alerts all devices share.
pub(super) struct DeviceAlerts<'a> {
    pub(super) device: &'a str,
    pub(super) slots: &'a mut BTreeMap<usize, Slot>,
    pub(super) count: &'a mut usize,
}

impl DeviceAlerts<'_> {
    /// The alert of rule `i`, made if need be (and if the bound allows: else counted refused).
    pub(super) fn slot(&mut self, i: usize, now_ms: u64, round: &mut Round) -> Option<&mut Slot> {
        match self.slots.entry(i) {
            btree_map::Entry::Occupied(slot) => Some(slot.into_mut()),
            btree_map::Entry::Vacant(_) if *self.count >= MAX_ALERTS => {
                round.refused += 1;
                None
            }
            btree_map::Entry::Vacant(place) => {
                *self.count += 1;
                Some(place.insert(Slot::new(now_ms)))
            }
        }
    }

    fn remove(&mut self, i: usize, rule: &Rule, round: &mut Round) {
        if self.slots.remove(&i).is_some() {
            *self.count -= 1;
            round
                .forgotten
                .push((rule.name.clone(), self.device.to_owned()));
        }
    }

    /// Evaluates rule `i` on `value`, its metric in `reading`.
    #[allow(
        clippy::too_many_arguments,
        reason = "one reading's parts, passed through"
    )]
    pub(super) fn evaluate(
        &mut self,
        i: usize,
        rule: &Arc<Rule>,
        reading: &Reading<'_>,
        value: &OwnedValue,
        variables: &mut Variables,
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
                let firing = self.slots.get(&i).is_some_and(|s| s.phase == Phase::Firing);
                // Firing, it holds until the value is `hysteresis` back on the good side.
                let active = match (*above, firing) {
                    (true, false) => v > *limit,
                    (true, true) => v > limit - hysteresis,
                    (false, false) => v < *limit,
                    (false, true) => v < limit + hysteresis,
                };
                self.step(i, rule, active, Some(v), now_ms, round);
            }
            Condition::Rate {
                per_ms,
                above,
                below,
            } => {
                let Some(v) = number else { return };
                let Some(slot) = self.slot(i, now_ms, round) else {
                    return;
                };
                let window = &mut slot.window;
                let t = reading.timestamp_ms;
                if window.back().is_some_and(|(last, _)| *last > t) {
                    return; // an older reading (a backlog): the window moves forward only
                }
                window.push_back((t, v));
                while window.len() > MAX_WINDOW
                    || window
                        .front()
                        .is_some_and(|(first, _)| t.saturating_sub(*first) > *per_ms)
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
                self.step(i, rule, active, Some(rate), now_ms, round);
            }
            Condition::Change { deadband } => {
                let Some(v) = number else { return };
                let device = self.device;
                let Some(slot) = self.slot(i, now_ms, round) else {
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
            Condition::Silent { .. } => self.heard(i, rule, now_ms, round),
            Condition::Offline => {}
            Condition::Expr(expr) => {
                match expr.eval(variables, reading.device, value, reading.metrics) {
                    Ok(active) => self.step(i, rule, active, number, now_ms, round),
                    Err(_) => round.expr_errors += 1,
                }
            }
        }
    }

    /// A reading of a silence rule's device: the silence ends.
    pub(super) fn heard(&mut self, i: usize, rule: &Arc<Rule>, now_ms: u64, round: &mut Round) {
        if let Some(slot) = self.slot(i, now_ms, round) {
            slot.last_seen_ms = now_ms;
        }
        self.step(i, rule, false, None, now_ms, round);
    }

    /// One evaluation of the condition of rule `i`'s alert: `active` or not, at `now_ms`.
    pub(super) fn step(
        &mut self,
        i: usize,
        rule: &Arc<Rule>,
        active: bool,
        value: Option<f64>,
        now_ms: u64,
        round: &mut Round,
    ) {
        let device = self.device;
        let slot = if active {
            self.slot(i, now_ms, round)
        } else {
            self.slots.get_mut(&i)
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
                    self.remove(i, rule, round);
                } else {
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
}

/// Time passed for one alert: a silent device's alert fires, a pending one whose `for` or
/// minimum interval is over fires.
pub(super) fn tick(
    rule: &Arc<Rule>,
    device: &str,
    slot: &mut Slot,
    now_ms: u64,
    round: &mut Round,
) {
    if let Condition::Silent { after_ms } = rule.condition
        && slot.phase != Phase::Firing
        && now_ms.saturating_sub(slot.last_seen_ms) >= after_ms
    {
        fire(rule, device, slot, None, now_ms, round);
    } else if slot.phase == Phase::Pending {
        try_fire(rule, device, slot, now_ms, round);
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
