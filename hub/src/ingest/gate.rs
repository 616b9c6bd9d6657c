//! The MQTT gate: the TLS listener devices connect to, in front of the embedded broker.
//!
//! rumqttd cannot check who publishes where, so the hub does it here. A device connects with TLS
//! and a client certificate of the device CA (required, checked by rustls); the certificate's
//! common name is its device id. The gate reads the device's MQTT 3.1.1 packets, checks them, and
//! relays them over a plain TCP connection to the embedded broker on loopback; the broker's
//! packets go back unchanged, except a SUBACK that the gate completes with its own refusals.
//!
//! Rules, per device `{id}`:
//! - CONNECT: the client id is `{id}` (an empty one becomes `{id}`), else CONNACK "not
//!   authorized"; a will, if any, is on `devices/{id}/status`; MQTT 3.1.1 only. A device named
//!   like the hub's own MQTT client id is refused: it would take over the hub's session. A refused
//!   CONNECT is counted ([`Rejection::ForbiddenConnect`]).
//! - PUBLISH: only to its uplink topics `devices/{id}/telemetry`, `/up`, `/command-results` and
//!   `/status`. Any other is dropped and counted ([`Rejection::ForbiddenTopic`]) but its QoS flow
//!   is completed (PUBACK, or PUBREC then PUBCOMP), as mosquitto does for an ACL denial in MQTT
//!   3.1.1, which has no way to say no: a device that got no ack would resend it forever.
//! - SUBSCRIBE: only to its downlink topics `devices/{id}/down`, `/ack` and `/commands`, named
//!   exactly. A wildcard filter is refused even inside `devices/{id}/`, since it would also match
//!   topics that are not the device's to read. A refused filter gets the SUBACK code 0x80 and is
//!   counted ([`Rejection::ForbiddenFilter`]); the others are subscribed as asked.
//!
//! Certificates, keys and CRLs are read again on SIGHUP, for new connections.
//!
//! Bounds: connections (`max_connections`, more wait in the listen backlog), packet size
//! (`max_packet`, either way), the TLS handshake and CONNECT within `connect_timeout`, then
//! silence at most 1.5 keep-alive periods (5 minutes for a device that asks for none).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, SubAck,
    SubscribeReasonCode,
};
use rumqttc::mqttbytes::{Error as MqttError, Protocol, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{IngestStats, Rejection, decode};
use crate::auth::AuthError;

/// Downlink topics a device may subscribe to, under `devices/{id}/`.
const DOWNLINK_TOPICS: [&str; 3] = ["down", "ack", "commands"];
/// Silence allowed to a device that asks for no keep-alive.
const IDLE_WITHOUT_KEEP_ALIVE: Duration = Duration::from_secs(300);
/// SUBSCRIBEs with refused filters awaiting the broker's SUBACK, per connection.
const MAX_PENDING_SUBSCRIBES: usize = 32;
/// Refused QoS 2 publishes awaiting their PUBREL, per connection.
const MAX_REFUSED_QOS2: usize = 64;
/// The gate's own answers (PUBACK, SUBACK...) queued for a device, per connection.
const REPLY_QUEUE: usize = 16;
/// First wait after a failed accept (out of file descriptors, say); doubled up to a second.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest wait after a failed accept.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Reads the gate's TLS configuration: the server certificate, and the device CA (with its CRLs)
/// as a required client-certificate verifier. Called at start and on each SIGHUP.
pub type TlsLoader = Box<dyn Fn() -> Result<rustls::ServerConfig, AuthError> + Send + Sync>;

/// Settings of the gate.
#[derive(Debug, Clone)]
pub struct GateSettings {
    /// Where devices connect.
    pub listen: SocketAddr,
    /// The embedded broker, on loopback.
    pub broker: SocketAddr,
    /// Most devices connected at once.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake and the CONNECT packet.
    pub connect_timeout: Duration,
    /// Largest MQTT packet (its remaining length), either way.
    pub max_packet: usize,
    /// The client id of the hub's own session on the broker: no device may use it.
    pub hub_client_id: String,
}

/// What starting the gate can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The listener address is taken or not ours.
    #[error("MQTT gate cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificates, keys or CRLs are unusable.
    #[error("MQTT gate: {0}")]
    Tls(#[from] AuthError),
}

/// Why one device connection ended early; logged, never fatal to the gate.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("no TLS handshake and CONNECT within the time allowed")]
    ConnectTimeout,
    #[error("the certificate's common name is not a device id")]
    NoDeviceId,
    #[error("the first packet is not a CONNECT")]
    NotConnect,
    #[error("CONNECT refused: {0}")]
    Refused(&'static str),
    #[error("silent for longer than its keep-alive allows")]
    Idle,
    #[error("malformed or oversized MQTT packet: {0}")]
    Protocol(MqttError),
    #[error("a packet only a broker sends, or a second CONNECT")]
    Unexpected,
    #[error("too many refused subscriptions or QoS 2 publishes in flight")]
    TooManyPending,
    #[error("the stream ended inside a packet")]
    Truncated,
    #[error("cannot reach the embedded broker: {0}")]
    Broker(std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
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

/// Checks a device's CONNECT and makes it the one the broker gets: the client id is the device
/// id, the will (if any) is on its status topic, and credentials stay here. `hub_client_id` is
/// the hub's own session on the broker, which a device named like it would take over.
fn admit(
    device: &str,
    hub_client_id: &str,
    mut connect: Connect,
) -> Result<Connect, (ConnectReturnCode, &'static str)> {
    if device == hub_client_id {
        return Err((
            ConnectReturnCode::NotAuthorized,
            "the device id is the hub's own MQTT client id",
        ));
    }
    if connect.protocol != Protocol::V4 {
        return Err((
            ConnectReturnCode::RefusedProtocolVersion,
            "only MQTT 3.1.1 is served",
        ));
    }
    if !connect.client_id.is_empty() && connect.client_id != device {
        return Err((
            ConnectReturnCode::NotAuthorized,
            "the client id is not the certificate's device id",
        ));
    }
    if let Some(will) = &connect.last_will
        && will.topic != format!("devices/{device}/status")
    {
        return Err((
            ConnectReturnCode::NotAuthorized,
            "the will is not on the device's status topic",
        ));
    }
    connect.client_id = device.to_owned();
    connect.login = None;
    Ok(connect)
}

/// A SUBACK for the device: the broker's codes for the filters it was given, 0x80 for the
/// filters the gate refused (`refused`, in the device's order).
fn complete_suback(
    refused: &[bool],
    granted: Vec<SubscribeReasonCode>,
) -> Vec<SubscribeReasonCode> {
    let mut granted = granted.into_iter();
    refused
        .iter()
        .map(|&no| {
            if no {
                SubscribeReasonCode::Failure
            } else {
                granted.next().unwrap_or(SubscribeReasonCode::Failure)
            }
        })
        .collect()
}

/// The MQTT gate component.
pub struct MqttGate {
    listener: TcpListener,
    settings: Arc<GateSettings>,
    load_tls: TlsLoader,
    tls: Arc<rustls::ServerConfig>,
    stats: Arc<IngestStats>,
}

impl MqttGate {
    /// Reads the TLS material and binds the listener, so either failing fails start-up.
    pub async fn bind(
        settings: GateSettings,
        load_tls: TlsLoader,
        stats: Arc<IngestStats>,
    ) -> Result<Self, GateError> {
        let tls = load(&load_tls)?;
        let addr = settings.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| GateError::Bind { addr, source })?;
        Ok(MqttGate {
            listener,
            settings: Arc::new(settings),
            load_tls,
            tls,
            stats,
        })
    }

    /// On SIGHUP: new connections get the certificates, keys and CRLs read again, open ones keep
    /// theirs; a reload that fails keeps the running configuration and says why.
    fn reload_tls(&mut self) {
        match load(&self.load_tls) {
            Ok(tls) => {
                self.tls = tls;
                tracing::info!("SIGHUP: the MQTT gate's certificates, keys and CRLs reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the MQTT gate's reload failed; the previous TLS configuration stays")
            }
        }
    }

    /// The address it listens on (the port, when configured with 0).
    pub fn local_addr(&self) -> Result<SocketAddr, GateError> {
        self.listener
            .local_addr()
            .map_err(|source| GateError::Bind {
                addr: self.settings.listen,
                source,
            })
    }

    /// Accepts devices until `shutdown`, then closes every connection and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup())
            .inspect_err(|e| tracing::warn!(error = %e, "MQTT gate: cannot listen for SIGHUP: certificates are read at start only"))
            .ok();
        let slots = Arc::new(Semaphore::new(self.settings.max_connections));
        let connections = TaskTracker::new();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = hangup(&mut hangups) => {
                    self.reload_tls();
                    continue;
                }
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = hangup(&mut hangups) => {
                    self.reload_tls();
                    continue;
                }
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "MQTT gate: accept failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                },
            };
            backoff = ACCEPT_BACKOFF_MIN;
            let settings = self.settings.clone();
            let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
            let stats = self.stats.clone();
            let stop = shutdown.clone();
            connections.spawn(async move {
                let _slot = permit;
                stats
                    .connections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let served = serve(stream, acceptor, &settings, &stats, &stop).await;
                stats
                    .connections
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                match served {
                    Ok(device) => tracing::debug!(%peer, device, "MQTT gate: device disconnected"),
                    Err(e) => tracing::debug!(%peer, error = %e, "MQTT gate: connection closed"),
                }
            });
        }
        connections.close();
        connections.wait().await;
    }
}

/// Loads the TLS configuration for MQTT: no ALPN (the API's `http/1.1` would refuse a client
/// offering `mqtt`).
fn load(load_tls: &TlsLoader) -> Result<Arc<rustls::ServerConfig>, AuthError> {
    let mut tls = load_tls()?;
    tls.alpn_protocols.clear();
    Ok(Arc::new(tls))
}

/// The next SIGHUP; never, where SIGHUP cannot be listened for.
async fn hangup(hangups: &mut Option<tokio::signal::unix::Signal>) {
    let arrived = match hangups {
        Some(signals) => signals.recv().await.is_some(),
        None => false,
    };
    if !arrived {
        std::future::pending::<()>().await;
    }
}

/// One device connection, from the TLS handshake to its end; the device id when it ends cleanly.
async fn serve(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    settings: &GateSettings,
    stats: &IngestStats,
    shutdown: &CancellationToken,
) -> Result<String, ConnectionError> {
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + settings.connect_timeout;
    let tls = tokio::time::timeout_at(deadline, acceptor.accept(stream))
        .await
        .map_err(|_| ConnectionError::ConnectTimeout)?
        .map_err(ConnectionError::Handshake)?;
    // rustls has verified the chain to the device CA; the leaf's common name is the device.
    let device = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| crate::auth::clients::subject_common_name(leaf.as_ref()))
        .filter(|cn| device_protocol::is_valid_id(cn))
        .ok_or(ConnectionError::NoDeviceId)?;

    let (device_rx, device_tx) = tokio::io::split(tls);
    let mut from_device = PacketReader::new(device_rx, settings.max_packet);
    let mut to_device = PacketWriter::new(device_tx, settings.max_packet);
    let connect = match tokio::time::timeout_at(deadline, from_device.next()).await {
        Err(_) => return Err(ConnectionError::ConnectTimeout),
        Ok(Ok(Some(Packet::Connect(connect)))) => connect,
        Ok(Ok(_)) => return Err(ConnectionError::NotConnect),
        Ok(Err(e)) => return Err(e),
    };
    let connect = match admit(&device, &settings.hub_client_id, connect) {
        Ok(connect) => connect,
        Err((code, why)) => {
            // Counted and logged like a skipped message: a device that retries in a loop gets one
            // line a second.
            stats.reject(Rejection::ForbiddenConnect, "", &format!("{device}: {why}"));
            to_device
                .send(&Packet::ConnAck(ConnAck::new(code, false)))
                .await?;
            return Err(ConnectionError::Refused(why));
        }
    };
    let idle = match connect.keep_alive {
        0 => IDLE_WITHOUT_KEEP_ALIVE,
        secs => Duration::from_millis(u64::from(secs) * 1500),
    };

    let broker = tokio::time::timeout(
        settings.connect_timeout,
        TcpStream::connect(settings.broker),
    )
    .await
    .map_err(|_| ConnectionError::Broker(std::io::ErrorKind::TimedOut.into()))?
    .map_err(ConnectionError::Broker)?;
    let _ = broker.set_nodelay(true);
    let (broker_rx, broker_tx) = broker.into_split();
    let mut to_broker = PacketWriter::new(broker_tx, settings.max_packet);
    to_broker.send(&Packet::Connect(connect)).await?;
    let from_broker = PacketReader::new(broker_rx, settings.max_packet);

    // Both directions run at once, so neither can stall the other by waiting on a full socket.
    let pending = Mutex::new(HashMap::new());
    let (replies_tx, replies_rx) = mpsc::channel(REPLY_QUEUE);
    let uplink = Uplink {
        device: &device,
        stats,
        pending: &pending,
        replies_tx,
        refused_qos2: HashSet::new(),
    };
    let ended = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        ended = uplink.relay(from_device, to_broker, idle) => ended,
        ended = downlink(from_broker, to_device, replies_rx, &pending) => ended,
    };
    ended.map(|()| device)
}

/// The device-to-broker direction of one connection.
struct Uplink<'a> {
    device: &'a str,
    stats: &'a IngestStats,
    /// SUBSCRIBE packet id -> which of its filters the gate refused, until the broker's SUBACK.
    pending: &'a Mutex<HashMap<u16, Vec<bool>>>,
    /// The gate's own answers to the device.
    replies_tx: mpsc::Sender<Packet>,
    /// Packet ids of refused QoS 2 publishes whose PUBREL the gate answers itself.
    refused_qos2: HashSet<u16>,
}

impl Uplink<'_> {
    async fn relay<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        mut self,
        mut from_device: PacketReader<R>,
        mut to_broker: PacketWriter<W>,
        idle: Duration,
    ) -> Result<(), ConnectionError> {
        loop {
            let packet = tokio::time::timeout(idle, from_device.next())
                .await
                .map_err(|_| ConnectionError::Idle)??;
            let Some(packet) = packet else {
                return Ok(());
            };
            let forward = match packet {
                Packet::Publish(publish) => {
                    if may_publish(self.device, &publish.topic) {
                        Some(Packet::Publish(publish))
                    } else {
                        self.stats
                            .reject(Rejection::ForbiddenTopic, &publish.topic, self.device);
                        self.complete_refused(publish.qos, publish.pkid).await?;
                        None
                    }
                }
                Packet::PubRel(release) if self.refused_qos2.remove(&release.pkid) => {
                    self.reply(Packet::PubComp(PubComp::new(release.pkid)))
                        .await?;
                    None
                }
                Packet::Subscribe(mut subscribe) => {
                    let refused: Vec<bool> = subscribe
                        .filters
                        .iter()
                        .map(|f| !may_subscribe(self.device, &f.path))
                        .collect();
                    for (filter, _) in subscribe
                        .filters
                        .iter()
                        .zip(&refused)
                        .filter(|(_, no)| **no)
                    {
                        self.stats
                            .reject(Rejection::ForbiddenFilter, &filter.path, self.device);
                    }
                    if refused.iter().all(|&no| no) {
                        let codes = vec![SubscribeReasonCode::Failure; refused.len()];
                        self.reply(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
                            .await?;
                        None
                    } else {
                        if refused.contains(&true) {
                            let mut pending =
                                self.pending.lock().unwrap_or_else(|p| p.into_inner());
                            if pending.len() >= MAX_PENDING_SUBSCRIBES {
                                return Err(ConnectionError::TooManyPending);
                            }
                            pending.insert(subscribe.pkid, refused);
                            subscribe
                                .filters
                                .retain(|f| may_subscribe(self.device, &f.path));
                        }
                        Some(Packet::Subscribe(subscribe))
                    }
                }
                Packet::Disconnect => {
                    // A clean DISCONNECT tells the broker to drop the will.
                    to_broker.send(&Packet::Disconnect).await?;
                    return Ok(());
                }
                Packet::Connect(_)
                | Packet::ConnAck(_)
                | Packet::SubAck(_)
                | Packet::UnsubAck(_)
                | Packet::PingResp => return Err(ConnectionError::Unexpected),
                // PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBSCRIBE, PINGREQ.
                other => Some(other),
            };
            if let Some(packet) = forward {
                to_broker.send(&packet).await?;
            }
        }
    }

    /// Completes the QoS flow of a refused publish, so the device does not resend it.
    async fn complete_refused(&mut self, qos: QoS, pkid: u16) -> Result<(), ConnectionError> {
        match qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => self.reply(Packet::PubAck(PubAck::new(pkid))).await,
            QoS::ExactlyOnce => {
                if self.refused_qos2.len() >= MAX_REFUSED_QOS2 {
                    return Err(ConnectionError::TooManyPending);
                }
                self.refused_qos2.insert(pkid);
                self.reply(Packet::PubRec(PubRec::new(pkid))).await
            }
        }
    }

    async fn reply(&self, packet: Packet) -> Result<(), ConnectionError> {
        // Closed only when the other direction has ended, and with it the connection.
        self.replies_tx
            .send(packet)
            .await
            .map_err(|_| ConnectionError::Io(std::io::ErrorKind::BrokenPipe.into()))
    }
}

/// The broker-to-device direction of one connection, with the gate's own answers mixed in.
async fn downlink<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from_broker: PacketReader<R>,
    mut to_device: PacketWriter<W>,
    mut replies_rx: mpsc::Receiver<Packet>,
    pending: &Mutex<HashMap<u16, Vec<bool>>>,
) -> Result<(), ConnectionError> {
    loop {
        let packet = tokio::select! {
            Some(reply) = replies_rx.recv() => reply,
            packet = from_broker.next() => match packet? {
                Some(Packet::SubAck(mut suback)) => {
                    let refused = pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&suback.pkid);
                    if let Some(refused) = refused {
                        suback.return_codes = complete_suback(&refused, suback.return_codes);
                    }
                    Packet::SubAck(suback)
                }
                Some(packet) => packet,
                // The broker closed (a newer connection of the same device took the session).
                None => return Ok(()),
            },
        };
        to_device.send(&packet).await?;
    }
}

/// Reads whole MQTT packets from one side of a connection, each at most `max_packet` long.
struct PacketReader<R> {
    io: R,
    buf: BytesMut,
    max_packet: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    fn new(io: R, max_packet: usize) -> Self {
        PacketReader {
            io,
            buf: BytesMut::with_capacity(4096),
            max_packet,
        }
    }

    /// The next packet, or `None` when the stream ends between packets. Cancel-safe: what was
    /// read stays in the buffer.
    async fn next(&mut self) -> Result<Option<Packet>, ConnectionError> {
        loop {
            match Packet::read(&mut self.buf, self.max_packet) {
                Ok(packet) => return Ok(Some(packet)),
                // `read` checks the announced length against `max_packet` before asking for more.
                Err(MqttError::InsufficientBytes(more)) => self.buf.reserve(more),
                Err(e) => return Err(ConnectionError::Protocol(e)),
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnectionError::Truncated)
                };
            }
        }
    }
}

/// Writes MQTT packets to one side of a connection.
struct PacketWriter<W> {
    io: W,
    buf: BytesMut,
    max_packet: usize,
}

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    fn new(io: W, max_packet: usize) -> Self {
        PacketWriter {
            io,
            buf: BytesMut::with_capacity(4096),
            max_packet,
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), ConnectionError> {
        self.buf.clear();
        // The frame's size: its remaining length and at most 5 bytes of header.
        packet
            .write(&mut self.buf, self.max_packet + 5)
            .map_err(ConnectionError::Protocol)?;
        self.io.write_all(&self.buf).await?;
        self.io.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::LastWill;

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

    #[test]
    fn connect_takes_the_device_id_and_its_own_will_only() {
        let admit = |device, connect| admit(device, "hub", connect);
        let admitted = admit("A", Connect::new("A")).unwrap();
        assert_eq!(admitted.client_id, "A");
        // An empty client id becomes the device id; credentials are not passed on.
        let mut anonymous = Connect::new("");
        anonymous.set_login("u", "p");
        let admitted = admit("A", anonymous).unwrap();
        assert_eq!((admitted.client_id.as_str(), admitted.login), ("A", None));

        let refused = |connect| admit("A", connect).unwrap_err().0;
        assert_eq!(refused(Connect::new("B")), ConnectReturnCode::NotAuthorized);
        let mut other_will = Connect::new("A");
        other_will.last_will = Some(LastWill::new(
            "devices/B/status",
            "offline",
            QoS::AtLeastOnce,
            false,
        ));
        assert_eq!(refused(other_will), ConnectReturnCode::NotAuthorized);
        let mut own_will = Connect::new("A");
        own_will.last_will = Some(LastWill::new(
            "devices/A/status",
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        assert!(admit("A", own_will).is_ok());
        // A device named like the hub's own client would take over the hub's session.
        assert_eq!(
            admit("hub", Connect::new("hub")).unwrap_err().0,
            ConnectReturnCode::NotAuthorized
        );
        let mut v5 = Connect::new("A");
        v5.protocol = Protocol::V5;
        assert_eq!(refused(v5), ConnectReturnCode::RefusedProtocolVersion);
    }

    #[test]
    fn a_suback_gets_the_refusals_back_in_the_device_order() {
        let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
        let no = SubscribeReasonCode::Failure;
        assert_eq!(
            complete_suback(
                &[true, false, true, false],
                vec![ok, SubscribeReasonCode::Success(QoS::AtMostOnce)]
            ),
            [no, ok, no, SubscribeReasonCode::Success(QoS::AtMostOnce)]
        );
        // A broker that answers fewer codes than it was asked: the rest are failures, no panic.
        assert_eq!(complete_suback(&[false, false], vec![ok]), [ok, no]);
    }

    /// Feeds packets to a reader split at every byte: the same packets come out.
    #[tokio::test]
    async fn packets_are_read_whole_from_any_split_and_oversized_ones_refused() {
        let mut wire = BytesMut::new();
        let publish = rumqttc::mqttbytes::v4::Publish::new(
            "devices/A/telemetry",
            QoS::AtLeastOnce,
            vec![7u8; 300],
        );
        let mut publish = publish;
        publish.pkid = 9;
        Packet::Publish(publish.clone())
            .write(&mut wire, 1 << 20)
            .unwrap();
        Packet::PingReq.write(&mut wire, 1 << 20).unwrap();
        for cut in 0..wire.len() {
            let (a, b) = wire.split_at(cut);
            let reader = chunked(&[a, b]);
            let mut packets = PacketReader::new(reader, 1024);
            assert_eq!(
                packets.next().await.unwrap(),
                Some(Packet::Publish(publish.clone()))
            );
            assert_eq!(packets.next().await.unwrap(), Some(Packet::PingReq));
            assert_eq!(packets.next().await.unwrap(), None);
        }
        let mut small = PacketReader::new(chunked(&[&wire]), 100);
        assert!(matches!(
            small.next().await,
            Err(ConnectionError::Protocol(_))
        ));
        let mut cut = PacketReader::new(chunked(&[&wire[..10]]), 1024);
        assert!(matches!(cut.next().await, Err(ConnectionError::Truncated)));
    }

    /// A reader that returns `chunks` one read at a time.
    fn chunked(chunks: &[&[u8]]) -> impl AsyncRead + Unpin + use<> {
        let mut reader: Box<dyn AsyncRead + Unpin> = Box::new(tokio::io::empty());
        for chunk in chunks {
            reader = Box::new(reader.chain(std::io::Cursor::new(chunk.to_vec())));
        }
        reader
    }
}
