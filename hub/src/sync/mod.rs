//! Upstream sync: push sinks that follow the readings log (retention, which deletes what every
//! follower has passed, is the store's: `store/retention.rs`).
//!
//! A sink ([`pump`]) reads batches in offset order from the store, hands each to its uplink
//! ([`http`] or [`mqtt`]), and moves its persisted position only once the receiver took the
//! batch (a 2xx, a PUBACK). Data flows one way: the store is only read here, except for the
//! positions and parked readings.

pub mod body;
pub mod compress;
pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod pump;
pub mod supervisor;

use std::time::Duration;

use crate::config::Compression;

/// A batch ready for an uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Offset of its first reading.
    pub first: u64,
    /// Offset of its last reading.
    pub last: u64,
    /// Readings in it.
    pub count: usize,
    /// Derived from its offsets: a batch sent again carries the same key.
    pub key: String,
    /// The body, already compressed with `encoding`.
    pub body: Vec<u8>,
    /// How `body` is compressed.
    pub encoding: Compression,
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver took it (2xx, PUBACK): the position moves past it.
    Delivered,
    /// Not now (network, timeout, 5xx, 429, ...): the same batch is sent again later, after
    /// `after` if the receiver said (`Retry-After`), else after the sink's back-off.
    Retry {
        /// The receiver's own wait, if it gave one.
        after: Option<Duration>,
        /// Why, for the log (never holds a secret).
        reason: String,
    },
    /// Refused for good (a permanent 4xx): the batch is split to find the readings at fault,
    /// which are parked.
    Refused {
        /// The receiver's status code.
        status: u16,
        /// What it said, shortened, for the operator.
        reason: String,
    },
}

/// What setting up a sink can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The sink's configuration cannot be used (bad URL, unreadable certificate or token file).
    #[error("sink {sink}: {reason}")]
    Config {
        /// The sink's name.
        sink: String,
        /// Why.
        reason: String,
    },
    /// Compressing a body failed.
    #[error("compressing a batch: {0}")]
    Compress(std::io::Error),
}

/// A configured sink, as the API and metrics see it.
#[derive(Debug, Clone)]
pub struct SinkHandle {
    /// Its name.
    pub name: String,
    /// `http` or `mqtt`.
    pub kind: crate::config::SinkKind,
    /// Its counters.
    pub stats: std::sync::Arc<pump::SinkStats>,
}

/// What the API and metrics see of sync.
#[derive(Debug, Clone, Default)]
pub struct SyncState {
    /// The running sinks (they change when the configuration is reloaded).
    pub sinks: std::sync::Arc<std::sync::RwLock<Vec<SinkHandle>>>,
    /// Retention's counters.
    pub retention: std::sync::Arc<crate::store::retention::RetentionStats>,
    /// The quota.
    pub max_disk: u64,
}

impl SyncState {
    /// Whether `name` is a configured sink's (pull consumers may not take it).
    pub fn is_sink(&self, name: &str) -> bool {
        self.sinks().iter().any(|s| s.name == name)
    }

    /// The running sinks, now.
    pub fn sinks(&self) -> Vec<SinkHandle> {
        self.sinks.read().map(|s| s.clone()).unwrap_or_default()
    }
}

/// This hub's name upstream: the configured one, else the host name (reduced to the characters
/// ids may hold), else `hub`.
pub fn hub_id(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let id: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    if id.is_empty() { "hub".into() } else { id }
}

/// Forgets the positions of sinks no longer configured, so they stop holding back retention.
pub fn forget_removed_sinks(
    store: &crate::store::Store,
    configured: &[&str],
) -> Result<(), crate::store::StoreError> {
    for (name, position) in store.sync_positions()? {
        if position.kind == crate::store::sync::FollowerKind::Sink
            && !configured.contains(&name.as_str())
        {
            store.remove_sync_position(&name)?;
            tracing::warn!(sink = %name, "a sink no longer configured: its position is forgotten, and retention no longer keeps readings for it");
        }
    }
    Ok(())
}
