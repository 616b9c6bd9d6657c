//! The messages of the binary protocol and their postcard encoding.
//!
//! Every type borrows its strings (`&'a str`) from the bytes it was decoded from: decoding is
//! zero-copy and needs no allocator. Lists are [`heapless::Vec`]s of at most
//! [`MAX_FIELDS`](crate::MAX_FIELDS) entries, so a message has a fixed size in memory.
//!
//! Invariants checked by `validate` (and so by `encode`, `to_vec` and `decode`):
//! - device ids, field names and command names are valid ids ([`is_valid_id`]);
//! - strings are at most [`MAX_STR_LEN`] bytes;
//! - field names are unique within one list; `F64` values are finite;
//! - a `Telemetry` carries at least one reading; `Hello::protocol_version` is not 0.
//!
//! The declaration order of fields and variants below IS the wire format: only append.

use serde::{Deserialize, Serialize};

use crate::{Error, MAX_FIELDS, MAX_STR_LEN, is_valid_id};

/// One value of a reading, command argument or result field.
///
/// Variant order is wire format: `F64` = 0, `I64` = 1, `Bool` = 2, `Str` = 3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value<'a> {
    /// A floating-point number; must be finite.
    F64(f64),
    /// A signed integer (zigzag varint on the wire).
    I64(i64),
    /// A boolean.
    Bool(bool),
    /// A string of at most [`MAX_STR_LEN`] bytes.
    Str(&'a str),
}

/// A named value: a reading (`metric -> value`), a command argument or a result field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field<'a> {
    /// The metric or field name; a valid id ([`is_valid_id`]).
    pub name: &'a str,
    /// The value.
    #[serde(borrow)]
    pub value: Value<'a>,
}

/// A list of at most [`MAX_FIELDS`] named values, names unique.
pub type Fields<'a> = heapless::Vec<Field<'a>, MAX_FIELDS>;

/// First message of a device after it connects: who it is and what it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello<'a> {
    /// The device id; a valid id ([`is_valid_id`]).
    pub device_id: &'a str,
    /// Firmware version text, at most [`MAX_STR_LEN`] bytes.
    pub firmware: &'a str,
    /// The [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) the device speaks; never 0.
    pub protocol_version: u16,
}

/// Readings taken by a device at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry<'a> {
    /// The device's sequence number for this message; `(device, seq)` identifies it, so a
    /// retransmission is stored once. The hub answers with [`Ack`].
    pub seq: u32,
    /// When the readings were taken: unix milliseconds, UTC, from the device clock; `None` if the
    /// device has no clock (the hub then uses its receive time).
    pub timestamp_ms: Option<u64>,
    /// One or more readings, metric names unique.
    #[serde(borrow)]
    pub readings: Fields<'a>,
}

/// Outcome of a command.
///
/// Variant order is wire format: `Ok` = 0, `Error` = 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandStatus {
    /// The command succeeded.
    Ok,
    /// The command failed with this device-specific error code.
    Error(u16),
}

/// A device's answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult<'a> {
    /// The [`Command::command_id`] being answered.
    pub command_id: u64,
    /// Success or an error code.
    pub status: CommandStatus,
    /// Optional result fields (may be empty), names unique.
    #[serde(borrow)]
    pub payload: Fields<'a>,
}

/// The hub's acknowledgement of telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Highest contiguous `seq` now durable: every seq up to and including it is stored.
    pub seq: u32,
}

/// A command from the hub for a device to carry out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command<'a> {
    /// Id chosen by the hub; the device echoes it in [`CommandResult::command_id`].
    pub command_id: u64,
    /// The command's name; a valid id ([`is_valid_id`]).
    pub name: &'a str,
    /// Arguments (may be empty), names unique.
    #[serde(borrow)]
    pub args: Fields<'a>,
}

/// The hub's clock, for devices without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeSync {
    /// The hub's time: unix milliseconds, UTC.
    pub unix_ms: u64,
}

/// A message from a device to the hub.
///
/// Variant order is wire format: `Hello` = 0, `Telemetry` = 1, `CommandResult` = 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Uplink<'a> {
    /// See [`Hello`].
    #[serde(borrow)]
    Hello(Hello<'a>),
    /// See [`Telemetry`].
    #[serde(borrow)]
    Telemetry(Telemetry<'a>),
    /// See [`CommandResult`].
    #[serde(borrow)]
    CommandResult(CommandResult<'a>),
}

/// A message from the hub to a device.
///
/// Variant order is wire format: `Ack` = 0, `Command` = 1, `TimeSync` = 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(
    clippy::large_enum_variant,
    reason = "no_std without alloc cannot box; a fixed size is what firmware wants"
)]
pub enum Downlink<'a> {
    /// See [`Ack`].
    Ack(Ack),
    /// See [`Command`].
    #[serde(borrow)]
    Command(Command<'a>),
    /// See [`TimeSync`].
    TimeSync(TimeSync),
}

impl<'a> Uplink<'a> {
    /// Checks the rules of the protocol (see the module docs); [`Error::Invalid`] if one is broken.
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Uplink::Hello(hello) => {
                check_id(hello.device_id)?;
                check_str(hello.firmware)?;
                if hello.protocol_version == 0 {
                    return Err(Error::Invalid);
                }
                Ok(())
            }
            Uplink::Telemetry(telemetry) => {
                if telemetry.readings.is_empty() {
                    return Err(Error::Invalid);
                }
                check_fields(&telemetry.readings)
            }
            Uplink::CommandResult(result) => check_fields(&result.payload),
        }
    }

    /// Validates the message and writes its postcard bytes into `buf`; returns the used part.
    pub fn encode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], Error> {
        self.validate()?;
        postcard::to_slice(self, buf).map_err(Error::from_postcard_ser)
    }

    /// Decodes postcard bytes without copying, then validates the message. Bytes after a complete
    /// message are ignored (see the wire rule in the crate docs).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        let message: Self = decode_postcard(bytes)?;
        message.validate()?;
        Ok(message)
    }

    /// Validates the message and returns its postcard bytes.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> Result<alloc::vec::Vec<u8>, Error> {
        self.validate()?;
        postcard::to_allocvec(self).map_err(Error::from_postcard_ser)
    }
}

impl<'a> Downlink<'a> {
    /// Checks the rules of the protocol (see the module docs); [`Error::Invalid`] if one is broken.
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Downlink::Ack(_) | Downlink::TimeSync(_) => Ok(()),
            Downlink::Command(command) => {
                check_id(command.name)?;
                check_fields(&command.args)
            }
        }
    }

    /// Validates the message and writes its postcard bytes into `buf`; returns the used part.
    pub fn encode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], Error> {
        self.validate()?;
        postcard::to_slice(self, buf).map_err(Error::from_postcard_ser)
    }

    /// Decodes postcard bytes without copying, then validates the message. Bytes after a complete
    /// message are ignored (see the wire rule in the crate docs).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        let message: Self = decode_postcard(bytes)?;
        message.validate()?;
        Ok(message)
    }

    /// Validates the message and returns its postcard bytes.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> Result<alloc::vec::Vec<u8>, Error> {
        self.validate()?;
        postcard::to_allocvec(self).map_err(Error::from_postcard_ser)
    }
}

fn decode_postcard<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    if bytes.is_empty() {
        return Err(Error::Empty);
    }
    // Trailing bytes are allowed on purpose: they may be fields appended by a newer sender.
    let (message, _trailing) = postcard::take_from_bytes(bytes).map_err(|_| Error::Decode)?;
    Ok(message)
}

fn check_id(id: &str) -> Result<(), Error> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(Error::Invalid)
    }
}

fn check_str(s: &str) -> Result<(), Error> {
    if s.len() <= MAX_STR_LEN {
        Ok(())
    } else {
        Err(Error::Invalid)
    }
}

fn check_value(value: &Value<'_>) -> Result<(), Error> {
    match value {
        Value::F64(x) if !x.is_finite() => Err(Error::Invalid),
        Value::Str(s) => check_str(s),
        Value::F64(_) | Value::I64(_) | Value::Bool(_) => Ok(()),
    }
}

fn check_fields(fields: &[Field<'_>]) -> Result<(), Error> {
    for (i, field) in fields.iter().enumerate() {
        check_id(field.name)?;
        check_value(&field.value)?;
        // At most MAX_FIELDS entries, so the quadratic check is cheap and needs no memory.
        if fields[..i].iter().any(|earlier| earlier.name == field.name) {
            return Err(Error::Invalid);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(items: &[(&'a str, Value<'a>)]) -> Fields<'a> {
        let mut out = Fields::new();
        for (name, value) in items {
            out.push(Field {
                name,
                value: value.clone(),
            })
            .unwrap();
        }
        out
    }

    fn telemetry<'a>(readings: Fields<'a>) -> Uplink<'a> {
        Uplink::Telemetry(Telemetry {
            seq: 1,
            timestamp_ms: None,
            readings,
        })
    }

    #[test]
    fn valid_messages_pass() {
        let t = telemetry(fields(&[("temp", Value::F64(1.0)), ("n", Value::I64(-1))]));
        assert_eq!(t.validate(), Ok(()));
        let hello = Uplink::Hello(Hello {
            device_id: "dev-1",
            firmware: "",
            protocol_version: 1,
        });
        assert_eq!(hello.validate(), Ok(()));
        let cmd = Downlink::Command(Command {
            command_id: 1,
            name: "reboot",
            args: Fields::new(),
        });
        assert_eq!(cmd.validate(), Ok(()));
    }

    #[test]
    fn rule_violations_are_invalid() {
        let long = "x".repeat(MAX_STR_LEN + 1);
        let cases = [
            telemetry(Fields::new()),
            telemetry(fields(&[("bad name", Value::Bool(true))])),
            telemetry(fields(&[("a", Value::F64(f64::NAN))])),
            telemetry(fields(&[("a", Value::F64(f64::INFINITY))])),
            telemetry(fields(&[("a", Value::Str(&long))])),
            telemetry(fields(&[("a", Value::I64(1)), ("a", Value::I64(2))])),
            Uplink::Hello(Hello {
                device_id: "",
                firmware: "1.0",
                protocol_version: 1,
            }),
            Uplink::Hello(Hello {
                device_id: "d",
                firmware: &long,
                protocol_version: 1,
            }),
            Uplink::Hello(Hello {
                device_id: "d",
                firmware: "1.0",
                protocol_version: 0,
            }),
            Uplink::CommandResult(CommandResult {
                command_id: 1,
                status: CommandStatus::Ok,
                payload: fields(&[("é", Value::Bool(true))]),
            }),
        ];
        let mut buf = [0u8; 1024];
        for case in cases {
            assert_eq!(case.validate(), Err(Error::Invalid), "{case:?}");
            assert_eq!(case.encode(&mut buf), Err(Error::Invalid), "{case:?}");
        }
        let bad_command = Downlink::Command(Command {
            command_id: 1,
            name: "re boot",
            args: Fields::new(),
        });
        assert_eq!(bad_command.validate(), Err(Error::Invalid));
    }

    #[test]
    fn decode_rejects_invalid_content() {
        // Encoded without validation: postcard accepts what the protocol forbids.
        let message = telemetry(fields(&[("bad name", Value::Bool(true))]));
        let mut buf = [0u8; 64];
        let bytes = postcard::to_slice(&message, &mut buf).unwrap();
        assert_eq!(Uplink::decode(bytes), Err(Error::Invalid));
    }

    #[test]
    fn decode_errors() {
        assert_eq!(Uplink::decode(&[]), Err(Error::Empty));
        assert_eq!(Downlink::decode(&[]), Err(Error::Empty));
        assert_eq!(Uplink::decode(&[9]), Err(Error::Decode)); // unknown variant
        assert_eq!(Downlink::decode(&[0]), Err(Error::Decode)); // truncated Ack
        // More fields than MAX_FIELDS: length 17, then nothing.
        assert_eq!(Uplink::decode(&[1, 1, 0, 17]), Err(Error::Decode));
    }

    #[test]
    fn encode_reports_small_buffer() {
        let message = Downlink::TimeSync(TimeSync { unix_ms: u64::MAX });
        let mut buf = [0u8; 4];
        assert_eq!(message.encode(&mut buf), Err(Error::BufferTooSmall));
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let message = Downlink::Ack(Ack { seq: 5 });
        let mut buf = [0u8; 16];
        let len = message.encode(&mut buf).unwrap().len();
        buf[len] = 0xAB;
        assert_eq!(Downlink::decode(&buf[..=len]), Ok(message));
    }
}
