//! The one error type of the binary protocol: encoding, decoding, validation and framing.
//!
//! It is flat, `Copy` and allocation-free so firmware can match on it and count it.

use core::fmt;

/// What went wrong while encoding, decoding, validating or framing a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The output buffer is too small for the encoded message or frame.
    BufferTooSmall,
    /// postcard could not serialize the value.
    Encode,
    /// The bytes are not a well-formed postcard message of the expected type.
    Decode,
    /// The message is well-formed but breaks a protocol rule (bad id or name, string too long,
    /// no readings, duplicate name, non-finite number, protocol version 0).
    Invalid,
    /// A frame is longer than [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN), or a message is too long to
    /// fit in one.
    FrameTooLong,
    /// A frame is not valid COBS.
    Cobs,
    /// A frame's CRC-32 does not match its content (or the frame is too short to carry one).
    Crc,
    /// There were no bytes to decode.
    Empty,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Error::BufferTooSmall => "output buffer too small",
            Error::Encode => "message could not be encoded",
            Error::Decode => "bytes are not a well-formed message",
            Error::Invalid => "message breaks a protocol rule",
            Error::FrameTooLong => "frame too long",
            Error::Cobs => "frame is not valid COBS",
            Error::Crc => "frame CRC mismatch",
            Error::Empty => "no bytes to decode",
        };
        f.write_str(text)
    }
}

impl core::error::Error for Error {}

impl Error {
    /// Maps a postcard serialization error.
    pub(crate) fn from_postcard_ser(error: postcard::Error) -> Self {
        match error {
            postcard::Error::SerializeBufferFull => Error::BufferTooSmall,
            _ => Error::Encode,
        }
    }
}
