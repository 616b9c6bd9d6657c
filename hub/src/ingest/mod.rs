//! Ingest: readings arrive from devices and go to the store writer.
//!
//! - `endpoint`: the hub's own MQTT endpoint devices connect to (plain TCP on loopback, TLS with
//!   device certificates on the network); its PUBACK means durable.
//! - `mqtt`: the hub's MQTT client (rumqttc) of an external broker, subscribed to device topics;
//!   it acks a QoS 1 message to the broker only once its reading is durable.
//! - `reply`: what an MQTT message becomes for the store, and what its device is told after.
//! - `decode`: turns what devices send into store items, or a reason to skip it.
//! - `serial`: serial ports with device-protocol frames; acks written back on the line.
//! - `mapped`: existing MQTT topic layouts (`[[mqtt.map]]`: Tasmota, Shelly, Zigbee2MQTT).
//! - `sparkplug`: Sparkplug B edge nodes (`[mqtt.sparkplug]`), the hub as their host application.
//! - `topics`: which MQTT topics the hub reads and what their messages become, for both MQTT
//!   transports.
//! - `modbus`: Modbus RTU and TCP buses, polled; writes to their devices as commands.

//!
//! Bad input is counted by reason and logged at most once a second per reason; it never stops
//! ingest.

pub mod decode;
pub mod downlink;
pub mod endpoint;
pub mod mapped;
pub mod metrics;
pub mod modbus;
pub mod mqtt;
pub mod reply;
pub mod serial;
pub mod sparkplug;
pub mod topics;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a message was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The topic is not one the hub understands.
    BadTopic,
    /// The device id in the topic is not 1 to 64 of `[A-Za-z0-9._-]`.
    BadDeviceId,
    /// The payload is larger than `ingest.max_payload`.
    TooLarge,
    /// The payload is not valid telemetry or not a valid message.
    BadPayload,
    /// A serial frame was garbled (COBS, CRC) or too long.
    BadFrame,
    /// A serial line sent telemetry before saying which device it is.
    UnknownDevice,
    /// A message this hub version does not handle.
    Unsupported,
    /// A device published to a topic that is not one of its own (MQTT endpoint).
    ForbiddenTopic,
    /// A client subscribed to a filter that is not one of its own, or not valid (MQTT endpoint).
    ForbiddenFilter,
    /// A CONNECT named another client id or will topic than allowed (MQTT endpoint).
    ForbiddenConnect,
    /// A CONNECT's user name and password were refused (MQTT endpoint's TLS listener).
    BadLogin,
}

impl Rejection {
    /// All reasons, in a fixed order.
    pub const ALL: [Rejection; 11] = [
        Rejection::BadTopic,
        Rejection::BadDeviceId,
        Rejection::TooLarge,
        Rejection::BadPayload,
        Rejection::BadFrame,
        Rejection::UnknownDevice,
        Rejection::Unsupported,
        Rejection::ForbiddenTopic,
        Rejection::ForbiddenFilter,
        Rejection::ForbiddenConnect,
        Rejection::BadLogin,
    ];

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Rejection::BadTopic => "bad_topic",
            Rejection::BadDeviceId => "bad_device_id",
            Rejection::TooLarge => "too_large",
            Rejection::BadPayload => "bad_payload",
            Rejection::BadFrame => "bad_frame",
            Rejection::UnknownDevice => "unknown_device",
            Rejection::Unsupported => "unsupported",
            Rejection::ForbiddenTopic => "forbidden_topic",
            Rejection::ForbiddenFilter => "forbidden_filter",
            Rejection::ForbiddenConnect => "forbidden_connect",
            Rejection::BadLogin => "bad_login",
        }
    }
}

/// Why a reading that was accepted was lost after all (only ever a QoS 0 one, which has no way
/// to be sent again: anything acknowledged is never dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The commit holding it failed (disk full, store refusing).
    CommitFailed,
}

impl DropReason {
    /// All reasons, in a fixed order.
    pub const ALL: [DropReason; 1] = [DropReason::CommitFailed];

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::CommitFailed => "commit_failed",
        }
    }
}

/// Ingest counters, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Messages accepted and handed to the store writer.
    pub accepted: AtomicU64,
    /// Device connections open now (the MQTT endpoint's).
    pub connections: AtomicU64,
    rejected: [AtomicU64; Rejection::ALL.len()],
    last_logged: Mutex<[Option<Instant>; Rejection::ALL.len()]>,
    dropped: [AtomicU64; DropReason::ALL.len()],
    last_drop_logged: Mutex<Option<Instant>>,
}

/// Least time between two log lines for the same rejection reason.
const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl IngestStats {
    /// Counts a skipped message and logs why, at most once per interval per reason.
    pub fn reject(&self, reason: Rejection, topic: &str, detail: &str) {
        let i = reason as usize;
        let total = self.rejected[i].fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let due = match self.last_logged.lock() {
            Ok(mut last) => {
                let due = last[i].is_none_or(|t| now.duration_since(t) >= REJECTION_LOG_INTERVAL);
                if due {
                    last[i] = Some(now);
                }
                due
            }
            Err(_) => true,
        };
        if due {
            // The topic is cut so a hostile one cannot flood the log.
            let topic: String = topic.chars().take(120).collect();
            tracing::warn!(reason = reason.name(), %topic, detail, total, "skipped a device message");
        }
    }

    /// Counts a message handed to the store writer.
    pub fn count_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted reading that was lost after all, and says so at most once a second.
    pub fn count_dropped(&self, reason: DropReason) {
        let total = self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let due = match self.last_drop_logged.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|t| now.duration_since(t) >= REJECTION_LOG_INTERVAL);
                if due {
                    *last = Some(now);
                }
                due
            }
            Err(_) => true,
        };
        if due {
            tracing::warn!(
                reason = reason.name(),
                total,
                "dropped a QoS 0 reading that could not be stored"
            );
        }
    }

    /// How many accepted readings were lost for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// How many messages were skipped for `reason`.
    pub fn rejected(&self, reason: Rejection) -> u64 {
        self.rejected[reason as usize].load(Ordering::Relaxed)
    }
}

/// Why a message for a device (a command) was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DownlinkError {
    /// The transport is not connected (broker link down, serial line closed).
    #[error("the device's transport is not connected")]
    NotConnected,
    /// The transport's outgoing queue is full.
    #[error("the device's transport is busy")]
    Busy,
    /// The message does not fit the transport's frame.
    #[error("the message is too large for the transport")]
    TooLarge,
}

/// What became of a command that the MQTT endpoint took with its delivery tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandHandoff {
    /// The device acknowledged it (PUBACK): delivered.
    Delivered(u64),
    /// Its session ended before the device acknowledged it: it may be sent again.
    Lost(u64),
}

/// How a transport took a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// Delivered as far as the hub can tell: written to the line, or acknowledged by the
    /// external broker's session.
    Delivered,
    /// Queued for the device; a [`CommandHandoff`] tells when it acknowledges it or it is lost.
    Tracked,
}

/// Sends messages to devices over MQTT: through the hub's own endpoint, or its session on an
/// external broker. Never waits.
#[derive(Clone)]
pub enum MqttDownlink {
    /// The hub's endpoint: to the sessions subscribed to the topic.
    Endpoint(endpoint::EndpointDownlink),
    /// The hub's client of an external broker.
    Broker(mqtt::BrokerDownlink),
}

impl std::fmt::Debug for MqttDownlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MqttDownlink::Endpoint(_) => "MqttDownlink::Endpoint",
            MqttDownlink::Broker(_) => "MqttDownlink::Broker",
        })
    }
}

impl MqttDownlink {
    /// Queues `payload` on `topic` at `qos` (at most 1).
    pub fn publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        qos: rumqttc::QoS,
    ) -> Result<(), DownlinkError> {
        match self {
            MqttDownlink::Endpoint(endpoint) => endpoint.publish(topic, payload, qos),
            MqttDownlink::Broker(broker) => broker.publish(topic, payload, qos),
        }
    }

    /// Queues command `command` (`payload`, on `topic`) at QoS 1.
    pub fn publish_command(
        &self,
        topic: String,
        payload: Vec<u8>,
        command: u64,
    ) -> Result<Handed, DownlinkError> {
        match self {
            MqttDownlink::Endpoint(endpoint) => endpoint.publish_command(topic, payload, command),
            MqttDownlink::Broker(broker) => broker
                .publish(topic, payload, rumqttc::QoS::AtLeastOnce)
                .map(|()| Handed::Delivered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_counted_on_its_own() {
        let stats = IngestStats::default();
        // Each variant's number is its place in ALL (the counters are indexed by it).
        for (i, reason) in Rejection::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "{}", reason.name());
            for _ in 0..=i {
                stats.reject(reason, "devices/x/telemetry", "test");
            }
        }
        for (i, reason) in Rejection::ALL.into_iter().enumerate() {
            assert_eq!(stats.rejected(reason), i as u64 + 1, "{}", reason.name());
        }
        // The last variant: adding one after it without listing it in ALL fails here.
        assert_eq!(Rejection::BadLogin as usize + 1, Rejection::ALL.len());
    }
}
