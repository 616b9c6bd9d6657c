//! What goes upstream: a batch body (the same JSON for every sink kind) and its idempotency key.
//!
//! ```json
//! {"hub":"gw-1","sink":"cloud","key":"gw-1.cloud.0-2","first_offset":0,"last_offset":2,
//!  "readings":[{"device":"t1","metrics":{"temp":21.5},"offset":0,"seq":7,"ts":"2026-11-21T10:00:00.000Z"}]}
//! ```
//!
//! Readings are in offset order, so each device's readings are in its order. The key names the
//! hub, the sink and the batch's first and last offsets: a batch sent again (a retry, or after a
//! restart, which resends the persisted in-flight batch as it was) carries the same key, and a
//! receiver that has seen the key can drop the batch. `(device, boot, seq)` identifies each reading
//! a device numbered too (`boot` only when the device sends one); a reading it did not number has
//! a `hub_seq` instead of `seq`, and only the key and offset tell it apart.

use serde::Serialize;

use crate::store::Reading;
use crate::values::ReadingJson;

#[derive(Serialize)]
struct BatchBody<'a> {
    hub: &'a str,
    sink: &'a str,
    key: &'a str,
    first_offset: u64,
    last_offset: u64,
    readings: Vec<ReadingJson>,
}

/// The idempotency key of the batch from `first` to `last` of `sink` on `hub`.
pub fn batch_key(hub: &str, sink: &str, first: u64, last: u64) -> String {
    format!("{hub}.{sink}.{first}-{last}")
}

/// The JSON body of a batch of `readings` (not empty, in offset order) and its key. `range` is
/// the batch's first and last offset when it was fixed before (an in-flight batch sent again
/// after a restart: readings erased since then are missing from it, and it keeps its key all the
/// same); otherwise the readings' own.
pub fn batch_body(
    hub: &str,
    sink: &str,
    readings: &[Reading],
    range: Option<(u64, u64)>,
) -> (String, Vec<u8>) {
    let (first, last) = range.unwrap_or((
        readings.first().map_or(0, |r| r.offset),
        readings.last().map_or(0, |r| r.offset),
    ));
    let key = batch_key(hub, sink, first, last);
    let body = BatchBody {
        hub,
        sink,
        key: &key,
        first_offset: first,
        last_offset: last,
        readings: readings.iter().map(ReadingJson::from).collect(),
    };
    // Serializing these types cannot fail (string keys, no maps with other keys).
    let json = serde_json::to_vec(&body).unwrap_or_default();
    (key, json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use device_protocol::OwnedValue;

    #[test]
    fn the_body_names_its_batch_and_keeps_offset_order() {
        let readings: Vec<Reading> = (5..8)
            .map(|offset| Reading {
                offset,
                device: "t1".into(),
                seq: crate::store::ReadingSeq::Device {
                    boot: None,
                    seq: offset as u32,
                },
                timestamp_ms: 1_700_000_000_000 + offset,
                metrics: vec![("temp".into(), OwnedValue::F64(21.5))],
            })
            .collect();
        let (key, body) = batch_body("gw", "cloud", &readings, None);
        assert_eq!(key, "gw.cloud.5-7");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["key"], "gw.cloud.5-7");
        assert_eq!(json["first_offset"], 5);
        assert_eq!(json["last_offset"], 7);
        let offsets: Vec<u64> = json["readings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, [5, 6, 7]);
        assert_eq!(json["readings"][0]["metrics"]["temp"], 21.5);
        assert_eq!(json["readings"][0]["device"], "t1");
    }
}
