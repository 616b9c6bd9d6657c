//! Typed configuration: defaults, then the TOML file, then `HUB_*` environment variables, then flags.
//!
//! Every key has a default, so no file at all gives a working hub. Unknown keys are refused (a typo
//! must not silently fall back to a default), and [`Config::validate`] lists every problem at once.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::store::EngineKind;

/// The annotated example configuration; `hub print-config` prints it.
pub const EXAMPLE: &str = include_str!("../../deploy/hub.example.toml");

/// What loading the configuration can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or an override is not valid TOML for this configuration.
    #[error("{0}")]
    Parse(String),
    /// The values parse but do not make sense together.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Storage.
    pub data: DataConfig,
    /// The store writer.
    pub ingest: IngestConfig,
    /// MQTT: embedded or external broker.
    pub mqtt: MqttConfig,
    /// The HTTPS API.
    pub api: ApiConfig,
    /// Serial ports with devices on them (`[[serial]]`, any number).
    pub serial: Vec<SerialConfig>,
    /// Device presence.
    pub devices: DevicesConfig,
    /// Commands for devices.
    pub commands: CommandsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Upstream sync.
    pub sync: SyncConfig,
}

/// `[devices]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    /// A device not heard from for this long is offline.
    pub offline_after: HumanDuration,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            offline_after: HumanDuration(Duration::from_secs(300)),
        }
    }
}

/// `[commands]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// How long a command waits for an offline device, when the request gives no `ttl`.
    pub default_ttl: HumanDuration,
    /// Longest `ttl` a request may ask for.
    pub max_ttl: HumanDuration,
    /// How long a delivered command waits for the device's result, when the request gives no
    /// `timeout`.
    pub default_timeout: HumanDuration,
    /// Longest `timeout` a request may ask for.
    pub max_timeout: HumanDuration,
    /// Longest `wait` a request may ask for (the request is held open that long).
    pub max_wait: HumanDuration,
    /// Open (pending or delivered) commands one device may have.
    pub max_open_per_device: usize,
    /// Commands kept in the store; older ones are deleted.
    pub keep: u64,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            default_ttl: HumanDuration(Duration::from_secs(600)),
            max_ttl: HumanDuration(Duration::from_secs(86_400)),
            default_timeout: HumanDuration(Duration::from_secs(30)),
            max_timeout: HumanDuration(Duration::from_secs(600)),
            max_wait: HumanDuration(Duration::from_secs(60)),
            max_open_per_device: 64,
            keep: 10_000,
        }
    }
}

/// `[data]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The data directory: store, TLS material, tokens.
    pub dir: PathBuf,
    /// The storage engine.
    pub engine: EngineKind,
    /// The engine's page cache.
    pub cache: ByteSize,
    /// Disk quota of the store.
    pub max_disk: ByteSize,
    /// What happens at the quota when readings are not yet synced.
    pub full_policy: FullPolicy,
    /// Readings older than this are deleted, synced or not; 0 keeps them until the quota.
    pub max_age: HumanDuration,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dir: PathBuf::from("./hub-data"),
            engine: EngineKind::Redb,
            cache: ByteSize(4 << 20),
            max_disk: ByteSize(2 << 30),
            full_policy: FullPolicy::DropOldest,
            max_age: HumanDuration(Duration::ZERO),
        }
    }
}

/// `data.full_policy`: what the store does at its quota when the oldest readings are unsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Delete the oldest readings, synced or not (each counted and logged).
    DropOldest,
    /// Refuse new readings and stop acknowledging them, so devices keep their own data.
    RejectNew,
}

/// `[sync]`: where readings go upstream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// This hub's name upstream (in bodies and topics); empty means the host name.
    pub hub_id: String,
    /// HTTPS push sinks (`[[sync.http]]`).
    pub http: Vec<SinkConfig>,
    /// MQTT push sinks (`[[sync.mqtt]]`).
    pub mqtt: Vec<SinkConfig>,
}

/// Body compression of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// None.
    None,
    /// gzip (`Content-Encoding: gzip`).
    Gzip,
    /// zstd (`Content-Encoding: zstd`).
    Zstd,
}

/// Which kind of sink a [`SinkConfig`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// `[[sync.http]]`
    Http,
    /// `[[sync.mqtt]]`
    Mqtt,
}

/// One push sink: `[[sync.http]]` POSTs batches to a URL, `[[sync.mqtt]]` publishes them to a
/// cloud broker at QoS 1. One shape for both, so batching and back-off read the same; keys that
/// only make sense for the other kind are refused by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique among sinks and pull consumers: its position is kept under this name.
    pub name: String,
    /// `https://...` (`http://` only to a loopback receiver), or `mqtt://` / `mqtts://host:port`.
    pub url: String,
    /// http: bearer token (better given as `token_file`).
    pub token: Option<String>,
    /// http: a file holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// mqtt: topic of the batches; `{hub_id}` is replaced. Default `gateways/{hub_id}/readings`.
    pub topic: Option<String>,
    /// mqtt: client id at the cloud broker; default `{hub_id}-{name}`.
    pub client_id: Option<String>,
    /// mqtt: user name at the cloud broker.
    pub username: Option<String>,
    /// mqtt: password (better given through the environment).
    pub password: Option<String>,
    /// CA of the receiver (PEM); default: the system bundle.
    pub ca: Option<PathBuf>,
    /// Client certificate for mutual TLS (PEM), with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// Private key of `client_cert` (PEM).
    pub client_key: Option<PathBuf>,
    /// Body compression; default gzip for http, none for mqtt (MQTT has no content encoding).
    pub compression: Option<Compression>,
    /// Most readings in one batch; default 1000.
    pub batch_max: Option<usize>,
    /// How long a batch waits for more readings once it has one; default 1s.
    pub batch_wait: Option<HumanDuration>,
    /// How long one delivery may take; default 30s.
    pub timeout: Option<HumanDuration>,
    /// The first retry's longest wait; each failure doubles it (full jitter); default 1s.
    pub retry_min: Option<HumanDuration>,
    /// The longest wait between retries; default 5m.
    pub retry_max: Option<HumanDuration>,
    /// Send fresh readings before the backlog once this far behind (readings); default 10000,
    /// 0 never (strict offset order).
    pub live_first_after: Option<u64>,
    /// Most backlog readings per second while catching up; default 0, as fast as the receiver
    /// takes them.
    pub backlog_rate: Option<u32>,
}

impl SinkConfig {
    /// Compression, with the kind's default.
    pub fn compression(&self, kind: SinkKind) -> Compression {
        self.compression.unwrap_or(match kind {
            SinkKind::Http => Compression::Gzip,
            SinkKind::Mqtt => Compression::None,
        })
    }

    /// Most readings in one batch.
    pub fn batch_max(&self) -> usize {
        self.batch_max.unwrap_or(1000)
    }

    /// How long a batch waits for more readings.
    pub fn batch_wait(&self) -> Duration {
        self.batch_wait.map_or(Duration::from_secs(1), |d| d.0)
    }

    /// How long one delivery may take.
    pub fn timeout(&self) -> Duration {
        self.timeout.map_or(Duration::from_secs(30), |d| d.0)
    }

    /// First and longest retry wait.
    pub fn retry(&self) -> (Duration, Duration) {
        (
            self.retry_min.map_or(Duration::from_secs(1), |d| d.0),
            self.retry_max.map_or(Duration::from_secs(300), |d| d.0),
        )
    }

    /// Lag (readings) past which fresh readings go first; `None` for strict order.
    pub fn live_first_after(&self) -> Option<u64> {
        match self.live_first_after.unwrap_or(10_000) {
            0 => None,
            n => Some(n),
        }
    }

    /// Most backlog readings per second; `None` for no limit.
    pub fn backlog_rate(&self) -> Option<u32> {
        self.backlog_rate.filter(|r| *r > 0)
    }

    /// The MQTT topic for `hub_id`.
    pub fn topic_for(&self, hub_id: &str) -> String {
        self.topic
            .as_deref()
            .unwrap_or("gateways/{hub_id}/readings")
            .replace("{hub_id}", hub_id)
    }

    /// The MQTT client id for `hub_id`.
    pub fn client_id_for(&self, hub_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("{hub_id}-{}", self.name))
    }
}

impl SyncConfig {
    /// Every sink with its kind.
    pub fn sinks(&self) -> impl Iterator<Item = (SinkKind, &SinkConfig)> {
        self.http
            .iter()
            .map(|s| (SinkKind::Http, s))
            .chain(self.mqtt.iter().map(|s| (SinkKind::Mqtt, s)))
    }

    fn problems(&self, problems: &mut Vec<String>) {
        if !self.hub_id.is_empty() && !device_protocol::is_valid_id(&self.hub_id) {
            problems.push("sync.hub_id: 1 to 64 of A-Z a-z 0-9 . _ -".into());
        }
        let mut names = Vec::new();
        for (kind, sink) in self.sinks() {
            let at = match kind {
                SinkKind::Http => format!("sync.http[{}]", names.len()),
                SinkKind::Mqtt => format!("sync.mqtt[{}]", names.len() - self.http.len()),
            };
            if !device_protocol::is_valid_id(&sink.name) {
                problems.push(format!("{at}.name: 1 to 64 of A-Z a-z 0-9 . _ -"));
            } else if names.contains(&sink.name.as_str()) {
                problems.push(format!("{at}.name: {:?} is used twice", sink.name));
            }
            names.push(sink.name.as_str());
            let schemes: &[&str] = match kind {
                SinkKind::Http => &["https://", "http://"],
                SinkKind::Mqtt => &["mqtts://", "mqtt://"],
            };
            if !schemes.iter().any(|s| sink.url.starts_with(s)) {
                problems.push(format!(
                    "{at}.url: {:?} must start with {}",
                    sink.url,
                    schemes.join(" or ")
                ));
            }
            let foreign: &[(&str, bool)] = match kind {
                SinkKind::Http => &[
                    ("topic", sink.topic.is_some()),
                    ("client_id", sink.client_id.is_some()),
                    ("username", sink.username.is_some()),
                    ("password", sink.password.is_some()),
                ],
                SinkKind::Mqtt => &[
                    ("token", sink.token.is_some()),
                    ("token_file", sink.token_file.is_some()),
                ],
            };
            for (key, given) in foreign {
                if *given {
                    problems.push(format!("{at}.{key}: not a key of this kind of sink"));
                }
            }
            if sink.token.is_some() && sink.token_file.is_some() {
                problems.push(format!("{at}.token and token_file: give one"));
            }
            if sink.client_cert.is_some() != sink.client_key.is_some() {
                problems.push(format!(
                    "{at}.client_cert and client_key: give both or neither"
                ));
            }
            if !(1..=10_000).contains(&sink.batch_max()) {
                problems.push(format!("{at}.batch_max: 1 to 10000"));
            }
            if sink.batch_wait() > Duration::from_secs(60) {
                problems.push(format!("{at}.batch_wait: at most 1m"));
            }
            let (retry_min, retry_max) = sink.retry();
            if retry_min.is_zero() || retry_min > retry_max {
                problems.push(format!("{at}.retry_min: more than 0 and at most retry_max"));
            }
            if sink.timeout().is_zero() {
                problems.push(format!("{at}.timeout: more than 0"));
            }
        }
    }
}

/// `[ingest]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Readings waiting for the store writer; when full, ingest waits (back-pressure to the broker).
    pub queue: usize,
    /// Bytes of the readings waiting for the store writer or in its commit; when reached, ingest
    /// waits as when `queue` is full. Bounds the memory between the sockets and the store.
    pub queue_bytes: ByteSize,
    /// Most readings in one durable commit.
    pub batch_max: usize,
    /// How long a commit waits after its first reading for more to share its fsync.
    pub batch_window: HumanDuration,
    /// Largest accepted telemetry payload.
    pub max_payload: ByteSize,
    /// Readings waiting this long with no commit finishing is a stall: said at WARN, in
    /// `/readyz` and in `/metrics`.
    pub stall_after: HumanDuration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            // Measured in one session on the 2-core build machine, release build, 100 devices
            // flat out at QoS 1 (the hub's CPU per durable reading, peak RSS): 2,048 per commit
            // with a queue of 4,096 took 8.6 to 8.9 us and 58 MB; 1,024 / 4,096 took 9.3 to 9.5
            // us; 4,096 / 8,192 no less CPU but 70 MB.
            queue: 4096,
            queue_bytes: ByteSize(8 << 20),
            batch_max: 2048,
            // No wait: the writer commits as soon as it is free, and what arrives meanwhile shares
            // the next commit, so batches grow with the load by themselves. Publish to WebSocket
            // at 1k and 10k readings/s (bench/tools ws-latency): p50 3.3 and 2.6 ms, p99 7.0 and
            // 6.4 ms, against 11 and 15 ms p50 with a 2 ms window, which saved CPU at 10k/s only
            // (0.48 cores instead of 0.86).
            batch_window: HumanDuration(Duration::ZERO),
            max_payload: ByteSize(16 << 10),
            stall_after: HumanDuration(Duration::from_secs(10)),
        }
    }
}

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
    /// Most devices connected at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake and the CONNECT packet.
    pub connect_timeout: HumanDuration,
    /// Largest MQTT packet, either way.
    pub max_packet: ByteSize,
}

impl Default for MqttDevicesConfig {
    fn default() -> Self {
        MqttDevicesConfig {
            listen: None,
            ca: None,
            crls: Vec::new(),
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

/// `[[serial]]`: one serial port with one device on it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// The port, e.g. `/dev/ttyUSB0` (or a stable `/dev/serial/by-id/...` link).
    pub path: PathBuf,
    /// Line speed.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// The device's id, for a device that sends no `Hello`.
    #[serde(default)]
    pub device_id: Option<String>,
    /// No byte for this long: the port is closed and opened again.
    #[serde(default = "default_silence")]
    pub silence_timeout: HumanDuration,
}

fn default_baud() -> u32 {
    115_200
}

fn default_silence() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

/// `[api]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// The HTTPS listener.
    pub listen: String,
    /// Client certificates: `off`, `optional` or `required`.
    pub client_auth: ClientAuth,
    /// Server certificate chain (PEM); default `<data.dir>/tls/server.crt`.
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM); default `<data.dir>/tls/server.key`.
    pub tls_key: Option<PathBuf>,
    /// CA that signs client certificates (PEM); default `<data.dir>/tls/ca.crt`.
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists of the client CA (PEM), any number; reloaded on SIGHUP.
    pub crls: Vec<PathBuf>,
    /// Most readings or devices in one page.
    pub max_page: usize,
    /// Most concurrent connections.
    pub max_connections: usize,
    /// Most concurrent connections from one client address, so one address cannot take every
    /// slot of `max_connections`.
    pub max_connections_per_address: usize,
    /// Time allowed for the TLS handshake and the request head.
    pub header_timeout: HumanDuration,
    /// Time allowed for a whole request body, from the end of its head (a body trickled slower
    /// is cut with 408).
    pub body_timeout: HumanDuration,
    /// Requests per second one identity (token or client certificate) may make, on average;
    /// 0 turns the limit off.
    pub rate_limit: u32,
    /// Requests one identity may make at once above the average.
    pub rate_burst: u32,
    /// Client certificates that are identities (`[[api.clients]]`, any number).
    pub clients: Vec<ApiClientConfig>,
}

/// `[[api.clients]]`: a client certificate, by name, and what it may do.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiClientConfig {
    /// The certificate's subject common name or one of its DNS names.
    pub name: String,
    /// Scopes: `read`, `command`, `admin`, `metrics`.
    pub scopes: Vec<String>,
    /// Device-id patterns (`*` wildcards) it is limited to; empty or absent means all devices.
    #[serde(default)]
    pub devices: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8443".into(),
            client_auth: ClientAuth::Optional,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            max_page: 1000,
            max_connections: 256,
            max_connections_per_address: 64,
            header_timeout: HumanDuration(Duration::from_secs(10)),
            body_timeout: HumanDuration(Duration::from_secs(10)),
            crls: Vec::new(),
            rate_limit: 100,
            rate_burst: 200,
            clients: Vec::new(),
        }
    }
}

/// Client certificate policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Client certificates are not asked for.
    Off,
    /// Asked for; a client without one may still use a token.
    Optional,
    /// Every client must present one signed by the client CA.
    Required,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter; `RUST_LOG` itself wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Pretty,
    /// One JSON object a line, for collectors.
    Json,
}

/// Overrides given as command-line flags; they win over file and environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--api-listen`
    pub api_listen: Option<String>,
    /// `--mqtt-listen`
    pub mqtt_listen: Option<String>,
    /// `--mqtt-broker`
    pub mqtt_broker: Option<String>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Loads defaults, then `file`, then `HUB_*` variables from `env`, then `overrides`; validates.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(path) = name.strip_prefix("HUB_") else {
                continue;
            };
            if path == "CONFIG" || path.is_empty() {
                continue;
            }
            let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
            set_path(&mut table, &keys, env_value(&value))
                .map_err(|e| ConfigError::Parse(format!("{name}: {e}")))?;
        }
        let mut config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(format!("configuration: {e}")))?;
        if let Some(dir) = &overrides.data_dir {
            config.data.dir = dir.clone();
        }
        if let Some(listen) = &overrides.api_listen {
            config.api.listen = listen.clone();
        }
        if let Some(listen) = &overrides.mqtt_listen {
            config.mqtt.listen = listen.clone();
        }
        if let Some(broker) = &overrides.mqtt_broker {
            config.mqtt.broker = broker.clone();
        }
        if let Some(format) = overrides.log_format {
            config.log.format = format;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the values together and lists every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.api.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "api.listen: {:?} is not an address:port",
                self.api.listen
            ));
        }
        match self.mqtt.broker() {
            Ok(Broker::Embedded) => match self.mqtt.listen.parse::<SocketAddr>() {
                Err(_) => problems.push(format!(
                    "mqtt.listen: {:?} is not an address:port",
                    self.mqtt.listen
                )),
                // The plain listener checks no one: beyond loopback anyone could publish as any
                // device, so that takes an explicit yes.
                Ok(addr) if !addr.ip().is_loopback() && !self.mqtt.allow_insecure_listen => {
                    problems.push(format!(
                        "mqtt.listen: {addr} is not a loopback address, and the plain MQTT \
                         listener authenticates no one; let devices connect through the TLS listener \
                         [mqtt.devices] listen instead, or set mqtt.allow_insecure_listen = true"
                    ))
                }
                Ok(_) => {}
            },
            Ok(Broker::External { tls, .. }) => {
                if self.mqtt.devices.listen.is_some() {
                    problems.push(
                        "mqtt.devices.listen: needs the hub's own endpoint (mqtt.broker = \"embedded\"); give an external broker \
                         its own TLS listener and ACL (see deploy/mosquitto)"
                            .into(),
                    );
                }
                if !tls && (self.mqtt.ca.is_some() || self.mqtt.client_cert.is_some()) {
                    problems.push("mqtt.ca and mqtt.client_cert need an mqtts:// broker".into());
                }
            }
            Err(e) => problems.push(e),
        }
        if self.mqtt.client_cert.is_some() != self.mqtt.client_key.is_some() {
            problems.push("mqtt.client_cert and mqtt.client_key: give both or neither".into());
        }
        if self.mqtt.password.is_some() && self.mqtt.username.is_none() {
            problems.push("mqtt.password needs mqtt.username".into());
        }

        if self.mqtt.client_id.is_empty() || self.mqtt.client_id.len() > 23 {
            problems.push("mqtt.client_id: must be 1 to 23 characters".into());
        }
        if !(1..=100_000).contains(&self.mqtt.max_connections) {
            problems.push("mqtt.max_connections: must be 1 to 100000".into());
        }
        if self.mqtt.inflight == 0 {
            problems.push("mqtt.inflight: must be at least 1".into());
        }
        let gate = &self.mqtt.devices;
        if let Some(listen) = &gate.listen
            && listen.parse::<SocketAddr>().is_err()
        {
            problems.push(format!(
                "mqtt.devices.listen: {listen:?} is not an address:port"
            ));
        }
        if !(1..=100_000).contains(&gate.max_connections) {
            problems.push("mqtt.devices.max_connections: must be 1 to 100000".into());
        }
        if gate.connect_timeout.0.is_zero() {
            problems.push("mqtt.devices.connect_timeout: must be more than 0".into());
        }
        if !((1 << 10)..=crate::ingest::endpoint::MAX_PLAIN_PACKET as u64)
            .contains(&gate.max_packet.0)
        {
            problems.push("mqtt.devices.max_packet: must be 1KiB to 1MiB".into());
        }
        if self.ingest.queue == 0 {
            problems.push("ingest.queue: must be at least 1".into());
        }
        if !((64 << 10)..=(1 << 30)).contains(&self.ingest.queue_bytes.0) {
            problems.push("ingest.queue_bytes: 64KiB to 1GiB".into());
        }
        if !(1..=65_536).contains(&self.ingest.batch_max) {
            problems.push("ingest.batch_max: must be 1 to 65536".into());
        }
        if self.ingest.batch_window.0 > Duration::from_secs(1) {
            problems.push("ingest.batch_window: at most 1s (acks wait for it)".into());
        }
        if self.ingest.stall_after.0 < Duration::from_secs(1) {
            problems.push("ingest.stall_after: at least 1s".into());
        }
        if !(64..=(1 << 20)).contains(&self.ingest.max_payload.0) {
            problems.push("ingest.max_payload: must be 64B to 1MiB".into());
        }
        if self.data.cache.0 < (256 << 10) {
            problems.push("data.cache: must be at least 256KiB".into());
        }
        if self.data.dir.as_os_str().is_empty() {
            problems.push("data.dir: must not be empty".into());
        }
        if !(1..=100_000).contains(&self.api.max_page) {
            problems.push("api.max_page: must be 1 to 100000".into());
        }
        for (i, serial) in self.serial.iter().enumerate() {
            if serial.path.as_os_str().is_empty() {
                problems.push(format!("serial[{i}].path: must not be empty"));
            }
            if !(300..=4_000_000).contains(&serial.baud) {
                problems.push(format!(
                    "serial[{i}].baud: {} is not 300 to 4000000",
                    serial.baud
                ));
            }
            if let Some(id) = &serial.device_id
                && !device_protocol::is_valid_id(id)
            {
                problems.push(format!(
                    "serial[{i}].device_id: {id:?} is not 1 to 64 of A-Z a-z 0-9 . _ -"
                ));
            }
            if serial.silence_timeout.0 < Duration::from_millis(100) {
                problems.push(format!("serial[{i}].silence_timeout: at least 100ms"));
            }
            if self.serial[..i]
                .iter()
                .any(|other| other.path == serial.path)
            {
                problems.push(format!(
                    "serial[{i}].path: {} is listed twice",
                    serial.path.display()
                ));
            }
        }
        if self.api.max_connections == 0 {
            problems.push("api.max_connections: must be at least 1".into());
        }
        if self.api.max_connections_per_address == 0 {
            problems.push("api.max_connections_per_address: must be at least 1".into());
        }
        if self.api.body_timeout.0.is_zero() {
            problems.push("api.body_timeout: must be more than 0".into());
        }
        if self.api.header_timeout.0.is_zero() {
            problems.push("api.header_timeout: must be more than 0".into());
        }
        if self.api.tls_cert.is_some() != self.api.tls_key.is_some() {
            problems.push("api.tls_cert and api.tls_key: give both or neither".into());
        }
        for (i, client) in self.api.clients.iter().enumerate() {
            if client.name.is_empty() || client.name.len() > 253 {
                problems.push(format!("api.clients[{i}].name: 1 to 253 characters"));
            }
            if client.scopes.is_empty()
                || client
                    .scopes
                    .iter()
                    .any(|s| crate::auth::Scope::parse(s).is_none())
            {
                problems.push(format!(
                    "api.clients[{i}].scopes: one or more of {}",
                    crate::auth::tokens::SCOPE_NAMES
                ));
            }
        }
        if self.devices.offline_after.0 < Duration::from_secs(1) {
            problems.push("devices.offline_after: at least 1s".into());
        }
        let c = &self.commands;
        if c.default_ttl.0 > c.max_ttl.0 {
            problems.push("commands.default_ttl: at most commands.max_ttl".into());
        }
        if c.default_timeout.0.is_zero() || c.default_timeout.0 > c.max_timeout.0 {
            problems.push(
                "commands.default_timeout: more than 0 and at most commands.max_timeout".into(),
            );
        }
        if c.max_wait.0 > Duration::from_secs(600) {
            problems.push("commands.max_wait: at most 10m".into());
        }
        if c.max_open_per_device == 0 {
            problems.push("commands.max_open_per_device: at least 1".into());
        }
        if c.keep < 100 {
            problems.push("commands.keep: at least 100".into());
        }

        if self.data.max_disk.0 < (16 << 20) {
            problems.push("data.max_disk: at least 16MiB".into());
        }
        if !self.data.max_age.0.is_zero() && self.data.max_age.0 < Duration::from_secs(60) {
            problems.push("data.max_age: 0 (no limit) or at least 1m".into());
        }
        self.sync.problems(&mut problems);

        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            problems.push(format!(
                "log.level: {:?} is not a valid filter",
                self.log.level
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The directory of TLS material.
    pub fn tls_dir(&self) -> PathBuf {
        self.data.dir.join("tls")
    }
}

/// An environment value as TOML: numbers and booleans as such, anything else as a string.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    toml::Value::String(raw.to_owned())
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    match keys {
        [] => Err("empty key".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(format!("{first} is not a section")),
            }
        }
    }
}

/// A size in bytes, written as `16KiB`, `2GiB`, `512` or `1MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"<number><unit>"` with units B, KB, MB, GB, KiB, MiB, GiB (case-insensitive).
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size like 16KiB"))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} (use B, KiB, MiB, GiB)"
                ));
            }
        };
        number
            .checked_mul(scale)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// A duration written as `250ms`, `10s`, `5m`, `1h` or `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses `"<number><unit>"` with units ms, s, m, h, d.
    pub fn parse(text: &str) -> Result<HumanDuration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration like 10s"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            other => {
                return Err(format!(
                    "unknown duration unit {other:?} (use ms, s, m, h, d)"
                ));
            }
        };
        Ok(HumanDuration(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(Some(&path), env, &Overrides::default())
    }

    #[test]
    fn no_file_gives_the_documented_defaults() {
        let c = Config::load(None, Vec::new(), &Overrides::default()).unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:8443");
        assert_eq!(c.mqtt.listen, "127.0.0.1:1883");
        assert_eq!(c.mqtt.broker().unwrap(), Broker::Embedded);
        assert_eq!(c.data.dir, PathBuf::from("./hub-data"));
        assert_eq!(c.data.engine, EngineKind::Redb);
    }

    #[test]
    fn the_example_file_is_valid_and_matches_the_defaults() {
        let c = load(EXAMPLE, &[]).unwrap();
        let d = Config::default();
        assert_eq!(c.api.listen, d.api.listen);
        assert_eq!(c.ingest.batch_max, d.ingest.batch_max);
        assert_eq!(c.data.cache, d.data.cache);
        let (m, dm) = (&c.mqtt.devices, &d.mqtt.devices);
        assert_eq!(c.mqtt.allow_insecure_listen, d.mqtt.allow_insecure_listen);
        assert_eq!(c.mqtt.max_connections, d.mqtt.max_connections);
        assert_eq!(
            (
                m.listen.as_deref(),
                m.max_connections,
                m.connect_timeout,
                m.max_packet
            ),
            (
                dm.listen.as_deref(),
                dm.max_connections,
                dm.connect_timeout,
                dm.max_packet
            )
        );
    }

    #[test]
    fn environment_overrides_file_and_flags_override_both() {
        let c = load(
            "[api]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("HUB_API__LISTEN", "127.0.0.1:2"),
                ("HUB_INGEST__QUEUE", "7"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:2");
        assert_eq!(c.ingest.queue, 7);
        let overrides = Overrides {
            api_listen: Some("127.0.0.1:3".into()),
            ..Overrides::default()
        };
        let c = Config::load(
            None,
            vec![("HUB_API__LISTEN".into(), "127.0.0.1:2".into())],
            &overrides,
        )
        .unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:3");
    }

    #[test]
    fn sinks_are_checked_by_kind_and_name() {
        let c = load(
            "[[sync.http]]\nname = \"cloud\"\nurl = \"https://x.example/in\"\n\
             [[sync.mqtt]]\nname = \"broker\"\nurl = \"mqtts://x.example:8883\"\n",
            &[],
        )
        .unwrap();
        let sinks: Vec<_> = c.sync.sinks().collect();
        assert_eq!(sinks.len(), 2);
        assert_eq!(sinks[0].1.compression(SinkKind::Http), Compression::Gzip);
        assert_eq!(sinks[1].1.compression(SinkKind::Mqtt), Compression::None);
        assert_eq!(sinks[1].1.topic_for("gw"), "gateways/gw/readings");
        let Err(ConfigError::Invalid(problems)) = load(
            "[[sync.http]]\nname = \"a\"\nurl = \"ftp://x\"\ntopic = \"t\"\n\
             [[sync.mqtt]]\nname = \"a\"\nurl = \"mqtt://x:1\"\ntoken = \"s\"\nbatch_max = 0\n",
            &[],
        ) else {
            panic!("bad sinks accepted");
        };
        let all = problems.join("\n");
        for expected in [
            "sync.http[0].url",
            "sync.http[0].topic",
            "sync.mqtt[0].name",
            "sync.mqtt[0].token",
            "sync.mqtt[0].batch_max",
        ] {
            assert!(all.contains(expected), "{expected} missing from:\n{all}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = load("[api]\nlisen = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let text = "[api]\nlisten = \"nowhere\"\nmax_page = 0\n[mqtt]\nbroker = \"amqp://x\"\n[ingest]\nbatch_max = 0\n";
        let err = load(text, &[]).unwrap_err().to_string();
        for needle in [
            "api.listen",
            "api.max_page",
            "mqtt.broker",
            "ingest.batch_max",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    #[test]
    fn the_embedded_broker_stays_on_loopback_unless_insecure_is_asked_for() {
        let err = load("[mqtt]\nlisten = \"0.0.0.0:1883\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mqtt.listen") && err.contains("allow_insecure_listen"),
            "{err}"
        );
        let c = load(
            "[mqtt]\nlisten = \"0.0.0.0:1883\"\nallow_insecure_listen = true\n",
            &[],
        )
        .unwrap();
        assert!(c.mqtt.allow_insecure_listen);
        assert!(load("[mqtt]\nlisten = \"[::1]:1883\"\n", &[]).is_ok());
    }

    #[test]
    fn the_embedded_brokers_connection_limit_is_checked() {
        for bad in ["0", "100001"] {
            let err = load(&format!("[mqtt]\nmax_connections = {bad}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("mqtt.max_connections"), "{err}");
        }
        let c = load("[mqtt]\nmax_connections = 5000\n", &[]).unwrap();
        assert_eq!(c.mqtt.max_connections, 5000);
    }

    #[test]
    fn the_devices_listener_is_checked() {
        let c = load("[mqtt.devices]\nlisten = \"0.0.0.0:8883\"\n", &[]).unwrap();
        assert_eq!(c.mqtt.devices.listen.as_deref(), Some("0.0.0.0:8883"));
        assert_eq!(c.mqtt.devices.max_packet, ByteSize(64 << 10));
        let c = load("", &[("HUB_MQTT__DEVICES__LISTEN", "127.0.0.1:8883")]).unwrap();
        assert_eq!(c.mqtt.devices.listen.as_deref(), Some("127.0.0.1:8883"));
        let text = "[mqtt]\nbroker = \"mqtt://broker.lan\"\n[mqtt.devices]\nlisten = \"nowhere\"\nmax_connections = 0\nmax_packet = \"2MiB\"\n";
        let err = load(text, &[]).unwrap_err().to_string();
        for needle in [
            "mqtt.devices.listen: needs the hub's own endpoint",
            "mqtt.devices.listen: \"nowhere\"",
            "mqtt.devices.max_connections",
            "mqtt.devices.max_packet",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    #[test]
    fn sizes_and_durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(ByteSize::parse("16KiB").unwrap(), ByteSize(16384));
        assert_eq!(ByteSize::parse("2GiB").unwrap(), ByteSize(2 << 30));
        assert_eq!(ByteSize::parse("512").unwrap(), ByteSize(512));
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("99999999999999999999GiB").is_err());
        assert_eq!(
            HumanDuration::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            HumanDuration::parse("5m").unwrap().0,
            Duration::from_secs(300)
        );
        assert!(HumanDuration::parse("soon").is_err());
    }

    #[test]
    fn external_broker_urls_parse() {
        let parse = |url: &str| {
            MqttConfig {
                broker: url.into(),
                ..MqttConfig::default()
            }
            .broker()
        };
        let external = |host: &str, port, tls| Broker::External {
            host: host.into(),
            port,
            tls,
        };
        assert_eq!(
            parse("mqtt://10.0.0.5:1884").unwrap(),
            external("10.0.0.5", 1884, false)
        );
        assert_eq!(
            parse("mqtt://broker.lan").unwrap(),
            external("broker.lan", 1883, false)
        );
        assert_eq!(
            parse("mqtts://broker.lan").unwrap(),
            external("broker.lan", 8883, true)
        );
        assert_eq!(
            parse("mqtts://[::1]:8884").unwrap(),
            external("::1", 8884, true)
        );
        assert!(parse("mqtt://:1").is_err());
        assert!(parse("amqp://x").is_err());
    }
}
