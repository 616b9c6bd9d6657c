//! Starting upstream sync: the sinks under their supervisor, and retention.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::AppError;
use super::tasks::{Stage, Supervisor};
use crate::config::Config;
use crate::store::retention::{Retention, RetentionSettings, RetentionStats};
use crate::store::{self, Store};
use crate::sync::supervisor::SinkSupervisor;
use crate::sync::{self, SyncState};

/// Starts every configured sink (under their supervisor) and retention; what the API shows of
/// them, and where reloaded sync configurations go.
pub(super) fn start_sync(
    config: &Config,
    store: &Store,
    durable: &store::durable::Durable,
    tasks: &mut Supervisor,
    shutdown: &CancellationToken,
) -> Result<(SyncState, watch::Sender<crate::config::SyncConfig>), AppError> {
    let names: Vec<&str> = config.sync.sinks().map(|(_, s)| s.name.as_str()).collect();
    sync::forget_removed_sinks(store, &names)?;
    let handles = Arc::new(std::sync::RwLock::new(Vec::new()));
    let mut supervisor = SinkSupervisor::new(store.clone(), durable.clone(), handles.clone());
    supervisor.start(&config.sync)?;
    if !names.is_empty() {
        tracing::info!(hub_id = %sync::hub_id(&config.sync.hub_id), sinks = names.len(), "upstream sync started");
    }
    let (configs_tx, configs_rx) = watch::channel(config.sync.clone());
    tasks.spawn(
        "sink-supervisor",
        Stage::Services,
        supervisor.run(configs_rx, shutdown.clone()),
    );
    let retention = Arc::new(RetentionStats::default());
    let settings = RetentionSettings {
        max_disk: config.data.max_disk.0,
        full_policy: config.data.full_policy,
        max_age: (!config.data.max_age.0.is_zero()).then_some(config.data.max_age.0),
    };
    tasks.spawn(
        "retention",
        Stage::Services,
        Retention::new(store.clone(), settings, retention.clone())
            .run(durable.clone(), shutdown.clone()),
    );
    Ok((
        SyncState {
            sinks: handles,
            retention,
            max_disk: config.data.max_disk.0,
        },
        configs_tx,
    ))
}
