//! Runs the configured sinks and changes them when the configuration is reloaded (SIGHUP): a
//! sink removed stops (and its position is forgotten, so retention no longer keeps readings for
//! it), a sink added starts, a sink changed restarts from its saved position. A sink whose new
//! configuration cannot be used keeps running as it was, and the log says why.
//!
//! The supervisor is spawned by `app`; it owns its sinks' tasks and stops them, each after its
//! current delivery step, when it stops.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::http::HttpUplink;
use super::mqtt::MqttUplink;
use super::pump::{Sink, SinkSettings, SinkStats, Uplink};
use super::{SinkHandle, SyncError, hub_id};
use crate::config::{SinkConfig, SinkKind, SyncConfig};
use crate::store::Store;
use crate::store::durable::Durable;

struct Running {
    kind: SinkKind,
    config: SinkConfig,
    hub_id: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// A sink's task ended without being told to.
#[derive(Debug, thiserror::Error)]
#[error("sink {0:?} stopped unexpectedly")]
pub struct SinkEnded(String);

/// The name of the first running sink whose task ends; never, while none does.
async fn first_ended(running: &mut HashMap<String, Running>) -> String {
    std::future::poll_fn(|cx| {
        for (name, sink) in running.iter_mut() {
            if std::pin::Pin::new(&mut sink.task).poll(cx).is_ready() {
                return std::task::Poll::Ready(name.clone());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The sinks' supervisor.
pub struct SinkSupervisor {
    store: Store,
    durable: Durable,
    handles: Arc<RwLock<Vec<SinkHandle>>>,
    running: HashMap<String, Running>,
}

impl SinkSupervisor {
    /// A supervisor of no sink yet; `handles` is what the API sees of the running ones, and
    /// `durable` says when the store has new readings for them.
    pub fn new(store: Store, durable: Durable, handles: Arc<RwLock<Vec<SinkHandle>>>) -> Self {
        SinkSupervisor {
            store,
            durable,
            handles,
            running: HashMap::new(),
        }
    }

    /// Starts the sinks of `config`; fails, starting none, if one cannot be set up.
    pub fn start(&mut self, config: &SyncConfig) -> Result<(), SyncError> {
        let hub_id = hub_id(&config.hub_id);
        let mut ready = Vec::new();
        for (kind, sink) in config.sinks() {
            ready.push((kind, sink.clone(), uplink(kind, sink, &hub_id)?));
        }
        for (kind, sink, uplink) in ready {
            self.spawn(kind, sink, &hub_id, uplink);
        }
        self.publish();
        Ok(())
    }

    /// Follows configuration changes until `shutdown`, then stops every sink. A sink that ends
    /// on its own (it only ends when told to, so it panicked) ends the supervisor with an error:
    /// the hub stops and is restarted, rather than go on without that sink.
    pub async fn run(
        mut self,
        mut configs: watch::Receiver<SyncConfig>,
        shutdown: CancellationToken,
    ) -> Result<(), SinkEnded> {
        let mut ended = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                name = first_ended(&mut self.running) => {
                    // Its handle is done: it must not be awaited again below.
                    self.running.remove(&name);
                    ended = Some(SinkEnded(name));
                    break;
                }
                changed = configs.changed() => {
                    if changed.is_err() {
                        shutdown.cancelled().await;
                        break;
                    }
                    let config = configs.borrow_and_update().clone();
                    self.apply(&config).await;
                }
            }
        }
        for (_, running) in self.running.drain() {
            running.stop.cancel();
            let _ = running.task.await;
        }
        ended.map_or(Ok(()), Err)
    }

    /// Moves the running sinks to `config`.
    async fn apply(&mut self, config: &SyncConfig) {
        let hub_id = hub_id(&config.hub_id);
        let wanted: HashMap<String, (SinkKind, &SinkConfig)> = config
            .sinks()
            .map(|(kind, sink)| (sink.name.clone(), (kind, sink)))
            .collect();
        let mut removed = Vec::new();
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let unchanged = match (wanted.get(&name), self.running.get(&name)) {
                (Some((kind, sink)), Some(r)) => {
                    r.kind == *kind && r.config == **sink && r.hub_id == hub_id
                }
                _ => false,
            };
            if unchanged {
                continue;
            }
            // A changed sink is only stopped once its new configuration is known to work.
            let replacement = match wanted.get(&name) {
                Some((kind, sink)) => match uplink(*kind, sink, &hub_id) {
                    Ok(uplink) => Some((*kind, (*sink).clone(), uplink)),
                    Err(e) => {
                        tracing::error!(sink = %name, error = %e, "reload: the sink's new configuration cannot be used; it keeps running as it was");
                        continue;
                    }
                },
                None => None,
            };
            if let Some(running) = self.running.remove(&name) {
                running.stop.cancel();
                let _ = running.task.await;
            }
            match replacement {
                Some((kind, sink, uplink)) => {
                    tracing::info!(sink = %name, "reload: sink restarted with its new configuration");
                    self.spawn(kind, sink, &hub_id, uplink);
                }
                None => {
                    tracing::info!(sink = %name, "reload: sink removed");
                    removed.push(name);
                }
            }
        }
        for (name, (kind, sink)) in &wanted {
            if self.running.contains_key(name) {
                continue;
            }
            match uplink(*kind, sink, &hub_id) {
                Ok(uplink) => {
                    tracing::info!(sink = %name, "reload: sink added");
                    self.spawn(*kind, (*sink).clone(), &hub_id, uplink);
                }
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "reload: the new sink's configuration cannot be used; it does not start")
                }
            }
        }
        if !removed.is_empty() {
            let store = self.store.clone();
            let kept: Vec<String> = wanted.keys().cloned().collect();
            let forgotten = tokio::task::spawn_blocking(move || {
                let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
                super::forget_removed_sinks(&store, &kept)
            })
            .await;
            if !matches!(forgotten, Ok(Ok(()))) {
                tracing::error!(
                    "reload: the positions of removed sinks could not be forgotten; they are at the next start"
                );
            }
        }
        self.publish();
    }

    fn spawn(&mut self, kind: SinkKind, config: SinkConfig, hub_id: &str, uplink: Uplink) {
        let stats = Arc::new(SinkStats::default());
        let settings = SinkSettings::new(kind, &config, hub_id);
        let stop = CancellationToken::new();
        let sink = Sink::new(
            settings,
            self.store.clone(),
            self.durable.clone(),
            uplink,
            stats.clone(),
        );
        let task = tokio::spawn(sink.run(stop.clone()));
        if let Ok(mut handles) = self.handles.write() {
            handles.retain(|h| h.name != config.name);
            handles.push(SinkHandle {
                name: config.name.clone(),
                kind,
                stats,
            });
        }
        self.running.insert(
            config.name.clone(),
            Running {
                kind,
                config,
                hub_id: hub_id.to_owned(),
                stop,
                task,
            },
        );
    }

    /// Keeps the API's list to the running sinks, in configuration order of names.
    fn publish(&self) {
        if let Ok(mut handles) = self.handles.write() {
            handles.retain(|h| self.running.contains_key(&h.name));
            handles.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
}

fn uplink(kind: SinkKind, config: &SinkConfig, hub_id: &str) -> Result<Uplink, SyncError> {
    Ok(match kind {
        SinkKind::Http => Uplink::Http(Box::new(HttpUplink::new(config)?)),
        SinkKind::Mqtt => Uplink::Mqtt(Box::new(MqttUplink::new(config, hub_id)?)),
    })
}
