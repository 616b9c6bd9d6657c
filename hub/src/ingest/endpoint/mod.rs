//! The hub's own MQTT endpoint: devices connect here, and a PUBACK (QoS 1) or PUBREC (QoS 2) from
//! it means the reading is durable.
//!
//! Two listeners serve MQTT 3.1.1:
//! - `mqtt.listen`, plain TCP, on loopback unless the operator insists: a local client may
//!   publish on any device's uplink topics and subscribe to any filter (it only ever receives
//!   the hub's downlinks).
//! - `[mqtt.devices] listen`, TLS with a client certificate of the device CA (checked by rustls):
//!   the certificate's common name is the device id, and the device publishes and subscribes to
//!   its own topics only (see [`may_publish`] and [`may_subscribe`]). With `[mqtt.devices]
//!   passwords` allowed or required, a device may instead connect without a certificate and log
//!   in with its id as user name and its password ([`login`]); it is then bound to that id the
//!   same way.
//!
//! The endpoint is not a general broker: what devices publish goes to the store, never to other
//! clients; the hub's downlinks (acks, commands, time syncs) go to the sessions subscribed to them
//! ([`router`]). A user who needs a general broker runs mosquitto with the hub behind it
//! (`mqtt.broker = "mqtt://..."`, see `ingest::mqtt`).
//!
//! Bounds: connections per listener (more wait in the listen backlog), packet size, CONNECT (and
//! TLS handshake) within `connect_timeout`, silence at most 1.5 keep-alive periods, and per
//! connection the publishes read and not yet acknowledged ([`connection`]). Certificates, keys and
//! CRLs of the TLS listener are read again on SIGHUP, for new connections.

pub mod connection;
pub mod login;
pub mod router;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::topics::DeviceTopics;
use super::{CommandHandoff, DownlinkError, Handed, IngestStats, decode};
use crate::auth::AuthError;
use crate::store::writer::SubmissionSender;
use login::{Logins, Presented};
use router::Router;

/// Largest MQTT packet taken on the plain listener. Larger than `ingest.max_payload` on purpose:
/// an oversized reading reaches the decoder, which counts and logs it, instead of the connection
/// just closing.
pub const MAX_PLAIN_PACKET: usize = 1 << 20;
/// Downlink topics a device may subscribe to, under `devices/{id}/`.
const DOWNLINK_TOPICS: [&str; 3] = ["down", "ack", "commands"];
/// First wait after a failed accept (out of file descriptors, say); doubled up to a second.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest wait after a failed accept.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The TLS listener's configuration: the server certificate, and the device CA (with its CRLs)
/// as a required client-certificate verifier, without ALPN. `app` reads it again on SIGHUP; new
/// connections take the newest, open ones keep theirs.
pub type DeviceTls = tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>;

/// Settings of one listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Most clients connected at once.
    pub max_connections: usize,
    /// Largest MQTT packet (its remaining length), either way.
    pub max_packet: usize,
}

/// Settings of the endpoint.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    /// The plain listener (`mqtt.listen`).
    pub plain: ListenerSettings,
    /// The TLS listener for devices (`[mqtt.devices]`), if any.
    pub devices: Option<ListenerSettings>,
    /// Time allowed for the TLS handshake and the CONNECT packet.
    pub connect_timeout: Duration,
    /// Largest telemetry payload accepted.
    pub max_payload: usize,
    /// The topics read, and what their messages become.
    pub topics: Arc<DeviceTopics>,
    /// Devices' passwords, when the TLS listener takes them (`[mqtt.devices] passwords`); also
    /// what closes a device's connections when its credentials change.
    pub logins: Option<Logins>,
}

/// What starting the endpoint can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// A listener address is taken or not ours.
    #[error(
        "MQTT endpoint cannot listen on {addr}: {source} (is another hub or broker running? choose another address with --mqtt-listen or mqtt.listen)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificates, keys or CRLs of the TLS listener are unusable.
    #[error("MQTT endpoint: {0}")]
    Tls(#[from] AuthError),
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A client of the plain listener.
    Local,
    /// A device, by its certificate.
    Device(String),
}

impl Identity {
    fn name(&self) -> &str {
        match self {
            Identity::Local => "local client",
            Identity::Device(id) => id,
        }
    }
}

/// What every connection shares.
pub struct Context {
    settings: ConnectionSettings,
    router: Arc<Router>,
    submissions_tx: SubmissionSender,
    stats: Arc<IngestStats>,
    topics: Arc<DeviceTopics>,
    logins: Option<Logins>,
}

/// Per-connection settings.
struct ConnectionSettings {
    connect_timeout: Duration,
    max_payload: usize,
}

/// Whether `device` may publish to `topic`: only to its own uplink topics.
pub fn may_publish(device: &str, topic: &str) -> bool {
    decode::parse_topic(topic).is_ok_and(|t| t.device() == device)
}

/// Whether `device` may subscribe to `filter`: only to its own downlink topics, without wildcards.
pub fn may_subscribe(device: &str, filter: &str) -> bool {
    filter
        .strip_prefix("devices/")
        .and_then(|rest| rest.strip_prefix(device))
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|kind| DOWNLINK_TOPICS.contains(&kind))
}

/// Sends downlinks (acks, commands) to the sessions subscribed to them; never waits.
#[derive(Clone)]
pub struct EndpointDownlink {
    router: Arc<Router>,
}

impl EndpointDownlink {
    /// A handle on `router` alone, for tests of what is sent through it.
    #[cfg(test)]
    pub fn on(router: Arc<Router>) -> Self {
        EndpointDownlink { router }
    }

    /// Queues `payload` on `topic` at `qos` for every session subscribed to it; fails when none
    /// is.
    pub fn publish(&self, topic: String, payload: Vec<u8>, qos: QoS) -> Result<(), DownlinkError> {
        self.router.publish(&topic, Bytes::from(payload), qos)
    }

    /// Queues command `command` like [`EndpointDownlink::publish`], its delivery tracked where a
    /// session takes it at QoS 1.
    pub fn publish_command(
        &self,
        topic: String,
        payload: Vec<u8>,
        command: u64,
    ) -> Result<Handed, DownlinkError> {
        let tracked = self
            .router
            .publish_command(&topic, Bytes::from(payload), command)?;
        Ok(if tracked {
            Handed::Tracked
        } else {
            Handed::Delivered
        })
    }
}

/// The MQTT endpoint component.
pub struct MqttEndpoint {
    plain: TcpListener,
    plain_settings: ListenerSettings,
    devices: Option<DeviceListener>,
    context: Arc<Context>,
}

/// The TLS listener and its configuration.
struct DeviceListener {
    listener: TcpListener,
    settings: ListenerSettings,
    tls: DeviceTls,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, EndpointError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| EndpointError::Bind { addr, source })
}

impl MqttEndpoint {
    /// Binds the listeners, so any of them failing fails start-up.
    pub async fn bind(
        settings: EndpointSettings,
        tls: Option<DeviceTls>,
        submissions_tx: SubmissionSender,
        stats: Arc<IngestStats>,
        handoffs: mpsc::Sender<CommandHandoff>,
    ) -> Result<Self, EndpointError> {
        if !settings.plain.listen.ip().is_loopback() {
            // Only with `mqtt.allow_insecure_listen`: configuration refuses it otherwise.
            tracing::warn!(listen = %settings.plain.listen, "the plain MQTT listener is open beyond loopback and authenticates no one: any host that reaches it may publish as any device");
        }
        let plain = bind(settings.plain.listen).await?;
        let devices = match (settings.devices.clone(), tls) {
            (Some(listener_settings), Some(tls)) => Some(DeviceListener {
                listener: bind(listener_settings.listen).await?,
                settings: listener_settings,
                tls,
            }),
            _ => None,
        };
        let max_sessions = settings.plain.max_connections
            + settings.devices.as_ref().map_or(0, |d| d.max_connections);
        // Persistent sessions of devices that went away are kept up to twice the connections,
        // the oldest forgotten first.
        let router = Arc::new(Router::new(max_sessions * 2, Some(handoffs)));
        settings
            .topics
            .attach(super::MqttDownlink::Endpoint(EndpointDownlink {
                router: router.clone(),
            }));
        Ok(MqttEndpoint {
            plain,
            plain_settings: settings.plain.clone(),
            devices,
            context: Arc::new(Context {
                settings: ConnectionSettings {
                    connect_timeout: settings.connect_timeout,
                    max_payload: settings.max_payload,
                },
                router,
                submissions_tx,
                stats,
                topics: settings.topics.clone(),
                logins: settings.logins,
            }),
        })
    }

    /// The plain listener's address (the port, when configured with 0).
    pub fn local_addr(&self) -> Result<SocketAddr, EndpointError> {
        self.plain
            .local_addr()
            .map_err(|source| EndpointError::Bind {
                addr: self.plain_settings.listen,
                source,
            })
    }

    /// The TLS listener's address, if there is one.
    pub fn devices_addr(&self) -> Option<SocketAddr> {
        self.devices
            .as_ref()
            .and_then(|d| d.listener.local_addr().ok())
    }

    /// A handle that sends downlinks to connected devices.
    pub fn downlink(&self) -> EndpointDownlink {
        EndpointDownlink {
            router: self.context.router.clone(),
        }
    }

    /// Accepts clients until `shutdown`, then closes every connection and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let connections = TaskTracker::new();
        let numbers = Arc::new(AtomicU64::new(1));
        let plain = accept_plain(
            self.plain,
            self.plain_settings.clone(),
            self.context.clone(),
            numbers.clone(),
            connections.clone(),
            shutdown.clone(),
        );
        let pack = router::pack_when_quiet(self.context.router.clone(), shutdown.clone());
        match self.devices {
            Some(devices) => {
                let tls = accept_devices(
                    devices,
                    self.context.clone(),
                    numbers,
                    connections.clone(),
                    shutdown.clone(),
                );
                tokio::join!(plain, tls, pack);
            }
            None => {
                tokio::join!(plain, pack);
            }
        }
        connections.close();
        connections.wait().await;
    }
}

/// Serves one accepted connection, counted as open while it lasts.
async fn serve_counted<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: S,
    presented: Presented,
    max_packet: usize,
    context: &Context,
    number: u64,
    shutdown: &CancellationToken,
    peer: SocketAddr,
) {
    context.stats.connections.fetch_add(1, Ordering::Relaxed);
    let client = connection::Client {
        presented,
        peer,
        number,
    };
    let served = connection::serve(io, client, max_packet, context, shutdown).await;
    context.stats.connections.fetch_sub(1, Ordering::Relaxed);
    match served {
        Ok(client) => tracing::debug!(%peer, client, "MQTT client disconnected"),
        Err(e) => tracing::debug!(%peer, error = %e, "MQTT connection closed"),
    }
}

/// Accepts with a slot per connection, backing off when accept fails.
async fn accept_with_slots(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    backoff: &mut Duration,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return None,
            permit = slots.clone().acquire_owned() => permit.ok()?,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    *backoff = ACCEPT_BACKOFF_MIN;
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer, permit));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT endpoint: accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(*backoff) => {}
                    }
                    *backoff = (*backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            },
        }
    }
}

async fn accept_plain(
    listener: TcpListener,
    settings: ListenerSettings,
    context: Arc<Context>,
    numbers: Arc<AtomicU64>,
    connections: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let max_packet = settings.max_packet;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    while let Some((stream, peer, permit)) =
        accept_with_slots(&listener, &slots, &mut backoff, &shutdown).await
    {
        let context = context.clone();
        let stop = shutdown.clone();
        let number = numbers.fetch_add(1, Ordering::Relaxed);
        connections.spawn(async move {
            let _slot = permit;
            serve_counted(
                stream,
                Presented::Local,
                max_packet,
                &context,
                number,
                &stop,
                peer,
            )
            .await;
        });
    }
}

async fn accept_devices(
    devices: DeviceListener,
    context: Arc<Context>,
    numbers: Arc<AtomicU64>,
    connections: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(devices.settings.max_connections));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let max_packet = devices.settings.max_packet;
    loop {
        let accepted = accept_with_slots(&devices.listener, &slots, &mut backoff, &shutdown).await;
        let Some((stream, peer, permit)) = accepted else {
            break;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(devices.tls.borrow().clone());
        let context = context.clone();
        let stop = shutdown.clone();
        let number = numbers.fetch_add(1, Ordering::Relaxed);
        connections.spawn(async move {
            let _slot = permit;
            let deadline = tokio::time::Instant::now() + context.settings.connect_timeout;
            let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "MQTT endpoint: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "MQTT endpoint: no TLS handshake in time");
                    return;
                }
            };
            // rustls has verified the chain to the device CA; the leaf's common name is the device,
            // unless the hub marked it as an API client's (the same CA signs both).
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first());
            if leaf.is_some_and(|leaf| {
                crate::auth::clients::role(leaf.as_ref()) == Some(crate::auth::pki::Role::Client)
            }) {
                context.stats.reject(
                    super::Rejection::ForbiddenConnect,
                    "",
                    "an API client's certificate is not a device's",
                );
                return;
            }
            // Without a certificate (passwords allowed or required), the CONNECT must log in.
            let presented = match leaf {
                None => Presented::Nothing,
                Some(leaf) => {
                    let device = crate::auth::clients::subject_common_name(leaf.as_ref())
                        .filter(|cn| device_protocol::is_valid_id(cn));
                    let Some(device) = device else {
                        tracing::debug!(%peer, "MQTT endpoint: the certificate's common name is not a device id");
                        return;
                    };
                    Presented::Certificate(device)
                }
            };
            serve_counted(
                tls,
                presented,
                max_packet,
                &context,
                number,
                &stop,
                peer,
            )
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_publishes_to_its_own_uplink_topics_only() {
        for kind in ["telemetry", "up", "command-results", "status"] {
            assert!(may_publish("A", &format!("devices/A/{kind}")), "{kind}");
            assert!(!may_publish("A", &format!("devices/B/{kind}")), "{kind}");
        }
        for topic in [
            "devices/A/down",
            "devices/A/ack",
            "devices/A/commands",
            "devices/A/other",
            "devices/AB/telemetry",
            "devices/A/x/telemetry",
            "devices/+/telemetry",
            "devices/A/#",
            "devices/A",
            "A/telemetry",
            "",
            "$SYS/broker",
        ] {
            assert!(!may_publish("A", topic), "{topic}");
        }
    }

    #[test]
    fn a_device_subscribes_to_its_own_downlink_topics_only_and_without_wildcards() {
        for kind in ["down", "ack", "commands"] {
            assert!(may_subscribe("A", &format!("devices/A/{kind}")), "{kind}");
            assert!(!may_subscribe("A", &format!("devices/B/{kind}")), "{kind}");
            assert!(!may_subscribe("A", &format!("devices/+/{kind}")), "{kind}");
        }
        for filter in [
            "devices/A/#",
            "devices/A/+",
            "devices/#",
            "#",
            "+/A/down",
            "devices/A/telemetry",
            "devices/A/down/#",
            "devices/A/down/x",
            "devices/AB/down",
            "devices/A",
            "",
        ] {
            assert!(!may_subscribe("A", filter), "{filter}");
        }
    }
}
