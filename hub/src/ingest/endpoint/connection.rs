//! One client connection to the MQTT endpoint, from its CONNECT to its end.
//!
//! Two halves run at once, so neither can stall the other on a full socket:
//! - the reader takes packets from the client. A PUBLISH on a device topic is decoded and handed
//!   to the store writer, with the other publishes that the same read brought in (up to 64, one
//!   submission: 1 device at QoS 0 went from 183k to 206k-212k readings/s, 1000 devices from 59k
//!   to 67k-79k); their acknowledgements (PUBACK for QoS 1, PUBREC for QoS 2) are queued in
//!   arrival order behind the commit. When the writer falls behind, the reader stops reading: the
//!   unacknowledged publishes of a connection are bounded in number and in bytes, so back-pressure
//!   reaches the client's socket instead of a queue growing or a reading being dropped.
//! - the writer sends, in this order of preference: answers that wait for nothing (CONNACK,
//!   SUBACK, PINGRESP, PUBCOMP), the acknowledgements whose commit is done (in arrival order),
//!   and downlinks queued for the session (acks, commands).
//!
//! A PUBACK or PUBREC from the hub therefore means "durable". A commit that fails is never
//! acknowledged: the connection is closed, so the client sends the message again when it comes
//! back; a QoS 0 reading lost that way is counted (`dropped{reason="commit_failed"}`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::Protocol;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, Publish};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::router::{self, Session};
use super::wire::{FLUSH_AT, Outbound, PacketReader, PacketWriter, Version, WireError};
use super::{Context, Identity};
use crate::clock::now_ms;
use crate::ingest::reply::{self, MAX_TOLD_DEVICES, Reply, Told};
use crate::ingest::{CommandHandoff, DropReason, Rejection, decode};
use crate::store::writer::{CommitFailed, QueueRoom, Submission};
use crate::store::{Applied, Ingest};

/// Publishes of one connection read and not yet acknowledged (waiting for their commit). Room
/// for two of the writer's batches, so one device can fill the next commit while one is on disk:
/// 1 device at QoS 0 (loadgen, release build) went from 158k to 183k readings/s with 1,024 -> 4,096.
/// Memory stays bounded by the writer's queue, which every connection shares.
pub const MAX_UNACKED: usize = 4096;
/// Payload bytes of one connection read and not yet acknowledged.
pub const MAX_UNACKED_BYTES: usize = 4 << 20;
/// Answers that wait for nothing, queued for the writer.
const CONTROL_QUEUE: usize = 16;
/// Silence allowed to a client that asks for no keep-alive.
const IDLE_WITHOUT_KEEP_ALIVE: Duration = Duration::from_secs(300);

/// Why a connection ended early; logged at debug, never fatal to the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// No CONNECT in time.
    #[error("no CONNECT within the time allowed")]
    ConnectTimeout,
    /// The first packet was something else.
    #[error("the first packet is not a CONNECT")]
    NotConnect,
    /// The CONNECT was refused.
    #[error("CONNECT refused: {0}")]
    Refused(&'static str),
    /// Silent past its keep-alive.
    #[error("silent for longer than its keep-alive allows")]
    Idle,
    /// Did not take what the hub sent in time.
    #[error("did not read what the hub sent within its keep-alive")]
    WriteTimeout,
    /// A packet only a server sends, or a second CONNECT.
    #[error("a packet only a server sends, or a second CONNECT")]
    Unexpected,
    /// Too many QoS 2 exchanges open.
    #[error("too many QoS 2 publishes awaiting their PUBREL")]
    TooManyPending,
    /// A commit failed: its publishes are not acknowledged, the client sends them again.
    #[error("a commit failed; the client will send its unacknowledged messages again")]
    CommitFailed,
    /// Another connection took the session over.
    #[error("another connection took over the client id")]
    TakenOver,
    /// The hub is stopping.
    #[error("the hub is stopping")]
    Stopping,
    /// The stream failed.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Publishes read together (one read's burst, at most [`MAX_BATCH`]) waiting for the commit that
/// holds their readings, before their acknowledgements and their devices' replies.
struct Unacked {
    /// The commit's outcome; `None` when there was nothing to commit (only skipped messages).
    done_rx: Option<oneshot::Receiver<Result<Vec<Applied>, CommitFailed>>>,
    /// The publishes, in arrival order.
    publishes: Vec<Published>,
    /// Their share of the connection's byte budget, given back with the acknowledgements.
    _bytes: Option<OwnedSemaphorePermit>,
}

/// One publish of a batch.
struct Published {
    qos: QoS,
    pkid: u16,
    reply: Reply,
    /// Its item's place in the submission, if it was handed to the store.
    item: Option<usize>,
}

/// Publishes taken from what one read brought in, handed to the store writer as one submission.
const MAX_BATCH: usize = 64;

/// Publishes read and decoded, not yet handed to the store.
#[derive(Default)]
struct Batch {
    items: Vec<crate::store::Ingest>,
    publishes: Vec<Published>,
    bytes: usize,
}

/// Serves one connection: `identity` says what it may do, `max_packet` is its listener's largest
/// packet either way. Returns the client id when it ends cleanly.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    identity: Identity,
    max_packet: usize,
    context: &Context,
    connection: u64,
    shutdown: &CancellationToken,
) -> Result<String, ConnectionError> {
    let (from_client, to_client) = tokio::io::split(io);
    let mut reader = PacketReader::new(from_client, max_packet);
    let mut writer = PacketWriter::new(to_client, max_packet);
    let deadline = tokio::time::Instant::now() + context.settings.connect_timeout;
    let connect = match tokio::time::timeout_at(deadline, reader.next()).await {
        Err(_) => return Err(ConnectionError::ConnectTimeout),
        Ok(Ok(Some(Packet::Connect(connect)))) => connect,
        Ok(Ok(_)) => return Err(ConnectionError::NotConnect),
        Ok(Err(e)) => return Err(e.into()),
    };
    let version = reader.version().unwrap_or(Version::V4);
    writer.speak(version);
    let connack = |code, session_present, assigned_id| Outbound::ConnAck {
        code,
        session_present,
        assigned_id,
        receive_max: MAX_UNACKED as u16,
    };
    let asked_for_id = !connect.client_id.is_empty();
    let admitted = match admit(&identity, connection, connect) {
        Ok(admitted) => admitted,
        Err((code, why)) => {
            context.stats.reject(
                Rejection::ForbiddenConnect,
                "",
                &format!("{}: {why}", identity.name()),
            );
            writer.send(&connack(code, false, None)).await?;
            return Err(ConnectionError::Refused(why));
        }
    };
    let idle = match admitted.keep_alive {
        0 => IDLE_WITHOUT_KEEP_ALIVE,
        secs => Duration::from_millis(u64::from(secs) * 1500),
    };
    let close = shutdown.child_token();
    let connected = context.router.connect(
        &admitted.client_id,
        admitted.clean,
        connection,
        close.clone(),
    );
    let session = connected.session;
    // MQTT 5 tells a client the id the hub chose for it.
    let assigned = (version == Version::V5 && !asked_for_id).then(|| admitted.client_id.clone());
    writer
        .send(&connack(
            ConnectReturnCode::Success,
            connected.session_present,
            assigned,
        ))
        .await?;

    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (unacked_tx, unacked_rx) = mpsc::channel(MAX_UNACKED);
    let half = Reader {
        identity: &identity,
        context,
        session: &session,
        control_tx,
        unacked_tx,
        budget: Arc::new(Semaphore::new(MAX_UNACKED_BYTES)),
    };
    let sender = Writer {
        context,
        session: &session,
        told: HashMap::new(),
        idle,
    };
    let ended = tokio::select! {
        _ = close.cancelled() => Err(if shutdown.is_cancelled() {
            ConnectionError::Stopping
        } else {
            ConnectionError::TakenOver
        }),
        ended = half.run(&mut reader, idle) => ended,
        ended = sender.run(&mut writer, control_rx, unacked_rx) => ended,
    };
    context.router.disconnected(&session, connection);
    match ended {
        Ok(()) => Ok(admitted.client_id),
        Err(e) => {
            // The will is published only when a connection ends without a DISCONNECT.
            if let Some((topic, payload)) = admitted.will {
                submit_will(context, &topic, &payload).await;
            }
            Err(e)
        }
    }
}

/// What a CONNECT was admitted as.
#[derive(Debug, PartialEq, Eq)]
struct Admitted {
    client_id: String,
    clean: bool,
    keep_alive: u16,
    /// The topic and payload of the will.
    will: Option<(String, Bytes)>,
}

/// Checks a CONNECT. A device (TLS, certificate) connects as itself: its client id is its device
/// id (an empty one becomes it). A local client may take any client id; an empty one gets a
/// fresh id for a clean session and is refused for a persistent one (MQTT 3.1.1 3.1.3-8). A
/// device's will must be its own status (`devices/{id}/status`); a local client's may be on any
/// topic (Tasmota, Shelly and Zigbee2MQTT always set theirs), read like any message it publishes.
fn admit(
    identity: &Identity,
    connection: u64,
    connect: Connect,
) -> Result<Admitted, (ConnectReturnCode, &'static str)> {
    if !matches!(connect.protocol, Protocol::V4 | Protocol::V5) {
        return Err((
            ConnectReturnCode::RefusedProtocolVersion,
            "only MQTT 3.1.1 and 5 are served",
        ));
    }
    let client_id = match identity {
        Identity::Device(device) => {
            if !connect.client_id.is_empty() && connect.client_id != *device {
                return Err((
                    ConnectReturnCode::NotAuthorized,
                    "the client id is not the certificate's device id",
                ));
            }
            device.clone()
        }
        Identity::Local => {
            if connect.client_id.is_empty() {
                if !connect.clean_session {
                    return Err((
                        ConnectReturnCode::BadClientId,
                        "an empty client id needs a clean session",
                    ));
                }
                format!("hub-auto-{connection}")
            } else {
                connect.client_id.clone()
            }
        }
    };
    let will = match (&connect.last_will, identity) {
        (None, _) => None,
        (Some(will), Identity::Local) => {
            if !router::is_valid_filter(&will.topic) || will.topic.contains(['+', '#']) {
                return Err((
                    ConnectReturnCode::NotAuthorized,
                    "a will needs a valid topic",
                ));
            }
            Some((will.topic.clone(), will.message.clone()))
        }
        (Some(will), Identity::Device(own)) => match decode::parse_topic(&will.topic) {
            Ok(decode::Topic::Status(device)) if device == own => {
                Some((will.topic.clone(), will.message.clone()))
            }
            _ => {
                return Err((
                    ConnectReturnCode::NotAuthorized,
                    "a device's will must be on its own status topic devices/{id}/status",
                ));
            }
        },
    };
    Ok(Admitted {
        client_id,
        clean: connect.clean_session,
        keep_alive: connect.keep_alive,
        will,
    })
}

/// Hands a will to the store writer like a message the client published (a device's status,
/// mostly); nothing waits for it.
async fn submit_will(context: &Context, topic: &str, payload: &[u8]) {
    let decoded = context
        .topics
        .decode(topic, payload, context.settings.max_payload, now_ms());
    match decoded {
        Ok((items, _)) if items.is_empty() => {}
        Ok((items, _)) => {
            let submission = Submission {
                items,
                done_tx: None,
            };
            if context.submissions_tx.send(submission).await.is_ok() {
                context.stats.count_accepted();
            }
        }
        Err((reason, detail)) => context.stats.reject(reason, topic, &detail),
    }
}

/// The reading half of a connection.
struct Reader<'a> {
    identity: &'a Identity,
    context: &'a Context,
    session: &'a Arc<Session>,
    control_tx: mpsc::Sender<Outbound>,
    unacked_tx: mpsc::Sender<Unacked>,
    /// Payload bytes read and not yet acknowledged, at most [`MAX_UNACKED_BYTES`].
    budget: Arc<Semaphore>,
}

impl Reader<'_> {
    async fn run<R: AsyncRead + Unpin>(
        self,
        reader: &mut PacketReader<R>,
        idle: Duration,
    ) -> Result<(), ConnectionError> {
        loop {
            let packet = tokio::time::timeout(idle, reader.next())
                .await
                .map_err(|_| ConnectionError::Idle)?
                .inspect_err(|e| {
                    if e.is_oversized() {
                        // Counted like a payload over the limit; the connection cannot go on
                        // (the rest of the packet is not read).
                        self.context.stats.reject(
                            Rejection::TooLarge,
                            "",
                            &format!("{}: {e}; connection closed", self.identity.name()),
                        );
                    }
                })?;
            let Some(packet) = packet else {
                // Closed without a DISCONNECT: the will applies.
                return Err(WireError::Truncated.into());
            };
            match packet {
                Packet::Publish(publish) => {
                    // The rest of the burst already read goes with it, up to a packet that is not
                    // a publish, which is handled after the batch (in order).
                    let mut burst = vec![publish];
                    let mut after = None;
                    while burst.len() < MAX_BATCH {
                        match reader.buffered()? {
                            Some(Packet::Publish(publish)) => burst.push(publish),
                            Some(other) => {
                                after = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    self.take(burst).await?;
                    if let Some(packet) = after
                        && self.handle(packet).await?
                    {
                        return Ok(());
                    }
                }
                other => {
                    if self.handle(other).await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Handles a packet after a batch of publishes (a publish there goes alone); true on
    /// DISCONNECT.
    async fn handle(&self, packet: Packet) -> Result<bool, ConnectionError> {
        match packet {
            Packet::Publish(publish) => self.take(vec![publish]).await?,
            Packet::PubAck(ack) => {
                if let Some(command) = self.session.acked(ack.pkid) {
                    self.context.router.tell(CommandHandoff::Delivered(command));
                }
            }
            // The hub sends at most QoS 1; answer a stray PUBREC so the client can finish.
            Packet::PubRec(rec) => self.control(Outbound::PubRel(rec.pkid)).await?,
            Packet::PubRel(release) => {
                self.session.released(release.pkid);
                self.control(Outbound::PubComp(release.pkid)).await?;
            }
            Packet::PubComp(_) => {}
            Packet::Subscribe(subscribe) => {
                let wanted: Vec<(String, QoS)> = subscribe
                    .filters
                    .iter()
                    .map(|f| (f.path.clone(), f.qos))
                    .collect();
                let granted = self.subscribe(&wanted);
                self.control(Outbound::SubAck {
                    pkid: subscribe.pkid,
                    granted,
                })
                .await?;
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.context
                    .router
                    .unsubscribe(self.session, &unsubscribe.topics);
                self.control(Outbound::UnsubAck {
                    pkid: unsubscribe.pkid,
                    count: unsubscribe.topics.len(),
                })
                .await?;
            }
            Packet::PingReq => self.control(Outbound::PingResp).await?,
            Packet::Disconnect => return Ok(true),
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => return Err(ConnectionError::Unexpected),
        }
        Ok(false)
    }

    async fn control(&self, packet: Outbound) -> Result<(), ConnectionError> {
        // Closed only when the writer has ended, and with it the connection.
        self.control_tx
            .send(packet)
            .await
            .map_err(|_| WireError::Io(std::io::ErrorKind::BrokenPipe.into()).into())
    }

    /// The QoS granted to each of `filters` (`None` where refused), subscribing the allowed ones.
    fn subscribe(&self, filters: &[(String, QoS)]) -> Vec<Option<QoS>> {
        let allowed: Vec<bool> = filters
            .iter()
            .map(|(filter, _)| match self.identity {
                Identity::Device(device) => super::may_subscribe(device, filter),
                Identity::Local => router::is_valid_filter(filter),
            })
            .collect();
        for ((filter, _), _) in filters.iter().zip(&allowed).filter(|(_, ok)| !**ok) {
            self.context
                .stats
                .reject(Rejection::ForbiddenFilter, filter, self.identity.name());
        }
        let wanted: Vec<(String, QoS)> = filters
            .iter()
            .zip(&allowed)
            .filter(|(_, ok)| **ok)
            .map(|(f, _)| f.clone())
            .collect();
        let mut granted = self
            .context
            .router
            .subscribe(self.session, &wanted)
            .into_iter();
        allowed
            .iter()
            .map(|ok| ok.then(|| granted.next().flatten()).flatten())
            .collect()
    }

    /// Decodes a publish into `batch`, or notes why it is skipped (it is acknowledged all the same).
    fn add(&self, batch: &mut Batch, publish: Publish) {
        let context = self.context;
        let allowed = match self.identity {
            Identity::Device(device) => super::may_publish(device, &publish.topic),
            Identity::Local => true,
        };
        let mut published = Published {
            qos: publish.qos,
            pkid: publish.pkid,
            reply: Reply::Nothing,
            item: None,
        };
        if !allowed {
            // MQTT 3.1.1 has no way to say no: the flow is completed, as mosquitto does for an
            // ACL denial, so the device does not resend it forever.
            context.stats.reject(
                Rejection::ForbiddenTopic,
                &publish.topic,
                self.identity.name(),
            );
        } else if publish.qos == QoS::ExactlyOnce && self.session.is_awaiting_release(publish.pkid)
        {
            // Stored already: only its PUBREC was lost.
        } else {
            let decoded = context.topics.decode(
                &publish.topic,
                &publish.payload,
                context.settings.max_payload,
                now_ms(),
            );
            match decoded {
                Ok((items, reply)) => {
                    // A reading refused for its content is counted as skipped, and still goes to
                    // the store to be settled, so its device can be told.
                    if let Some((reason, detail)) = reply.rejection() {
                        context.stats.reject(reason, &publish.topic, detail);
                    }
                    // Nothing to store (a Sparkplug command echoed back): acknowledged only.
                    if !items.is_empty() {
                        published.item = Some(batch.items.len());
                        published.reply = reply;
                        batch.items.extend(items);
                        batch.bytes += publish.payload.len();
                    }
                }
                // Skipped for good: acknowledged, so the client does not send it again forever.
                Err((reason, detail)) => context.stats.reject(reason, &publish.topic, &detail),
            }
        }
        if published.qos == QoS::AtMostOnce
            && published.item.is_none()
            && published.reply == Reply::Nothing
        {
            return;
        }
        batch.publishes.push(published);
    }

    /// Decodes a burst of publishes and submits it, once the writer's queue has room for about
    /// what they will decode to: while the queue is full the connection waits holding the few raw
    /// bytes it read, and reads no more.
    async fn take(&self, burst: Vec<Publish>) -> Result<(), ConnectionError> {
        let estimate: usize = burst.iter().map(decoded_estimate).sum();
        let room = self
            .context
            .submissions_tx
            .room(estimate)
            .await
            .map_err(|_| ConnectionError::Stopping)?;
        let mut batch = Batch::default();
        for publish in burst {
            self.add(&mut batch, publish);
        }
        self.submit(batch, room).await
    }

    /// Hands a batch's readings to the store writer as one submission (in `room`), and queues
    /// their acknowledgements behind its commit. Waits while the connection's budget is spent or
    /// the writer's queue is full: that is the back-pressure.
    async fn submit(&self, batch: Batch, room: QueueRoom) -> Result<(), ConnectionError> {
        let context = self.context;
        let mut unacked = Unacked {
            done_rx: None,
            publishes: batch.publishes,
            _bytes: None,
        };
        if !batch.items.is_empty() {
            let want = batch.bytes.clamp(1, MAX_UNACKED_BYTES) as u32;
            let bytes = self
                .budget
                .clone()
                .acquire_many_owned(want)
                .await
                .map_err(|_| ConnectionError::Stopping)?;
            let (done_tx, done_rx) = oneshot::channel();
            let count = batch
                .items
                .iter()
                .filter(|item| !matches!(item, Ingest::Rejected(_)))
                .count() as u64;
            let submission = Submission {
                items: batch.items,
                done_tx: Some(done_tx),
            };
            context
                .submissions_tx
                .send_in(room, submission)
                .await
                .map_err(|_| ConnectionError::Stopping)?;
            context
                .stats
                .accepted
                .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
            unacked.done_rx = Some(done_rx);
            unacked._bytes = Some(bytes);
        }
        if unacked.publishes.is_empty() {
            return Ok(());
        }
        self.unacked_tx
            .send(unacked)
            .await
            .map_err(|_| WireError::Io(std::io::ErrorKind::BrokenPipe.into()).into())
    }
}

/// About the bytes a publish decodes to (see [`Ingest::approx_bytes`]), erring high: the item,
/// its device id, and its metrics, each a name and a value of some 56 bytes that postcard carries
/// in a few (JSON in more).
fn decoded_estimate(publish: &Publish) -> usize {
    std::mem::size_of::<Ingest>() + publish.topic.len() + 6 * publish.payload.len()
}

/// The writing half of a connection.
struct Writer<'a> {
    context: &'a Context,
    session: &'a Arc<Session>,
    /// The last ack each device was told on this connection.
    told: HashMap<String, Told>,
    idle: Duration,
}

impl Writer<'_> {
    async fn run<W: AsyncWrite + Unpin>(
        mut self,
        writer: &mut PacketWriter<W>,
        mut control_rx: mpsc::Receiver<Outbound>,
        mut unacked_rx: mpsc::Receiver<Unacked>,
    ) -> Result<(), ConnectionError> {
        let mut head: Option<Unacked> = None;
        // A persistent session's waiting messages go out at once.
        self.push_downlinks(writer)?;
        loop {
            if writer.pending() > 0 {
                tokio::time::timeout(self.idle, writer.flush())
                    .await
                    .map_err(|_| ConnectionError::WriteTimeout)??;
            }
            // Biased: answers first, then acknowledgements in order, then downlinks; each branch
            // is cancel-safe (the head is kept outside, and polling `&mut` a oneshot is).
            tokio::select! {
                biased;
                packet = control_rx.recv() => match packet {
                    Some(packet) => writer.push(&packet)?,
                    // The reader ended, and with it the connection.
                    None => return Ok(()),
                },
                next = unacked_rx.recv(), if head.is_none() => match next {
                    Some(next) => head = Some(next),
                    None => return Ok(()),
                },
                outcome = wait_commit(&mut head), if head.is_some() => {
                    if let Some(done) = head.take() {
                        self.acknowledge(writer, done, outcome)?;
                    }
                    // Every following acknowledgement whose commit is done goes in the same write.
                    while writer.pending() < FLUSH_AT {
                        let Ok(mut next) = unacked_rx.try_recv() else { break };
                        match try_commit(&mut next) {
                            Some(outcome) => self.acknowledge(writer, next, outcome)?,
                            None => {
                                head = Some(next);
                                break;
                            }
                        }
                    }
                }
                _ = self.session.wake.notified() => self.push_downlinks(writer)?,
            }
        }
    }

    /// Queues the acknowledgements of a batch whose commit is done, and its devices' replies.
    fn acknowledge<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut PacketWriter<W>,
        done: Unacked,
        outcome: Result<Vec<Applied>, CommitFailed>,
    ) -> Result<(), ConnectionError> {
        let applied = match outcome {
            Ok(applied) => applied,
            Err(CommitFailed) => {
                // Nothing of the batch is stored: a QoS 0 reading is lost (counted); the others
                // are never acknowledged, and closing makes the client send them again.
                for published in done.publishes.iter().filter(|p| p.item.is_some()) {
                    if published.qos == QoS::AtMostOnce {
                        self.context.stats.count_dropped(DropReason::CommitFailed);
                    }
                }
                if done.publishes.iter().any(|p| p.qos != QoS::AtMostOnce) {
                    return Err(ConnectionError::CommitFailed);
                }
                return Ok(());
            }
        };
        for published in &done.publishes {
            match published.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => writer.push(&Outbound::PubAck(published.pkid))?,
                QoS::ExactlyOnce => {
                    if !self.session.await_release(published.pkid) {
                        return Err(ConnectionError::TooManyPending);
                    }
                    writer.push(&Outbound::PubRec(published.pkid))?;
                }
            }
            // The store answers one `Applied` per item, in order.
            let its = published
                .item
                .and_then(|i| applied.get(i..=i))
                .unwrap_or(&[]);
            let Some(message) = reply::reply_message(&published.reply, its, &self.told) else {
                continue;
            };
            // Best effort: a device that lost its ack sends the reading again and is answered.
            let mut routed = Ok(());
            for payload in message.payloads {
                routed = routed.and(self.context.router.publish(
                    &message.topic,
                    Bytes::from(payload),
                    QoS::AtMostOnce,
                ));
            }
            if routed.is_ok()
                && let Some((device, ack)) = message.ack
            {
                if self.told.len() >= MAX_TOLD_DEVICES {
                    self.told.clear();
                }
                self.told.insert(device, ack);
            }
        }
        Ok(())
    }

    /// Queues the session's downlinks that may go now.
    fn push_downlinks<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut PacketWriter<W>,
    ) -> Result<(), ConnectionError> {
        for message in self.session.take_sendable().messages {
            let mut publish = Publish::from_bytes(&*message.topic, message.qos, message.payload);
            if let Some(pkid) = message.pkid {
                publish.pkid = pkid;
            }
            publish.dup = message.dup;
            writer.push(&Outbound::Publish(publish))?;
        }
        Ok(())
    }
}

/// The outcome of the head's commit (cancel-safe: the receiver stays in the head).
async fn wait_commit(head: &mut Option<Unacked>) -> Result<Vec<Applied>, CommitFailed> {
    match head.as_mut().and_then(|h| h.done_rx.as_mut()) {
        None => Ok(Vec::new()),
        // A dropped sender means the writer is gone: nothing was made durable.
        Some(done_rx) => done_rx.await.unwrap_or(Err(CommitFailed)),
    }
}

/// The outcome of `unacked`'s commit if it is done.
fn try_commit(unacked: &mut Unacked) -> Option<Result<Vec<Applied>, CommitFailed>> {
    match unacked.done_rx.as_mut() {
        None => Some(Ok(Vec::new())),
        Some(done_rx) => match done_rx.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(CommitFailed)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::LastWill;

    fn device(id: &str) -> Identity {
        Identity::Device(id.to_owned())
    }

    #[test]
    fn a_device_connects_as_itself_with_its_own_will_only() {
        let admitted = admit(&device("A"), 1, Connect::new("A")).unwrap();
        assert_eq!(admitted.client_id, "A");
        // An empty client id becomes the device id.
        assert_eq!(
            admit(&device("A"), 1, Connect::new("")).unwrap().client_id,
            "A"
        );
        let refused = |identity: &Identity, connect| admit(identity, 1, connect).unwrap_err().0;
        assert_eq!(
            refused(&device("A"), Connect::new("B")),
            ConnectReturnCode::NotAuthorized
        );
        let with_will = |topic: &str| {
            let mut connect = Connect::new("A");
            connect.last_will = Some(LastWill::new(topic, "offline", QoS::AtLeastOnce, false));
            connect
        };
        assert_eq!(
            refused(&device("A"), with_will("devices/B/status")),
            ConnectReturnCode::NotAuthorized
        );
        let admitted = admit(&device("A"), 1, with_will("devices/A/status")).unwrap();
        assert_eq!(
            admitted.will,
            Some(("devices/A/status".into(), Bytes::from("offline")))
        );
        assert_eq!(
            refused(&device("A"), with_will("tele/A/LWT")),
            ConnectReturnCode::NotAuthorized
        );
        // A local client's will may be on any topic (Tasmota's tele/{name}/LWT), but one topic.
        assert!(admit(&Identity::Local, 1, with_will("devices/B/status")).is_ok());
        assert!(admit(&Identity::Local, 1, with_will("tele/plug/LWT")).is_ok());
        for bad in ["tele/+/LWT", "a/#", ""] {
            assert_eq!(
                refused(&Identity::Local, with_will(bad)),
                ConnectReturnCode::NotAuthorized
            );
        }
        let mut v5 = Connect::new("A");
        v5.protocol = Protocol::V5;
        assert!(admit(&device("A"), 1, v5).is_ok());
    }

    #[test]
    fn a_local_client_without_an_id_gets_one_for_a_clean_session_only() {
        let admitted = admit(&Identity::Local, 7, Connect::new("")).unwrap();
        assert_eq!(admitted.client_id, "hub-auto-7");
        let mut persistent = Connect::new("");
        persistent.clean_session = false;
        assert_eq!(
            admit(&Identity::Local, 7, persistent).unwrap_err().0,
            ConnectReturnCode::BadClientId
        );
    }
}
