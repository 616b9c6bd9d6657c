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
//!
//! # Appended fields
//!
//! `Hello::boot`, `Telemetry::boot` and `Ack::boot` came with protocol version 2. Each is the last
//! field of its message, written as a postcard `Option` only when it is `Some`: a message without
//! it has exactly the bytes of version 1, and the bytes of a version 1 sender, which end before
//! it, decode with `None` (see `appended`). A field appended after one of these must make it
//! always written (`None` as its 0x00), or the two could not be told apart.

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, MAX_FIELDS, MAX_RANGES, MAX_STR_LEN, is_valid_id};

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
    /// The device's boot number: any u32 that changes at every reboot (a counter kept in flash,
    /// or a random number drawn at start). `None` for a device that keeps its `seq` counting
    /// across reboots, or speaks protocol version 1. Appended in version 2 (see the module docs).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "appended"
    )]
    pub boot: Option<u32>,
}

/// Readings taken by a device at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry<'a> {
    /// The device's sequence number for this message; `(device, boot, seq)` identifies it, so a
    /// retransmission is stored once. The hub answers with [`Ack`] (and [`Rejected`] or [`GaveUp`]
    /// when it has to).
    pub seq: u32,
    /// When the readings were taken: unix milliseconds, UTC, from the device clock; `None` if the
    /// device has no clock (the hub then uses its receive time).
    pub timestamp_ms: Option<u64>,
    /// One or more readings, metric names unique.
    #[serde(borrow)]
    pub readings: Fields<'a>,
    /// The boot the seq counts in (see [`Hello::boot`]): a device whose counter starts again at
    /// every reboot sends a new boot, so its new readings are not taken for old ones. Appended in
    /// version 2.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "appended"
    )]
    pub boot: Option<u32>,
}

/// Which reading: the device's `seq` in the run of its `boot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadingId {
    /// The device's seq.
    pub seq: u32,
    /// Its boot, if it sends one.
    pub boot: Option<u32>,
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

/// The hub's acknowledgement of telemetry: cumulative, per boot.
///
/// Every seq of the boot up to and including `seq` is settled: stored durably, or named to the
/// device in a [`Rejected`] or a [`GaveUp`] sent before this ack (or before an earlier one). A
/// device may drop every reading up to `seq` from its outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Highest seq up to which everything is settled.
    pub seq: u32,
    /// The boot this ack is for: the [`Telemetry::boot`] of the readings it answers. A device
    /// ignores an ack for another boot (an answer to a reading of its previous run). Appended in
    /// version 2.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "appended"
    )]
    pub boot: Option<u32>,
}

/// A reading the hub refused for its content (a string too long, a bad metric name, a value that
/// is not finite, a timestamp out of range): it is not stored and never will be, so the device
/// drops it; the next [`Ack`] passes its seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected<'a> {
    /// The refused reading's seq.
    pub seq: u32,
    /// Its boot.
    pub boot: Option<u32>,
    /// Why, for the device's log: at most [`MAX_STR_LEN`] bytes.
    pub reason: &'a str,
}

/// An inclusive range of seqs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    /// The first seq.
    pub first: u32,
    /// The last seq; at least `first`.
    pub last: u32,
}

/// Ranges of seqs, at most [`MAX_RANGES`].
pub type SeqRanges = heapless::Vec<SeqRange, MAX_RANGES>;

/// Seqs the hub stopped waiting for. The hub remembers the gaps below the seqs it stored for a
/// while; when a device leaves more open gaps than it can keep, it gives up the oldest and says
/// so here before an [`Ack`] passes them. A device that still holds one of them may send it again:
/// it is stored if the hub can still tell it was never stored (else it is taken for a duplicate).
/// A range may also cover seqs that were stored, when the hub had to merge ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GaveUp {
    /// The boot the seqs count in.
    pub boot: Option<u32>,
    /// One or more ranges, ascending.
    pub ranges: SeqRanges,
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
/// Variant order is wire format: `Ack` = 0, `Command` = 1, `TimeSync` = 2, `Rejected` = 3,
/// `GaveUp` = 4. A decoder older than a variant fails on it with [`Error::Decode`]: skip it.
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
    /// See [`Rejected`]. Since protocol version 2.
    #[serde(borrow)]
    Rejected(Rejected<'a>),
    /// See [`GaveUp`]. Since protocol version 2.
    GaveUp(GaveUp),
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

    /// The seq and boot of telemetry in `bytes`, even when [`Uplink::decode`] refuses it for
    /// breaking a rule, so the hub can name the reading it rejects. `None` when the bytes are not
    /// well-formed telemetry at all.
    pub fn reading_id(bytes: &[u8]) -> Option<ReadingId> {
        match decode_postcard::<Uplink<'_>>(bytes).ok()? {
            Uplink::Telemetry(t) => Some(ReadingId {
                seq: t.seq,
                boot: t.boot,
            }),
            Uplink::Hello(_) | Uplink::CommandResult(_) => None,
        }
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
            Downlink::Rejected(rejected) => check_str(rejected.reason),
            Downlink::GaveUp(gave_up) => {
                let ordered = gave_up.ranges.iter().all(|r| r.first <= r.last);
                if gave_up.ranges.is_empty() || !ordered {
                    return Err(Error::Invalid);
                }
                Ok(())
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

/// Reads a field appended to a message after its first version (see the module docs): the
/// field's `Option`, or `None` when the message ends before it. Bytes that do not form the field
/// are read as `None` too, as an older decoder would ignore them.
fn appended<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer).unwrap_or(None))
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
#[path = "message_tests.rs"]
mod tests;
