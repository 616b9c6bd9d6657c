//! Builds the parts, wires their channels, supervises the tasks and drives the shutdown.
//!
//! Start-up: data directory, store, tokens, TLS material, API listener, MQTT endpoint, then the
//! tasks. Shutdown, on the root token: stop ingest, let the store writer commit what is queued
//! (it ends when ingest drops its sender), then drain the API within a deadline. A task that ends
//! on its own before shutdown is a failure: the root is cancelled and `run` returns an error, so
//! the process exits non-zero and systemd restarts it.
//!
//! Beside it: `setup.rs` (what is built from the configuration first), `sinks.rs` (sync and
//! retention), `reload.rs` (SIGHUP), `chores.rs`, `tasks.rs` (the supervisor), `error.rs`.

mod chores;
mod error;
mod homeassistant;
mod reload;
mod setup;
mod sinks;
pub mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState, RequestIds};
use crate::auth::credentials::DeviceCredentials;
use crate::auth::{self, TokenRegistry, pki};
use crate::clock::now_ms;
use crate::commands::{self, CommandSettings, Transports};
use crate::config::{Broker, Config};
use crate::files;
use crate::ingest::MqttDownlink;
use crate::ingest::endpoint::MqttEndpoint;
use crate::ingest::endpoint::login::{LoginStats, Logins};
use crate::ingest::modbus::ModbusBus;
use crate::ingest::mqtt::{Link, MqttIngest, MqttSettings};
use crate::ingest::serial::{SerialIngest, SerialSettings};
use crate::live::{Live, Presence};

use crate::ingest::IngestStats;
use crate::ingest::mapped::TopicMaps;
use crate::ingest::topics::DeviceTopics;
use crate::store::writer::{StoreWriter, WriterStats};
use crate::store::{self, Store};
use crate::sync;
pub use error::AppError;
pub use reload::{ConfigSource, LogLevel, Reload};
use reload::{Reloader, TlsSource};
use setup::{client_identities, endpoint_settings, ensure_admin_token, gate_tls};
use sinks::start_sync;
use tasks::{Stage, Supervisor};

/// How long shutdown waits for open API requests.
const API_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Command handoffs (acknowledged or lost) waiting for the dispatcher.
const HANDOFFS: usize = 1024;

/// Addresses the hub ended up listening on (useful when configured with port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The HTTPS API.
    pub api: SocketAddr,
    /// The MQTT endpoint's plain listener, when it runs.
    pub mqtt: Option<SocketAddr>,
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

    let store = store::open(
        config.data.engine,
        &data_dir,
        config.data.cache.0 as usize,
        config.data.write_path,
        config.data.log_config(),
    )?;
    // Rows below this are from before the log sealed readings (see `chores::seal_old_rows`).
    let opened_at = store.next_offset()?;
    tracing::info!(
        engine = store.engine_name(),
        readings = opened_at,
        devices = store.device_count()?,
        "store open"
    );

    let tokens = TokenRegistry::open(&data_dir.join("token.key"), store.clone())?;
    let token_created = ensure_admin_token(&data_dir, &tokens)?;
    let credentials = DeviceCredentials::open(&data_dir.join("token.key"), store.clone())?;
    let logins = Arc::new(LoginStats::default());

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
        own_crl: config
            .api
            .client_ca
            .is_none()
            .then(|| auth::revocation::crl_path(&config.tls_dir())),
        client_auth: config.api.client_auth,
        mqtt: false,
    };
    let gate_tls = match gate_tls(&config, &tls_source) {
        Some(source) => Some(source.channel("MQTT device")?),
        None => None,
    };
    let (api_tls, tls_rx) = tls_source.channel("api")?;

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

    let mut tasks = Supervisor::default();
    let ingest_shutdown = CancellationToken::new();
    let api_shutdown = CancellationToken::new();

    let (announcer, durable) = store::durable::channel(store.next_offset()?);
    let writer = StoreWriter::new(
        store.clone(),
        config.ingest.batch_max,
        config.ingest.batch_window.0,
        writer_stats.clone(),
    )
    .flushing(match config.data.write_path {
        store::WritePath::Log => config.ingest.flush_window.0,
        store::WritePath::Direct => Duration::ZERO,
    })
    .publishing(live.clone(), presence.clone())
    .announcing(announcer);
    tasks.spawn("store-writer", Stage::Store, writer.run(submissions_rx));

    let mut transports = Transports {
        mqtt: None,
        serial: Vec::new(),
        modbus: Vec::new(),
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
            tasks.spawn(
                "mqtt-ingest",
                Stage::Ingest,
                mqtt.run(ingest_shutdown.clone()),
            );
        }
        None => {
            let endpoint = MqttEndpoint::bind(
                endpoint_settings(
                    &config,
                    topics.clone(),
                    Logins::new(credentials.clone(), logins.clone()),
                )?,
                gate_tls.as_ref().map(|(_, tls)| tls.clone()),
                submissions_tx.clone(),
                ingest_stats.clone(),
                handoffs_tx.clone(),
            )
            .await?;
            let listen = endpoint.local_addr()?;
            tracing::info!(%listen, "MQTT endpoint listening (plain TCP)");
            if let Some(devices) = endpoint.devices_addr() {
                tracing::info!(listen = %devices, passwords = ?config.mqtt.devices.passwords, "MQTT endpoint for devices listening (TLS, device certificates)");
            }
            mqtt_bound = Some(listen);
            transports.mqtt = Some(MqttDownlink::Endpoint(endpoint.downlink()));
            // The endpoint is the link: up as soon as it listens.
            link_tx.send_replace(Link::Up);
            tasks.spawn(
                "mqtt-endpoint",
                Stage::Ingest,
                endpoint.run(ingest_shutdown.clone()),
            );
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
        tasks.spawn(
            "serial-ingest",
            Stage::Ingest,
            serial.run(ingest_shutdown.clone()),
        );
    }
    // Modbus buses: a poller each, stopped with ingest and reported like the serial lines.
    let modbus_stats = Arc::new(IngestStats::default());
    let mut modbus_buses = Vec::new();
    for bus in &config.modbus {
        let poller = ModbusBus::new(bus.clone(), submissions_tx.clone(), modbus_stats.clone());
        transports.modbus.push(poller.downlink());
        modbus_buses.push(poller.stats());
        tasks.spawn(
            "modbus-poller",
            Stage::Ingest,
            poller.run(ingest_shutdown.clone()),
        );
    }
    let liveness = Arc::new(crate::liveness::IngestLiveness::default());
    tasks.spawn(
        "liveness",
        Stage::Services,
        crate::liveness::watch(
            liveness.clone(),
            store.clone(),
            writer_stats.clone(),
            submissions_tx.downgrade(),
            config.ingest.stall_after.0,
            api_shutdown.clone(),
        ),
    );
    // The ingest tasks now hold every sender: when they end, the writer drains and ends.
    drop(submissions_tx);

    // Alert actions publish through the same MQTT door as commands.
    let alert_mqtt = transports.mqtt.clone();
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
    tasks.spawn(
        "command-dispatcher",
        Stage::Services,
        dispatcher.run(api_shutdown.clone()),
    );
    tasks.spawn(
        "presence-sweep",
        Stage::Services,
        chores::sweep_presence(
            presence.clone(),
            live.clone(),
            config.devices.offline_after.0,
            api_shutdown.clone(),
        ),
    );
    tasks.spawn(
        "token-use",
        Stage::Services,
        chores::save_token_use(tokens.clone(), credentials.clone(), api_shutdown.clone()),
    );
    if config.data.write_path == store::WritePath::Log {
        tasks.spawn(
            "seal-old-rows",
            Stage::Services,
            chores::seal_old_rows(
                store.clone(),
                config.data.engine,
                data_dir.clone(),
                opened_at,
                config.data.seal_batch,
                api_shutdown.clone(),
            ),
        );
    }

    // Sync and retention read the store until the API stops: after ingest has been flushed.
    let (sync_state, sync_configs) =
        start_sync(&config, &store, &durable, &mut tasks, &api_shutdown)?;

    let sync_state = Arc::new(sync_state);
    let rules = start_rules(
        &config,
        &store,
        &durable,
        &live,
        &presence,
        &commands,
        alert_mqtt,
        &mut tasks,
        &api_shutdown,
    )?;
    // The API asks the reload task to read certificates again after it revoked one.
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let parts = (&store, &durable, &live, &presence);
    let homeassistant = homeassistant::start(&config, parts, &mut tasks, &api_shutdown)?;
    // What `/metrics` shows, part by part.
    let mut metrics = crate::metrics::Registry::default();
    if let Some(stats) = homeassistant {
        metrics.register(stats);
    }
    metrics
        .register(Arc::new(crate::metrics::ProcessMetrics {
            started: now_ms() / 1000,
            certificates,
        }))
        .register(Arc::new(crate::ingest::metrics::IngestMetrics {
            transports: vec![
                ("mqtt", ingest_stats),
                ("serial", serial_stats),
                ("modbus", modbus_stats),
            ],
        }))
        .register(Arc::new(crate::ingest::modbus::ModbusMetrics {
            buses: modbus_buses,
        }))
        .register(topics.clone())
        .register(logins)
        .register(liveness.clone())
        .register(writer_stats)
        .register(Arc::new(crate::store::metrics::StoreMetrics {
            store: store.clone(),
            retention: sync_state.retention.clone(),
            max_disk: config.data.max_disk.0,
        }))
        .register(presence.clone())
        .register(Arc::new(crate::sync::metrics::SyncMetrics {
            store: store.clone(),
            state: sync_state.clone(),
        }))
        .register(rules.stats.clone());
    let state = ApiState {
        store: store.clone(),
        durable,
        tokens,
        credentials,
        device_certs: Arc::new(api::removal::DeviceCerts {
            tls_dir: config.tls_dir(),
            reload_tx,
        }),
        max_page: config.api.max_page,
        mqtt_link: link_rx,
        request_ids: Arc::new(RequestIds::new()),
        commands,
        presence: presence.clone(),
        live: live.clone(),
        max_wait: config.commands.max_wait.0,
        max_pull_wait: config.api.max_pull_wait.0,
        stream_slots: Arc::new(tokio::sync::Semaphore::new(api::STREAM_CLIENTS)),
        shutdown: api_shutdown.clone(),
        clients: Arc::new(client_identities(&config)),
        limits: Arc::new(api::Limits::new(
            config.api.rate_limit,
            config.api.rate_burst,
        )),
        sync: sync_state.clone(),
        backups: Arc::new(api::Backups {
            data_dir: data_dir.clone(),
            engine: config.data.engine,
            running: tokio::sync::Mutex::new(()),
        }),
        metrics: Arc::new(metrics),
        requests: Arc::new(crate::metrics::RequestMetrics::default()),
        liveness,
        rules: rules.handle,
        sessions: Arc::new(api::dashboard::Sessions::new()?),
    };

    let limits = api::server::ServerLimits {
        max_connections: config.api.max_connections,
        max_connections_per_address: config.api.max_connections_per_address,
        header_timeout: config.api.header_timeout.0,
        body_timeout: config.api.body_timeout.0,
        drain_timeout: API_DRAIN_TIMEOUT,
    };
    let mut tls = vec![api_tls];
    tls.extend(gate_tls.map(|(reload, _)| reload));
    let reloader = Reloader {
        tls,
        config: reload,
        running: config.clone(),
        sinks: sync_configs,
        rules: rules.config_tx,
        requests: reload_rx,
    };
    tasks.spawn(
        "reload",
        Stage::Services,
        reloader.run(api_shutdown.clone()),
    );
    tasks.spawn(
        "api",
        Stage::Services,
        api::server::serve(
            api_listener,
            tls_rx,
            api::router(state),
            limits,
            api_shutdown.clone(),
        ),
    );

    if let Some(secret_path) = token_created {
        tracing::info!(path = %secret_path.display(), "made the admin token");
    }
    tracing::debug!(tasks = ?tasks.names(), "tasks started");
    on_ready(Bound {
        api: api_addr,
        mqtt: mqtt_bound,
    });

    let mut failures = Vec::new();
    if let Some(failure) = tasks.watch(&shutdown).await {
        tracing::error!(task = %failure.task, error = %failure.why, "a task stopped unexpectedly; shutting down");
        failures.push(failure);
    }
    tracing::info!("shutting down: stopping ingest");
    ingest_shutdown.cancel();
    failures.extend(tasks.drain(Stage::Ingest).await);
    // The ingest tasks held the only senders: the writer now commits what is queued and ends.
    failures.extend(tasks.drain(Stage::Store).await);
    match store.next_offset() {
        Ok(next_offset) => tracing::info!(next_offset, "store flushed"),
        Err(e) => tracing::error!(error = %e, "cannot read the store's next offset"),
    }
    api_shutdown.cancel();
    failures.extend(tasks.drain(Stage::Services).await);
    match failures.into_iter().next() {
        Some(failure) => Err(AppError::TaskFailed(failure.task, failure.why)),
        None => Ok(()),
    }
}

/// What the rest of the hub keeps of the rules.
struct RulesParts {
    stats: Arc<crate::rules::RulesStats>,
    handle: crate::rules::RulesHandle,
    config_tx: watch::Sender<Vec<crate::config::RuleConfig>>,
}

/// Starts the rules task and the webhook sender. They follow the store's commits and stop with
/// the API (after ingest has been flushed, so the last readings are evaluated first).
#[allow(
    clippy::too_many_arguments,
    reason = "the handles the rules use, passed once"
)]
fn start_rules(
    config: &Config,
    store: &Store,
    durable: &store::durable::Durable,
    live: &Live,
    presence: &Arc<Presence>,
    commands: &commands::Commands,
    mqtt: Option<MqttDownlink>,
    tasks: &mut Supervisor,
    shutdown: &CancellationToken,
) -> Result<RulesParts, AppError> {
    use crate::rules::{Actions, Publisher, RulesHandle, RulesStats, RulesTask};
    let (config_tx, config_rx) = watch::channel(config.rules.clone());
    let (changed_tx, changed_rx) = watch::channel(0u64);
    let stats = Arc::new(RulesStats::new(store.clone()));
    let outbox_wake = Arc::new(tokio::sync::Notify::new());
    let publisher = mqtt.map(|mqtt| {
        Arc::new(move |topic: String, payload: Vec<u8>, qos| {
            mqtt.publish(topic, payload, qos).map_err(|e| e.to_string())
        }) as Publisher
    });
    let mut tls = auth::tls::client_config(None, None)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let task = RulesTask {
        store: store.clone(),
        live: live.clone(),
        presence: presence.clone(),
        durable: durable.clone(),
        config_rx: config_rx.clone(),
        changed_rx,
        actions: Actions {
            hub: sync::hub_id(&config.sync.hub_id),
            commands: Some(commands.clone()),
            publisher,
            live: live.clone(),
            stats: stats.actions.clone(),
        },
        outbox_wake: outbox_wake.clone(),
        stats: stats.clone(),
    };
    tasks.spawn("rules", Stage::Services, task.run(shutdown.clone()));
    let sender = crate::rules::webhook::WebhookSender::new(
        store.clone(),
        Some(Arc::new(tls)),
        outbox_wake,
        stats.webhooks.clone(),
    );
    tasks.spawn("webhooks", Stage::Services, sender.run(shutdown.clone()));
    Ok(RulesParts {
        stats,
        handle: RulesHandle::new(store.clone(), config_rx, changed_tx),
        config_tx,
    })
}
