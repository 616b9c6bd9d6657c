//! `POST /api/v1/backups`: a consistent backup of the running hub (admin scope).

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::devices::require;
use super::error::ApiError;
use crate::auth::{Identity, Scope};
use crate::store::EngineKind;

/// Where backups go, and the one-at-a-time guard.
#[derive(Debug)]
pub struct Backups {
    /// The data directory (backups go to its `backups/`).
    pub data_dir: std::path::PathBuf,
    /// The store's engine.
    pub engine: EngineKind,
    /// Held while a backup runs.
    pub running: tokio::sync::Mutex<()>,
}

/// A backup made.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupMade {
    /// Bytes of the store entries copied.
    pub bytes: u64,
    /// Where it is, relative to the data directory (`backups/<UTC time>`).
    #[schema(example = "backups/20261121T101500-000Z")]
    pub dir: String,
    /// Store entries copied.
    pub entries: u64,
    /// How long it took, milliseconds.
    pub took_ms: u64,
}

/// Make a backup.
///
/// Needs the `admin` scope. Copies the store as it is at one moment (one snapshot, while ingest
/// goes on) and the data directory's key, admin token and TLS material into
/// `<data dir>/backups/<UTC time>/`; the newest three are kept. `hub restore DIR` puts one back
/// while the hub is stopped.
#[utoipa::path(
    post,
    path = "/backups",
    security(("bearer" = ["admin"])),
    tag = "backups",
    responses(
        (status = 201, description = "The backup.", body = BackupMade),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 409, description = "A backup is already being made."),
        (status = 500, description = "The backup failed; the hub's log says why."),
    ),
)]
pub(super) async fn create(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
) -> Result<(StatusCode, Json<BackupMade>), ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let backups: Arc<Backups> = state.backups.clone();
    let Ok(_running) = backups.running.try_lock() else {
        return Err(ApiError::Conflict("a backup is already being made".into()));
    };
    let store = state.store.clone();
    let started = std::time::Instant::now();
    let target = backups.clone();
    let made = tokio::task::spawn_blocking(move || {
        crate::backup::backup_in_place(
            &store,
            target.engine,
            &target.data_dir,
            crate::clock::now_ms(),
        )
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(|e| {
        tracing::error!(error = %e, "backup failed");
        ApiError::Internal
    })?;
    let dir = made
        .dir
        .strip_prefix(&backups.data_dir)
        .unwrap_or(&made.dir)
        .display()
        .to_string();
    tracing::info!(%dir, entries = made.entries, by = %identity.name, "backup made");
    Ok((
        StatusCode::CREATED,
        Json(BackupMade {
            bytes: made.bytes,
            dir,
            entries: made.entries,
            took_ms: started.elapsed().as_millis() as u64,
        }),
    ))
}
