//! Typed configuration: defaults, then the TOML file, then `HUB_*` environment variables, then flags.
//!
//! Every key has a default, so no file at all gives a working hub. Unknown keys are refused (a typo
//! must not silently fall back to a default), and [`Config::validate`] lists every problem at once.
//!
//! The sections live here; `[mqtt]`, `[sync]` and `[[modbus]]`, the larger ones, in their own files. Loading is
//! in `load.rs`, the checks of values together in `validate.rs`, sizes and durations in `units.rs`.

mod homeassistant;
mod load;
mod modbus;
mod mqtt;
mod rules;
mod sync;
#[cfg(test)]
mod tests;
mod units;
mod validate;

pub use homeassistant::HomeAssistantConfig;
pub use modbus::{
    ByteOrder, ModbusBusConfig, ModbusDeviceConfig, ModbusParity, ModbusTransport, PointConfig,
    PointType, Table,
};
pub use mqtt::{
    Broker, MapPreset, MqttConfig, MqttDevicesConfig, PasswordAuth, PayloadForm, SparkplugConfig,
    TopicMapConfig,
};
pub use rules::{
    ActionConfig, ChangeConfig, CommandActionConfig, MqttActionConfig, RateConfig, RuleConfig,
};
pub use sync::{Compression, SinkConfig, SinkKind, SyncConfig};
pub use units::{ByteSize, HumanDuration};

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{EngineKind, WritePath};

/// The annotated example configuration; `hub print-config` prints it.
pub const EXAMPLE: &str = include_str!("../../../deploy/hub.example.toml");

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
    /// Every problem: syntax errors of the file, values of the wrong type or unknown keys (each
    /// with its key and line, or its variable), values that do not make sense together.
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
    /// Modbus buses and the devices polled on them (`[[modbus]]`, any number).
    pub modbus: Vec<ModbusBusConfig>,
    /// Device presence.
    pub devices: DevicesConfig,
    /// Commands for devices.
    pub commands: CommandsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Upstream sync.
    pub sync: SyncConfig,
    /// Alert rules (`[[rules]]`, any number; reloaded on SIGHUP).
    pub rules: Vec<RuleConfig>,
    /// Home Assistant MQTT discovery (off unless enabled).
    pub homeassistant: HomeAssistantConfig,
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
    /// How commits reach the disk: `log` (log first, checkpoints into the engine) or `direct`.
    pub write_path: WritePath,
    /// With the log: a checkpoint folds the log into the engine once the changes held in memory
    /// since the last one reach this much.
    pub checkpoint_bytes: ByteSize,
    /// ... or once the oldest of them is this old.
    pub checkpoint_every: HumanDuration,
    /// With the log: readings a store of an older version (or written directly) keeps as rows
    /// are sealed into blocks in the background, this many per commit.
    pub seal_batch: usize,
}

impl DataConfig {
    /// The log's sizes and times.
    pub fn log_config(&self) -> crate::store::LogConfig {
        crate::store::LogConfig {
            checkpoint_bytes: self.checkpoint_bytes.0 as usize,
            checkpoint_every: self.checkpoint_every.0,
            ..crate::store::LogConfig::default()
        }
    }
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
            write_path: WritePath::Log,
            checkpoint_bytes: ByteSize(crate::store::LogConfig::default().checkpoint_bytes as u64),
            checkpoint_every: HumanDuration(crate::store::LogConfig::default().checkpoint_every),
            seal_batch: 16_384,
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
    /// With `data.write_path = "log"`: how long a commit may wait after its first reading for
    /// a page's worth of log to share its write (at high rates pages fill by themselves).
    pub flush_window: HumanDuration,
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
            // 2 MiB against 8 (release build, loadgen, 1000 devices on 1000 connections at QoS 1):
            // peak RSS 47 MB against 62, 126k readings/s against 115k; 1 and 100 devices at
            // QoS 0 as fast (218k and 132k/s). About 10k readings: more only adds latency.
            queue_bytes: ByteSize(2 << 20),
            batch_max: 2048,
            // No wait: the writer commits as soon as it is free, and what arrives meanwhile shares
            // the next commit, so batches grow with the load by themselves. Publish to WebSocket
            // at 1k and 10k readings/s (bench/tools ws-latency): p50 3.3 and 2.6 ms, p99 7.0 and
            // 6.4 ms, against 11 and 15 ms p50 with a 2 ms window, which saved CPU at 10k/s only
            // (0.48 cores instead of 0.86).
            batch_window: HumanDuration(Duration::ZERO),
            flush_window: HumanDuration(Duration::from_secs(1)),
            max_payload: ByteSize(16 << 10),
            stall_after: HumanDuration(Duration::from_secs(10)),
        }
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
    /// Longest `wait` of a pull (`GET /sync/readings?wait=`): a proxy in front of the hub may
    /// cut idle requests sooner.
    pub max_pull_wait: HumanDuration,
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
            max_pull_wait: HumanDuration(Duration::from_secs(60)),
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
    /// A `RUST_LOG`-style filter of targets and levels (`info`, `hub::ingest=debug,warn`);
    /// `RUST_LOG` itself wins when set.
    pub level: String,
}

/// Parses a log filter: comma-separated `level` or `target=level` directives. Span and field
/// directives (`[span{field}]`) are not supported: their regex engine was half a megabyte of the
/// binary, and a gateway's operator filters by module.
pub fn log_filter(
    level: &str,
) -> Result<tracing_subscriber::filter::Targets, tracing_subscriber::filter::ParseError> {
    level.parse()
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
    /// The directory of TLS material.
    pub fn tls_dir(&self) -> PathBuf {
        self.data.dir.join("tls")
    }
}
