//! Serial framing: messages on a byte stream that can lose, add or corrupt bytes.
//!
//! A frame is `COBS(postcard_bytes ++ crc32_le(postcard_bytes)) ++ [0x00]`:
//! - CRC-32 is CRC_32_ISO_HDLC (the zlib / Ethernet CRC), little-endian, over the postcard bytes;
//! - COBS (Consistent Overhead Byte Stuffing) removes every 0x00 from the frame body, so 0x00 only
//!   ever ends a frame and a receiver can always find the next frame boundary;
//! - the encoded body is at most [`MAX_FRAME_LEN`] bytes, so a message is at most
//!   [`MAX_MESSAGE_LEN`] bytes.
//!
//! # On the line: a 0x00 before each frame
//!
//! A sender writes a 0x00 before every frame, so a line carries `0x00 frame 0x00 frame ...`:
//! bytes of noise (or of a frame cut short) since the last frame are then ended by that 0x00 and
//! cost nothing but themselves, where without it they would run into the next frame and spoil
//! it, and that reading would be lost until the device sends it again. The receiver skips the
//! empty frame this makes between two 0x00s without counting anything. The hub writes its
//! downlinks this way, and expects devices to; a sender that does not is still understood, only
//! without that protection. [`encode_frame`] writes the frame alone (what a file of frames holds);
//! write the 0x00 before it, or use [`encode_line_frame`].
//!
//! # Decoding
//!
//! [`FrameDecoder`] rebuilds frames from chunks of any size in a fixed `[u8; MAX_FRAME_LEN]` buffer.
//! Its invariants:
//! - it never panics and never allocates, whatever the input;
//! - an empty frame (0x00 right after 0x00) is skipped silently, so a sender may send a 0x00
//!   before each frame to resynchronise a receiver (and to survive a corrupted delimiter);
//! - a frame that fails COBS or CRC is reported once as [`FeedResult::Dropped`] at its 0x00;
//! - a frame longer than `MAX_FRAME_LEN` is reported once, as soon as it overflows, and the rest of
//!   it is discarded up to the next 0x00;
//! - so garbage never costs the next valid frame after a 0x00.

use serde::Serialize;

use crate::{Error, MAX_FRAME_LEN, MAX_MESSAGE_LEN};

/// Length of the CRC-32 appended to the postcard bytes.
const CRC_LEN: usize = 4;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Largest number of bytes COBS can turn `len` bytes into: one code byte per started block of
/// 254 bytes (at least one).
pub(crate) const fn cobs_max_encoded_len(len: usize) -> usize {
    if len == 0 { 1 } else { len + len.div_ceil(254) }
}

/// Largest postcard message whose frame body always fits in `frame_len` bytes.
pub(crate) const fn max_message_len(frame_len: usize) -> usize {
    let mut raw = frame_len;
    while cobs_max_encoded_len(raw) > frame_len {
        raw -= 1;
    }
    raw - CRC_LEN
}

// The stack scratch of `encode_frame` must always fit a frame.
const _: () = assert!(cobs_max_encoded_len(MAX_MESSAGE_LEN + CRC_LEN) <= MAX_FRAME_LEN);

/// Serializes `message` with postcard and writes one whole frame, with its trailing 0x00, into
/// `out`; returns the frame's length.
///
/// Errors: [`Error::FrameTooLong`] if the message is longer than [`MAX_MESSAGE_LEN`],
/// [`Error::BufferTooSmall`] if `out` cannot hold the frame (`MAX_FRAME_LEN + 1` always can),
/// [`Error::Encode`] if postcard fails. The message is not validated: validate `Uplink` /
/// `Downlink` first (their `encode` does) if it comes from untrusted input.
pub fn encode_frame<T: Serialize>(message: &T, out: &mut [u8]) -> Result<usize, Error> {
    let mut scratch = [0u8; MAX_MESSAGE_LEN + CRC_LEN];
    let message_len = match postcard::to_slice(message, &mut scratch[..MAX_MESSAGE_LEN]) {
        Ok(bytes) => bytes.len(),
        Err(postcard::Error::SerializeBufferFull) => return Err(Error::FrameTooLong),
        Err(_) => return Err(Error::Encode),
    };
    let crc = CRC32.checksum(&scratch[..message_len]);
    let raw_len = message_len + CRC_LEN;
    scratch[message_len..raw_len].copy_from_slice(&crc.to_le_bytes());

    let body_len = cobs_encode(&scratch[..raw_len], out)?;
    put(out, body_len, 0)?;
    Ok(body_len + 1)
}

/// What a sender writes on a line for `message`: a 0x00, then its frame (see the module docs);
/// returns the length written into `out`, at most `MAX_FRAME_LEN + 2`. Errors as
/// [`encode_frame`].
pub fn encode_line_frame<T: Serialize>(message: &T, out: &mut [u8]) -> Result<usize, Error> {
    put(out, 0, 0)?;
    let rest = out.get_mut(1..).ok_or(Error::BufferTooSmall)?;
    Ok(1 + encode_frame(message, rest)?)
}

/// Writes `byte` at `out[at]`, or fails with [`Error::BufferTooSmall`].
fn put(out: &mut [u8], at: usize, byte: u8) -> Result<(), Error> {
    let slot = out.get_mut(at).ok_or(Error::BufferTooSmall)?;
    *slot = byte;
    Ok(())
}

/// COBS-encodes `src` into `out` (no delimiter); returns the encoded length.
///
/// Each block is a code byte `n` followed by `n - 1` non-zero bytes; a block with `n < 0xFF`
/// stands for its bytes followed by a 0x00, except the last block. A full block (`0xFF`) is not
/// followed by an extra empty block when it ends the input.
fn cobs_encode(src: &[u8], out: &mut [u8]) -> Result<usize, Error> {
    let mut code_at = 0; // where the current block's code byte goes
    let mut write = 1;
    let mut code: u8 = 1;
    for (i, &byte) in src.iter().enumerate() {
        if byte != 0 {
            put(out, write, byte)?;
            write += 1;
            code += 1;
        }
        let more_follows = i + 1 < src.len();
        if byte == 0 || (code == 0xFF && more_follows) {
            put(out, code_at, code)?;
            code_at = write;
            write += 1;
            code = 1;
        }
    }
    put(out, code_at, code)?;
    Ok(write)
}

/// Decodes a COBS body (no delimiter) in place; returns the decoded length. The decoded bytes
/// never overtake the encoded ones still to be read, so one buffer is enough.
fn cobs_decode_in_place(buf: &mut [u8]) -> Result<usize, Error> {
    let mut read = 0;
    let mut write = 0;
    while read < buf.len() {
        let code = usize::from(buf[read]);
        if code == 0 {
            return Err(Error::Cobs);
        }
        read += 1;
        let block_end = read + code - 1;
        if block_end > buf.len() {
            return Err(Error::Cobs);
        }
        buf.copy_within(read..block_end, write);
        write += code - 1;
        read = block_end;
        if code != 0xFF && read < buf.len() {
            buf[write] = 0;
            write += 1;
        }
    }
    Ok(write)
}

/// Decodes a frame body in place and checks its CRC; returns the length of the postcard bytes at
/// the start of `buf`.
fn open_frame(buf: &mut [u8]) -> Result<usize, Error> {
    let raw_len = cobs_decode_in_place(buf)?;
    // A frame must carry a non-empty message and its CRC.
    if raw_len <= CRC_LEN {
        return Err(Error::Crc);
    }
    let message_len = raw_len - CRC_LEN;
    let mut sent = [0u8; CRC_LEN];
    sent.copy_from_slice(&buf[message_len..raw_len]);
    if CRC32.checksum(&buf[..message_len]) != u32::from_le_bytes(sent) {
        return Err(Error::Crc);
    }
    Ok(message_len)
}

/// Counters of a [`FrameDecoder`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Frames delivered with a good CRC.
    pub frames: u64,
    /// Frames dropped for being longer than [`MAX_FRAME_LEN`].
    pub dropped_too_long: u64,
    /// Frames dropped for invalid COBS.
    pub dropped_cobs: u64,
    /// Frames dropped for a CRC mismatch (or too short to hold a CRC).
    pub dropped_crc: u64,
}

/// What [`FrameDecoder::feed`] found in the input.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedResult<'buf, 'input> {
    /// All input was used and no frame is complete yet.
    Consumed,
    /// A frame with a good CRC. Feed `remaining` next.
    Frame {
        /// The frame's postcard bytes (CRC removed), valid until the next `feed`.
        payload: &'buf [u8],
        /// The input after this frame's 0x00.
        remaining: &'input [u8],
    },
    /// A frame was dropped. Feed `remaining` next.
    Dropped {
        /// [`Error::FrameTooLong`], [`Error::Cobs`] or [`Error::Crc`].
        reason: Error,
        /// The input after the byte that decided the drop.
        remaining: &'input [u8],
    },
}

/// Rebuilds frames from a serial byte stream, chunk by chunk, in a fixed buffer.
///
/// Feed every chunk, then keep feeding `remaining` until [`FeedResult::Consumed`]:
///
/// ```
/// # use device_protocol::{FeedResult, FrameDecoder};
/// # fn handle(_: &[u8]) {}
/// # let chunk: &[u8] = &[];
/// let mut decoder = FrameDecoder::new();
/// let mut input = chunk;
/// loop {
///     match decoder.feed(input) {
///         FeedResult::Consumed => break,
///         FeedResult::Frame { payload, remaining } => {
///             handle(payload);
///             input = remaining;
///         }
///         FeedResult::Dropped { remaining, .. } => input = remaining,
///     }
/// }
/// ```
pub struct FrameDecoder {
    /// Encoded bytes of the frame being received.
    buf: [u8; MAX_FRAME_LEN],
    /// How many bytes of `buf` are used.
    len: usize,
    /// The current frame was too long and has been reported: skip to the next 0x00.
    discarding: bool,
    stats: DecoderStats,
}

impl FrameDecoder {
    /// A decoder waiting for the start of a frame.
    pub const fn new() -> Self {
        FrameDecoder {
            buf: [0; MAX_FRAME_LEN],
            len: 0,
            discarding: false,
            stats: DecoderStats {
                frames: 0,
                dropped_too_long: 0,
                dropped_cobs: 0,
                dropped_crc: 0,
            },
        }
    }

    /// Consumes `input` up to the end of the next complete or dropped frame.
    pub fn feed<'buf, 'input>(&'buf mut self, input: &'input [u8]) -> FeedResult<'buf, 'input> {
        for (i, &byte) in input.iter().enumerate() {
            let remaining = &input[i + 1..];
            if byte == 0 {
                if self.discarding {
                    // The end of a too-long frame, already reported.
                    self.discarding = false;
                    continue;
                }
                if self.len == 0 {
                    // An empty frame: a sender's resync marker.
                    continue;
                }
                let body_len = core::mem::take(&mut self.len);
                return match open_frame(&mut self.buf[..body_len]) {
                    Ok(message_len) => {
                        self.stats.frames += 1;
                        FeedResult::Frame {
                            payload: &self.buf[..message_len],
                            remaining,
                        }
                    }
                    Err(reason) => {
                        match reason {
                            Error::Cobs => self.stats.dropped_cobs += 1,
                            _ => self.stats.dropped_crc += 1,
                        }
                        FeedResult::Dropped { reason, remaining }
                    }
                };
            }
            if self.discarding {
                continue;
            }
            if self.len == MAX_FRAME_LEN {
                self.len = 0;
                self.discarding = true;
                self.stats.dropped_too_long += 1;
                return FeedResult::Dropped {
                    reason: Error::FrameTooLong,
                    remaining,
                };
            }
            self.buf[self.len] = byte;
            self.len += 1;
        }
        FeedResult::Consumed
    }

    /// Forgets any partly received frame (e.g. after the serial port was reopened). Counters stay.
    pub fn reset(&mut self) {
        self.len = 0;
        self.discarding = false;
    }

    /// The counters since the decoder was created.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered", &self.len)
            .field("discarding", &self.discarding)
            .field("stats", &self.stats)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(src: &[u8]) -> ([u8; 2048], usize) {
        let mut out = [0u8; 2048];
        let len = cobs_encode(src, &mut out).unwrap();
        (out, len)
    }

    fn round_trip(src: &[u8], expected: &[u8]) {
        let (mut out, len) = encode(src);
        assert_eq!(&out[..len], expected, "encoding {src:?}");
        assert!(len <= cobs_max_encoded_len(src.len()));
        let decoded = cobs_decode_in_place(&mut out[..len]).unwrap();
        assert_eq!(&out[..decoded], src);
    }

    // Examples from the COBS paper / Wikipedia.
    #[test]
    fn cobs_known_vectors() {
        round_trip(&[], &[0x01]);
        round_trip(&[0x00], &[0x01, 0x01]);
        round_trip(&[0x00, 0x00], &[0x01, 0x01, 0x01]);
        round_trip(&[0x00, 0x11, 0x00], &[0x01, 0x02, 0x11, 0x01]);
        round_trip(&[0x11, 0x22, 0x00, 0x33], &[0x03, 0x11, 0x22, 0x02, 0x33]);
        round_trip(&[0x11, 0x22, 0x33, 0x44], &[0x05, 0x11, 0x22, 0x33, 0x44]);
        round_trip(&[0x11, 0x00, 0x00, 0x00], &[0x02, 0x11, 0x01, 0x01, 0x01]);
    }

    #[test]
    fn cobs_long_blocks() {
        // 254 non-zero bytes: one full block, no trailing empty block.
        let src: [u8; 254] = core::array::from_fn(|i| (i % 255 + 1) as u8);
        let mut expected = [0u8; 255];
        expected[0] = 0xFF;
        expected[1..].copy_from_slice(&src);
        round_trip(&src, &expected);

        // 255 non-zero bytes: a full block and a block of one.
        let src: [u8; 255] = core::array::from_fn(|i| (i + 1) as u8);
        let mut expected = [0u8; 257];
        expected[0] = 0xFF;
        expected[1..255].copy_from_slice(&src[..254]);
        expected[255] = 0x02;
        expected[256] = 255;
        round_trip(&src, &expected);

        // 254 non-zero bytes then a zero.
        let mut src = [1u8; 255];
        src[254] = 0;
        let (out, len) = encode(&src);
        assert_eq!(len, 257);
        assert_eq!(&out[254..257], &[1, 0x01, 0x01]);
        round_trip(&src, &out[..len]);
    }

    #[test]
    fn cobs_decode_rejects_bad_input() {
        assert_eq!(cobs_decode_in_place(&mut [0x05, 1, 2]), Err(Error::Cobs));
        assert_eq!(cobs_decode_in_place(&mut [0x02, 1, 0x00]), Err(Error::Cobs));
        assert_eq!(cobs_decode_in_place(&mut [0xFF]), Err(Error::Cobs));
    }

    #[test]
    fn cobs_encode_small_buffer() {
        let mut out = [0u8; 3];
        assert_eq!(
            cobs_encode(&[1, 2, 3], &mut out),
            Err(Error::BufferTooSmall)
        );
        let mut out = [0u8; 4];
        assert_eq!(cobs_encode(&[1, 2, 3], &mut out), Ok(4));
        assert_eq!(cobs_encode(&[], &mut []), Err(Error::BufferTooSmall));
    }

    #[test]
    fn crc_is_iso_hdlc() {
        // The standard check value of CRC-32 (zlib, Ethernet).
        assert_eq!(CRC32.checksum(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn empty_frames_are_skipped_silently() {
        let mut decoder = FrameDecoder::new();
        assert_eq!(decoder.feed(&[0, 0, 0]), FeedResult::Consumed);
        // The Ack { seq: 127 } frame from the golden tests, with resync zeros around it.
        let input = [0, 0x01, 0x06, 0x7f, 0x52, 0x7e, 0x63, 0x81, 0x00, 0x00];
        assert_eq!(
            decoder.feed(&input),
            FeedResult::Frame {
                payload: &[0x00, 0x7f],
                remaining: &[0x00]
            }
        );
        assert_eq!(decoder.feed(&[0x00]), FeedResult::Consumed);
        assert_eq!(
            decoder.stats(),
            DecoderStats {
                frames: 1,
                ..DecoderStats::default()
            }
        );
    }

    #[test]
    fn bad_cobs_is_dropped_and_counted() {
        let mut decoder = FrameDecoder::new();
        assert_eq!(
            decoder.feed(&[0x05, 0x01, 0x00, 0x07]),
            FeedResult::Dropped {
                reason: Error::Cobs,
                remaining: &[0x07]
            }
        );
        assert_eq!(decoder.stats().dropped_cobs, 1);
        // The partial frame is forgotten on reset.
        assert_eq!(decoder.feed(&[0x07]), FeedResult::Consumed);
        decoder.reset();
        assert_eq!(decoder.feed(&[0x00]), FeedResult::Consumed);
    }

    #[test]
    fn too_short_frames_are_crc_drops() {
        let mut decoder = FrameDecoder::new();
        // Decodes to 4 zero bytes: an empty message with a (correct) CRC of 0.
        let input = [0x01, 0x01, 0x01, 0x01, 0x01, 0x00];
        assert_eq!(
            decoder.feed(&input),
            FeedResult::Dropped {
                reason: Error::Crc,
                remaining: &[]
            }
        );
        // Decodes to one byte: no room for a CRC.
        assert!(matches!(
            decoder.feed(&[0x02, 0x07, 0x00]),
            FeedResult::Dropped {
                reason: Error::Crc,
                ..
            }
        ));
        assert_eq!(decoder.stats().dropped_crc, 2);
    }

    #[test]
    fn message_too_long_for_a_frame() {
        /// Serializes as a tuple of bytes: postcard writes exactly the bytes.
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

        let big = [7u8; MAX_MESSAGE_LEN + 1];
        let mut out = [0u8; 2 * MAX_FRAME_LEN];
        assert_eq!(
            encode_frame(&Exact(&big), &mut out),
            Err(Error::FrameTooLong)
        );
        // No zero bytes in the message: close to the COBS worst case.
        let fits = [0xFFu8; MAX_MESSAGE_LEN];
        let len = encode_frame(&Exact(&fits), &mut out).unwrap();
        assert!(len <= MAX_FRAME_LEN + 1);
        let mut decoder = FrameDecoder::new();
        match decoder.feed(&out[..len]) {
            FeedResult::Frame { payload, remaining } => {
                assert_eq!(payload, &fits[..]);
                assert!(remaining.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frame_exactly_max_len_is_accepted_and_one_more_is_not() {
        let mut decoder = FrameDecoder::new();
        let body = [0x01u8; MAX_FRAME_LEN]; // valid COBS: decodes to MAX_FRAME_LEN - 1 zeros
        assert_eq!(decoder.feed(&body), FeedResult::Consumed);
        assert!(matches!(
            decoder.feed(&[0]),
            FeedResult::Dropped {
                reason: Error::Crc,
                ..
            }
        ));
        assert_eq!(decoder.feed(&body), FeedResult::Consumed);
        assert_eq!(
            decoder.feed(&[1, 1, 1, 0]),
            FeedResult::Dropped {
                reason: Error::FrameTooLong,
                remaining: &[1, 1, 0]
            }
        );
        assert_eq!(decoder.feed(&[1, 1, 0]), FeedResult::Consumed);
        let stats = decoder.stats();
        assert_eq!(stats.dropped_too_long, 1);
        assert_eq!(stats.dropped_crc, 1);
    }

    /// Frames of `(byte, byte)` postcard messages, as a line carries them.
    fn noise_then(frame_starts_with_zero: bool) -> (usize, DecoderStats) {
        let mut line = [0u8; 64];
        let mut len = 0;
        for b in [0x11u8, 0x22, 0x33] {
            line[len] = b; // noise: no 0x00 in it
            len += 1;
        }
        len += if frame_starts_with_zero {
            encode_line_frame(&(7u8, 9u8), &mut line[len..]).unwrap()
        } else {
            encode_frame(&(7u8, 9u8), &mut line[len..]).unwrap()
        };
        let mut decoder = FrameDecoder::new();
        let mut input = &line[..len];
        let mut frames = 0;
        loop {
            match decoder.feed(input) {
                FeedResult::Consumed => break,
                FeedResult::Frame { payload, remaining } => {
                    assert_eq!(payload, &[7, 9]);
                    frames += 1;
                    input = remaining;
                }
                FeedResult::Dropped { remaining, .. } => input = remaining,
            }
        }
        (frames, decoder.stats())
    }

    #[test]
    fn a_zero_before_each_frame_saves_the_frame_after_noise() {
        let (frames, stats) = noise_then(true);
        assert_eq!(frames, 1, "the frame after the noise arrives");
        assert_eq!(stats.dropped_crc + stats.dropped_cobs, 1, "the noise, once");
        // Without it the noise runs into the frame: both are lost as one.
        let (frames, _) = noise_then(false);
        assert_eq!(frames, 0);
        let mut small = [0u8; 4];
        assert_eq!(
            encode_line_frame(&(7u8, 9u8), &mut small),
            Err(Error::BufferTooSmall)
        );
    }
}
