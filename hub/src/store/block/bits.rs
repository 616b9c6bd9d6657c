//! The primitives of a block's encodings: a bounds-checked byte reader whose errors name the
//! section being read, LEB128 varints, zig-zag, and bit streams (least significant bit first).

use super::BlockError;

/// A cursor over a block's bytes that fails, never panics, past the end; errors name the
/// section being read.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    section: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`, in `section`.
    pub fn new(bytes: &'a [u8], section: &'static str) -> Self {
        Reader {
            bytes,
            pos: 0,
            section,
        }
    }

    /// Names the section read from here on, for errors.
    pub fn section(&mut self, section: &'static str) {
        self.section = section;
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The block ends too early.
    pub fn truncated(&self) -> BlockError {
        BlockError::Truncated(self.section)
    }

    /// The block says something impossible.
    pub fn corrupt(&self, what: &'static str) -> BlockError {
        BlockError::Corrupt {
            section: self.section,
            what,
        }
    }

    pub fn byte(&mut self) -> Result<u8, BlockError> {
        let b = *self.bytes.get(self.pos).ok_or_else(|| self.truncated())?;
        self.pos += 1;
        Ok(b)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], BlockError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.truncated())?;
        let bytes = self
            .bytes
            .get(self.pos..end)
            .ok_or_else(|| self.truncated())?;
        self.pos = end;
        Ok(bytes)
    }

    /// Skips `n` bytes already read by other means (a bit reader over [`Reader::rest`]).
    pub fn skip(&mut self, n: usize) -> Result<(), BlockError> {
        self.take(n).map(|_| ())
    }

    /// A little-endian u64 (raw floats and the summary's figures).
    pub fn u64_le(&mut self) -> Result<u64, BlockError> {
        let bytes = self.take(8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(b))
    }

    /// A LEB128 varint; more than 64 bits is an error.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, BlockError> {
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(self.truncated());
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(self.corrupt("a varint longer than 64 bits"));
            }
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// A varint that must fit a u32.
    pub fn varint_u32(&mut self, what: &'static str) -> Result<u32, BlockError> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| self.corrupt(what))
    }

    /// A varint count of at most `max`.
    pub fn count(&mut self, max: usize, what: &'static str) -> Result<usize, BlockError> {
        let v = self.varint()?;
        usize::try_from(v)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| self.corrupt(what))
    }
}

/// Appends `value` as a LEB128 varint.
#[inline]
pub(super) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The length of `value` as a varint.
#[inline]
pub(super) fn varint_len(value: u64) -> usize {
    // 1 byte per started 7 bits, at least one.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Small magnitudes of either sign to small unsigned numbers: 0, -1, 1, -2 .. to 0, 1, 2, 3 ..
#[inline]
pub(super) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
pub(super) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Writes values of up to 64 bits, least significant bit first.
pub(super) struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u128,
    bits: u32,
}

impl<'a> BitWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        BitWriter {
            out,
            acc: 0,
            bits: 0,
        }
    }

    /// Appends the low `width` (0..=64) bits of `value`.
    #[inline]
    pub fn put(&mut self, value: u64, width: u32) {
        let masked = u128::from(value) & ((1u128 << width) - 1);
        self.acc |= masked << self.bits;
        self.bits += width;
        while self.bits >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.bits -= 8;
        }
    }

    /// Writes the last partial byte, zero-padded.
    pub fn finish(self) {
        if self.bits > 0 {
            self.out.push(self.acc as u8);
        }
    }
}

/// Reads what a [`BitWriter`] wrote.
pub(super) struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    acc: u128,
    bits: u32,
}

impl<'a> BitReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BitReader {
            bytes,
            pos: 0,
            acc: 0,
            bits: 0,
        }
    }

    /// The next `width` (0..=64) bits, or `None` past the end.
    #[inline]
    pub fn get(&mut self, width: u32) -> Option<u64> {
        if self.bits < width {
            // Eight bytes at a time while there are, so most reads touch memory once.
            if let Some(chunk) = self.bytes.get(self.pos..self.pos + 8) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                self.acc |= u128::from(u64::from_le_bytes(b)) << self.bits;
                self.bits += 64;
                self.pos += 8;
            } else {
                while self.bits < width {
                    let b = *self.bytes.get(self.pos)?;
                    self.acc |= u128::from(b) << self.bits;
                    self.bits += 8;
                    self.pos += 1;
                }
            }
        }
        let value = (self.acc & ((1u128 << width) - 1)) as u64;
        self.acc >>= width;
        self.bits -= width;
        Some(value)
    }

    /// How many bytes the bits read so far took (the last one perhaps in part).
    pub fn consumed(&self) -> usize {
        // Whole bytes loaded but not used are given back.
        self.pos - (self.bits / 8) as usize
    }
}
