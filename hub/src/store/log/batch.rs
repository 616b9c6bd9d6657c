//! A [`WriteBatch`] as the bytes of a log record, and back.
//!
//! Each change: `op` (0 put, 1 delete), the table's tag, the key's length (LEB128) and the key,
//! and for a put the value's length (LEB128) and the value. Decoding checks every length and
//! tag: a record that passed its CRC but does not decode is corruption, reported as an error.

use super::super::engine::{Change, EngineError, Table, WriteBatch};

/// The bytes of `batch`.
pub fn encode(batch: &WriteBatch) -> Vec<u8> {
    let mut out = Vec::new();
    for change in batch.changes() {
        match change {
            Change::Put { table, key, value } => {
                out.push(0);
                out.push(table.tag());
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            Change::Delete { table, key } => {
                out.push(1);
                out.push(table.tag());
                put_bytes(&mut out, key);
            }
        }
    }
    out
}

/// The batch `bytes` encode.
pub fn decode(mut bytes: &[u8]) -> Result<WriteBatch, EngineError> {
    let mut batch = WriteBatch::new();
    while let Some((&op, rest)) = bytes.split_first() {
        let (&tag, rest) = rest.split_first().ok_or_else(|| corrupt("table"))?;
        let table = *Table::ALL
            .get(tag as usize)
            .ok_or_else(|| corrupt("table tag"))?;
        let (key, rest) = take_bytes(rest)?;
        bytes = match op {
            0 => {
                let (value, rest) = take_bytes(rest)?;
                batch.put(table, key.to_vec(), value.to_vec());
                rest
            }
            1 => {
                batch.delete(table, key.to_vec());
                rest
            }
            _ => return Err(corrupt("change kind")),
        };
    }
    Ok(batch)
}

fn corrupt(what: &str) -> EngineError {
    EngineError::engine(format!("log record: bad {what}"))
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut n = bytes.len() as u64;
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            break;
        }
        out.push(low | 0x80);
    }
    out.extend_from_slice(bytes);
}

fn take_bytes(bytes: &[u8]) -> Result<(&[u8], &[u8]), EngineError> {
    let mut len: u64 = 0;
    let mut at = 0;
    loop {
        let byte = *bytes.get(at).ok_or_else(|| corrupt("length"))?;
        if at >= 9 {
            return Err(corrupt("length"));
        }
        len |= u64::from(byte & 0x7f) << (7 * at);
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let rest = &bytes[at..];
    let len = usize::try_from(len).map_err(|_| corrupt("length"))?;
    if len > rest.len() {
        return Err(corrupt("length"));
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn batches_round_trip_and_garbage_never_panics(
            changes in proptest::collection::vec(
                (0usize..Table::ALL.len(), proptest::collection::vec(any::<u8>(), 0..300),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300))),
                0..20),
            garbage in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut batch = WriteBatch::new();
            for (t, k, v) in &changes {
                match v {
                    Some(v) => batch.put(Table::ALL[*t], k.clone(), v.clone()),
                    None => batch.delete(Table::ALL[*t], k.clone()),
                }
            }
            let bytes = encode(&batch);
            let back = decode(&bytes).unwrap();
            prop_assert_eq!(back.changes(), batch.changes());
            let _ = decode(&garbage);
            for cut in 0..bytes.len() {
                let _ = decode(&bytes[..cut]);
            }
        }
    }
}
