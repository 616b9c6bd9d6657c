//! The writing half of a connection: answers that wait for nothing, acknowledgements once their
//! commit is done (in arrival order), and downlinks queued for the session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::Publish;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

use super::super::Context;
use super::super::router::Session;
use super::super::wire::{FLUSH_AT, Outbound, PacketWriter};
use crate::ingest::DropReason;
use crate::ingest::reply::{self, MAX_TOLD_DEVICES, Told};
use crate::store::Applied;
use crate::store::writer::CommitFailed;

use super::*;

/// The writing half of a connection.
pub(super) struct Writer<'a> {
    pub(super) context: &'a Context,
    pub(super) session: &'a Arc<Session>,
    /// The last ack each device was told on this connection.
    pub(super) told: HashMap<String, Told>,
    pub(super) idle: Duration,
}

impl Writer<'_> {
    pub(super) async fn run<W: AsyncWrite + Unpin>(
        mut self,
        writer: &mut PacketWriter<W>,
        mut control_rx: mpsc::Receiver<Box<Outbound>>,
        mut unacked_rx: mpsc::Receiver<Box<Unacked>>,
    ) -> Result<(), ConnectionError> {
        let mut head: Option<Box<Unacked>> = None;
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
                        self.acknowledge(writer, *done, outcome)?;
                    }
                    // Every following acknowledgement whose commit is done goes in the same write.
                    while writer.pending() < FLUSH_AT {
                        let Ok(mut next) = unacked_rx.try_recv() else { break };
                        match try_commit(&mut next) {
                            Some(outcome) => self.acknowledge(writer, *next, outcome)?,
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
    pub(super) fn acknowledge<W: AsyncWrite + Unpin>(
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
    pub(super) fn push_downlinks<W: AsyncWrite + Unpin>(
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
