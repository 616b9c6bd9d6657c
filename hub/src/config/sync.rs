//! `[sync]`: the upstream sinks and what is checked of them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HumanDuration;

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

    pub(super) fn problems(&self, problems: &mut Vec<String>) {
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
