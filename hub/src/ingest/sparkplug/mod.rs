//! Sparkplug B (`[mqtt.sparkplug]`): edge nodes publish on `spBv1.0/{group}/{type}/{edge}[/{device}]`
//! with payloads in the Tahu protobuf ([`proto`]). The hub acts as a host application:
//!
//! - NBIRTH/DBIRTH declare metrics (names, aliases, datatypes; [`node`] learns them) and carry
//!   their values: the entity is online and its values are a reading;
//! - NDATA/DDATA carry values, by alias or name: readings;
//! - DDEATH marks a device offline, NDEATH (the node's MQTT last will) the node and all its
//!   devices, unless its bdSeq says it is the death of an earlier birth;
//! - every message of a born node but NDEATH carries the next of a 0-255 sequence: a gap, or DATA
//!   from a node the hub has not seen born (after the hub restarted, say), is answered with an
//!   NCMD `Node Control/Rebirth` (at most one per node every [`REBIRTH_INTERVAL`]);
//! - a command for such a device leaves as DCMD (NCMD for the node): the command's name is the
//!   metric, `args.value` its value, of the datatype its BIRTH declared.
//!
//! Device ids: `{group}.{edge}` for the node, `{group}.{edge}.{device}` for a device; transport
//! `sparkplug`. An id part that is not 1 to 64 of `A-Z a-z 0-9 _ -` (a `.` would let two
//! different nodes make one id) is refused as `bad_device_id`. Sparkplug readings carry no seq of
//! the hub's kind: a retransmission may be stored twice.
//!
//! The state (births, aliases) lives in memory only: after a restart the first DATA of each node
//! asks for its Rebirth. Bounded: [`MAX_EDGE_NODES`] nodes, and per node [`node::MAX_ALIASES`] and
//! [`node::MAX_DEVICES`].

pub mod node;
pub mod proto;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use prost::Message;
use serde_json::{Map, Value as Json};

use super::{MqttDownlink, Rejection};
use crate::store::{DeviceStatus, Ingest, NewReading, Transport, Wire};
use node::{EdgeNode, Said, Skipped};

/// The topic namespace of Sparkplug B.
pub const NAMESPACE: &str = "spBv1.0";
/// The filter the hub subscribes to behind an external broker.
pub const FILTER: &str = "spBv1.0/#";
/// Edge nodes the hub keeps state for; a new one past this is refused.
pub const MAX_EDGE_NODES: usize = 1024;
/// Least time between two Rebirth requests to one edge node, ms.
pub const REBIRTH_INTERVAL_MS: u64 = 5_000;
/// [`REBIRTH_INTERVAL_MS`] as written in the docs.
pub const REBIRTH_INTERVAL: &str = "5s";

/// The kinds of message the hub reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NBirth,
    NDeath,
    DBirth,
    DDeath,
    NData,
    DData,
}

/// What a topic of the namespace is.
enum Parsed<'t> {
    /// A message the hub reads.
    Edge {
        kind: Kind,
        group: &'t str,
        edge: &'t str,
        device: Option<&'t str>,
    },
    /// A command or a host's STATE: not the hub's to read.
    Other,
}

fn parse(topic: &str) -> Result<Parsed<'_>, (Rejection, String)> {
    let bad = || (Rejection::BadTopic, String::new());
    let mut levels = topic.split('/');
    if levels.next() != Some(NAMESPACE) {
        return Err(bad());
    }
    let group = levels.next().ok_or_else(bad)?;
    let kind = levels.next().ok_or_else(bad)?;
    if group == "STATE" {
        return Ok(Parsed::Other);
    }
    let kind = match kind {
        "NBIRTH" => Kind::NBirth,
        "NDEATH" => Kind::NDeath,
        "DBIRTH" => Kind::DBirth,
        "DDEATH" => Kind::DDeath,
        "NDATA" => Kind::NData,
        "DDATA" => Kind::DData,
        "NCMD" | "DCMD" | "STATE" => return Ok(Parsed::Other),
        _ => return Err(bad()),
    };
    let edge = levels.next().ok_or_else(bad)?;
    let device = levels.next();
    let needs_device = matches!(kind, Kind::DBirth | Kind::DDeath | Kind::DData);
    if levels.next().is_some() || device.is_some() != needs_device {
        return Err(bad());
    }
    for part in [Some(group), Some(edge), device].into_iter().flatten() {
        if part.contains('.') || !device_protocol::is_valid_id(part) {
            return Err((
                Rejection::BadDeviceId,
                format!(
                    "{:?} cannot be part of a device id (1-64 of A-Z a-z 0-9 _ -, no dot)",
                    part.chars().take(80).collect::<String>()
                ),
            ));
        }
    }
    let id_len = group.len() + 1 + edge.len() + device.map_or(0, |d| d.len() + 1);
    if id_len > device_protocol::MAX_ID_LEN {
        return Err((
            Rejection::BadDeviceId,
            format!("the device id would be {id_len} characters, more than 64"),
        ));
    }
    Ok(Parsed::Edge {
        kind,
        group,
        edge,
        device,
    })
}

/// Counters of Sparkplug messages, for `/metrics`.
#[derive(Debug, Default)]
pub struct SparkplugStats {
    messages: [AtomicU64; 6],
    seq_gaps: AtomicU64,
    rebirths: AtomicU64,
    stale_deaths: AtomicU64,
    skipped: [AtomicU64; Skipped::ALL.len()],
}

const KINDS: [(Kind, &str); 6] = [
    (Kind::NBirth, "NBIRTH"),
    (Kind::NDeath, "NDEATH"),
    (Kind::DBirth, "DBIRTH"),
    (Kind::DDeath, "DDEATH"),
    (Kind::NData, "NDATA"),
    (Kind::DData, "DDATA"),
];

impl SparkplugStats {
    /// Sequence gaps seen.
    pub fn seq_gaps(&self) -> u64 {
        self.seq_gaps.load(Ordering::Relaxed)
    }

    /// Rebirths requested.
    pub fn rebirths(&self) -> u64 {
        self.rebirths.load(Ordering::Relaxed)
    }

    /// Writes the Sparkplug families in the Prometheus text format.
    pub fn render(&self, out: &mut crate::exposition::Exposition) {
        let name = "hub_sparkplug_messages_total";
        out.family(name, "counter", "Sparkplug B messages read, by type.");
        for (i, (_, kind)) in KINDS.iter().enumerate() {
            let n = self.messages[i].load(Ordering::Relaxed);
            out.sample(name, &format!("type=\"{kind}\""), n);
        }
        out.single(
            "hub_sparkplug_seq_gaps_total",
            "counter",
            "Sparkplug B messages whose sequence number was not the one due.",
            self.seq_gaps(),
        );
        out.single(
            "hub_sparkplug_rebirths_requested_total",
            "counter",
            "Rebirths the hub asked edge nodes for (after a sequence gap, or DATA of a node not seen born).",
            self.rebirths(),
        );
        out.single(
            "hub_sparkplug_stale_deaths_total",
            "counter",
            "NDEATHs ignored because their bdSeq was not the current birth's.",
            self.stale_deaths.load(Ordering::Relaxed),
        );
        let name = "hub_sparkplug_metrics_skipped_total";
        out.family(
            name,
            "counter",
            "Sparkplug B metrics not stored, by reason.",
        );
        for reason in Skipped::ALL {
            let n = self.skipped[reason as usize].load(Ordering::Relaxed);
            out.sample(name, &format!("reason=\"{}\"", reason.name()), n);
        }
    }
}

/// The hub as a Sparkplug B host application.
#[derive(Debug, Default)]
pub struct Sparkplug {
    nodes: Mutex<HashMap<(String, String), Node>>,
    downlink: OnceLock<MqttDownlink>,
    stats: SparkplugStats,
}

/// An edge node and when a Rebirth was last asked of it.
#[derive(Debug, Default)]
struct Node {
    state: EdgeNode,
    rebirth_asked_ms: Option<u64>,
}

fn id(group: &str, edge: &str, device: Option<&str>) -> String {
    match device {
        Some(device) => format!("{group}.{edge}.{device}"),
        None => format!("{group}.{edge}"),
    }
}

impl Sparkplug {
    /// The counters.
    pub fn stats(&self) -> &SparkplugStats {
        &self.stats
    }

    /// Where Rebirth requests and commands go; set once by the MQTT transport that runs.
    pub fn attach(&self, downlink: MqttDownlink) {
        let _ = self.downlink.set(downlink);
    }

    fn nodes(&self) -> MutexGuard<'_, HashMap<(String, String), Node>> {
        // Each step leaves the tables consistent, so a panic elsewhere leaves them usable.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a message on `topic` becomes; `None` when the topic is not of the namespace.
    pub fn decode(
        &self,
        topic: &str,
        payload: &[u8],
        max_payload: usize,
        received_ms: u64,
    ) -> Option<Result<Vec<Ingest>, (Rejection, String)>> {
        if !topic.starts_with("spBv1.0/") {
            return None;
        }
        let (kind, group, edge, device) = match parse(topic) {
            Ok(Parsed::Edge {
                kind,
                group,
                edge,
                device,
            }) => (kind, group, edge, device),
            Ok(Parsed::Other) => return Some(Ok(Vec::new())),
            Err(refused) => return Some(Err(refused)),
        };
        if payload.len() > max_payload {
            return Some(Err((
                Rejection::TooLarge,
                format!("{} bytes, limit {max_payload}", payload.len()),
            )));
        }
        let decoded = match proto::Payload::decode(payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                return Some(Err((
                    Rejection::BadPayload,
                    format!("not a Sparkplug B payload: {e}"),
                )));
            }
        };
        if let Some(i) = KINDS.iter().position(|(k, _)| *k == kind) {
            self.stats.messages[i].fetch_add(1, Ordering::Relaxed);
        }
        let mut said = Said::default();
        let ask_rebirth = {
            let mut nodes = self.nodes();
            let key = (group.to_owned(), edge.to_owned());
            if !nodes.contains_key(&key) && nodes.len() >= MAX_EDGE_NODES {
                return Some(Err((
                    Rejection::Unsupported,
                    format!("more than {MAX_EDGE_NODES} edge nodes"),
                )));
            }
            let node = nodes.entry(key).or_default();
            match (kind, device) {
                (Kind::NBirth, _) => node.state.node_birth(&decoded, &mut said),
                (Kind::NDeath, _) => node.state.node_death(&decoded, &mut said),
                (Kind::DBirth, Some(d)) => node.state.device_birth(d, &decoded, &mut said),
                (Kind::DDeath, Some(d)) => node.state.device_death(d, &decoded, &mut said),
                (Kind::NData | Kind::DData, d) => node.state.data(d, &decoded, &mut said),
                (Kind::DBirth | Kind::DDeath, None) => {}
            }
            let due = node
                .rebirth_asked_ms
                .is_none_or(|at| received_ms.saturating_sub(at) >= REBIRTH_INTERVAL_MS);
            if kind == Kind::NBirth {
                node.rebirth_asked_ms = None;
            }
            let ask = said.rebirth && due;
            if ask {
                node.rebirth_asked_ms = Some(received_ms);
            }
            ask
        };
        self.count(&said);
        if ask_rebirth {
            self.request_rebirth(group, edge);
        }
        if said.too_many_devices {
            return Some(Err((
                Rejection::Unsupported,
                format!("more than {} devices on one edge node", node::MAX_DEVICES),
            )));
        }
        Some(Ok(items(group, edge, device, said, received_ms)))
    }

    fn count(&self, said: &Said) {
        if said.seq_gap {
            self.stats.seq_gaps.fetch_add(1, Ordering::Relaxed);
        }
        if said.stale_death {
            self.stats.stale_deaths.fetch_add(1, Ordering::Relaxed);
        }
        for skipped in &said.skipped {
            self.stats.skipped[*skipped as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn request_rebirth(&self, group: &str, edge: &str) {
        let payload = proto::Payload {
            timestamp: Some(crate::clock::now_ms()),
            metrics: vec![proto::Metric {
                name: Some("Node Control/Rebirth".into()),
                datatype: Some(proto::datatype::BOOLEAN),
                value: Some(proto::Value::Boolean(true)),
                ..proto::Metric::default()
            }],
            ..proto::Payload::default()
        };
        let topic = format!("{NAMESPACE}/{group}/NCMD/{edge}");
        let sent = match self.downlink.get() {
            Some(downlink) => {
                downlink.publish(topic, payload.encode_to_vec(), rumqttc::QoS::AtLeastOnce)
            }
            None => Err(super::DownlinkError::NotConnected),
        };
        match sent {
            Ok(()) => {
                self.stats.rebirths.fetch_add(1, Ordering::Relaxed);
                tracing::info!(group, edge, "asked a Sparkplug edge node to rebirth");
            }
            Err(e) => {
                tracing::warn!(group, edge, error = %e, "could not ask a Sparkplug edge node to rebirth")
            }
        }
    }

    /// A command for `device` (`{group}.{edge}` or `{group}.{edge}.{device}`) as its NCMD or DCMD
    /// topic and payload: the metric `name` set to `args.value`.
    pub fn command(
        &self,
        device: &str,
        name: &str,
        args: &Map<String, Json>,
    ) -> Result<(String, Vec<u8>), String> {
        let parts: Vec<&str> = device.split('.').collect();
        let (group, edge, child) = match parts[..] {
            [group, edge] => (group, edge, None),
            [group, edge, child] => (group, edge, Some(child)),
            _ => return Err(format!("{device:?} is not a Sparkplug device id")),
        };
        let value = match (args.get("value"), args.len()) {
            (Some(value), 1) => value,
            _ => {
                return Err(
                    "a Sparkplug command is {\"name\": METRIC, \"args\": {\"value\": VALUE}}"
                        .into(),
                );
            }
        };
        let entity = child.map(str::to_owned);
        let known = self
            .nodes()
            .get(&(group.to_owned(), edge.to_owned()))
            .and_then(|n| n.state.datatype(&entity, name));
        let (metric, datatype) = match known {
            Some((metric, datatype)) => (metric, Some(datatype)),
            None => (name.to_owned(), None),
        };
        let (datatype, value) = proto::from_json(value, datatype).ok_or_else(|| {
            format!("{value} does not fit the datatype the device declared for {metric:?}")
        })?;
        let payload = proto::Payload {
            timestamp: Some(crate::clock::now_ms()),
            metrics: vec![proto::Metric {
                name: Some(metric),
                datatype: Some(datatype),
                value: Some(value),
                ..proto::Metric::default()
            }],
            ..proto::Payload::default()
        };
        let topic = match child {
            Some(child) => format!("{NAMESPACE}/{group}/DCMD/{edge}/{child}"),
            None => format!("{NAMESPACE}/{group}/NCMD/{edge}"),
        };
        Ok((topic, payload.encode_to_vec()))
    }
}

/// The store items of what a message said.
fn items(
    group: &str,
    edge: &str,
    device: Option<&str>,
    said: Said,
    received_ms: u64,
) -> Vec<Ingest> {
    let mut items = Vec::new();
    let id = id(group, edge, device);
    // Online before the readings of a BIRTH, offline after those of a DEATH (it has none).
    for (entity, online) in said.statuses.iter().filter(|(_, online)| *online) {
        items.push(status(group, edge, entity.as_deref(), *online, received_ms));
    }
    for (at, metrics) in said.readings {
        items.push(Ingest::Reading(NewReading {
            device: id.clone(),
            transport: Transport::Sparkplug,
            wire: Wire::Json,
            seq: None,
            boot: None,
            timestamp_ms: at.filter(|t| *t <= super::decode::MAX_TIMESTAMP_MS),
            received_ms,
            metrics,
        }));
    }
    for (entity, online) in said.statuses.iter().filter(|(_, online)| !*online) {
        items.push(status(group, edge, entity.as_deref(), *online, received_ms));
    }
    items
}

fn status(group: &str, edge: &str, device: Option<&str>, online: bool, received_ms: u64) -> Ingest {
    Ingest::Status(DeviceStatus {
        device: id(group, edge, device),
        transport: Transport::Sparkplug,
        online,
        reason: if online { "birth" } else { "death" },
        received_ms,
    })
}

#[cfg(test)]
mod tests;
