//! The hub's MQTT client: subscribes to device telemetry with QoS 1 in a persistent session and
//! acks each message to the broker only after the store has made its reading durable.
//!
//! Two tasks share the connection. The session task alone polls rumqttc's event loop (polling is
//! not cancel-safe, so it is never raced in a `select!`), decodes messages and hands them to the
//! store writer. The acker waits for each commit in arrival order and then queues the PUBACK with
//! `try_ack`, never blocking on the event loop, so neither task can wait on the other.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{IngestStats, now_ms, telemetry};
use crate::store::Appended;
use crate::store::writer::{CommitFailed, Submission};

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
    /// Client id of the hub's persistent session.
    pub client_id: String,
    /// Most unacked QoS 1 messages in flight.
    pub inflight: u16,
    /// Largest telemetry payload accepted.
    pub max_payload: usize,
}

/// Connection state, for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Not connected (yet, or any more).
    Down,
    /// Connected and subscribed.
    Up,
}

type PendingAck = (
    oneshot::Receiver<Result<Vec<Appended>, CommitFailed>>,
    Publish,
);

/// The MQTT ingest component.
pub struct MqttIngest {
    settings: MqttSettings,
    submissions_tx: mpsc::Sender<Submission>,
    stats: Arc<IngestStats>,
    link_tx: tokio::sync::watch::Sender<Link>,
}

impl MqttIngest {
    /// A client that submits readings to `submissions_tx` and reports its link on `link_tx`.
    pub fn new(
        settings: MqttSettings,
        submissions_tx: mpsc::Sender<Submission>,
        stats: Arc<IngestStats>,
        link_tx: tokio::sync::watch::Sender<Link>,
    ) -> Self {
        MqttIngest {
            settings,
            submissions_tx,
            stats,
            link_tx,
        }
    }

    /// Runs until `shutdown`; reconnects with jittered exponential back-off on its own.
    pub async fn run(self, shutdown: CancellationToken) {
        let s = &self.settings;
        let mut options = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(s.inflight)
            .set_max_packet_size(super::broker::BROKER_MAX_PAYLOAD + 1024, 64 << 10);
        let inflight = usize::from(s.inflight).max(1);
        // Room for every in-flight ack plus subscribe requests: try_ack then only fails while
        // the connection is down, and is retried.
        let (client, mut eventloop) = AsyncClient::new(options, inflight * 2 + 16);
        let (acks_tx, acks_rx) = mpsc::channel::<PendingAck>(inflight * 2);
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
                    if let Err(e) =
                        client.try_subscribe(telemetry::TELEMETRY_FILTER, QoS::AtLeastOnce)
                    {
                        tracing::warn!(error = %e, "could not queue the subscription");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    self.link_tx.send_replace(Link::Up);
                    tracing::info!(host = %s.host, port = s.port, "subscribed to device telemetry");
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if !self.handle(publish, &acks_tx, &shutdown).await {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.link_tx.send_replace(Link::Down);
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
        self.link_tx.send_replace(Link::Down);
        drop(acks_tx);
        let _ = acker.await;
    }

    /// Decodes one message and submits it; false when shutting down.
    async fn handle(
        &self,
        publish: Publish,
        acks_tx: &mpsc::Sender<PendingAck>,
        shutdown: &CancellationToken,
    ) -> bool {
        let decoded = telemetry::decode(
            &publish.topic,
            &publish.payload,
            self.settings.max_payload,
            now_ms(),
        );
        let (done_tx, done_rx) = oneshot::channel();
        match decoded {
            Ok(reading) => {
                let submission = Submission {
                    readings: vec![reading],
                    done_tx: Some(done_tx),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    sent = self.submissions_tx.send(submission) => if sent.is_err() { return false },
                }
                self.stats
                    .accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err((reason, detail)) => {
                self.stats.reject(reason, &publish.topic, &detail);
                // Skipped for good: acked at once so the broker does not redeliver it forever.
                let _ = done_tx.send(Ok(Vec::new()));
            }
        }
        if publish.qos == QoS::AtMostOnce {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => false,
            sent = acks_tx.send((done_rx, publish)) => sent.is_ok(),
        }
    }
}

/// Sends each PUBACK once its commit is done, in arrival order. A failed commit is not acked, so
/// the broker redelivers the message after the next reconnection.
async fn ack_in_order(
    client: AsyncClient,
    mut acks_rx: mpsc::Receiver<PendingAck>,
    shutdown: CancellationToken,
) {
    while let Some((done_rx, publish)) = acks_rx.recv().await {
        let Ok(Ok(_)) = done_rx.await else { continue };
        loop {
            match client.try_ack(&publish) {
                Ok(()) => break,
                Err(_) if shutdown.is_cancelled() => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}

/// A random wait between half of `max` and `max`.
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let fraction = 0.5 + f64::from(nanos % 1000) / 2000.0;
    max.mul_f64(fraction)
}
