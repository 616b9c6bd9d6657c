//! `GET /api/v1/stream`: durable readings and device and command events, live, over a WebSocket.
//!
//! The client subscribes by device and metric patterns (`*` matches any run of characters) and
//! gets every matching reading once the store has made it durable (the store writer publishes
//! after its commit; see [`crate::live`]), plus device events (`new`, `online`, `offline`) and
//! command state changes for the devices it subscribed to. A token restricted to some devices
//! sees only those.
//!
//! Client messages (JSON text, at most [`MAX_CLIENT_MESSAGE`] bytes):
//! - `{"op":"subscribe","id":"s1","devices":["gh-*"],"metrics":["temp"],"events":true}`: `id`
//!   names the subscription (default: a number the hub picks); `devices` and `metrics` default to
//!   `["*"]`; `readings` and `events` default to true. Answered `{"type":"subscribed","id":..}`.
//! - `{"op":"unsubscribe","id":"s1"}`: answered `{"type":"unsubscribed","id":..}`.
//! - `{"op":"ping"}`: answered `{"type":"pong"}`.
//!
//! Server messages: `{"type":"reading","subscriptions":[..],"device":..,"offset":..,"seq":..,
//! "ts":..,"metrics":{..}}` (only the metrics the subscriptions match; `seq`, `boot` and `hub_seq`
//! as in the readings API: each only when the reading has it), `{"type":"device",..,
//! "event":"online","reason":..,"ts":..}`, `{"type":"command",..,"id":..,"state":..}`,
//! `{"type":"lagged","dropped":N}` and `{"type":"error","detail":..}`.
//!
//! A slow client never slows ingest: messages wait for it in a bounded queue
//! ([`CLIENT_QUEUE`]); what does not fit is dropped and counted, and the client is told
//! `lagged` with the count before the next message that fits, then the stream goes on. A client
//! too slow for even the broadcast backlog is told the same: readings by the gap in hub offsets,
//! events by the broadcast's own count. A socket write that takes longer than [`SEND_TIMEOUT`]
//! ends the connection.
//!
//! Control frames (the hub's pings and its close frame) go in a queue of their own that the
//! writer serves first: they never wait behind readings, never fill up with them, and are never
//! counted as dropped messages. The hub pings every [`PING_EVERY`] and closes (code 1008) a
//! connection that has shown no sign of life for [`IDLE_TIMEOUT`]: no message or pong heard,
//! and no write taken by the socket. A lagging reader that keeps reading is kept. Every close
//! the hub starts carries a code: 1001 when it stops, 1008 when idle, 1009 for an oversized
//! message.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade, close_code};
use axum::response::Response;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ApiState;
use super::devices::require;
use super::error::ApiError;
use crate::auth::tokens::pattern_matches;
use crate::auth::{Identity, Scope};
use crate::live::{Event, Live, LiveReading};
use crate::values::MetricValue;

/// Largest message (and frame) a client may send.
pub const MAX_CLIENT_MESSAGE: usize = 4096;
/// Subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS: usize = 32;
/// Patterns in one subscription's `devices` or `metrics`.
pub const MAX_PATTERNS: usize = 32;
/// Longest pattern or subscription id.
pub const MAX_PATTERN_LEN: usize = 128;
/// Messages waiting for a slow client before new ones are dropped.
pub const CLIENT_QUEUE: usize = 1024;
/// Most concurrent stream connections.
pub const MAX_CLIENTS: usize = 64;
/// How often the hub pings.
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// Nothing heard from the client for this long: the connection is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a client that lagged is checked for room to be told so.
const LAG_CHECK: Duration = Duration::from_secs(1);
/// Control frames (pings, the close) waiting for the writer; a ping that finds it full is
/// skipped, as the one before it has not gone out yet.
const CONTROL_QUEUE: usize = 4;
/// Longest one socket write may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum ClientMessage {
    Subscribe {
        id: Option<String>,
        devices: Option<Vec<String>>,
        metrics: Option<Vec<String>>,
        readings: Option<bool>,
        events: Option<bool>,
    },
    Unsubscribe {
        id: String,
    },
    Ping,
}

/// One subscription of a connection.
#[derive(Debug, Clone)]
struct Subscription {
    id: String,
    devices: Vec<String>,
    metrics: Vec<String>,
    readings: bool,
    events: bool,
}

impl Subscription {
    fn wants_device(&self, device: &str) -> bool {
        self.devices.iter().any(|p| pattern_matches(p, device))
    }

    fn wants_metric(&self, metric: &str) -> bool {
        self.metrics.iter().any(|p| pattern_matches(p, metric))
    }
}

/// The live stream (WebSocket).
///
/// Upgrade to a WebSocket, then subscribe with
/// `{"op":"subscribe","id":"s1","devices":["gh-*"],"metrics":["temp"]}` and receive durable
/// readings, device events (`new`, `online`, `offline`) and command state changes as JSON text
/// messages; a client that falls behind gets `{"type":"lagged","dropped":N}`. Needs the `read`
/// scope; a token restricted to some devices sees only those.
#[utoipa::path(
    get,
    path = "/stream",
    security(("bearer" = ["read"])),
    tag = "stream",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol."),
        (status = 400, description = "Not a WebSocket upgrade request."),
        (status = 403, description = "The token lacks the `read` scope."),
        (status = 503, description = "Too many stream clients."),
    ),
)]
pub(super) async fn stream(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    require(&identity, Scope::Read, "read")?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::BadRequest(format!("this is a WebSocket endpoint: {}", e.body_text()))
    })?;
    let permit = state
        .stream_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable(format!("already {MAX_CLIENTS} stream clients")))?;
    let live = state.live.clone();
    let shutdown = state.shutdown.clone();
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| session(socket, identity, live, shutdown, permit)))
}

/// The state of one connection's reading side.
struct Session {
    identity: Identity,
    subscriptions: Vec<Subscription>,
    next_id: u64,
    out_tx: mpsc::Sender<Message>,
    /// Messages the client did not get since it was last told.
    dropped: u64,
    /// The hub offset after the last reading batch seen, to count a broadcast gap.
    next_offset: Option<u64>,
}

/// Runs one connection until the client leaves, it goes idle or the hub stops. Generic over the
/// socket so the unit tests drive it with channels under a paused clock.
async fn session<S, E>(
    socket: S,
    identity: Identity,
    live: Live,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) where
    S: futures_util::Stream<Item = Result<Message, E>> + futures_util::Sink<Message>,
    S: Send + 'static,
    E: std::fmt::Display,
{
    let (sink, mut source) = socket.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(CLIENT_QUEUE);
    let (control_tx, control_rx) = mpsc::channel::<Message>(CONTROL_QUEUE);
    let (written_tx, written_rx) = watch::channel(Instant::now());
    let writer = tokio::spawn(write_out(sink, control_rx, out_rx, written_tx));
    let mut readings_rx = live.readings_tx.subscribe();
    let mut events_rx = live.events_tx.subscribe();
    let mut s = Session {
        identity,
        subscriptions: Vec::new(),
        next_id: 1,
        out_tx,
        dropped: 0,
        next_offset: None,
    };
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    // A client that lagged is told so once its queue has room, even if nothing else comes.
    let mut lag_check = tokio::time::interval(LAG_CHECK);
    lag_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let close = loop {
        if s.out_tx.is_closed() {
            break None;
        }
        // Biased so that, of what is ready, events go first: a device's `new` and `online`
        // events (sent before its readings' batch) reach the client before those readings.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Some((close_code::AWAY, "the hub is stopping")),
            event = events_rx.recv() => match event {
                Ok(event) => s.event(&event),
                Err(broadcast::error::RecvError::Lagged(n)) => s.dropped += n,
                Err(broadcast::error::RecvError::Closed) => break None,
            },
            incoming = source.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    s.handle(text.as_str());
                }
                Some(Ok(Message::Binary(_))) => {
                    last_heard = Instant::now();
                    s.error("binary messages are not understood; send JSON text");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => last_heard = Instant::now(),
                Some(Ok(Message::Close(_))) | None => break None,
                // Over the size limit, or a broken frame.
                Some(Err(e)) => {
                    let text = e.to_string().to_ascii_lowercase();
                    tracing::debug!(error = %text, "stream client sent a bad frame");
                    let too_big = ["size", "too long", "capacity", "limit"].iter().any(|w| text.contains(w));
                    break Some(if too_big {
                        (close_code::SIZE, "message too big")
                    } else {
                        (close_code::PROTOCOL, "broken frame")
                    });
                }
            },
            batch = readings_rx.recv() => match batch {
                Ok(batch) => s.readings(&batch),
                // The gap shows in the offsets of the next batch.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break None,
            },
            _ = lag_check.tick() => {
                s.tell_lag();
            }
            _ = ping.tick() => {
                // A socket that takes the hub's writes is read by a live client, however far
                // behind it is: only a client silent on both counts is idle.
                let last_written = *written_rx.borrow();
                if last_heard.elapsed() >= IDLE_TIMEOUT && last_written.elapsed() >= IDLE_TIMEOUT {
                    break Some((close_code::POLICY, "idle: no pong"));
                }
                // Full: earlier pings have not gone out yet; one more would say nothing new.
                let _ = control_tx.try_send(Message::Ping(Default::default()));
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ =
            tokio::time::timeout(SEND_TIMEOUT, control_tx.send(Message::Close(Some(frame)))).await;
    }
    drop((s, control_tx));
    let _ = writer.await;
}

/// Writes control frames first, then queued messages, until the queues close, a close frame
/// is sent, or a write fails or stalls. Each message the socket takes is noted in `written_tx`.
async fn write_out<K>(
    mut sink: K,
    mut control_rx: mpsc::Receiver<Message>,
    mut out_rx: mpsc::Receiver<Message>,
    written_tx: watch::Sender<Instant>,
) where
    K: futures_util::Sink<Message> + Unpin,
{
    loop {
        let message = tokio::select! {
            biased;
            control = control_rx.recv() => control,
            message = out_rx.recv() => message,
        };
        let Some(message) = message else { break };
        let closing = matches!(message, Message::Close(_));
        // Only messages count as signs of life: a dead peer's socket buffers take pings for
        // ever, while messages fill them and then stall the writer.
        let control = matches!(message, Message::Ping(_) | Message::Pong(_));
        match tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await {
            Ok(Ok(())) if !closing => {
                if !control {
                    written_tx.send_replace(Instant::now());
                }
            }
            _ => break,
        }
    }
    // Closing the receivers tells the reading side to stop.
    out_rx.close();
    control_rx.close();
    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.close()).await;
}

impl Session {
    /// Tells the client how many messages it missed, if any and if its queue has room; whether
    /// it is now up to date.
    fn tell_lag(&mut self) -> bool {
        if self.dropped == 0 {
            return true;
        }
        let lagged = json!({ "type": "lagged", "dropped": self.dropped }).to_string();
        let told = self.out_tx.try_send(Message::Text(lagged.into())).is_ok();
        if told {
            self.dropped = 0;
        }
        told
    }

    /// Queues a message without waiting; a full queue drops it and counts it.
    fn offer(&mut self, message: Message) {
        if !self.tell_lag() || self.out_tx.try_send(message).is_err() {
            self.dropped += 1;
        }
    }

    fn send_json(&mut self, value: Value) {
        self.offer(Message::Text(value.to_string().into()));
    }

    fn error(&mut self, detail: &str) {
        self.send_json(json!({ "type": "error", "detail": detail }));
    }

    fn handle(&mut self, text: &str) {
        let message: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                self.error(&format!(
                    "not a message this stream understands ({e}); send {{\"op\":\"subscribe\",\"devices\":[\"*\"]}}"
                ));
                return;
            }
        };
        match message {
            ClientMessage::Ping => self.send_json(json!({ "type": "pong" })),
            ClientMessage::Unsubscribe { id } => {
                let before = self.subscriptions.len();
                self.subscriptions.retain(|s| s.id != id);
                if self.subscriptions.len() < before {
                    self.send_json(json!({ "type": "unsubscribed", "id": id }));
                } else {
                    self.error(&format!("no subscription {id:?}"));
                }
            }
            ClientMessage::Subscribe {
                id,
                devices,
                metrics,
                readings,
                events,
            } => match self.subscription(id, devices, metrics, readings, events) {
                Ok(sub) => {
                    let answer = json!({ "type": "subscribed", "id": sub.id, "devices": sub.devices, "metrics": sub.metrics });
                    self.subscriptions.retain(|s| s.id != sub.id);
                    self.subscriptions.push(sub);
                    self.send_json(answer);
                }
                Err(detail) => self.error(&detail),
            },
        }
    }

    fn subscription(
        &mut self,
        id: Option<String>,
        devices: Option<Vec<String>>,
        metrics: Option<Vec<String>>,
        readings: Option<bool>,
        events: Option<bool>,
    ) -> Result<Subscription, String> {
        let id = match id {
            Some(id) => id,
            None => {
                self.next_id += 1;
                (self.next_id - 1).to_string()
            }
        };
        if id.is_empty() || id.len() > MAX_PATTERN_LEN {
            return Err(format!("`id` is 1 to {MAX_PATTERN_LEN} bytes"));
        }
        let replacing = self.subscriptions.iter().any(|s| s.id == id);
        if !replacing && self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            return Err(format!(
                "at most {MAX_SUBSCRIPTIONS} subscriptions per connection"
            ));
        }
        let patterns = |name: &str, given: Option<Vec<String>>| {
            let list = given.unwrap_or_else(|| vec!["*".into()]);
            if list.is_empty() || list.len() > MAX_PATTERNS {
                return Err(format!("`{name}` holds 1 to {MAX_PATTERNS} patterns"));
            }
            if list
                .iter()
                .any(|p| p.is_empty() || p.len() > MAX_PATTERN_LEN)
            {
                return Err(format!(
                    "`{name}`: each pattern is 1 to {MAX_PATTERN_LEN} bytes"
                ));
            }
            Ok(list)
        };
        Ok(Subscription {
            id,
            devices: patterns("devices", devices)?,
            metrics: patterns("metrics", metrics)?,
            readings: readings.unwrap_or(true),
            events: events.unwrap_or(true),
        })
    }

    fn readings(&mut self, batch: &Arc<Vec<LiveReading>>) {
        if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
            if let Some(expected) = self.next_offset
                && first.offset > expected
            {
                self.dropped += first.offset - expected;
            }
            self.next_offset = Some(last.offset + 1);
        }
        if self.subscriptions.is_empty() {
            return;
        }
        for reading in batch.iter() {
            if !self.identity.may_access(&reading.device) {
                continue;
            }
            let mut ids = Vec::new();
            let mut metrics = Map::new();
            for sub in &self.subscriptions {
                if !sub.readings || !sub.wants_device(&reading.device) {
                    continue;
                }
                let mut matched = false;
                for (name, value) in &reading.metrics {
                    if sub.wants_metric(name) {
                        matched = true;
                        metrics.insert(name.clone(), json!(MetricValue(value.clone())));
                    }
                }
                if matched {
                    ids.push(sub.id.clone());
                }
            }
            if metrics.is_empty() {
                continue;
            }
            let mut message = json!({
                "type": "reading",
                "subscriptions": ids,
                "device": reading.device,
                "offset": reading.offset,
                "ts": crate::clock::rfc3339(reading.timestamp_ms),
                "metrics": metrics,
            });
            let numbering = [
                ("seq", reading.seq.device_seq()),
                ("boot", reading.seq.boot()),
                ("hub_seq", reading.seq.hub_seq()),
            ];
            for (key, value) in numbering {
                if let Some(value) = value {
                    message[key] = json!(value);
                }
            }
            self.send_json(message);
        }
    }

    fn event(&mut self, event: &Event) {
        let device = event.device();
        if !self.identity.may_access(device) {
            return;
        }
        let ids: Vec<&str> = self
            .subscriptions
            .iter()
            .filter(|s| s.events && s.wants_device(device))
            .map(|s| s.id.as_str())
            .collect();
        if ids.is_empty() {
            return;
        }
        let message = match event {
            Event::Device {
                device,
                change,
                reason,
                at_ms,
            } => json!({
                "type": "device",
                "subscriptions": ids,
                "device": device,
                "event": change.name(),
                "reason": reason,
                "ts": crate::clock::rfc3339(*at_ms),
            }),
            Event::Command { device, id, state } => json!({
                "type": "command",
                "subscriptions": ids,
                "device": device,
                "id": id,
                "state": state.name(),
            }),
        };
        self.send_json(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
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
}
