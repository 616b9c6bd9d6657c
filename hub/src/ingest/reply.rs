//! Messages from devices, both ways: what a message on a device topic becomes for the store, and
//! what the device is told once it is durable. The MQTT part is shared by the hub's own endpoint
//! and its client of an external broker, and [`answer`] by the serial lines too, so all follow
//! one rule: a device hears of a reading only after the commit that holds it.
//!
//! # What a device is told
//!
//! For a numbered reading, once its batch is durable, the ack of its run (boot): every seq up to
//! it is stored, or was named to the device as rejected or given up, in this answer or an earlier
//! one. So the answer that first passes a seq the hub gave up names it: an answer names the
//! given-up ranges above the last ack this connection told the device (all of them to a device it
//! told nothing yet, and in the answer to a retransmission, whose sender missed an answer). A
//! reading refused for its content is named in the answer to it, every time it is sent.
//!
//! - JSON devices: one [`JsonAck`] on `devices/{id}/ack`.
//! - Binary devices (MQTT `devices/{id}/down`, or the serial line): `Rejected`, then `GaveUp` (16
//!   ranges a message), then `Ack`.
//!
//! An answer that would say only what the device was last told is skipped, so a burst of readings
//! gets one ack, not one each; a retransmission or a rejected reading is always answered.

use std::collections::HashMap;

use device_protocol::json::{JsonAck, JsonRejected};
use device_protocol::{
    Ack, Downlink, GaveUp, MAX_RANGES, MAX_STR_LEN, Rejected, SeqRange, SeqRanges, TimeSync,
};

use super::Rejection;
use super::decode::{self, Topic};
use crate::clock::now_ms;
use crate::store::{Applied, Ingest, Outcome, Transport};

/// What the device is told once its message is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Nothing (a device without seq, or a skipped message).
    Nothing,
    /// The ack of the reading's run: `{"seq":n,..}` on `devices/{id}/ack`, or `Ack` on
    /// `devices/{id}/down`.
    Ack {
        /// The device.
        device: String,
        /// Whether it speaks the binary protocol.
        binary: bool,
    },
    /// A reading refused for its content: the device is told why, with its run's ack. The
    /// message was skipped, which the receiver counts and logs with `reason` and `detail`.
    Rejected {
        /// The device.
        device: String,
        /// Whether it speaks the binary protocol.
        binary: bool,
        /// Why it was skipped.
        reason: Rejection,
        /// What was wrong with it.
        detail: String,
    },
    /// `TimeSync` on `devices/{id}/down`, after a `Hello`.
    TimeSync(String),
}

impl Reply {
    /// Why the message was skipped, for a rejected reading.
    pub fn rejection(&self) -> Option<(Rejection, &str)> {
        match self {
            Reply::Rejected { reason, detail, .. } => Some((*reason, detail)),
            _ => None,
        }
    }
}

/// Decodes a message published on `topic` into a store item and the reply due once it is durable,
/// or the reason to skip it. A reading refused for its content that names its seq is an item
/// too ([`Ingest::Rejected`]), with a [`Reply::Rejected`] that carries the reason.
pub fn decode_message(
    topic: &str,
    payload: &[u8],
    max_payload: usize,
    received_ms: u64,
) -> Result<(Ingest, Reply), (Rejection, String)> {
    let topic = decode::parse_topic(topic).map_err(|r| (r, String::new()))?;
    let rejected = |device: &str, binary: bool, (reason, detail): (Rejection, String)| {
        let item = if binary {
            decode::rejected_uplink(device, payload, Transport::Mqtt, reason, received_ms)
        } else {
            decode::rejected_json(device, payload, reason, received_ms)
        };
        match item {
            Some(item) => Ok((
                item,
                Reply::Rejected {
                    device: device.to_owned(),
                    binary,
                    reason,
                    detail,
                },
            )),
            None => Err((reason, detail)),
        }
    };
    match topic {
        Topic::Telemetry(device) => {
            match decode::json_telemetry(device, payload, max_payload, received_ms) {
                Ok(r) => {
                    let reply = if r.seq.is_some() {
                        Reply::Ack {
                            device: device.to_owned(),
                            binary: false,
                        }
                    } else {
                        Reply::Nothing
                    };
                    Ok((Ingest::Reading(r), reply))
                }
                Err(refused) => rejected(device, false, refused),
            }
        }
        Topic::Up(device) => match decode::mqtt_uplink(device, payload, max_payload, received_ms) {
            Ok(item) => {
                let reply = match &item {
                    Ingest::Hello(_) => Reply::TimeSync(device.to_owned()),
                    Ingest::Reading(_) => Reply::Ack {
                        device: device.to_owned(),
                        binary: true,
                    },
                    Ingest::Rejected(_) | Ingest::CommandResult(_) | Ingest::Status(_) => {
                        Reply::Nothing
                    }
                };
                Ok((item, reply))
            }
            Err(refused) => rejected(device, true, refused),
        },
        Topic::CommandResults(device) => {
            decode::json_command_result(device, payload, max_payload, received_ms)
                .map(|item| (item, Reply::Nothing))
        }
        Topic::Status(device) => {
            decode::status(device, payload, received_ms).map(|item| (item, Reply::Nothing))
        }
    }
}

/// The last ack a device was told: of which boot, up to which seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Told {
    /// The boot.
    pub boot: Option<u32>,
    /// The seq.
    pub seq: u32,
}

/// What a device is told about one of its readings (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The run's boot.
    pub boot: Option<u32>,
    /// The run's ack.
    pub seq: u32,
    /// The reading answered, refused for its content, and why.
    pub rejected: Option<(u32, String)>,
    /// Given-up ranges the device is told of now, ascending.
    pub gave_up: Vec<SeqRange>,
}

/// What the device is told about the reading whose outcome is `applied` (`rejected`: why it was
/// refused, if it was), given the last ack it was `told`; `None` when there is nothing new.
pub fn answer(applied: &Applied, rejected: Option<&str>, told: Option<Told>) -> Option<Answer> {
    let ack = applied.ack.as_ref()?;
    let rejected = match (applied.outcome, rejected) {
        (Outcome::Rejected { seq }, Some(reason)) => Some((seq, cut(reason, MAX_STR_LEN))),
        _ => None,
    };
    // A duplicate means the device missed an answer: it is told everything again.
    let duplicate = matches!(applied.outcome, Outcome::Duplicate { .. });
    let told = told.filter(|t| t.boot == ack.boot && !duplicate);
    if rejected.is_none() && told.is_some_and(|t| t.seq == ack.seq) {
        return None;
    }
    let gave_up = ack
        .gave_up
        .iter()
        .filter(|r| told.is_none_or(|t| r.last > t.seq))
        .copied()
        .collect();
    Some(Answer {
        boot: ack.boot,
        seq: ack.seq,
        rejected,
        gave_up,
    })
}

impl Answer {
    /// What it tells the device from now on.
    pub fn told(&self) -> Told {
        Told {
            boot: self.boot,
            seq: self.seq,
        }
    }

    /// The JSON payload for `devices/{id}/ack`.
    pub fn json(&self) -> Vec<u8> {
        JsonAck {
            seq: self.seq,
            boot: self.boot,
            rejected: self.rejected.as_ref().map(|(seq, reason)| JsonRejected {
                seq: *seq,
                reason: reason.clone(),
            }),
            gave_up: self.gave_up.iter().map(|r| [r.first, r.last]).collect(),
        }
        .to_json()
        .into_bytes()
    }

    /// The downlinks for a binary device, in the order they are sent: what the ack passes first.
    pub fn downlinks(&self) -> Vec<Downlink<'_>> {
        let mut out = Vec::new();
        if let Some((seq, reason)) = &self.rejected {
            out.push(Downlink::Rejected(Rejected {
                seq: *seq,
                boot: self.boot,
                reason,
            }));
        }
        for chunk in self.gave_up.chunks(MAX_RANGES) {
            let ranges: SeqRanges = chunk.iter().copied().collect();
            out.push(Downlink::GaveUp(GaveUp {
                boot: self.boot,
                ranges,
            }));
        }
        out.push(Downlink::Ack(Ack {
            seq: self.seq,
            boot: self.boot,
        }));
        out
    }
}

/// `text` cut to at most `max` bytes, on a char boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Messages for a device on one topic, sent in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMessage {
    /// Their topic.
    pub topic: String,
    /// Their payloads.
    pub payloads: Vec<Vec<u8>>,
    /// The device and the ack they tell it, if they answer a reading.
    pub ack: Option<(String, Told)>,
}

/// The messages telling the device of `reply` once its item was `applied`, if any are due. `told`
/// holds the last ack each device was given on this connection.
pub fn reply_message(
    reply: &Reply,
    applied: &[Applied],
    told: &HashMap<String, Told>,
) -> Option<DeviceMessage> {
    let (device, binary, rejected) = match reply {
        Reply::Nothing => return None,
        Reply::TimeSync(device) => {
            let sync = Downlink::TimeSync(TimeSync { unix_ms: now_ms() });
            return Some(DeviceMessage {
                topic: format!("devices/{device}/down"),
                payloads: vec![sync.to_vec().ok()?],
                ack: None,
            });
        }
        Reply::Ack { device, binary } => (device, *binary, None),
        Reply::Rejected {
            device,
            binary,
            detail,
            ..
        } => (device, *binary, Some(detail.as_str())),
    };
    let answer = answer(applied.first()?, rejected, told.get(device).copied())?;
    let (topic, payloads) = if binary {
        let payloads = answer
            .downlinks()
            .iter()
            .filter_map(|message| message.to_vec().ok())
            .collect();
        (format!("devices/{device}/down"), payloads)
    } else {
        (format!("devices/{device}/ack"), vec![answer.json()])
    };
    Some(DeviceMessage {
        topic,
        payloads,
        ack: Some((device.clone(), answer.told())),
    })
}

/// Devices whose last ack is remembered; past this the memory is dropped (acks are then resent).
pub const MAX_TOLD_DEVICES: usize = 100_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ReadingSeq, RunAck};

    fn applied(outcome: Outcome, boot: Option<u32>, seq: u32, gave_up: &[(u32, u32)]) -> Applied {
        Applied {
            outcome,
            ack: Some(RunAck {
                boot,
                seq,
                gave_up: gave_up
                    .iter()
                    .map(|&(first, last)| SeqRange { first, last })
                    .collect(),
            }),
            new_device: false,
            given_up: 0,
        }
    }

    fn stored(seq: u32) -> Outcome {
        Outcome::Stored {
            offset: 0,
            seq: ReadingSeq::Device { boot: None, seq },
        }
    }

    #[test]
    fn an_answer_names_the_ranges_given_up_since_the_device_was_last_told() {
        let a = applied(stored(9), None, 8, &[(1, 1), (3, 3), (5, 6)]);
        // Told nothing yet: every range.
        let first = answer(&a, None, None).unwrap();
        assert_eq!(first.gave_up.len(), 3);
        assert_eq!(
            first.json(),
            br#"{"seq":8,"gave_up":[[1,1],[3,3],[5,6]]}"#.to_vec()
        );
        // Told up to 3: only what lies above.
        let told = Some(Told { boot: None, seq: 3 });
        let next = answer(&a, None, told).unwrap();
        assert_eq!(next.gave_up, vec![SeqRange { first: 5, last: 6 }]);
        // Told this very ack: nothing to say.
        assert_eq!(answer(&a, None, Some(first.told())), None);
        // But a retransmission is answered, with everything.
        let dup = applied(Outcome::Duplicate { seq: 2 }, None, 8, &[(1, 1)]);
        assert_eq!(
            answer(&dup, None, Some(first.told()))
                .unwrap()
                .gave_up
                .len(),
            1
        );
        // An ack of another boot says nothing about this one.
        let other = applied(stored(0), Some(2), 8, &[(1, 1)]);
        let told_other = answer(&other, None, Some(Told { boot: None, seq: 8 })).unwrap();
        assert_eq!((told_other.boot, told_other.gave_up.len()), (Some(2), 1));
    }

    #[test]
    fn a_rejected_reading_is_always_named_with_its_reason() {
        let a = applied(Outcome::Rejected { seq: 1 }, Some(4), 1, &[]);
        let told = Some(Told {
            boot: Some(4),
            seq: 1,
        });
        let long = "é".repeat(200);
        let answer = answer(&a, Some(&long), told).unwrap();
        let (seq, reason) = answer.rejected.clone().unwrap();
        assert_eq!(seq, 1);
        assert!(reason.len() <= MAX_STR_LEN && long.starts_with(&reason));
        let downlinks = answer.downlinks();
        assert!(matches!(
            downlinks[0],
            Downlink::Rejected(Rejected {
                seq: 1,
                boot: Some(4),
                ..
            })
        ));
        assert_eq!(
            downlinks[1],
            Downlink::Ack(Ack {
                seq: 1,
                boot: Some(4)
            })
        );
        for message in &downlinks {
            assert!(message.to_vec().is_ok(), "{message:?} is valid");
        }
    }

    #[test]
    fn many_ranges_go_to_a_binary_device_in_several_gave_up_messages() {
        let ranges: Vec<(u32, u32)> = (0..40).map(|i| (2 * i + 1, 2 * i + 1)).collect();
        let a = applied(stored(100), None, 80, &ranges);
        let answer = answer(&a, None, None).unwrap();
        let downlinks = answer.downlinks();
        assert_eq!(downlinks.len(), 4, "16 + 16 + 8 ranges, then the ack");
        assert!(matches!(&downlinks[2], Downlink::GaveUp(g) if g.ranges.len() == 8));
        assert!(matches!(downlinks[3], Downlink::Ack(Ack { seq: 80, .. })));
    }

    #[test]
    fn a_json_reading_refused_for_its_content_is_settled_and_answered() {
        let long = "x".repeat(300);
        let payload = format!(r#"{{"seq":1,"metrics":{{"s":"{long}"}}}}"#);
        let (item, reply) =
            decode_message("devices/d/telemetry", payload.as_bytes(), 4096, 5).unwrap();
        assert!(matches!(item, Ingest::Rejected(ref r) if r.seq == 1 && r.boot.is_none()));
        let (reason, detail) = reply.rejection().unwrap();
        assert_eq!(reason, Rejection::BadPayload);
        assert!(detail.contains("300 bytes"), "{detail}");
        // Without a seq there is no reading to name: skipped as before.
        let flat = format!(r#"{{"s":"{long}"}}"#);
        assert!(decode_message("devices/d/telemetry", flat.as_bytes(), 4096, 5).is_err());
        // Too large to read: skipped, not answered.
        assert_eq!(
            decode_message("devices/d/telemetry", payload.as_bytes(), 64, 5)
                .unwrap_err()
                .0,
            Rejection::TooLarge
        );
    }
}
