//! The Sparkplug B payload: the part of Eclipse Tahu's `sparkplug_b.proto`
//! (`org.eclipse.tahu.protobuf.Payload`, Sparkplug B v1.0 / 3.0) that the hub reads and writes,
//! declared with prost's derive so no protoc runs at build time. Field numbers are the schema's;
//! what is not declared here (data sets, templates, property sets, metadata, extensions) is
//! skipped by prost as unknown fields, and a metric holding one of those values arrives with no
//! value and is counted as unsupported.
//!
//! Also here: the schema's `DataType` numbers and what each becomes as a hub value.

use device_protocol::{MAX_STR_LEN, OwnedValue};

/// `Payload`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// When the message was made, unix ms.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    /// The metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// The edge node's message sequence number, 0 to 255.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    /// `uuid` (unused by the hub).
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    /// `body` (unused by the hub).
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// Its name; in DATA often left out for the alias.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Its alias, given with the name in a BIRTH.
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// When the value was taken, unix ms.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// Its `DataType`, required in a BIRTH.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    /// A value of the past.
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    /// Not to be stored.
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    /// No value.
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    /// The value.
    #[prost(oneof = "Value", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<Value>,
}

/// `Metric.value`, the variants the hub reads (data sets, templates and extensions are skipped).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    /// Int8, Int16, Int32 (two's complement), UInt8, UInt16, UInt32.
    #[prost(uint32, tag = "10")]
    Int(u32),
    /// Int64 (two's complement), UInt64, DateTime.
    #[prost(uint64, tag = "11")]
    Long(u64),
    /// Float.
    #[prost(float, tag = "12")]
    Float(f32),
    /// Double.
    #[prost(double, tag = "13")]
    Double(f64),
    /// Boolean.
    #[prost(bool, tag = "14")]
    Boolean(bool),
    /// String, Text, UUID.
    #[prost(string, tag = "15")]
    String(String),
    /// Bytes, File.
    #[prost(bytes = "vec", tag = "16")]
    Bytes(Vec<u8>),
}

/// `DataType` numbers of the schema that the hub maps.
pub mod datatype {
    /// Int8.
    pub const INT8: u32 = 1;
    /// Int16.
    pub const INT16: u32 = 2;
    /// Int32.
    pub const INT32: u32 = 3;
    /// Int64.
    pub const INT64: u32 = 4;
    /// UInt8.
    pub const UINT8: u32 = 5;
    /// UInt16.
    pub const UINT16: u32 = 6;
    /// UInt32.
    pub const UINT32: u32 = 7;
    /// UInt64.
    pub const UINT64: u32 = 8;
    /// Float.
    pub const FLOAT: u32 = 9;
    /// Double.
    pub const DOUBLE: u32 = 10;
    /// Boolean.
    pub const BOOLEAN: u32 = 11;
    /// String.
    pub const STRING: u32 = 12;
    /// DateTime (unix ms).
    pub const DATETIME: u32 = 13;
    /// Text.
    pub const TEXT: u32 = 14;
    /// UUID.
    pub const UUID: u32 = 15;
}

/// Why a metric's value is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unstorable {
    /// A datatype the hub does not keep (bytes, files, data sets, templates, arrays), or none.
    Unsupported,
    /// A string longer than the hub keeps.
    TooLong,
}

/// A metric value as a hub value, read as `datatype` says (the BIRTH's, when DATA leaves it
/// out; without one, as the value's own field says). Signed integers come two's complement in
/// an unsigned field, so they are cut to their width and sign-extended; a UInt64 beyond i64 is
/// kept as the nearest f64.
pub fn to_value(value: &Value, datatype: Option<u32>) -> Result<OwnedValue, Unstorable> {
    use datatype::*;
    let v = match (value, datatype) {
        (Value::Int(x), Some(INT8)) => OwnedValue::I64(i64::from(*x as u8 as i8)),
        (Value::Int(x), Some(INT16)) => OwnedValue::I64(i64::from(*x as u16 as i16)),
        (Value::Int(x), Some(INT32)) => OwnedValue::I64(i64::from(*x as i32)),
        (Value::Int(x), Some(UINT8)) => OwnedValue::I64(i64::from(*x as u8)),
        (Value::Int(x), Some(UINT16)) => OwnedValue::I64(i64::from(*x as u16)),
        (Value::Int(x), _) => OwnedValue::I64(i64::from(*x)),
        (Value::Long(x), Some(INT64 | DATETIME)) => OwnedValue::I64(*x as i64),
        (Value::Long(x), _) => match i64::try_from(*x) {
            Ok(i) => OwnedValue::I64(i),
            Err(_) => OwnedValue::F64(*x as f64),
        },
        (Value::Float(x), _) if x.is_finite() => OwnedValue::F64(f64::from(*x)),
        (Value::Double(x), _) if x.is_finite() => OwnedValue::F64(*x),
        (Value::Float(_) | Value::Double(_), _) => return Err(Unstorable::Unsupported),
        (Value::Boolean(b), _) => OwnedValue::Bool(*b),
        (Value::String(s), _) if s.len() > MAX_STR_LEN => return Err(Unstorable::TooLong),
        (Value::String(s), _) => OwnedValue::Str(s.clone()),
        (Value::Bytes(_), _) => return Err(Unstorable::Unsupported),
    };
    Ok(v)
}

/// A hub value as a metric value of `datatype` (for a command), or `None` when it does not fit.
pub fn from_json(value: &serde_json::Value, datatype: Option<u32>) -> Option<(u32, Value)> {
    use datatype::*;
    use serde_json::Value as Json;
    let known = match (value, datatype) {
        (Json::Bool(b), None | Some(BOOLEAN)) => (BOOLEAN, Value::Boolean(*b)),
        (Json::String(s), None) => (STRING, Value::String(s.clone())),
        (Json::String(s), Some(t @ (STRING | TEXT | UUID))) => (t, Value::String(s.clone())),
        (Json::Number(n), Some(t @ (INT8 | INT16 | INT32))) => {
            let (min, max) = match t {
                INT8 => (i64::from(i8::MIN), i64::from(i8::MAX)),
                INT16 => (i64::from(i16::MIN), i64::from(i16::MAX)),
                _ => (i64::from(i32::MIN), i64::from(i32::MAX)),
            };
            let i = n.as_i64().filter(|i| (min..=max).contains(i))?;
            (t, Value::Int(i as i32 as u32))
        }
        (Json::Number(n), Some(t @ (UINT8 | UINT16 | UINT32))) => {
            let max = match t {
                UINT8 => u64::from(u8::MAX),
                UINT16 => u64::from(u16::MAX),
                _ => u64::from(u32::MAX),
            };
            let u = n.as_u64().filter(|u| *u <= max)?;
            (t, Value::Int(u as u32))
        }
        (Json::Number(n), Some(t @ (INT64 | DATETIME))) => (t, Value::Long(n.as_i64()? as u64)),
        (Json::Number(n), Some(UINT64)) => (UINT64, Value::Long(n.as_u64()?)),
        (Json::Number(n), Some(FLOAT)) => (FLOAT, Value::Float(n.as_f64()? as f32)),
        (Json::Number(n), Some(DOUBLE)) => (DOUBLE, Value::Double(n.as_f64()?)),
        (Json::Number(n), None) => match n.as_i64() {
            Some(i) => (INT64, Value::Long(i as u64)),
            None => (DOUBLE, Value::Double(n.as_f64()?)),
        },
        _ => return None,
    };
    Some(known)
}

#[cfg(test)]
mod tests {
    use super::datatype::*;
    use super::*;
    use prost::Message;

    #[test]
    fn signed_integers_are_sign_extended_to_their_width() {
        assert_eq!(
            to_value(&Value::Int(0xff), Some(INT8)),
            Ok(OwnedValue::I64(-1))
        );
        assert_eq!(
            to_value(&Value::Int(0xff), Some(UINT8)),
            Ok(OwnedValue::I64(255))
        );
        assert_eq!(
            to_value(&Value::Int(0xfffe), Some(INT16)),
            Ok(OwnedValue::I64(-2))
        );
        assert_eq!(
            to_value(&Value::Int(u32::MAX), Some(INT32)),
            Ok(OwnedValue::I64(-1))
        );
        assert_eq!(
            to_value(&Value::Int(u32::MAX), Some(UINT32)),
            Ok(OwnedValue::I64(4_294_967_295))
        );
        assert_eq!(
            to_value(&Value::Long(u64::MAX), Some(INT64)),
            Ok(OwnedValue::I64(-1))
        );
        assert_eq!(
            to_value(&Value::Long(u64::MAX), Some(UINT64)),
            Ok(OwnedValue::F64(u64::MAX as f64))
        );
        assert_eq!(
            to_value(&Value::Long(1_700_000_000_000), Some(DATETIME)),
            Ok(OwnedValue::I64(1_700_000_000_000))
        );
    }

    #[test]
    fn other_values_map_or_are_refused() {
        assert_eq!(
            to_value(&Value::Float(1.5), Some(FLOAT)),
            Ok(OwnedValue::F64(1.5))
        );
        assert_eq!(
            to_value(&Value::Double(2.5), None),
            Ok(OwnedValue::F64(2.5))
        );
        assert_eq!(
            to_value(&Value::Boolean(true), None),
            Ok(OwnedValue::Bool(true))
        );
        assert_eq!(
            to_value(&Value::String("x".into()), Some(TEXT)),
            Ok(OwnedValue::Str("x".into()))
        );
        assert_eq!(
            to_value(&Value::String("x".repeat(MAX_STR_LEN + 1)), None),
            Err(Unstorable::TooLong)
        );
        assert_eq!(
            to_value(&Value::Bytes(vec![1]), None),
            Err(Unstorable::Unsupported)
        );
        assert_eq!(
            to_value(&Value::Double(f64::NAN), None),
            Err(Unstorable::Unsupported)
        );
    }

    #[test]
    fn command_values_fit_the_birth_datatype() {
        use serde_json::json;
        assert_eq!(
            from_json(&json!(true), None),
            Some((BOOLEAN, Value::Boolean(true)))
        );
        assert_eq!(
            from_json(&json!(-1), Some(INT8)),
            Some((INT8, Value::Int(0xffff_ffff)))
        );
        assert_eq!(from_json(&json!(300), Some(UINT8)), None);
        assert_eq!(
            from_json(&json!(2.5), None),
            Some((DOUBLE, Value::Double(2.5)))
        );
        assert_eq!(from_json(&json!(7), None), Some((INT64, Value::Long(7))));
        assert_eq!(from_json(&json!("a"), Some(BOOLEAN)), None);
        assert_eq!(from_json(&json!({"a": 1}), None), None);
    }

    #[test]
    fn a_payload_round_trips_and_unknown_fields_are_skipped() {
        let payload = Payload {
            timestamp: Some(5),
            seq: Some(7),
            metrics: vec![Metric {
                name: Some("Inputs/A".into()),
                alias: Some(1),
                datatype: Some(INT32),
                value: Some(Value::Int(3)),
                ..Metric::default()
            }],
            ..Payload::default()
        };
        let mut bytes = payload.encode_to_vec();
        assert_eq!(Payload::decode(&bytes[..]).unwrap(), payload);
        // A field this declaration leaves out (tag 6, an extension) is skipped.
        bytes.extend_from_slice(&[0x32, 0x01, 0x00]);
        assert_eq!(Payload::decode(&bytes[..]).unwrap(), payload);
    }
}
