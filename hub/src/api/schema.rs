//! Types shared by several API bodies and parameters, with the OpenAPI schema each one has.

use device_protocol::OwnedValue;
use serde::{Serialize, Serializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::store::Transport;

/// A metric value as a device sent it: a JSON number (integers stay integers), boolean or string.
///
/// A float that is not finite (only a binary device can send one) is written as `null`, as JSON
/// has no spelling for it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue(pub OwnedValue);

impl MetricValue {
    /// A reading's metrics, by name, as the API and upstream bodies write them.
    pub fn map(
        metrics: &[(String, OwnedValue)],
    ) -> std::collections::BTreeMap<String, MetricValue> {
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

/// The transport a device last used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TransportName {
    /// MQTT, through the embedded or an external broker.
    Mqtt,
    /// A serial line.
    Serial,
}

impl From<Transport> for TransportName {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Mqtt => TransportName::Mqtt,
            Transport::Serial => TransportName::Serial,
        }
    }
}

/// How a device encodes its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WireName {
    /// JSON telemetry; commands as JSON on `devices/{id}/commands`.
    Json,
    /// device-protocol messages (MQTT `up`/`down` or serial frames).
    Binary,
}

impl From<crate::store::Wire> for WireName {
    fn from(w: crate::store::Wire) -> Self {
        match w {
            crate::store::Wire::Json => WireName::Json,
            crate::store::Wire::Binary => WireName::Binary,
        }
    }
}

// The device in the path, for the description only: handlers take `Path<String>` and check it
// themselves, so a bad id gets the API's own 400 problem.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "read by the OpenAPI derive only")]
pub struct DeviceId {
    /// The device id: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, not `.` or `..` (the pattern
    /// says that without look-ahead). An id that is not one gets
    /// 400; a device that does not exist, or that the token may not see, 404.
    #[param(
        pattern = r"^([A-Za-z0-9_-][A-Za-z0-9._-]{0,63}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}|\.\.[A-Za-z0-9._-]{1,62})$",
        example = "greenhouse-1"
    )]
    id: String,
}

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
