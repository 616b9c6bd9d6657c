//! The store writer's log record: the ingest items of one batch, in a compact form, from which
//! replaying [`Store::apply`](super::Store::apply) at open computes the same changes again.
//!
//! Far smaller than the changes themselves: a reading is logged as itself (about 50 bytes for
//! four float metrics), not as the reading, its index entry, four latest values, four rollups and
//! its device record that it changes. Names (devices, metrics) are written once per record and
//! referred to by their place in it; times are written as differences from the record's first
//! `received_ms`.
//!
//! Format (postcard, fields only ever appended): a format byte, then [`Record`]: compressed with
//! zstd ([`FORMAT`], 2), or plain (1, written by earlier releases and still read). Compressed, a
//! batch of 100 readings of four metrics takes about a third of its plain bytes, so a commit at
//! 100 readings a second fills one page of log instead of three: what an SD card is written per
//! reading (see the README, "Storage: the log").
//! Decoding a record that passed its CRC but does not decode is corruption: an error, never a
//! panic.

use serde::{Deserialize, Serialize};

use super::records::{Transport, Wire};
use super::{
    CommandResultIn, DeviceHello, DeviceStatus, Ingest, NewReading, RejectedReading, StoreError,
};
use device_protocol::OwnedValue;

/// The format byte of a record of this layout, compressed.
const FORMAT: u8 = 2;
/// The format byte of a plain record (earlier releases).
const FORMAT_PLAIN: u8 = 1;
/// zstd's fastest level: the record is written on the commit's path, and it already takes the
/// most of what a higher level would.
const ZSTD_LEVEL: i32 = 1;
/// The most a record may decompress to (a batch of `ingest.batch_max` readings of the largest
/// size is far less); a larger claim is corruption, never an allocation.
const MAX_PLAIN_BYTES: u64 = 256 << 20;
/// The reason a replayed status carries (statuses are not published at replay, and their reason
/// changes nothing stored).
const REPLAYED: &str = "replayed";

#[derive(Serialize, Deserialize)]
struct Record {
    /// Whether the store refused new readings when the batch was applied.
    refusing: bool,
    /// The first item's `received_ms`; the items' times are relative to it.
    base_ms: u64,
    /// Device and metric names, referred to by index.
    names: Vec<String>,
    items: Vec<Item>,
}

#[derive(Serialize, Deserialize)]
enum Item {
    Reading {
        device: u32,
        transport: Transport,
        wire: Wire,
        seq: Option<u32>,
        boot: Option<u32>,
        timestamp: Option<i64>,
        received: i64,
        metrics: Vec<(u32, OwnedValue)>,
    },
    Rejected {
        device: u32,
        transport: Transport,
        wire: Wire,
        seq: u32,
        boot: Option<u32>,
        received: i64,
    },
    Hello {
        device: u32,
        transport: Transport,
        firmware: String,
        protocol_version: u16,
        boot: Option<u32>,
        received: i64,
    },
    CommandResult {
        device: u32,
        transport: Transport,
        id: u64,
        ok: bool,
        result: Option<String>,
        error: Option<String>,
        error_code: Option<u16>,
        received: i64,
    },
    Status {
        device: u32,
        transport: Transport,
        online: bool,
        received: i64,
    },
}

/// Names written once, referred to by index.
#[derive(Default)]
struct Names {
    list: Vec<String>,
    index: std::collections::HashMap<String, u32>,
}

impl Names {
    fn of(&mut self, name: &str) -> u32 {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        let i = self.list.len() as u32;
        self.list.push(name.to_owned());
        self.index.insert(name.to_owned(), i);
        i
    }
}

/// The record of `items`, applied with the store refusing new readings or not.
pub fn encode(items: &[Ingest], refusing: bool) -> Result<Vec<u8>, StoreError> {
    let plain = postcard::to_allocvec(&record_of(items, refusing))
        .map_err(|e| StoreError::Corrupt(format!("log record: {e}")))?;
    let mut out = vec![FORMAT];
    out.extend(
        zstd::bulk::compress(&plain, ZSTD_LEVEL)
            .map_err(|e| StoreError::Corrupt(format!("log record: {e}")))?,
    );
    Ok(out)
}

fn record_of(items: &[Ingest], refusing: bool) -> Record {
    let base_ms = items.first().map_or(0, received_ms);
    let rel = |ms: u64| (ms as i64).wrapping_sub(base_ms as i64);
    let mut names = Names::default();
    let items = items
        .iter()
        .map(|item| match item {
            Ingest::Reading(r) => Item::Reading {
                device: names.of(&r.device),
                transport: r.transport,
                wire: r.wire,
                seq: r.seq,
                boot: r.boot,
                timestamp: r.timestamp_ms.map(rel),
                received: rel(r.received_ms),
                metrics: r
                    .metrics
                    .iter()
                    .map(|(m, v)| (names.of(m), v.clone()))
                    .collect(),
            },
            Ingest::Rejected(r) => Item::Rejected {
                device: names.of(&r.device),
                transport: r.transport,
                wire: r.wire,
                seq: r.seq,
                boot: r.boot,
                received: rel(r.received_ms),
            },
            Ingest::Hello(h) => Item::Hello {
                device: names.of(&h.device),
                transport: h.transport,
                firmware: h.firmware.clone(),
                protocol_version: h.protocol_version,
                boot: h.boot,
                received: rel(h.received_ms),
            },
            Ingest::CommandResult(c) => Item::CommandResult {
                device: names.of(&c.device),
                transport: c.transport,
                id: c.id,
                ok: c.ok,
                result: c.result.clone(),
                error: c.error.clone(),
                error_code: c.error_code,
                received: rel(c.received_ms),
            },
            Ingest::Status(s) => Item::Status {
                device: names.of(&s.device),
                transport: s.transport,
                online: s.online,
                received: rel(s.received_ms),
            },
        })
        .collect();
    Record {
        refusing,
        base_ms,
        names: names.list,
        items,
    }
}

/// The items of a record and whether the store was refusing new readings.
pub fn decode(bytes: &[u8]) -> Result<(Vec<Ingest>, bool), StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("log record of items: {what}"));
    let (&format, body) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
    let plain;
    let body = match format {
        FORMAT => {
            let size = zstd::zstd_safe::get_frame_content_size(body)
                .ok()
                .flatten()
                .filter(|&n| n <= MAX_PLAIN_BYTES)
                .ok_or_else(|| corrupt("compressed size"))?;
            plain =
                zstd::bulk::decompress(body, size as usize).map_err(|e| corrupt(&e.to_string()))?;
            &plain[..]
        }
        FORMAT_PLAIN => body,
        _ => return Err(corrupt("unknown format")),
    };
    let record: Record = postcard::from_bytes(body).map_err(|e| corrupt(&e.to_string()))?;
    let name = |i: u32| {
        record
            .names
            .get(i as usize)
            .cloned()
            .ok_or_else(|| corrupt("name index"))
    };
    let abs = |d: i64| (record.base_ms as i64).wrapping_add(d) as u64;
    let mut items = Vec::with_capacity(record.items.len());
    for item in &record.items {
        items.push(match item {
            Item::Reading {
                device,
                transport,
                wire,
                seq,
                boot,
                timestamp,
                received,
                metrics,
            } => Ingest::Reading(NewReading {
                device: name(*device)?,
                transport: *transport,
                wire: *wire,
                seq: *seq,
                boot: *boot,
                timestamp_ms: timestamp.map(abs),
                received_ms: abs(*received),
                metrics: metrics
                    .iter()
                    .map(|(m, v)| Ok((name(*m)?, v.clone())))
                    .collect::<Result<_, StoreError>>()?,
            }),
            Item::Rejected {
                device,
                transport,
                wire,
                seq,
                boot,
                received,
            } => Ingest::Rejected(RejectedReading {
                device: name(*device)?,
                transport: *transport,
                wire: *wire,
                seq: *seq,
                boot: *boot,
                received_ms: abs(*received),
            }),
            Item::Hello {
                device,
                transport,
                firmware,
                protocol_version,
                boot,
                received,
            } => Ingest::Hello(DeviceHello {
                device: name(*device)?,
                transport: *transport,
                firmware: firmware.clone(),
                protocol_version: *protocol_version,
                boot: *boot,
                received_ms: abs(*received),
            }),
            Item::CommandResult {
                device,
                transport,
                id,
                ok,
                result,
                error,
                error_code,
                received,
            } => Ingest::CommandResult(CommandResultIn {
                device: name(*device)?,
                transport: *transport,
                id: *id,
                ok: *ok,
                result: result.clone(),
                error: error.clone(),
                error_code: *error_code,
                received_ms: abs(*received),
            }),
            Item::Status {
                device,
                transport,
                online,
                received,
            } => Ingest::Status(DeviceStatus {
                device: name(*device)?,
                transport: *transport,
                online: *online,
                reason: REPLAYED,
                received_ms: abs(*received),
            }),
        });
    }
    Ok((items, record.refusing))
}

fn received_ms(item: &Ingest) -> u64 {
    match item {
        Ingest::Reading(r) => r.received_ms,
        Ingest::Rejected(r) => r.received_ms,
        Ingest::Hello(h) => h.received_ms,
        Ingest::CommandResult(c) => c.received_ms,
        Ingest::Status(s) => s.received_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = OwnedValue> {
        prop_oneof![
            any::<f64>().prop_map(OwnedValue::F64),
            any::<i64>().prop_map(OwnedValue::I64),
            any::<bool>().prop_map(OwnedValue::Bool),
            "[a-z]{0,12}".prop_map(OwnedValue::Str),
        ]
    }

    fn item() -> impl Strategy<Value = Ingest> {
        let device = "[a-c]{1,3}";
        let ms = 1_700_000_000_000u64..1_800_000_000_000;
        prop_oneof![
            (
                device,
                any::<Option<u32>>(),
                any::<Option<u32>>(),
                proptest::option::of(ms.clone()),
                ms.clone(),
                proptest::collection::vec(("[a-e]{1,4}", value()), 0..5)
            )
                .prop_map(|(device, seq, boot, ts, rx, metrics)| {
                    Ingest::Reading(NewReading {
                        device,
                        transport: Transport::Mqtt,
                        wire: Wire::Json,
                        seq,
                        boot,
                        timestamp_ms: ts,
                        received_ms: rx,
                        metrics,
                    })
                }),
            (device, any::<u32>(), ms.clone()).prop_map(|(device, seq, rx)| {
                Ingest::Rejected(RejectedReading {
                    device,
                    transport: Transport::Serial,
                    wire: Wire::Binary,
                    seq,
                    boot: Some(3),
                    received_ms: rx,
                })
            }),
            (device, "[0-9.]{0,8}", ms.clone()).prop_map(|(device, firmware, rx)| {
                Ingest::Hello(DeviceHello {
                    device,
                    transport: Transport::Mqtt,
                    firmware,
                    protocol_version: 2,
                    boot: None,
                    received_ms: rx,
                })
            }),
            (device, any::<u64>(), any::<bool>(), ms.clone()).prop_map(|(device, id, ok, rx)| {
                Ingest::CommandResult(CommandResultIn {
                    device,
                    transport: Transport::Mqtt,
                    id,
                    ok,
                    result: ok.then(|| "{}".into()),
                    error: (!ok).then(|| "no".into()),
                    error_code: None,
                    received_ms: rx,
                })
            }),
            (device, any::<bool>(), ms).prop_map(|(device, online, rx)| {
                Ingest::Status(DeviceStatus {
                    device,
                    transport: Transport::Mqtt,
                    online,
                    reason: REPLAYED,
                    received_ms: rx,
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn items_round_trip_nan_included_and_garbage_never_panics(
            items in proptest::collection::vec(item(), 0..20),
            refusing in any::<bool>(),
        ) {
            let bytes = encode(&items, refusing).unwrap();
            let (back, r) = decode(&bytes).unwrap();
            prop_assert_eq!(r, refusing);
            // NaN is not equal to itself: compare the encodings, which hold the exact bits.
            prop_assert_eq!(encode(&back, r).unwrap(), bytes.clone());
            prop_assert_eq!(back.len(), items.len());
            for cut in 0..bytes.len() {
                let _ = decode(&bytes[..cut]);
            }
        }
    }

    #[test]
    fn plain_records_of_earlier_releases_still_read() {
        let items = readings_of_100_devices();
        let mut plain = vec![FORMAT_PLAIN];
        plain.extend(postcard::to_allocvec(&record_of(&items, true)).unwrap());
        let (back, refusing) = decode(&plain).unwrap();
        assert!(refusing);
        assert_eq!(encode(&back, true).unwrap(), encode(&items, true).unwrap());
    }

    #[test]
    fn a_record_that_claims_more_than_any_batch_is_refused_unread() {
        // A zstd frame header (single segment, 8-byte content size) claiming 1 TiB, no blocks.
        let mut bomb = vec![FORMAT, 0x28, 0xB5, 0x2F, 0xFD, 0xE0];
        bomb.extend((1u64 << 40).to_le_bytes());
        let err = decode(&bomb).unwrap_err().to_string();
        assert!(err.contains("compressed size"), "{err}");
    }

    fn readings_of_100_devices() -> Vec<Ingest> {
        (0..100u32)
            .map(|i| {
                Ingest::Reading(NewReading {
                    device: format!("sim-{i:03}"),
                    transport: Transport::Mqtt,
                    wire: Wire::Json,
                    seq: Some(100_000 + i),
                    boot: Some(2),
                    timestamp_ms: Some(1_764_000_000_000 + u64::from(i)),
                    received_ms: 1_764_000_000_000 + u64::from(i),
                    metrics: ["temperature", "humidity", "pressure", "battery"]
                        .iter()
                        .map(|m| ((*m).to_owned(), OwnedValue::F64(21.5 + f64::from(i))))
                        .collect(),
                })
            })
            .collect()
    }

    #[test]
    fn a_reading_of_four_floats_takes_at_most_64_bytes() {
        let items = readings_of_100_devices();
        let bytes = encode(&items, false).unwrap();
        let per_reading = bytes.len() / items.len();
        assert!(per_reading <= 64, "{per_reading} bytes a reading");
    }
}
