//! The reading half of a connection: packets from the client, publishes decoded and handed to
//! the store writer in batches, back-pressure when the writer falls behind.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use tokio::io::AsyncRead;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::super::router::{self, Session};
use super::super::wire::{Outbound, PacketReader, WireError};
use super::super::{Context, Identity};
use crate::clock::now_ms;
use crate::ingest::reply::Reply;
use crate::ingest::{CommandHandoff, Rejection};
use crate::store::Ingest;
use crate::store::writer::{QueueRoom, Submission};

use super::*;

/// The reading half of a connection.
pub(super) struct Reader<'a> {
    pub(super) identity: &'a Identity,
    pub(super) context: &'a Context,
    pub(super) session: &'a Arc<Session>,
    pub(super) control_tx: mpsc::Sender<Box<Outbound>>,
    pub(super) unacked_tx: mpsc::Sender<Box<Unacked>>,
    /// Payload bytes read and not yet acknowledged, at most [`MAX_UNACKED_BYTES`].
    pub(super) budget: Arc<Semaphore>,
}

impl Reader<'_> {
    pub(super) async fn run<R: AsyncRead + Unpin>(
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
    pub(super) async fn handle(&self, packet: Packet) -> Result<bool, ConnectionError> {
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

    pub(super) async fn control(&self, packet: Outbound) -> Result<(), ConnectionError> {
        // Closed only when the writer has ended, and with it the connection.
        self.control_tx
            .send(Box::new(packet))
            .await
            .map_err(|_| WireError::Io(std::io::ErrorKind::BrokenPipe.into()).into())
    }

    /// The QoS granted to each of `filters` (`None` where refused), subscribing the allowed ones.
    pub(super) fn subscribe(&self, filters: &[(String, QoS)]) -> Vec<Option<QoS>> {
        let allowed: Vec<bool> = filters
            .iter()
            .map(|(filter, _)| match self.identity {
                Identity::Device(device) => super::super::may_subscribe(device, filter),
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
    pub(super) fn add(&self, batch: &mut Batch, publish: Publish) {
        let context = self.context;
        let allowed = match self.identity {
            Identity::Device(device) => super::super::may_publish(device, &publish.topic),
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
    pub(super) async fn take(&self, burst: Vec<Publish>) -> Result<(), ConnectionError> {
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
    pub(super) async fn submit(
        &self,
        batch: Batch,
        room: QueueRoom,
    ) -> Result<(), ConnectionError> {
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
            .send(Box::new(unacked))
            .await
            .map_err(|_| WireError::Io(std::io::ErrorKind::BrokenPipe.into()).into())
    }
}

/// About the bytes a publish decodes to (see [`Ingest::approx_bytes`]), erring high: the item,
/// its device id, and its metrics, each a name and a value of some 56 bytes that postcard carries
/// in a few (JSON in more).
pub(super) fn decoded_estimate(publish: &Publish) -> usize {
    std::mem::size_of::<Ingest>() + publish.topic.len() + 6 * publish.payload.len()
}
