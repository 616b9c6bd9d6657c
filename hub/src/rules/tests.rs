//! The rules task under a paused clock: readings are stored and come on the live broadcast as
//! the store writer sends them (or only stored, as when the broadcast lags or the hub stopped
//! before evaluating them), alerts are read from the live events and the store.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use device_protocol::OwnedValue;
use serde::Deserialize;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::live::{AlertNote, Presence};
use crate::store::alerts::AlertState;
use crate::store::memory::MemoryEngine;

#[derive(Deserialize)]
struct File {
    rules: Vec<RuleConfig>,
}

fn rules(text: &str) -> Vec<RuleConfig> {
    toml::from_str::<File>(text).expect("rules parse").rules
}

struct Harness {
    store: Store,
    live: Live,
    announcer: crate::store::durable::Announcer,
    config_tx: watch::Sender<Vec<RuleConfig>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), String>>,
    events: broadcast::Receiver<Event>,
    stats: Arc<RulesStats>,
}

fn start(store: Store, config: Vec<RuleConfig>) -> Harness {
    let live = Live::new();
    let events = live.events_tx.subscribe();
    let (config_tx, config_rx) = watch::channel(config);
    let (_changed_tx, changed_rx) = watch::channel(0);
    let stats = Arc::new(RulesStats::new(store.clone()));
    let (announcer, durable) = crate::store::durable::channel(store.next_offset().unwrap());
    let task = RulesTask {
        store: store.clone(),
        live: live.clone(),
        presence: Arc::new(Presence::new(Duration::from_secs(300))),
        durable,
        config_rx,
        changed_rx,
        actions: Actions {
            hub: "hub-1".into(),
            commands: None,
            publisher: None,
            live: live.clone(),
            stats: stats.actions.clone(),
        },
        outbox_wake: Arc::new(Notify::new()),
        stats: stats.clone(),
    };
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(task.run(shutdown.clone()));
    Harness {
        store,
        live,
        announcer,
        config_tx,
        shutdown,
        task: handle,
        events,
        stats,
    }
}

/// Lets the task (and its blocking store calls) finish what it was given, without moving the
/// paused clock.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Harness {
    async fn ready(&self) {
        for _ in 0..200 {
            if self.live.readings_tx.receiver_count() > 0 {
                settle().await;
                return;
            }
            settle().await;
        }
        panic!("the rules task never listened to readings");
    }

    /// Stores a reading durably and announces the commit, as the store writer does, without
    /// broadcasting it; the reading as the broadcast would carry it.
    fn store_only(&self, device: &str, metrics: &[(&str, OwnedValue)]) -> LiveReading {
        let metrics: Vec<(String, OwnedValue)> = metrics
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect();
        let now = crate::clock::now_ms();
        let applied = self
            .store
            .append(&[crate::store::NewReading {
                device: device.into(),
                transport: crate::store::Transport::Mqtt,
                wire: crate::store::Wire::Json,
                seq: None,
                boot: None,
                timestamp_ms: Some(now),
                received_ms: now,
                metrics: metrics.clone(),
            }])
            .unwrap();
        let crate::store::Outcome::Stored { offset, seq } = applied[0].outcome else {
            panic!("not stored: {:?}", applied[0].outcome);
        };
        self.announcer.committed(self.store.next_offset().unwrap());
        LiveReading {
            offset,
            device: device.into(),
            seq,
            timestamp_ms: now,
            metrics,
        }
    }

    /// Stores readings and broadcasts them as one batch.
    fn batch(&self, readings: &[(&str, &[(&str, OwnedValue)])]) {
        let batch: Vec<LiveReading> = readings
            .iter()
            .map(|(device, metrics)| self.store_only(device, metrics))
            .collect();
        self.live.readings_tx.send(Arc::new(batch)).unwrap();
    }

    async fn reading(&mut self, device: &str, metrics: &[(&str, OwnedValue)]) {
        self.batch(&[(device, metrics)]);
        settle().await;
    }

    async fn value(&mut self, device: &str, metric: &str, v: f64) {
        self.reading(device, &[(metric, OwnedValue::F64(v))]).await;
    }

    /// Alert events since the last call.
    fn alerts(&mut self) -> Vec<Arc<AlertNote>> {
        let mut found = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            if let Event::Alert(note) = event {
                found.push(note);
            }
        }
        found
    }

    fn states(&self, rule: &str) -> Vec<(&'static str, u64)> {
        let mut alerts = self.store.alerts().unwrap();
        alerts.retain(|a| a.rule == rule);
        alerts
            .iter()
            .map(|a| (a.state.name(), a.transition))
            .collect()
    }

    async fn stop(self) -> Store {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        self.store
    }

    /// Ends the task as a kill -9 would: no goodbye, nothing saved on the way out. What it
    /// committed stays in the store.
    async fn crash(self) -> Store {
        self.task.abort();
        let _ = self.task.await;
        self.store
    }
}

async fn advance(d: Duration) {
    tokio::time::advance(d).await;
    settle().await;
}

/// Settles until `done` holds (the task's store calls run on real threads), or fails.
async fn settle_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        settle().await;
    }
    panic!("never: {what}");
}

fn names(notes: &[Arc<AlertNote>]) -> Vec<(&'static str, u64)> {
    notes.iter().map(|n| (n.state, n.transition)).collect()
}

/// `hot`: `temp` above 30 fires, each transition queued for a webhook (nobody listens).
fn hot_with_webhook() -> Vec<RuleConfig> {
    rules(
        r#"
[[rules]]
name = "hot"
metric = "temp"
above = 30.0
actions = [{ webhook = "http://127.0.0.1:9/hook" }]
"#,
    )
}

fn memory_store() -> Store {
    Store::open(Arc::new(MemoryEngine::new())).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_threshold_fires_after_its_for_and_resolves_past_its_hysteresis() {
    let mut h = start(
        memory_store(),
        rules(
            r#"
[[rules]]
name = "freezer-warm"
devices = "freezer-*"
metric = "temp"
above = -15.0
hysteresis = 1.0
for = "2m"
"#,
        ),
    );
    h.ready().await;
    h.value("freezer-1", "temp", -14.0).await;
    h.value("fridge-1", "temp", 5.0).await;
    assert!(h.alerts().is_empty(), "pending, not firing");
    assert_eq!(h.states("freezer-warm"), [("pending", 0)]);

    advance(Duration::from_secs(60)).await;
    h.value("freezer-1", "temp", -14.5).await;
    assert!(h.alerts().is_empty(), "one minute of two");

    // No reading needed: the tick fires it once the condition held for `for`.
    advance(Duration::from_secs(61)).await;
    assert_eq!(names(&h.alerts()), [("firing", 1)]);

    // Below the threshold but within the hysteresis: still firing.
    h.value("freezer-1", "temp", -15.5).await;
    assert!(h.alerts().is_empty());
    h.value("freezer-1", "temp", -16.5).await;
    assert_eq!(names(&h.alerts()), [("resolved", 2)]);
    assert_eq!(h.states("freezer-warm"), [("resolved", 2)]);

    // Back above, then below again before `for`: pending, then quietly back to resolved.
    h.value("freezer-1", "temp", -10.0).await;
    advance(Duration::from_secs(30)).await;
    h.value("freezer-1", "temp", -20.0).await;
    advance(Duration::from_secs(300)).await;
    assert!(h.alerts().is_empty());
    assert_eq!(h.states("freezer-warm"), [("resolved", 2)]);

    let history = h.store.alert_history(None, None, 10).unwrap();
    let states: Vec<AlertState> = history.iter().map(|(_, e)| e.state).collect();
    assert_eq!(states, [AlertState::Resolved, AlertState::Firing]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn silence_and_offline_raise_and_clear_alerts() {
    let mut h = start(
        memory_store(),
        rules(
            r#"
[[rules]]
name = "pump-silent"
devices = "pump-*"
silent = "10m"

[[rules]]
name = "pump-offline"
devices = "pump-*"
offline = true
"#,
        ),
    );
    h.ready().await;
    h.value("pump-1", "flow", 3.0).await;
    advance(Duration::from_secs(9 * 60)).await;
    assert!(h.alerts().is_empty());
    advance(Duration::from_secs(61)).await;
    let fired = h.alerts();
    assert_eq!(names(&fired), [("firing", 1)]);
    assert_eq!(fired[0].rule, "pump-silent");
    h.value("pump-1", "flow", 3.0).await;
    assert_eq!(names(&h.alerts()), [("resolved", 2)]);

    let offline = |change| Event::Device {
        device: "pump-1".into(),
        change,
        reason: "silent",
        at_ms: 0,
    };
    h.live.event(offline(DeviceChange::Offline));
    settle().await;
    let fired = h.alerts();
    assert_eq!(names(&fired), [("firing", 1)]);
    assert_eq!(fired[0].rule, "pump-offline");
    h.live.event(offline(DeviceChange::Online));
    settle().await;
    assert_eq!(names(&h.alerts()), [("resolved", 2)]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_expression_rule_reads_the_readings_metrics() {
    let mut h = start(
        memory_store(),
        rules(
            r#"
[[rules]]
name = "muggy"
metric = "temp"
expr = "value > 30.0 && hum >= 80"
"#,
        ),
    );
    h.ready().await;
    let reading = |t: f64, hum: i64| [("temp", OwnedValue::F64(t)), ("hum", OwnedValue::I64(hum))];
    h.reading("room-1", &reading(31.0, 70)).await;
    assert!(h.alerts().is_empty());
    h.reading("room-1", &reading(31.0, 85)).await;
    assert_eq!(names(&h.alerts()), [("firing", 1)]);
    h.reading("room-1", &reading(29.0, 85)).await;
    assert_eq!(names(&h.alerts()), [("resolved", 2)]);
    // A reading without `hum` cannot be evaluated: counted, nothing changes.
    h.value("room-1", "temp", 35.0).await;
    assert!(h.alerts().is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_keeps_a_firing_alert_and_does_not_notify_it_again() {
    let config = hot_with_webhook();
    let mut h = start(memory_store(), config.clone());
    h.ready().await;
    h.value("oven-1", "temp", 35.0).await;
    assert_eq!(names(&h.alerts()), [("firing", 1)]);
    let store = h.stop().await;
    let outbox = store.outbox(10).unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].1.key, "hub-1.hot.oven-1.1");

    let mut h = start(store, config);
    h.ready().await;
    h.value("oven-1", "temp", 36.0).await;
    advance(Duration::from_secs(5)).await;
    assert!(h.alerts().is_empty(), "still firing: nothing new");
    assert_eq!(h.states("hot"), [("firing", 1)]);
    h.value("oven-1", "temp", 20.0).await;
    assert_eq!(names(&h.alerts()), [("resolved", 2)]);
    let keys: Vec<String> = h
        .store
        .outbox(10)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.key)
        .collect();
    assert_eq!(keys, ["hub-1.hot.oven-1.1", "hub-1.hot.oven-1.2"]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_flapping_metric_notifies_at_most_once_per_minimum_interval() {
    let mut h = start(
        memory_store(),
        rules(
            r#"
[[rules]]
name = "flappy"
metric = "level"
above = 10.0
hysteresis = 1.0
min_interval = "1m"
"#,
        ),
    );
    h.ready().await;
    // Across the threshold and well past the hysteresis every second, for five minutes.
    for i in 0..300 {
        let v = if i % 2 == 0 { 20.0 } else { 0.0 };
        h.value("tank-1", "level", v).await;
        advance(Duration::from_secs(1)).await;
    }
    let notes = h.alerts();
    let fired_at: Vec<u64> = (notes.iter())
        .filter(|n| n.state == "firing")
        .map(|n| n.at_ms)
        .collect();
    // One firing at the start, then one per minute (the condition holds every other second),
    // never two within a minute; each firing resolves once.
    assert!((5..=6).contains(&fired_at.len()), "{fired_at:?}");
    assert!(
        fired_at.windows(2).all(|w| w[1] - w[0] >= 60_000),
        "{fired_at:?}"
    );
    assert!(
        notes.len() <= 2 * fired_at.len(),
        "{} notifications",
        notes.len()
    );
    let numbers: Vec<u64> = notes.iter().map(|n| n.transition).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn rules_change_on_reload_and_alerts_of_removed_rules_are_forgotten() {
    let mut h = start(
        memory_store(),
        rules("[[rules]]\nname = \"a\"\nmetric = \"x\"\nabove = 1.0\n"),
    );
    h.ready().await;
    h.value("d", "x", 2.0).await;
    assert_eq!(names(&h.alerts()), [("firing", 1)]);
    h.config_tx
        .send(rules(
            "[[rules]]\nname = \"b\"\nmetric = \"x\"\nbelow = 0.0\n",
        ))
        .unwrap();
    settle().await;
    assert!(h.states("a").is_empty());
    h.value("d", "x", -1.0).await;
    let fired = h.alerts();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].rule, "b");
    // No rules at all: the task stops listening to readings.
    h.config_tx.send(Vec::new()).unwrap();
    settle().await;
    assert_eq!(h.live.readings_tx.receiver_count(), 0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn rules_select_devices_by_their_labels_and_follow_label_changes() {
    let mut h = start(
        memory_store(),
        rules(
            r#"
[[rules]]
name = "cold-room-warm"
labels = { room = "cold" }
metric = "temp"
above = 5.0
"#,
        ),
    );
    h.ready().await;
    let room = |store: &Store, device: &str, room: &str| {
        let labels = [("room".to_owned(), room.to_owned())].into();
        let patch = crate::store::DevicePatch {
            labels: Some(labels),
            display_name: None,
        };
        store.update_device(device, &patch).unwrap().unwrap();
    };
    // Registered by their first readings, unlabelled: the rule selects neither.
    h.value("fridge-1", "temp", 9.0).await;
    h.value("oven-1", "temp", 9.0).await;
    assert!(h.alerts().is_empty());
    // Labelled in the registry (as `PATCH /api/v1/devices/{id}` does): seen at the next reading.
    room(&h.store, "fridge-1", "cold");
    room(&h.store, "oven-1", "kitchen");
    h.value("fridge-1", "temp", 8.0).await;
    h.value("oven-1", "temp", 250.0).await;
    let fired = h.alerts();
    assert_eq!(names(&fired), [("firing", 1)]);
    assert_eq!(fired[0].device, "fridge-1");
    // The oven moves into the cold room.
    room(&h.store, "oven-1", "cold");
    h.value("oven-1", "temp", 7.0).await;
    let fired = h.alerts();
    assert_eq!(names(&fired), [("firing", 1)]);
    assert_eq!(fired[0].device, "oven-1");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_burst_past_the_broadcast_backlog_is_caught_up_from_the_store_each_reading_once() {
    let mut h = start(
        memory_store(),
        rules("[[rules]]\nname = \"flip\"\nmetric = \"level\"\nabove = 10.0\n"),
    );
    h.ready().await;
    // Every reading crosses the threshold one way or the other, so each is one transition: a
    // reading missed or evaluated twice would show in their count and numbers.
    let count = 3 * crate::live::READINGS_BACKLOG as u64 + 1;
    for i in 0..count {
        let level = if i % 2 == 0 { 20.0 } else { 0.0 };
        // One batch each, sent before the task runs: the broadcast drops the oldest.
        h.batch(&[("tank-1", &[("level", OwnedValue::F64(level))])]);
    }
    settle_until("every transition", || {
        h.states("flip").first().map(|s| s.1) == Some(count)
    })
    .await;
    let notes = h.alerts();
    let numbers: Vec<u64> = notes.iter().map(|n| n.transition).collect();
    assert_eq!(numbers, (1..=count).collect::<Vec<_>>());
    assert!(notes.iter().all(|n| n.state
        == if n.transition % 2 == 1 {
            "firing"
        } else {
            "resolved"
        }));
    let read_back = h.stats.caught_up.load(Ordering::Relaxed);
    assert!(
        read_back > 0,
        "the task lagged and read back from the store"
    );
    assert_eq!(
        h.store.alert_history(None, None, 1000).unwrap().len() as u64,
        count
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn readings_stored_but_not_evaluated_before_a_crash_are_evaluated_once_after_it() {
    let config = hot_with_webhook();
    let mut h = start(memory_store(), config.clone());
    h.ready().await;
    h.value("oven-1", "temp", 35.0).await;
    assert_eq!(names(&h.alerts()), [("firing", 1)]);
    // Evaluated, changing nothing: where the rules are is not saved for it.
    h.value("oven-1", "temp", 36.0).await;
    // Committed (acknowledged to the device) but the hub dies before the rules see them.
    h.store_only("oven-1", &[("temp", OwnedValue::F64(20.0))]);
    h.store_only("oven-1", &[("temp", OwnedValue::F64(40.0))]);
    h.store_only("oven-2", &[("temp", OwnedValue::F64(50.0))]);
    let store = h.crash().await;

    let mut h = start(store, config.clone());
    h.ready().await;
    settle_until("the catch-up", || h.states("hot").len() == 2).await;
    let notes: Vec<(String, &str, u64)> = (h.alerts().iter())
        .map(|n| (n.device.clone(), n.state, n.transition))
        .collect();
    assert_eq!(
        notes,
        [
            ("oven-1".into(), "resolved", 2),
            ("oven-1".into(), "firing", 3),
            ("oven-2".into(), "firing", 1),
        ],
        "each missed reading once, nothing of before the crash again"
    );
    // Read back: the four readings past the saved offset (the one that changed nothing again).
    assert_eq!(h.stats.caught_up.load(Ordering::Relaxed), 4);
    let keys = |store: &Store| -> Vec<String> {
        store
            .outbox(10)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.key)
            .collect()
    };
    let expected = [
        "hub-1.hot.oven-1.1",
        "hub-1.hot.oven-1.2",
        "hub-1.hot.oven-1.3",
        "hub-1.hot.oven-2.1",
    ];
    assert_eq!(keys(&h.store), expected);

    // A second crash right after: the catch-up's offset was saved, nothing is read back or
    // notified again.
    let store = h.crash().await;
    let mut h = start(store, config);
    h.ready().await;
    settle().await;
    assert!(h.alerts().is_empty());
    assert_eq!(h.stats.caught_up.load(Ordering::Relaxed), 0);
    assert_eq!(keys(&h.store), expected);
    h.stop().await;
}

#[test]
fn bad_rules_are_refused_with_every_problem_listed() {
    let problems = config_problems(&rules(
        r#"
[[rules]]
name = "no good"
metric = "temp"
above = 1.0
below = 2.0
for = "2 weeks"
actions = [{ webhook = "http://example.com/hook" }, { log = "loud" }, {}]

[[rules]]
name = "dup"
silent = "10m"
hysteresis = 1.0

[[rules]]
name = "dup"
expr = "value >"
"#,
    ));
    let expected = [
        "rules[0] (no good).name:",
        "rules[0] (no good).one condition per rule, found above, below",
        "rules[0] (no good).for:",
        "rules[0] (no good).actions[0].webhook:",
        "rules[0] (no good).actions[1].log:",
        "rules[0] (no good).actions[2]: give exactly one",
        "rules[1] (dup).hysteresis: only with above or below",
        "rules[2] (dup).name: used by an earlier rule",
        "rules[2] (dup).expr:",
    ];
    for want in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "missing {want:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
}
