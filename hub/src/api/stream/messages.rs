//! One connection's reading side: the client's messages (subscribe, unsubscribe, ping), its
//! subscriptions, and the readings and events they match, as JSON messages queued for the writer.
//!
//! Invariants: queuing never waits, so a slow client never slows ingest: a message that does not
//! fit in the queue is dropped and counted, and the client is told `lagged` with the count before
//! the next message that fits; a gap in hub offsets counts as dropped readings; a token
//! restricted to some devices sees only those; a reading carries only the metrics its
//! subscriptions match.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::ws::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{MAX_PATTERN_LEN, MAX_PATTERNS, MAX_SUBSCRIPTIONS};
use crate::auth::Identity;
use crate::live::{Event, LiveReading};
use crate::patterns::pattern_matches;
use crate::values::{MetricValue, ReadingJson};

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
pub(super) struct Subscription {
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

/// A reading as the stream sends it: the one JSON form of a reading, with the subscriptions it
/// matched, and only the metrics they asked for.
#[derive(Serialize)]
struct StreamReading<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    subscriptions: &'a [String],
    #[serde(flatten)]
    reading: ReadingJson,
}

/// The state of one connection's reading side.
pub(super) struct Session {
    pub(super) identity: Identity,
    pub(super) subscriptions: Vec<Subscription>,
    pub(super) next_id: u64,
    pub(super) out_tx: mpsc::Sender<Message>,
    /// Messages the client did not get since it was last told.
    pub(super) dropped: u64,
    /// The hub offset after the last reading batch seen, to count a broadcast gap.
    pub(super) next_offset: Option<u64>,
}

impl Session {
    /// Tells the client how many messages it missed, if any and if its queue has room; whether
    /// it is now up to date.
    pub(super) fn tell_lag(&mut self) -> bool {
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

    pub(super) fn error(&mut self, detail: &str) {
        self.send_json(json!({ "type": "error", "detail": detail }));
    }

    pub(super) fn handle(&mut self, text: &str) {
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

    pub(super) fn readings(&mut self, batch: &Arc<Vec<LiveReading>>) {
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
            let mut metrics = BTreeMap::new();
            for sub in &self.subscriptions {
                if !sub.readings || !sub.wants_device(&reading.device) {
                    continue;
                }
                let mut matched = false;
                for (name, value) in &reading.metrics {
                    if sub.wants_metric(name) {
                        matched = true;
                        metrics.insert(name.clone(), MetricValue(value.clone()));
                    }
                }
                if matched {
                    ids.push(sub.id.clone());
                }
            }
            if metrics.is_empty() {
                continue;
            }
            let message = StreamReading {
                kind: "reading",
                subscriptions: &ids,
                reading: reading.json(metrics),
            };
            match serde_json::to_string(&message) {
                Ok(text) => self.offer(Message::Text(text.into())),
                Err(e) => tracing::warn!(error = %e, "a reading could not be written as JSON"),
            }
        }
    }

    pub(super) fn event(&mut self, event: &Event) {
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
            Event::Alert(note) => json!({
                "type": "alert",
                "subscriptions": ids,
                "device": note.device,
                "rule": note.rule,
                "state": note.state,
                "transition": note.transition,
                "value": note.value,
                "ts": crate::clock::rfc3339(note.at_ms),
            }),
        };
        self.send_json(message);
    }
}
