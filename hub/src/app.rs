//! Builds the parts, wires their channels, supervises the tasks and drives the shutdown.
//!
//! Start-up: data directory, store, tokens, TLS material, API listener, MQTT endpoint, then the
//! tasks. Shutdown, on the root token: stop ingest, let the store writer commit what is queued
//! (it ends when ingest drops its sender), then drain the API within a deadline. A task that ends
//! on its own before shutdown is a failure: the root is cancelled and `run` returns an error, so
//! the process exits non-zero and systemd restarts it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState, RequestIds};
use crate::auth::clients::{ClientEntry, ClientIdentities};
use crate::auth::{self, AuthError, Scope, TokenRegistry, pki};
use crate::clock::now_ms;
use crate::commands::{self, CommandSettings, Transports};
use crate::config::{Broker, Config};
use crate::files;
use crate::ingest::MqttDownlink;
use crate::ingest::endpoint::{
    EndpointError, EndpointSettings, ListenerSettings, MAX_PLAIN_PACKET, MqttEndpoint,
};
use crate::ingest::mqtt::{Link, MqttIngest, MqttSettings};
use crate::ingest::serial::{SerialIngest, SerialSettings};
use crate::live::{Live, Presence};

use crate::ingest::IngestStats;
use crate::ingest::mapped::TopicMaps;
use crate::ingest::topics::DeviceTopics;
use crate::store::retention::{Retention, RetentionSettings, RetentionStats};
use crate::store::writer::{StoreWriter, WriterStats};
use crate::store::{self, Store, StoreError, TokenRecord};
use crate::sync::supervisor::SinkSupervisor;
use crate::sync::{self, SyncState};

/// How long shutdown waits for open API requests.
const API_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Command handoffs (acknowledged or lost) waiting for the dispatcher.
const HANDOFFS: usize = 1024;

/// What starting or running the hub can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Tokens or TLS could not be set up.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The MQTT endpoint could not start.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The API listener could not bind.
    #[error(
        "API cannot listen on {addr}: {source} (is another hub running? choose another address with --api-listen or api.listen)"
    )]
    ApiBind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A sink's configuration cannot be used.
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    /// A `[[mqtt.map]]` cannot be used (`validate` lists the same problems first).
    #[error("{}", .0.join("; "))]
    TopicMaps(Vec<String>),
    /// A task stopped before shutdown.
    #[error("task `{0}` stopped unexpectedly")]
    TaskFailed(&'static str),
}

/// Addresses the hub ended up listening on (useful when configured with port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The HTTPS API.
    pub api: SocketAddr,
    /// The MQTT endpoint's plain listener, when it runs.
    pub mqtt: Option<SocketAddr>,
}

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

/// Runs the hub until `shutdown` is cancelled. `on_ready` is called once everything listens.
/// With `reload`, SIGHUP also reads the configuration again: the log level and the sinks change
/// at once, other changes are named in the log as needing a restart.
pub async fn run(
    config: Config,
    reload: Option<Reload>,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(Bound),
) -> Result<(), AppError> {
    let data_dir = config.data.dir.clone();
    files::create_private_dir(&data_dir).map_err(|source| AppError::DataDir {
        path: data_dir.clone(),
        source,
    })?;

    let engine = store::open_engine(config.data.engine, &data_dir, config.data.cache.0 as usize)?;
    let store = Store::open(engine)?;
    tracing::info!(
        engine = store.engine_name(),
        readings = store.next_offset()?,
        devices = store.device_count()?,
        "store open"
    );

    let tokens = TokenRegistry::open(&data_dir.join("token.key"), store.clone())?;
    let token_created = ensure_admin_token(&data_dir, &tokens)?;

    let (tls_cert, tls_key) = match (&config.api.tls_cert, &config.api.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let (made, created) = pki::ensure(&config.tls_dir())?;
            if created {
                tracing::info!(dir = %config.tls_dir().display(), "made a development CA, a server certificate and an admin client certificate");
            }
            (made.server_cert, made.server_key)
        }
    };
    let client_ca = config
        .api
        .client_ca
        .clone()
        .unwrap_or_else(|| config.tls_dir().join("ca.crt"));
    let certificates = crate::metrics::Expiry::default();
    let tls_source = TlsSource {
        expiry: certificates.clone(),
        expiry_names: ("server", "client_ca"),
        cert: tls_cert,
        key: tls_key,
        client_ca,
        crls: config.api.crls.clone(),
        client_auth: config.api.client_auth,
    };
    let (tls_tx, tls_rx) = watch::channel(Arc::new(tls_source.load()?));
    let gate_tls = gate_tls(&config, &tls_source);

    let api_listener = tokio::net::TcpListener::bind(&config.api.listen)
        .await
        .map_err(|source| AppError::ApiBind {
            addr: config.api.listen.clone(),
            source,
        })?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|source| AppError::ApiBind {
            addr: config.api.listen.clone(),
            source,
        })?;

    let external = match config.mqtt.broker() {
        Ok(Broker::External { host, port, tls }) => Some((host, port, tls)),
        // `validate` has checked both the broker and the listen address.
        _ => None,
    };
    let mqtt_tls = external.as_ref().is_some_and(|(_, _, tls)| *tls);

    let mqtt_tls_config = if mqtt_tls {
        let client = config
            .mqtt
            .client_cert
            .as_deref()
            .zip(config.mqtt.client_key.as_deref());
        Some(Arc::new(auth::tls::client_config(
            config.mqtt.ca.as_deref(),
            client,
        )?))
    } else {
        None
    };

    let ingest_stats = Arc::new(IngestStats::default());
    let topics = Arc::new(DeviceTopics::new(
        TopicMaps::compile(&config.mqtt.map).map_err(AppError::TopicMaps)?,
        config.mqtt.sparkplug.enabled,
    ));
    let serial_stats = Arc::new(IngestStats::default());
    let live = Live::new();
    let presence = Arc::new(Presence::new(config.devices.offline_after.0));
    let last_seen = store.last_seen()?;
    presence.load(last_seen.iter().map(|(d, at)| (d.as_str(), *at)), now_ms());

    let writer_stats = Arc::new(WriterStats::default());
    let (submissions_tx, submissions_rx) =
        crate::store::writer::queue(config.ingest.queue, config.ingest.queue_bytes.0 as usize);
    let (link_tx, link_rx) = watch::channel(Link::Down);

    let tasks = TaskTracker::new();
    let ingest_shutdown = CancellationToken::new();
    let api_shutdown = CancellationToken::new();

    let committed = Arc::new(tokio::sync::Notify::new());
    let writer = StoreWriter::new(
        store.clone(),
        config.ingest.batch_max,
        config.ingest.batch_window.0,
        writer_stats.clone(),
    )
    .publishing(live.clone(), presence.clone())
    .notifying(committed.clone());
    let writer_task = tasks.spawn(writer.run(submissions_rx));

    // Ingest tasks report their name when they end; before shutdown, that is a failure.
    let mut ingest_tasks = tokio::task::JoinSet::new();
    let mut transports = Transports {
        mqtt: None,
        serial: Vec::new(),
        sparkplug: topics.sparkplug(),
    };
    let mut mqtt_bound = None;
    // The endpoint tells the command dispatcher which commands devices acknowledged.
    let (handoffs_tx, handoffs_rx) = mpsc::channel(HANDOFFS);
    match external {
        Some((host, port, _)) => {
            let mqtt = MqttIngest::new(
                MqttSettings {
                    host,
                    port,
                    tls: mqtt_tls_config,
                    credentials: config
                        .mqtt
                        .username
                        .clone()
                        .map(|user| (user, config.mqtt.password.clone().unwrap_or_default())),
                    client_id: config.mqtt.client_id.clone(),
                    inflight: config.mqtt.inflight,
                    max_payload: config.ingest.max_payload.0 as usize,
                    subscribe_qos: rumqttc::QoS::AtLeastOnce,
                    topics: topics.clone(),
                },
                submissions_tx.clone(),
                ingest_stats.clone(),
                link_tx,
            );
            transports.mqtt = Some(MqttDownlink::Broker(mqtt.downlink()));
            let stop = ingest_shutdown.clone();
            ingest_tasks.spawn(async move {
                mqtt.run(stop).await;
                "mqtt-ingest"
            });
        }
        None => {
            let endpoint = MqttEndpoint::bind(
                endpoint_settings(&config, topics.clone())?,
                gate_tls.map(|tls| -> crate::ingest::endpoint::TlsLoader {
                    Box::new(move || tls.load())
                }),
                submissions_tx.clone(),
                ingest_stats.clone(),
                handoffs_tx.clone(),
            )
            .await?;
            let listen = endpoint.local_addr()?;
            tracing::info!(%listen, "MQTT endpoint listening (plain TCP)");
            if let Some(devices) = endpoint.devices_addr() {
                tracing::info!(listen = %devices, "MQTT endpoint for devices listening (TLS, device certificates)");
            }
            mqtt_bound = Some(listen);
            transports.mqtt = Some(MqttDownlink::Endpoint(endpoint.downlink()));
            // The endpoint is the link: up as soon as it listens.
            link_tx.send_replace(Link::Up);
            let stop = ingest_shutdown.clone();
            ingest_tasks.spawn(async move {
                endpoint.run(stop).await;
                "mqtt-endpoint"
            });
        }
    }
    for port in &config.serial {
        let serial = SerialIngest::new(
            SerialSettings {
                path: port.path.clone(),
                baud: port.baud,
                device_id: port.device_id.clone(),
                silence_timeout: port.silence_timeout.0,
            },
            submissions_tx.clone(),
            serial_stats.clone(),
        );
        transports.serial.push(serial.downlink());
        let stop = ingest_shutdown.clone();
        ingest_tasks.spawn(async move {
            serial.run(stop).await;
            "serial-ingest"
        });
    }
    let liveness = Arc::new(crate::liveness::IngestLiveness::default());
    tasks.spawn(crate::liveness::watch(
        liveness.clone(),
        store.clone(),
        writer_stats.clone(),
        submissions_tx.downgrade(),
        config.ingest.stall_after.0,
        api_shutdown.clone(),
    ));
    // The ingest tasks now hold every sender: when they end, the writer drains and ends.
    drop(submissions_tx);

    let c = &config.commands;
    let (commands, dispatcher) = commands::new(
        store.clone(),
        presence.clone(),
        live.clone(),
        CommandSettings {
            default_ttl: c.default_ttl.0,
            max_ttl: c.max_ttl.0,
            default_timeout: c.default_timeout.0,
            max_timeout: c.max_timeout.0,
            max_open_per_device: c.max_open_per_device,
            keep: c.keep,
            ..CommandSettings::default()
        },
        transports,
        handoffs_rx,
    );
    // Commands and presence stop with the API: both serve it, and neither holds data to flush.
    let dispatcher_task = tasks.spawn(dispatcher.run(api_shutdown.clone()));
    let presence_task = tasks.spawn(sweep_presence(
        presence.clone(),
        live.clone(),
        config.devices.offline_after.0,
        api_shutdown.clone(),
    ));

    let token_use_task = tasks.spawn(save_token_use(tokens.clone(), api_shutdown.clone()));

    // Sync and retention read the store until the API stops: after ingest has been flushed.
    let (sync_state, sync_configs) = start_sync(&config, &store, committed, &tasks, &api_shutdown)?;

    let state = ApiState {
        store: store.clone(),
        tokens,
        max_page: config.api.max_page,
        mqtt_link: link_rx,
        request_ids: Arc::new(RequestIds::new()),
        commands,
        presence: presence.clone(),
        live: live.clone(),
        max_wait: config.commands.max_wait.0,
        stream_slots: Arc::new(tokio::sync::Semaphore::new(api::STREAM_CLIENTS)),
        shutdown: api_shutdown.clone(),
        clients: Arc::new(client_identities(&config)),
        limits: Arc::new(api::Limits::new(
            config.api.rate_limit,
            config.api.rate_burst,
        )),
        sync: Arc::new(sync_state),
        backups: Arc::new(api::Backups {
            data_dir: data_dir.clone(),
            engine: config.data.engine,
            running: tokio::sync::Mutex::new(()),
        }),
        metrics: Arc::new(crate::metrics::Sources {
            ingest: vec![("mqtt", ingest_stats), ("serial", serial_stats)],
            topics: topics.clone(),
            writer: writer_stats,
            liveness,
            certificates,
            requests: crate::metrics::RequestMetrics::default(),
            started: now_ms() / 1000,
        }),
    };

    let limits = api::server::ServerLimits {
        max_connections: config.api.max_connections,
        max_connections_per_address: config.api.max_connections_per_address,
        header_timeout: config.api.header_timeout.0,
        body_timeout: config.api.body_timeout.0,
        drain_timeout: API_DRAIN_TIMEOUT,
    };
    let reload_task = tasks.spawn(reload_tls_on_hangup(
        tls_source,
        tls_tx,
        api_shutdown.clone(),
    ));
    let config_task = tasks.spawn(reload_config_on_hangup(
        config.clone(),
        reload,
        sync_configs,
        api_shutdown.clone(),
    ));
    let mut api_task = tasks.spawn(api::server::serve(
        api_listener,
        tls_rx,
        api::router(state),
        limits,
        api_shutdown.clone(),
    ));
    tasks.close();

    if let Some(secret_path) = token_created {
        tracing::info!(path = %secret_path.display(), "made the admin token");
    }
    on_ready(Bound {
        api: api_addr,
        mqtt: mqtt_bound,
    });

    let failure = tokio::select! {
        _ = shutdown.cancelled() => None,
        ended = ingest_tasks.join_next() => Some(match ended {
            Some(Ok(name)) => name,
            _ => "ingest",
        }),
        _ = &mut api_task => Some("api"),
    };
    if let Some(task) = failure {
        tracing::error!(task, "a task stopped unexpectedly; shutting down");
    }
    tracing::info!("shutting down: stopping ingest");
    ingest_shutdown.cancel();
    while ingest_tasks.join_next().await.is_some() {}
    // The ingest tasks held the only senders: the writer now commits what is queued and ends.
    let _ = writer_task.await;
    tracing::info!(next_offset = store.next_offset()?, "store flushed");
    api_shutdown.cancel();
    if failure != Some("api") {
        let _ = api_task.await;
    }
    let _ = reload_task.await;
    let _ = config_task.await;
    let _ = dispatcher_task.await;
    let _ = presence_task.await;
    let _ = token_use_task.await;
    tasks.wait().await;
    match failure {
        Some(task) => Err(AppError::TaskFailed(task)),
        None => Ok(()),
    }
}

/// Starts every configured sink (under their supervisor) and retention; what the API shows of
/// them, and where reloaded sync configurations go.
fn start_sync(
    config: &Config,
    store: &Store,
    committed: Arc<tokio::sync::Notify>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(SyncState, watch::Sender<crate::config::SyncConfig>), AppError> {
    let names: Vec<&str> = config.sync.sinks().map(|(_, s)| s.name.as_str()).collect();
    sync::forget_removed_sinks(store, &names)?;
    let handles = Arc::new(std::sync::RwLock::new(Vec::new()));
    let mut supervisor = SinkSupervisor::new(store.clone(), handles.clone());
    supervisor.start(&config.sync)?;
    if !names.is_empty() {
        tracing::info!(hub_id = %sync::hub_id(&config.sync.hub_id), sinks = names.len(), "upstream sync started");
    }
    let (configs_tx, configs_rx) = watch::channel(config.sync.clone());
    tasks.spawn(supervisor.run(configs_rx, shutdown.clone()));
    let retention = Arc::new(RetentionStats::default());
    let settings = RetentionSettings {
        max_disk: config.data.max_disk.0,
        full_policy: config.data.full_policy,
        max_age: (!config.data.max_age.0.is_zero()).then_some(config.data.max_age.0),
    };
    tasks.spawn(
        Retention::new(store.clone(), settings, retention.clone()).run(committed, shutdown.clone()),
    );
    Ok((
        SyncState {
            sinks: handles,
            retention,
            max_disk: config.data.max_disk.0,
        },
        configs_tx,
    ))
}

/// Where the API's TLS material comes from, to build it at start and again on SIGHUP.
struct TlsSource {
    /// Where the certificates' expiry goes, for `/metrics`, and under which names (server
    /// certificate, client CA).
    expiry: crate::metrics::Expiry,
    expiry_names: (&'static str, &'static str),
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    crls: Vec<PathBuf>,
    client_auth: crate::config::ClientAuth,
}

impl TlsSource {
    /// Reads the files and builds the server configuration; warns of certificates near expiry.
    fn load(&self) -> Result<rustls::ServerConfig, AuthError> {
        let config = auth::tls::server_config(
            &auth::tls::TlsPaths {
                cert: &self.cert,
                key: &self.key,
                client_ca: &self.client_ca,
                crls: &self.crls,
            },
            self.client_auth,
        )?;
        let server = auth::tls::check_expiry(&self.cert, "server certificate");
        let client_ca = (self.client_auth != crate::config::ClientAuth::Off)
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
        Ok(config)
    }
}

/// Where the MQTT device listener's TLS comes from, when `[mqtt.devices] listen` asks for it: the
/// API's server certificate, and device certificates required and checked against the device CA.
fn gate_tls(config: &Config, api: &TlsSource) -> Option<TlsSource> {
    config.mqtt.devices.listen.as_ref()?;
    let d = &config.mqtt.devices;
    Some(TlsSource {
        expiry: api.expiry.clone(),
        expiry_names: ("gate_server", "device_ca"),
        cert: api.cert.clone(),
        key: api.key.clone(),
        client_ca: d
            .ca
            .clone()
            .unwrap_or_else(|| config.tls_dir().join("ca.crt")),
        crls: d.crls.clone(),
        client_auth: crate::config::ClientAuth::Required,
    })
}

/// The MQTT endpoint's settings from `[mqtt]` and `[mqtt.devices]`.
fn endpoint_settings(
    config: &Config,
    topics: Arc<DeviceTopics>,
) -> Result<EndpointSettings, EndpointError> {
    // `validate` has checked the addresses.
    let address = |text: &str| {
        text.parse::<SocketAddr>().map_err(|_| EndpointError::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source: std::io::Error::other(format!("{text:?} is not an address:port")),
        })
    };
    let d = &config.mqtt.devices;
    let devices = match &d.listen {
        Some(listen) => Some(ListenerSettings {
            listen: address(listen)?,
            max_connections: d.max_connections,
            max_packet: d.max_packet.0 as usize,
        }),
        None => None,
    };
    Ok(EndpointSettings {
        plain: ListenerSettings {
            listen: address(&config.mqtt.listen)?,
            max_connections: config.mqtt.max_connections,
            max_packet: MAX_PLAIN_PACKET,
        },
        devices,
        connect_timeout: d.connect_timeout.0,
        max_payload: config.ingest.max_payload.0 as usize,
        topics,
    })
}

/// On SIGHUP, reads certificates, keys and CRLs again; new connections use them, open ones keep
/// theirs. A reload that fails keeps the running configuration and says why.
async fn reload_tls_on_hangup(
    source: TlsSource,
    tls_tx: watch::Sender<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: certificates are read at start only");
        shutdown.cancelled().await;
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = hangups.recv() => match source.load() {
                Ok(config) => {
                    tls_tx.send_replace(Arc::new(config));
                    tracing::info!("SIGHUP: certificates, keys and CRLs reloaded");
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed; the previous TLS configuration stays"),
            },
        }
    }
}

/// On SIGHUP: reads the configuration again; applies the log level and the sinks, and names the
/// sections that changed but need a restart. A configuration that does not load changes nothing.
async fn reload_config_on_hangup(
    mut running: Config,
    reload: Option<Reload>,
    sync_configs: watch::Sender<crate::config::SyncConfig>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Some(reload), Ok(mut hangups)) = (reload, signal(SignalKind::hangup())) else {
        shutdown.cancelled().await;
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = hangups.recv() => {}
        }
        let fresh = match (reload.config)() {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the configuration does not load; nothing changed");
                continue;
            }
        };
        if fresh.log.level != running.log.level {
            match (reload.log_level)(&fresh.log.level) {
                Ok(()) => tracing::info!(level = %fresh.log.level, "SIGHUP: log level changed"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: the log level could not change"),
            }
        }
        if sync_configs.send_replace(fresh.sync.clone()) != fresh.sync {
            tracing::info!("SIGHUP: sinks reconfigured");
        }
        let restart: Vec<&str> = [
            ("data", section(&fresh.data) != section(&running.data)),
            ("ingest", section(&fresh.ingest) != section(&running.ingest)),
            ("mqtt", section(&fresh.mqtt) != section(&running.mqtt)),
            ("api", section(&fresh.api) != section(&running.api)),
            ("serial", section(&fresh.serial) != section(&running.serial)),
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
        running = fresh;
    }
}

/// A configuration section as TOML, to see whether it changed.
fn section<T: serde::Serialize>(value: &T) -> Option<toml::Value> {
    toml::Value::try_from(value).ok()
}

/// How often the tokens' last-used times are saved: the time a token list shows is exact, the
/// saved one (what a restart after a crash shows) may lag by this much.
pub const TOKEN_USE_SAVE_PERIOD: Duration = Duration::from_secs(60);

/// Saves the tokens' last-used times once a period, off the request path, and once more when the
/// hub stops.
async fn save_token_use(tokens: TokenRegistry, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TOKEN_USE_SAVE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let registry = tokens.clone();
        match tokio::task::spawn_blocking(move || registry.save_last_used()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot save when tokens were last used"),
            Err(_) => tracing::warn!("saving when tokens were last used panicked"),
        }
        if stopping {
            break;
        }
    }
}

/// The client certificates that are identities: `[[api.clients]]`, and the first-run admin
/// certificate while the client CA is the hub's own (a CA the operator chose may issue an
/// "admin" certificate that means something else).
fn client_identities(config: &Config) -> ClientIdentities {
    let mut clients = ClientIdentities::new(
        config
            .api
            .clients
            .iter()
            .map(|c| ClientEntry {
                name: c.name.clone(),
                scopes: c.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                devices: c.devices.clone(),
            })
            .collect(),
    )
    // The hub's own CA signs devices' certificates too: only those marked as a client's count.
    .marked_only(config.api.client_ca.is_none());
    if config.api.client_ca.is_none() && !clients.names(pki::ADMIN_CLIENT_NAME) {
        clients.push(ClientEntry {
            name: pki::ADMIN_CLIENT_NAME.to_owned(),
            scopes: vec![Scope::Admin],
            devices: Vec::new(),
        });
    }
    clients
}

/// Marks silent devices offline, about ten times per `offline_after` (at most once a second).
async fn sweep_presence(
    presence: Arc<Presence>,
    live: Live,
    offline_after: Duration,
    shutdown: CancellationToken,
) {
    let period = (offline_after / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                for event in presence.sweep(now_ms()) {
                    live.event(event);
                }
            }
        }
    }
}

/// Makes the admin token on first run and writes it to `<data.dir>/admin.token` (mode 0600).
/// A later run reuses it; if the store was reset but the file kept, the token is registered again.
fn ensure_admin_token(
    data_dir: &std::path::Path,
    tokens: &TokenRegistry,
) -> Result<Option<PathBuf>, AuthError> {
    let path = data_dir.join("admin.token");
    let record = TokenRecord {
        name: "admin".into(),
        scopes: vec!["admin".into()],
        devices: vec![],
        created_ms: now_ms(),
        expires_ms: None,
        revoked: false,
        last_used_ms: None,
    };
    match std::fs::read_to_string(&path) {
        Ok(secret) => {
            let secret = secret.trim();
            if !tokens.contains(secret) {
                tokens.register(secret, record)?;
            }
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = tokens.create(record)?;
            files::write_private(&path, format!("{secret}\n").as_bytes())?;
            Ok(Some(path))
        }
        Err(e) => Err(e.into()),
    }
}
