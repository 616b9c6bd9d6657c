//! Starts the Home Assistant publisher when `[homeassistant]` is enabled: it follows the store's
//! commits like the sinks and rules, and stops with the API (after ingest has been flushed, so
//! the last readings are published first).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::AppError;
use super::tasks::{Stage, Supervisor};
use crate::config::Config;
use crate::homeassistant::{HomeAssistant, HomeAssistantStats, Settings};
use crate::live::{Live, Presence};
use crate::store::Store;
use crate::store::durable::Durable;

/// Spawns the publisher; its counters for `/metrics`, or `None` when it is off.
pub(super) fn start(
    config: &Config,
    parts: (&Store, &Durable, &Live, &Arc<Presence>),
    tasks: &mut Supervisor,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<HomeAssistantStats>>, AppError> {
    if !config.homeassistant.enabled {
        return Ok(None);
    }
    let (store, durable, live, presence) = parts;
    let hub_id = crate::sync::hub_id(&config.sync.hub_id);
    let settings = Settings::new(&config.homeassistant, &config.mqtt, &hub_id)?;
    let stats = Arc::new(HomeAssistantStats::default());
    let task = HomeAssistant {
        settings,
        store: store.clone(),
        live: live.clone(),
        presence: presence.clone(),
        durable: durable.clone(),
        stats: stats.clone(),
    };
    tasks.spawn("homeassistant", Stage::Services, task.run(shutdown.clone()));
    Ok(Some(stats))
}
