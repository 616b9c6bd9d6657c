//! `[homeassistant]`: Home Assistant MQTT discovery, opt-in. The hub announces each device's
//! metrics on the broker Home Assistant reads, and publishes their states from durable readings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Broker, MqttConfig};

/// `[homeassistant]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// Announce and publish at all.
    pub enabled: bool,
    /// The broker Home Assistant reads, `mqtt://host:port` or `mqtts://host:port`. Empty: the
    /// hub's own `[mqtt] broker` when that is an external broker (the embedded endpoint passes
    /// nothing between its clients, so Home Assistant cannot read from it).
    pub broker: String,
    /// The client id on that broker.
    pub client_id: String,
    /// Username on that broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password on that broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// CA (PEM) the broker's certificate must chain to (`mqtts://`); the system's roots when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Home Assistant's discovery prefix (its own default is `homeassistant`).
    pub discovery_prefix: String,
    /// Where states and availability go: `<state_prefix>/<device>/<metric>`.
    pub state_prefix: String,
    /// Most device metrics announced; more are counted and left out.
    pub max_entities: usize,
    /// Messages waiting for the broker; states beyond it are dropped and counted.
    pub queue: usize,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            enabled: false,
            broker: String::new(),
            client_id: "hub-homeassistant".into(),
            username: None,
            password: None,
            ca: None,
            discovery_prefix: "homeassistant".into(),
            state_prefix: "hub".into(),
            max_entities: 1000,
            queue: 4096,
        }
    }
}

/// A topic prefix: one or more levels, no wildcards, no empty level.
fn prefix_ok(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('/').all(|level| !level.is_empty())
        && !prefix.contains(['+', '#'])
}

impl HomeAssistantConfig {
    /// The broker to use, given the hub's own `[mqtt]`: `(host, port, tls)`.
    pub fn broker(&self, mqtt: &MqttConfig) -> Result<(String, u16, bool), String> {
        let url = if self.broker.is_empty() {
            &mqtt.broker
        } else {
            &self.broker
        };
        match (MqttConfig {
            broker: url.clone(),
            ..MqttConfig::default()
        })
        .broker()
        {
            Ok(Broker::External { host, port, tls }) => Ok((host, port, tls)),
            Ok(Broker::Embedded) => Err(
                "homeassistant.broker: give the broker Home Assistant reads (mqtt://host:port or \
                 mqtts://host:port); the embedded endpoint passes nothing between its clients"
                    .into(),
            ),
            Err(e) => Err(e.replacen("mqtt.broker", "homeassistant.broker", 1)),
        }
    }

    /// Adds every problem of the section to `problems`; none when it is off.
    pub fn problems(&self, mqtt: &MqttConfig, problems: &mut Vec<String>) {
        if !self.enabled {
            return;
        }
        match self.broker(mqtt) {
            Ok((_, _, tls)) if !tls && self.ca.is_some() => {
                problems.push("homeassistant.ca needs an mqtts:// broker".into())
            }
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
        if self.client_id.is_empty() || self.client_id.len() > 23 {
            problems.push("homeassistant.client_id: must be 1 to 23 characters".into());
        }
        if self.password.is_some() && self.username.is_none() {
            problems.push("homeassistant.password needs homeassistant.username".into());
        }
        for (key, prefix) in [
            ("discovery_prefix", &self.discovery_prefix),
            ("state_prefix", &self.state_prefix),
        ] {
            if !prefix_ok(prefix) {
                problems.push(format!(
                    "homeassistant.{key}: {prefix:?} is not a topic prefix (levels without + or #)"
                ));
            }
        }
        if !(1..=100_000).contains(&self.max_entities) {
            problems.push("homeassistant.max_entities: must be 1 to 100000".into());
        }
        if !(16..=1_000_000).contains(&self.queue) {
            problems.push("homeassistant.queue: must be 16 to 1000000".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(c: &HomeAssistantConfig, mqtt: &MqttConfig) -> Vec<String> {
        let mut p = Vec::new();
        c.problems(mqtt, &mut p);
        p
    }

    #[test]
    fn off_has_no_problems_and_on_needs_an_external_broker() {
        let embedded = MqttConfig::default();
        let mut c = HomeAssistantConfig::default();
        assert!(problems(&c, &embedded).is_empty());
        c.enabled = true;
        let p = problems(&c, &embedded);
        assert!(
            p.len() == 1 && p[0].contains("homeassistant.broker"),
            "{p:?}"
        );
        let external = MqttConfig {
            broker: "mqtt://broker:1883".into(),
            ..MqttConfig::default()
        };
        assert!(problems(&c, &external).is_empty());
        assert_eq!(c.broker(&external), Ok(("broker".into(), 1883, false)));
        c.broker = "mqtts://ha.lan".into();
        assert_eq!(c.broker(&embedded), Ok(("ha.lan".into(), 8883, true)));
    }

    #[test]
    fn bad_values_are_each_named() {
        let c = HomeAssistantConfig {
            enabled: true,
            broker: "http://x".into(),
            client_id: String::new(),
            password: Some("p".into()),
            discovery_prefix: "home/+".into(),
            state_prefix: "a//b".into(),
            max_entities: 0,
            queue: 1,
            ..HomeAssistantConfig::default()
        };
        let p = problems(&c, &MqttConfig::default()).join("\n");
        for key in [
            "homeassistant.broker",
            "client_id",
            "password",
            "discovery_prefix",
            "state_prefix",
            "max_entities",
            "queue",
        ] {
            assert!(p.contains(key), "{key} not named in:\n{p}");
        }
    }
}
