//! Rules and alerts: rules evaluated on durable readings, alerts that move pending -> firing ->
//! resolved, and the actions of their transitions. Works with no network at all.
//!
//! Inputs: the store writer's broadcast of committed readings (after the commit, never on the
//! ingest path), device presence events, a tick for time-based conditions, and the rules (the
//! configuration's `[[rules]]`, reloaded on SIGHUP, and those added through the API, kept in the
//! store). Outputs: alert states, history and webhook outbox entries in the store; commands,
//! MQTT messages, log lines and alert events on the live stream.
//!
//! Invariants:
//! - no durable reading is missed: when the broadcast lags, the task reads the readings it
//!   missed back from the store, by offset;
//! - a round's transitions are committed (states, history and webhook entries in one batch)
//!   before any of their actions run, so a restart neither forgets a firing alert nor notifies it
//!   again;
//! - with no rule, the task does not listen to readings at all (so the writer builds no live
//!   readings for it).
//!
//! Here: the task. Beside it: `rule.rs` (checking a rule), `evaluator.rs` (the state machine and
//! the index), `expr.rs` (expressions), `actions.rs`, `webhook.rs` (the outbox's sender),
//! `handle.rs` (the API's handle), `metrics.rs`.

pub mod actions;
pub mod evaluator;
pub mod expr;
pub mod handle;
pub mod metrics;
pub mod rule;
#[cfg(test)]
mod tests;
pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::config::RuleConfig;
use crate::live::{DeviceChange, Event, Live, LiveReading, Presence};
use crate::store::Store;
use crate::store::alerts::AlertChanges;
use crate::store::durable::Durable;
pub use actions::{Actions, Publisher};
use evaluator::{Evaluator, Round};
pub use handle::{RuleError, RulesHandle};
pub use metrics::RulesStats;
pub use rule::{Origin, config_problems};

/// How often time-based conditions (`for`, minimum intervals, silence) are looked at.
pub const TICK: Duration = Duration::from_secs(1);
/// How often which rules select which device is worked out again (labels may change).
const LABELS_REFRESH: Duration = Duration::from_secs(30);
/// Readings read back from the store per step of a catch-up.
const CATCH_UP_PAGE: usize = 1024;

/// The hub's clock, driven by tokio's (so tests can pause it), in unix milliseconds.
#[derive(Debug, Clone, Copy)]
struct Clock {
    base_ms: u64,
    start: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            base_ms: crate::clock::now_ms(),
            start: tokio::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base_ms + self.start.elapsed().as_millis() as u64
    }
}

/// The rules task.
pub struct RulesTask {
    /// The store.
    pub store: Store,
    /// Committed readings and device events.
    pub live: Live,
    /// Which devices are online (offline rules at start).
    pub presence: Arc<Presence>,
    /// The store's newest durable offset.
    pub durable: Durable,
    /// The configuration's rules.
    pub config_rx: watch::Receiver<Vec<RuleConfig>>,
    /// Bumped when the API changed the store's rules.
    pub changed_rx: watch::Receiver<u64>,
    /// Runs the actions.
    pub actions: Actions,
    /// Wakes the webhook sender.
    pub outbox_wake: Arc<Notify>,
    /// Counters.
    pub stats: Arc<RulesStats>,
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("{what}: {e}"))?
        .map_err(|e| format!("{what}: {e}"))
}

/// Receives the next message, or waits forever when not listening.
async fn next<T: Clone>(rx: &mut Option<broadcast::Receiver<T>>) -> Result<T, RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl RulesTask {
    /// Evaluates until `shutdown`; fails only if the store does.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), String> {
        let clock = Clock::new();
        let store = self.store.clone();
        let labels = move |device: &str| store.device_labels(device).ok().flatten();
        let mut evaluator = Evaluator::default();
        let mut round = Round::default();
        self.load_rules(&mut evaluator, &mut round).await?;
        let store = self.store.clone();
        let records = blocking("reading alerts", move || store.alerts()).await?;
        evaluator.restore(records, clock.now_ms(), &mut round);
        let store = self.store.clone();
        let devices = blocking("reading devices", move || store.last_seen()).await?;
        evaluator.seed_silence(&devices, &labels, clock.now_ms());
        for (device, _) in &devices {
            if !self.presence.is_online(device) {
                evaluator.presence(device, false, clock.now_ms(), &labels, &mut round);
            }
        }
        self.commit(&evaluator, round, clock.now_ms()).await?;

        let mut readings_rx = None;
        let mut next_offset = 0;
        self.listen(&evaluator, &mut readings_rx, &mut next_offset);
        let mut events_rx = Some(self.live.events_tx.subscribe());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut labels_at = tokio::time::Instant::now();
        loop {
            let mut round = Round::default();
            // Biased: shutdown first, then rule changes, so a batch is never evaluated against
            // rules that were already replaced.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                Ok(()) = self.config_rx.changed() => {
                    self.load_rules(&mut evaluator, &mut round).await?;
                    self.listen(&evaluator, &mut readings_rx, &mut next_offset);
                }
                Ok(()) = self.changed_rx.changed() => {
                    self.load_rules(&mut evaluator, &mut round).await?;
                    self.listen(&evaluator, &mut readings_rx, &mut next_offset);
                }
                batch = next(&mut readings_rx) => match batch {
                    Ok(batch) => {
                        let now = clock.now_ms();
                        if let Some(first) = batch.first()
                            && first.offset > next_offset
                        {
                            self.catch_up(&mut evaluator, next_offset, first.offset, now, &mut round).await?;
                        }
                        for r in batch.iter() {
                            if r.offset < next_offset {
                                continue;
                            }
                            evaluator.reading(&r.device, r.timestamp_ms, &r.metrics, now, &labels, &mut round);
                            next_offset = r.offset + 1;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let end = self.durable.next_offset();
                        self.catch_up(&mut evaluator, next_offset, end, clock.now_ms(), &mut round).await?;
                        next_offset = next_offset.max(end);
                    }
                    Err(RecvError::Closed) => readings_rx = None,
                },
                event = next(&mut events_rx) => match event {
                    Ok(Event::Device { device, change, .. }) if change != DeviceChange::New => {
                        let online = change == DeviceChange::Online;
                        evaluator.presence(&device, online, clock.now_ms(), &labels, &mut round);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "rules: device events missed; offline rules may act late");
                    }
                    Err(RecvError::Closed) => events_rx = None,
                },
                _ = tick.tick() => {
                    if labels_at.elapsed() >= LABELS_REFRESH {
                        evaluator.forget_matches();
                        labels_at = tokio::time::Instant::now();
                    }
                    evaluator.tick(clock.now_ms(), &mut round);
                }
            }
            self.commit(&evaluator, round, clock.now_ms()).await?;
        }
    }

    /// Listens to readings while there are rules (from the next durable offset on), not
    /// otherwise.
    fn listen(
        &self,
        evaluator: &Evaluator,
        readings_rx: &mut Option<broadcast::Receiver<Arc<Vec<LiveReading>>>>,
        next_offset: &mut u64,
    ) {
        let wanted = !evaluator.rules().is_empty();
        if wanted && readings_rx.is_none() {
            // Subscribed first, so no reading committed after the offset read can slip by.
            *readings_rx = Some(self.live.readings_tx.subscribe());
            *next_offset = self.durable.next_offset();
        } else if !wanted {
            *readings_rx = None;
        }
    }

    /// Reads the configuration's and the store's rules and hands them to the evaluator.
    async fn load_rules(
        &mut self,
        evaluator: &mut Evaluator,
        round: &mut Round,
    ) -> Result<(), String> {
        let config = self.config_rx.borrow_and_update().clone();
        self.changed_rx.borrow_and_update();
        let store = self.store.clone();
        let saved = blocking("reading rules", move || store.saved_rules()).await?;
        let mut rules = Vec::new();
        for c in &config {
            // The configuration was validated; a rule that fails now is skipped and said.
            match rule::compile(c, Origin::Config) {
                Ok(rule) => rules.push(rule),
                Err(problems) => {
                    tracing::error!(rule = %c.name, problems = ?problems, "rule skipped")
                }
            }
        }
        for (name, definition) in saved {
            if config.iter().any(|c| c.name == name) {
                tracing::warn!(rule = %name, "a rule of the API has the name of a configuration rule; the configuration's is used");
                continue;
            }
            let compiled = serde_json::from_str::<RuleConfig>(&definition)
                .map_err(|e| vec![e.to_string()])
                .and_then(|c| rule::compile(&c, Origin::Api));
            match compiled {
                Ok(rule) => rules.push(rule),
                Err(problems) => {
                    tracing::error!(rule = %name, problems = ?problems, "stored rule skipped")
                }
            }
        }
        rules.truncate(rule::MAX_RULES);
        self.stats
            .rules
            .store(rules.len() as u64, Ordering::Relaxed);
        tracing::info!(rules = rules.len(), "rules loaded");
        evaluator.set_rules(rules, round);
        Ok(())
    }

    /// Evaluates the durable readings from `from` up to `end` read back from the store.
    async fn catch_up(
        &self,
        evaluator: &mut Evaluator,
        mut from: u64,
        end: u64,
        now_ms: u64,
        round: &mut Round,
    ) -> Result<(), String> {
        let store = self.store.clone();
        let labels = move |device: &str| store.device_labels(device).ok().flatten();
        while from < end {
            let store = self.store.clone();
            let page = blocking("reading missed readings", move || {
                store.readings_from(from, end, CATCH_UP_PAGE)
            })
            .await?;
            let Some(last) = page.last() else { break };
            from = last.offset + 1;
            self.stats
                .caught_up
                .fetch_add(page.len() as u64, Ordering::Relaxed);
            for r in &page {
                evaluator.reading(
                    &r.device,
                    r.timestamp_ms,
                    &r.metrics,
                    now_ms,
                    &labels,
                    round,
                );
            }
        }
        Ok(())
    }

    /// Commits a round's transitions, then runs their actions.
    async fn commit(&self, evaluator: &Evaluator, round: Round, now_ms: u64) -> Result<(), String> {
        let s = &self.stats;
        s.expr_errors
            .fetch_add(round.expr_errors, Ordering::Relaxed);
        s.refused.fetch_add(round.refused, Ordering::Relaxed);
        if round.is_empty() {
            return Ok(());
        }
        let outbox = actions::outbox_entries(&self.actions.hub, &round.notified, now_ms);
        let queued = outbox.len() as u64;
        let changes = AlertChanges {
            states: round.states,
            forgotten: round.forgotten,
            events: round.notified.iter().map(|n| n.event.clone()).collect(),
            outbox,
        };
        let store = self.store.clone();
        let dropped = blocking("saving alerts", move || store.record_alerts(&changes)).await?;
        if dropped > 0 {
            tracing::error!(
                dropped,
                "webhook outbox full: the oldest notifications were dropped"
            );
        }
        let stats = &self.actions.stats;
        stats.webhook[0].fetch_add(queued, Ordering::Relaxed);
        stats.webhook[1].fetch_add(dropped, Ordering::Relaxed);
        if queued > 0 {
            self.outbox_wake.notify_one();
        }
        for n in &round.notified {
            let counter = match n.event.state {
                crate::store::alerts::AlertState::Firing => &s.fired,
                _ => &s.resolved,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        s.firing.store(evaluator.firing() as u64, Ordering::Relaxed);
        self.actions.run(&round.notified).await;
        Ok(())
    }
}
