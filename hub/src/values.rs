//! The JSON form of a reading and of a metric value, one for every part that writes readings as
//! JSON: the API's pages and exports, the pull API and the upstream sinks' bodies, and the live
//! stream. Imports no part of the hub: the store and the live feed build it from their readings.

use std::collections::BTreeMap;

use device_protocol::OwnedValue;
use serde::{Serialize, Serializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::{PartialSchema, ToSchema};

// Fields are in alphabetical order: the bytes stay what they were when the bodies were built as
// `serde_json` maps, which sort their keys.
/// A reading. `(device, boot, seq)` identifies a reading the device numbered; one it did not
/// number has a `hub_seq` instead, and no `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadingJson {
    /// The device's boot number, when it sends one: its seqs count within a boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<u32>,
    /// The device id.
    pub device: String,
    /// The hub's number of a reading the device sent without a seq (a numbering of the device's
    /// own, apart from its seqs; a retransmission of such a reading cannot be recognised).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_seq: Option<u32>,
    /// Values by metric name.
    pub metrics: BTreeMap<String, MetricValue>,
    /// The hub offset: a number that only grows.
    pub offset: u64,
    /// The device's sequence number, when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    /// Timestamp (the device's, else the hub's receive time), RFC 3339 UTC.
    #[schema(format = DateTime)]
    pub ts: String,
}

/// A metric value as a device sent it: a JSON number (integers stay integers), boolean or string.
///
/// A float that is not finite (only a binary device can send one) is written as `null`, as JSON
/// has no spelling for it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue(pub OwnedValue);

impl MetricValue {
    /// A reading's metrics, by name, as the API and upstream bodies write them.
    pub fn map(metrics: &[(String, OwnedValue)]) -> BTreeMap<String, MetricValue> {
        metrics
            .iter()
            .map(|(n, v)| (n.clone(), MetricValue(v.clone())))
            .collect()
    }
}

impl Serialize for MetricValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            // serde_json writes a non-finite float as null.
            OwnedValue::F64(f) => serializer.serialize_f64(*f),
            OwnedValue::I64(i) => serializer.serialize_i64(*i),
            OwnedValue::Bool(b) => serializer.serialize_bool(*b),
            OwnedValue::Str(s) => serializer.serialize_str(s),
        }
    }
}

// Written by hand: a derived untagged enum would say `oneOf` integer/number, which an integer
// matches twice, so every integer value would fail validation.
impl PartialSchema for MetricValue {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([
                Type::Number,
                Type::Boolean,
                Type::String,
                Type::Null,
            ]))
            .description(Some(
                "A metric value as the device sent it: a number (integers stay integers), a \
                 boolean or a string; null for a float that is not finite.",
            ))
            .build()
            .into()
    }
}

impl ToSchema for MetricValue {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_serialize_as_plain_json() {
        let values = [
            OwnedValue::F64(21.5),
            OwnedValue::F64(f64::NAN),
            OwnedValue::I64(-3),
            OwnedValue::Bool(true),
            OwnedValue::Str("eco".into()),
        ]
        .map(MetricValue);
        assert_eq!(
            serde_json::to_string(&values).unwrap(),
            r#"[21.5,null,-3,true,"eco"]"#
        );
    }
}
