//! `DELETE /api/v1/devices/{id}` (admin): removes a device, its readings kept (the default) or
//! erased, and its credentials revoked.
//!
//! Order, so a removed device cannot slip back in between: its MQTT password is revoked, the
//! tokens made for it alone are revoked, its certificate from the hub's CA is revoked and the
//! listeners' TLS read again (the call waits for it), its open MQTT connections are closed; only
//! then does the store remove it (see `store::removal`). Kept is the default because erasing
//! cannot be undone and takes readings that sinks and pull consumers may not have had yet; erase
//! must be asked for.

use std::path::PathBuf;

use axum::Extension;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::devices::{query, require, visible_device};
use super::error::ApiError;
use super::schema::DeviceId;
use crate::auth::{Identity, Scope};

/// What the API needs to revoke a removed device's certificate: the hub's CA (`tls/`, with the
/// certificates `hub certs issue-device` wrote under `tls/devices/`), and the reload task.
#[derive(Debug, Clone)]
pub struct DeviceCerts {
    /// The hub's TLS directory.
    pub tls_dir: PathBuf,
    /// Asks the reload task to read the listeners' TLS again, and waits for its answer.
    pub reload_tx: mpsc::Sender<oneshot::Sender<()>>,
}

/// What becomes of a removed device's readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadingsChoice {
    /// Kept: readable through `/devices/{id}/readings` and the sync routes, synced as before,
    /// deleted by retention like any other.
    #[default]
    Keep,
    /// Erased from the store, with their rollups and parked copies; their space is free again.
    Erase,
}

/// The parameters of a removal.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemovalParams {
    /// `keep` (the default: erasing cannot be undone) or `erase`.
    readings: Option<ReadingsChoice>,
}

/// What removing a device revoked.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokedCredentials {
    /// The serial (hex) of its certificate from the hub's CA (`tls/devices/{id}.crt`, now moved
    /// aside as `.revoked`); null when it had none there.
    #[schema(required = true)]
    pub certificate: Option<String>,
    /// Whether it had a live MQTT password, now revoked.
    pub password: bool,
    /// The ids of the tokens that were limited to this device alone (`devices` exactly its id).
    pub tokens: Vec<String>,
}

/// A removed device.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceRemoved {
    /// The device.
    pub device: String,
    /// Readings erased (0 when they were kept).
    pub erased: u64,
    /// What became of its readings.
    pub readings: ReadingsChoice,
    /// What was revoked.
    pub revoked: RevokedCredentials,
}

/// Remove a device.
///
/// Needs the `admin` scope. The device leaves `GET /devices`; its latest values go; its MQTT
/// password, the tokens limited to it alone and its certificate from the hub's CA are revoked,
/// and its open MQTT connections closed. `readings=keep` (the default) keeps its readings for the
/// readings and sync routes; `readings=erase` erases them (offsets are not reused: sinks and pull
/// consumers skip the gaps, nothing of another device moves). A removed device that publishes
/// again through a door that needs no credential (the loopback listener, a serial line, Modbus,
/// an external broker) is registered anew. `erase` on a device removed with its readings kept
/// erases them.
#[utoipa::path(
    delete,
    path = "/devices/{id}",
    security(("bearer" = ["admin"])),
    operation_id = "delete_device",
    tag = "devices",
    params(DeviceId, RemovalParams),
    responses(
        (status = 200, description = "Removed.", body = DeviceRemoved),
        (status = 400, description = "The id or `readings` is wrong."),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 404, description = "No such device, or not one the token may see."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn delete(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
    params: Result<Query<RemovalParams>, QueryRejection>,
) -> Result<Json<DeviceRemoved>, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let id = visible_device(&identity, &id)?.to_owned();
    let choice = query(params)?.readings.unwrap_or_default();
    let erase = choice == ReadingsChoice::Erase;
    let store = state.store.clone();
    let lookup = id.clone();
    let removable = tokio::task::spawn_blocking(move || store.removable(&lookup, erase))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(failed)?;
    if !removable {
        return Err(ApiError::NotFound(format!("no device {id:?}")));
    }
    let revoked = revoke(&state, &id).await?;
    let (store, lookup) = (state.store.clone(), id.clone());
    let now = crate::clock::now_ms();
    let removed = tokio::task::spawn_blocking(move || store.remove_device(&lookup, erase, now))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(failed)?
        .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))?;
    state.presence.forget(&id);
    tracing::info!(device = %id, readings = ?choice, erased = removed.erased, by = %identity.name, "device removed");
    Ok(Json(DeviceRemoved {
        device: id,
        erased: removed.erased,
        readings: choice,
        revoked,
    }))
}

/// Revokes what lets device `id` in, and closes its connections.
async fn revoke(state: &ApiState, id: &str) -> Result<RevokedCredentials, ApiError> {
    let (credentials, tokens, certs, device) = (
        state.credentials.clone(),
        state.tokens.clone(),
        state.device_certs.clone(),
        id.to_owned(),
    );
    let now = crate::clock::now_ms();
    let (revoked, reload) = tokio::task::spawn_blocking(move || {
        let password = credentials
            .revoke(&device, now)
            .map_err(super::credentials::refused)?
            .is_some();
        let mut revoked_tokens = Vec::new();
        for token in tokens.list() {
            let alone = token.record.devices.len() == 1 && token.record.devices[0] == device;
            if alone && !token.record.revoked {
                tokens.revoke(&token.id).map_err(auth_failed)?;
                revoked_tokens.push(token.id);
            }
        }
        let certificate = crate::auth::revocation::revoke_issued(
            &certs.tls_dir,
            &certs.tls_dir.join("devices"),
            &device,
            i64::try_from(now / 1000).unwrap_or(i64::MAX),
        )
        .map_err(auth_failed)?
        .map(|(revoked, _)| revoked.serial);
        Ok::<_, ApiError>((
            RevokedCredentials {
                certificate,
                password,
                tokens: revoked_tokens,
            },
            certs.reload_tx.clone(),
        ))
    })
    .await
    .map_err(|_| ApiError::Internal)??;
    if revoked.certificate.is_some() {
        // The listeners read the new revocation list before the device can connect again.
        let (done_tx, done_rx) = oneshot::channel();
        if reload.send(done_tx).await.is_err() || done_rx.await.is_err() {
            tracing::warn!(device = %id, "the listeners' TLS could not be read again; the revoked certificate is refused from the next SIGHUP");
        }
    }
    state.credentials.close(id);
    Ok(revoked)
}

fn failed(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store failed");
    ApiError::Internal
}

fn auth_failed(e: crate::auth::AuthError) -> ApiError {
    tracing::error!(error = %e, "revoking a removed device's credentials failed");
    ApiError::Internal
}

/// The device certificates of the hub's CA, for tests that need no reload task.
#[cfg(test)]
pub fn no_certs(tls_dir: PathBuf) -> std::sync::Arc<DeviceCerts> {
    std::sync::Arc::new(DeviceCerts {
        tls_dir,
        reload_tx: mpsc::channel(1).0,
    })
}
