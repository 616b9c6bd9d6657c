//! The embedded MQTT broker (rumqttd), for gateways without mosquitto.
//!
//! rumqttd runs its router and its listener on threads of its own, each with a single-threaded
//! runtime; `Broker::start` never returns, so it gets a dedicated thread that ends with the process.
//! Its in-memory log per subscription filter is capped: large for the hub's two ingest filters,
//! small for every device's own downlink filters. Readings are acknowledged to devices only once
//! durable, so a reading the broker drops under overload is retransmitted by its device, never lost.
//!
//! rumqttd authenticates no one and checks no topic, so it listens on loopback; devices on the
//! network connect to the MQTT gate (`gate`), which checks them and relays to it.

use std::collections::HashMap;
use std::net::SocketAddr;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Largest MQTT payload the embedded broker accepts. Larger than `ingest.max_payload` on purpose:
/// an oversized reading reaches the hub, which counts and logs it, instead of vanishing in the broker.
pub const BROKER_MAX_PAYLOAD: usize = 1 << 20;
/// rumqttd keeps an in-memory log per subscription filter, up to segment size x segment count,
/// and keeps it full. It counts only topic and payload bytes, while each message costs more in
/// memory than that (its own allocations), so the logs are sized by RSS measured under load. The hub's
/// own ingest filters carry every reading and get room to absorb a burst (2 MiB of readings, on top
/// of the ingest queue; what overflows is not acknowledged, so devices send it again). Every other
/// filter (each device's `/ack` and `/down`) carries a few small messages, of which a device only
/// needs the newest (acks are cumulative), and gets rumqttd's least: with 8 KiB segments, 1000
/// devices took 14 to 37 MB more at 20k readings/s.
const INGEST_SEGMENT_BYTES: usize = 1 << 20;
/// Segments kept for each of the hub's ingest filters (4 took 6 MB more than 2, at no gain in
/// throughput).
const INGEST_SEGMENTS: usize = 2;
/// Bytes of one segment for any other filter (rumqttd's least).
const DEVICE_SEGMENT_BYTES: usize = 1 << 10;
/// Segments kept for any other filter.
const DEVICE_SEGMENTS: usize = 2;

/// Settings of the embedded broker.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Listener address.
    pub listen: SocketAddr,
    /// Most device connections.
    pub max_connections: usize,
}

/// What starting the broker can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The listener address is taken or not ours.
    #[error("embedded broker cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The broker thread could not start.
    #[error("embedded broker thread: {0}")]
    Thread(std::io::Error),
}

fn config(settings: &BrokerSettings) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: BROKER_MAX_PAYLOAD,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "embedded-v4".into(),
        listen: settings.listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: settings.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: DEVICE_SEGMENT_BYTES,
            max_segment_count: DEVICE_SEGMENTS,
            custom_segment: Some(
                [super::decode::TELEMETRY_FILTER, super::decode::UP_FILTER]
                    .into_iter()
                    .map(|filter| {
                        let segments = rumqttd::SegmentConfig {
                            max_segment_size: INGEST_SEGMENT_BYTES,
                            max_segment_count: INGEST_SEGMENTS,
                        };
                        (filter.to_owned(), segments)
                    })
                    .collect(),
            ),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("embedded".to_owned(), server)])),
        ..Config::default()
    }
}

/// Resolves the listen address to a concrete one. Port 0 is resolved by binding and releasing a
/// socket (rumqttd binds inside its own thread and does not report the port); the short window in
/// which another process could take the port only matters to tests.
pub fn resolve_listen(addr: SocketAddr) -> Result<SocketAddr, BrokerError> {
    let probe =
        std::net::TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
    probe
        .local_addr()
        .map_err(|source| BrokerError::Bind { addr, source })
}

/// The address a client on this machine reaches the broker at: loopback when it listens on
/// every address.
pub fn local_address(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    }
}

/// Starts the broker on its own thread and waits until it accepts connections.
pub fn start(settings: BrokerSettings) -> Result<(), BrokerError> {
    if !settings.listen.ip().is_loopback() {
        // Only with `mqtt.allow_insecure_listen`: configuration refuses it otherwise.
        tracing::warn!(listen = %settings.listen, "the embedded broker listens beyond loopback and authenticates no one: any host that reaches it may publish as any device");
    }
    let mut broker = Broker::new(config(&settings));
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped; devices cannot publish");
            }
        })
        .map_err(BrokerError::Thread)?;
    // Poll until the listener is up, so ingest connects at once and readiness is true.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match std::net::TcpStream::connect_timeout(
            &settings.listen,
            std::time::Duration::from_millis(200),
        ) {
            Ok(_) => return Ok(()),
            Err(source) if std::time::Instant::now() >= deadline => {
                return Err(BrokerError::Bind {
                    addr: settings.listen,
                    source,
                });
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}
