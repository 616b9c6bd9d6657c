//! Tests of `records`: every older layout still decodes, and new fields keep old bytes.

use super::*;
use crate::store::sequence::WindowV1;

#[test]
fn second_layout_device_records_keep_their_window_as_a_run_without_boot() {
    let mut bits = vec![0u8; 128];
    bits[0] = 0b10; // seq 11 (base 9) stored, 10 not yet
    let old = DeviceRecordV2 {
        v1: DeviceRecordV1 {
            name: "d-2".into(),
            transport: Transport::Mqtt,
            first_seen_ms: 1,
            last_seen_ms: 2,
            last_seq: Some(11),
            readings: 9,
            firmware: None,
            labels: BTreeMap::new(),
            metrics: vec![0],
            protocol_version: None,
            seq_window: Some(WindowV1 {
                base: 9,
                bits,
                missing: vec![4],
                given_up: 1,
            }),
            duplicates: 0,
        },
        display_name: Some("hall".into()),
        wire: Wire::Json,
    };
    let mut record = decode_device(&encode(&old).unwrap()).unwrap();
    assert_eq!(
        (record.name.as_str(), record.display_name.as_deref()),
        ("d-2", Some("hall"))
    );
    assert_eq!(record.runs.ack(None).map(|a| a.seq), Some(3));
    // 4 is still awaited, 11 is known, 10 is new.
    use super::super::sequence::Verdict;
    assert_eq!(record.runs.take(None, 11).verdict, Verdict::Duplicate);
    assert_eq!(record.runs.take(None, 4).verdict, Verdict::New);
    assert_eq!(record.runs.take(None, 10).verdict, Verdict::New);
    assert_eq!(record.runs.ack(None).map(|a| a.seq), Some(11));
    let bytes = encode_device(&record).unwrap();
    assert_eq!(&bytes[..2], &DEVICE_LAYOUT_3);
    assert_eq!(decode_device(&bytes).unwrap(), record);
    // A layout from a newer hub is refused by name, not misread.
    assert!(matches!(
        decode_device(&[0x00, 4, 1, 2]),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn reading_records_keep_their_bytes_unless_the_origin_says_something() {
    let plain = ReadingRecord {
        device: 1,
        seq: 7,
        timestamp_ms: 9,
        metrics: vec![(0, OwnedValue::I64(3))],
        origin: SeqOrigin::Device,
    };
    /// As a hub of schema 2 wrote it.
    #[derive(Serialize)]
    struct DeviceRecordV2 {
        device: u32,
        seq: u32,
        timestamp_ms: u64,
        metrics: Vec<(u32, OwnedValue)>,
    }
    let old = encode(&DeviceRecordV2 {
        device: 1,
        seq: 7,
        timestamp_ms: 9,
        metrics: vec![(0, OwnedValue::I64(3))],
    })
    .unwrap();
    assert_eq!(encode(&plain).unwrap(), old, "the same bytes as before");
    assert_eq!(decode::<ReadingRecord>(&old, "r").unwrap(), plain);
    for origin in [SeqOrigin::Boot(4), SeqOrigin::Hub] {
        let record = ReadingRecord {
            origin,
            ..plain.clone()
        };
        let bytes = encode(&record).unwrap();
        assert!(bytes.len() > old.len());
        assert_eq!(decode::<ReadingRecord>(&bytes, "r").unwrap(), record);
    }
    assert_eq!(
        ReadingRecord {
            origin: SeqOrigin::Hub,
            ..plain.clone()
        }
        .numbering(),
        ReadingSeq::Hub(7)
    );
}

#[test]
fn first_layout_device_records_still_decode() {
    for (transport, protocol_version, wire) in [
        (Transport::Mqtt, None, Wire::Json),
        (Transport::Mqtt, Some(1), Wire::Binary),
        (Transport::Serial, None, Wire::Binary),
    ] {
        let old = DeviceRecordV1 {
            name: "d-1".into(),
            transport,
            first_seen_ms: 1,
            last_seen_ms: 2,
            last_seq: Some(3),
            readings: 4,
            firmware: Some("fw".into()),
            labels: BTreeMap::from([("room".into(), "kitchen".into())]),
            metrics: vec![0, 1],
            protocol_version,
            seq_window: None,
            duplicates: 5,
        };
        let record = decode_device(&encode(&old).unwrap()).unwrap();
        assert_eq!(
            (record.name.as_str(), record.readings, record.duplicates),
            ("d-1", 4, 5)
        );
        assert_eq!(
            record.labels.get("room").map(String::as_str),
            Some("kitchen")
        );
        assert_eq!((record.wire, record.display_name.as_deref()), (wire, None));
        assert!(record.runs.is_empty());
        // Written back in the new layout, it reads as itself.
        assert_eq!(
            decode_device(&encode_device(&record).unwrap()).unwrap(),
            record
        );
    }
}

#[test]
fn token_records_of_the_first_layout_still_decode() {
    #[derive(Serialize)]
    struct DeviceRecordV1 {
        name: String,
        scopes: Vec<String>,
        devices: Vec<String>,
        created_ms: u64,
        expires_ms: Option<u64>,
        revoked: bool,
    }
    let old = DeviceRecordV1 {
        name: "app".into(),
        scopes: vec!["read".into()],
        devices: vec!["greenhouse-*".into()],
        created_ms: 7,
        expires_ms: Some(9),
        revoked: true,
    };
    let record = decode_token(&encode(&old).unwrap()).unwrap();
    assert_eq!(
        (record.name.as_str(), record.created_ms, record.expires_ms),
        ("app", 7, Some(9))
    );
    assert!(record.revoked && record.last_used_ms.is_none());
    assert_eq!(record.devices, vec!["greenhouse-*".to_owned()]);
    let mut used = record.clone();
    used.last_used_ms = Some(11);
    assert_eq!(decode_token(&encode(&used).unwrap()).unwrap(), used);
}
