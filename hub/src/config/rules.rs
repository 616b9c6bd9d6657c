//! `[[rules]]`: alert rules, as written in the file and as the API takes them (the same shape in
//! JSON). Durations are kept as text here and read by `rules::compile`, so that every problem of
//! a rule is listed at once, with its key, by `hub check-config` and by the API alike.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One rule: which devices and metric, one condition, what to do on its transitions.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleConfig {
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`; unique among the configuration's and the API's rules.
    pub name: String,
    /// Device-id pattern (`*` wildcards); every device when neither this nor `labels` is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<String>,
    /// Devices carrying all of these labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The metric the condition reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Fires while the value is above this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Fires while the value is below this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// A firing threshold alert resolves only once the value is this far back on the good side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hysteresis: Option<f64>,
    /// The condition must hold this long before the alert fires (`2m`).
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    /// The metric's rate of change, in units per `per`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateConfig>,
    /// The value moved more than `deadband` from the value it last fired at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeConfig>,
    /// No reading (of `metric`, or of any metric) for this long (`10m`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silent: Option<String>,
    /// The device is offline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline: Option<bool>,
    /// A Rhai expression of the reading that must be true: `value`, `device` and the reading's
    /// metrics by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// The shortest time between two firings of one alert (`1m`); flapping is held pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_interval: Option<String>,
    /// What to do on its transitions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionConfig>,
}

/// `rate = { per = "1m", above = 2.0 }`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    /// The unit of time of the rate, and the window it is measured over.
    pub per: String,
    /// Fires while the rate is above this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Fires while the rate is below this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
}

/// `change = { deadband = 0.5 }`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChangeConfig {
    /// Moves this large or smaller are ignored; 0 for any change.
    pub deadband: f64,
}

/// One action: exactly one of `webhook`, `command`, `mqtt`, `log`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionConfig {
    /// POST the transition to this URL (`https://`, or `http://` to a loopback receiver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Send this command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandActionConfig>,
    /// Publish the transition on this topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttActionConfig>,
    /// Write a log line at this level (`info`, `warn`, `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Which transitions: `firing`, `resolved` or `both`. Default: `firing` for a command,
    /// `both` for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
}

/// `command = { device = "compressor-1", name = "start", args = {...} }`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandActionConfig {
    /// The device; `{device}` is the alert's device. Default: the alert's device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The command's name.
    pub name: String,
    /// Its arguments.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub args: serde_json::Map<String, serde_json::Value>,
}

/// `mqtt = { topic = "alerts/{rule}", qos = 1 }`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttActionConfig {
    /// The topic; `{rule}` and `{device}` are replaced.
    pub topic: String,
    /// 0 or 1 (the default): the QoS the transition is published at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<u8>,
}
