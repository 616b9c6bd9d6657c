//! Letting a CONNECT in: who the client is, its client id and session, its will.

use bytes::Bytes;
use rumqttc::mqttbytes::Protocol;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode};

use super::super::router::{self};
use super::super::{Context, Identity};
use crate::clock::now_ms;
use crate::ingest::decode;
use crate::store::writer::Submission;

/// What a CONNECT was admitted as.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Admitted {
    pub(super) client_id: String,
    pub(super) clean: bool,
    pub(super) keep_alive: u16,
    /// The topic and payload of the will.
    pub(super) will: Option<(String, Bytes)>,
}

/// Checks a CONNECT. A device (TLS, certificate) connects as itself: its client id is its device
/// id (an empty one becomes it). A local client may take any client id; an empty one gets a
/// fresh id for a clean session and is refused for a persistent one (MQTT 3.1.1 3.1.3-8). A
/// device's will must be its own status (`devices/{id}/status`); a local client's may be on any
/// topic (Tasmota, Shelly and Zigbee2MQTT always set theirs), read like any message it publishes.
pub(super) fn admit(
    identity: &Identity,
    connection: u64,
    connect: Connect,
) -> Result<Admitted, (ConnectReturnCode, &'static str)> {
    if !matches!(connect.protocol, Protocol::V4 | Protocol::V5) {
        return Err((
            ConnectReturnCode::RefusedProtocolVersion,
            "only MQTT 3.1.1 and 5 are served",
        ));
    }
    let client_id = match identity {
        Identity::Device(device) => {
            if !connect.client_id.is_empty() && connect.client_id != *device {
                return Err((
                    ConnectReturnCode::NotAuthorized,
                    "the client id is not the certificate's device id",
                ));
            }
            device.clone()
        }
        Identity::Local => {
            if connect.client_id.is_empty() {
                if !connect.clean_session {
                    return Err((
                        ConnectReturnCode::BadClientId,
                        "an empty client id needs a clean session",
                    ));
                }
                format!("hub-auto-{connection}")
            } else {
                connect.client_id.clone()
            }
        }
    };
    let will = match (&connect.last_will, identity) {
        (None, _) => None,
        (Some(will), Identity::Local) => {
            if !router::is_valid_filter(&will.topic) || will.topic.contains(['+', '#']) {
                return Err((
                    ConnectReturnCode::NotAuthorized,
                    "a will needs a valid topic",
                ));
            }
            Some((will.topic.clone(), will.message.clone()))
        }
        (Some(will), Identity::Device(own)) => match decode::parse_topic(&will.topic) {
            Ok(decode::Topic::Status(device)) if device == own => {
                Some((will.topic.clone(), will.message.clone()))
            }
            _ => {
                return Err((
                    ConnectReturnCode::NotAuthorized,
                    "a device's will must be on its own status topic devices/{id}/status",
                ));
            }
        },
    };
    Ok(Admitted {
        client_id,
        clean: connect.clean_session,
        keep_alive: connect.keep_alive,
        will,
    })
}

/// Hands a will to the store writer like a message the client published (a device's status,
/// mostly); nothing waits for it.
pub(super) async fn submit_will(context: &Context, topic: &str, payload: &[u8]) {
    let decoded = context
        .topics
        .decode(topic, payload, context.settings.max_payload, now_ms());
    match decoded {
        Ok((items, _)) if items.is_empty() => {}
        Ok((items, _)) => {
            let submission = Submission {
                items,
                done_tx: None,
            };
            if context.submissions_tx.send(submission).await.is_ok() {
                context.stats.count_accepted();
            }
        }
        Err((reason, detail)) => context.stats.reject(reason, topic, &detail),
    }
}
