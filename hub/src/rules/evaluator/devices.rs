//! What the rules hold of each device: which rules select it (worked out once per metric, then
//! kept) and its alerts. Found by one lookup of the device's id, to a place in a list.
//!
//! Invariants: at most [`MAX_DEVICES`] devices are held before those without an alert are let go
//! (their selection is worked out again on their next reading); a device with an alert is never
//! let go here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::super::rule::Rule;
use super::Labels;
use super::alert::{DeviceAlerts, Slot};

/// Devices held before those without an alert are let go.
const MAX_DEVICES: usize = 100_000;

/// What the rules hold of one device.
#[derive(Debug)]
pub(super) struct DeviceRules {
    /// The device's id.
    pub(super) id: String,
    /// By metric number: the rules of that metric selecting the device, once worked out.
    pub(super) selected: Vec<Option<Box<[usize]>>>,
    /// The silence rules of any metric selecting the device, once worked out.
    pub(super) any_metric: Option<Box<[usize]>>,
    /// Rule index -> the device's alert of that rule.
    pub(super) alerts: BTreeMap<usize, Slot>,
}

impl DeviceRules {
    /// Forgets which rules select the device (rules or labels changed).
    pub(super) fn forget_selection(&mut self) {
        self.selected.clear();
        self.any_metric = None;
    }
}

/// Every device the rules hold.
#[derive(Debug, Default)]
pub(super) struct Devices {
    /// Device id -> its place in `held`.
    places: HashMap<String, usize>,
    held: Vec<DeviceRules>,
}

impl Devices {
    /// The device's entry, made if need be.
    pub(super) fn entry(&mut self, id: &str) -> &mut DeviceRules {
        let place = match self.places.get(id) {
            Some(&place) => place,
            None => {
                if self.held.len() >= MAX_DEVICES {
                    self.let_go();
                }
                self.places.insert(id.to_owned(), self.held.len());
                self.held.push(DeviceRules {
                    id: id.to_owned(),
                    selected: Vec::new(),
                    any_metric: None,
                    alerts: BTreeMap::new(),
                });
                self.held.len() - 1
            }
        };
        &mut self.held[place]
    }

    /// The alerts of `device` (its entry made if need be), with the count all devices share.
    pub(super) fn alerts<'a>(
        &'a mut self,
        device: &'a str,
        count: &'a mut usize,
    ) -> DeviceAlerts<'a> {
        DeviceAlerts {
            device,
            slots: &mut self.entry(device).alerts,
            count,
        }
    }

    /// Lets the devices without an alert go.
    fn let_go(&mut self) {
        self.held.retain(|d| !d.alerts.is_empty());
        self.places = (self.held.iter().enumerate())
            .map(|(place, d)| (d.id.clone(), place))
            .collect();
    }

    /// Every device held.
    pub(super) fn iter(&self) -> impl Iterator<Item = &DeviceRules> {
        self.held.iter()
    }

    /// Every device held, to change.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut DeviceRules> {
        self.held.iter_mut()
    }
}

/// The rules of `candidates` selecting `device` (its labels asked at most once, and only if a
/// candidate selects by label).
pub(super) fn select(
    rules: &[Arc<Rule>],
    candidates: &[usize],
    device: &str,
    labels: Labels<'_>,
    device_labels: &mut Option<Option<BTreeMap<String, String>>>,
) -> Box<[usize]> {
    if device_labels.is_none() && candidates.iter().any(|&i| !rules[i].labels.is_empty()) {
        *device_labels = Some(labels(device));
    }
    let have = device_labels.as_ref().and_then(Option::as_ref);
    candidates
        .iter()
        .copied()
        .filter(|&i| rules[i].selects(device, have))
        .collect()
}
