//! Commands for devices: accepted by the API, stored, delivered over the device's own transport,
//! and closed by the device's result or a timeout.
//!
//! - [`Commands`] is the API's handle: it checks a request, stores the command (state `pending`)
//!   and hands its id to the dispatcher.
//! - [`Dispatcher`] (dispatcher.rs) is the task that delivers: at once when the device is online, else when it
//!   comes online (a device event from [`crate::live`]), until the command's TTL runs out. A
//!   delivered command waits for the device's result until its timeout. Results come in through
//!   ingest and the store writer (the command's state changes in the same durable batch as the
//!   message that carried the result), never through here.
//!
//! How a command travels (encoded and handed over by [`crate::ingest::downlink`]): JSON devices get `{"id":..,"name":..,"args":{..}}` on
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

use serde_json::{Map, Value as Json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
pub use crate::ingest::downlink::Transports;
use crate::ingest::downlink::{CommandOut, Refused};
use crate::ingest::{CommandHandoff, Handed};
use crate::live::{DeviceChange, Event, Live, Presence};
use crate::store::{CommandPage, CommandRecord, CommandState, Store, StoreError, Transition};

mod dispatcher;
pub use dispatcher::Dispatcher;

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
    /// To check a command fits its device's transport when it is asked for.
    transports: Transports,
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
        transports: transports.clone(),
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
        self.transports
            .check_command(
                &request.device,
                &device.record.wire,
                device.record.transport,
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

    /// A page of `device`'s commands, newest first (see [`Store::device_commands`]); an unknown
    /// device is an error, not an empty page.
    pub async fn list(
        &self,
        device: String,
        before: Option<u64>,
        limit: usize,
    ) -> Result<CommandPage, CommandError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if store.device(&device)?.is_none() {
                return Err(CommandError::UnknownDevice(device));
            }
            Ok(store.device_commands(&device, before, limit)?)
        })
        .await
        .map_err(|_| CommandError::Stopping)?
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

#[cfg(test)]
mod tests {
    use super::*;

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
