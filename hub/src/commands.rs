//! Commands for devices: accepted by the API, stored, delivered over the device's own transport,
//! and closed by the device's result or a timeout.
//!
//! - [`Commands`] is the API's handle: it checks a request, stores the command (state `pending`)
//!   and hands its id to the dispatcher.
//! - [`Dispatcher`] is the task that delivers: at once when the device is online, else when it
//!   comes online (a device event from [`crate::live`]), until the command's TTL runs out. A
//!   delivered command waits for the device's result until its timeout. Results come in through
//!   ingest and the store writer (the command's state changes in the same durable batch as the
//!   message that carried the result), never through here.
//!
//! How a command travels: JSON devices get `{"id":..,"name":..,"args":{..}}` on
//! `devices/{id}/commands`; binary MQTT devices a `Downlink::Command` on `devices/{id}/down`;
//! serial devices the same as a frame on their line. "Delivered" means the device acknowledged
//! it where the hub can see that (the PUBACK of a device on the hub's own MQTT endpoint), else
//! handed to the transport while the device was online (published to the external broker at QoS
//! 1, or queued for the line). A command queued in a device's MQTT session stays `pending` until
//! the device acknowledges it; if the session ends first, or the hub restarts, it is sent again.
//!
//! Bounded: open commands (pending or delivered) per device and in all; stored commands are
//! pruned to the newest [`CommandSettings::keep`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use device_protocol::{Downlink, Field, Fields, MAX_FRAME_LEN, Value, encode_frame};
use serde_json::{Map, Value as Json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::ingest::serial::SerialDownlink;
use crate::ingest::{CommandHandoff, DownlinkError, Handed, MqttDownlink};
use crate::live::{DeviceChange, Event, Live, Presence};
use crate::store::{CommandRecord, CommandState, Store, StoreError, Transition, Transport, Wire};

/// How often the dispatcher looks for expired commands and retries busy transports.
const TICK: Duration = Duration::from_secs(1);
/// How often old commands are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Command ids waiting for the dispatcher.
const DISPATCH_QUEUE: usize = 256;

/// Limits and defaults of commands.
#[derive(Debug, Clone)]
pub struct CommandSettings {
    /// How long a command waits for an offline device when the request gives no `ttl`.
    pub default_ttl: Duration,
    /// Longest `ttl` a request may ask for.
    pub max_ttl: Duration,
    /// How long a delivered command waits for its result when the request gives no `timeout`.
    pub default_timeout: Duration,
    /// Longest `timeout` a request may ask for.
    pub max_timeout: Duration,
    /// Open commands (pending or delivered) one device may have.
    pub max_open_per_device: usize,
    /// Open commands in all.
    pub max_open: usize,
    /// Commands kept in the store (the oldest are pruned).
    pub keep: u64,
}

impl Default for CommandSettings {
    fn default() -> Self {
        CommandSettings {
            default_ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(86_400),
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(600),
            max_open_per_device: 64,
            max_open: 10_000,
            keep: 10_000,
        }
    }
}

/// A command as the API asks for it.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    /// The device (already validated and authorized).
    pub device: String,
    /// The command's name.
    pub name: String,
    /// Its arguments.
    pub args: Map<String, Json>,
    /// How long to wait for an offline device; zero refuses the command if it is offline.
    pub ttl: Option<Duration>,
    /// How long a delivered command waits for the result.
    pub timeout: Option<Duration>,
    /// Who asks (for the record).
    pub requested_by: String,
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No such device.
    #[error("no device {0:?}")]
    UnknownDevice(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The device is offline and the request said not to wait (`ttl` 0).
    #[error("device {0:?} is offline and the command has no ttl to wait for it")]
    Offline(String),
    /// Too many open commands.
    #[error("{0}")]
    TooMany(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    Stopping,
}

/// Open commands per device, shared by the handle (to refuse) and the dispatcher (to count).
#[derive(Debug, Default)]
struct OpenCount {
    total: AtomicUsize,
    per_device: std::sync::Mutex<HashMap<String, usize>>,
}

impl OpenCount {
    fn try_open(&self, device: &str, settings: &CommandSettings) -> Result<(), CommandError> {
        let mut per = self.per_device.lock().map_err(|_| CommandError::Stopping)?;
        let mine = per.get(device).copied().unwrap_or(0);
        if mine >= settings.max_open_per_device {
            return Err(CommandError::TooMany(format!(
                "device {device:?} already has {mine} open commands (limit {})",
                settings.max_open_per_device
            )));
        }
        if self.total.load(Ordering::Relaxed) >= settings.max_open {
            return Err(CommandError::TooMany(format!(
                "the hub already has {} open commands",
                settings.max_open
            )));
        }
        per.insert(device.to_owned(), mine + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Counts a command that is already open (loaded from the store), whatever the limits.
    fn add(&self, device: &str) {
        if let Ok(mut per) = self.per_device.lock() {
            *per.entry(device.to_owned()).or_default() += 1;
            self.total.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn close(&self, device: &str) {
        if let Ok(mut per) = self.per_device.lock()
            && let Some(n) = per.get_mut(device)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(device);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The API's handle on commands. Cheap to clone.
#[derive(Clone)]
pub struct Commands {
    store: Store,
    presence: Arc<Presence>,
    live: Live,
    settings: Arc<CommandSettings>,
    open: Arc<OpenCount>,
    dispatch_tx: mpsc::Sender<u64>,
}

/// Builds the handle and the dispatcher that share one queue.
pub fn new(
    store: Store,
    presence: Arc<Presence>,
    live: Live,
    settings: CommandSettings,
    transports: Transports,
    handoffs: mpsc::Receiver<CommandHandoff>,
) -> (Commands, Dispatcher) {
    let (dispatch_tx, dispatch_rx) = mpsc::channel(DISPATCH_QUEUE);
    let settings = Arc::new(settings);
    let open = Arc::new(OpenCount::default());
    let commands = Commands {
        store: store.clone(),
        presence: presence.clone(),
        live: live.clone(),
        settings: settings.clone(),
        open: open.clone(),
        dispatch_tx,
    };
    let dispatcher = Dispatcher {
        store,
        presence,
        live,
        settings,
        open,
        transports,
        dispatch_rx,
        handoffs,
    };
    (commands, dispatcher)
}

impl Commands {
    /// Listens for command events; subscribe before [`Commands::submit`] to wait for the result.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.events_tx.subscribe()
    }

    /// Checks, stores and queues a command; its id and record.
    pub async fn submit(
        &self,
        request: CommandRequest,
    ) -> Result<(u64, CommandRecord), CommandError> {
        if !device_protocol::is_valid_id(&request.name) {
            return Err(CommandError::Invalid(
                "`name` must be 1 to 64 of A-Z a-z 0-9 . _ -".into(),
            ));
        }
        let ttl = request.ttl.unwrap_or(self.settings.default_ttl);
        if ttl > self.settings.max_ttl {
            return Err(CommandError::Invalid(format!(
                "`ttl` is at most {} s",
                self.settings.max_ttl.as_secs()
            )));
        }
        let timeout = request.timeout.unwrap_or(self.settings.default_timeout);
        if timeout.is_zero() || timeout > self.settings.max_timeout {
            return Err(CommandError::Invalid(format!(
                "`timeout` is more than 0 and at most {} s",
                self.settings.max_timeout.as_secs()
            )));
        }
        let device = self
            .store
            .device(&request.device)?
            .ok_or_else(|| CommandError::UnknownDevice(request.device.clone()))?;
        // What the device will be sent must fit its transport: checked now, not at delivery.
        message_for(
            &device.record.wire,
            device.record.transport,
            0,
            &request.name,
            &request.args,
        )
        .map_err(CommandError::Invalid)?;
        if ttl.is_zero() && !self.presence.is_online(&request.device) {
            return Err(CommandError::Offline(request.device));
        }
        self.open.try_open(&request.device, &self.settings)?;
        let now = now_ms();
        let record = CommandRecord {
            device: request.device.clone(),
            name: request.name,
            args: Json::Object(request.args).to_string(),
            requested_by: request.requested_by,
            state: CommandState::Pending,
            created_ms: now,
            expires_ms: now + ttl.as_millis() as u64,
            result_timeout_ms: timeout.as_millis() as u64,
            delivered_ms: None,
            finished_ms: None,
            result: None,
            error: None,
            error_code: None,
        };
        let store = self.store.clone();
        let stored = record.clone();
        let created = tokio::task::spawn_blocking(move || store.create_command(&stored)).await;
        let id = match created {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => {
                self.open.close(&request.device);
                return Err(e.into());
            }
            Err(_) => {
                self.open.close(&request.device);
                return Err(CommandError::Stopping);
            }
        };
        self.live.event(Event::Command {
            device: request.device,
            id,
            state: CommandState::Pending,
        });
        // The dispatcher also finds open commands on its own (every tick), so a full queue only
        // delays the delivery; waiting for room would hold the request instead.
        let _ = self.dispatch_tx.try_send(id);
        Ok((id, record))
    }

    /// One command, if stored.
    pub async fn get(&self, id: u64) -> Result<Option<CommandRecord>, CommandError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.command(id))
            .await
            .map_err(|_| CommandError::Stopping)?
            .map_err(CommandError::from)
    }

    /// Waits until command `id` reaches a final state or `wait` passes; the record then.
    /// `events` must have been subscribed before the command was submitted.
    pub async fn wait_for(
        &self,
        id: u64,
        mut events: broadcast::Receiver<Event>,
        wait: Duration,
    ) -> Result<Option<CommandRecord>, CommandError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let event = tokio::time::timeout_at(deadline, events.recv()).await;
            match event {
                Err(_) => break,
                Ok(Ok(Event::Command {
                    id: changed, state, ..
                })) if changed == id && state.is_final() => break,
                Ok(Ok(_)) => {}
                // Missed events: the store has the truth.
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    if self.get(id).await?.is_some_and(|r| r.state.is_final()) {
                        break;
                    }
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => break,
            }
        }
        self.get(id).await
    }

    /// The limits and defaults.
    pub fn settings(&self) -> &CommandSettings {
        &self.settings
    }
}

/// The transports commands can leave by.
#[derive(Clone, Default)]
pub struct Transports {
    /// The hub's MQTT session.
    pub mqtt: Option<MqttDownlink>,
    /// Each serial line.
    pub serial: Vec<SerialDownlink>,
}

/// An open command, as the dispatcher keeps it.
#[derive(Debug, Clone)]
struct Open {
    device: String,
    name: String,
    args: Map<String, Json>,
    delivered: bool,
    /// Queued in a device's MQTT session, awaiting its acknowledgement (still pending).
    handed: bool,
    /// Pending: when its TTL runs out. Delivered: when its result is due.
    deadline_ms: u64,
    result_timeout_ms: u64,
}

impl Open {
    /// Whether it should be sent now (if its device can take it).
    fn is_due(&self) -> bool {
        !self.delivered && !self.handed
    }
}

/// The task that delivers commands and times them out.
pub struct Dispatcher {
    store: Store,
    presence: Arc<Presence>,
    live: Live,
    settings: Arc<CommandSettings>,
    open: Arc<OpenCount>,
    transports: Transports,
    dispatch_rx: mpsc::Receiver<u64>,
    /// What became of commands whose delivery a transport tracks.
    handoffs: mpsc::Receiver<CommandHandoff>,
}

impl Dispatcher {
    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut events = self.live.events_tx.subscribe();
        let mut open: HashMap<u64, Open> = HashMap::new();
        self.load_open(&mut open).await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                id = self.dispatch_rx.recv() => {
                    let Some(id) = id else { break };
                    self.take(id, &mut open).await;
                    let devices: Vec<String> = open.get(&id).map(|c| c.device.clone()).into_iter().collect();
                    self.deliver_to(&devices, &mut open).await;
                }
                Some(handoff) = self.handoffs.recv() => self.handed_off(handoff, &mut open).await,
                event = events.recv() => match event {
                    Ok(Event::Device { device, change: DeviceChange::Online | DeviceChange::New, .. }) => {
                        self.deliver_to(&[device], &mut open).await;
                    }
                    Ok(Event::Command { id, state, device }) if state.is_final() => {
                        if open.remove(&id).is_some() {
                            self.open.close(&device);
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => self.reload(&mut open).await,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tick.tick() => {
                    self.expire(&mut open).await;
                    let waiting: Vec<String> = open.values().filter(|c| c.is_due()).map(|c| c.device.clone()).collect();
                    self.deliver_to(&waiting, &mut open).await;
                    if last_prune.elapsed() >= PRUNE_EVERY {
                        last_prune = tokio::time::Instant::now();
                        self.prune().await;
                    }
                }
            }
        }
    }

    /// Loads every open command from the store (at start, and after missed events).
    async fn load_open(&self, open: &mut HashMap<u64, Open>) {
        let store = self.store.clone();
        let stored = match tokio::task::spawn_blocking(move || store.open_commands()).await {
            Ok(Ok(stored)) => stored,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read open commands; they time out unseen");
                return;
            }
            Err(_) => return,
        };
        for (id, record) in stored {
            if open.contains_key(&id) {
                continue;
            }
            if let Some(command) = open_from(&record) {
                // Counted like new ones, so the limits hold across restarts.
                self.open.add(&record.device);
                open.insert(id, command);
            }
        }
    }

    /// After missed events: drops what the store says is final, picks up what it says is open.
    async fn reload(&self, open: &mut HashMap<u64, Open>) {
        let ids: Vec<u64> = open.keys().copied().collect();
        for id in ids {
            if let Ok(Some(record)) = self.store.command(id)
                && record.state.is_final()
                && let Some(command) = open.remove(&id)
            {
                self.open.close(&command.device);
            }
        }
        self.load_open(open).await;
    }

    /// Adds command `id` (just submitted) to the open ones.
    async fn take(&self, id: u64, open: &mut HashMap<u64, Open>) {
        if open.contains_key(&id) {
            return;
        }
        let store = self.store.clone();
        if let Ok(Ok(Some(record))) = tokio::task::spawn_blocking(move || store.command(id)).await
            && let Some(command) = open_from(&record)
        {
            open.insert(id, command);
        }
    }

    /// Tries to deliver every pending command of `devices` that are online, oldest first.
    async fn deliver_to(&self, devices: &[String], open: &mut HashMap<u64, Open>) {
        if devices.is_empty() {
            return;
        }
        let mut due: Vec<u64> = open
            .iter()
            .filter(|(_, c)| c.is_due() && devices.contains(&c.device))
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        let mut blocked: Vec<String> = Vec::new();
        for id in due {
            let Some(command) = open.get(&id).cloned() else {
                continue;
            };
            if blocked.contains(&command.device) || !self.presence.is_online(&command.device) {
                continue;
            }
            match self.send(id, &command) {
                Ok(Handed::Delivered) => self.delivered(id, open).await,
                Ok(Handed::Tracked) => {
                    if let Some(c) = open.get_mut(&id) {
                        c.handed = true;
                    }
                }
                Err(Refused::Later) => blocked.push(command.device.clone()),
                Err(Refused::Never(reason)) => {
                    let transition = Transition::TimedOut {
                        at_ms: now_ms(),
                        reason,
                    };
                    self.advance(id, &command.device, transition).await;
                }
            }
        }
    }

    /// Records that open command `id` reached its device: its result is due from now.
    async fn delivered(&self, id: u64, open: &mut HashMap<u64, Open>) {
        let Some(device) = open.get(&id).map(|c| c.device.clone()) else {
            return;
        };
        let now = now_ms();
        let transition = Transition::Delivered { at_ms: now };
        if self.advance(id, &device, transition).await
            && let Some(c) = open.get_mut(&id)
        {
            c.delivered = true;
            c.deadline_ms = now + c.result_timeout_ms;
        }
    }

    /// A tracked command was acknowledged by its device, or lost with its session (then it is
    /// due again, and goes out at once if the device can take it).
    async fn handed_off(&self, handoff: CommandHandoff, open: &mut HashMap<u64, Open>) {
        match handoff {
            CommandHandoff::Delivered(id) => {
                if open.get(&id).is_some_and(|c| !c.delivered) {
                    self.delivered(id, open).await;
                }
            }
            CommandHandoff::Lost(id) => {
                let Some(c) = open.get_mut(&id).filter(|c| !c.delivered) else {
                    return;
                };
                c.handed = false;
                let device = c.device.clone();
                self.deliver_to(&[device], open).await;
            }
        }
    }

    /// Sends one command over its device's transport.
    fn send(&self, id: u64, command: &Open) -> Result<Handed, Refused> {
        let device = match self.store.device(&command.device) {
            Ok(Some(device)) => device.record,
            Ok(None) => return Err(Refused::Never("the device is gone".into())),
            Err(_) => return Err(Refused::Later),
        };
        let message = message_for(
            &device.wire,
            device.transport,
            id,
            &command.name,
            &command.args,
        )
        .map_err(Refused::Never)?;
        let sent = match (device.transport, message) {
            (Transport::Serial, Message::Binary(bytes)) => {
                let line = self
                    .transports
                    .serial
                    .iter()
                    .find(|line| line.device().as_deref() == Some(command.device.as_str()));
                match line {
                    Some(line) => line.send_encoded(&bytes).map(|()| Handed::Delivered),
                    None => Err(DownlinkError::NotConnected),
                }
            }
            (_, message) => match &self.transports.mqtt {
                Some(mqtt) => {
                    let (topic, payload) = match message {
                        Message::Json(text) => (
                            format!("devices/{}/commands", command.device),
                            text.into_bytes(),
                        ),
                        Message::Binary(bytes) => {
                            (format!("devices/{}/down", command.device), bytes)
                        }
                    };
                    mqtt.publish_command(topic, payload, id)
                }
                None => Err(DownlinkError::NotConnected),
            },
        };
        match sent {
            Ok(handed) => Ok(handed),
            Err(DownlinkError::TooLarge) => Err(Refused::Never(
                "the command does not fit the device's transport".into(),
            )),
            Err(DownlinkError::NotConnected | DownlinkError::Busy) => Err(Refused::Later),
        }
    }

    /// Times out what is past its deadline.
    async fn expire(&self, open: &mut HashMap<u64, Open>) {
        let now = now_ms();
        let expired: Vec<(u64, Open)> = open
            .iter()
            .filter(|(_, c)| c.deadline_ms <= now)
            .map(|(id, c)| (*id, c.clone()))
            .collect();
        for (id, command) in expired {
            let reason = if command.delivered {
                "no result from the device within the command's timeout"
            } else {
                "not delivered within the command's ttl (the device stayed offline)"
            };
            let transition = Transition::TimedOut {
                at_ms: now,
                reason: reason.into(),
            };
            self.advance(id, &command.device, transition).await;
            // Whatever the store said (a result may have just won the race), it is closed now.
            if open.remove(&id).is_some() {
                self.open.close(&command.device);
            }
        }
    }

    /// Applies a transition durably and tells listeners; whether it changed the command.
    async fn advance(&self, id: u64, device: &str, transition: Transition) -> bool {
        let store = self.store.clone();
        let applied =
            tokio::task::spawn_blocking(move || store.advance_command(id, &transition)).await;
        match applied {
            Ok(Ok(Some(record))) => {
                self.live.event(Event::Command {
                    device: device.to_owned(),
                    id,
                    state: record.state,
                });
                true
            }
            Ok(Ok(None)) => false,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, command = id, "cannot record a command's state");
                false
            }
            Err(_) => false,
        }
    }

    async fn prune(&self) {
        let store = self.store.clone();
        let keep = self.settings.keep;
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.prune_commands(keep)).await {
            tracing::warn!(error = %e, "cannot prune old commands");
        }
    }
}

/// Why a command could not be sent now.
enum Refused {
    /// The transport is not connected or busy: try again later.
    Later,
    /// It can never be sent.
    Never(String),
}

fn open_from(record: &CommandRecord) -> Option<Open> {
    let args = match serde_json::from_str::<Json>(&record.args) {
        Ok(Json::Object(args)) => args,
        _ => Map::new(),
    };
    let delivered = match record.state {
        CommandState::Pending => false,
        CommandState::Delivered => true,
        _ => return None,
    };
    Some(Open {
        device: record.device.clone(),
        name: record.name.clone(),
        args,
        delivered,
        handed: false,
        deadline_ms: if delivered {
            record.delivered_ms.unwrap_or(record.created_ms) + record.result_timeout_ms
        } else {
            record.expires_ms
        },
        result_timeout_ms: record.result_timeout_ms,
    })
}

/// A command encoded for a device.
#[derive(Debug, PartialEq)]
enum Message {
    /// `{"id":..,"name":..,"args":{..}}` for `devices/{id}/commands`.
    Json(String),
    /// A `Downlink::Command`, postcard.
    Binary(Vec<u8>),
}

/// Encodes a command the way `wire` and `transport` want it, or says why it cannot be.
fn message_for(
    wire: &Wire,
    transport: Transport,
    id: u64,
    name: &str,
    args: &Map<String, Json>,
) -> Result<Message, String> {
    if *wire == Wire::Json && transport == Transport::Mqtt {
        let command = device_protocol::json::JsonCommand {
            id,
            name: name.to_owned(),
            args: args.clone(),
        };
        let text = serde_json::to_string(&command).map_err(|e| e.to_string())?;
        if text.len() > MAX_JSON_COMMAND {
            return Err(format!(
                "the command is {} bytes as JSON, more than {MAX_JSON_COMMAND}",
                text.len()
            ));
        }
        return Ok(Message::Json(text));
    }
    let mut fields = Fields::new();
    for (key, value) in args {
        let value = match value {
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Value::I64(i),
                None => Value::F64(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => Value::Str(s),
            _ => {
                return Err(format!(
                    "argument {key:?}: this device speaks the binary protocol, whose arguments are numbers, booleans and strings"
                ));
            }
        };
        fields.push(Field { name: key, value }).map_err(|_| {
            format!(
                "a binary device takes at most {} arguments",
                fields.capacity()
            )
        })?;
    }
    let message = Downlink::Command(device_protocol::Command {
        command_id: id,
        name,
        args: fields,
    });
    let bytes = message
        .to_vec()
        .map_err(|e| format!("the command cannot be encoded for this device: {e}"))?;
    let mut frame = [0u8; MAX_FRAME_LEN];
    encode_frame(&message, &mut frame)
        .map_err(|_| format!("the command is larger than a {MAX_FRAME_LEN}-byte frame"))?;
    Ok(Message::Binary(bytes))
}

/// Largest JSON command published to a device.
const MAX_JSON_COMMAND: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Json) -> Map<String, Json> {
        match v {
            Json::Object(m) => m,
            _ => panic!(),
        }
    }

    #[test]
    fn commands_are_encoded_for_the_device_wire() {
        let a = args(json!({"level": 3, "ratio": 0.5, "on": true, "mode": "eco"}));
        match message_for(&Wire::Json, Transport::Mqtt, 7, "set", &a).unwrap() {
            Message::Json(text) => {
                let back: Json = serde_json::from_str(&text).unwrap();
                assert_eq!(
                    back,
                    json!({"id": 7, "name": "set", "args": {"level": 3, "ratio": 0.5, "on": true, "mode": "eco"}})
                );
            }
            other => panic!("{other:?}"),
        }
        for (wire, transport) in [
            (Wire::Binary, Transport::Mqtt),
            (Wire::Binary, Transport::Serial),
            (Wire::Json, Transport::Serial),
        ] {
            let Message::Binary(bytes) = message_for(&wire, transport, 7, "set", &a).unwrap()
            else {
                panic!("binary expected");
            };
            match Downlink::decode(&bytes).unwrap() {
                Downlink::Command(c) => {
                    assert_eq!((c.command_id, c.name, c.args.len()), (7, "set", 4));
                    assert!(
                        c.args
                            .iter()
                            .any(|f| f.name == "level" && f.value == Value::I64(3))
                    );
                    assert!(
                        c.args
                            .iter()
                            .any(|f| f.name == "mode" && f.value == Value::Str("eco"))
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn what_a_binary_device_cannot_take_is_refused_with_a_reason() {
        let nested = args(json!({"a": {"b": 1}}));
        assert!(
            message_for(&Wire::Binary, Transport::Mqtt, 1, "x", &nested)
                .unwrap_err()
                .contains("\"a\"")
        );
        let many = args(Json::Object(
            (0..17).map(|i| (format!("k{i}"), json!(i))).collect(),
        ));
        assert!(
            message_for(&Wire::Binary, Transport::Mqtt, 1, "x", &many)
                .unwrap_err()
                .contains("at most")
        );
        let big = args(json!({"s": "x".repeat(2000)}));
        assert!(message_for(&Wire::Binary, Transport::Serial, 1, "x", &big).is_err());
        // JSON devices take nested arguments.
        assert!(message_for(&Wire::Json, Transport::Mqtt, 1, "x", &nested).is_ok());
    }

    #[test]
    fn open_counts_hold_per_device_and_in_all() {
        let settings = CommandSettings {
            max_open_per_device: 2,
            max_open: 3,
            ..CommandSettings::default()
        };
        let open = OpenCount::default();
        open.try_open("a", &settings).unwrap();
        open.try_open("a", &settings).unwrap();
        assert!(matches!(
            open.try_open("a", &settings),
            Err(CommandError::TooMany(_))
        ));
        open.try_open("b", &settings).unwrap();
        assert!(matches!(
            open.try_open("c", &settings),
            Err(CommandError::TooMany(_))
        ));
        open.close("a");
        open.try_open("c", &settings).unwrap();
        open.close("nobody");
        assert_eq!(open.total.load(Ordering::Relaxed), 3);
    }
}
