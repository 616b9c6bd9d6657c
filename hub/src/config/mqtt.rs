//! `[mqtt]`: the hub's MQTT endpoint, or the external broker it subscribes to.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ByteSize, HumanDuration};

/// `[mqtt]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `embedded` (the hub's own MQTT endpoint), or `mqtt://host:port` for an external broker.
    pub broker: String,
    /// The endpoint's plain TCP listener.
    pub listen: String,
    /// The client id of the hub's own subscription.
    pub client_id: String,
    /// Most QoS 1 messages an external broker may have sent the hub unacknowledged (the hub reads
    /// no more until commits free room); also rumqttc's outgoing window.
    pub inflight: u16,
    /// CA of an `mqtts://` broker (PEM); default: the system bundle.
    pub ca: Option<PathBuf>,
    /// Client certificate for an external broker (PEM), with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// Private key of `client_cert` (PEM).
    pub client_key: Option<PathBuf>,
    /// User name for an external broker.
    pub username: Option<String>,
    /// Password for an external broker (better given as `HUB_MQTT__PASSWORD`).
    pub password: Option<String>,
    /// Lets the plain listener listen beyond loopback, where anyone on the network may publish
    /// as any device; devices should use `[mqtt.devices]` instead.
    pub allow_insecure_listen: bool,
    /// Most clients connected at once on `listen`; the TLS listener's
    /// (`[mqtt.devices] max_connections`) come on top.
    pub max_connections: usize,
    /// The TLS listener for devices (`[mqtt.devices]`).
    pub devices: MqttDevicesConfig,
    /// Existing topic layouts read as device telemetry (`[[mqtt.map]]`, any number; the first
    /// whose topic matches a message takes it).
    pub map: Vec<TopicMapConfig>,
    /// Sparkplug B edge nodes (`[mqtt.sparkplug]`).
    pub sparkplug: SparkplugConfig,
}

/// `[mqtt.sparkplug]`: the hub reads Sparkplug B edge nodes on `spBv1.0/#` as a host
/// application (readings, births and deaths, Rebirth requests, commands as NCMD/DCMD).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SparkplugConfig {
    /// Read `spBv1.0/...`; off by default.
    pub enabled: bool,
}

/// `[[mqtt.map]]`: an existing topic layout (Tasmota, Shelly, Zigbee2MQTT, or one described
/// here) whose messages become readings of the device named in the topic. Every key but `preset`
/// overrides what the preset says; without a preset, `topic` and `payload` are needed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicMapConfig {
    /// The topic, one `{device}` level and any other `{name}` levels, no wildcards, e.g.
    /// `tele/{device}/SENSOR`.
    pub topic: Option<String>,
    /// A built-in layout: `tasmota`, `shelly` (Gen2 and later) or `zigbee2mqtt`.
    pub preset: Option<MapPreset>,
    /// `json` (an object whose fields are the metrics) or `value` (a bare number, bool or
    /// string: one metric, named by `metric`).
    pub payload: Option<PayloadForm>,
    /// `json`: the fields kept (nested names joined with `.`; a name keeps everything under it);
    /// default: all of them.
    pub fields: Option<Vec<String>>,
    /// `json`: fields left out (same names as `fields`).
    pub skip: Option<Vec<String>>,
    /// `json`: the field holding the reading's time (RFC 3339 with a zone, or unix seconds);
    /// without it (or when the field is absent) the reading is stamped when it arrives.
    pub ts_field: Option<String>,
    /// `value`: the metric's name, fixed or from topic levels (`{name}`); `json`: a prefix put
    /// before every field's name, joined with `.`.
    pub metric: Option<String>,
    /// Put before the `{device}` level to make the hub's device id, e.g. `z2m-`.
    pub device_prefix: Option<String>,
    /// A topic with the same `{device}` that says whether the device is online (`Online` /
    /// `Offline`, `true` / `false`, `{"state":"online"}`): often the device's MQTT last will.
    /// Presets name theirs; `""` turns it off.
    pub status_topic: Option<String>,
}

/// The built-in topic layouts of `[[mqtt.map]] preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MapPreset {
    /// Tasmota: `tele/{device}/SENSOR`, JSON; status on `tele/{device}/LWT`.
    Tasmota,
    /// Shelly Gen2 and later, "generic status update over MQTT": `{device}/status/{component}`,
    /// JSON, metrics named `{component}.{field}`; status on `{device}/online`.
    Shelly,
    /// Zigbee2MQTT: `zigbee2mqtt/{device}`, JSON; status on `zigbee2mqtt/{device}/availability`.
    Zigbee2mqtt,
}

/// How a mapped topic's payload is read (`[[mqtt.map]] payload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadForm {
    /// A JSON object: each field (nested ones flattened) is a metric.
    Json,
    /// A bare number, bool or string: one metric.
    Value,
}

/// `[mqtt.devices]`: the endpoint's TLS listener, that devices connect to with a certificate of
/// the hub's CA and that lets each one publish and subscribe to its own topics only.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttDevicesConfig {
    /// Address of the listener, e.g. `0.0.0.0:8883`; none (the default): no listener.
    pub listen: Option<String>,
    /// CA of device certificates (PEM); default `<data.dir>/tls/ca.crt`, the CA that
    /// `hub certs issue-device` signs with.
    pub ca: Option<PathBuf>,
    /// Certificate revocation lists of that CA (PEM), any number.
    pub crls: Vec<PathBuf>,
    /// Whether devices may log in with a user name (their id) and a password instead of a
    /// certificate: `off` (certificates only), `allow` (either), `require` (passwords only; no
    /// certificate is asked for).
    pub passwords: PasswordAuth,
    /// Most devices connected at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake and the CONNECT packet.
    pub connect_timeout: HumanDuration,
    /// Largest MQTT packet, either way.
    pub max_packet: ByteSize,
}

/// How the TLS listener for devices takes passwords (`[mqtt.devices] passwords`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PasswordAuth {
    /// Certificates only (the TLS handshake requires one).
    #[default]
    Off,
    /// A certificate, or without one, the device id and its password.
    Allow,
    /// The device id and its password; no certificate is asked for.
    Require,
}

impl Default for MqttDevicesConfig {
    fn default() -> Self {
        MqttDevicesConfig {
            listen: None,
            ca: None,
            crls: Vec::new(),
            passwords: PasswordAuth::Off,
            max_connections: 500,
            connect_timeout: HumanDuration(Duration::from_secs(10)),
            max_packet: ByteSize(64 << 10),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: "embedded".into(),
            listen: "127.0.0.1:1883".into(),
            client_id: "hub".into(),
            inflight: 1024,
            ca: None,
            client_cert: None,
            client_key: None,
            username: None,
            password: None,
            allow_insecure_listen: false,
            max_connections: 1000,
            devices: MqttDevicesConfig::default(),
            map: Vec::new(),
            sparkplug: SparkplugConfig::default(),
        }
    }
}

/// Where the hub's MQTT client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// The hub's own MQTT endpoint, at its listen address.
    Embedded,
    /// An external broker.
    External {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// `mqtts://`: TLS.
        tls: bool,
    },
}

impl MqttConfig {
    /// The parsed `broker` value.
    pub fn broker(&self) -> Result<Broker, String> {
        if self.broker == "embedded" {
            return Ok(Broker::Embedded);
        }
        let (rest, tls) = match (
            self.broker.strip_prefix("mqtt://"),
            self.broker.strip_prefix("mqtts://"),
        ) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => {
                return Err(format!(
                    "mqtt.broker: {:?} is not \"embedded\", mqtt://host:port or mqtts://host:port",
                    self.broker
                ));
            }
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("mqtt.broker: bad port {p:?}"))?;
                (
                    h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                    port,
                )
            }
            None => (rest.to_owned(), if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err("mqtt.broker: no host".into());
        }
        Ok(Broker::External { host, port, tls })
    }
}
