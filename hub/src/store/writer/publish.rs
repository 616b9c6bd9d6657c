//! What the writer tells live listeners after a commit: readings, new devices, devices coming
//! online, command results; and presence who was heard from. Only after the commit returned, so
//! a listener never sees a reading a crash could take away.

use std::collections::HashMap;
use std::sync::Arc;

use super::super::{Applied, Ingest, Outcome};
use crate::live::{DeviceChange, Event, Live, LiveReading, Presence};

/// Notes that `device` was heard from at `at`; allocates only for a device new to the batch (the
/// common case is many readings of few devices).
fn note_heard(heard: &mut HashMap<String, u64>, device: &str, at: u64) {
    match heard.get_mut(device) {
        Some(last) => *last = (*last).max(at),
        None => {
            heard.insert(device.to_owned(), at);
        }
    }
}

/// Tells presence who was heard from, and listeners who came online.
fn tell_heard(live: &Live, presence: &Presence, heard: &mut HashMap<String, u64>) {
    for (device, at) in heard.drain() {
        if let Some(event) = presence.seen(&device, at) {
            live.event(event);
        }
    }
}

/// Tells live listeners what a commit made durable. Readings are built only while someone
/// listens for them; presence is told once per device per batch.
pub(super) fn publish(live: &Live, presence: &Presence, items: Vec<Ingest>, applied: &[Applied]) {
    let want_readings = live.readings_tx.receiver_count() > 0;
    let mut readings = Vec::with_capacity(if want_readings { items.len() } else { 0 });
    let mut heard: HashMap<String, u64> = HashMap::new();
    for (item, applied) in items.into_iter().zip(applied) {
        if applied.new_device {
            live.event(Event::Device {
                device: item.device().to_owned(),
                change: DeviceChange::New,
                reason: "registered",
                at_ms: crate::clock::now_ms(),
            });
        }
        match item {
            Ingest::Reading(r) => {
                note_heard(&mut heard, &r.device, r.received_ms);
                if let (true, Outcome::Stored { offset, seq }) = (want_readings, applied.outcome) {
                    readings.push(LiveReading {
                        offset,
                        timestamp_ms: r.timestamp_ms.unwrap_or(r.received_ms),
                        device: r.device,
                        seq,
                        metrics: r.metrics,
                    });
                }
            }
            Ingest::Hello(h) => {
                note_heard(&mut heard, &h.device, h.received_ms);
            }
            Ingest::Rejected(r) => {
                note_heard(&mut heard, &r.device, r.received_ms);
            }
            Ingest::CommandResult(c) => {
                if let Outcome::CommandResult {
                    id,
                    state: Some(state),
                } = applied.outcome
                {
                    live.event(Event::Command {
                        device: c.device.clone(),
                        id,
                        state,
                    });
                }
                note_heard(&mut heard, &c.device, c.received_ms);
            }
            Ingest::Status(s) => {
                // In arrival order with the rest of the batch: what was heard before a last will
                // is noted first.
                tell_heard(live, presence, &mut heard);
                let event = if s.online {
                    presence.seen(&s.device, s.received_ms)
                } else {
                    presence.gone(&s.device, s.reason, s.received_ms)
                };
                if let Some(event) = event {
                    live.event(event);
                }
            }
        }
    }
    tell_heard(live, presence, &mut heard);
    if !readings.is_empty() {
        let _ = live.readings_tx.send(Arc::new(readings));
    }
}
