//! How a command reaches its device: encoded as the device's wire wants it (JSON on MQTT, or a
//! `Downlink::Command` in postcard, framed on a serial line, a write on a Modbus bus, or a
//! Sparkplug B DCMD/NCMD) and handed to its transport. The command dispatcher decides what to
//! send and when; this decides how.

use std::sync::Arc;

use device_protocol::{Downlink, Field, Fields, MAX_FRAME_LEN, Value, encode_frame};
use serde_json::{Map, Value as Json};

use super::modbus::ModbusDownlink;
use super::serial::SerialDownlink;
use super::sparkplug::Sparkplug;
use super::{DownlinkError, Handed, MqttDownlink};
use crate::store::{Transport, Wire};

/// The transports commands can leave by, given to the dispatcher by `app.rs`.
#[derive(Clone, Default)]
pub struct Transports {
    /// The hub's MQTT endpoint, or its session on an external broker.
    pub mqtt: Option<MqttDownlink>,
    /// Each serial line.
    pub serial: Vec<SerialDownlink>,
    /// Each Modbus bus.
    pub modbus: Vec<ModbusDownlink>,
    /// The Sparkplug B host (its commands leave through `mqtt`), when enabled.
    pub sparkplug: Option<Arc<Sparkplug>>,
}

/// Why a command could not be sent now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The transport is not connected or busy: try again later.
    Later,
    /// It can never be sent (the reason).
    Never(String),
}

/// A command for one device, as it is sent.
#[derive(Debug, Clone, Copy)]
pub struct CommandOut<'a> {
    /// The device.
    pub device: &'a str,
    /// How the device encodes its messages.
    pub wire: &'a Wire,
    /// The transport it last used.
    pub transport: Transport,
    /// The command's id.
    pub id: u64,
    /// Its name.
    pub name: &'a str,
    /// Its arguments.
    pub args: &'a Map<String, Json>,
}

impl Transports {
    /// Whether a command fits the device's wire and transport (checked when it is asked for, not
    /// at delivery); why not. A Modbus device's write must name a writable point of its map; a
    /// Sparkplug B command sets one metric.
    pub fn check_command(
        &self,
        device: &str,
        wire: &Wire,
        transport: Transport,
        name: &str,
        args: &Map<String, Json>,
    ) -> Result<(), String> {
        match transport {
            Transport::Modbus => self.modbus_bus(device)?.check(device, name, args),
            Transport::Sparkplug => match (args.get("value"), args.len()) {
                (Some(Json::Bool(_) | Json::Number(_) | Json::String(_)), 1) => Ok(()),
                _ => Err(
                    "a Sparkplug B command sets one metric: {\"name\": METRIC, \"args\": {\"value\": a number, bool or string}}"
                        .into(),
                ),
            },
            _ => message_for(wire, transport, 0, name, args).map(drop),
        }
    }

    /// The Modbus bus `device` is on.
    fn modbus_bus(&self, device: &str) -> Result<&ModbusDownlink, String> {
        self.modbus
            .iter()
            .find(|bus| bus.serves(device))
            .ok_or_else(|| format!("device {device:?} is on no configured [[modbus]] bus"))
    }

    /// Encodes `command` for its device and hands it to the device's transport.
    pub fn send_command(&self, command: CommandOut<'_>) -> Result<Handed, Refused> {
        if command.transport == Transport::Modbus {
            let bus = self.modbus_bus(command.device).map_err(Refused::Never)?;
            return bus.send(command.device, command.id, command.name, command.args);
        }
        if command.transport == Transport::Sparkplug {
            return self.send_sparkplug(command);
        }
        let message = message_for(
            command.wire,
            command.transport,
            command.id,
            command.name,
            command.args,
        )
        .map_err(Refused::Never)?;
        let sent = match (command.transport, message) {
            (Transport::Serial, Message::Binary(bytes)) => {
                let line = self
                    .serial
                    .iter()
                    .find(|line| line.device().as_deref() == Some(command.device));
                match line {
                    Some(line) => line.send_encoded(&bytes).map(|()| Handed::Delivered),
                    None => Err(DownlinkError::NotConnected),
                }
            }
            (_, message) => match &self.mqtt {
                Some(mqtt) => {
                    let (topic, payload) = match message {
                        Message::Json(text) => (
                            format!("devices/{}/commands", command.device),
                            text.into_bytes(),
                        ),
                        Message::Binary(bytes) => {
                            (format!("devices/{}/down", command.device), bytes)
                        }
                    };
                    mqtt.publish_command(topic, payload, command.id)
                }
                None => Err(DownlinkError::NotConnected),
            },
        };
        match sent {
            Ok(handed) => Ok(handed),
            Err(DownlinkError::TooLarge) => Err(Refused::Never(
                "the command does not fit the device's transport".into(),
            )),
            Err(DownlinkError::NotConnected | DownlinkError::Busy) => Err(Refused::Later),
        }
    }
}

impl Transports {
    /// A command for a Sparkplug B device or edge node, as DCMD or NCMD.
    fn send_sparkplug(&self, command: CommandOut<'_>) -> Result<Handed, Refused> {
        let Some(sparkplug) = &self.sparkplug else {
            return Err(Refused::Never(
                "Sparkplug B is not enabled ([mqtt.sparkplug])".into(),
            ));
        };
        let (topic, payload) = sparkplug
            .command(command.device, command.name, command.args)
            .map_err(Refused::Never)?;
        match &self.mqtt {
            Some(mqtt) => match mqtt.publish_command(topic, payload, command.id) {
                Ok(handed) => Ok(handed),
                Err(DownlinkError::TooLarge) => Err(Refused::Never(
                    "the command does not fit the device's transport".into(),
                )),
                Err(DownlinkError::NotConnected | DownlinkError::Busy) => Err(Refused::Later),
            },
            None => Err(Refused::Later),
        }
    }
}

/// A command encoded for a device.
#[derive(Debug, PartialEq)]
enum Message {
    /// `{"id":..,"name":..,"args":{..}}` for `devices/{id}/commands`.
    Json(String),
    /// A `Downlink::Command`, postcard.
    Binary(Vec<u8>),
}

/// Encodes a command the way `wire` and `transport` want it, or says why it cannot be.
fn message_for(
    wire: &Wire,
    transport: Transport,
    id: u64,
    name: &str,
    args: &Map<String, Json>,
) -> Result<Message, String> {
    if *wire == Wire::Json && transport == Transport::Mqtt {
        let command = device_protocol::json::JsonCommand {
            id,
            name: name.to_owned(),
            args: args.clone(),
        };
        let text = serde_json::to_string(&command).map_err(|e| e.to_string())?;
        if text.len() > MAX_JSON_COMMAND {
            return Err(format!(
                "the command is {} bytes as JSON, more than {MAX_JSON_COMMAND}",
                text.len()
            ));
        }
        return Ok(Message::Json(text));
    }
    let mut fields = Fields::new();
    for (key, value) in args {
        let value = match value {
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Value::I64(i),
                None => Value::F64(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => Value::Str(s),
            _ => {
                return Err(format!(
                    "argument {key:?}: this device speaks the binary protocol, whose arguments are numbers, booleans and strings"
                ));
            }
        };
        fields.push(Field { name: key, value }).map_err(|_| {
            format!(
                "a binary device takes at most {} arguments",
                fields.capacity()
            )
        })?;
    }
    let message = Downlink::Command(device_protocol::Command {
        command_id: id,
        name,
        args: fields,
    });
    let bytes = message
        .to_vec()
        .map_err(|e| format!("the command cannot be encoded for this device: {e}"))?;
    let mut frame = [0u8; MAX_FRAME_LEN];
    encode_frame(&message, &mut frame)
        .map_err(|_| format!("the command is larger than a {MAX_FRAME_LEN}-byte frame"))?;
    Ok(Message::Binary(bytes))
}

/// Largest JSON command published to a device.
const MAX_JSON_COMMAND: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Json) -> Map<String, Json> {
        match v {
            Json::Object(m) => m,
            _ => panic!(),
        }
    }

    #[test]
    fn commands_are_encoded_for_the_device_wire() {
        let a = args(json!({"level": 3, "ratio": 0.5, "on": true, "mode": "eco"}));
        match message_for(&Wire::Json, Transport::Mqtt, 7, "set", &a).unwrap() {
            Message::Json(text) => {
                let back: Json = serde_json::from_str(&text).unwrap();
                assert_eq!(
                    back,
                    json!({"id": 7, "name": "set", "args": {"level": 3, "ratio": 0.5, "on": true, "mode": "eco"}})
                );
            }
            other => panic!("{other:?}"),
        }
        for (wire, transport) in [
            (Wire::Binary, Transport::Mqtt),
            (Wire::Binary, Transport::Serial),
            (Wire::Json, Transport::Serial),
        ] {
            let Message::Binary(bytes) = message_for(&wire, transport, 7, "set", &a).unwrap()
            else {
                panic!("binary expected");
            };
            match Downlink::decode(&bytes).unwrap() {
                Downlink::Command(c) => {
                    assert_eq!((c.command_id, c.name, c.args.len()), (7, "set", 4));
                    assert!(
                        c.args
                            .iter()
                            .any(|f| f.name == "level" && f.value == Value::I64(3))
                    );
                    assert!(
                        c.args
                            .iter()
                            .any(|f| f.name == "mode" && f.value == Value::Str("eco"))
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn what_a_binary_device_cannot_take_is_refused_with_a_reason() {
        let nested = args(json!({"a": {"b": 1}}));
        assert!(
            message_for(&Wire::Binary, Transport::Mqtt, 1, "x", &nested)
                .unwrap_err()
                .contains("\"a\"")
        );
        let many = args(Json::Object(
            (0..17).map(|i| (format!("k{i}"), json!(i))).collect(),
        ));
        assert!(
            message_for(&Wire::Binary, Transport::Mqtt, 1, "x", &many)
                .unwrap_err()
                .contains("at most")
        );
        let big = args(json!({"s": "x".repeat(2000)}));
        assert!(message_for(&Wire::Binary, Transport::Serial, 1, "x", &big).is_err());
        // JSON devices take nested arguments.
        assert!(message_for(&Wire::Json, Transport::Mqtt, 1, "x", &nested).is_ok());
    }
}
