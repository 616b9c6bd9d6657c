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
//! - no durable reading is missed, none is evaluated twice: when the broadcast lags, the task
//!   reads the readings it missed back from the store, by offset; the offset of the next reading
//!   to evaluate is saved in the store with every round that changed something (and at least
//!   every [`OFFSET_SAVE`] otherwise), so after a crash or a stop the readings stored past it
//!   (which changed nothing durable) are evaluated, once, before new ones;
//! - a round's transitions are committed (states, history, webhook entries and the offset in one
//!   batch) before any of their actions run, so a restart neither forgets a firing alert nor
//!   notifies it again;
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
use evaluator::{Evaluator, Reading, Round};
pub use handle::{RuleError, RulesHandle};
pub use metrics::RulesStats;
pub use rule::{Origin, config_problems};

/// How often time-based conditions (`for`, minimum intervals, silence) are looked at.
pub const TICK: Duration = Duration::from_secs(1);
/// Readings read back from the store per step of a catch-up.
const CATCH_UP_PAGE: usize = 1024;
/// How often, at most, where the rules are in the readings is saved when no alert changed (it is
/// saved with every change): after a crash, at most this much of readings is evaluated again.
const OFFSET_SAVE: Duration = Duration::from_secs(10);

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

/// The readings the task follows while it has rules: the broadcast of committed readings, and
/// where it is in the store's readings.
struct Following {
    readings_rx: broadcast::Receiver<Arc<Vec<LiveReading>>>,
    /// The offset of the next reading to evaluate: every reading below it was evaluated.
    next_offset: u64,
    /// The offset the store holds (saved with the last commit), and when it was saved.
    saved: Option<u64>,
    saved_at: tokio::time::Instant,
    /// The store's labels version the rule selection was worked out with.
    labels_version: u64,
}

impl Following {
    /// The offset to save with this round's commit: with any change (so a transition and the
    /// readings that made it are saved together), else once per [`OFFSET_SAVE`].
    fn offset_to_save(&mut self, with_changes: bool) -> Option<u64> {
        let due = with_changes || self.saved_at.elapsed() >= OFFSET_SAVE;
        if !due || self.saved == Some(self.next_offset) {
            return None;
        }
        self.saved = Some(self.next_offset);
        self.saved_at = tokio::time::Instant::now();
        self.saved
    }
}

/// Receives the next batch of committed readings, or waits forever when not following.
async fn next_batch(following: &mut Option<Following>) -> Result<Arc<Vec<LiveReading>>, RecvError> {
    match following {
        Some(f) => f.readings_rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Receives the next device event, or waits forever once the channel closed.
async fn next_event(
    events_rx: &mut Option<broadcast::Receiver<Event>>,
) -> Result<Event, RecvError> {
    match events_rx {
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
        self.commit(&evaluator, round, clock.now_ms(), None).await?;

        let mut following = None;
        self.follow(&mut evaluator, &mut following, &clock).await?;
        let mut events_rx = Some(self.live.events_tx.subscribe());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let mut round = Round::default();
            // Biased: shutdown first, then rule changes, so a batch is never evaluated against
            // rules that were already replaced.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Where the rules are, so a restart evaluates only what they had not.
                    let offset = following.as_mut().and_then(|f| f.offset_to_save(true));
                    self.commit(&evaluator, Round::default(), clock.now_ms(), offset).await?;
                    return Ok(());
                }
                Ok(()) = self.config_rx.changed() => {
                    self.load_rules(&mut evaluator, &mut round).await?;
                    self.follow(&mut evaluator, &mut following, &clock).await?;
                }
                Ok(()) = self.changed_rx.changed() => {
                    self.load_rules(&mut evaluator, &mut round).await?;
                    self.follow(&mut evaluator, &mut following, &clock).await?;
                }
                batch = next_batch(&mut following) => {
                    self.on_batch(batch, &mut evaluator, &mut following, &clock, &mut round).await?;
                }
                event = next_event(&mut events_rx) => match event {
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
                _ = tick.tick() => evaluator.tick(clock.now_ms(), &mut round),
            }
            let offset = following
                .as_mut()
                .and_then(|f| f.offset_to_save(!round.is_empty()));
            self.commit(&evaluator, round, clock.now_ms(), offset)
                .await?;
        }
    }

    /// Follows the readings while there are rules, not otherwise. On starting to follow, the
    /// readings stored past the offset the store holds (readings committed but not evaluated
    /// before a crash or a stop) are evaluated first; with no offset held, the rules start with
    /// the next reading. On stopping, the offset is forgotten.
    async fn follow(
        &self,
        evaluator: &mut Evaluator,
        following: &mut Option<Following>,
        clock: &Clock,
    ) -> Result<(), String> {
        let wanted = !evaluator.rules().is_empty();
        if !wanted {
            *following = None;
            let store = self.store.clone();
            return blocking("forgetting the rules' offset", move || {
                store.forget_rules_next_offset()
            })
            .await;
        }
        if following.is_some() {
            return Ok(());
        }
        // Subscribed first, so no reading committed after the offsets are read can slip by.
        let readings_rx = self.live.readings_tx.subscribe();
        let end = self.durable.next_offset();
        let store = self.store.clone();
        let saved = blocking("reading the rules' offset", move || {
            store.rules_next_offset()
        })
        .await?;
        let f = following.insert(Following {
            readings_rx,
            next_offset: saved.map_or(end, |s| s.min(end)),
            saved,
            saved_at: tokio::time::Instant::now(),
            labels_version: self.store.labels_version(),
        });
        if f.next_offset < end {
            tracing::info!(
                from = f.next_offset,
                to = end,
                "rules: evaluating readings stored but not evaluated yet"
            );
        }
        self.catch_up(evaluator, f, end, clock).await?;
        let offset = f.offset_to_save(true);
        self.commit(evaluator, Round::default(), clock.now_ms(), offset)
            .await
    }

    /// Evaluates a batch of committed readings from the broadcast, after the readings before it
    /// that the task missed (read back from the store).
    async fn on_batch(
        &self,
        batch: Result<Arc<Vec<LiveReading>>, RecvError>,
        evaluator: &mut Evaluator,
        following: &mut Option<Following>,
        clock: &Clock,
        round: &mut Round,
    ) -> Result<(), String> {
        let Some(f) = following.as_mut() else {
            return Ok(());
        };
        // Labels changed: which rules select which device is worked out again.
        let labels_version = self.store.labels_version();
        if labels_version != f.labels_version {
            f.labels_version = labels_version;
            evaluator.forget_selection();
        }
        let batch = match batch {
            Ok(batch) => batch,
            Err(RecvError::Lagged(_)) => {
                let end = self.durable.next_offset();
                return self.catch_up(evaluator, f, end, clock).await;
            }
            Err(RecvError::Closed) => {
                *following = None;
                return Ok(());
            }
        };
        if let Some(first) = batch.first()
            && first.offset > f.next_offset
        {
            self.catch_up(evaluator, f, first.offset, clock).await?;
        }
        let store = self.store.clone();
        let labels = move |device: &str| store.device_labels(device).ok().flatten();
        let now = clock.now_ms();
        for r in batch.iter() {
            if r.offset < f.next_offset {
                continue; // evaluated in the catch-up
            }
            let reading = Reading {
                device: &r.device,
                timestamp_ms: r.timestamp_ms,
                metrics: &r.metrics,
            };
            evaluator.reading(&reading, now, &labels, round);
            f.next_offset = r.offset + 1;
        }
        Ok(())
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

    /// Evaluates the durable readings from where `following` is up to `end`, read back from the
    /// store a page at a time; each page's transitions are committed with the offset past it.
    async fn catch_up(
        &self,
        evaluator: &mut Evaluator,
        following: &mut Following,
        end: u64,
        clock: &Clock,
    ) -> Result<(), String> {
        let store = self.store.clone();
        let labels = move |device: &str| store.device_labels(device).ok().flatten();
        while following.next_offset < end {
            let store = self.store.clone();
            let from = following.next_offset;
            let page = blocking("reading missed readings", move || {
                store.readings_from(from, end, CATCH_UP_PAGE)
            })
            .await?;
            self.stats
                .caught_up
                .fetch_add(page.len() as u64, Ordering::Relaxed);
            let now = clock.now_ms();
            let mut round = Round::default();
            for r in &page {
                let reading = Reading {
                    device: &r.device,
                    timestamp_ms: r.timestamp_ms,
                    metrics: &r.metrics,
                };
                evaluator.reading(&reading, now, &labels, &mut round);
            }
            // Past the page; past `end` when nothing is left before it (retention took them).
            following.next_offset = page.last().map_or(end, |last| last.offset + 1);
            let offset = following.offset_to_save(!round.is_empty());
            self.commit(evaluator, round, now, offset).await?;
        }
        Ok(())
    }

    /// Commits a round's transitions, then runs their actions.
    /// With `next_offset`, also where the rules are in the readings (see [`Following`]).
    async fn commit(
        &self,
        evaluator: &Evaluator,
        round: Round,
        now_ms: u64,
        next_offset: Option<u64>,
    ) -> Result<(), String> {
        let s = &self.stats;
        s.expr_errors
            .fetch_add(round.expr_errors, Ordering::Relaxed);
        s.refused.fetch_add(round.refused, Ordering::Relaxed);
        if round.is_empty() && next_offset.is_none() {
            return Ok(());
        }
        let outbox = actions::outbox_entries(&self.actions.hub, &round.notified, now_ms);
        let queued = outbox.len() as u64;
        let changes = AlertChanges {
            states: round.states,
            forgotten: round.forgotten,
            events: round.notified.iter().map(|n| n.event.clone()).collect(),
            outbox,
            next_offset,
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
