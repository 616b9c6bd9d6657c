//! MQTT packets on a byte stream, framed with rumqttc's codecs: whole packets in, each at most a
//! set size, from any split of the stream; packets out, gathered and written in one go.
//!
//! A connection speaks MQTT 3.1.1 or 5, as its CONNECT says. The rest of the endpoint sees one
//! shape either way: packets in as MQTT 3.1.1 ones (version 5's properties are not used, its
//! CONNECT keeps `Protocol::V5` and its session expiry decides the clean flag), and what the hub
//! sends as [`Outbound`], written in the connection's version.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{self, Packet};
use rumqttc::mqttbytes::{Error as MqttError, Protocol, QoS};
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why reading or writing packets failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not MQTT, or larger than allowed.
    #[error("malformed or oversized MQTT packet: {0}")]
    Protocol(MqttError),
    /// Not MQTT 5, or larger than allowed.
    #[error("malformed or oversized MQTT 5 packet: {0}")]
    Protocol5(rumqttc::v5::mqttbytes::Error),
    /// An MQTT 5 feature the endpoint does not take (topic aliases, AUTH).
    #[error("MQTT 5 {0} is not supported")]
    Unsupported(&'static str),
    /// The peer closed inside a packet.
    #[error("the stream ended inside a packet")]
    Truncated,
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The MQTT version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

impl WireError {
    /// Whether the peer sent a packet larger than allowed.
    pub fn is_oversized(&self) -> bool {
        matches!(
            self,
            WireError::Protocol(MqttError::PayloadSizeLimitExceeded(_))
                | WireError::Protocol5(
                    rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }
                )
        )
    }
}

/// Most bytes asked of the socket in one read: under load the socket always has more, and a buffer
/// that grew to whatever the kernel held would stay that large for every connection.
const MAX_READ_CHUNK: usize = 4 << 10;
/// Fewest bytes asked of the socket in one read, and where a connection starts. Most connections
/// carry one device's few small messages at a time: 1000 of them reading 4 KiB each held 4 MB of
/// the hub's heap at a load's peak. A connection whose reads fill what they ask asks for more.
const MIN_READ_CHUNK: usize = 512;

/// Reads whole MQTT packets from one side of a connection, each at most `max_packet` long.
pub struct PacketReader<R> {
    io: R,
    buf: BytesMut,
    /// Bytes asked of the socket in the next read, between [`MIN_READ_CHUNK`] and
    /// [`MAX_READ_CHUNK`]: doubled after a read that filled it, halved after one that brought less
    /// than a quarter of it.
    chunk: usize,
    max_packet: usize,
    version: Option<Version>,
}

/// Bytes of a CONNECT up to its protocol level: type, up to 4 of remaining length, the protocol
/// name "MQTT" with its length, the level.
const CONNECT_HEAD: usize = 1 + 4 + 2 + 4 + 1;

/// The protocol level of the CONNECT at the start of `buf`, if enough of it is there; `Some(0)`
/// when it is not a CONNECT (the 3.1.1 reader then says what is wrong).
fn connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first().is_some_and(|b| b >> 4 != 1) {
        return Some(0);
    }
    // The remaining length: 1 to 4 bytes, the high bit saying another follows.
    let length_bytes = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    buf.get(1 + length_bytes + 2 + 4).copied()
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// Reads from `io`.
    pub fn new(io: R, max_packet: usize) -> Self {
        PacketReader {
            io,
            buf: BytesMut::with_capacity(2 * MIN_READ_CHUNK),
            chunk: MIN_READ_CHUNK,
            max_packet,
            version: None,
        }
    }

    /// The version the connection speaks, once its CONNECT was read.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// The next packet, or `None` when the stream ends between packets. Cancel-safe: what was
    /// read stays in the buffer.
    pub async fn next(&mut self) -> Result<Option<Packet>, WireError> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(Some(packet));
            }
            self.make_room(self.chunk);
            let read = self
                .io
                .read_buf(&mut bytes::BufMut::limit(&mut self.buf, self.chunk))
                .await?;
            self.chunk = next_chunk(self.chunk, read);
            if read == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(WireError::Truncated)
                };
            }
        }
    }

    /// Makes room for `bytes` more in the buffer: its own room reclaimed if no packet still
    /// holds it, else a fresh buffer of what is needed with the unread bytes (part of one
    /// packet) copied over. `reserve` doubles a buffer it cannot reclaim in place, and under load
    /// that grew each connection's to 16 KiB: 8.9 MB of heap at the peak of 1000 connections.
    fn make_room(&mut self, bytes: usize) {
        if self.buf.capacity() - self.buf.len() >= bytes || self.buf.try_reclaim(bytes) {
            return;
        }
        let mut fresh = BytesMut::with_capacity(self.buf.len() + bytes);
        fresh.extend_from_slice(&self.buf);
        self.buf = fresh;
    }

    /// The next packet if it is whole in what was already read; never reads the stream. Lets a
    /// connection take a burst of publishes from one read in one go.
    pub fn buffered(&mut self) -> Result<Option<Packet>, WireError> {
        // Everything read was taken: a buffer a large packet made large is not kept. (Packets
        // share the buffer's memory, so a fresh one also lets the old go with its last packet.)
        if self.buf.is_empty() && self.buf.capacity() > 2 * self.chunk.max(2 * MIN_READ_CHUNK) {
            self.buf = BytesMut::with_capacity(self.chunk);
        }
        if self.version.is_none() {
            match connect_level(&self.buf) {
                Some(5) => self.version = Some(Version::V5),
                Some(_) => self.version = Some(Version::V4),
                None if self.buf.len() >= CONNECT_HEAD => self.version = Some(Version::V4),
                None => {}
            }
        }
        match self.version {
            Some(Version::V4) => match Packet::read(&mut self.buf, self.max_packet) {
                Ok(packet) => Ok(Some(packet)),
                // `read` checks the announced length against `max_packet` before asking for more.
                Err(MqttError::InsufficientBytes(more)) => {
                    self.make_room(more);
                    Ok(None)
                }
                Err(e) => Err(WireError::Protocol(e)),
            },
            Some(Version::V5) => {
                // A DISCONNECT without a reason code (remaining length 0), which rumqttc's
                // reader refuses, though MQTT 5 allows it (3.14.2.1).
                if self.buf.starts_with(&[0xE0, 0x00]) {
                    let _ = self.buf.split_to(2);
                    return Ok(Some(Packet::Disconnect));
                }
                match v5::Packet::read(&mut self.buf, Some(self.max_packet as u32)) {
                    Ok(packet) => from_v5(packet).map(Some),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(more)) => {
                        self.make_room(more);
                        Ok(None)
                    }
                    Err(e) => Err(WireError::Protocol5(e)),
                }
            }
            None => Ok(None),
        }
    }
}

/// The bytes to ask of the socket after a read of `chunk` brought `read`.
fn next_chunk(chunk: usize, read: usize) -> usize {
    if read >= chunk {
        (chunk * 2).min(MAX_READ_CHUNK)
    } else if read < chunk / 4 {
        (chunk / 2).max(MIN_READ_CHUNK)
    } else {
        chunk
    }
}

/// The same QoS in rumqttc's MQTT 3.1.1 type.
fn qos4(qos: rumqttc::v5::mqttbytes::QoS) -> QoS {
    match qos {
        rumqttc::v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// The same QoS in rumqttc's MQTT 5 type.
fn qos5(qos: QoS) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// An MQTT 5 packet in the shape of its MQTT 3.1.1 counterpart.
fn from_v5(packet: v5::Packet) -> Result<Packet, WireError> {
    let utf8 = |bytes: bytes::Bytes| {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| WireError::Protocol5(rumqttc::v5::mqttbytes::Error::TopicNotUtf8))
    };
    Ok(match packet {
        v5::Packet::Connect(connect, will, login) => {
            // A session outlives its connection only with an expiry interval (MQTT 5 3.1.2.11.2).
            let expiry = connect
                .properties
                .as_ref()
                .and_then(|p| p.session_expiry_interval)
                .unwrap_or(0);
            let last_will = match will {
                Some(will) => Some(v4::LastWill {
                    topic: utf8(will.topic)?,
                    message: will.message,
                    qos: qos4(will.qos),
                    retain: will.retain,
                }),
                None => None,
            };
            Packet::Connect(v4::Connect {
                protocol: Protocol::V5,
                keep_alive: connect.keep_alive,
                client_id: connect.client_id,
                clean_session: connect.clean_start || expiry == 0,
                last_will,
                login: login.map(|l| v4::Login {
                    username: l.username,
                    password: l.password,
                }),
            })
        }
        v5::Packet::Publish(publish) => {
            if publish.topic.is_empty()
                || publish
                    .properties
                    .as_ref()
                    .is_some_and(|p| p.topic_alias.is_some())
            {
                // CONNACK offers no aliases (Topic Alias Maximum 0), so a client must not use one.
                return Err(WireError::Unsupported("topic aliases"));
            }
            Packet::Publish(v4::Publish {
                dup: publish.dup,
                qos: qos4(publish.qos),
                retain: publish.retain,
                topic: utf8(publish.topic)?,
                pkid: publish.pkid,
                payload: publish.payload,
            })
        }
        v5::Packet::PubAck(ack) => Packet::PubAck(v4::PubAck::new(ack.pkid)),
        v5::Packet::PubRec(rec) => Packet::PubRec(v4::PubRec::new(rec.pkid)),
        v5::Packet::PubRel(rel) => Packet::PubRel(v4::PubRel::new(rel.pkid)),
        v5::Packet::PubComp(comp) => Packet::PubComp(v4::PubComp::new(comp.pkid)),
        v5::Packet::Subscribe(subscribe) => Packet::Subscribe(v4::Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe
                .filters
                .into_iter()
                .map(|f| v4::SubscribeFilter::new(f.path, qos4(f.qos)))
                .collect(),
        }),
        v5::Packet::Unsubscribe(unsubscribe) => Packet::Unsubscribe(v4::Unsubscribe {
            pkid: unsubscribe.pkid,
            topics: unsubscribe.filters,
        }),
        v5::Packet::PingReq(_) => Packet::PingReq,
        v5::Packet::PingResp(_) => Packet::PingResp,
        v5::Packet::Disconnect(_) => Packet::Disconnect,
        v5::Packet::ConnAck(_) => {
            Packet::ConnAck(v4::ConnAck::new(v4::ConnectReturnCode::Success, false))
        }
        v5::Packet::SubAck(ack) => Packet::SubAck(v4::SubAck::new(ack.pkid, Vec::new())),
        v5::Packet::UnsubAck(ack) => Packet::UnsubAck(v4::UnsubAck::new(ack.pkid)),
        v5::Packet::Auth(_) => return Err(WireError::Unsupported("AUTH")),
    })
}

/// What the hub sends a client, in either version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// The answer to CONNECT.
    ConnAck {
        /// Accepted, or why not.
        code: v4::ConnectReturnCode,
        /// Whether an earlier session was resumed.
        session_present: bool,
        /// The client id the hub chose for a client that gave none (MQTT 5 says it).
        assigned_id: Option<String>,
        /// Most QoS 1 and 2 publishes the client may have unacknowledged (MQTT 5 says it).
        receive_max: u16,
    },
    /// QoS 1 publish stored.
    PubAck(u16),
    /// QoS 2 publish stored.
    PubRec(u16),
    /// Answer to a PUBREC of a QoS 2 downlink.
    PubRel(u16),
    /// QoS 2 exchange over.
    PubComp(u16),
    /// Answer to SUBSCRIBE: the QoS granted to each filter, or `None` where refused.
    SubAck {
        /// Its packet id.
        pkid: u16,
        /// Per filter, in order.
        granted: Vec<Option<QoS>>,
    },
    /// Answer to UNSUBSCRIBE of `count` filters.
    UnsubAck {
        /// Its packet id.
        pkid: u16,
        /// Filters it named.
        count: usize,
    },
    /// Answer to PINGREQ.
    PingResp,
    /// A downlink.
    Publish(v4::Publish),
}

impl Outbound {
    fn v4(&self) -> Packet {
        match self {
            Outbound::ConnAck {
                code,
                session_present,
                ..
            } => Packet::ConnAck(v4::ConnAck::new(*code, *session_present)),
            Outbound::PubAck(pkid) => Packet::PubAck(v4::PubAck::new(*pkid)),
            Outbound::PubRec(pkid) => Packet::PubRec(v4::PubRec::new(*pkid)),
            Outbound::PubRel(pkid) => Packet::PubRel(v4::PubRel::new(*pkid)),
            Outbound::PubComp(pkid) => Packet::PubComp(v4::PubComp::new(*pkid)),
            Outbound::SubAck { pkid, granted } => Packet::SubAck(v4::SubAck::new(
                *pkid,
                granted
                    .iter()
                    .map(|g| match g {
                        Some(qos) => v4::SubscribeReasonCode::Success(*qos),
                        None => v4::SubscribeReasonCode::Failure,
                    })
                    .collect(),
            )),
            Outbound::UnsubAck { pkid, .. } => Packet::UnsubAck(v4::UnsubAck::new(*pkid)),
            Outbound::PingResp => Packet::PingResp,
            Outbound::Publish(publish) => Packet::Publish(publish.clone()),
        }
    }

    fn v5(&self) -> v5::Packet {
        match self {
            Outbound::ConnAck {
                code,
                session_present,
                assigned_id,
                receive_max,
            } => v5::Packet::ConnAck(v5::ConnAck {
                session_present: *session_present,
                code: match code {
                    v4::ConnectReturnCode::Success => v5::ConnectReturnCode::Success,
                    v4::ConnectReturnCode::RefusedProtocolVersion => {
                        v5::ConnectReturnCode::UnsupportedProtocolVersion
                    }
                    v4::ConnectReturnCode::BadClientId => {
                        v5::ConnectReturnCode::ClientIdentifierNotValid
                    }
                    v4::ConnectReturnCode::ServiceUnavailable => {
                        v5::ConnectReturnCode::ServerUnavailable
                    }
                    v4::ConnectReturnCode::BadUserNamePassword => {
                        v5::ConnectReturnCode::BadUserNamePassword
                    }
                    v4::ConnectReturnCode::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                },
                properties: Some(v5::ConnAckProperties {
                    session_expiry_interval: None,
                    receive_max: Some(*receive_max),
                    // The hub sends at most QoS 1 and keeps no retained messages.
                    max_qos: None,
                    retain_available: Some(0),
                    max_packet_size: None,
                    assigned_client_identifier: assigned_id.clone(),
                    topic_alias_max: None,
                    reason_string: None,
                    user_properties: Vec::new(),
                    wildcard_subscription_available: None,
                    subscription_identifiers_available: Some(0),
                    shared_subscription_available: Some(0),
                    server_keep_alive: None,
                    response_information: None,
                    server_reference: None,
                    authentication_method: None,
                    authentication_data: None,
                }),
            }),
            Outbound::PubAck(pkid) => v5::Packet::PubAck(v5::PubAck::new(*pkid, None)),
            Outbound::PubRec(pkid) => v5::Packet::PubRec(v5::PubRec::new(*pkid, None)),
            Outbound::PubRel(pkid) => v5::Packet::PubRel(v5::PubRel::new(*pkid, None)),
            Outbound::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp::new(*pkid, None)),
            Outbound::SubAck { pkid, granted } => v5::Packet::SubAck(v5::SubAck {
                pkid: *pkid,
                return_codes: granted
                    .iter()
                    .map(|g| match g {
                        Some(qos) => v5::SubscribeReasonCode::Success(qos5(*qos)),
                        None => v5::SubscribeReasonCode::NotAuthorized,
                    })
                    .collect(),
                properties: None,
            }),
            Outbound::UnsubAck { pkid, count } => v5::Packet::UnsubAck(v5::UnsubAck {
                pkid: *pkid,
                reasons: vec![v5::UnsubAckReason::Success; *count],
                properties: None,
            }),
            Outbound::PingResp => v5::Packet::PingResp(v5::PingResp),
            Outbound::Publish(publish) => v5::Packet::Publish(v5::Publish {
                dup: publish.dup,
                qos: qos5(publish.qos),
                retain: publish.retain,
                topic: bytes::Bytes::copy_from_slice(publish.topic.as_bytes()),
                pkid: publish.pkid,
                payload: publish.payload.clone(),
                properties: None,
            }),
        }
    }
}

/// Writes MQTT packets to one side of a connection: `push` gathers, `flush` writes them all.
pub struct PacketWriter<W> {
    io: W,
    buf: BytesMut,
    max_packet: usize,
    version: Version,
}

/// Gathered bytes past which `push` asks to flush, so a burst of acks goes out in few writes
/// without holding much memory per connection.
pub const FLUSH_AT: usize = 16 << 10;
/// A write buffer larger than this is given back after its flush.
const KEEP_WRITE_BUFFER: usize = 4 << 10;

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    /// Writes to `io`.
    pub fn new(io: W, max_packet: usize) -> Self {
        PacketWriter {
            io,
            buf: BytesMut::with_capacity(256),
            max_packet,
            version: Version::V4,
        }
    }

    /// Writes in `version` from now on.
    pub fn speak(&mut self, version: Version) {
        self.version = version;
    }

    /// Adds `packet` to what the next flush writes, in the connection's version.
    pub fn push(&mut self, packet: &Outbound) -> Result<(), WireError> {
        // The frame's size: its remaining length and at most 5 bytes of header.
        match self.version {
            Version::V4 => packet
                .v4()
                .write(&mut self.buf, self.max_packet + 5)
                .map(drop)
                .map_err(WireError::Protocol),
            Version::V5 => packet
                .v5()
                .write(&mut self.buf, Some(self.max_packet as u32 + 5))
                .map(drop)
                .map_err(WireError::Protocol5),
        }
    }

    /// Bytes gathered and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes what was gathered.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        if !self.buf.is_empty() {
            self.io.write_all(&self.buf).await?;
            self.buf.clear();
            // A large buffer (a burst of acks, a big downlink) is not kept for the connection's
            // life: a thousand connections would hold a thousand of them.
            if self.buf.capacity() > KEEP_WRITE_BUFFER {
                self.buf = BytesMut::with_capacity(256);
            }
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Writes one packet at once.
    pub async fn send(&mut self, packet: &Outbound) -> Result<(), WireError> {
        self.push(packet)?;
        self.flush().await
    }
}

#[cfg(test)]
mod tests;
