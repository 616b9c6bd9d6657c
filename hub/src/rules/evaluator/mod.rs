//! The rules' state machine: which rules a reading concerns, and what each alert (one rule for
//! one device) does with it. Pure: no store, no clock, no I/O; the rules task feeds it readings,
//! presence changes and ticks with the time, and persists and acts on what a [`Round`] collects.
//! How one alert moves is in `alert.rs`.
//!
//! Cost: rules are indexed by metric, and what the rules hold of a device (which rules of each
//! metric select it, worked out on the device's first reading of that metric, and its alerts) is
//! found with one lookup of the device. So a reading costs a lookup of its device and one of
//! each of its metrics, then work for the rules that select the device for that metric only,
//! never for the others.
//! Invariants: alerts are bounded ([`MAX_ALERTS`]); a rate window holds at most [`MAX_WINDOW`]
//! samples; the devices held are bounded (see `devices.rs`).

mod alert;
mod devices;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use device_protocol::OwnedValue;

use super::expr::Variables;
use super::rule::{Condition, Rule};
use crate::store::alerts::{AlertEvent, AlertRecord};
use alert::{DeviceAlerts, Phase, Slot};
use devices::{Devices, select};

/// Alerts (rule and device pairs with state) held at most; past this, new ones are not made.
pub const MAX_ALERTS: usize = 100_000;
/// Samples a rate window keeps; older ones go first when it is full.
pub const MAX_WINDOW: usize = 64;

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

/// The device's labels, asked only when a rule selects by label and the device's selection is
/// not known yet.
pub type Labels<'a> = &'a dyn Fn(&str) -> Option<BTreeMap<String, String>>;

/// One durable reading, as the evaluator reads it.
#[derive(Debug, Clone, Copy)]
pub struct Reading<'a> {
    /// The device.
    pub device: &'a str,
    /// Its own time (for rates).
    pub timestamp_ms: u64,
    /// Its metrics.
    pub metrics: &'a [(String, OwnedValue)],
}

/// The rules of one metric, and the metric's place in each device's selection.
#[derive(Debug)]
struct MetricRules {
    number: usize,
    rules: Vec<usize>,
}

/// The rules, their index, and every alert's state.
#[derive(Default)]
pub struct Evaluator {
    rules: Vec<Arc<Rule>>,
    by_metric: HashMap<String, MetricRules>,
    /// Silence rules that read no particular metric: any reading counts.
    any_metric: Vec<usize>,
    offline: Vec<usize>,
    /// Each device's rule selection and alerts.
    devices: Devices,
    /// Alerts held, all devices together.
    alert_count: usize,
    /// By rule index: the variables of the rule's expression.
    variables: Vec<Variables>,
}

impl Evaluator {
    /// Replaces the rules; alerts of rules that are gone are forgotten (into `round`), those of
    /// rules kept (by name) stay.
    pub fn set_rules(&mut self, rules: Vec<Rule>, round: &mut Round) {
        let old = std::mem::replace(&mut self.rules, rules.into_iter().map(Arc::new).collect());
        self.variables = self.rules.iter().map(|_| Variables::default()).collect();
        self.by_metric.clear();
        self.any_metric.clear();
        self.offline.clear();
        let mut index = HashMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            index.insert(rule.name.as_str(), i);
            match (&rule.condition, &rule.metric) {
                (Condition::Offline, _) => self.offline.push(i),
                (_, Some(metric)) => {
                    let next = self.by_metric.len();
                    self.by_metric
                        .entry(metric.clone())
                        .or_insert_with(|| MetricRules {
                            number: next,
                            rules: Vec::new(),
                        })
                        .rules
                        .push(i);
                }
                (_, None) => self.any_metric.push(i),
            }
        }
        for state in self.devices.iter_mut() {
            state.forget_selection();
            let alerts = std::mem::take(&mut state.alerts);
            for (i, slot) in alerts {
                let name = &old[i].name;
                match index.get(name.as_str()) {
                    Some(&now) => {
                        state.alerts.insert(now, slot);
                    }
                    None => {
                        self.alert_count -= 1;
                        round.forgotten.push((name.clone(), state.id.clone()));
                    }
                }
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
        let index: HashMap<&str, usize> = (self.rules.iter().enumerate())
            .map(|(i, r)| (r.name.as_str(), i))
            .collect();
        for record in records {
            let Some(&i) = index.get(record.rule.as_str()) else {
                round.forgotten.push((record.rule, record.device));
                continue;
            };
            let slot = Slot::restored(&record, now_ms);
            let state = self.devices.entry(&record.device);
            if state.alerts.insert(i, slot).is_none() {
                self.alert_count += 1;
            }
        }
    }

    /// How many alerts are firing now.
    pub fn firing(&self) -> usize {
        self.devices
            .iter()
            .flat_map(|d| d.alerts.values())
            .filter(|slot| slot.phase == Phase::Firing)
            .count()
    }

    /// Starts the silence clock of the devices the store knows (id, last reading), so a device
    /// silent since before the start is noticed too.
    pub fn seed_silence(&mut self, devices: &[(String, u64)], labels: Labels<'_>, now_ms: u64) {
        let silent: Vec<usize> = (0..self.rules.len())
            .filter(|&i| matches!(self.rules[i].condition, Condition::Silent { .. }))
            .collect();
        if silent.is_empty() {
            return;
        }
        let mut round = Round::default();
        for (device, last_ms) in devices {
            let selected = select(&self.rules, &silent, device, labels, &mut None);
            if selected.is_empty() {
                continue;
            }
            let mut alerts = self.devices.alerts(device, &mut self.alert_count);
            for &i in selected.iter() {
                if let Some(slot) = alerts.slot(i, now_ms, &mut round) {
                    slot.last_seen_ms = slot.last_seen_ms.min(*last_ms);
                }
            }
        }
    }

    /// Forgets which rules select which devices (labels changed); alerts stay.
    pub fn forget_selection(&mut self) {
        for state in self.devices.iter_mut() {
            state.forget_selection();
        }
    }

    /// Evaluates one durable reading, arriving at `now_ms` (the hub's clock).
    pub fn reading(
        &mut self,
        reading: &Reading<'_>,
        now_ms: u64,
        labels: Labels<'_>,
        round: &mut Round,
    ) {
        if self.by_metric.is_empty() && self.any_metric.is_empty() {
            return;
        }
        let device = reading.device;
        let Evaluator {
            rules,
            by_metric,
            any_metric,
            devices,
            alert_count,
            variables,
            ..
        } = self;
        let state = devices.entry(device);
        let mut device_labels = None;
        let mut alerts = DeviceAlerts {
            device,
            slots: &mut state.alerts,
            count: alert_count,
        };
        for (metric, value) in reading.metrics {
            let Some(of_metric) = by_metric.get(metric.as_str()) else {
                continue;
            };
            if state.selected.len() <= of_metric.number {
                state.selected.resize(of_metric.number + 1, None);
            }
            let selected = state.selected[of_metric.number].get_or_insert_with(|| {
                select(rules, &of_metric.rules, device, labels, &mut device_labels)
            });
            for &i in selected.iter() {
                alerts.evaluate(
                    i,
                    &rules[i],
                    reading,
                    value,
                    &mut variables[i],
                    now_ms,
                    round,
                );
            }
        }
        if !any_metric.is_empty() {
            let selected = state.any_metric.get_or_insert_with(|| {
                select(rules, any_metric, device, labels, &mut device_labels)
            });
            for &i in selected.iter() {
                alerts.heard(i, &rules[i], now_ms, round);
            }
        }
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
        let selected = select(&self.rules, &self.offline, device, labels, &mut None);
        if selected.is_empty() {
            return;
        }
        let mut alerts = self.devices.alerts(device, &mut self.alert_count);
        for &i in selected.iter() {
            alerts.step(i, &self.rules[i], !online, None, now_ms, round);
        }
    }

    /// Time passed: pending alerts whose `for` or minimum interval is over fire, silent devices'
    /// alerts fire.
    pub fn tick(&mut self, now_ms: u64, round: &mut Round) {
        for state in self.devices.iter_mut() {
            for (&i, slot) in &mut state.alerts {
                if let Some(rule) = self.rules.get(i) {
                    alert::tick(rule, &state.id, slot, now_ms, round);
                }
            }
        }
    }
}
