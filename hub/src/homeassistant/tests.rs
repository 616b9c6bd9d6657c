//! The publisher's model: what it queues, and its bounds.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use device_protocol::OwnedValue;

use super::discovery::Topics;
use super::{HomeAssistantStats, Model};
use crate::live::Presence;

fn model(max_entities: usize, queue: usize) -> Model {
    Model {
        topics: Topics {
            discovery_prefix: "homeassistant".into(),
            state_prefix: "hub".into(),
            hub_id: "gw".into(),
        },
        max_entities,
        queue,
        devices: BTreeMap::new(),
        entities: 0,
        connected: true,
        backlog: VecDeque::new(),
        stats: Arc::new(HomeAssistantStats::default()),
    }
}

fn topics(m: &Model) -> Vec<String> {
    m.backlog.iter().map(|m| m.topic.clone()).collect()
}

fn values(pairs: &[(&str, OwnedValue)]) -> Vec<(String, OwnedValue)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect()
}

#[test]
fn a_new_device_is_announced_once_with_its_availability_and_states() {
    let presence = Presence::new(Duration::from_secs(60));
    let mut m = model(10, 100);
    let reading = values(&[("t", OwnedValue::F64(1.5)), ("on", OwnedValue::Bool(true))]);
    m.see("d1", None, &reading, &presence);
    assert_eq!(
        topics(&m),
        [
            "hub/d1/availability",
            "homeassistant/sensor/d1/t/config",
            "hub/d1/t",
            "homeassistant/binary_sensor/d1/on/config",
            "hub/d1/on",
        ]
    );
    m.backlog.clear();
    m.see("d1", None, &reading, &presence);
    assert_eq!(topics(&m), ["hub/d1/t", "hub/d1/on"], "announced only once");
    assert_eq!(m.stats.entities.load(Ordering::Relaxed), 2);
}

#[test]
fn metrics_beyond_the_cap_are_counted_and_not_announced() {
    let presence = Presence::new(Duration::from_secs(60));
    let mut m = model(2, 100);
    let reading = values(&[
        ("a", OwnedValue::I64(1)),
        ("b", OwnedValue::I64(2)),
        ("c", OwnedValue::I64(3)),
    ]);
    m.see("d1", None, &reading, &presence);
    m.see("d2", None, &reading, &presence);
    assert_eq!(m.entities, 2);
    assert_eq!(m.stats.dropped_cap.load(Ordering::Relaxed), 1 + 3);
    assert!(
        !topics(&m)
            .iter()
            .any(|t| t.contains("/c/") || t.contains("d2"))
    );
}

#[test]
fn states_beyond_the_queue_are_dropped_and_counted_configs_are_not() {
    let presence = Presence::new(Duration::from_secs(60));
    let mut m = model(10, 16);
    for i in 0..40 {
        m.see("d1", None, &values(&[("v", OwnedValue::I64(i))]), &presence);
    }
    assert_eq!(m.backlog.len(), 16);
    assert_eq!(m.stats.dropped_queue.load(Ordering::Relaxed), 40 - 14);
    m.see("d1", None, &values(&[("w", OwnedValue::I64(0))]), &presence);
    assert!(topics(&m).contains(&"homeassistant/sensor/d1/w/config".to_owned()));
}

#[test]
fn while_disconnected_only_the_model_moves_and_a_connection_brings_the_latest_of_everything() {
    let presence = Presence::new(Duration::from_secs(60));
    let mut m = model(10, 100);
    m.connected = false;
    for i in 0..5 {
        m.see("d1", None, &values(&[("v", OwnedValue::I64(i))]), &presence);
    }
    assert!(m.backlog.is_empty());
    m.connected = true;
    m.announce_all(&presence);
    assert_eq!(
        topics(&m),
        [
            "hub/status",
            "hub/d1/availability",
            "homeassistant/sensor/d1/v/config",
            "hub/d1/v"
        ]
    );
    assert_eq!(
        m.backlog.back().map(|b| b.payload.clone()),
        Some(b"4".to_vec())
    );
}

#[test]
fn a_metric_that_changes_type_is_removed_and_announced_anew() {
    let presence = Presence::new(Duration::from_secs(60));
    let mut m = model(10, 100);
    m.see(
        "d1",
        None,
        &values(&[("x", OwnedValue::Bool(true))]),
        &presence,
    );
    m.backlog.clear();
    m.see(
        "d1",
        None,
        &values(&[("x", OwnedValue::F64(2.0))]),
        &presence,
    );
    let removal = &m.backlog[0];
    assert_eq!(removal.topic, "homeassistant/binary_sensor/d1/x/config");
    assert!(removal.payload.is_empty());
    assert_eq!(m.backlog[1].topic, "homeassistant/sensor/d1/x/config");
    assert_eq!(m.entities, 1);
}
