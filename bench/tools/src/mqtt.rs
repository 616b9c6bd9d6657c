//! A bare MQTT 3.1.1 client over one TCP connection, with rumqttc's packet codec: CONNECT,
//! SUBSCRIBE, then a writer that sends many PUBLISH packets per syscall and a reader that hands
//! PUBACKs and incoming PUBLISHes to a callback. No retries, no session: a benchmark device.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Packet, PingReq, Publish, Subscribe};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Largest packet accepted from the broker.
const MAX_PACKET: usize = 1 << 20;
/// Time allowed for CONNACK and SUBACK.
const HANDSHAKE: Duration = Duration::from_secs(20);
/// Keep-alive asked for; the writer pings when it has sent nothing for a third of it.
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// An open connection: CONNACK (and SUBACK) received.
pub struct Connection {
    /// The read half, with whatever was read past the handshake.
    pub reader: Reader,
    /// The write half.
    pub writer: Writer,
}

/// The read half of a connection.
pub struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
}

/// The write half of a connection, with a reusable buffer.
pub struct Writer {
    half: OwnedWriteHalf,
    buf: BytesMut,
    next_pkid: u16,
}

/// Maps a QoS number.
pub fn qos(n: u8) -> anyhow::Result<QoS> {
    match n {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        _ => bail!("QoS {n} is not supported (0 or 1)"),
    }
}

/// Connects as `client_id` (clean session) and subscribes to `subscribe` at QoS 0, if given.
pub async fn connect(
    addr: SocketAddr,
    client_id: &str,
    subscribe: &[String],
) -> anyhow::Result<Connection> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the broker at {addr}"))?;
    stream.set_nodelay(true)?;
    let (half, write_half) = stream.into_split();
    let mut reader = Reader {
        half,
        buf: BytesMut::with_capacity(16 << 10),
    };
    let mut writer = Writer {
        half: write_half,
        buf: BytesMut::with_capacity(64 << 10),
        next_pkid: 1,
    };
    let mut connect = Connect::new(client_id);
    connect.keep_alive = KEEP_ALIVE.as_secs() as u16;
    connect.clean_session = true;
    connect.write(&mut writer.buf).map_err(codec)?;
    writer.flush().await?;
    match tokio::time::timeout(HANDSHAKE, reader.next()).await {
        Ok(Ok(Packet::ConnAck(ack))) if ack.code == rumqttc::ConnectReturnCode::Success => {}
        Ok(Ok(other)) => bail!("{client_id}: expected a successful CONNACK, got {other:?}"),
        Ok(Err(e)) => return Err(e.context(format!("{client_id}: waiting for CONNACK"))),
        Err(_) => bail!("{client_id}: no CONNACK within {HANDSHAKE:?}"),
    }
    if !subscribe.is_empty() {
        let filters = subscribe
            .iter()
            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtMostOnce));
        let mut sub = Subscribe::new_many(filters);
        sub.pkid = 1;
        sub.write(&mut writer.buf).map_err(codec)?;
        writer.flush().await?;
        let deadline = tokio::time::Instant::now() + HANDSHAKE;
        loop {
            match tokio::time::timeout_at(deadline, reader.next()).await {
                Ok(Ok(Packet::SubAck(_))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.context(format!("{client_id}: waiting for SUBACK"))),
                Err(_) => bail!("{client_id}: no SUBACK within {HANDSHAKE:?}"),
            }
        }
    }
    Ok(Connection { reader, writer })
}

fn codec(e: CodecError) -> anyhow::Error {
    anyhow::anyhow!("MQTT codec: {e:?}")
}

impl Reader {
    /// The next packet from the broker.
    pub async fn next(&mut self) -> anyhow::Result<Packet> {
        loop {
            match Packet::read(&mut self.buf, MAX_PACKET) {
                Ok(packet) => return Ok(packet),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(e) => return Err(codec(e)),
            }
            self.buf.reserve(16 << 10);
            let n = self.half.read_buf(&mut self.buf).await?;
            if n == 0 {
                bail!("the broker closed the connection");
            }
        }
    }
}

impl Writer {
    /// Appends a PUBLISH of `payload` on `topic` to the buffer (sent by [`Writer::flush`]).
    pub fn publish(&mut self, topic: &str, qos: QoS, payload: &[u8]) -> anyhow::Result<()> {
        let mut publish = Publish::new(topic, qos, payload.to_vec());
        if qos != QoS::AtMostOnce {
            publish.pkid = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        }
        publish.write(&mut self.buf).map_err(codec)?;
        Ok(())
    }

    /// Nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends a PINGREQ.
    pub fn ping(&mut self) -> anyhow::Result<()> {
        PingReq.write(&mut self.buf).map_err(codec)?;
        Ok(())
    }

    /// Sends what is buffered.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            self.half.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Closes the connection with a DISCONNECT.
    pub async fn disconnect(mut self) {
        self.buf.clear();
        // DISCONNECT: fixed header 0xE0, remaining length 0.
        let _ = self.half.write_all(&[0xE0, 0x00]).await;
        let _ = self.half.shutdown().await;
    }
}
