//! Messages between devices and the edge hub, their postcard encoding, the serial framing, and
//! (with the `std` feature) the JSON forms used on MQTT.
//!
//! # Layers
//!
//! - [`Uplink`] (device to hub) and [`Downlink`] (hub to device) are the messages. They borrow their
//!   strings from the input bytes, so decoding allocates nothing and works on a microcontroller.
//!   `encode` / `decode` turn them into postcard bytes and back; `decode` also checks the protocol
//!   rules (see [`Uplink::validate`]) and returns [`Error::Invalid`] when one is broken.
//! - [`frame`] puts a message on a serial line: `COBS(postcard ++ crc32_le(postcard)) ++ [0x00]`,
//!   and [`FrameDecoder`] rebuilds frames from arbitrary chunks of bytes in a fixed buffer. A
//!   sender writes a 0x00 before each frame too (see [`frame`]): after line noise, the frame that
//!   follows is then not lost.
//! - `json` (feature `std`) parses and writes the JSON payloads of the MQTT topics.
//!
//! # Wire rule
//!
//! postcard encodes by position: a struct is its fields in declaration order, an enum is its
//! variant index (a varint) followed by that variant's data; no names or tags are on the wire. So
//! **fields and enum variants are only ever appended**, never reordered, removed or retyped, and the
//! exact bytes of every message are pinned by `tests/golden.rs`.
//!
//! `decode` ignores bytes after a complete message, so a field appended at the end of a message
//! struct (`Hello`, `Telemetry`, `CommandResult`, `Ack`, `Command`, `TimeSync`) is skipped by an
//! older decoder. postcard alone cannot read an older message that lacks the field, so an
//! appended field is an `Option` read tolerantly: absent (the message ends first) reads as
//! `None`, and it is written only when `Some`, so a message without it keeps the older bytes.
//! Version 2 appended `boot` to `Hello`, `Telemetry` and `Ack` this way, and the downlink
//! variants `Rejected` and `GaveUp`. Bump [`PROTOCOL_VERSION`] when appending, and append new
//! kinds of message as new enum variants (an older decoder fails on those with
//! [`Error::Decode`], and skips them).
//!
//! # Delivery
//!
//! `(device, boot, seq)` identifies a reading: a device numbers its telemetry, and a device whose
//! counter starts again at every reboot also sends a boot number that changes at every reboot
//! ([`Hello::boot`], [`Telemetry::boot`]). The hub answers, per boot, with a cumulative [`Ack`]:
//! every seq up to it is stored, or was named in a [`Rejected`] (refused for its content: drop
//! it) or a [`GaveUp`] (the hub stopped waiting for it) sent before. A device keeps each reading
//! until an ack for its boot passes it, and sends it again when acks stop coming.
//!
//! # Features
//!
//! - none: `no_std`, no allocation (builds for `thumbv7em-none-eabihf`).
//! - `alloc`: `OwnedValue` and `to_vec` on messages.
//! - `std` (default): `alloc` plus the `json` module.
//!
//! # Example
//!
//! ```
//! use device_protocol::{Field, FeedResult, FrameDecoder, Telemetry, Uplink, Value, encode_frame};
//!
//! let mut readings = device_protocol::Fields::new();
//! readings.push(Field { name: "temp", value: Value::F64(21.5) }).unwrap();
//! let message = Uplink::Telemetry(Telemetry { seq: 7, timestamp_ms: None, readings, boot: Some(3) });
//!
//! let mut frame = [0u8; device_protocol::MAX_FRAME_LEN + 1];
//! let len = encode_frame(&message, &mut frame).unwrap();
//!
//! let mut decoder = FrameDecoder::new();
//! match decoder.feed(&frame[..len]) {
//!     FeedResult::Frame { payload, remaining } => {
//!         assert_eq!(Uplink::decode(payload).unwrap(), message);
//!         assert!(remaining.is_empty());
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

mod error;
pub mod frame;
#[cfg(feature = "std")]
pub mod json;
mod message;
#[cfg(feature = "alloc")]
mod owned;

pub use error::Error;
pub use frame::{DecoderStats, FeedResult, FrameDecoder, encode_frame, encode_line_frame};
pub use message::{
    Ack, Command, CommandResult, CommandStatus, Downlink, Field, Fields, GaveUp, Hello, ReadingId,
    Rejected, SeqRange, SeqRanges, Telemetry, TimeSync, Uplink, Value,
};
#[cfg(feature = "alloc")]
pub use owned::OwnedValue;

/// Version of this protocol, sent by a device in [`Hello::protocol_version`]. Version 2 added the
/// boot number and the `Rejected` and `GaveUp` downlinks; a hub of version 2 reads version 1
/// messages unchanged.
pub const PROTOCOL_VERSION: u16 = 2;

/// Maximum length in bytes (all ASCII, so also in chars) of a device id or a metric / field name.
pub const MAX_ID_LEN: usize = 64;

/// Maximum number of entries in one [`Fields`] list: readings per [`Telemetry`], args per
/// [`Command`], payload fields per [`CommandResult`].
pub const MAX_FIELDS: usize = 16;

/// Maximum length in bytes (UTF-8) of a string value ([`Value::Str`], [`Hello::firmware`],
/// [`Rejected::reason`]).
pub const MAX_STR_LEN: usize = 256;

/// Maximum number of seq ranges in one [`GaveUp`].
pub const MAX_RANGES: usize = 16;

/// Maximum length in bytes of one COBS-encoded frame, not counting its 0x00 delimiter.
pub const MAX_FRAME_LEN: usize = 1024;

/// Largest postcard message, in bytes, that always fits in one frame once its CRC-32 and the COBS
/// overhead are added (1015 for a `MAX_FRAME_LEN` of 1024).
pub const MAX_MESSAGE_LEN: usize = frame::max_message_len(MAX_FRAME_LEN);

/// True if `s` is a valid device id or metric / field name: 1 to [`MAX_ID_LEN`] characters, each
/// one of `A-Z a-z 0-9 . _ -`, and neither `.` nor `..`. Ids end up in paths (URLs, file names
/// of certificates, MQTT topics), where those two mean "this" and "the parent".
pub fn is_valid_id(s: &str) -> bool {
    s != "."
        && s != ".."
        && !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_length_edges() {
        assert!(!is_valid_id(""));
        assert!(is_valid_id("a"));
        let max = "a".repeat(MAX_ID_LEN);
        assert!(is_valid_id(&max));
        let too_long = "a".repeat(MAX_ID_LEN + 1);
        assert!(!is_valid_id(&too_long));
    }

    #[test]
    fn id_allowed_characters() {
        assert!(is_valid_id("greenhouse-1.temp_C"));
        assert!(is_valid_id("ABCxyz0189"));
        assert!(is_valid_id("._-"));
        assert!(is_valid_id("..."));
        assert!(is_valid_id(".a"));
        assert!(is_valid_id("a.."));
        for bad in [
            "a b", "a/b", "a+b", "a#b", "a\0b", "a\nb", "a:b", "a,b", "\"a\"", "a*", ".", "..",
        ] {
            assert!(!is_valid_id(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn id_rejects_non_ascii() {
        assert!(!is_valid_id("température"));
        assert!(!is_valid_id("é"));
        assert!(!is_valid_id("ａ")); // fullwidth a
        // 32 two-byte chars are 64 bytes but still invalid.
        assert!(!is_valid_id(&"é".repeat(32)));
    }

    #[test]
    fn max_message_len_is_the_largest_that_fits() {
        assert_eq!(MAX_MESSAGE_LEN, 1015);
        let crc = 4;
        assert!(frame::cobs_max_encoded_len(MAX_MESSAGE_LEN + crc) <= MAX_FRAME_LEN);
        assert!(frame::cobs_max_encoded_len(MAX_MESSAGE_LEN + 1 + crc) > MAX_FRAME_LEN);
    }
}
