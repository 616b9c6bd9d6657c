//! The column encodings of a block, apart from floats (`floats.rs`): integer sequences
//! (plain, delta or delta-of-delta, packed as varints, runs or fixed-width bits, whichever is
//! smallest), booleans (runs or bits) and strings (a dictionary and indices).
//!
//! Every decoder takes the number of values from its caller, which has checked it against the
//! block's caps, and checks every count it reads against the bytes left before it allocates.

use super::BlockError;
use super::bits::{BitReader, BitWriter, Reader, put_varint, unzigzag, varint_len, zigzag};

/// How an integer sequence is transformed before packing: `mode & 3`.
const ORDER_PLAIN: u8 = 0;
const ORDER_DELTA: u8 = 1;
const ORDER_DELTA2: u8 = 2;
/// How the zig-zagged values are packed: `mode >> 2`.
const PACK_VARINTS: u8 = 0;
const PACK_RUNS: u8 = 1;
const PACK_BITS: u8 = 2;

/// Differences from the previous value (the first kept), wrapping: a bijection on i64.
fn delta_in_place(values: &mut [i64]) {
    let mut prev = 0i64;
    for v in values {
        let x = *v;
        *v = x.wrapping_sub(prev);
        prev = x;
    }
}

fn undelta_in_place(values: &mut [i64]) {
    let mut acc = 0i64;
    for v in values {
        acc = acc.wrapping_add(*v);
        *v = acc;
    }
}

/// Undoes `order` differences (see [`put_ints`]).
fn untransform(values: &mut [i64], order: u8) {
    if order >= 2
        && let Some(tail) = values.get_mut(1..)
    {
        undelta_in_place(tail);
    }
    if order >= 1 {
        undelta_in_place(values);
    }
}

/// Bytes each packing takes for these zig-zagged values: (varints, runs, bits).
fn packed_sizes(zz: &[u64]) -> [usize; 3] {
    let mut varints = 0;
    let mut runs = 0;
    let mut max = 0u64;
    for (v, n) in runs_of(zz) {
        varints += varint_len(v) * n;
        runs += varint_len(v) + varint_len(n as u64);
        max |= v;
    }
    let width = 64 - max.leading_zeros() as usize;
    [varints, runs, 1 + (zz.len() * width).div_ceil(8)]
}

/// The runs of equal values of `zz`, in order: (value, how many).
fn runs_of(zz: &[u64]) -> impl Iterator<Item = (u64, usize)> + '_ {
    zz.chunk_by(|a, b| a == b).map(|run| (run[0], run.len()))
}

/// Appends `values` as a mode byte and the packing of the smallest of the 3 × 3 choices:
/// plain, deltas, or deltas of deltas (which keep the first value and the first delta, so a
/// sequence that starts far from zero costs one large value, not two); zig-zagged, then as
/// varints, as (value, run length) pairs, or in the fewest bits that hold the largest.
pub(super) fn put_ints(out: &mut Vec<u8>, values: &[i64]) {
    let mut best: Option<(usize, u8, u8, Vec<u64>)> = None;
    let mut work = values.to_vec();
    for order in [ORDER_PLAIN, ORDER_DELTA, ORDER_DELTA2] {
        if order == ORDER_DELTA2 {
            // work holds the deltas: one more difference on its tail.
            if let Some(tail) = work.get_mut(1..) {
                delta_in_place(tail);
            }
        } else if order == ORDER_DELTA {
            delta_in_place(&mut work);
        }
        let zz: Vec<u64> = work.iter().map(|&v| zigzag(v)).collect();
        let sizes = packed_sizes(&zz);
        for (pack, size) in [PACK_VARINTS, PACK_RUNS, PACK_BITS].into_iter().zip(sizes) {
            if best.as_ref().is_none_or(|b| size < b.0) {
                best = Some((size, order, pack, zz.clone()));
            }
        }
    }
    let Some((_, order, pack, zz)) = best else {
        return;
    };
    out.push(order | pack << 2);
    match pack {
        PACK_VARINTS => zz.iter().for_each(|&v| put_varint(out, v)),
        PACK_RUNS => {
            for (v, n) in runs_of(&zz) {
                put_varint(out, v);
                put_varint(out, n as u64);
            }
        }
        _ => {
            let width = 64 - zz.iter().fold(0, |a, &v| a | v).leading_zeros();
            out.push(width as u8);
            let mut bits = BitWriter::new(out);
            zz.iter().for_each(|&v| bits.put(v, width));
            bits.finish();
        }
    }
}

/// Reads `n` values written by [`put_ints`] into `out` (cleared first).
pub(super) fn get_ints(r: &mut Reader, n: usize, out: &mut Vec<i64>) -> Result<(), BlockError> {
    out.clear();
    let mode = r.byte()?;
    let (order, pack) = (mode & 3, mode >> 2);
    if order > ORDER_DELTA2 {
        return Err(r.corrupt("unknown integer transform"));
    }
    match pack {
        PACK_VARINTS => {
            // One byte a value at least.
            if n > r.remaining() {
                return Err(r.truncated());
            }
            // Written in place: pushing is not inlined at the release build's opt-level "s".
            out.resize(n, 0);
            for slot in out.iter_mut() {
                *slot = unzigzag(r.varint()?);
            }
        }
        PACK_RUNS => {
            // n is capped by the caller; runs can be far fewer bytes than values.
            out.reserve(n);
            while out.len() < n {
                let v = unzigzag(r.varint()?);
                let run = r.varint()?;
                let left = (n - out.len()) as u64;
                if run == 0 || run > left {
                    return Err(r.corrupt("a run of integers out of bounds"));
                }
                out.resize(out.len() + run as usize, v);
            }
        }
        PACK_BITS => {
            let width = u32::from(r.byte()?);
            if width > 64 {
                return Err(r.corrupt("a bit width over 64"));
            }
            let len = (n as u128 * u128::from(width)).div_ceil(8);
            if len > r.remaining() as u128 {
                return Err(r.truncated());
            }
            let bytes = r.take(len as usize)?;
            out.resize(n, 0);
            if width <= 56 {
                unpack(bytes, width, out);
            } else {
                let mut bits = BitReader::new(bytes);
                for slot in out.iter_mut() {
                    *slot = unzigzag(bits.get(width).ok_or_else(|| r.truncated())?);
                }
            }
        }
        _ => return Err(r.corrupt("unknown integer packing")),
    }
    untransform(out, order);
    Ok(())
}

/// Fills `out` with zig-zagged values of `width` (at most 56) bits each from `bytes`, which
/// hold them all: each is one unaligned 8-byte load, shift and mask (the hot path of decoding).
fn unpack(bytes: &[u8], width: u32, out: &mut [i64]) {
    let mask = (1u64 << width) - 1;
    let load = |bytes: &[u8], at: usize| {
        let mut b = [0u8; 8];
        match bytes.get(at..at + 8) {
            Some(chunk) => b.copy_from_slice(chunk),
            None => {
                for (to, from) in b.iter_mut().zip(bytes.get(at..).unwrap_or_default()) {
                    *to = *from;
                }
            }
        }
        u64::from_le_bytes(b)
    };
    let mut bit = 0usize;
    for slot in out {
        let word = load(bytes, bit >> 3);
        *slot = unzigzag((word >> (bit & 7)) & mask);
        bit += width as usize;
    }
}

/// Booleans: `mode` 0 is the first value then run lengths, 1 is one bit a value.
const BOOLS_RUNS: u8 = 0;
const BOOLS_BITS: u8 = 1;

pub(super) fn put_bools(out: &mut Vec<u8>, values: &[bool]) {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i + 1;
        while j < values.len() && values[j] == values[i] {
            j += 1;
        }
        runs.push((j - i) as u64);
        i = j;
    }
    let runs_len: usize = 1 + runs.iter().map(|&r| varint_len(r)).sum::<usize>();
    if runs_len <= values.len().div_ceil(8) {
        out.push(BOOLS_RUNS);
        out.push(u8::from(values.first().copied().unwrap_or(false)));
        runs.iter().for_each(|&r| put_varint(out, r));
    } else {
        out.push(BOOLS_BITS);
        let mut bits = BitWriter::new(out);
        values.iter().for_each(|&b| bits.put(u64::from(b), 1));
        bits.finish();
    }
}

pub(super) fn get_bools(r: &mut Reader, n: usize, out: &mut Vec<bool>) -> Result<(), BlockError> {
    out.clear();
    match r.byte()? {
        BOOLS_RUNS => {
            let mut value = match r.byte()? {
                0 => false,
                1 => true,
                _ => return Err(r.corrupt("a boolean neither 0 nor 1")),
            };
            out.reserve(n);
            while out.len() < n {
                let run = r.varint()?;
                if run == 0 || run > (n - out.len()) as u64 {
                    return Err(r.corrupt("a run of booleans out of bounds"));
                }
                out.resize(out.len() + run as usize, value);
                value = !value;
            }
        }
        BOOLS_BITS => {
            let bytes = r.take(n.div_ceil(8))?;
            out.extend((0..n).map(|i| bytes.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1)));
        }
        _ => return Err(r.corrupt("unknown boolean packing")),
    }
    Ok(())
}

/// Strings: the distinct values in order of first use (count, then length and bytes each),
/// then each value's index into them as integers.
pub(super) fn put_strings(out: &mut Vec<u8>, values: &[&str]) {
    let mut dict: Vec<&str> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let indices: Vec<i64> = values
        .iter()
        .map(|&s| {
            *index.entry(s).or_insert_with(|| {
                dict.push(s);
                dict.len() - 1
            }) as i64
        })
        .collect();
    put_varint(out, dict.len() as u64);
    for s in &dict {
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
    put_ints(out, &indices);
}

/// A string column decoded: the dictionary and each value's index into it.
pub(super) struct Strings {
    pub dict: Vec<String>,
    pub indices: Vec<u32>,
}

/// Reads `n` strings, each at most `max_len` bytes; `budget` is what the block may still hold
/// in string bytes once decoded (each value a copy), and is charged for these.
pub(super) fn get_strings(
    r: &mut Reader,
    n: usize,
    max_len: usize,
    budget: &mut usize,
) -> Result<Strings, BlockError> {
    // Each entry takes a byte at least, and every entry is used by some value.
    let count = r.count(n.min(r.remaining()), "more distinct strings than values")?;
    if n > 0 && count == 0 {
        return Err(r.corrupt("no strings for the values"));
    }
    let mut dict = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.count(max_len, "a string longer than the limit")?;
        let bytes = r.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| r.corrupt("a string not UTF-8"))?;
        dict.push(s.to_owned());
    }
    let mut raw = Vec::new();
    get_ints(r, n, &mut raw)?;
    let mut indices = Vec::with_capacity(n);
    for v in raw {
        let s = usize::try_from(v)
            .ok()
            .and_then(|i| dict.get(i).map(|s| (i, s.len())));
        let Some((i, len)) = s else {
            return Err(r.corrupt("a string index past the dictionary"));
        };
        *budget = budget
            .checked_sub(len)
            .ok_or_else(|| r.corrupt("more string bytes than the limit"))?;
        indices.push(i as u32);
    }
    Ok(Strings { dict, indices })
}
