//! Golden bytes: the exact postcard encoding of every message variant, and of some whole frames.
//!
//! These bytes are the wire format. If a test here fails, the change breaks every deployed device:
//! append fields and variants instead (see the crate docs). The values were checked by hand:
//! varints are little-endian base 128, i64 is zigzag-encoded first, f64 is 8 bytes little-endian,
//! strings and lists are a varint length then the items, `Option` is 0 or 1 then the value.
#![cfg(feature = "std")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers may panic"
)]

use device_protocol::{
    Ack, Command, CommandResult, CommandStatus, Downlink, FeedResult, Field, Fields, FrameDecoder,
    GaveUp, Hello, OwnedValue, Rejected, SeqRange, SeqRanges, Telemetry, TimeSync, Uplink, Value,
    encode_frame, encode_line_frame,
};

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

/// 2026-11-21T10:00:00Z in unix milliseconds.
const TS_MS: u64 = 1_795_255_200_000;
/// Its varint.
const TS_VARINT: [u8; 6] = [0x80, 0xd2, 0xb1, 0xec, 0x9f, 0x34];

/// `Hello { "dev-1", "1.2.3", protocol_version 1 }` as a device of version 1 sends it.
#[rustfmt::skip]
const HELLO_V1: [u8; 14] = [
    0x00,                                     // Uplink::Hello
    0x05, b'd', b'e', b'v', b'-', b'1',       // device_id
    0x05, b'1', b'.', b'2', b'.', b'3',       // firmware
    0x01,                                     // protocol_version
];

/// `Telemetry { seq 300, no timestamp, temp 21.5 }` as a device of version 1 sends it.
#[rustfmt::skip]
const TELEMETRY_V1: [u8; 19] = [
    0x01,                                     // Uplink::Telemetry
    0xac, 0x02,                               // seq 300
    0x00,                                     // timestamp None
    0x01,                                     // 1 reading
    0x04, b't', b'e', b'm', b'p',             // name
    0x00,                                     // Value::F64
    0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x35, 0x40, // 21.5 = 0x4035_8000_0000_0000
];

fn check_uplink(message: &Uplink<'_>, expected: &[u8]) {
    let mut buf = [0u8; 512];
    let encoded = message.encode(&mut buf).unwrap();
    assert_eq!(encoded, expected, "encoding of {message:?}");
    assert_eq!(message.to_vec().unwrap(), expected);
    assert_eq!(&Uplink::decode(expected).unwrap(), message);
}

fn check_downlink(message: &Downlink<'_>, expected: &[u8]) {
    let mut buf = [0u8; 512];
    let encoded = message.encode(&mut buf).unwrap();
    assert_eq!(encoded, expected, "encoding of {message:?}");
    assert_eq!(message.to_vec().unwrap(), expected);
    assert_eq!(&Downlink::decode(expected).unwrap(), message);
}

#[test]
fn hello() {
    let message = Uplink::Hello(Hello {
        device_id: "dev-1",
        firmware: "1.2.3",
        protocol_version: 1,
        boot: None,
    });
    check_uplink(&message, &HELLO_V1);
}

#[test]
fn telemetry_without_timestamp() {
    let message = Uplink::Telemetry(Telemetry {
        seq: 300,
        timestamp_ms: None,
        readings: fields(&[("temp", Value::F64(21.5))]),
        boot: None,
    });
    check_uplink(&message, &TELEMETRY_V1);
}

#[test]
fn telemetry_with_timestamp_and_every_value_kind() {
    let message = Uplink::Telemetry(Telemetry {
        seq: 7,
        timestamp_ms: Some(TS_MS),
        readings: fields(&[
            ("n", Value::I64(-3)),
            ("big", Value::I64(i64::MAX)),
            ("door", Value::Bool(true)),
            ("s", Value::Str("ok")),
        ]),
        boot: None,
    });
    let mut expected = vec![0x01, 0x07, 0x01];
    expected.extend_from_slice(&TS_VARINT);
    #[rustfmt::skip]
    expected.extend_from_slice(&[
        0x04,                                     // 4 readings
        0x01, b'n', 0x01, 0x05,                   // I64(-3): zigzag 5
        0x03, b'b', b'i', b'g', 0x01,             // I64(i64::MAX): zigzag u64::MAX - 1
        0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        0x04, b'd', b'o', b'o', b'r', 0x02, 0x01, // Bool(true)
        0x01, b's', 0x03, 0x02, b'o', b'k',       // Str("ok")
    ]);
    check_uplink(&message, &expected);
}

/// Each `Value` variant alone, as the single reading `v` of `Telemetry { seq: 1, None, .. }`.
#[test]
fn every_value_variant() {
    let prefix = [0x01, 0x01, 0x00, 0x01, 0x01, b'v'];
    let cases: [(Value<'_>, &[u8]); 10] = [
        (Value::F64(-1.0), &[0x00, 0, 0, 0, 0, 0, 0, 0xf0, 0xbf]),
        (Value::F64(0.0), &[0x00, 0, 0, 0, 0, 0, 0, 0, 0]),
        (Value::I64(0), &[0x01, 0x00]),
        (Value::I64(-1), &[0x01, 0x01]),
        (Value::I64(1), &[0x01, 0x02]),
        (
            Value::I64(i64::MIN),
            &[
                0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ),
        (Value::Bool(false), &[0x02, 0x00]),
        (Value::Bool(true), &[0x02, 0x01]),
        (Value::Str(""), &[0x03, 0x00]),
        (Value::Str("é"), &[0x03, 0x02, 0xc3, 0xa9]),
    ];
    for (value, value_bytes) in cases {
        let message = Uplink::Telemetry(Telemetry {
            seq: 1,
            timestamp_ms: None,
            readings: fields(&[("v", value.clone())]),
            boot: None,
        });
        let expected = [&prefix[..], value_bytes].concat();
        check_uplink(&message, &expected);
        // The owned form has the same bytes.
        let owned = postcard::to_allocvec(&OwnedValue::from(&value)).unwrap();
        assert_eq!(owned, value_bytes);
    }
}

#[test]
fn command_result_ok() {
    let message = Uplink::CommandResult(CommandResult {
        command_id: 42,
        status: CommandStatus::Ok,
        payload: Fields::new(),
    });
    // Uplink::CommandResult, id 42, CommandStatus::Ok, no payload.
    check_uplink(&message, &[0x02, 0x2a, 0x00, 0x00]);
}

#[test]
fn command_result_error() {
    let message = Uplink::CommandResult(CommandResult {
        command_id: 43,
        status: CommandStatus::Error(500),
        payload: fields(&[("why", Value::Str("busy"))]),
    });
    #[rustfmt::skip]
    let expected = [
        0x02,                                     // Uplink::CommandResult
        0x2b,                                     // command_id 43
        0x01, 0xf4, 0x03,                         // CommandStatus::Error(500)
        0x01,                                     // 1 field
        0x03, b'w', b'h', b'y',
        0x03, 0x04, b'b', b'u', b's', b'y',       // Str("busy")
    ];
    check_uplink(&message, &expected);
}

#[test]
fn ack() {
    check_downlink(
        &Downlink::Ack(Ack {
            seq: 127,
            boot: None,
        }),
        &[0x00, 0x7f],
    );
    check_downlink(
        &Downlink::Ack(Ack {
            seq: 128,
            boot: None,
        }),
        &[0x00, 0x80, 0x01],
    );
    check_downlink(
        &Downlink::Ack(Ack {
            seq: u32::MAX,
            boot: None,
        }),
        &[0x00, 0xff, 0xff, 0xff, 0xff, 0x0f],
    );
}

#[test]
fn command() {
    let message = Downlink::Command(Command {
        command_id: 42,
        name: "reboot",
        args: fields(&[
            ("delay_ms", Value::I64(1000)),
            ("force", Value::Bool(false)),
        ]),
    });
    #[rustfmt::skip]
    let expected = [
        0x01,                                     // Downlink::Command
        0x2a,                                     // command_id 42
        0x06, b'r', b'e', b'b', b'o', b'o', b't', // name
        0x02,                                     // 2 args
        0x08, b'd', b'e', b'l', b'a', b'y', b'_', b'm', b's',
        0x01, 0xd0, 0x0f,                         // I64(1000): zigzag 2000
        0x05, b'f', b'o', b'r', b'c', b'e',
        0x02, 0x00,                               // Bool(false)
    ];
    check_downlink(&message, &expected);
}

#[test]
fn time_sync() {
    let message = Downlink::TimeSync(TimeSync { unix_ms: TS_MS });
    let expected = [&[0x02][..], &TS_VARINT].concat();
    check_downlink(&message, &expected);
}

fn decode_one_frame(frame: &[u8]) -> Vec<u8> {
    let mut decoder = FrameDecoder::new();
    match decoder.feed(frame) {
        FeedResult::Frame { payload, remaining } => {
            assert!(remaining.is_empty());
            payload.to_vec()
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[test]
fn frame_of_ack() {
    let message = Downlink::Ack(Ack {
        seq: 127,
        boot: None,
    });
    let mut out = [0u8; 64];
    let len = encode_frame(&message, &mut out).unwrap();
    // postcard 00 7f, CRC-32 0x81637e52 little-endian, COBS, delimiter.
    let expected = [0x01, 0x06, 0x7f, 0x52, 0x7e, 0x63, 0x81, 0x00];
    assert_eq!(&out[..len], &expected);
    assert_eq!(decode_one_frame(&expected), [0x00, 0x7f]);
}

#[test]
fn frame_of_telemetry() {
    let message = Uplink::Telemetry(Telemetry {
        seq: 300,
        timestamp_ms: None,
        readings: fields(&[("temp", Value::F64(21.5))]),
        boot: None,
    });
    let mut out = [0u8; 64];
    let len = encode_frame(&message, &mut out).unwrap();
    #[rustfmt::skip]
    let expected = [
        0x04, 0x01, 0xac, 0x02,                   // block "01 ac 02" + zero
        0x07, 0x01, 0x04, b't', b'e', b'm', b'p', // block "01 04 temp" + zero
        0x01, 0x01, 0x01, 0x01, 0x01,             // five more zeros of 21.5
        0x08, 0x80, 0x35, 0x40,                   // rest of 21.5
        0xb3, 0x61, 0x38, 0x04,                   // CRC-32 0x043861b3
        0x00,                                     // delimiter
    ];
    assert_eq!(&out[..len], &expected);
    assert_eq!(decode_one_frame(&expected), message.to_vec().unwrap());
}

#[test]
fn frame_of_command_result() {
    let message = Uplink::CommandResult(CommandResult {
        command_id: 42,
        status: CommandStatus::Ok,
        payload: Fields::new(),
    });
    let mut out = [0u8; 64];
    let len = encode_frame(&message, &mut out).unwrap();
    let expected = [0x03, 0x02, 0x2a, 0x01, 0x05, 0xa1, 0xd4, 0x97, 0xbe, 0x00];
    assert_eq!(&out[..len], &expected);
    assert_eq!(decode_one_frame(&expected), [0x02, 0x2a, 0x00, 0x00]);
}

// ----- Protocol version 2 ---------------------------------------------------------------------

#[test]
fn hello_with_boot() {
    let message = Uplink::Hello(Hello {
        device_id: "dev-1",
        firmware: "1.2.3",
        protocol_version: 2,
        boot: Some(300),
    });
    // The version 1 layout with protocol_version 2, then boot Some(300).
    let mut expected = HELLO_V1.to_vec();
    expected[13] = 0x02;
    expected.extend_from_slice(&[0x01, 0xac, 0x02]);
    check_uplink(&message, &expected);
}

#[test]
fn telemetry_with_boot() {
    let message = Uplink::Telemetry(Telemetry {
        seq: 300,
        timestamp_ms: None,
        readings: fields(&[("temp", Value::F64(21.5))]),
        boot: Some(7),
    });
    // The version 1 bytes, then boot Some(7).
    let expected = [&TELEMETRY_V1[..], &[0x01, 0x07]].concat();
    check_uplink(&message, &expected);
}

#[test]
fn ack_with_boot() {
    check_downlink(
        &Downlink::Ack(Ack {
            seq: 127,
            boot: Some(0),
        }),
        &[0x00, 0x7f, 0x01, 0x00],
    );
}

#[test]
fn rejected() {
    let message = Downlink::Rejected(Rejected {
        seq: 1,
        boot: Some(2),
        reason: "long",
    });
    #[rustfmt::skip]
    let expected = [
        0x03,                                     // Downlink::Rejected
        0x01,                                     // seq
        0x01, 0x02,                               // boot Some(2)
        0x04, b'l', b'o', b'n', b'g',             // reason
    ];
    check_downlink(&message, &expected);
}

#[test]
fn gave_up() {
    let mut ranges = SeqRanges::new();
    ranges.push(SeqRange { first: 1, last: 1 }).unwrap();
    ranges
        .push(SeqRange {
            first: 3,
            last: 300,
        })
        .unwrap();
    let message = Downlink::GaveUp(GaveUp { boot: None, ranges });
    #[rustfmt::skip]
    let expected = [
        0x04,                                     // Downlink::GaveUp
        0x00,                                     // boot None
        0x02,                                     // 2 ranges
        0x01, 0x01,                               // 1..=1
        0x03, 0xac, 0x02,                         // 3..=300
    ];
    check_downlink(&message, &expected);
}

/// What a device of version 1 sends is read as before, with no boot; and what a hub of version 2
/// sends a device that gave no boot is what a hub of version 1 sent.
#[test]
fn version_1_bytes_still_decode() {
    match Uplink::decode(&HELLO_V1).unwrap() {
        Uplink::Hello(h) => assert_eq!((h.protocol_version, h.boot), (1, None)),
        other => panic!("{other:?}"),
    }
    match Uplink::decode(&TELEMETRY_V1).unwrap() {
        Uplink::Telemetry(t) => assert_eq!((t.seq, t.boot), (300, None)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        Downlink::Ack(Ack {
            seq: 127,
            boot: None
        })
        .to_vec()
        .unwrap(),
        [0x00, 0x7f]
    );
}

#[test]
fn line_frame_is_a_zero_then_the_frame() {
    let message = Downlink::Ack(Ack {
        seq: 127,
        boot: None,
    });
    let mut out = [0u8; 64];
    let len = encode_line_frame(&message, &mut out).unwrap();
    assert_eq!(
        &out[..len],
        &[0x00, 0x01, 0x06, 0x7f, 0x52, 0x7e, 0x63, 0x81, 0x00]
    );
}
