//! MQTT packets on a byte stream, framed with rumqttc's codec: whole packets in, each at most a
//! set size, from any split of the stream; packets out, gathered and written in one go.

use bytes::BytesMut;
use rumqttc::mqttbytes::Error as MqttError;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why reading or writing packets failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not MQTT 3.1.1, or larger than allowed.
    #[error("malformed or oversized MQTT packet: {0}")]
    Protocol(MqttError),
    /// The peer closed inside a packet.
    #[error("the stream ended inside a packet")]
    Truncated,
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads whole MQTT packets from one side of a connection, each at most `max_packet` long.
pub struct PacketReader<R> {
    io: R,
    buf: BytesMut,
    max_packet: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// Reads from `io`.
    pub fn new(io: R, max_packet: usize) -> Self {
        PacketReader {
            io,
            buf: BytesMut::with_capacity(1024),
            max_packet,
        }
    }

    /// The next packet, or `None` when the stream ends between packets. Cancel-safe: what was
    /// read stays in the buffer.
    pub async fn next(&mut self) -> Result<Option<Packet>, WireError> {
        loop {
            match Packet::read(&mut self.buf, self.max_packet) {
                Ok(packet) => return Ok(Some(packet)),
                // `read` checks the announced length against `max_packet` before asking for more.
                Err(MqttError::InsufficientBytes(more)) => self.buf.reserve(more),
                Err(e) => return Err(WireError::Protocol(e)),
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(WireError::Truncated)
                };
            }
        }
    }
}

/// Writes MQTT packets to one side of a connection: `push` gathers, `flush` writes them all.
pub struct PacketWriter<W> {
    io: W,
    buf: BytesMut,
    max_packet: usize,
}

/// Gathered bytes past which `push` asks to flush, so a burst of acks goes out in few writes
/// without holding much memory per connection.
pub const FLUSH_AT: usize = 16 << 10;

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    /// Writes to `io`.
    pub fn new(io: W, max_packet: usize) -> Self {
        PacketWriter {
            io,
            buf: BytesMut::with_capacity(256),
            max_packet,
        }
    }

    /// Adds `packet` to what the next flush writes.
    pub fn push(&mut self, packet: &Packet) -> Result<(), WireError> {
        // The frame's size: its remaining length and at most 5 bytes of header.
        packet
            .write(&mut self.buf, self.max_packet + 5)
            .map_err(WireError::Protocol)?;
        Ok(())
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
            // A large buffer (a big downlink) is not kept for the connection's life.
            if self.buf.capacity() > FLUSH_AT * 4 {
                self.buf = BytesMut::with_capacity(256);
            }
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Writes one packet at once.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), WireError> {
        self.push(packet)?;
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::QoS;

    /// Feeds packets to a reader split at every byte: the same packets come out.
    #[tokio::test]
    async fn packets_are_read_whole_from_any_split_and_oversized_ones_refused() {
        let mut wire = BytesMut::new();
        let mut publish = rumqttc::mqttbytes::v4::Publish::new(
            "devices/A/telemetry",
            QoS::AtLeastOnce,
            vec![7u8; 300],
        );
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
        assert!(matches!(small.next().await, Err(WireError::Protocol(_))));
        let mut cut = PacketReader::new(chunked(&[&wire[..10]]), 1024);
        assert!(matches!(cut.next().await, Err(WireError::Truncated)));
    }

    #[tokio::test]
    async fn gathered_packets_are_written_in_order_on_flush() {
        let mut out = Vec::new();
        let mut writer = PacketWriter::new(&mut out, 1024);
        writer
            .push(&Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(1)))
            .unwrap();
        writer.push(&Packet::PingResp).unwrap();
        assert!(writer.pending() > 0);
        writer.flush().await.unwrap();
        let mut reader = PacketReader::new(std::io::Cursor::new(out), 1024);
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(1)))
        );
        assert_eq!(reader.next().await.unwrap(), Some(Packet::PingResp));
        assert_eq!(reader.next().await.unwrap(), None);
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
