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
//!
//! Here: the upgrade, the connection loop (pings, idle, close) and the writer; `messages` holds
//! the subscriptions and what they turn into.

mod messages;
#[cfg(test)]
mod tests;

use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade, close_code};
use axum::response::Response;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::messages::Session;
use super::ApiState;
use super::devices::require;
use super::error::ApiError;
use crate::auth::{Identity, Scope};
use crate::live::Live;

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
