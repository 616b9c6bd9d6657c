//! What a notified transition does: the alert message (one JSON form for the webhook body, the
//! MQTT payload and the log), the webhook's outbox entries (made before the transition is
//! committed, and committed with it), and the actions run once it is committed: a command, an
//! MQTT publish, a log line, and the alert event on the live stream.
//!
//! Invariants: actions run only after the transition is durable, so a crash can repeat none of
//! them and lose no webhook; a failing action is counted and logged, never retried here (only
//! webhooks are durable) and never stops the rules task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use super::evaluator::Notified;
use super::rule::ActionKind;
use crate::commands::{CommandRequest, Commands};
use crate::live::{AlertNote, Event, Live};
use crate::store::alerts::{AlertState, OutboxEntry};

/// Publishes `payload` on `topic` through the hub's MQTT endpoint or its external broker (given
/// by `app`, which knows the transports); why not, in words.
pub type Publisher = Arc<dyn Fn(String, Vec<u8>, rumqttc::QoS) -> Result<(), String> + Send + Sync>;

/// What actions did, by kind and outcome.
#[derive(Debug, Default)]
pub struct ActionStats {
    /// Commands submitted / refused.
    pub command: [AtomicU64; 2],
    /// MQTT messages queued / refused.
    pub mqtt: [AtomicU64; 2],
    /// Webhook notifications queued in the outbox / dropped from a full outbox.
    pub webhook: [AtomicU64; 2],
    /// Log lines written.
    pub log: AtomicU64,
}

/// The message of a transition.
pub fn message(hub: &str, n: &Notified) -> serde_json::Value {
    let e = &n.event;
    json!({
        "type": "alert",
        "hub": hub,
        "rule": e.rule,
        "device": e.device,
        "metric": n.rule.metric,
        "state": e.state.name(),
        "transition": e.transition,
        "value": e.value,
        "ts": crate::clock::rfc3339(e.at_ms),
    })
}

fn runs_on(on: super::rule::On, state: AlertState) -> bool {
    match state {
        AlertState::Firing => on.firing,
        AlertState::Resolved => on.resolved,
        AlertState::Pending => false,
    }
}

/// The webhook outbox entries of `notified`, in order.
pub fn outbox_entries(hub: &str, notified: &[Notified], now_ms: u64) -> Vec<OutboxEntry> {
    let mut entries = Vec::new();
    for n in notified {
        for action in &n.rule.actions {
            let ActionKind::Webhook(url) = &action.kind else {
                continue;
            };
            if !runs_on(action.on, n.event.state) {
                continue;
            }
            entries.push(OutboxEntry {
                url: url.clone(),
                key: format!(
                    "{hub}.{}.{}.{}",
                    n.event.rule, n.event.device, n.event.transition
                ),
                body: message(hub, n).to_string(),
                attempts: 0,
                next_ms: now_ms,
            });
        }
    }
    entries
}

/// Runs everything but the webhooks (already in the outbox) for committed transitions.
pub struct Actions {
    /// The hub's id (in messages and idempotency keys).
    pub hub: String,
    /// Commands for devices.
    pub commands: Option<Commands>,
    /// MQTT publishing.
    pub publisher: Option<Publisher>,
    /// The live stream.
    pub live: Live,
    /// Counters.
    pub stats: Arc<ActionStats>,
}

impl Actions {
    /// Runs the actions of each transition, in order.
    pub async fn run(&self, notified: &[Notified]) {
        for n in notified {
            let e = &n.event;
            self.live.event(Event::Alert(Arc::new(AlertNote {
                device: e.device.clone(),
                rule: e.rule.clone(),
                state: e.state.name(),
                transition: e.transition,
                value: e.value,
                at_ms: e.at_ms,
            })));
            for action in &n.rule.actions {
                if !runs_on(action.on, e.state) {
                    continue;
                }
                match &action.kind {
                    ActionKind::Webhook(_) => {}
                    ActionKind::Command { device, name, args } => {
                        self.command(n, device.as_deref(), name, args).await;
                    }
                    ActionKind::Mqtt { topic, qos } => self.publish(n, topic, *qos),
                    ActionKind::Log(level) => {
                        self.stats.log.fetch_add(1, Ordering::Relaxed);
                        let (rule, device, state, transition, value) =
                            (&e.rule, &e.device, e.state.name(), e.transition, e.value);
                        match *level {
                            tracing::Level::ERROR => {
                                tracing::error!(rule = %rule, device = %device, state, transition, value, "alert")
                            }
                            tracing::Level::WARN => {
                                tracing::warn!(rule = %rule, device = %device, state, transition, value, "alert")
                            }
                            _ => {
                                tracing::info!(rule = %rule, device = %device, state, transition, value, "alert")
                            }
                        }
                    }
                }
            }
        }
    }

    async fn command(
        &self,
        n: &Notified,
        device: Option<&str>,
        name: &str,
        args: &serde_json::Map<String, serde_json::Value>,
    ) {
        let Some(commands) = &self.commands else {
            return;
        };
        let target = device.unwrap_or(&n.event.device).to_owned();
        let request = CommandRequest {
            device: target.clone(),
            name: name.to_owned(),
            args: args.clone(),
            ttl: None,
            timeout: None,
            requested_by: format!("rule:{}", n.event.rule),
        };
        match commands.submit(request).await {
            Ok((id, _)) => {
                self.stats.command[0].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(rule = %n.event.rule, device = %target, command = id, "alert command submitted");
            }
            Err(e) => {
                self.stats.command[1].fetch_add(1, Ordering::Relaxed);
                tracing::warn!(rule = %n.event.rule, device = %target, error = %e, "alert command refused");
            }
        }
    }

    fn publish(&self, n: &Notified, topic: &str, qos: rumqttc::QoS) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        let topic = topic
            .replace("{rule}", &n.event.rule)
            .replace("{device}", &n.event.device);
        let payload = message(&self.hub, n).to_string().into_bytes();
        match publisher(topic.clone(), payload, qos) {
            Ok(()) => {
                self.stats.mqtt[0].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.mqtt[1].fetch_add(1, Ordering::Relaxed);
                tracing::warn!(rule = %n.event.rule, topic = %topic, error = %e, "alert not published");
            }
        }
    }
}
