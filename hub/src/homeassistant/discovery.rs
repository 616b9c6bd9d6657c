//! The messages of Home Assistant's MQTT discovery, built from what the hub knows of a device and
//! a metric. Pure: topics and payloads only, no I/O.
//!
//! The shapes follow Home Assistant's documentation of MQTT discovery: the config topic
//! `<discovery_prefix>/<component>/<node_id>/<object_id>/config` (node and object ids of
//! `[a-zA-Z0-9_-]`), a retained JSON config with `unique_id`, `name`, `state_topic`,
//! `availability` and a `device` block, and an empty retained payload to remove an entity.

use device_protocol::OwnedValue;
use serde_json::{Value, json};

/// Home Assistant refuses a state longer than this (characters).
const MAX_STATE_CHARS: usize = 255;

/// Which entity platform a metric is shown as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// A number.
    Number,
    /// Text.
    Text,
    /// On/off.
    Binary,
}

impl Component {
    /// The component a value is announced as.
    pub fn of(value: &OwnedValue) -> Component {
        match value {
            OwnedValue::F64(_) | OwnedValue::I64(_) => Component::Number,
            OwnedValue::Str(_) => Component::Text,
            OwnedValue::Bool(_) => Component::Binary,
        }
    }

    /// Home Assistant's name of the platform.
    fn platform(self) -> &'static str {
        match self {
            Component::Number | Component::Text => "sensor",
            Component::Binary => "binary_sensor",
        }
    }
}

/// What the device block shows of a device record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// A name for people (the operator's display name), else the id.
    pub name: Option<String>,
    /// How it talks to the hub: transport and encoding, such as `mqtt json`.
    pub model: Option<String>,
    /// Its firmware version, when it said one.
    pub sw_version: Option<String>,
}

/// Where the hub publishes, and as which hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: String,
    /// The prefix of states and availability.
    pub state_prefix: String,
    /// The hub's id, part of every unique id.
    pub hub_id: String,
}

/// `name` with every character outside `[a-zA-Z0-9_-]` as `_`: the ids discovery topics allow.
pub fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Topics {
    /// Home Assistant's status topic: it says `online` there when it starts (its birth message).
    pub fn birth(&self) -> String {
        format!("{}/status", self.discovery_prefix)
    }

    /// The hub's own availability (its last will says `offline`).
    pub fn hub_status(&self) -> String {
        format!("{}/status", self.state_prefix)
    }

    /// A device's availability: `online` or `offline`, from the hub's presence.
    pub fn availability(&self, device: &str) -> String {
        format!("{}/{}/availability", self.state_prefix, slug(device))
    }

    /// Where a metric's state goes.
    pub fn state(&self, device: &str, metric: &str) -> String {
        format!("{}/{}/{}", self.state_prefix, slug(device), slug(metric))
    }

    /// Where a metric's discovery config goes.
    pub fn config(&self, component: Component, device: &str, metric: &str) -> String {
        format!(
            "{}/{}/{}/{}/config",
            self.discovery_prefix,
            component.platform(),
            slug(device),
            slug(metric)
        )
    }

    /// The retained discovery config of a device's metric.
    pub fn config_payload(
        &self,
        component: Component,
        device: &str,
        metric: &str,
        info: &DeviceInfo,
    ) -> Vec<u8> {
        let mut block = json!({
            "identifiers": [format!("{}_{}", slug(&self.hub_id), slug(device))],
            "name": info.name.as_deref().unwrap_or(device),
        });
        for (key, value) in [("model", &info.model), ("sw_version", &info.sw_version)] {
            if let Some(value) = value {
                block[key] = Value::String(value.clone());
            }
        }
        let mut config = json!({
            "name": metric,
            "unique_id": format!("{}_{}_{}", slug(&self.hub_id), slug(device), slug(metric)),
            "state_topic": self.state(device, metric),
            // Both must say online: the hub (its will says offline when it dies) and the device.
            "availability": [
                {"topic": self.hub_status()},
                {"topic": self.availability(device)},
            ],
            "availability_mode": "all",
            "device": block,
            "origin": {"name": "hub", "sw_version": env!("CARGO_PKG_VERSION")},
        });
        match component {
            // Long-term statistics for numbers; the hub knows no unit or device class.
            Component::Number => config["state_class"] = json!("measurement"),
            Component::Binary => {
                config["payload_on"] = json!("ON");
                config["payload_off"] = json!("OFF");
            }
            Component::Text => {}
        }
        config.to_string().into_bytes()
    }
}

/// A value as a state payload: numbers as text, booleans `ON`/`OFF`, text cut to what Home
/// Assistant takes.
pub fn state_payload(value: &OwnedValue) -> Vec<u8> {
    match value {
        OwnedValue::F64(v) => v.to_string().into_bytes(),
        OwnedValue::I64(v) => v.to_string().into_bytes(),
        OwnedValue::Bool(true) => b"ON".to_vec(),
        OwnedValue::Bool(false) => b"OFF".to_vec(),
        OwnedValue::Str(s) => s
            .chars()
            .take(MAX_STATE_CHARS)
            .collect::<String>()
            .into_bytes(),
    }
}

/// A presence as an availability payload.
pub fn availability_payload(online: bool) -> &'static [u8] {
    if online { b"online" } else { b"offline" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics {
            discovery_prefix: "homeassistant".into(),
            state_prefix: "hub".into(),
            hub_id: "gw.1".into(),
        }
    }

    #[test]
    fn topics_use_only_the_characters_discovery_allows() {
        let t = topics();
        assert_eq!(
            t.config(Component::Number, "boiler.1", "temp c"),
            "homeassistant/sensor/boiler_1/temp_c/config"
        );
        assert_eq!(
            t.config(Component::Binary, "door", "open"),
            "homeassistant/binary_sensor/door/open/config"
        );
        assert_eq!(t.state("boiler.1", "temp c"), "hub/boiler_1/temp_c");
        assert_eq!(t.availability("boiler.1"), "hub/boiler_1/availability");
        assert_eq!(t.birth(), "homeassistant/status");
    }

    #[test]
    fn a_config_carries_the_device_block_and_only_what_is_known() {
        let info = DeviceInfo {
            name: Some("Boiler".into()),
            model: Some("mqtt json".into()),
            sw_version: None,
        };
        let c: Value =
            serde_json::from_slice(&topics().config_payload(Component::Number, "b1", "t", &info))
                .unwrap();
        assert_eq!(c["unique_id"], "gw_1_b1_t");
        assert_eq!(c["state_topic"], "hub/b1/t");
        assert_eq!(c["device"]["identifiers"][0], "gw_1_b1");
        assert_eq!(c["device"]["name"], "Boiler");
        assert_eq!(c["device"]["model"], "mqtt json");
        assert!(c["device"].get("sw_version").is_none());
        assert!(c.get("unit_of_measurement").is_none() && c.get("device_class").is_none());
        assert_eq!(c["state_class"], "measurement");
        let b: Value = serde_json::from_slice(&topics().config_payload(
            Component::Binary,
            "b1",
            "on",
            &DeviceInfo::default(),
        ))
        .unwrap();
        assert_eq!(b["device"]["name"], "b1");
        assert_eq!(b["payload_on"], "ON");
        assert!(b.get("state_class").is_none());
    }

    #[test]
    fn states_are_text_home_assistant_takes() {
        assert_eq!(state_payload(&OwnedValue::F64(21.5)), b"21.5");
        assert_eq!(state_payload(&OwnedValue::I64(-3)), b"-3");
        assert_eq!(state_payload(&OwnedValue::Bool(true)), b"ON");
        let long = "é".repeat(300);
        assert_eq!(
            String::from_utf8(state_payload(&OwnedValue::Str(long)))
                .unwrap()
                .chars()
                .count(),
            255
        );
    }
}
