//! The encodings of the store: keys (big-endian, so byte order is numeric order) and records
//! (postcard, fields only ever appended).
//!
//! Keys:
//! - `Readings`:   offset u64
//! - `DeviceTime`: device u32, timestamp_ms u64, offset u64
//! - `Latest`:     device u32, metric u32
//! - `Devices`:    device u32
//! - `Metrics`:    metric name bytes
//! - `Commands`:   command id u64
//! - `Rollups`:    device u32, metric u32, minute since the epoch u64 (timestamp_ms / 60 000)
//! - `Meta`:       ASCII name; `rollups_from/` is followed by a device number u32
//!
//! A record that gains fields gets a new version: the old layout stays here as a private struct
//! that the decoder falls back to (postcard cannot tell a missing trailing field), and the next
//! write stores the new layout. Device records from schema 3 on start with a marker, 0x00 then
//! their layout's number (see [`encode_device`]): no older layout can start so (its first field,
//! the device id, is never empty), so the decoder never has to guess. A reading record's
//! [`SeqOrigin`] is a field appended as an `Option`-like tail, written only when it says
//! something, so most readings keep the bytes they had.

use std::collections::BTreeMap;

use device_protocol::OwnedValue;
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::sequence::{ReadingSeq, Runs, WindowV1};

/// Meta key of the schema version (u32 BE).
pub const META_SCHEMA_VERSION: &[u8] = b"schema_version";
/// Meta key of the next hub offset to assign (u64 BE).
pub const META_NEXT_OFFSET: &[u8] = b"next_offset";
/// Meta key of the next command id to assign (u64 BE).
pub const META_NEXT_COMMAND: &[u8] = b"next_command_id";
/// Meta key of the offset of the next reading the rules have not evaluated (u64 BE); absent
/// while there are no rules. See `store::alerts`.
pub const META_RULES_NEXT_OFFSET: &[u8] = b"rules_next_offset";
/// Meta key prefix, before a device number (u32 BE), of the first unix ms from which the device's
/// rollups are complete (u64 BE, a whole minute); see `store::rollup`.
pub const META_ROLLUPS_FROM: &[u8] = b"rollups_from/";
/// Meta key of the lowest device number a new device may get (u32 BE): one past the highest an
/// erased device had, so a number is never given twice; see `store::removal`.
pub const META_DEVICE_FLOOR: &[u8] = b"device_floor";
/// Meta key prefix, before a device number (u32 BE), of the widest time range (max - min
/// timestamp, u64 BE) any of the device's sealed blocks ever had: a bound that lets a read by time
/// skip the blocks that end before it; see `store::sealed`.
pub const META_BLOCK_WIDTH: &[u8] = b"block_width/";
/// Meta key of the backup taken before the rows of an older store were sealed into blocks
/// (UTF-8 path), while rows are left to seal; see `store::seal_rows`.
pub const META_SEAL_BACKUP: &[u8] = b"seal_backup";
/// Meta key of the offsets between the oldest reading held and the next offset that hold no
/// reading, because a device's readings were erased there (u64 BE); see `store::removal`.
pub const META_ERASED_GAPS: &[u8] = b"erased_gaps";

/// The transport a device last used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT, through the embedded or an external broker.
    Mqtt,
    /// A serial line.
    Serial,
    /// Polled over Modbus (RTU or TCP). Appended: records encode the variant by position.
    Modbus,
    /// Sparkplug B, through the embedded or an external broker (appended: postcard numbers
    /// variants by position).
    Sparkplug,
}

/// How a device encodes its messages: what it sent last, and so what it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    /// JSON on `devices/{id}/telemetry`, commands on `devices/{id}/commands`.
    #[default]
    Json,
    /// device-protocol (postcard) messages: `devices/{id}/up` and `/down`, or serial frames.
    Binary,
}

/// One stored reading, as kept in the `Readings` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingRecord {
    /// Device number.
    pub device: u32,
    /// The device's sequence number, or the hub's (see `origin`).
    pub seq: u32,
    /// Device timestamp, or the hub's receive time when the device sent none.
    pub timestamp_ms: u64,
    /// Metric number and value.
    pub metrics: Vec<(u32, OwnedValue)>,
    /// Who numbered it. Appended in schema 3: absent (every older reading) reads as `Device`.
    #[serde(
        default,
        skip_serializing_if = "SeqOrigin::is_device",
        deserialize_with = "appended"
    )]
    pub origin: SeqOrigin,
}

/// Who numbered a stored reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeqOrigin {
    /// The device, which sends no boot (and every reading stored before schema 3, when hub
    /// numbers were not told apart).
    #[default]
    Device,
    /// The device, in the run of this boot.
    Boot(u32),
    /// The hub, for a device that sends no seq.
    Hub,
}

impl SeqOrigin {
    /// Whether it is the default, which is not written.
    pub fn is_device(&self) -> bool {
        *self == SeqOrigin::Device
    }

    /// The origin of a reading numbered `seq`.
    pub fn of(seq: ReadingSeq) -> (u32, SeqOrigin) {
        match seq {
            ReadingSeq::Device { boot: None, seq } => (seq, SeqOrigin::Device),
            ReadingSeq::Device {
                boot: Some(boot),
                seq,
            } => (seq, SeqOrigin::Boot(boot)),
            ReadingSeq::Hub(seq) => (seq, SeqOrigin::Hub),
        }
    }
}

/// A reading record without its origin: what a record that embeds a reading holds, since a field
/// appended to the reading would run into the embedding record's next field. Such a record puts
/// the origin at its own end (see `sync::ParkedRecord`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingFields {
    /// Device number.
    pub device: u32,
    /// Seq.
    pub seq: u32,
    /// Timestamp.
    pub timestamp_ms: u64,
    /// Metric number and value.
    pub metrics: Vec<(u32, OwnedValue)>,
}

impl ReadingRecord {
    /// Its fields, and its origin apart.
    pub fn split(self) -> (ReadingFields, SeqOrigin) {
        let fields = ReadingFields {
            device: self.device,
            seq: self.seq,
            timestamp_ms: self.timestamp_ms,
            metrics: self.metrics,
        };
        (fields, self.origin)
    }

    /// The record of `fields` and `origin`.
    pub fn join(fields: ReadingFields, origin: SeqOrigin) -> Self {
        ReadingRecord {
            device: fields.device,
            seq: fields.seq,
            timestamp_ms: fields.timestamp_ms,
            metrics: fields.metrics,
            origin,
        }
    }

    /// How it is numbered.
    pub fn numbering(&self) -> ReadingSeq {
        match self.origin {
            SeqOrigin::Device => ReadingSeq::Device {
                boot: None,
                seq: self.seq,
            },
            SeqOrigin::Boot(boot) => ReadingSeq::Device {
                boot: Some(boot),
                seq: self.seq,
            },
            SeqOrigin::Hub => ReadingSeq::Hub(self.seq),
        }
    }
}

/// Reads a field appended to a record: its value, or the default when the record ends before it
/// (written by an older hub). Bytes that do not form it read as the default too. Only for the
/// last field of a record that is never embedded in another one.
pub fn appended<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(T::deserialize(deserializer).unwrap_or_default())
}

/// A device, as kept in the `Devices` table (layout 3; see [`encode_device`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device id.
    pub name: String,
    /// The transport it last used.
    pub transport: Transport,
    /// When it was first seen (hub clock).
    pub first_seen_ms: u64,
    /// When it was last seen (hub clock).
    pub last_seen_ms: u64,
    /// The highest seq stored in its latest run (boot).
    pub last_seq: Option<u32>,
    /// How many readings were stored for it.
    pub readings: u64,
    /// Firmware version from its `Hello`, if any.
    pub firmware: Option<String>,
    /// Labels set by an operator.
    pub labels: BTreeMap<String, String>,
    /// Metric numbers it has sent.
    pub metrics: Vec<u32>,
    /// Protocol version from its `Hello`, if any.
    pub protocol_version: Option<u16>,
    /// Duplicate detection over the seqs it sends, per boot; empty for a device that sends none.
    pub runs: Runs,
    /// Readings refused as duplicates.
    pub duplicates: u64,
    /// A name for people, set by an operator.
    pub display_name: Option<String>,
    /// How it encodes its messages.
    pub wire: Wire,
    /// The boot of its last `Hello`: the boot of its binary telemetry that names none.
    pub hello_boot: Option<u32>,
    /// The last seq the hub gave one of its readings that came without one.
    pub hub_seq: Option<u32>,
    /// Readings with a seq refused for their content (settled, never stored).
    pub rejected: u64,
    /// Seqs the hub gave up waiting for.
    pub gave_up: u64,
    /// Set when the device was removed (`DELETE /devices/{id}`): it is no longer listed, and
    /// this record stays only to name its kept readings, or until its erase is done. Appended
    /// (absent reads as `None`, and is not written while `None`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "appended"
    )]
    pub removed: Option<Removal>,
}

/// How and when a device was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// When (hub clock).
    pub at_ms: u64,
    /// Whether its readings are being erased (the record goes once they are); otherwise kept.
    pub erase: bool,
}

/// The marker of a device record of layout 3 (see [`encode_device`]).
const DEVICE_LAYOUT_3: [u8; 2] = [0x00, 3];

/// The second layout of [`DeviceRecord`] (schema 2): the first, then `display_name` and `wire`
/// (postcard writes a nested struct as its fields, so the first layout is a prefix of it).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(in crate::store) struct DeviceRecordV2 {
    pub(in crate::store) v1: DeviceRecordV1,
    pub(in crate::store) display_name: Option<String>,
    pub(in crate::store) wire: Wire,
}

/// The first layout of [`DeviceRecord`]: one window, no boots.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(in crate::store) struct DeviceRecordV1 {
    pub(in crate::store) name: String,
    pub(in crate::store) transport: Transport,
    pub(in crate::store) first_seen_ms: u64,
    pub(in crate::store) last_seen_ms: u64,
    pub(in crate::store) last_seq: Option<u32>,
    pub(in crate::store) readings: u64,
    pub(in crate::store) firmware: Option<String>,
    pub(in crate::store) labels: BTreeMap<String, String>,
    pub(in crate::store) metrics: Vec<u32>,
    pub(in crate::store) protocol_version: Option<u16>,
    pub(in crate::store) seq_window: Option<WindowV1>,
    pub(in crate::store) duplicates: u64,
}

/// Encodes a device record: its layout's marker, then its postcard bytes.
pub fn encode_device(record: &DeviceRecord) -> Result<Vec<u8>, StoreError> {
    let mut bytes = DEVICE_LAYOUT_3.to_vec();
    bytes.extend_from_slice(&encode(record)?);
    Ok(bytes)
}

/// Decodes a device record of any layout this version knows.
pub fn decode_device(bytes: &[u8]) -> Result<DeviceRecord, StoreError> {
    if let Some(rest) = bytes.strip_prefix(&DEVICE_LAYOUT_3) {
        return decode(rest, "device record");
    }
    if bytes.first() == Some(&0) {
        return Err(StoreError::Corrupt(format!(
            "device record of layout {:?}, newer than this hub reads",
            bytes.get(1)
        )));
    }
    let (v1, display_name, wire) = match postcard::from_bytes::<DeviceRecordV2>(bytes) {
        Ok(v2) => (v2.v1, v2.display_name, v2.wire),
        Err(_) => {
            let v1: DeviceRecordV1 = decode(bytes, "device record")?;
            let wire = match (v1.transport, v1.protocol_version) {
                (Transport::Serial, _) | (_, Some(_)) => Wire::Binary,
                _ => Wire::Json,
            };
            (v1, None, wire)
        }
    };
    Ok(DeviceRecord {
        name: v1.name,
        transport: v1.transport,
        first_seen_ms: v1.first_seen_ms,
        last_seen_ms: v1.last_seen_ms,
        last_seq: v1.last_seq,
        readings: v1.readings,
        firmware: v1.firmware,
        labels: v1.labels,
        metrics: v1.metrics,
        protocol_version: v1.protocol_version,
        runs: Runs::from_window(v1.seq_window.map(Into::into)),
        duplicates: v1.duplicates,
        display_name,
        wire,
        hello_boot: None,
        hub_seq: None,
        rejected: 0,
        gave_up: 0,
        removed: None,
    })
}

/// Where a command is in its life. Only moves forward: pending, then delivered, then one of the
/// final states (a result may also arrive before the hub recorded the delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Accepted, waiting for the device to be reachable.
    Pending,
    /// Handed to the device's transport; waiting for its result.
    Delivered,
    /// The device answered that it succeeded.
    Succeeded,
    /// The device answered that it failed.
    Failed,
    /// Not delivered within its TTL, or no result within its timeout.
    TimedOut,
}

impl CommandState {
    /// Whether nothing can change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CommandState::Succeeded | CommandState::Failed | CommandState::TimedOut
        )
    }

    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            CommandState::Pending => "pending",
            CommandState::Delivered => "delivered",
            CommandState::Succeeded => "succeeded",
            CommandState::Failed => "failed",
            CommandState::TimedOut => "timed_out",
        }
    }
}

/// A command for a device, as kept in the `Commands` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// The device it is for.
    pub device: String,
    /// The command's name.
    pub name: String,
    /// Its arguments: a JSON object, as text.
    pub args: String,
    /// Who asked for it (token or certificate name).
    pub requested_by: String,
    /// Where it is.
    pub state: CommandState,
    /// When it was accepted.
    pub created_ms: u64,
    /// Not delivered by then: it times out.
    pub expires_ms: u64,
    /// How long after delivery the device has to answer.
    pub result_timeout_ms: u64,
    /// When it was handed to the transport.
    pub delivered_ms: Option<u64>,
    /// When it reached a final state.
    pub finished_ms: Option<u64>,
    /// The device's result: JSON, as text.
    pub result: Option<String>,
    /// Why it failed or timed out.
    pub error: Option<String>,
    /// A binary device's error code.
    pub error_code: Option<u16>,
}

/// The latest value of one metric of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatestRecord {
    /// The reading's timestamp.
    pub timestamp_ms: u64,
    /// The reading's hub offset.
    pub offset: u64,
    /// The value.
    pub value: OwnedValue,
}

/// One end of a [`RollupRecord`]: a value with the time and offset it is ordered by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollupPoint {
    /// The reading's timestamp.
    pub timestamp_ms: u64,
    /// The reading's hub offset, which orders readings of the same timestamp.
    pub offset: u64,
    /// The value.
    pub value: OwnedValue,
}

/// The values of one metric of one device in one minute (or any span), folded so that spans
/// merge exactly: what every downsampling aggregate needs. Never stored empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollupRecord {
    /// Values, of any type.
    pub count: u64,
    /// Numeric (and boolean) values.
    pub numeric: u64,
    /// Their sum.
    pub sum: f64,
    /// Their minimum (infinity while `numeric` is 0).
    pub min: f64,
    /// Their maximum (minus infinity while `numeric` is 0).
    pub max: f64,
    /// The earliest value, by (timestamp, offset).
    pub first: RollupPoint,
    /// The latest value, by (timestamp, offset).
    pub last: RollupPoint,
    /// Retention deleted some of the minute's readings and kept others: the figures above count
    /// the deleted ones too, so a query reads the minute's remaining readings instead.
    pub partial: bool,
}

/// An API token, keyed by the keyed hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// A name for people.
    pub name: String,
    /// Scopes it grants (`read`, `command`, `admin`, `metrics`).
    pub scopes: Vec<String>,
    /// Device-id patterns it is limited to; empty means every device.
    pub devices: Vec<String>,
    /// When it was made.
    pub created_ms: u64,
    /// When it stops working, if ever.
    pub expires_ms: Option<u64>,
    /// Whether it was revoked.
    pub revoked: bool,
    /// When it was last used, as last saved: the registry keeps the exact time in memory and
    /// saves it at most about once a minute, so after a crash this may lag by that much.
    pub last_used_ms: Option<u64>,
}

/// The first layout of [`TokenRecord`], without `last_used_ms`.
#[derive(Deserialize)]
struct TokenRecordV1 {
    name: String,
    scopes: Vec<String>,
    devices: Vec<String>,
    created_ms: u64,
    expires_ms: Option<u64>,
    revoked: bool,
}

/// Decodes a token record of any layout this version knows.
pub fn decode_token(bytes: &[u8]) -> Result<TokenRecord, StoreError> {
    if let Ok(record) = postcard::from_bytes::<TokenRecord>(bytes) {
        return Ok(record);
    }
    let v1: TokenRecordV1 = decode(bytes, "token record")?;
    Ok(TokenRecord {
        name: v1.name,
        scopes: v1.scopes,
        devices: v1.devices,
        created_ms: v1.created_ms,
        expires_ms: v1.expires_ms,
        revoked: v1.revoked,
        last_used_ms: None,
    })
}

/// Encodes a record.
pub fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(record).map_err(|e| StoreError::Corrupt(format!("encode: {e}")))
}

/// Decodes a record; a failure means the file holds something this version cannot read.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// `Readings` key.
pub fn reading_key(offset: u64) -> Vec<u8> {
    offset.to_be_bytes().to_vec()
}

/// `DeviceTime` key.
pub fn device_time_key(device: u32, timestamp_ms: u64, offset: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(20);
    key.extend_from_slice(&device.to_be_bytes());
    key.extend_from_slice(&timestamp_ms.to_be_bytes());
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

/// Splits a `DeviceTime` key into timestamp and offset.
pub fn split_device_time_key(key: &[u8]) -> Option<(u64, u64)> {
    let ts = u64::from_be_bytes(key.get(4..12)?.try_into().ok()?);
    let offset = u64::from_be_bytes(key.get(12..20)?.try_into().ok()?);
    Some((ts, offset))
}

/// `Commands` key.
pub fn command_key(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

/// `Latest` key.
pub fn latest_key(device: u32, metric: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(8);
    key.extend_from_slice(&device.to_be_bytes());
    key.extend_from_slice(&metric.to_be_bytes());
    key
}

/// `Rollups` key.
pub fn rollup_key(device: u32, metric: u32, minute: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&device.to_be_bytes());
    key.extend_from_slice(&metric.to_be_bytes());
    key.extend_from_slice(&minute.to_be_bytes());
    key
}

/// The minute of a `Rollups` key.
pub fn split_rollup_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(8..16)?.try_into().ok()?))
}

/// `Meta` key of where a device's rollups begin.
pub fn rollups_from_key(device: u32) -> Vec<u8> {
    let mut key = META_ROLLUPS_FROM.to_vec();
    key.extend_from_slice(&device.to_be_bytes());
    key
}

/// Meta key of a device's widest block (see [`META_BLOCK_WIDTH`]).
pub fn block_width_key(device: u32) -> Vec<u8> {
    let mut key = META_BLOCK_WIDTH.to_vec();
    key.extend_from_slice(&device.to_be_bytes());
    key
}

/// Reads a big-endian u64 value.
pub fn be_u64(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what}: not 8 bytes")))?;
    Ok(u64::from_be_bytes(arr))
}

/// Reads a big-endian u32 value.
pub fn be_u32(bytes: &[u8], what: &str) -> Result<u32, StoreError> {
    let arr: [u8; 4] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what}: not 4 bytes")))?;
    Ok(u32::from_be_bytes(arr))
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
