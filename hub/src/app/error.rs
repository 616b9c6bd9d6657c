//! What starting or running the hub can fail with.

use std::path::PathBuf;

use crate::auth::AuthError;
use crate::ingest::endpoint::EndpointError;
use crate::store::StoreError;

/// What starting or running the hub can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Tokens or TLS could not be set up.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The MQTT endpoint could not start.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The API listener could not bind.
    #[error(
        "API cannot listen on {addr}: {source} (is another hub running? choose another address with --api-listen or api.listen)"
    )]
    ApiBind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A sink's configuration cannot be used.
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    /// A `[[mqtt.map]]` cannot be used (`validate` lists the same problems first).
    #[error("{}", .0.join("; "))]
    TopicMaps(Vec<String>),
    /// `[homeassistant]` cannot be used.
    #[error(transparent)]
    HomeAssistant(#[from] crate::homeassistant::HomeAssistantError),
    /// A task stopped before shutdown, or failed while the hub stopped.
    #[error("task `{0}` stopped unexpectedly: {1}")]
    TaskFailed(&'static str, String),
}
