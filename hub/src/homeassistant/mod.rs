//! Home Assistant MQTT discovery: the hub announces each device's metrics on the broker Home
//! Assistant reads, so they show up there as entities, and publishes their states.
//!
//! Inputs: the store writer's broadcast of committed readings (after the commit, never on the
//! ingest path), device presence events, the store (devices and latest values at start, and
//! again when the broadcast lagged), and Home Assistant's birth message on
//! `<discovery_prefix>/status`. Outputs: retained discovery configs, states and availability on
//! the broker.
//!
//! Invariants:
//! - what is published comes from a model of the latest value of each announced metric, so
//!   whenever the broker comes back or Home Assistant starts again (its birth message), every
//!   config, availability and latest state is published again: nothing announced is lost;
//! - bounded: at most `max_entities` device metrics are announced (more are counted), and at
//!   most `queue` messages wait for the broker (states beyond it are dropped and counted; the
//!   next reading or announcement brings the state again);
//! - the hub's own status topic says `online`, and its last will `offline`: every entity's
//!   availability needs both the hub and its device online.
//!
//! Here: the task. Beside it: `discovery.rs` (topics and payloads), `metrics.rs`, `tests.rs`
//! (the model's bounds).

pub mod discovery;
pub mod metrics;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use device_protocol::OwnedValue;
use rumqttc::{AsyncClient, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{HomeAssistantConfig, MqttConfig};
use crate::live::{DeviceChange, Event, Live, LiveReading, Presence};
use crate::store::Store;
use crate::store::durable::Durable;
use discovery::{Component, DeviceInfo, Topics};
pub use metrics::HomeAssistantStats;

/// Wait between two attempts to reach the broker.
const RETRY: Duration = Duration::from_secs(1);
/// Keep-alive asked of the broker (its will goes out this much after the hub died, and half).
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Requests handed to the MQTT client at a time; the rest wait in the task's own queue.
const REQUESTS: usize = 64;
/// Link events (connected, gone, birth) waiting for the task.
const LINK_EVENTS: usize = 16;
/// Devices read from the store per step.
const DEVICES_PAGE: usize = 256;
/// How long shutdown waits to say `offline` and disconnect.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often the queue is offered again to a full MQTT client.
const FLUSH_AGAIN: Duration = Duration::from_millis(10);
/// Largest packet taken from the broker: the birth message, acks.
const MAX_INCOMING_PACKET: usize = 4 << 10;
/// Largest packet sent: a discovery config.
const MAX_OUTGOING_PACKET: usize = 64 << 10;

/// What setting up the publisher can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HomeAssistantError {
    /// The section cannot be used (`validate` names the same problems first).
    #[error("homeassistant: {0}")]
    Config(String),
}

/// How the publisher reaches its broker and what it publishes there.
pub struct Settings {
    options: MqttOptions,
    topics: Topics,
    max_entities: usize,
    queue: usize,
}

impl Settings {
    /// Settings of `[homeassistant]` for the hub `hub_id`, given the hub's own `[mqtt]`.
    pub fn new(
        config: &HomeAssistantConfig,
        mqtt: &MqttConfig,
        hub_id: &str,
    ) -> Result<Settings, HomeAssistantError> {
        let (host, port, tls) = config.broker(mqtt).map_err(HomeAssistantError::Config)?;
        let tls = if tls {
            let made = crate::auth::tls::client_config(config.ca.as_deref(), None)
                .map_err(|e| HomeAssistantError::Config(e.to_string()))?;
            Some(Arc::new(made))
        } else {
            None
        };
        let credentials = crate::mqtt_client::credentials(&config.username, &config.password);
        let topics = Topics {
            discovery_prefix: config.discovery_prefix.clone(),
            state_prefix: config.state_prefix.clone(),
            hub_id: hub_id.to_owned(),
        };
        let mut options = crate::mqtt_client::client_options(
            &config.client_id,
            &host,
            port,
            tls.as_ref(),
            credentials.as_ref(),
        );
        // A clean session: everything is published again on each connection anyway.
        options
            .set_clean_session(true)
            .set_keep_alive(KEEP_ALIVE)
            .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
            .set_last_will(LastWill::new(
                topics.hub_status(),
                discovery::availability_payload(false),
                QoS::AtLeastOnce,
                true,
            ));
        Ok(Settings {
            options,
            topics,
            max_entities: config.max_entities,
            queue: config.queue,
        })
    }
}

/// What the MQTT connection tells the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Connected (again).
    Up,
    /// Not connected; rumqttc tries again.
    Down,
    /// Home Assistant said it is `online` (true) or going away.
    Birth(bool),
}

/// One retained message waiting for the broker.
struct Message {
    topic: String,
    payload: Vec<u8>,
    state: bool,
}

/// An announced metric: how, and its latest state.
struct Entity {
    component: Component,
    state: Vec<u8>,
}

/// An announced device.
struct Announced {
    info: DeviceInfo,
    metrics: BTreeMap<String, Entity>,
}

/// The publisher task.
pub struct HomeAssistant {
    /// Where and what.
    pub settings: Settings,
    /// The store.
    pub store: Store,
    /// Committed readings and device events.
    pub live: Live,
    /// Which devices are online.
    pub presence: Arc<Presence>,
    /// The store's newest durable offset.
    pub durable: Durable,
    /// Counters.
    pub stats: Arc<HomeAssistantStats>,
}

/// The task's own state beside its inputs.
struct Model {
    topics: Topics,
    max_entities: usize,
    queue: usize,
    devices: BTreeMap<String, Announced>,
    entities: usize,
    connected: bool,
    backlog: VecDeque<Message>,
    stats: Arc<HomeAssistantStats>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(format!("homeassistant: reading the store: {e}")),
        Err(e) => Err(format!("homeassistant: reading the store: {e}")),
    }
}

/// What the device block shows of a stored device.
fn device_info(device: &crate::store::Device) -> DeviceInfo {
    let name = |v: serde_json::Result<serde_json::Value>| {
        v.ok().and_then(|v| v.as_str().map(str::to_owned))
    };
    let r = &device.record;
    let model = match (
        name(serde_json::to_value(r.transport)),
        name(serde_json::to_value(r.wire)),
    ) {
        (Some(transport), Some(wire)) => Some(format!("{transport} {wire}")),
        (transport, _) => transport,
    };
    DeviceInfo {
        name: r.display_name.clone(),
        model,
        sw_version: r.firmware.clone(),
    }
}

/// Stored devices with their latest values, up to `max_entities` metrics in all.
type Known = Vec<(String, DeviceInfo, Vec<(String, OwnedValue)>)>;

fn read_known(store: &Store, max_entities: usize) -> Result<Known, crate::store::StoreError> {
    let mut known = Vec::new();
    let mut metrics = 0;
    let mut after: Option<String> = None;
    loop {
        let page = store.devices(after.as_deref(), DEVICES_PAGE)?;
        let Some(last) = page.last() else {
            return Ok(known);
        };
        after = Some(last.record.name.clone());
        for device in page {
            let latest = store.latest(&device.record.name)?.unwrap_or_default();
            metrics += latest.len();
            let values = latest.into_iter().map(|l| (l.metric, l.value)).collect();
            known.push((device.record.name.clone(), device_info(&device), values));
            if metrics >= max_entities {
                return Ok(known);
            }
        }
    }
}

impl HomeAssistant {
    /// Publishes until `shutdown`; fails only if the store does.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), String> {
        let (client, eventloop) = AsyncClient::new(self.settings.options.clone(), REQUESTS);
        let (link_tx, link_rx) = mpsc::channel(LINK_EVENTS);
        let driver = drive(eventloop, self.settings.topics.birth(), link_tx);
        tokio::pin!(driver);
        let mut model = Model {
            topics: self.settings.topics.clone(),
            max_entities: self.settings.max_entities,
            queue: self.settings.queue,
            devices: BTreeMap::new(),
            entities: 0,
            connected: false,
            backlog: VecDeque::new(),
            stats: self.stats.clone(),
        };
        tokio::select! {
            outcome = self.follow(&mut model, &client, link_rx, &shutdown) => outcome?,
            () = &mut driver => return Err("homeassistant: the MQTT connection ended".into()),
        }
        // Stopping: say so (rather than leave it to the will), then disconnect, within a grace.
        if model.connected {
            let hub_status = model.topics.hub_status();
            let offline = discovery::availability_payload(false);
            let _ = client.try_publish(hub_status, QoS::AtLeastOnce, true, offline);
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(STOP_GRACE, &mut driver).await;
        }
        self.stats.connected.store(0, Ordering::Relaxed);
        Ok(())
    }

    async fn follow(
        &self,
        model: &mut Model,
        client: &AsyncClient,
        mut link_rx: mpsc::Receiver<Link>,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        // Subscribed before the store is read, so no reading committed meanwhile slips by.
        let mut readings_rx = Some(self.live.readings_tx.subscribe());
        let mut events_rx = Some(self.live.events_tx.subscribe());
        let mut next_offset = self.durable.next_offset();
        self.load(model).await?;
        loop {
            model.flush(client);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                Some(link) = link_rx.recv() => match link {
                    Link::Up => {
                        tracing::info!("homeassistant: connected to the broker; announcing");
                        model.connected = true;
                        self.stats.connected.store(1, Ordering::Relaxed);
                        let _ = client.try_subscribe(model.topics.birth(), QoS::AtLeastOnce);
                        model.announce_all(&self.presence);
                    }
                    Link::Down => {
                        if model.connected {
                            tracing::warn!("homeassistant: the broker is gone; trying again");
                        }
                        model.connected = false;
                        self.stats.connected.store(0, Ordering::Relaxed);
                        // Everything is published again on the next connection.
                        model.backlog.clear();
                    }
                    Link::Birth(true) => {
                        tracing::info!("homeassistant: Home Assistant started; announcing again");
                        model.announce_all(&self.presence);
                    }
                    Link::Birth(false) => {}
                },
                batch = next(&mut readings_rx) => match batch {
                    Ok(batch) => {
                        for r in batch.iter() {
                            if r.offset < next_offset {
                                continue;
                            }
                            self.reading(model, r).await?;
                            next_offset = r.offset + 1;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        // The latest values are all that is published: read them again.
                        next_offset = self.durable.next_offset();
                        self.load(model).await?;
                    }
                    Err(RecvError::Closed) => readings_rx = None,
                },
                event = next(&mut events_rx) => match event {
                    Ok(Event::Device { device, change, .. }) if change != DeviceChange::New => {
                        model.availability(&device, change == DeviceChange::Online);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        let devices: Vec<String> = model.devices.keys().cloned().collect();
                        for device in devices {
                            model.availability(&device, self.presence.is_online(&device));
                        }
                    }
                    Err(RecvError::Closed) => events_rx = None,
                },
                _ = tokio::time::sleep(FLUSH_AGAIN), if model.connected && !model.backlog.is_empty() => {}
            }
        }
    }

    /// Reads the stored devices and their latest values into the model (announcing what is new).
    async fn load(&self, model: &mut Model) -> Result<(), String> {
        let store = self.store.clone();
        let max = model.max_entities;
        let known = blocking(move || read_known(&store, max)).await?;
        for (device, info, values) in known {
            model.see(&device, Some(info), &values, &self.presence);
        }
        Ok(())
    }

    /// Takes one durable reading: a device seen for the first time has its record read.
    async fn reading(&self, model: &mut Model, r: &LiveReading) -> Result<(), String> {
        let info = if model.devices.contains_key(&r.device) {
            None
        } else {
            let store = self.store.clone();
            let device = r.device.clone();
            let stored = blocking(move || store.device(&device)).await?;
            Some(stored.as_ref().map(device_info).unwrap_or_default())
        };
        model.see(&r.device, info, &r.metrics, &self.presence);
        Ok(())
    }
}

/// Receives the next message, or waits forever once the sender is gone.
async fn next<T: Clone>(
    rx: &mut Option<tokio::sync::broadcast::Receiver<T>>,
) -> Result<T, RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Drives the MQTT connection: tells the task when it is up, gone, and what Home Assistant said
/// on its status topic. Ends once the task's disconnect went out.
async fn drive(mut eventloop: EventLoop, birth: String, link: mpsc::Sender<Link>) {
    loop {
        // A send fails only once the task stopped listening (it is stopping): carry on until
        // the disconnect went out.
        match eventloop.poll().await {
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                let _ = link.send(Link::Up).await;
            }
            Ok(rumqttc::Event::Incoming(Packet::Publish(p))) if p.topic == birth => {
                let _ = link.send(Link::Birth(&p.payload[..] == b"online")).await;
            }
            Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "homeassistant: no connection to the broker");
                let _ = link.send(Link::Down).await;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

impl Model {
    /// Takes a device's values (with its record when first seen): announces what is new,
    /// publishes the states.
    fn see(
        &mut self,
        device: &str,
        info: Option<DeviceInfo>,
        values: &[(String, OwnedValue)],
        presence: &Presence,
    ) {
        if !self.devices.contains_key(device) {
            if self.entities >= self.max_entities {
                self.stats
                    .dropped_cap
                    .fetch_add(values.len() as u64, Ordering::Relaxed);
                return;
            }
            self.devices.insert(
                device.to_owned(),
                Announced {
                    info: info.unwrap_or_default(),
                    metrics: BTreeMap::new(),
                },
            );
            self.availability(device, presence.is_online(device));
        }
        for (metric, value) in values {
            let component = Component::of(value);
            let state = discovery::state_payload(value);
            let full = self.entities >= self.max_entities;
            let Some(announced) = self.devices.get_mut(device) else {
                return;
            };
            let before = match announced.metrics.get_mut(metric) {
                Some(entity) => {
                    let before = entity.component;
                    entity.component = component;
                    entity.state = state.clone();
                    Some(before)
                }
                None if full => {
                    self.stats.dropped_cap.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                None => {
                    let entity = Entity {
                        component,
                        state: state.clone(),
                    };
                    announced.metrics.insert(metric.clone(), entity);
                    None
                }
            };
            match before {
                Some(before) if before == component => {}
                Some(before) => {
                    // The metric changed type: remove the old entity, announce the new one.
                    self.push(
                        self.topics.config(before, device, metric),
                        Vec::new(),
                        false,
                    );
                    self.announce(device, metric, component);
                }
                None => {
                    self.entities += 1;
                    let entities = self.entities as u64;
                    self.stats.entities.store(entities, Ordering::Relaxed);
                    self.announce(device, metric, component);
                }
            }
            self.push(self.topics.state(device, metric), state, true);
        }
    }

    /// Queues the discovery config of one metric.
    fn announce(&mut self, device: &str, metric: &str, component: Component) {
        let Some(announced) = self.devices.get(device) else {
            return;
        };
        let payload = self
            .topics
            .config_payload(component, device, metric, &announced.info);
        let topic = self.topics.config(component, device, metric);
        self.push(topic, payload, false);
    }

    /// Queues a device's availability, when it is announced.
    fn availability(&mut self, device: &str, online: bool) {
        if self.devices.contains_key(device) {
            let payload = discovery::availability_payload(online).to_vec();
            self.push(self.topics.availability(device), payload, false);
        }
    }

    /// Queues everything again: the hub's status, then each device's availability, configs
    /// and latest states. What was queued before is replaced.
    fn announce_all(&mut self, presence: &Presence) {
        self.backlog.clear();
        let online = discovery::availability_payload(true).to_vec();
        self.push(self.topics.hub_status(), online, false);
        let devices: Vec<String> = self.devices.keys().cloned().collect();
        for device in devices {
            self.availability(&device, presence.is_online(&device));
            let metrics: Vec<(String, Component, Vec<u8>)> = self
                .devices
                .get(&device)
                .map(|d| d.metrics.iter())
                .into_iter()
                .flatten()
                .map(|(m, e)| (m.clone(), e.component, e.state.clone()))
                .collect();
            for (metric, component, state) in metrics {
                self.announce(&device, &metric, component);
                self.push(self.topics.state(&device, &metric), state, true);
            }
        }
    }

    /// Queues a retained message while connected (on a new connection everything is queued
    /// again). A state finding the queue full is dropped and counted.
    fn push(&mut self, topic: String, payload: Vec<u8>, state: bool) {
        if !self.connected {
            return;
        }
        if state && self.backlog.len() >= self.queue {
            self.stats.dropped_queue.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.backlog.push_back(Message {
            topic,
            payload,
            state,
        });
    }

    /// Hands queued messages to the MQTT client while it takes them.
    fn flush(&mut self, client: &AsyncClient) {
        if !self.connected {
            return;
        }
        while let Some(m) = self.backlog.front() {
            let sent =
                client.try_publish(m.topic.as_str(), QoS::AtLeastOnce, true, m.payload.clone());
            if sent.is_err() {
                return;
            }
            let counter = if m.state {
                &self.stats.states
            } else {
                &self.stats.announced
            };
            counter.fetch_add(1, Ordering::Relaxed);
            self.backlog.pop_front();
        }
    }
}
