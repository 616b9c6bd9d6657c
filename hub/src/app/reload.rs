//! SIGHUP: the one task that reads certificates and configuration again and hands them to the
//! parts over `watch` channels: the API's TLS, the MQTT device listener's TLS, the sinks, the
//! rules, and the log level. What cannot change live is named in the log as needing a restart.
//! Certificates are also read again when the API asks, after it revoked a removed device's.
//!
//! Invariant: a reload that fails changes nothing of what failed (the previous TLS configuration
//! or configuration stays) and says why at ERROR; the parts never see a half-read configuration.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, AuthError};
use crate::config::{ClientAuth, Config, SyncConfig};

/// Reads the configuration again (file, environment, flags).
pub type ConfigSource = Box<dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync>;
/// Applies a new log filter (`log.level`).
pub type LogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// How the hub reads its configuration again on SIGHUP, and applies what can change live.
pub struct Reload {
    /// Reads the configuration again.
    pub config: ConfigSource,
    /// Applies a new log filter.
    pub log_level: LogLevel,
}

/// Where a listener's TLS material comes from, to build it at start and again on SIGHUP.
pub struct TlsSource {
    /// Where the certificates' expiry goes, for `/metrics`, and under which names (server
    /// certificate, client CA).
    pub expiry: crate::metrics::Expiry,
    pub expiry_names: (&'static str, &'static str),
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub crls: Vec<PathBuf>,
    /// The hub's own CA's revocation list (`hub certs revoke`), while the listener trusts that
    /// CA: read at each load when it exists (it may be made after the hub started).
    pub own_crl: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// Whether the listener speaks MQTT: no ALPN then (the API's `http/1.1` would refuse a
    /// client offering `mqtt`).
    pub mqtt: bool,
}

impl TlsSource {
    /// Reads the files and builds the server configuration; warns of certificates near expiry.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, AuthError> {
        let mut crls = self.crls.clone();
        crls.extend(self.own_crl.iter().filter(|crl| crl.exists()).cloned());
        let mut config = auth::tls::server_config(
            &auth::tls::TlsPaths {
                cert: &self.cert,
                key: &self.key,
                client_ca: &self.client_ca,
                crls: &crls,
            },
            self.client_auth,
        )?;
        if self.mqtt {
            config.alpn_protocols.clear();
        }
        let server = auth::tls::check_expiry(&self.cert, "server certificate");
        let client_ca = (self.client_auth != ClientAuth::Off)
            .then(|| auth::tls::check_expiry(&self.client_ca, "client CA"))
            .flatten();
        if let Ok(mut expiry) = self.expiry.lock() {
            let (server_name, ca_name) = self.expiry_names;
            for (name, at) in [(server_name, server), (ca_name, client_ca)] {
                match at {
                    Some(at) => expiry.insert(name, at),
                    None => expiry.remove(name),
                };
            }
        }
        Ok(Arc::new(config))
    }

    /// Loads it now and makes the channel that later loads go to.
    pub fn channel(
        self,
        listener: &'static str,
    ) -> Result<(TlsReload, watch::Receiver<Arc<rustls::ServerConfig>>), AuthError> {
        let (tx, rx) = watch::channel(self.load()?);
        Ok((
            TlsReload {
                listener,
                source: self,
                tx,
            },
            rx,
        ))
    }
}

/// One listener's TLS, read again on SIGHUP.
pub struct TlsReload {
    listener: &'static str,
    source: TlsSource,
    tx: watch::Sender<Arc<rustls::ServerConfig>>,
}

impl TlsReload {
    /// Reads the listener's material again; `cause` (`SIGHUP`, ...) starts the log line.
    fn reload(&self, cause: &str) {
        match self.source.load() {
            Ok(config) => {
                self.tx.send_replace(config);
                match self.listener {
                    "api" => tracing::info!("{cause}: certificates, keys and CRLs reloaded"),
                    listener => tracing::info!(
                        "{cause}: the {listener} listener's certificates, keys and CRLs reloaded"
                    ),
                }
            }
            Err(e) => {
                tracing::error!(listener = %self.listener, error = %e, "{cause}: reload failed; the previous TLS configuration stays")
            }
        }
    }
}

/// A request to read the listeners' TLS material again now, answered once it is done: the API
/// sends one after revoking a removed device's certificate, so the device cannot connect again.
pub type TlsReloadRequest = tokio::sync::oneshot::Sender<()>;

/// What the reload task hands new material to.
pub struct Reloader {
    /// The listeners' TLS (the API's, and the MQTT device listener's when there is one).
    pub tls: Vec<TlsReload>,
    /// How to read the configuration again; without it, only certificates are reloaded.
    pub config: Option<Reload>,
    /// The configuration running now.
    pub running: Config,
    /// Where new sink configurations go.
    pub sinks: watch::Sender<SyncConfig>,
    /// Where the configuration's new rules go.
    pub rules: watch::Sender<Vec<crate::config::RuleConfig>>,
    /// Requests to read the listeners' TLS material again (see [`TlsReloadRequest`]).
    pub requests: tokio::sync::mpsc::Receiver<TlsReloadRequest>,
}

impl Reloader {
    /// Reloads on every SIGHUP until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), std::io::Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = hangups.recv() => {}
                Some(done) = self.requests.recv() => {
                    for tls in &self.tls {
                        tls.reload("certificate revoked");
                    }
                    let _ = done.send(());
                    continue;
                }
            }
            for tls in &self.tls {
                tls.reload("SIGHUP");
            }
            self.reload_config();
        }
    }

    /// Reads the configuration again; applies the log level and the sinks, and names the
    /// sections that changed but need a restart. A configuration that does not load changes
    /// nothing.
    fn reload_config(&mut self) {
        let Some(reload) = &self.config else {
            return;
        };
        let fresh = match (reload.config)() {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the configuration does not load; nothing changed");
                return;
            }
        };
        let running = &self.running;
        if fresh.log.level != running.log.level {
            match (reload.log_level)(&fresh.log.level) {
                Ok(()) => tracing::info!(level = %fresh.log.level, "SIGHUP: log level changed"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: the log level could not change"),
            }
        }
        if self.sinks.send_replace(fresh.sync.clone()) != fresh.sync {
            tracing::info!("SIGHUP: sinks reconfigured");
        }
        if self.rules.send_replace(fresh.rules.clone()) != fresh.rules {
            tracing::info!(rules = fresh.rules.len(), "SIGHUP: rules reloaded");
        }
        let restart: Vec<&str> = [
            ("data", section(&fresh.data) != section(&running.data)),
            ("ingest", section(&fresh.ingest) != section(&running.ingest)),
            ("mqtt", section(&fresh.mqtt) != section(&running.mqtt)),
            ("api", section(&fresh.api) != section(&running.api)),
            ("serial", section(&fresh.serial) != section(&running.serial)),
            ("modbus", section(&fresh.modbus) != section(&running.modbus)),
            (
                "devices",
                section(&fresh.devices) != section(&running.devices),
            ),
            (
                "commands",
                section(&fresh.commands) != section(&running.commands),
            ),
            ("log.format", fresh.log.format != running.log.format),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
        if !restart.is_empty() {
            tracing::warn!(sections = ?restart, "SIGHUP: these changes take effect at the next restart (certificates were reloaded)");
        }
        self.running = fresh;
    }
}

/// A configuration section as TOML, to see whether it changed.
fn section<T: serde::Serialize>(value: &T) -> Option<toml::Value> {
    toml::Value::try_from(value).ok()
}
