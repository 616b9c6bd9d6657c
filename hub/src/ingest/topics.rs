//! Which MQTT topics the hub reads, and what a message on one becomes: the hub's own device
//! topics (`devices/{id}/...`, see [`super::reply`]) first, then Sparkplug B's (`spBv1.0/...`,
//! [`super::sparkplug`]) when `[mqtt.sparkplug]` is enabled, then the mapped topics of
//! `[[mqtt.map]]` ([`super::mapped`]). Shared by the hub's endpoint and its client of an external
//! broker, so both read the same topics the same way; the client subscribes to [`DeviceTopics::filters`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::mapped::{Mapped, TopicMaps};
use super::reply::{Reply, decode_message};
use super::sparkplug::Sparkplug;
use super::{MqttDownlink, Rejection, decode};
use crate::store::Ingest;

/// The topics the hub reads.
#[derive(Debug, Default)]
pub struct DeviceTopics {
    maps: TopicMaps,
    stats: MappedStats,
    sparkplug: Option<Arc<Sparkplug>>,
}

/// Outcomes of messages on mapped topics, for `/metrics`.
#[derive(Debug, Default)]
pub struct MappedStats {
    readings: AtomicU64,
    statuses: AtomicU64,
    refused: [AtomicU64; Rejection::ALL.len()],
}

impl MappedStats {
    fn count(&self, outcome: &Result<Mapped, (Rejection, String)>) {
        let counter = match outcome {
            Ok(Mapped::Reading(_)) => &self.readings,
            Ok(Mapped::Status(_)) => &self.statuses,
            Err((reason, _)) => &self.refused[*reason as usize],
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Readings decoded from mapped topics.
    pub fn readings(&self) -> u64 {
        self.readings.load(Ordering::Relaxed)
    }

    /// Messages on mapped topics refused for `reason`.
    pub fn refused(&self, reason: Rejection) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }
}

impl crate::exposition::Collect for DeviceTopics {
    fn collect(
        &self,
        out: &mut crate::exposition::Exposition,
    ) -> Result<(), crate::exposition::CollectError> {
        let name = "hub_mapped_messages_total";
        let stats = &self.stats;
        out.family(
            name,
            "counter",
            "Messages on mapped topics ([[mqtt.map]]) by outcome: a reading, a status, or the reason they were refused (bad_device_id: the topic's device name is not a valid id).",
        );
        out.sample(name, "outcome=\"reading\"", stats.readings());
        out.sample(
            name,
            "outcome=\"status\"",
            stats.statuses.load(Ordering::Relaxed),
        );
        for reason in [
            Rejection::BadDeviceId,
            Rejection::BadPayload,
            Rejection::TooLarge,
        ] {
            out.sample(
                name,
                &format!("outcome=\"{}\"", reason.name()),
                stats.refused(reason),
            );
        }
        if let Some(sparkplug) = &self.sparkplug {
            sparkplug.stats().render(out);
        }
        Ok(())
    }
}

impl DeviceTopics {
    /// The hub's own topics, `maps`, and Sparkplug B's when `sparkplug`.
    pub fn new(maps: TopicMaps, sparkplug: bool) -> Self {
        DeviceTopics {
            maps,
            stats: MappedStats::default(),
            sparkplug: sparkplug.then(|| Arc::new(Sparkplug::default())),
        }
    }

    /// The counters of mapped topics.
    pub fn stats(&self) -> &MappedStats {
        &self.stats
    }

    /// The Sparkplug B host, when enabled.
    pub fn sparkplug(&self) -> Option<Arc<Sparkplug>> {
        self.sparkplug.clone()
    }

    /// Where messages to devices go (Sparkplug's Rebirth requests); set by the MQTT transport.
    pub fn attach(&self, downlink: MqttDownlink) {
        if let Some(sparkplug) = &self.sparkplug {
            sparkplug.attach(downlink);
        }
    }

    /// The filters a subscription to an external broker needs: the hub's own, then the maps'.
    pub fn filters(&self) -> Vec<String> {
        [
            decode::TELEMETRY_FILTER,
            decode::UP_FILTER,
            decode::COMMAND_RESULTS_FILTER,
            decode::STATUS_FILTER,
        ]
        .map(str::to_owned)
        .into_iter()
        .chain(
            self.sparkplug
                .as_ref()
                .map(|_| super::sparkplug::FILTER.to_owned()),
        )
        .chain(self.maps.filters())
        .collect()
    }

    /// What a message published on `topic` becomes (no item, or several for Sparkplug), with
    /// the reply due once it is durable; or why it is skipped.
    pub fn decode(
        &self,
        topic: &str,
        payload: &[u8],
        max_payload: usize,
        received_ms: u64,
    ) -> Result<(Vec<Ingest>, Reply), (Rejection, String)> {
        let detail = match decode_message(topic, payload, max_payload, received_ms) {
            Err((Rejection::BadTopic, detail)) => detail,
            decoded => return decoded.map(|(item, reply)| (vec![item], reply)),
        };
        if let Some(sparkplug) = &self.sparkplug
            && let Some(decoded) = sparkplug.decode(topic, payload, max_payload, received_ms)
        {
            return decoded.map(|items| (items, Reply::Nothing));
        }
        match self.maps.decode(topic, payload, max_payload, received_ms) {
            Some(mapped) => {
                self.stats.count(&mapped);
                mapped.map(|m| (vec![m.into_item()], Reply::Nothing))
            }
            None => Err((Rejection::BadTopic, detail)),
        }
    }
}
