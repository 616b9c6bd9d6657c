//! Float columns. Each block picks, for each column, the smallest of:
//! - **decimal**: sensors round to a few decimals, and such values XOR badly (their mantissas
//!   differ everywhere), so the column is stored as integers `v * 10^k` (delta or
//!   delta-of-delta, see [`put_ints`]) with the smallest `k` in 0..=9 at which a value comes
//!   back bit for bit as `scaled as f64 / 10^k`; the values that do not (NaN, -0.0, infinities,
//!   values with more digits) are exceptions kept as raw bits with their positions;
//! - **XOR**: Gorilla's encoding (Pelkonen et al., 2015), for values that change rarely or
//!   smoothly in binary;
//! - **raw**: 8 bytes a value, the bound on the others.

use super::BlockError;
use super::bits::{BitReader, BitWriter, Reader, put_varint};
use super::columns::{get_ints, put_ints};

const FLOATS_RAW: u8 = 0;
const FLOATS_XOR: u8 = 1;
const FLOATS_DECIMAL: u8 = 2;

/// The largest decimal scale tried: 10^9 covers nanounits and keeps the scaled values of
/// sensor ranges far inside i64.
const MAX_SCALE: usize = 9;
/// Powers of ten, exact in f64.
const POW10: [f64; MAX_SCALE + 1] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// `v * 10^k` as an integer, if dividing it by `10^k` gives `v` back bit for bit.
#[inline]
fn scaled(v: f64, k: usize) -> Option<i64> {
    let p = *POW10.get(k)?;
    let s = (v * p).round();
    // The range of i64, [-2^63, 2^63), exactly; NaN fails both comparisons.
    if !(i64::MIN as f64..-(i64::MIN as f64)).contains(&s) {
        return None;
    }
    let i = s as i64;
    ((i as f64 / p).to_bits() == v.to_bits()).then_some(i)
}

/// The fewest decimal places that hold `v`.
pub(super) fn places(v: f64) -> Option<usize> {
    if !v.is_finite() {
        return None;
    }
    (0..=MAX_SCALE).find(|&k| scaled(v, k).is_some())
}

/// Appends the column's encoding that takes fewest bytes.
pub(super) fn put_floats(out: &mut Vec<u8>, values: &[f64]) {
    let mut best = Vec::with_capacity(1 + 8 * values.len());
    put_raw(&mut best, values);
    if !values.is_empty() {
        let mut xor = Vec::new();
        put_xor(&mut xor, values);
        if xor.len() < best.len() {
            best = xor;
        }
    }
    // Every scale from the fewest places some value needs to the most: below, every value is
    // an exception; above, every integer grows.
    let mut needed = values.iter().filter_map(|&v| places(v));
    if let Some(first) = needed.next() {
        let (lo, hi) = needed.fold((first, first), |(lo, hi), k| (lo.min(k), hi.max(k)));
        for k in lo..=hi {
            let mut decimal = Vec::new();
            put_decimal(&mut decimal, values, k);
            if decimal.len() < best.len() {
                best = decimal;
            }
        }
    }
    out.extend_from_slice(&best);
}

/// Appends the values as raw bits.
pub(super) fn put_raw(out: &mut Vec<u8>, values: &[f64]) {
    out.push(FLOATS_RAW);
    for v in values {
        out.extend_from_slice(&v.to_bits().to_le_bytes());
    }
}

/// Appends the values in Gorilla's XOR encoding.
pub(super) fn put_xor(out: &mut Vec<u8>, values: &[f64]) {
    out.push(FLOATS_XOR);
    let Some(first) = values.first() else {
        return;
    };
    let mut bits = BitWriter::new(out);
    let mut prev = first.to_bits();
    bits.put(prev, 64);
    // The window of meaningful bits of the last XOR written with its own: (leading, length).
    let mut window: Option<(u32, u32)> = None;
    for v in values.iter().skip(1) {
        let x = v.to_bits() ^ prev;
        prev = v.to_bits();
        if x == 0 {
            bits.put(0, 1);
            continue;
        }
        bits.put(1, 1);
        let lead = x.leading_zeros().min(31);
        let trail = x.trailing_zeros();
        match window {
            Some((wl, wsig)) if lead >= wl && trail >= 64 - wl - wsig => {
                bits.put(0, 1);
                bits.put(x >> (64 - wl - wsig), wsig);
            }
            _ => {
                let sig = 64 - lead - trail;
                bits.put(1, 1);
                bits.put(u64::from(lead), 5);
                bits.put(u64::from(sig - 1), 6);
                bits.put(x >> trail, sig);
                window = Some((lead, sig));
            }
        }
    }
    bits.finish();
}

/// Appends the values as integers scaled by `10^k`, those that do not come back exactly as
/// exceptions.
pub(super) fn put_decimal(out: &mut Vec<u8>, values: &[f64], k: usize) {
    out.push(FLOATS_DECIMAL);
    out.push(k as u8);
    let mut ints = Vec::with_capacity(values.len());
    let mut exceptions = Vec::new();
    // An exception's slot repeats the previous integer, so its delta costs little.
    let mut prev = 0;
    for (i, &v) in values.iter().enumerate() {
        match scaled(v, k) {
            Some(s) => prev = s,
            None => exceptions.push((i, v.to_bits())),
        }
        ints.push(prev);
    }
    put_varint(out, exceptions.len() as u64);
    let mut next = 0;
    for (i, bits) in exceptions {
        put_varint(out, (i - next) as u64);
        out.extend_from_slice(&bits.to_le_bytes());
        next = i + 1;
    }
    put_ints(out, &ints);
}

/// Reads `n` floats into `out` (cleared first); `ints` is scratch space.
pub(super) fn get_floats(
    r: &mut Reader,
    n: usize,
    out: &mut Vec<f64>,
    ints: &mut Vec<i64>,
) -> Result<(), BlockError> {
    out.clear();
    match r.byte()? {
        FLOATS_RAW => {
            let bytes = r.take(n.checked_mul(8).ok_or_else(|| r.truncated())?)?;
            out.extend(bytes.chunks_exact(8).map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_bits(u64::from_le_bytes(b))
            }));
        }
        FLOATS_XOR => get_xor(r, n, out)?,
        FLOATS_DECIMAL => {
            let k = usize::from(r.byte()?);
            let p = *POW10
                .get(k)
                .ok_or_else(|| r.corrupt("a decimal scale over 9"))?;
            // An exception takes 9 bytes at least.
            let count = r.count(n.min(r.remaining() / 9), "more exceptions than values")?;
            let mut exceptions = Vec::with_capacity(count);
            let mut next = 0usize;
            for _ in 0..count {
                let gap = r.count(n, "an exception past the values")?;
                let i = next + gap;
                if i >= n {
                    return Err(r.corrupt("an exception past the values"));
                }
                exceptions.push((i, f64::from_bits(r.u64_le()?)));
                next = i + 1;
            }
            get_ints(r, n, ints)?;
            out.extend(ints.iter().map(|&s| s as f64 / p));
            for (i, v) in exceptions {
                if let Some(slot) = out.get_mut(i) {
                    *slot = v;
                }
            }
        }
        _ => return Err(r.corrupt("unknown float encoding")),
    }
    Ok(())
}

fn get_xor(r: &mut Reader, n: usize, out: &mut Vec<f64>) -> Result<(), BlockError> {
    if n == 0 {
        return Ok(());
    }
    // 64 bits for the first value, one at least for each other.
    if (n - 1) / 8 + 8 > r.remaining() {
        return Err(r.truncated());
    }
    let mut bits = BitReader::new(r.rest());
    let truncated = || r.truncated();
    let mut prev = bits.get(64).ok_or_else(truncated)?;
    out.resize(n, 0.0);
    let Some((first, rest)) = out.split_first_mut() else {
        return Ok(());
    };
    *first = f64::from_bits(prev);
    let mut window: Option<(u32, u32)> = None;
    for slot in rest {
        if bits.get(1).ok_or_else(truncated)? == 1 {
            let (lead, sig) = if bits.get(1).ok_or_else(truncated)? == 1 {
                let lead = bits.get(5).ok_or_else(truncated)? as u32;
                let sig = bits.get(6).ok_or_else(truncated)? as u32 + 1;
                if lead + sig > 64 {
                    return Err(r.corrupt("an XOR window wider than 64 bits"));
                }
                window = Some((lead, sig));
                (lead, sig)
            } else {
                window.ok_or_else(|| r.corrupt("an XOR reusing a window before the first"))?
            };
            prev ^= bits.get(sig).ok_or_else(truncated)? << (64 - lead - sig);
        }
        *slot = f64::from_bits(prev);
    }
    let consumed = bits.consumed();
    r.skip(consumed)
}
