//! MQTT messages from devices, both ways: what a message on a device topic becomes for the store,
//! and what the device is told once it is durable. Shared by the hub's own MQTT endpoint and its
//! client of an external broker, so both follow one rule: a device hears of a reading only after
//! the commit that holds it.

use std::collections::HashMap;

use device_protocol::{Ack, Downlink, TimeSync};

use super::decode::{self, Topic};
use super::{Rejection, now_ms};
use crate::store::{Applied, Ingest, Outcome};

/// What the device is told once its message is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Nothing (a device without seq, or a skipped message).
    Nothing,
    /// `{"seq":n}` on `devices/{id}/ack`.
    Json(String),
    /// `Ack` on `devices/{id}/down`.
    Binary(String),
    /// `TimeSync` on `devices/{id}/down`, after a `Hello`.
    TimeSync(String),
}

/// Decodes a message published on `topic` into a store item and the reply due once it is durable,
/// or the reason to skip it.
pub fn decode_message(
    topic: &str,
    payload: &[u8],
    max_payload: usize,
    received_ms: u64,
) -> Result<(Ingest, Reply), (Rejection, String)> {
    let topic = decode::parse_topic(topic).map_err(|r| (r, String::new()))?;
    match topic {
        Topic::Telemetry(device) => {
            decode::json_telemetry(device, payload, max_payload, received_ms).map(|r| {
                let reply = if r.seq.is_some() {
                    Reply::Json(device.to_owned())
                } else {
                    Reply::Nothing
                };
                (Ingest::Reading(r), reply)
            })
        }
        Topic::Up(device) => {
            decode::mqtt_uplink(device, payload, max_payload, received_ms).map(|item| {
                let reply = match &item {
                    Ingest::Hello(_) => Reply::TimeSync(device.to_owned()),
                    Ingest::Reading(_) => Reply::Binary(device.to_owned()),
                    Ingest::CommandResult(_) | Ingest::Status(_) => Reply::Nothing,
                };
                (item, reply)
            })
        }
        Topic::CommandResults(device) => {
            decode::json_command_result(device, payload, max_payload, received_ms)
                .map(|item| (item, Reply::Nothing))
        }
        Topic::Status(device) => {
            decode::status(device, payload, received_ms).map(|item| (item, Reply::Nothing))
        }
    }
}

/// A message for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMessage {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The device and the ack this message tells it, if it is an ack.
    pub ack: Option<(String, u32)>,
}

/// The message telling the device of `reply` once its item was `applied`, if one is due. `told`
/// holds the last ack each device was given: a burst of readings gets one ack, not one each.
pub fn reply_message(
    reply: &Reply,
    applied: &[Applied],
    told: &HashMap<String, u32>,
) -> Option<DeviceMessage> {
    let (device, binary) = match reply {
        Reply::Nothing => return None,
        Reply::TimeSync(device) => {
            let sync = Downlink::TimeSync(TimeSync { unix_ms: now_ms() });
            return Some(DeviceMessage {
                topic: format!("devices/{device}/down"),
                payload: sync.to_vec().ok()?,
                ack: None,
            });
        }
        Reply::Json(device) => (device, false),
        Reply::Binary(device) => (device, true),
    };
    let first = applied.first()?;
    let ack = first.ack?;
    // A duplicate means the device missed an ack: always answer it. Otherwise skip an ack the
    // device was already given.
    let duplicate = matches!(first.outcome, Outcome::Duplicate { .. });
    if !duplicate && told.get(device) == Some(&ack) {
        return None;
    }
    let (topic, payload) = if binary {
        let message = Downlink::Ack(Ack {
            seq: ack,
            boot: None,
        });
        (format!("devices/{device}/down"), message.to_vec().ok()?)
    } else {
        let json = device_protocol::json::JsonAck::new(ack, None)
            .to_json()
            .into_bytes();
        (format!("devices/{device}/ack"), json)
    };
    Some(DeviceMessage {
        topic,
        payload,
        ack: Some((device.clone(), ack)),
    })
}

/// Devices whose last ack is remembered; past this the memory is dropped (acks are then resent).
pub const MAX_TOLD_DEVICES: usize = 100_000;
