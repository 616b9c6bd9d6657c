//! The encodings of the store: keys (big-endian, so byte order is numeric order) and records
//! (postcard, fields only ever appended).
//!
//! Keys:
//! - `Readings`:   offset u64
//! - `DeviceTime`: device u32, timestamp_ms u64, offset u64
//! - `Latest`:     device u32, metric u32
//! - `Devices`:    device u32
//! - `Metrics`:    metric name bytes
//! - `Meta`:       ASCII name

use std::collections::BTreeMap;

use device_protocol::OwnedValue;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Meta key of the schema version (u32 BE).
pub const META_SCHEMA_VERSION: &[u8] = b"schema_version";
/// Meta key of the next hub offset to assign (u64 BE).
pub const META_NEXT_OFFSET: &[u8] = b"next_offset";

/// The transport a device last used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT, through the embedded or an external broker.
    Mqtt,
    /// A serial line.
    Serial,
}

/// One stored reading, as kept in the `Readings` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingRecord {
    /// Device number.
    pub device: u32,
    /// The device's sequence number (assigned by the hub when the device sends none).
    pub seq: u32,
    /// Device timestamp, or the hub's receive time when the device sent none.
    pub timestamp_ms: u64,
    /// Metric number and value.
    pub metrics: Vec<(u32, OwnedValue)>,
}

/// A device, as kept in the `Devices` table.
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
    /// The highest seq stored for it.
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
    /// Duplicate detection over the seqs it sends; `None` for a device that sends none.
    pub seq_window: Option<super::sequence::SeqWindow>,
    /// Readings refused as duplicates.
    pub duplicates: u64,
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

/// `Latest` key.
pub fn latest_key(device: u32, metric: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(8);
    key.extend_from_slice(&device.to_be_bytes());
    key.extend_from_slice(&metric.to_be_bytes());
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
