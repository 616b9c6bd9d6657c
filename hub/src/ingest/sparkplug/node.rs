//! One edge node as the hub knows it: whether it is born, its message sequence, the aliases and
//! datatypes its BIRTHs declared, and its devices. Pure: a message goes in, what it says comes
//! out (readings, statuses, whether a Rebirth is due, what was skipped); `mod.rs` turns that into
//! store items and downlinks.
//!
//! Invariants: aliases and datatypes come only from BIRTHs of the current birth (an NBIRTH starts
//! afresh); the sequence the node must send next is known only while it is born; every table is
//! bounded ([`MAX_ALIASES`], [`MAX_DEVICES`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use device_protocol::OwnedValue;

use super::proto::{self, Metric, Payload, Unstorable};

/// Aliases (and named datatypes) one edge node may declare; more are not learnt.
pub const MAX_ALIASES: usize = 8192;
/// Devices one edge node may have born at once; more are refused.
pub const MAX_DEVICES: usize = 1024;
/// Most metrics in one reading: the JSON limit, so every reading fits every API.
const MAX_READING_METRICS: usize = device_protocol::json::MAX_JSON_METRICS;

/// Why a metric of a message was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// An alias no BIRTH declared (the node is asked to rebirth).
    UnknownAlias,
    /// A datatype the hub does not keep, or no value.
    Unsupported,
    /// A string too long.
    TooLong,
    /// A name that cannot be a metric name, even with `/` as `.` and spaces as `_`.
    BadName,
}

impl Skipped {
    /// Every reason, in a fixed order.
    pub const ALL: [Skipped; 4] = [
        Skipped::UnknownAlias,
        Skipped::Unsupported,
        Skipped::TooLong,
        Skipped::BadName,
    ];

    /// A short name for metrics.
    pub fn name(self) -> &'static str {
        match self {
            Skipped::UnknownAlias => "unknown_alias",
            Skipped::Unsupported => "unsupported",
            Skipped::TooLong => "too_long",
            Skipped::BadName => "bad_name",
        }
    }
}

/// Which entity of the node a message is about: the node itself or one of its devices.
pub type Entity = Option<String>;

/// A reading: its timestamp (unix ms; `None` when neither the metric nor the payload gave one)
/// and its metrics, sorted by name.
pub type Reading = (Option<u64>, Vec<(String, OwnedValue)>);

/// What one message says.
#[derive(Debug, Default, PartialEq)]
pub struct Said {
    /// Readings of the entity.
    pub readings: Vec<Reading>,
    /// Entities now online (`true`) or offline.
    pub statuses: Vec<(Entity, bool)>,
    /// The sequence was broken, or the node sent DATA it was never born for: ask for a Rebirth.
    pub rebirth: bool,
    /// The sequence number was not the one due.
    pub seq_gap: bool,
    /// Metrics skipped, by reason.
    pub skipped: Vec<Skipped>,
    /// A DEATH for an earlier birth (its bdSeq is not the current one's), ignored.
    pub stale_death: bool,
    /// A DBIRTH past [`MAX_DEVICES`], refused.
    pub too_many_devices: bool,
}

/// An edge node's state.
#[derive(Debug, Default)]
pub struct EdgeNode {
    born: bool,
    bd_seq: Option<u64>,
    next_seq: u8,
    aliases: HashMap<u64, (Entity, String)>,
    datatypes: HashMap<(Entity, String), u32>,
    devices: HashSet<String>,
}

/// A metric name as the hub keeps it: Sparkplug's folders (`Inputs/Temperature`) joined with `.`,
/// spaces as `_`; `None` when it still is not a valid name.
pub fn metric_name(sparkplug: &str) -> Option<String> {
    let name: String = sparkplug
        .chars()
        .map(|c| match c {
            '/' => '.',
            ' ' => '_',
            c => c,
        })
        .collect();
    device_protocol::is_valid_id(&name).then_some(name)
}

/// Metrics that control the node rather than measure anything: not stored.
fn is_control(name: &str) -> bool {
    name == "bdSeq" || name.starts_with("Node Control/") || name.starts_with("Device Control/")
}

fn bd_seq(payload: &Payload) -> Option<u64> {
    payload
        .metrics
        .iter()
        .find_map(|m| match (&m.name, &m.value) {
            (Some(name), Some(proto::Value::Long(x))) if name == "bdSeq" => Some(*x),
            (Some(name), Some(proto::Value::Int(x))) if name == "bdSeq" => Some(u64::from(*x)),
            _ => None,
        })
}

impl EdgeNode {
    /// Whether the node is born (its NBIRTH seen, no NDEATH since).
    pub fn is_born(&self) -> bool {
        self.born
    }

    /// The datatype a BIRTH gave `name` of `entity`, and the Sparkplug name of a hub metric name.
    pub fn datatype(&self, entity: &Entity, name: &str) -> Option<(String, u32)> {
        if let Some(t) = self.datatypes.get(&(entity.clone(), name.to_owned())) {
            return Some((name.to_owned(), *t));
        }
        self.datatypes
            .iter()
            .find(|((e, n), _)| e == entity && metric_name(n).as_deref() == Some(name))
            .map(|((_, n), t)| (n.clone(), *t))
    }

    /// Whether `device` is born on this node.
    pub fn has_device(&self, device: &str) -> bool {
        self.devices.contains(device)
    }

    /// Checks the payload's seq against the one due; true (and the next one due after it) on a gap.
    fn sequence(&mut self, payload: &Payload) -> bool {
        let seq = payload.seq.filter(|s| *s <= 255).map(|s| s as u8);
        let gap = seq != Some(self.next_seq);
        if let Some(seq) = seq {
            self.next_seq = seq.wrapping_add(1);
        }
        gap
    }

    /// NBIRTH: the node starts afresh.
    pub fn node_birth(&mut self, payload: &Payload, said: &mut Said) {
        *self = EdgeNode {
            born: true,
            bd_seq: bd_seq(payload),
            next_seq: payload
                .seq
                .filter(|s| *s <= 255)
                .map_or(0, |s| (s as u8).wrapping_add(1)),
            ..EdgeNode::default()
        };
        self.learn(&None, payload, said);
        said.statuses.push((None, true));
        self.read(&None, payload, said);
    }

    /// DBIRTH of `device`.
    pub fn device_birth(&mut self, device: &str, payload: &Payload, said: &mut Said) {
        self.check_sequence(payload, said);
        if !self.devices.contains(device) && self.devices.len() >= MAX_DEVICES {
            said.too_many_devices = true;
            return;
        }
        self.devices.insert(device.to_owned());
        let entity = Some(device.to_owned());
        self.learn(&entity, payload, said);
        said.statuses.push((entity.clone(), true));
        self.read(&entity, payload, said);
    }

    /// NDATA (`device` none) or DDATA.
    pub fn data(&mut self, device: Option<&str>, payload: &Payload, said: &mut Said) {
        self.check_sequence(payload, said);
        if let Some(device) = device
            && !self.devices.contains(device)
        {
            // DATA of a device never born: its aliases and datatypes are unknown.
            said.rebirth = true;
        }
        self.read(&device.map(str::to_owned), payload, said);
    }

    /// DDEATH of `device`.
    pub fn device_death(&mut self, device: &str, payload: &Payload, said: &mut Said) {
        self.check_sequence(payload, said);
        self.devices.remove(device);
        said.statuses.push((Some(device.to_owned()), false));
    }

    /// NDEATH: the node and every device it had are offline, unless it is the death of an earlier
    /// birth (its bdSeq differs from the current NBIRTH's).
    pub fn node_death(&mut self, payload: &Payload, said: &mut Said) {
        if let (Some(born), Some(dead)) = (self.bd_seq, bd_seq(payload))
            && born != dead
        {
            said.stale_death = true;
            return;
        }
        said.statuses.push((None, false));
        let mut devices: Vec<String> = self.devices.drain().collect();
        devices.sort();
        said.statuses
            .extend(devices.into_iter().map(|d| (Some(d), false)));
        *self = EdgeNode::default();
    }

    /// A message of a born node must carry the seq due, or a Rebirth is asked for; a node not
    /// born is asked to rebirth. Either way the message is read as far as it can be: its values
    /// are the device's, only some before it were lost.
    fn check_sequence(&mut self, payload: &Payload, said: &mut Said) {
        if !self.born {
            said.rebirth = true;
        } else if self.sequence(payload) {
            said.seq_gap = true;
            said.rebirth = true;
        }
    }

    /// Learns the aliases and datatypes a BIRTH declares.
    fn learn(&mut self, entity: &Entity, payload: &Payload, said: &mut Said) {
        for metric in &payload.metrics {
            let Some(name) = &metric.name else { continue };
            if self.datatypes.len() >= MAX_ALIASES || self.aliases.len() >= MAX_ALIASES {
                said.skipped.push(Skipped::UnknownAlias);
                continue;
            }
            if let Some(t) = metric.datatype {
                self.datatypes.insert((entity.clone(), name.clone()), t);
            }
            if let Some(alias) = metric.alias {
                self.aliases.insert(alias, (entity.clone(), name.clone()));
            }
        }
    }

    /// The name and datatype of a metric: its own, or its alias's.
    fn resolve(&self, entity: &Entity, metric: &Metric) -> Option<(String, Option<u32>)> {
        let name = match (&metric.name, metric.alias) {
            (Some(name), _) => name.clone(),
            (None, Some(alias)) => match self.aliases.get(&alias) {
                Some((owner, name)) if owner == entity => name.clone(),
                _ => return None,
            },
            (None, None) => return None,
        };
        let datatype = metric
            .datatype
            .or_else(|| self.datatypes.get(&(entity.clone(), name.clone())).copied());
        Some((name, datatype))
    }

    /// The readings of a message: its metrics grouped by timestamp.
    fn read(&self, entity: &Entity, payload: &Payload, said: &mut Said) {
        let mut by_time: BTreeMap<Option<u64>, BTreeMap<String, OwnedValue>> = BTreeMap::new();
        for metric in &payload.metrics {
            let Some((name, datatype)) = self.resolve(entity, metric) else {
                said.skipped.push(Skipped::UnknownAlias);
                said.rebirth = true;
                continue;
            };
            if is_control(&name)
                || metric.is_null == Some(true)
                || metric.is_transient == Some(true)
            {
                continue;
            }
            let Some(hub_name) = metric_name(&name) else {
                said.skipped.push(Skipped::BadName);
                continue;
            };
            let value = match metric.value.as_ref().map(|v| proto::to_value(v, datatype)) {
                Some(Ok(value)) => value,
                Some(Err(Unstorable::TooLong)) => {
                    said.skipped.push(Skipped::TooLong);
                    continue;
                }
                Some(Err(Unstorable::Unsupported)) | None => {
                    said.skipped.push(Skipped::Unsupported);
                    continue;
                }
            };
            let at = metric.timestamp.or(payload.timestamp);
            by_time.entry(at).or_default().insert(hub_name, value);
        }
        for (at, metrics) in by_time {
            let metrics: Vec<(String, OwnedValue)> = metrics.into_iter().collect();
            for chunk in metrics.chunks(MAX_READING_METRICS) {
                said.readings.push((at, chunk.to_vec()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
