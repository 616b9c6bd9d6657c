//! The hub's MQTT client: subscribes to device telemetry (JSON) and uplink (binary) topics with QoS 1
//! in a persistent session, acks each message to the broker only after the store has made it
//! durable, and then tells the device: `{"seq":n}` on `devices/{id}/ack` for JSON devices that send
//! `seq`, `Ack` (and `TimeSync` after a `Hello`) on `devices/{id}/down` for binary ones.
//!
//! Two tasks share the connection. The session task alone polls rumqttc's event loop (polling is
//! not cancel-safe, so it is never raced in a `select!`), decodes messages and hands them to the
//! store writer. The acker waits for each commit in arrival order and then queues the PUBACK with
//! `try_ack`, never blocking on the event loop, so neither task can wait on the other.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::reply::{MAX_TOLD_DEVICES, Reply, decode_message, reply_message};
use super::{DownlinkError, IngestStats, decode, jitter, now_ms};
use crate::store::Applied;
use crate::store::writer::{CommitFailed, Submission};

/// Messages waiting for their commit before the PUBACK and the device's ack. A broker sends at
/// most its in-flight window of unacked QoS 1 messages (mosquitto: 20 by default, rumqttd: 100),
/// far fewer than this; it also holds more than the writer's queue and one batch (4,096 and
/// 2,048 by default), so a device's reply is not dropped while its reading waits for the commit.
const ACK_QUEUE: usize = 16_384;
/// Requests (PUBACKs, device acks, subscriptions) queued for rumqttc's event loop.
const REQUEST_QUEUE: usize = 8192;

/// First wait after a failed connection; doubled up to [`RECONNECT_MAX`], with full jitter.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS to the broker (`mqtts://`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// Client id of the hub's persistent session.
    pub client_id: String,
    /// Most unacked QoS 1 messages in flight.
    pub inflight: u16,
    /// Largest telemetry payload accepted.
    pub max_payload: usize,
    /// QoS of the hub's subscription: 1 for an external broker (the PUBACK leaves once the reading
    /// is durable, so the broker redelivers what a crash took); 0 for the embedded one, which lives
    /// and dies with the hub, so QoS 1 would add a round trip per message and nothing else.
    pub subscribe_qos: QoS,
}

/// Connection state, for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Not connected (yet, or any more).
    Down,
    /// Connected and subscribed.
    Up,
}

/// A message waiting for its commit: the PUBACK to send (QoS 1) and the reply to the device.
struct Pending {
    done_rx: oneshot::Receiver<Result<Vec<Applied>, CommitFailed>>,
    publish: Option<Publish>,
    reply: Reply,
}

/// The MQTT ingest component.
pub struct MqttIngest {
    core: Core,
    eventloop: rumqttc::EventLoop,
}

/// What the session shares with message handling; the event loop stays apart, polled by `run`.
struct Core {
    settings: MqttSettings,
    submissions_tx: mpsc::Sender<Submission>,
    stats: Arc<IngestStats>,
    link_tx: tokio::sync::watch::Sender<Link>,
    client: AsyncClient,
}

/// Sends messages to devices over the hub's MQTT session (commands); never waits.
#[derive(Clone)]
pub struct BrokerDownlink {
    client: AsyncClient,
    link_rx: tokio::sync::watch::Receiver<Link>,
}

impl BrokerDownlink {
    /// Queues `payload` on `topic` at QoS 1.
    pub fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), DownlinkError> {
        if *self.link_rx.borrow() != Link::Up {
            return Err(DownlinkError::NotConnected);
        }
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|_| DownlinkError::Busy)
    }
}

/// Options to reach `host:port` as `client_id`, over TLS and with credentials when given; the
/// session settings are the caller's. Shared with the sync uplink to a cloud broker.
pub fn client_options(
    client_id: &str,
    host: &str,
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
    credentials: Option<&(String, String)>,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, host, port);
    if let Some(tls) = tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    if let Some((user, password)) = credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    options
}

impl MqttIngest {
    /// A client that submits readings to `submissions_tx` and reports its link on `link_tx`.
    pub fn new(
        settings: MqttSettings,
        submissions_tx: mpsc::Sender<Submission>,
        stats: Arc<IngestStats>,
        link_tx: tokio::sync::watch::Sender<Link>,
    ) -> Self {
        let s = &settings;
        let mut options = client_options(
            &s.client_id,
            &s.host,
            s.port,
            s.tls.as_ref(),
            s.credentials.as_ref(),
        );
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(s.inflight)
            .set_max_packet_size(super::endpoint::MAX_PLAIN_PACKET + 1024, 64 << 10);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        MqttIngest {
            core: Core {
                settings,
                submissions_tx,
                stats,
                link_tx,
                client,
            },
            eventloop,
        }
    }

    /// A handle that sends messages to devices over this session.
    pub fn downlink(&self) -> BrokerDownlink {
        BrokerDownlink {
            client: self.core.client.clone(),
            link_rx: self.core.link_tx.subscribe(),
        }
    }

    /// Runs until `shutdown`; reconnects with jittered exponential back-off on its own.
    pub async fn run(self, shutdown: CancellationToken) {
        // Only this task drains rumqttc's request channel (by polling), so it must never wait on
        // the acker, which fills that channel: the acker's queue and the request channel are both
        // larger than any broker's in-flight window (see `handle`).
        let MqttIngest {
            core,
            mut eventloop,
        } = self;
        let client = core.client.clone();
        let s = &core.settings;
        let (acks_tx, acks_rx) = mpsc::channel::<Pending>(ACK_QUEUE);
        let acker = tokio::spawn(ack_in_order(client.clone(), acks_rx, shutdown.clone()));

        let mut backoff = RECONNECT_MIN;
        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = RECONNECT_MIN;
                    let filters = [
                        decode::TELEMETRY_FILTER,
                        decode::UP_FILTER,
                        decode::COMMAND_RESULTS_FILTER,
                        decode::STATUS_FILTER,
                    ]
                    .map(|f| rumqttc::SubscribeFilter::new(f.to_owned(), s.subscribe_qos));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        tracing::warn!(error = %e, "could not queue the subscription");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    core.link_tx.send_replace(Link::Up);
                    tracing::info!(host = %s.host, port = s.port, "subscribed to device telemetry");
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if !core.handle(publish, &acks_tx, &shutdown).await {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    core.link_tx.send_replace(Link::Down);
                    let wait = jitter(backoff);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, host = %s.host, port = s.port, "MQTT connection lost");
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        core.link_tx.send_replace(Link::Down);
        drop(acks_tx);
        let _ = acker.await;
    }
}

impl Core {
    /// Decodes one message and submits it; false when shutting down.
    async fn handle(
        &self,
        publish: Publish,
        acks_tx: &mpsc::Sender<Pending>,
        shutdown: &CancellationToken,
    ) -> bool {
        let received_ms = now_ms();
        let decoded = decode_message(
            &publish.topic,
            &publish.payload,
            self.settings.max_payload,
            received_ms,
        );

        let (done_tx, done_rx) = oneshot::channel();
        let reply = match decoded {
            Ok((item, reply)) => {
                let submission = Submission {
                    items: vec![item],
                    done_tx: Some(done_tx),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    sent = self.submissions_tx.send(submission) => if sent.is_err() { return false },
                }
                self.stats
                    .accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                reply
            }
            Err((reason, detail)) => {
                self.stats.reject(reason, &publish.topic, &detail);
                // Skipped for good: acked at once so the broker does not redeliver it forever.
                let _ = done_tx.send(Ok(Vec::new()));
                Reply::Nothing
            }
        };
        let publish = (publish.qos != QoS::AtMostOnce).then_some(publish);
        if publish.is_none() && reply == Reply::Nothing {
            return true;
        }
        let pending = Pending {
            done_rx,
            publish,
            reply,
        };
        match acks_tx.try_send(pending) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            // A QoS 0 message only wanted a reply to its device: drop the reply rather than stop
            // polling; the device retransmits and gets its ack then.
            Err(mpsc::error::TrySendError::Full(p)) if p.publish.is_none() => true,
            // A QoS 1 message's PUBACK must not be lost. This only happens with a broker sending
            // more unacked messages than ACK_QUEUE; wait, as the only way left.
            Err(mpsc::error::TrySendError::Full(p)) => tokio::select! {
                _ = shutdown.cancelled() => false,
                sent = acks_tx.send(p) => sent.is_ok(),
            },
        }
    }
}

/// Once each commit is done, in arrival order: tells the device (its ack, or a time sync) and
/// sends the PUBACK. A failed commit is neither acked nor answered, so the broker redelivers the
/// message after the next reconnection and the device retransmits it.
async fn ack_in_order(
    client: AsyncClient,
    mut acks_rx: mpsc::Receiver<Pending>,
    shutdown: CancellationToken,
) {
    // The highest ack each device was told, so a burst of readings gets one ack, not one each.
    let mut told: HashMap<String, u32> = HashMap::new();
    while let Some(pending) = acks_rx.recv().await {
        let Ok(Ok(applied)) = pending.done_rx.await else {
            continue;
        };
        if let Some(reply) = reply_message(&pending.reply, &applied, &told) {
            // Best effort: a lost ack makes the device retransmit, and the retransmission is acked.
            for _ in 0..20 {
                match client.try_publish(
                    reply.topic.as_str(),
                    QoS::AtMostOnce,
                    false,
                    reply.payload.clone(),
                ) {
                    Ok(()) => {
                        // Remembered only once queued: an ack that was dropped is sent again.
                        if let Some((device, ack)) = reply.ack {
                            told.insert(device, ack);
                        }
                        break;
                    }
                    Err(_) if shutdown.is_cancelled() => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }
        if told.len() > MAX_TOLD_DEVICES {
            told.clear();
        }
        let Some(publish) = pending.publish else {
            continue;
        };
        loop {
            match client.try_ack(&publish) {
                Ok(()) => break,
                Err(_) if shutdown.is_cancelled() => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}
