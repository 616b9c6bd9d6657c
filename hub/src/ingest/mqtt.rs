//! The hub's MQTT client: subscribes to device telemetry (JSON) and uplink (binary) topics with QoS 1
//! in a persistent session, acks each message to the broker only after the store has made it
//! durable, and then tells the device: `{"seq":n}` on `devices/{id}/ack` for JSON devices that send
//! `seq`, `Ack` (and `TimeSync` after a `Hello`) on `devices/{id}/down` for binary ones, with what
//! the ack passes without storing (see [`super::reply`]).
//!
//! Two tasks share the connection. The session task alone polls rumqttc's event loop (polling is
//! not cancel-safe, so it is never raced in a `select!`, shutdown aside), decodes messages and
//! hands them to the store writer. The acker waits for each commit in arrival order and hands the
//! PUBACK and the device's reply back to the session task, which writes them straight to the
//! connection between two polls; only while the session task is inside a poll does the acker
//! queue the next PUBACK through rumqttc's request channel, which wakes that poll. The session
//! task waits only on the store (a full writer queue, or a full window) and on the socket; the
//! acker waits only on the store: neither ever waits on the other.
//! PUBACKs leave in arrival order, except that the one queued through rumqttc can be overtaken by
//! the next ones when the poll returns for a read first (brokers match a PUBACK by packet id).
//!
//! The receive window: the hub reads no further PUBLISH while `mqtt.inflight` QoS 1 messages are
//! unacknowledged, so a broker that sends faster than the store commits is held back by TCP,
//! and what the hub holds stays bounded whatever the broker does.
//!
//! Why (the stall this replaced). Behind mosquitto at QoS 1 the hub once stopped for good after
//! about 30,000 readings of a burst. mosquitto 2.0 does not keep to its in-flight window
//! (`max_inflight_messages`, 20 by default; nor to an MQTT 5 client's Receive Maximum): measured
//! with mosquitto 2.0.11 and a subscriber that acks its first 1,000 messages and then nothing, it
//! sent 2,900 to 3,400 unacknowledged messages (6,000 to 18,000 with Receive Maximum 20), and
//! MQTT 3.1.1 has no limit at all. rumqttc 0.25 has no receive-side flow control: each poll picks
//! at random between reading the socket (up to 10 packets) and writing one queued request, so
//! under a flood the hub read about ten PUBLISHes for each PUBACK it wrote, and the number
//! unacknowledged grew without bound. The PUBACKs then waited in rumqttc's request channel
//! (8,192), the acker waited for room there, its queue (16,384) filled, and the session task
//! waited for room in that queue; but the session task's polling was the only thing that emptied
//! the request channel: a cycle, every task asleep, the socket unread. Now PUBACKs never queue
//! behind reads, the session task never waits on the acker, and the window bounds the reading.

use std::sync::Arc;
use std::time::Duration;

use std::collections::{HashMap, VecDeque};

use rumqttc::{AsyncClient, Event, Outgoing, Packet, PubAck, PubRec, Publish, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::reply::{DeviceMessage, MAX_TOLD_DEVICES, Reply, Told, reply_message};
use super::topics::DeviceTopics;
use super::{DownlinkError, IngestStats};
use crate::clock::{jitter, now_ms};
use crate::store::Applied;
use crate::store::writer::{CommitFailed, Submission, SubmissionSender};

/// Messages waiting for their commit before the PUBACK and the device's ack. The receive window
/// (`mqtt.inflight`, see [`MqttIngest::run`]) keeps the QoS 1 ones below it; it also holds more
/// than the writer's queue and one batch (4,096 and 2,048 by default), so that the reply to a
/// device that published at QoS 0 is not dropped while its reading waits for the commit.
const ACK_QUEUE: usize = 16_384;
/// Requests queued for rumqttc's event loop: subscriptions, commands to devices, and at most one
/// PUBACK (with its reply) at a time, the one that wakes a poll (see [`ack_in_order`]).
const REQUEST_QUEUE: usize = 8192;
/// How long the intake may stay paused on a full window, with no commit over, before a warning.
const STALL_WARNING: Duration = Duration::from_secs(10);

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
    /// The topics subscribed to, and what their messages become.
    pub topics: Arc<DeviceTopics>,
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
    /// QoS and packet id of the PUBACK (PUBREC at QoS 2) owed; none at QoS 0. Only these, not the
    /// PUBLISH: its payload is in the store writer's queue already, counted against its bytes.
    ack: Option<(QoS, u16)>,
    reply: Reply,
    /// The connection it came in on.
    generation: u64,
}

/// A message whose commit is over, handed from the acker to the session task.
struct Done {
    /// The connection its PUBLISH came in on.
    generation: u64,
    /// QoS and packet id of the PUBACK (PUBREC at QoS 2) to send; none for QoS 0 or a failed
    /// commit (not acked, so the broker redelivers it after the next reconnection).
    ack: Option<(QoS, u16)>,
    /// The message to the device, if one is due.
    reply: Option<DeviceMessage>,
    /// Whether it held a place in the receive window (QoS 1 or 2).
    windowed: bool,
}

/// What the acker and the session task share.
#[derive(Default)]
struct Shared {
    handoff: std::sync::Mutex<Handoff>,
    /// Wakes the session task when it waits for the store with the window full.
    wake: tokio::sync::Notify,
}

impl Shared {
    /// The hand-off, locked. Nothing panics while holding it, so a poisoned lock is still sound.
    fn handoff(&self) -> std::sync::MutexGuard<'_, Handoff> {
        self.handoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The acker's hand-off, under one lock so that each PUBACK leaves once, by one road.
#[derive(Default)]
struct Handoff {
    /// Commits over, in arrival order: the session task writes their PUBACKs and replies
    /// straight to the connection between two polls.
    done: VecDeque<Done>,
    /// The session task is inside `EventLoop::poll` and nothing waits in `done`: the next commit
    /// to finish is acked through rumqttc's request channel instead, which wakes that poll.
    polling: bool,
    /// PUBACKs queued through the request channel that the poll has not reported written yet.
    routed: usize,
    /// The session's connection: only its messages are acked through the request channel.
    generation: u64,
}

/// The MQTT ingest component.
pub struct MqttIngest {
    core: Core,
    eventloop: rumqttc::EventLoop,
}

/// What the session shares with message handling; the event loop stays apart, polled by `run`.
struct Core {
    settings: MqttSettings,
    submissions_tx: SubmissionSender,
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
    /// Queues `payload` on `topic` at `qos`.
    pub fn publish(&self, topic: String, payload: Vec<u8>, qos: QoS) -> Result<(), DownlinkError> {
        if *self.link_rx.borrow() != Link::Up {
            return Err(DownlinkError::NotConnected);
        }
        self.client
            .try_publish(topic, qos, false, payload)
            .map_err(|_| DownlinkError::Busy)
    }
}

impl MqttIngest {
    /// A client that submits readings to `submissions_tx` and reports its link on `link_tx`.
    pub fn new(
        settings: MqttSettings,
        submissions_tx: SubmissionSender,
        stats: Arc<IngestStats>,
        link_tx: tokio::sync::watch::Sender<Link>,
    ) -> Self {
        let s = &settings;
        let mut options = crate::mqtt_client::client_options(
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
        settings
            .topics
            .attach(super::MqttDownlink::Broker(BrokerDownlink {
                client: client.clone(),
                link_rx: link_tx.subscribe(),
            }));
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
        let MqttIngest {
            core,
            mut eventloop,
        } = self;
        let client = core.client.clone();
        let s = &core.settings;
        let window = usize::from(s.inflight.max(1));
        let shared = Arc::new(Shared::default());
        let (acks_tx, acks_rx) = mpsc::channel::<Pending>(ACK_QUEUE);
        let acker = tokio::spawn(ack_in_order(client.clone(), acks_rx, shared.clone()));

        // The connection the session is on, and its QoS 1/2 messages not yet PUBACKed (nor failed).
        let mut generation = 0u64;
        let mut owed = 0usize;
        let mut backoff = RECONNECT_MIN;
        loop {
            // What the store made durable: its PUBACKs and replies, written straight to the
            // connection, all of them, never behind a read.
            let done = std::mem::take(&mut shared.handoff().done);
            if !done.is_empty() {
                if let Err(e) = write_done(&mut eventloop, done, generation, &mut owed).await {
                    eventloop.clean();
                    generation += 1;
                    owed = 0;
                    if !connection_lost(&core, &shared, generation, &mut backoff, &e, &shutdown)
                        .await
                    {
                        break;
                    }
                }
                continue;
            }
            // The window is full: read nothing more until the store has caught up. A PUBACK
            // queued through rumqttc needs a poll to go out, so then the poll goes on.
            let routed = shared.handoff().routed;
            if owed >= window && routed == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep(STALL_WARNING) => {
                        tracing::warn!(
                            waiting = owed,
                            seconds = STALL_WARNING.as_secs(),
                            "MQTT intake paused: the store has committed none of the messages it was given"
                        );
                    }
                }
                continue;
            }
            {
                let mut handoff = shared.handoff();
                if !handoff.done.is_empty() {
                    continue;
                }
                handoff.polling = true;
            }
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                event = eventloop.poll() => event,
            };
            shared.handoff().polling = false;
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = RECONNECT_MIN;
                    let filters = s
                        .topics
                        .filters()
                        .into_iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f, s.subscribe_qos));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        tracing::warn!(error = %e, "could not queue the subscription");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    core.link_tx.send_replace(Link::Up);
                    tracing::info!(host = %s.host, port = s.port, "subscribed to device telemetry");
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if publish.qos != QoS::AtMostOnce {
                        owed += 1;
                    }
                    if !core.handle(publish, generation, &acks_tx, &shutdown).await {
                        break;
                    }
                }
                // A PUBACK the acker queued through rumqttc went out.
                Ok(Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_))) => {
                    owed = owed.saturating_sub(1);
                    let mut handoff = shared.handoff();
                    handoff.routed = handoff.routed.saturating_sub(1);
                }
                Ok(_) => {}
                Err(e) => {
                    // rumqttc has dropped the PUBACKs queued in it; the broker redelivers.
                    generation += 1;
                    owed = 0;
                    if !connection_lost(&core, &shared, generation, &mut backoff, &e, &shutdown)
                        .await
                    {
                        break;
                    }
                }
            }
        }
        core.link_tx.send_replace(Link::Down);
        drop(acks_tx);
        let _ = acker.await;
    }
}

/// After the connection failed: reports it, forgets what the acker routed, and waits a jittered
/// back-off; false when shutting down.
async fn connection_lost(
    core: &Core,
    shared: &Shared,
    generation: u64,
    backoff: &mut Duration,
    error: &rumqttc::ConnectionError,
    shutdown: &CancellationToken,
) -> bool {
    let s = &core.settings;
    core.link_tx.send_replace(Link::Down);
    {
        let mut handoff = shared.handoff();
        handoff.generation = generation;
        handoff.routed = 0;
    }
    let wait = jitter(*backoff);
    tracing::warn!(error = %error, retry_in_ms = wait.as_millis() as u64, host = %s.host, port = s.port, "MQTT connection lost");
    *backoff = (*backoff * 2).min(RECONNECT_MAX);
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Writes the replies and PUBACKs of `done` to the connection, in order, and flushes. A PUBACK
/// only goes out on the connection its PUBLISH came in on: after a reconnection the broker
/// redelivers, and the redelivery is acked.
async fn write_done(
    eventloop: &mut rumqttc::EventLoop,
    done: VecDeque<Done>,
    generation: u64,
    owed: &mut usize,
) -> Result<(), rumqttc::ConnectionError> {
    let timeout = Duration::from_secs(eventloop.network_options().connection_timeout());
    // Not connected: nothing to write to (the next poll connects).
    let Some(network) = eventloop.network.as_mut() else {
        return Ok(());
    };
    for d in done {
        if let Some(reply) = d.reply {
            for payload in reply.payloads {
                let publish = Publish::new(reply.topic.as_str(), QoS::AtMostOnce, payload);
                network.write(Packet::Publish(publish)).await?;
            }
        }
        if d.generation != generation {
            continue;
        }
        if d.windowed {
            *owed = owed.saturating_sub(1);
        }
        match d.ack {
            Some((QoS::ExactlyOnce, pkid)) => {
                network.write(Packet::PubRec(PubRec::new(pkid))).await?
            }
            Some((_, pkid)) => network.write(Packet::PubAck(PubAck::new(pkid))).await?,
            None => {}
        }
    }
    match tokio::time::timeout(timeout, network.flush()).await {
        Ok(flushed) => Ok(flushed?),
        Err(_) => Err(rumqttc::ConnectionError::FlushTimeout),
    }
}

impl Core {
    /// Decodes one message and submits it; false when shutting down.
    async fn handle(
        &self,
        publish: Publish,
        generation: u64,
        acks_tx: &mpsc::Sender<Pending>,
        shutdown: &CancellationToken,
    ) -> bool {
        let received_ms = now_ms();
        let decoded = self.settings.topics.decode(
            &publish.topic,
            &publish.payload,
            self.settings.max_payload,
            received_ms,
        );

        let (done_tx, done_rx) = oneshot::channel();
        let reply = match decoded {
            // Nothing to store (a Sparkplug command, the hub's own among them): acked at once.
            Ok((items, _)) if items.is_empty() => {
                let _ = done_tx.send(Ok(Vec::new()));
                Reply::Nothing
            }
            Ok((items, reply)) => {
                // A reading refused for its content is counted as skipped, and still goes to the
                // store to be settled, so its device can be told.
                let rejected = reply.rejection();
                if let Some((reason, detail)) = rejected {
                    self.stats.reject(reason, &publish.topic, detail);
                }
                let accepted = rejected.is_none();
                let submission = Submission {
                    items,
                    done_tx: Some(done_tx),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    sent = self.submissions_tx.send(submission) => if sent.is_err() { return false },
                }
                if accepted {
                    self.stats
                        .accepted
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                reply
            }
            Err((reason, detail)) => {
                self.stats.reject(reason, &publish.topic, &detail);
                // Skipped for good: acked at once so the broker does not redeliver it forever.
                let _ = done_tx.send(Ok(Vec::new()));
                Reply::Nothing
            }
        };
        let ack = (publish.qos != QoS::AtMostOnce).then_some((publish.qos, publish.pkid));
        if ack.is_none() && reply == Reply::Nothing {
            return true;
        }
        let pending = Pending {
            done_rx,
            ack,
            reply,
            generation,
        };
        match acks_tx.try_send(pending) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            // A QoS 0 message only wanted a reply to its device: drop the reply rather than stop
            // polling; the device retransmits and gets its ack then.
            Err(mpsc::error::TrySendError::Full(p)) if p.ack.is_none() => true,
            // A QoS 1 message's PUBACK must not be lost. The receive window keeps this queue far
            // from full; waiting is safe anyway: the acker waits only on the store, never on this
            // task.
            Err(mpsc::error::TrySendError::Full(p)) => tokio::select! {
                _ = shutdown.cancelled() => false,
                sent = acks_tx.send(p) => sent.is_ok(),
            },
        }
    }
}

/// Once each commit is done, in arrival order: hands its PUBACK and its reply (the device's ack,
/// or a time sync) to the session task, which writes them between two polls. While that task is
/// inside a poll, the first commit to finish is acked through rumqttc's request channel instead,
/// so that the poll returns and the rest follows at once. A failed commit is neither acked nor
/// answered, so the broker redelivers the message after the next reconnection and the device
/// retransmits it. This task waits for nothing but the store.
async fn ack_in_order(
    client: AsyncClient,
    mut acks_rx: mpsc::Receiver<Pending>,
    shared: Arc<Shared>,
) {
    // The highest ack each device was told, so a burst of readings gets one ack, not one each.
    let mut told: HashMap<String, Told> = HashMap::new();
    while let Some(pending) = acks_rx.recv().await {
        let windowed = pending.ack.is_some();
        let (ack, reply) = match pending.done_rx.await {
            Ok(Ok(applied)) => {
                let reply = reply_message(&pending.reply, &applied, &told);
                if let Some((device, ack)) = reply.as_ref().and_then(|r| r.ack.clone()) {
                    told.insert(device, ack);
                }
                (pending.ack, reply)
            }
            _ => (None, None),
        };
        if told.len() > MAX_TOLD_DEVICES {
            told.clear();
        }
        let done = Done {
            generation: pending.generation,
            ack,
            reply,
            windowed,
        };
        let mut handoff = shared.handoff();
        if handoff.polling
            && handoff.done.is_empty()
            && handoff.generation == done.generation
            && (done.ack.is_some() || done.reply.is_some())
            && route(&client, &done)
        {
            handoff.polling = false;
            if done.ack.is_some() {
                handoff.routed += 1;
            }
            continue;
        }
        handoff.done.push_back(done);
        drop(handoff);
        shared.wake.notify_one();
    }
}

/// Queues `done`'s PUBACK and reply through rumqttc's request channel; false (and nothing
/// queued) when the PUBACK cannot be.
fn route(client: &AsyncClient, done: &Done) -> bool {
    if let Some((qos, pkid)) = done.ack {
        let mut publish = Publish::new("", qos, Vec::new());
        publish.pkid = pkid;
        if client.try_ack(&publish).is_err() {
            return false;
        }
    }
    if let Some(reply) = &done.reply {
        // Best effort: a lost ack makes the device retransmit, and the retransmission is acked.
        let mut queued = Ok(());
        for payload in &reply.payloads {
            queued = queued.and(client.try_publish(
                reply.topic.as_str(),
                QoS::AtMostOnce,
                false,
                payload.clone(),
            ));
        }
        if queued.is_err() && done.ack.is_none() {
            return false;
        }
    }
    true
}
