//! Live updates: what happened in the store, told to whoever listens (WebSocket clients, the
//! command dispatcher) once it is durable, and which devices are reachable now.
//!
//! The store writer publishes after each commit, so a listener never sees a reading that a crash
//! could still take away. Two broadcast channels keep the volumes apart: `readings` (one message
//! per committed batch, built only while someone listens) and `events` (device and command
//! events, few). Both are bounded: a listener that falls behind loses the oldest messages and
//! learns how many it lost (`RecvError::Lagged`); it never slows the writer.
//!
//! [`Presence`] decides online and offline: a device is online from any message until it is
//! silent for `offline_after`, or until its transport reports it gone (an MQTT last will or
//! `offline` status, a serial line lost). Only changes become events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use device_protocol::OwnedValue;
use tokio::sync::broadcast;

use crate::store::CommandState;

/// Reading batches a slow listener may fall behind before it loses the oldest. A batch holds up
/// to `ingest.batch_max` readings, so this bounds the memory a stuck listener can pin.
pub const READINGS_BACKLOG: usize = 64;
/// Events a slow listener may fall behind before it loses the oldest.
pub const EVENTS_BACKLOG: usize = 1024;

/// A durable reading, as live listeners get it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveReading {
    /// Hub offset.
    pub offset: u64,
    /// Device id.
    pub device: String,
    /// How it is numbered.
    pub seq: crate::store::ReadingSeq,
    /// Timestamp (device clock, or hub receive time).
    pub timestamp_ms: u64,
    /// Metric names and values.
    pub metrics: Vec<(String, OwnedValue)>,
}

impl LiveReading {
    /// The reading in its JSON form, with `metrics` (those a listener asked for).
    pub fn json(
        &self,
        metrics: std::collections::BTreeMap<String, crate::values::MetricValue>,
    ) -> crate::values::ReadingJson {
        crate::values::ReadingJson {
            boot: self.seq.boot(),
            device: self.device.clone(),
            hub_seq: self.seq.hub_seq(),
            metrics,
            offset: self.offset,
            seq: self.seq.device_seq(),
            ts: crate::clock::rfc3339(self.timestamp_ms),
        }
    }
}

/// What happened to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChange {
    /// First seen.
    New,
    /// Reachable again.
    Online,
    /// Not reachable any more.
    Offline,
}

impl DeviceChange {
    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            DeviceChange::New => "new",
            DeviceChange::Online => "online",
            DeviceChange::Offline => "offline",
        }
    }
}

/// An event the live stream and the dispatcher get.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A device changed.
    Device {
        /// Device id.
        device: String,
        /// What changed.
        change: DeviceChange,
        /// Why: `seen`, `reported`, `silent`, `link_down`, `registered`; for a Modbus device also
        /// `timeout`, `exception`, `bad_frame` (see `ingest::modbus`).
        reason: &'static str,
        /// When (hub clock, unix ms).
        at_ms: u64,
    },
    /// A command changed state.
    Command {
        /// Device id.
        device: String,
        /// Command id.
        id: u64,
        /// Its new state.
        state: CommandState,
    },
    /// An alert was notified as firing or resolved (see `rules`).
    Alert(Arc<AlertNote>),
}

/// An alert transition, as live listeners get it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertNote {
    /// The device.
    pub device: String,
    /// The rule.
    pub rule: String,
    /// `firing` or `resolved`.
    pub state: &'static str,
    /// The transition's number for this alert.
    pub transition: u64,
    /// The value that moved it, if any.
    pub value: Option<f64>,
    /// When (hub clock, unix ms).
    pub at_ms: u64,
}

impl Event {
    /// The device it is about.
    pub fn device(&self) -> &str {
        match self {
            Event::Device { device, .. } | Event::Command { device, .. } => device,
            Event::Alert(note) => &note.device,
        }
    }
}

/// The senders of both channels, shared by the writer, the presence sweeper and the dispatcher.
#[derive(Debug, Clone)]
pub struct Live {
    /// Committed readings, one message per batch.
    pub readings_tx: broadcast::Sender<Arc<Vec<LiveReading>>>,
    /// Device and command events.
    pub events_tx: broadcast::Sender<Event>,
}

impl Live {
    /// Channels with the standard backlogs.
    pub fn new() -> Self {
        Live {
            readings_tx: broadcast::Sender::new(READINGS_BACKLOG),
            events_tx: broadcast::Sender::new(EVENTS_BACKLOG),
        }
    }

    /// Publishes an event; nobody listening is fine.
    pub fn event(&self, event: Event) {
        let _ = self.events_tx.send(event);
    }
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Copy)]
struct State {
    online: bool,
    last_seen_ms: u64,
}

/// The devices' states, and when devices last came that the map had not seen.
#[derive(Debug, Default)]
struct Devices {
    states: HashMap<String, State>,
    /// Devices new to the map since it was last packed (see [`Presence::sweep`]).
    new_since_packed: usize,
    last_new_ms: u64,
}

/// New devices that make it worth packing the map once they stop coming.
const PACK_AFTER_NEW: usize = 64;
/// How long no new device has come before the map is packed.
const PACK_WHEN_QUIET_MS: u64 = 10_000;

impl Devices {
    /// Copies the names into fresh allocations, side by side, and frees the old ones: each was
    /// allocated when its device first came, among a load's short-lived buffers, where it kept the
    /// freed pages around it from going back to the system (see `Store::release_memory`).
    fn pack(&mut self) {
        self.states = crate::memory::packed(|| {
            self.states
                .iter()
                .map(|(device, state)| (device.clone(), *state))
                .collect()
        });
        self.new_since_packed = 0;
    }
}

/// Which devices are reachable now. Cheap to share; every method takes one short lock.
#[derive(Debug)]
pub struct Presence {
    offline_after_ms: u64,
    devices: Mutex<Devices>,
}

impl Presence {
    /// A tracker that calls a device offline after `offline_after` of silence.
    pub fn new(offline_after: Duration) -> Self {
        Presence {
            offline_after_ms: offline_after.as_millis() as u64,
            devices: Mutex::new(Devices::default()),
        }
    }

    /// Starts from what the store knows: each device's last message time.
    pub fn load<'a>(&self, devices: impl IntoIterator<Item = (&'a str, u64)>, now_ms: u64) {
        let Ok(mut map) = self.devices.lock() else {
            return;
        };
        for (device, last_seen_ms) in devices {
            let online = now_ms.saturating_sub(last_seen_ms) < self.offline_after_ms;
            map.states.insert(
                device.to_owned(),
                State {
                    online,
                    last_seen_ms,
                },
            );
        }
    }

    /// A message from `device` at `at_ms`: its `Online` event if it was not online.
    pub fn seen(&self, device: &str, at_ms: u64) -> Option<Event> {
        let mut map = self.devices.lock().ok()?;
        let was_online = match map.states.get_mut(device) {
            Some(state) => {
                state.last_seen_ms = state.last_seen_ms.max(at_ms);
                std::mem::replace(&mut state.online, true)
            }
            None => {
                map.states.insert(
                    device.to_owned(),
                    State {
                        online: true,
                        last_seen_ms: at_ms,
                    },
                );
                map.new_since_packed += 1;
                map.last_new_ms = at_ms;
                false
            }
        };
        (!was_online).then(|| Event::Device {
            device: device.to_owned(),
            change: DeviceChange::Online,
            reason: "seen",
            at_ms,
        })
    }

    /// The transport says `device` is gone: its `Offline` event if it was online.
    pub fn gone(&self, device: &str, reason: &'static str, at_ms: u64) -> Option<Event> {
        let mut map = self.devices.lock().ok()?;
        let state = map.states.get_mut(device)?;
        std::mem::replace(&mut state.online, false).then(|| Event::Device {
            device: device.to_owned(),
            change: DeviceChange::Offline,
            reason,
            at_ms,
        })
    }

    /// Devices silent for longer than the window go offline: their events. Once many new
    /// devices have come and then stopped coming (a load is over), the map is also packed.
    pub fn sweep(&self, now_ms: u64) -> Vec<Event> {
        let Ok(mut map) = self.devices.lock() else {
            return Vec::new();
        };
        if map.new_since_packed >= PACK_AFTER_NEW
            && now_ms.saturating_sub(map.last_new_ms) >= PACK_WHEN_QUIET_MS
        {
            map.pack();
        }
        let mut events = Vec::new();
        for (device, state) in map.states.iter_mut() {
            if state.online && now_ms.saturating_sub(state.last_seen_ms) >= self.offline_after_ms {
                state.online = false;
                events.push(Event::Device {
                    device: device.clone(),
                    change: DeviceChange::Offline,
                    reason: "silent",
                    at_ms: now_ms,
                });
            }
        }
        events
    }

    /// Forgets `device` (removed): it is neither online nor offline until it is seen again.
    pub fn forget(&self, device: &str) {
        if let Ok(mut map) = self.devices.lock() {
            map.states.remove(device);
        }
    }

    /// How many devices are online.
    pub fn online_count(&self) -> usize {
        self.devices
            .lock()
            .map(|map| map.states.values().filter(|s| s.online).count())
            .unwrap_or(0)
    }

    /// Whether `device` is online; `false` for a device never seen.
    pub fn is_online(&self, device: &str) -> bool {
        self.devices
            .lock()
            .ok()
            .and_then(|map| map.states.get(device).map(|s| s.online))
            .unwrap_or(false)
    }
}

impl crate::exposition::Collect for Presence {
    fn collect(
        &self,
        out: &mut crate::exposition::Exposition,
    ) -> Result<(), crate::exposition::CollectError> {
        out.single(
            "hub_devices_online",
            "gauge",
            "Devices online now.",
            self.online_count(),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(event: Option<Event>) -> Option<(DeviceChange, &'static str)> {
        match event {
            Some(Event::Device { change, reason, .. }) => Some((change, reason)),
            _ => None,
        }
    }

    #[test]
    fn the_map_is_packed_once_new_devices_stop_coming_and_keeps_every_state() {
        let p = Presence::new(Duration::from_secs(60));
        for i in 0..PACK_AFTER_NEW {
            p.seen(&format!("d-{i}"), 1_000 + i as u64);
        }
        p.gone("d-0", "reported", 2_000);
        // New devices came 1 s ago: not yet.
        assert!(p.sweep(2_100).is_empty());
        assert_eq!(p.devices.lock().unwrap().new_since_packed, PACK_AFTER_NEW);
        // Quiet for 10 s: packed, with every device as it was.
        assert!(p.sweep(1_063 + PACK_WHEN_QUIET_MS).is_empty());
        assert_eq!(p.devices.lock().unwrap().new_since_packed, 0);
        assert_eq!(p.online_count(), PACK_AFTER_NEW - 1);
        assert!(!p.is_online("d-0"));
        assert!(p.is_online("d-63"));
        // And silence still takes them offline.
        assert_eq!(p.sweep(70_000).len(), PACK_AFTER_NEW - 1);
    }

    #[test]
    fn devices_go_online_when_seen_and_offline_when_silent_or_gone() {
        let p = Presence::new(Duration::from_secs(60));
        p.load([("old", 0), ("recent", 100_000)], 120_000);
        assert!(!p.is_online("old"));
        assert!(p.is_online("recent"));
        assert!(!p.is_online("never"));

        assert_eq!(
            change(p.seen("old", 121_000)),
            Some((DeviceChange::Online, "seen"))
        );
        assert_eq!(change(p.seen("old", 122_000)), None, "only changes");
        assert_eq!(
            change(p.seen("brand-new", 122_000)).map(|c| c.0),
            Some(DeviceChange::Online)
        );

        // recent was last seen at 100 s: silent for a minute at 160 s.
        let swept: Vec<String> = p
            .sweep(160_000)
            .iter()
            .map(|e| e.device().to_owned())
            .collect();
        assert_eq!(swept, vec!["recent".to_owned()]);
        assert!(p.sweep(160_500).is_empty());

        assert_eq!(
            change(p.gone("old", "reported", 163_000)),
            Some((DeviceChange::Offline, "reported"))
        );
        assert_eq!(change(p.gone("old", "reported", 163_000)), None);
        assert_eq!(change(p.gone("never", "link_down", 1)), None);
        assert!(!p.is_online("old"));
        assert!(p.is_online("brand-new"));
    }
}
