//! The wire's tests: packets of MQTT 3.1.1 and 5 read and written, limits, buffer sizes.

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
    assert!(small.next().await.is_err_and(|e| e.is_oversized()));
    let mut cut = PacketReader::new(chunked(&[&wire[..10]]), 1024);
    assert!(matches!(cut.next().await, Err(WireError::Truncated)));
}

#[tokio::test]
async fn gathered_packets_are_written_in_order_on_flush() {
    let mut out = Vec::new();
    let mut writer = PacketWriter::new(&mut out, 1024);
    writer.push(&Outbound::PubAck(1)).unwrap();
    writer.push(&Outbound::PingResp).unwrap();
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

#[tokio::test]
async fn mqtt_5_packets_are_read_in_the_shape_of_3_1_1_and_answers_written_in_5() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    let mut wire = BytesMut::new();
    let connect = v5::Connect {
        keep_alive: 30,
        client_id: "dev-5".into(),
        clean_start: false,
        properties: Some(v5::ConnectProperties {
            session_expiry_interval: Some(60),
            ..v5::ConnectProperties::new()
        }),
    };
    v5::Packet::Connect(connect, None, None)
        .write(&mut wire, None)
        .unwrap();
    let publish = v5::Publish::new("devices/dev-5/telemetry", QoS5::AtLeastOnce, "{}", None);
    let mut publish = publish;
    publish.pkid = 3;
    v5::Packet::Publish(publish).write(&mut wire, None).unwrap();
    // A DISCONNECT with no reason code: remaining length 0.
    wire.extend_from_slice(&[0xE0, 0x00]);
    let mut reader = PacketReader::new(chunked(&[&wire]), 1024);
    match reader.next().await.unwrap() {
        Some(Packet::Connect(c)) => {
            assert_eq!(c.protocol, Protocol::V5);
            assert_eq!(c.client_id, "dev-5");
            // A session with an expiry interval outlives its connection.
            assert!(!c.clean_session);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reader.version(), Some(Version::V5));
    match reader.next().await.unwrap() {
        Some(Packet::Publish(p)) => {
            assert_eq!((p.topic.as_str(), p.pkid), ("devices/dev-5/telemetry", 3));
            assert_eq!(p.qos, QoS::AtLeastOnce);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reader.next().await.unwrap(), Some(Packet::Disconnect));
    assert_eq!(reader.next().await.unwrap(), None);

    // The hub's answers, in MQTT 5.
    let mut out = Vec::new();
    let mut writer = PacketWriter::new(&mut out, 1024);
    writer.speak(Version::V5);
    writer
        .push(&Outbound::ConnAck {
            code: v4::ConnectReturnCode::Success,
            session_present: false,
            assigned_id: Some("auto".into()),
            receive_max: 1024,
        })
        .unwrap();
    writer.push(&Outbound::PubAck(3)).unwrap();
    writer
        .push(&Outbound::SubAck {
            pkid: 4,
            granted: vec![Some(QoS::AtLeastOnce), None],
        })
        .unwrap();
    writer.flush().await.unwrap();
    let mut bytes = BytesMut::from(&out[..]);
    match v5::Packet::read(&mut bytes, None).unwrap() {
        v5::Packet::ConnAck(ack) => {
            let props = ack.properties.unwrap();
            assert_eq!(props.receive_max, Some(1024));
            assert_eq!(props.assigned_client_identifier.as_deref(), Some("auto"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(v5::Packet::read(&mut bytes, None).unwrap(), v5::Packet::PubAck(a) if a.pkid == 3)
    );
    match v5::Packet::read(&mut bytes, None).unwrap() {
        v5::Packet::SubAck(ack) => assert_eq!(
            ack.return_codes,
            [
                v5::SubscribeReasonCode::Success(QoS5::AtLeastOnce),
                v5::SubscribeReasonCode::NotAuthorized
            ]
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_mqtt_5_topic_alias_is_refused() {
    let mut wire = BytesMut::new();
    let connect = v5::Connect {
        keep_alive: 30,
        client_id: "a".into(),
        clean_start: true,
        properties: None,
    };
    v5::Packet::Connect(connect, None, None)
        .write(&mut wire, None)
        .unwrap();
    let mut publish = v5::Publish::new(
        "devices/a/telemetry",
        rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        "{}",
        None,
    );
    publish.properties = Some(v5::PublishProperties {
        topic_alias: Some(1),
        ..Default::default()
    });
    v5::Packet::Publish(publish).write(&mut wire, None).unwrap();
    let mut reader = PacketReader::new(chunked(&[&wire]), 1024);
    assert!(matches!(reader.next().await, Ok(Some(Packet::Connect(_)))));
    assert!(matches!(
        reader.next().await,
        Err(WireError::Unsupported("topic aliases"))
    ));
}

/// A reader that returns `chunks` one read at a time.
fn chunked(chunks: &[&[u8]]) -> impl AsyncRead + Unpin + use<> {
    let mut reader: Box<dyn AsyncRead + Unpin> = Box::new(tokio::io::empty());
    for chunk in chunks {
        reader = Box::new(reader.chain(std::io::Cursor::new(chunk.to_vec())));
    }
    reader
}

#[test]
fn read_chunk_grows_with_full_reads_and_shrinks_with_small_ones() {
    let mut chunk = MIN_READ_CHUNK;
    for _ in 0..10 {
        chunk = next_chunk(chunk, chunk);
    }
    assert_eq!(chunk, MAX_READ_CHUNK);
    // A read of half keeps it; one of under a quarter halves it, never below the least.
    assert_eq!(next_chunk(chunk, chunk / 2), chunk);
    assert_eq!(next_chunk(chunk, 100), chunk / 2);
    for _ in 0..10 {
        chunk = next_chunk(chunk, 1);
    }
    assert_eq!(chunk, MIN_READ_CHUNK);
}

/// A stream of publishes that never pauses, read as a socket gives them, the packets dropped at
/// once or held a while as a connection does: the buffer stays one read plus the unread part of a
/// packet. `reserve` doubled it (8,116 bytes here; up to 16 KiB on a loaded hub).
#[tokio::test]
async fn the_read_buffer_stays_one_read_large_under_a_steady_stream() {
    let mut wire = BytesMut::new();
    for pkid in 1..=2000u16 {
        let mut publish = rumqttc::mqttbytes::v4::Publish::new(
            "devices/meter-17/telemetry",
            QoS::AtLeastOnce,
            vec![7u8; 37 + usize::from(pkid % 50)],
        );
        publish.pkid = pkid;
        Packet::Publish(publish).write(&mut wire, 1 << 20).unwrap();
    }
    // As a socket gives them: whatever arrived, here pieces of 700 to 2,900 bytes.
    let pieces: Vec<&[u8]> = {
        let (mut rest, mut out, mut n) = (&wire[..], Vec::new(), 0usize);
        while !rest.is_empty() {
            let take = (700 + (n * 977) % 2200).min(rest.len());
            let (a, b) = rest.split_at(take);
            out.push(a);
            rest = b;
            n += 1;
        }
        out
    };
    for hold in [0, 1, 8, 64] {
        let mut most = 0;
        let mut reader = PacketReader::new(chunked(&pieces), 1024);
        let mut held = std::collections::VecDeque::new();
        while let Some(packet) = reader.next().await.unwrap() {
            held.push_back(packet);
            if held.len() > hold {
                held.pop_front();
            }
            most = most.max(reader.buf.capacity());
        }
        // Each packet here is under 150 bytes.
        assert!(
            most <= MAX_READ_CHUNK + 150,
            "holding {hold} packets, the buffer reached {most} bytes"
        );
    }
}
