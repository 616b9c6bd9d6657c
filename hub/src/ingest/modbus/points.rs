//! A device's register map: which requests read it, how registers become values and how a value
//! to write becomes registers. Pure functions, no I/O.
//!
//! - [`plan`] groups points into read requests: points of one table that touch or overlap share a
//!   request as long as it stays within what one request may ask for (125 registers, 2000 bits).
//!   Points apart by a gap are never bridged: the registers between them may not exist, and a
//!   device answers a read of one that does not with an exception for the whole request.
//! - [`decode`] turns a point's registers (or bit) into a value: the registers in word order, the
//!   bytes of each in byte order, read as the point's type, then `raw * scale + offset`.
//! - [`encode`] is its inverse for writes: `(value - offset) / scale`, rounded for integer types,
//!   refused when out of the type's range.

use device_protocol::OwnedValue;
use serde_json::Value as Json;

use crate::config::{ByteOrder, PointConfig, PointType, Table};

/// One read request: `count` registers (or bits) of `table` from `start`, and which points (by
/// index in the map) it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// The table read.
    pub table: Table,
    /// First address.
    pub start: u16,
    /// How many registers or bits.
    pub count: u16,
    /// Indices of the points it holds, in the map's order.
    pub points: Vec<usize>,
}

/// The fewest read requests that hold every point, never reading an address no point names.
pub fn plan(points: &[PointConfig]) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].table, points[i].address, points[i].span()));
    let mut requests: Vec<ReadRequest> = Vec::new();
    for i in order {
        let point = &points[i];
        let start = u32::from(point.address);
        let end = start + u32::from(point.span());
        if let Some(last) = requests.last_mut() {
            let last_start = u32::from(last.start);
            let last_end = last_start + u32::from(last.count);
            let merged_end = last_end.max(end);
            if last.table == point.table
                && start <= last_end
                && merged_end - last_start <= u32::from(point.table.max_read())
            {
                last.count = (merged_end - last_start) as u16;
                last.points.push(i);
                continue;
            }
        }
        requests.push(ReadRequest {
            table: point.table,
            start: point.address,
            count: point.span(),
            points: vec![i],
        });
    }
    for request in &mut requests {
        request.points.sort_unstable();
    }
    requests
}

/// The point's value from its registers (exactly [`PointConfig::span`] of them, in address
/// order); `None` for a float that is not finite (NaN or infinity: no reading can hold it).
pub fn decode(point: &PointConfig, registers: &[u16]) -> Option<OwnedValue> {
    let bytes = registers_to_bytes(point, registers);
    let raw = match point.kind {
        PointType::String => {
            let text = String::from_utf8_lossy(&bytes);
            return Some(OwnedValue::Str(
                text.trim_end_matches(['\0', ' ']).to_owned(),
            ));
        }
        PointType::Bool => {
            return Some(OwnedValue::Bool(registers.first().is_some_and(|r| *r != 0)));
        }
        PointType::U16 => Raw::Int(i128::from(u16::from_be_bytes(array(&bytes)?))),
        PointType::I16 => Raw::Int(i128::from(i16::from_be_bytes(array(&bytes)?))),
        PointType::U32 => Raw::Int(i128::from(u32::from_be_bytes(array(&bytes)?))),
        PointType::I32 => Raw::Int(i128::from(i32::from_be_bytes(array(&bytes)?))),
        PointType::U64 => Raw::Int(i128::from(u64::from_be_bytes(array(&bytes)?))),
        PointType::I64 => Raw::Int(i128::from(i64::from_be_bytes(array(&bytes)?))),
        PointType::F32 => Raw::Float(f64::from(f32::from_be_bytes(array(&bytes)?))),
        PointType::F64 => Raw::Float(f64::from_be_bytes(array(&bytes)?)),
    };
    let scaled = point.scale.is_some() || point.offset.is_some();
    let value = match raw {
        // Unscaled integers stay exact; a u64 beyond i64 can only be a float.
        Raw::Int(n) if !scaled => match i64::try_from(n) {
            Ok(n) => return Some(OwnedValue::I64(n)),
            Err(_) => n as f64,
        },
        Raw::Int(n) => n as f64,
        Raw::Float(x) => x,
    };
    let value = scaled_by(value, point.scale.unwrap_or(1.0)) + point.offset.unwrap_or(0.0);
    value.is_finite().then_some(OwnedValue::F64(value))
}

/// `raw * scale`, with a decimal scale (0.1, 0.01...) applied as a division by its inverse: -126
/// x 0.1 is -12.600000000000001 in floats, -126 / 10 is -12.6, the number the device meant.
fn scaled_by(raw: f64, scale: f64) -> f64 {
    let inverse = 1.0 / scale;
    if scale.abs() < 1.0 && (inverse - inverse.round()).abs() < 1e-9 {
        raw / inverse.round()
    } else {
        raw * scale
    }
}

/// What a write puts on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// Registers from the point's address (one: function 6; more: function 16).
    Registers(Vec<u16>),
    /// A coil (function 5).
    Coil(bool),
}

/// The registers (or coil) that make the point read `value`, its scale and offset undone; why
/// not, when the value does not fit the point.
pub fn encode(point: &PointConfig, value: &Json) -> Result<Encoded, String> {
    if point.table == Table::Coil || point.kind == PointType::Bool {
        return match value {
            Json::Bool(b) => Ok(Encoded::Coil(*b)),
            Json::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                Ok(Encoded::Coil(n.as_u64() == Some(1)))
            }
            _ => Err(format!(
                "point {:?} is a bool: the value must be true or false",
                point.name
            )),
        };
    }
    let Some(number) = value.as_f64().filter(|x| x.is_finite()) else {
        return Err(format!(
            "point {:?} is a {}: the value must be a number",
            point.name,
            point.kind.name()
        ));
    };
    let raw = (number - point.offset.unwrap_or(0.0)) / point.scale.unwrap_or(1.0);
    let bytes = match point.kind {
        PointType::F32 => {
            let single = raw as f32;
            if !single.is_finite() {
                return Err(out_of_range(point, number));
            }
            single.to_be_bytes().to_vec()
        }
        PointType::F64 => raw.to_be_bytes().to_vec(),
        kind => {
            // An integer given as one, unscaled, is taken exactly: through a float, one above
            // 2^53 would lose its last digits.
            let exact = match (point.scale, point.offset) {
                (None, None) => value
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| value.as_u64().map(i128::from)),
                _ => None,
            };
            // The cast saturates: a float far out of range stays out of it.
            let n = exact.unwrap_or(raw.round() as i128);
            let (min, max) = int_range(kind);
            if !(min..=max).contains(&n) {
                return Err(out_of_range(point, number));
            }
            let wide = n.to_be_bytes();
            let len = usize::from(point.span()) * 2;
            wide.get(wide.len() - len..).unwrap_or_default().to_vec()
        }
    };
    Ok(Encoded::Registers(bytes_to_registers(point, &bytes)))
}

/// The smallest and largest raw value of an integer type.
fn int_range(kind: PointType) -> (i128, i128) {
    match kind {
        PointType::U16 => (0, i128::from(u16::MAX)),
        PointType::I16 => (i128::from(i16::MIN), i128::from(i16::MAX)),
        PointType::U32 => (0, i128::from(u32::MAX)),
        PointType::I32 => (i128::from(i32::MIN), i128::from(i32::MAX)),
        PointType::U64 => (0, i128::from(u64::MAX)),
        _ => (i128::from(i64::MIN), i128::from(i64::MAX)),
    }
}

fn out_of_range(point: &PointConfig, value: f64) -> String {
    format!(
        "{value} does not fit point {:?} (a {} with scale {} and offset {})",
        point.name,
        point.kind.name(),
        point.scale.unwrap_or(1.0),
        point.offset.unwrap_or(0.0)
    )
}

/// A raw number before scale and offset.
enum Raw {
    Int(i128),
    Float(f64),
}

fn array<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.try_into().ok()
}

/// The point's bytes, most significant first, from its registers in address order. A string
/// keeps its registers in address order (word order is for numbers).
fn registers_to_bytes(point: &PointConfig, registers: &[u16]) -> Vec<u8> {
    let mut ordered: Vec<u16> = registers.to_vec();
    if point.word_order == ByteOrder::Little && point.kind != PointType::String {
        ordered.reverse();
    }
    ordered
        .iter()
        .flat_map(|r| match point.byte_order {
            ByteOrder::Big => r.to_be_bytes(),
            ByteOrder::Little => r.to_le_bytes(),
        })
        .collect()
}

/// The inverse of [`registers_to_bytes`].
fn bytes_to_registers(point: &PointConfig, bytes: &[u8]) -> Vec<u16> {
    let mut registers: Vec<u16> = bytes
        .chunks(2)
        .map(|pair| {
            let pair = [pair[0], pair.get(1).copied().unwrap_or(0)];
            match point.byte_order {
                ByteOrder::Big => u16::from_be_bytes(pair),
                ByteOrder::Little => u16::from_le_bytes(pair),
            }
        })
        .collect();
    if point.word_order == ByteOrder::Little && point.kind != PointType::String {
        registers.reverse();
    }
    registers
}

#[cfg(test)]
#[path = "points_tests.rs"]
mod tests;
