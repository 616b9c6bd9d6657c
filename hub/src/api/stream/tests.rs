//! The connection loop driven over a fake socket under a paused clock: pings reach a slow
//! reader, the close frame goes before queued readings, a silent client is closed with a code.

use super::*;
use crate::live::LiveReading;
use serde_json::Value;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_util::sync::PollSender;

/// A socket made of two channels: what the client sends, and what the hub writes, taken by
/// a channel of `socket_room` messages (the kernel's buffers).
struct FakeSocket {
    incoming: mpsc::Receiver<Result<Message, String>>,
    outgoing: PollSender<Message>,
}

impl futures_util::Stream for FakeSocket {
    type Item = Result<Message, String>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx)
    }
}

impl futures_util::Sink<Message> for FakeSocket {
    type Error = String;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        Pin::new(&mut self.outgoing)
            .poll_ready(cx)
            .map_err(|e| e.to_string())
    }
    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), String> {
        Pin::new(&mut self.outgoing)
            .start_send(item)
            .map_err(|e| e.to_string())
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        Pin::new(&mut self.outgoing)
            .poll_flush(cx)
            .map_err(|e| e.to_string())
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        Pin::new(&mut self.outgoing)
            .poll_close(cx)
            .map_err(|e| e.to_string())
    }
}

struct Client {
    to_hub: mpsc::Sender<Result<Message, String>>,
    from_hub: mpsc::Receiver<Message>,
    live: Live,
    shutdown: CancellationToken,
    session: tokio::task::JoinHandle<()>,
}

fn connect(socket_room: usize) -> Client {
    let (to_hub, incoming) = mpsc::channel(16);
    let (outgoing, from_hub) = mpsc::channel(socket_room);
    let live = Live::new();
    let shutdown = CancellationToken::new();
    let permit = Arc::new(tokio::sync::Semaphore::new(1))
        .try_acquire_owned()
        .unwrap();
    let identity = Identity {
        name: "reader".into(),
        scopes: vec![Scope::Read],
        devices: vec![],
    };
    let socket = FakeSocket {
        incoming,
        outgoing: PollSender::new(outgoing),
    };
    let session = tokio::spawn(session(
        socket,
        identity,
        live.clone(),
        shutdown.clone(),
        permit,
    ));
    Client {
        to_hub,
        from_hub,
        live,
        shutdown,
        session,
    }
}

fn subscribe_all() -> Result<Message, String> {
    Ok(Message::Text(
        r#"{"op":"subscribe","devices":["*"]}"#.into(),
    ))
}

fn publish(live: &Live, offset: u64) {
    let _ = live.readings_tx.send(Arc::new(vec![LiveReading {
        offset,
        device: "d-1".into(),
        seq: crate::store::ReadingSeq::Device { boot: None, seq: 0 },
        timestamp_ms: 0,
        metrics: vec![("t".into(), device_protocol::OwnedValue::I64(1))],
    }]));
}

fn lagged_count(text: &str) -> u64 {
    serde_json::from_str::<Value>(text).unwrap()["dropped"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_gets_its_pings_and_is_kept_past_the_idle_timeout() {
    let mut c = connect(1);
    c.to_hub.send(subscribe_all()).await.unwrap();
    assert!(matches!(c.from_hub.recv().await, Some(Message::Text(_))));
    let (mut pings, mut readings, mut dropped) = (0, 0, 0);
    let mut offset = 0;
    // Readings at 50 a second, read at 10 a second, for over three idle timeouts: the
    // client sends nothing but its pongs (as a WebSocket library does on reading a ping).
    let end = Instant::now() + IDLE_TIMEOUT * 3 + PING_EVERY;
    let mut read_tick = tokio::time::interval(Duration::from_millis(100));
    let mut publish_tick = tokio::time::interval(Duration::from_millis(20));
    while Instant::now() < end {
        tokio::select! {
            _ = publish_tick.tick() => {
                publish(&c.live, offset);
                offset += 1;
            }
            // Never waiting for the hub: the clock must not jump while the client waits.
            _ = read_tick.tick() => match c.from_hub.try_recv() {
                Ok(Message::Ping(payload)) => {
                    pings += 1;
                    c.to_hub.send(Ok(Message::Pong(payload))).await.unwrap();
                }
                Ok(Message::Text(text)) if text.contains("\"lagged\"") => {
                    dropped += lagged_count(text.as_str());
                }
                Ok(Message::Text(_)) => readings += 1,
                Err(mpsc::error::TryRecvError::Empty) => {}
                other => panic!("the hub closed a slow reader: {other:?}"),
            },
        }
    }
    assert!(!c.session.is_finished(), "the session is still open");
    // A ping every PING_EVERY, none of them lost behind readings.
    let expected = (IDLE_TIMEOUT * 3 + PING_EVERY).as_secs() / PING_EVERY.as_secs();
    assert!(pings >= expected - 1, "{pings} pings of {expected}");
    assert!(
        readings > 0 && dropped > 0,
        "{readings} read, {dropped} dropped"
    );
    // No reading is counted twice, and no ping is counted as a dropped reading.
    c.shutdown.cancel();
    let mut closed = None;
    while let Some(message) = c.from_hub.recv().await {
        match message {
            Message::Text(text) if text.contains("\"lagged\"") => {
                dropped += lagged_count(text.as_str());
            }
            Message::Text(_) => readings += 1,
            Message::Close(frame) => closed = frame.map(|f| f.code),
            Message::Ping(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(closed, Some(close_code::AWAY));
    // (Counts of drops still queued at the close are not seen, hence no lower bound.)
    assert!(
        readings + dropped <= offset,
        "{readings} read + {dropped} dropped of {offset}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_close_frame_goes_before_queued_readings() {
    let mut c = connect(1);
    c.to_hub.send(subscribe_all()).await.unwrap();
    assert!(matches!(c.from_hub.recv().await, Some(Message::Text(_))));
    // Fill the queue: the client reads nothing.
    for offset in 0..CLIENT_QUEUE as u64 * 2 {
        publish(&c.live, offset);
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.shutdown.cancel();
    // What the socket held already, then the close: not a queue's worth of readings first.
    let mut before_close = 0;
    let code = loop {
        match c.from_hub.recv().await {
            Some(Message::Close(frame)) => break frame.map(|f| f.code),
            Some(_) => before_close += 1,
            None => panic!("closed without a close frame after {before_close} messages"),
        }
    };
    assert_eq!(code, Some(close_code::AWAY));
    assert!(
        before_close <= 2,
        "{before_close} messages before the close"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_that_takes_nothing_is_closed_with_a_code() {
    let mut c = connect(CLIENT_QUEUE * 4);
    // Nothing subscribed, nothing sent, pongs never come: idle.
    let closed = tokio::time::timeout(IDLE_TIMEOUT + PING_EVERY * 2, async {
        loop {
            match c.from_hub.recv().await {
                Some(Message::Close(frame)) => break frame.map(|f| f.code),
                Some(Message::Ping(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, Some(close_code::POLICY));
}
