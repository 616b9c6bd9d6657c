//! Property tests: messages round trip, the frame decoder rebuilds any chunking of a stream, and
//! no input (garbage, bit flips, over-long runs) panics it or costs the next frame after a 0x00.
#![cfg(feature = "std")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers may panic"
)]

use device_protocol::{
    CommandStatus, DecoderStats, Downlink, Error, FeedResult, Field, Fields, FrameDecoder,
    MAX_FIELDS, MAX_FRAME_LEN, MAX_ID_LEN, MAX_MESSAGE_LEN, MAX_STR_LEN, OwnedValue, Telemetry,
    Uplink, Value, encode_frame,
};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::Serialize;

// ---------------------------------------------------------------------------------------------
// Owned models of the messages, so proptest can generate them; `message()` borrows the real one.

type Items = Vec<(String, OwnedValue)>;

#[derive(Debug, Clone)]
enum UpModel {
    Hello {
        device_id: String,
        firmware: String,
        protocol_version: u16,
        boot: Option<u32>,
    },
    Telemetry {
        seq: u32,
        timestamp_ms: Option<u64>,
        readings: Items,
        boot: Option<u32>,
    },
    CommandResult {
        command_id: u64,
        status: CommandStatus,
        payload: Items,
    },
}

#[derive(Debug, Clone)]
enum DownModel {
    Ack(u32, Option<u32>),
    Command {
        command_id: u64,
        name: String,
        args: Items,
    },
    TimeSync(u64),
    Rejected(u32, Option<u32>, String),
    GaveUp(Option<u32>, Vec<(u32, u32)>),
}

fn to_fields(items: &Items) -> Fields<'_> {
    let mut fields = Fields::new();
    for (name, value) in items {
        fields
            .push(Field {
                name,
                value: value.as_value(),
            })
            .unwrap();
    }
    fields
}

impl UpModel {
    fn message(&self) -> Uplink<'_> {
        match self {
            UpModel::Hello {
                device_id,
                firmware,
                protocol_version,
                boot,
            } => Uplink::Hello(device_protocol::Hello {
                device_id,
                firmware,
                protocol_version: *protocol_version,
                boot: *boot,
            }),
            UpModel::Telemetry {
                seq,
                timestamp_ms,
                readings,
                boot,
            } => Uplink::Telemetry(Telemetry {
                seq: *seq,
                timestamp_ms: *timestamp_ms,
                readings: to_fields(readings),
                boot: *boot,
            }),
            UpModel::CommandResult {
                command_id,
                status,
                payload,
            } => Uplink::CommandResult(device_protocol::CommandResult {
                command_id: *command_id,
                status: *status,
                payload: to_fields(payload),
            }),
        }
    }
}

impl DownModel {
    fn message(&self) -> Downlink<'_> {
        match self {
            DownModel::Ack(seq, boot) => Downlink::Ack(device_protocol::Ack {
                seq: *seq,
                boot: *boot,
            }),
            DownModel::Command {
                command_id,
                name,
                args,
            } => Downlink::Command(device_protocol::Command {
                command_id: *command_id,
                name,
                args: to_fields(args),
            }),
            DownModel::TimeSync(unix_ms) => {
                Downlink::TimeSync(device_protocol::TimeSync { unix_ms: *unix_ms })
            }
            DownModel::Rejected(seq, boot, reason) => {
                Downlink::Rejected(device_protocol::Rejected {
                    seq: *seq,
                    boot: *boot,
                    reason,
                })
            }
            DownModel::GaveUp(boot, ranges) => Downlink::GaveUp(device_protocol::GaveUp {
                boot: *boot,
                ranges: ranges
                    .iter()
                    .map(|&(first, last)| device_protocol::SeqRange { first, last })
                    .collect(),
            }),
        }
    }
}

/// How big generated messages get.
#[derive(Clone, Copy)]
struct Limits {
    id: &'static str,
    text: &'static str,
    max_fields: usize,
}

/// Up to the protocol's limits (long strings are added separately).
const FULL: Limits = Limits {
    // Not `.` or `..` (refused ids): the first character is not a dot.
    id: "[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}",
    text: "\\PC{0,64}",
    max_fields: MAX_FIELDS,
};

/// Small messages, for tests that are quadratic in the stream length.
const SMALL: Limits = Limits {
    id: "[A-Za-z0-9_-][A-Za-z0-9._-]{0,7}",
    text: "\\PC{0,8}",
    max_fields: 3,
};

fn text(limits: Limits) -> BoxedStrategy<String> {
    if limits.max_fields == MAX_FIELDS {
        // Sometimes right at MAX_STR_LEN bytes.
        prop_oneof![
            4 => limits.text,
            1 => "[ -~]{250,256}",
        ]
        .boxed()
    } else {
        limits.text.boxed()
    }
}

fn value(limits: Limits) -> impl Strategy<Value = OwnedValue> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(OwnedValue::F64),
        any::<i64>().prop_map(OwnedValue::I64),
        any::<bool>().prop_map(OwnedValue::Bool),
        text(limits).prop_map(OwnedValue::Str),
    ]
}

/// Unique names (the first of a duplicated name is kept), at least `min` entries.
fn items(limits: Limits, min: usize) -> impl Strategy<Value = Items> {
    vec((limits.id, value(limits)), min..=limits.max_fields).prop_map(|mut items| {
        let mut seen = std::collections::HashSet::new();
        items.retain(|(name, _)| seen.insert(name.clone()));
        items
    })
}

fn status() -> impl Strategy<Value = CommandStatus> {
    prop_oneof![
        Just(CommandStatus::Ok),
        any::<u16>().prop_map(CommandStatus::Error)
    ]
}

fn uplink(limits: Limits) -> impl Strategy<Value = UpModel> {
    prop_oneof![
        (limits.id, text(limits), 1..=u16::MAX, any::<Option<u32>>()).prop_map(
            |(device_id, firmware, protocol_version, boot)| {
                UpModel::Hello {
                    device_id,
                    firmware,
                    protocol_version,
                    boot,
                }
            }
        ),
        (
            any::<u32>(),
            any::<Option<u64>>(),
            items(limits, 1),
            any::<Option<u32>>()
        )
            .prop_map(|(seq, timestamp_ms, readings, boot)| UpModel::Telemetry {
                seq,
                timestamp_ms,
                readings,
                boot,
            }),
        (any::<u64>(), status(), items(limits, 0)).prop_map(|(command_id, status, payload)| {
            UpModel::CommandResult {
                command_id,
                status,
                payload,
            }
        }),
    ]
}

fn downlink(limits: Limits) -> impl Strategy<Value = DownModel> {
    prop_oneof![
        (any::<u32>(), any::<Option<u32>>()).prop_map(|(seq, boot)| DownModel::Ack(seq, boot)),
        (any::<u64>(), limits.id, items(limits, 0)).prop_map(|(command_id, name, args)| {
            DownModel::Command {
                command_id,
                name,
                args,
            }
        }),
        any::<u64>().prop_map(DownModel::TimeSync),
        (any::<u32>(), any::<Option<u32>>(), text(limits))
            .prop_map(|(seq, boot, reason)| DownModel::Rejected(seq, boot, reason)),
        (
            any::<Option<u32>>(),
            vec(
                (any::<u32>(), any::<u32>()).prop_map(|(a, b)| (a.min(b), a.max(b))),
                1..=device_protocol::MAX_RANGES
            )
        )
            .prop_map(|(boot, ranges)| DownModel::GaveUp(boot, ranges)),
    ]
}

fn fits_a_frame(model: &UpModel) -> bool {
    model.message().to_vec().unwrap().len() <= MAX_MESSAGE_LEN
}

/// An uplink that fits in one frame.
fn framed_uplink(limits: Limits) -> impl Strategy<Value = UpModel> {
    uplink(limits).prop_filter("fits a frame", fits_a_frame)
}

// ---------------------------------------------------------------------------------------------
// Feeding helpers.

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Frame(Vec<u8>),
    Dropped(Error),
}

/// Feeds `input` until it is consumed, recording every frame and drop. Also checks that every call
/// makes progress and that payloads and reasons are what the contract allows.
fn feed_all(decoder: &mut FrameDecoder, mut input: &[u8], events: &mut Vec<Event>) {
    loop {
        let before = input.len();
        match decoder.feed(input) {
            FeedResult::Consumed => return,
            FeedResult::Frame { payload, remaining } => {
                assert!(!payload.is_empty() && payload.len() < MAX_FRAME_LEN);
                // Decoding whatever arrives must not panic either.
                let _ = Uplink::decode(payload);
                let _ = Downlink::decode(payload);
                events.push(Event::Frame(payload.to_vec()));
                assert!(remaining.len() < before);
                input = remaining;
            }
            FeedResult::Dropped { reason, remaining } => {
                assert!(matches!(
                    reason,
                    Error::FrameTooLong | Error::Cobs | Error::Crc
                ));
                events.push(Event::Dropped(reason));
                assert!(remaining.len() < before);
                input = remaining;
            }
        }
    }
}

/// Feeds `stream` in chunks whose sizes cycle through `sizes` (each at least 1).
fn feed_chunked(stream: &[u8], sizes: &[usize]) -> (Vec<Event>, DecoderStats) {
    let mut decoder = FrameDecoder::new();
    let mut events = Vec::new();
    let mut rest = stream;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap()).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        feed_all(&mut decoder, chunk, &mut events);
        rest = tail;
    }
    (events, decoder.stats())
}

fn frame_of<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = vec![0u8; MAX_FRAME_LEN + 1];
    let len = encode_frame(message, &mut out).unwrap();
    out.truncate(len);
    out
}

fn stream_of(models: &[UpModel]) -> Vec<u8> {
    models.iter().flat_map(|m| frame_of(&m.message())).collect()
}

fn expected_events(models: &[UpModel]) -> Vec<Event> {
    models
        .iter()
        .map(|m| Event::Frame(m.message().to_vec().unwrap()))
        .collect()
}

/// Serializes as exactly the given bytes (a tuple of u8 in postcard).
struct Exact<'a>(&'a [u8]);

impl Serialize for Exact<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = s.serialize_tuple(self.0.len())?;
        for byte in self.0 {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips.

proptest! {
    #[test]
    fn uplink_round_trips(model in uplink(FULL)) {
        let message = model.message();
        let mut buf = vec![0u8; 8192];
        let encoded = message.encode(&mut buf).unwrap().to_vec();
        prop_assert_eq!(&message.to_vec().unwrap(), &encoded);
        prop_assert_eq!(Uplink::decode(&encoded).unwrap(), message);
    }

    #[test]
    fn downlink_round_trips(model in downlink(FULL)) {
        let message = model.message();
        let mut buf = vec![0u8; 8192];
        let encoded = message.encode(&mut buf).unwrap().to_vec();
        prop_assert_eq!(&message.to_vec().unwrap(), &encoded);
        prop_assert_eq!(Downlink::decode(&encoded).unwrap(), message);
    }

    #[test]
    fn encode_never_overruns_a_small_buffer(model in uplink(FULL), size in 0usize..64) {
        let message = model.message();
        let full = message.to_vec().unwrap();
        let mut buf = vec![0u8; size];
        match message.encode(&mut buf) {
            Ok(encoded) => prop_assert_eq!(&encoded[..], &full[..]),
            Err(e) => {
                prop_assert_eq!(e, Error::BufferTooSmall);
                prop_assert!(full.len() > size);
            }
        }
    }

    #[test]
    fn uplink_frame_round_trips(model in framed_uplink(FULL)) {
        let message = model.message();
        let frame = frame_of(&message);
        prop_assert!(frame.len() <= MAX_FRAME_LEN + 1);
        prop_assert_eq!(frame.last(), Some(&0));
        prop_assert!(!frame[..frame.len() - 1].contains(&0));
        let mut decoder = FrameDecoder::new();
        match decoder.feed(&frame) {
            FeedResult::Frame { payload, remaining } => {
                prop_assert!(remaining.is_empty());
                prop_assert_eq!(Uplink::decode(payload).unwrap(), message);
            }
            other => prop_assert!(false, "expected a frame, got {:?}", other),
        }
        prop_assert_eq!(decoder.stats().frames, 1);
    }

    #[test]
    fn downlink_frame_round_trips(model in downlink(FULL)) {
        let message = model.message();
        prop_assume!(message.to_vec().unwrap().len() <= MAX_MESSAGE_LEN);
        let frame = frame_of(&message);
        let mut decoder = FrameDecoder::new();
        match decoder.feed(&frame) {
            FeedResult::Frame { payload, remaining } => {
                prop_assert!(remaining.is_empty());
                prop_assert_eq!(Downlink::decode(payload).unwrap(), message);
            }
            other => prop_assert!(false, "expected a frame, got {:?}", other),
        }
    }

    /// Our COBS agrees with an independent implementation (the `cobs` crate), both ways, on any
    /// payload up to the largest message.
    #[test]
    fn framing_agrees_with_the_cobs_crate(payload in vec(any::<u8>(), 1..=MAX_MESSAGE_LEN)) {
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&payload);
        let raw = [&payload[..], &crc.to_le_bytes()].concat();

        // Ours -> theirs.
        let frame = frame_of(&Exact(&payload));
        let body = &frame[..frame.len() - 1];
        let mut decoded = vec![0u8; body.len()];
        let report = cobs::decode(body, &mut decoded).unwrap();
        prop_assert_eq!(&decoded[..report.frame_size()], &raw[..]);

        // Theirs -> ours.
        let mut theirs = vec![0u8; cobs::max_encoding_length(raw.len()) + 1];
        let len = cobs::encode(&raw, &mut theirs);
        theirs.truncate(len);
        theirs.push(0);
        let (events, _) = feed_chunked(&theirs, &[theirs.len()]);
        prop_assert_eq!(events, vec![Event::Frame(payload)]);
    }
}

// ---------------------------------------------------------------------------------------------
// Streams and chunking.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Several frames, split into two chunks at every byte position, give the same messages.
    #[test]
    fn stream_split_at_every_position(
        models in vec(framed_uplink(SMALL), 1..=5),
        resync_prefix in any::<bool>(),
    ) {
        let mut stream = stream_of(&models);
        if resync_prefix {
            stream.insert(0, 0);
        }
        let expected = expected_events(&models);
        for split in 0..=stream.len() {
            let mut decoder = FrameDecoder::new();
            let mut events = Vec::new();
            feed_all(&mut decoder, &stream[..split], &mut events);
            feed_all(&mut decoder, &stream[split..], &mut events);
            prop_assert_eq!(&events, &expected, "split at {}", split);
        }
    }

    /// Random chunkings, including one byte at a time, give the same messages.
    #[test]
    fn stream_random_chunking(
        models in vec(framed_uplink(FULL), 1..=6),
        sizes in vec(1usize..300, 1..20),
        bytewise in any::<bool>(),
    ) {
        let stream = stream_of(&models);
        let sizes = if bytewise { vec![1] } else { sizes };
        let (events, stats) = feed_chunked(&stream, &sizes);
        prop_assert_eq!(events, expected_events(&models));
        prop_assert_eq!(stats.frames, models.len() as u64);
        prop_assert_eq!(stats.dropped_too_long + stats.dropped_cobs + stats.dropped_crc, 0);
    }

    /// Garbage never panics, and the stats count exactly what was reported.
    #[test]
    fn garbage_never_panics(
        garbage in prop_oneof![
            vec(any::<u8>(), 0..4096),
            // Few zeros: long runs and over-long frames.
            vec(prop_oneof![20 => 1u8..=255, 1 => Just(0u8)], 0..4096),
        ],
        sizes in vec(1usize..600, 1..10),
    ) {
        let (events, stats) = feed_chunked(&garbage, &sizes);
        let frames = events.iter().filter(|e| matches!(e, Event::Frame(_))).count() as u64;
        let count = |reason| events.iter().filter(|e| **e == Event::Dropped(reason)).count() as u64;
        prop_assert_eq!(stats.frames, frames);
        prop_assert_eq!(stats.dropped_too_long, count(Error::FrameTooLong));
        prop_assert_eq!(stats.dropped_cobs, count(Error::Cobs));
        prop_assert_eq!(stats.dropped_crc, count(Error::Crc));
    }

    /// Whatever came before, a 0x00 then a valid frame delivers that frame.
    #[test]
    fn garbage_then_zero_then_frame(
        garbage in prop_oneof![
            vec(any::<u8>(), 0..3000),
            vec(1u8..=255, 0..3000),
        ],
        model in framed_uplink(FULL),
        sizes in vec(1usize..600, 1..10),
    ) {
        let message = model.message();
        let mut stream = garbage;
        stream.push(0);
        stream.extend_from_slice(&frame_of(&message));
        let (events, _) = feed_chunked(&stream, &sizes);
        prop_assert_eq!(events.last(), Some(&Event::Frame(message.to_vec().unwrap())));
    }

    /// Bit flips in a frame's body give a drop, a decode error or (rarely) another valid message,
    /// never a panic; the next frame still arrives.
    #[test]
    fn bit_flips_cost_at_most_their_frame(
        first in framed_uplink(FULL),
        second in framed_uplink(FULL),
        flips in vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
        sizes in vec(1usize..300, 1..10),
    ) {
        let mut corrupted = frame_of(&first.message());
        let body_len = corrupted.len() - 1; // the delimiter is left alone (see the next test)
        for (index, bit) in flips {
            corrupted[index.index(body_len)] ^= 1 << bit;
        }
        let second_message = second.message();
        let stream = [corrupted, frame_of(&second_message)].concat();
        let (events, _) = feed_chunked(&stream, &sizes);
        // Only the first frame is at risk; payloads were already decoded in feed_all.
        prop_assert_eq!(events.last(), Some(&Event::Frame(second_message.to_vec().unwrap())));
    }

    /// A corrupted delimiter merges two frames, unless the sender prefixes frames with 0x00.
    #[test]
    fn resync_prefix_survives_a_corrupted_delimiter(
        first in framed_uplink(SMALL),
        second in framed_uplink(SMALL),
        bit in 0u8..8,
    ) {
        let mut corrupted = frame_of(&first.message());
        let last = corrupted.len() - 1;
        corrupted[last] ^= 1 << bit;
        let second_message = second.message();
        let stream = [corrupted, vec![0], frame_of(&second_message)].concat();
        let (events, _) = feed_chunked(&stream, &[7]);
        prop_assert_eq!(events.last(), Some(&Event::Frame(second_message.to_vec().unwrap())));
    }

    /// An over-long run is reported once as FrameTooLong, and the next frame arrives.
    #[test]
    fn over_long_run_is_reported_once(
        run in vec(1u8..=255, MAX_FRAME_LEN + 1..3 * MAX_FRAME_LEN),
        model in framed_uplink(FULL),
        sizes in vec(1usize..700, 1..10),
    ) {
        let message = model.message();
        let mut stream = run;
        stream.push(0);
        stream.extend_from_slice(&frame_of(&message));
        let (events, stats) = feed_chunked(&stream, &sizes);
        prop_assert_eq!(
            events,
            vec![
                Event::Dropped(Error::FrameTooLong),
                Event::Frame(message.to_vec().unwrap()),
            ]
        );
        prop_assert_eq!(stats.dropped_too_long, 1);
        prop_assert_eq!(stats.frames, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases at the limits.

#[test]
fn largest_message_round_trips() {
    let names: Vec<String> = (0..MAX_FIELDS)
        .map(|i| format!("{i:0>width$}", width = MAX_ID_LEN))
        .collect();
    let long = "é".repeat(MAX_STR_LEN / 2);
    let mut readings = Fields::new();
    for name in &names {
        readings
            .push(Field {
                name,
                value: Value::Str(&long),
            })
            .unwrap();
    }
    let message = Uplink::Telemetry(Telemetry {
        seq: u32::MAX,
        timestamp_ms: Some(u64::MAX),
        readings,
        boot: Some(u32::MAX),
    });
    let bytes = message.to_vec().unwrap();
    assert_eq!(Uplink::decode(&bytes).unwrap(), message);
    // Too big for a serial frame: that is reported, not truncated.
    let mut out = vec![0u8; 2 * MAX_FRAME_LEN];
    assert_eq!(encode_frame(&message, &mut out), Err(Error::FrameTooLong));
}

#[test]
fn frame_into_a_small_buffer() {
    let message = Downlink::Ack(device_protocol::Ack {
        seq: 127,
        boot: None,
    });
    let mut out = [0u8; 7];
    assert_eq!(encode_frame(&message, &mut out), Err(Error::BufferTooSmall));
    let mut out = [0u8; 8];
    assert_eq!(encode_frame(&message, &mut out), Ok(8));
}
