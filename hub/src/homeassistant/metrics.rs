//! What the Home Assistant publisher counts, for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::exposition::{Collect, CollectError, Exposition};

/// The publisher's counters.
#[derive(Debug, Default)]
pub struct HomeAssistantStats {
    /// 1 while connected to the broker.
    pub connected: AtomicU64,
    /// Device metrics announced now.
    pub entities: AtomicU64,
    /// Discovery configs, availability and status messages published.
    pub announced: AtomicU64,
    /// States published.
    pub states: AtomicU64,
    /// States dropped because the queue to the broker was full.
    pub dropped_queue: AtomicU64,
    /// Device metrics not announced because `max_entities` was reached.
    pub dropped_cap: AtomicU64,
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Collect for HomeAssistantStats {
    fn collect(&self, out: &mut Exposition) -> Result<(), CollectError> {
        out.single(
            "hub_homeassistant_connected",
            "gauge",
            "1 while the Home Assistant publisher is connected to its broker.",
            get(&self.connected),
        );
        out.single(
            "hub_homeassistant_entities",
            "gauge",
            "Device metrics announced to Home Assistant.",
            get(&self.entities),
        );
        out.single(
            "hub_homeassistant_announcements_total",
            "counter",
            "Discovery configs, availability and status messages published.",
            get(&self.announced),
        );
        out.single(
            "hub_homeassistant_states_total",
            "counter",
            "States published.",
            get(&self.states),
        );
        out.family(
            "hub_homeassistant_dropped_total",
            "counter",
            "What was not published: states when the queue was full, device metrics beyond max_entities.",
        );
        out.sample(
            "hub_homeassistant_dropped_total",
            "reason=\"queue\"",
            get(&self.dropped_queue),
        );
        out.sample(
            "hub_homeassistant_dropped_total",
            "reason=\"cap\"",
            get(&self.dropped_cap),
        );
        Ok(())
    }
}
