//! Types shared by several API bodies and parameters, with the OpenAPI schema each one has.

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::store::Transport;

/// The transport a device last used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TransportName {
    /// MQTT, through the embedded or an external broker.
    Mqtt,
    /// A serial line.
    Serial,
    /// Polled over Modbus (RTU or TCP).
    Modbus,
    /// Sparkplug B (an edge node or one of its devices).
    Sparkplug,
}

impl From<Transport> for TransportName {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Mqtt => TransportName::Mqtt,
            Transport::Serial => TransportName::Serial,
            Transport::Modbus => TransportName::Modbus,
            Transport::Sparkplug => TransportName::Sparkplug,
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
