//! One connection of a device to the hub: an MQTT session (JSON or binary payloads) or an open
//! serial port. A [`Link`] is opened, used and closed; the device opens a new one to reconnect.
//!
//! A background task per link reads what the hub says and reports it as [`LinkEvent`]s on an
//! unbounded channel, so it never waits for the device (and the device, which may wait on the
//! link while sending, can never deadlock with it):
//!
//! - MQTT: the task alone polls rumqttc's event loop (polling is not cancel-safe, so it is never
//!   raced against anything). On every ConnAck it subscribes to the device's ack and command
//!   topics (`devices/{id}/ack` and `devices/{id}/commands` for JSON, `devices/{id}/down` for
//!   binary) before it reports [`LinkEvent::Up`], so the subscriptions are queued ahead of every
//!   publish of the session. The
//!   session is clean and the link is never reconnected in place: a new link means a new client
//!   and event loop, so nothing queued for an old connection is replayed ahead of the device's
//!   own oldest-first retransmission.
//! - Serial: the task reads the port and decodes [`Downlink`] frames. The port is reported up as
//!   soon as it is open. Every frame the device writes goes after a 0x00 (see `device_protocol::frame`),
//!   so line noise before it costs at most itself.
//!
//! What the hub says about readings comes as [`LinkEvent::Rejected`], [`LinkEvent::GaveUp`] and
//! [`LinkEvent::Ack`], in that order: from a binary device's `Downlink`s, or from the one JSON ack
//! that holds all three.
//!
//! Commands are passed on as their payload bytes ([`LinkEvent::Command`]), for
//! [`crate::commands`]; the answers go back with [`Link::send_reply`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use device_protocol::json::JsonAck;
use device_protocol::{Downlink, FeedResult, FrameDecoder, MAX_FRAME_LEN, Uplink, encode_frame};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_serial::{SerialPortBuilderExt, SerialStream};

use crate::faults::Noise;
use crate::sensors::telemetry_json;

/// Longest wait for one send before the link is taken for dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a device talks to the hub.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// An MQTT broker: JSON on `devices/{id}/telemetry` or postcard on `devices/{id}/up`.
    Mqtt {
        host: String,
        port: u16,
        qos: QoS,
        binary: bool,
    },
    /// A serial port (or a pty).
    Serial { path: PathBuf, baud: u32 },
}

/// What the hub said, or what happened to the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Connected (MQTT: ConnAck received and the subscription queued; serial: port open).
    Up,
    /// The hub's cumulative ack for the readings of `boot`.
    Ack { seq: u32, boot: Option<u32> },
    /// The hub refused the reading `seq` of `boot` for its content: it will never be stored.
    Rejected {
        seq: u32,
        boot: Option<u32>,
        reason: String,
    },
    /// The hub stopped waiting for these seqs of `boot` (inclusive ranges).
    GaveUp {
        boot: Option<u32>,
        ranges: Vec<(u32, u32)>,
    },
    /// The hub's clock, unix milliseconds.
    TimeSync(u64),
    /// A command: the JSON payload of `devices/{id}/commands`, or the postcard bytes of a
    /// `Downlink::Command`.
    Command(Vec<u8>),
    /// The link is gone; the device opens a new one.
    Down(String),
}

/// An open link.
pub struct Link {
    events: mpsc::UnboundedReceiver<LinkEvent>,
    task: JoinHandle<()>,
    io: Io,
}

enum Io {
    Mqtt {
        client: AsyncClient,
        topic: String,
        /// Where command results go: `devices/{id}/command-results` (JSON) or the uplink topic.
        results_topic: String,
        qos: QoS,
        binary: bool,
    },
    Serial {
        writer: WriteHalf<SerialStream>,
        buf: Vec<u8>,
    },
}

impl Link {
    /// Starts connecting device `id` to `endpoint`. For MQTT this returns at once and the
    /// connection is reported by [`LinkEvent::Up`] (or `Down`); a serial port is opened here.
    pub fn open(endpoint: &Endpoint, id: &str) -> anyhow::Result<Link> {
        let (tx, events) = mpsc::unbounded_channel();
        match endpoint {
            Endpoint::Mqtt {
                host,
                port,
                qos,
                binary,
            } => {
                let mut options = MqttOptions::new(id, host.clone(), *port);
                options
                    .set_clean_session(true)
                    .set_keep_alive(Duration::from_secs(15))
                    .set_inflight(100);
                let (client, eventloop) = AsyncClient::new(options, 256);
                let topics = Topics::new(id, *binary);
                let (up, results_topic) = (topics.up.clone(), topics.results.clone());
                let task = tokio::spawn(poll_mqtt(eventloop, client.clone(), topics, tx));
                Ok(Link {
                    events,
                    task,
                    io: Io::Mqtt {
                        client,
                        topic: up,
                        results_topic,
                        qos: *qos,
                        binary: *binary,
                    },
                })
            }
            Endpoint::Serial { path, baud } => {
                let port = tokio_serial::new(path.to_string_lossy(), *baud)
                    .open_native_async()
                    .with_context(|| format!("opening {}", path.display()))?;
                let (reader, writer) = tokio::io::split(port);
                let _ = tx.send(LinkEvent::Up);
                let task = tokio::spawn(read_serial(reader, tx));
                Ok(Link {
                    events,
                    task,
                    io: Io::Serial {
                        writer,
                        buf: Vec::with_capacity(MAX_FRAME_LEN * 2),
                    },
                })
            }
        }
    }

    /// The next event; `Down` once the link's task has ended.
    pub async fn next_event(&mut self) -> LinkEvent {
        self.events
            .recv()
            .await
            .unwrap_or_else(|| LinkEvent::Down("the link's task ended".into()))
    }

    /// True if this link speaks the binary protocol, which starts with a `Hello`.
    pub fn says_hello(&self) -> bool {
        match &self.io {
            Io::Mqtt { binary, .. } => *binary,
            Io::Serial { .. } => true,
        }
    }

    /// Sends one uplink message given as its postcard bytes (JSON links send telemetry only, as
    /// its JSON envelope). `noise` dresses serial frames.
    pub async fn send(&mut self, message: &[u8], noise: &mut Noise) -> anyhow::Result<()> {
        match &mut self.io {
            Io::Mqtt {
                client,
                topic,
                qos,
                binary,
                ..
            } => {
                let payload = if *binary {
                    message.to_vec()
                } else {
                    telemetry_json(message)?
                };
                let publish = client.publish(topic.as_str(), *qos, false, payload);
                match tokio::time::timeout(SEND_TIMEOUT, publish).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => bail!("publish: {e}"),
                    Err(_) => bail!("publish: no room for {} s", SEND_TIMEOUT.as_secs()),
                }
            }
            Io::Serial { writer, buf } => write_frame(writer, buf, message, noise).await,
        }
    }

    /// Sends the answer to a command, as [`crate::commands::Commands`] made it: JSON to
    /// `devices/{id}/command-results`, postcard bytes to `devices/{id}/up` or as a serial frame.
    /// Always QoS 1 on MQTT.
    pub async fn send_reply(&mut self, reply: &[u8], noise: &mut Noise) -> anyhow::Result<()> {
        match &mut self.io {
            Io::Mqtt {
                client,
                results_topic,
                ..
            } => {
                let publish = client.publish(
                    results_topic.as_str(),
                    QoS::AtLeastOnce,
                    false,
                    reply.to_vec(),
                );
                match tokio::time::timeout(SEND_TIMEOUT, publish).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => bail!("publish: {e}"),
                    Err(_) => bail!("publish: no room for {} s", SEND_TIMEOUT.as_secs()),
                }
            }
            Io::Serial { writer, buf } => write_frame(writer, buf, reply, noise).await,
        }
    }

    /// Drops the connection at once (no MQTT DISCONNECT) and waits until it is closed.
    pub async fn close(self) {
        self.task.abort();
        let _ = self.task.await;
        drop(self.io);
    }

    /// Ends the connection politely (MQTT DISCONNECT), then closes it.
    pub async fn close_gracefully(self) {
        if let Io::Mqtt { client, .. } = &self.io
            && client.try_disconnect().is_ok()
        {
            let mut task = self.task;
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
            return;
        }
        self.close().await;
    }
}

/// Writes one uplink message, given as its postcard bytes, as a frame on a serial line.
async fn write_frame(
    writer: &mut WriteHalf<SerialStream>,
    buf: &mut Vec<u8>,
    message: &[u8],
    noise: &mut Noise,
) -> anyhow::Result<()> {
    let uplink = Uplink::decode(message).context("an invalid uplink message")?;
    let mut frame = [0u8; MAX_FRAME_LEN + 1];
    let len = encode_frame(&uplink, &mut frame).map_err(|e| anyhow::anyhow!("framing: {e}"))?;
    buf.clear();
    noise.dress(&frame[..len], buf);
    match tokio::time::timeout(SEND_TIMEOUT, writer.write_all(buf)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!("write: {e}"),
        Err(_) => bail!("write: blocked for {} s", SEND_TIMEOUT.as_secs()),
    }
}

/// The MQTT topics of a device.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Telemetry (and, binary, the Hello and command results).
    pub up: String,
    /// Acks and time syncs (and, binary, commands).
    pub down: String,
    /// JSON commands (`None` for binary: they come on `down`).
    pub commands: Option<String>,
    /// Where command results go.
    pub results: String,
    pub binary: bool,
}

impl Topics {
    pub fn new(id: &str, binary: bool) -> Self {
        if binary {
            Topics {
                up: format!("devices/{id}/up"),
                down: format!("devices/{id}/down"),
                commands: None,
                results: format!("devices/{id}/up"),
                binary,
            }
        } else {
            Topics {
                up: format!("devices/{id}/telemetry"),
                down: format!("devices/{id}/ack"),
                commands: Some(format!("devices/{id}/commands")),
                results: format!("devices/{id}/command-results"),
                binary,
            }
        }
    }

    /// Queues the subscriptions to what the hub says (QoS 1).
    pub fn subscribe(&self, client: &AsyncClient) -> Result<(), rumqttc::ClientError> {
        client.try_subscribe(self.down.as_str(), QoS::AtLeastOnce)?;
        if let Some(commands) = &self.commands {
            client.try_subscribe(commands.as_str(), QoS::AtLeastOnce)?;
        }
        Ok(())
    }

    /// The events of a publish the hub sent on one of these topics (none if it is not one).
    pub fn events(&self, topic: &str, payload: &[u8]) -> Vec<LinkEvent> {
        if topic == self.down {
            parse_down(payload, self.binary)
        } else if self.commands.as_deref() == Some(topic) {
            vec![LinkEvent::Command(payload.to_vec())]
        } else {
            Vec::new()
        }
    }
}

/// The link task of an MQTT session: the only poller of its event loop.
async fn poll_mqtt(
    mut eventloop: EventLoop,
    client: AsyncClient,
    topics: Topics,
    tx: mpsc::UnboundedSender<LinkEvent>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // Queued before anything the device publishes on this session.
                if let Err(e) = topics.subscribe(&client) {
                    let _ = tx.send(LinkEvent::Down(format!("subscribe: {e}")));
                    return;
                }
                let _ = tx.send(LinkEvent::Up);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                for event in topics.events(&publish.topic, &publish.payload) {
                    let _ = tx.send(event);
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                let _ = tx.send(LinkEvent::Down("disconnected".into()));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(LinkEvent::Down(e.to_string()));
                return;
            }
        }
    }
}

/// What a payload on the down (or JSON ack) topic says: an ack (with what it passes, see the
/// module docs), a time sync or a command (binary); anything else is ignored.
fn parse_down(payload: &[u8], binary: bool) -> Vec<LinkEvent> {
    if binary {
        return downlink_event(payload).into_iter().collect();
    }
    let Ok(ack) = serde_json::from_slice::<JsonAck>(payload) else {
        return Vec::new();
    };
    let mut events = Vec::new();
    if let Some(rejected) = ack.rejected {
        events.push(LinkEvent::Rejected {
            seq: rejected.seq,
            boot: ack.boot,
            reason: rejected.reason,
        });
    }
    if !ack.gave_up.is_empty() {
        events.push(LinkEvent::GaveUp {
            boot: ack.boot,
            ranges: ack
                .gave_up
                .iter()
                .map(|[first, last]| (*first, *last))
                .collect(),
        });
    }
    events.push(LinkEvent::Ack {
        seq: ack.seq,
        boot: ack.boot,
    });
    events
}

fn downlink_event(payload: &[u8]) -> Option<LinkEvent> {
    match Downlink::decode(payload).ok()? {
        Downlink::Ack(ack) => Some(LinkEvent::Ack {
            seq: ack.seq,
            boot: ack.boot,
        }),
        Downlink::TimeSync(sync) => Some(LinkEvent::TimeSync(sync.unix_ms)),
        Downlink::Command(_) => Some(LinkEvent::Command(payload.to_vec())),
        Downlink::Rejected(rejected) => Some(LinkEvent::Rejected {
            seq: rejected.seq,
            boot: rejected.boot,
            reason: rejected.reason.to_owned(),
        }),
        Downlink::GaveUp(gave_up) => Some(LinkEvent::GaveUp {
            boot: gave_up.boot,
            ranges: gave_up.ranges.iter().map(|r| (r.first, r.last)).collect(),
        }),
    }
}

/// The link task of a serial port: reads frames until the port fails.
async fn read_serial(mut reader: ReadHalf<SerialStream>, tx: mpsc::UnboundedSender<LinkEvent>) {
    let mut decoder = FrameDecoder::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) => {
                let _ = tx.send(LinkEvent::Down("end of file on the port".into()));
                return;
            }
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(LinkEvent::Down(format!("read: {e}")));
                return;
            }
        };
        let mut input = &chunk[..n];
        loop {
            match decoder.feed(input) {
                FeedResult::Consumed => break,
                FeedResult::Frame { payload, remaining } => {
                    if let Some(event) = downlink_event(payload) {
                        let _ = tx.send(event);
                    }
                    input = remaining;
                }
                FeedResult::Dropped { remaining, .. } => input = remaining,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use device_protocol::{Ack, TimeSync};

    use super::*;

    #[test]
    fn commands_are_passed_on_from_their_topics() {
        let json = Topics::new("d", false);
        let cmd = br#"{"id":1,"name":"echo"}"#;
        assert_eq!(
            json.events("devices/d/commands", cmd),
            vec![LinkEvent::Command(cmd.to_vec())]
        );
        assert_eq!(
            json.events("devices/d/ack", br#"{"seq":3}"#),
            vec![LinkEvent::Ack { seq: 3, boot: None }]
        );
        assert_eq!(json.events("devices/x/commands", cmd), vec![]);
        assert_eq!(json.results, "devices/d/command-results");

        let binary = Topics::new("d", true);
        let down = Downlink::Command(device_protocol::Command {
            command_id: 5,
            name: "echo",
            args: device_protocol::Fields::new(),
        })
        .to_vec()
        .unwrap();
        assert_eq!(
            binary.events("devices/d/down", &down),
            vec![LinkEvent::Command(down.clone())]
        );
        assert_eq!(binary.events("devices/d/commands", cmd), vec![]);
        assert_eq!(binary.results, "devices/d/up");
    }

    #[test]
    fn acks_and_time_syncs_are_understood_and_the_rest_ignored() {
        assert_eq!(
            parse_down(br#"{"seq":41}"#, false),
            vec![LinkEvent::Ack {
                seq: 41,
                boot: None
            }]
        );
        assert_eq!(parse_down(br#"{"id":1,"name":"x"}"#, false), vec![]);
        // What the ack passes comes first.
        assert_eq!(
            parse_down(
                br#"{"seq":9,"boot":2,"rejected":{"seq":1,"reason":"long"},"gave_up":[[3,4]]}"#,
                false
            ),
            vec![
                LinkEvent::Rejected {
                    seq: 1,
                    boot: Some(2),
                    reason: "long".into()
                },
                LinkEvent::GaveUp {
                    boot: Some(2),
                    ranges: vec![(3, 4)]
                },
                LinkEvent::Ack {
                    seq: 9,
                    boot: Some(2)
                },
            ]
        );
        let ack = Downlink::Ack(Ack {
            seq: 9,
            boot: Some(2),
        })
        .to_vec()
        .unwrap();
        assert_eq!(
            parse_down(&ack, true),
            vec![LinkEvent::Ack {
                seq: 9,
                boot: Some(2)
            }]
        );
        let rejected = Downlink::Rejected(device_protocol::Rejected {
            seq: 1,
            boot: None,
            reason: "bad",
        })
        .to_vec()
        .unwrap();
        assert_eq!(
            parse_down(&rejected, true),
            vec![LinkEvent::Rejected {
                seq: 1,
                boot: None,
                reason: "bad".into()
            }]
        );
        let sync = Downlink::TimeSync(TimeSync { unix_ms: 5 })
            .to_vec()
            .unwrap();
        assert_eq!(parse_down(&sync, true), vec![LinkEvent::TimeSync(5)]);
        assert_eq!(parse_down(b"", true), vec![]);
    }
}
