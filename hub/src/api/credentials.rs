//! `/api/v1/device-credentials`: make, list, rotate and revoke devices' MQTT passwords (admin
//! scope), through [`crate::auth::credentials::DeviceCredentials`].
//!
//! A password is in the answer that made it and nowhere else: not in the list, not in the log,
//! not in the store (which keeps a salt and a keyed argon2 hash). The MQTT user name is the
//! device id, so a credential is named by its device; an identity limited to some devices sees
//! and manages only theirs (another device is answered 404, like one without a password).

use axum::Extension;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::devices::{json_rejection, require, visible_device};
use super::error::ApiError;
use super::schema::DeviceId;
use super::tokens::secret_response;
use crate::auth::credentials::{CredentialError, CredentialInfo, DeviceCredentials, Issued};
use crate::auth::{Identity, Scope};

/// The body of a credential request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCredential {
    /// The device (its id is the MQTT user name); it need not have connected yet.
    #[schema(example = "sensor-7", pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub device: String,
}

/// A credential as the list shows it: never its password, nor its hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialSummary {
    /// When it was made, RFC 3339 UTC.
    #[schema(format = DateTime, example = "2026-11-21T10:00:00.000Z")]
    pub created: String,
    /// The device.
    #[schema(example = "sensor-7")]
    pub device: String,
    /// When it was revoked, RFC 3339 UTC; null while it is live.
    #[schema(required = true, format = DateTime)]
    pub revoked: Option<String>,
    /// When its password was last replaced, RFC 3339 UTC; null if never.
    #[schema(required = true, format = DateTime)]
    pub rotated: Option<String>,
    /// The MQTT user name: the device id.
    #[schema(example = "sensor-7")]
    pub username: String,
}

impl CredentialSummary {
    /// The summary of `info`.
    pub fn new(info: &CredentialInfo) -> Self {
        CredentialSummary {
            created: crate::clock::rfc3339(info.created_ms),
            device: info.device.clone(),
            revoked: info.revoked_ms.map(crate::clock::rfc3339),
            rotated: info.rotated_ms.map(crate::clock::rfc3339),
            username: info.device.clone(),
        }
    }
}

/// A password just made or rotated: the only answer that ever holds it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuedCredential {
    /// When the credential was first made, RFC 3339 UTC.
    #[schema(format = DateTime)]
    pub created: String,
    /// The device.
    pub device: String,
    /// The password, for MQTT's password field (`mosquitto_pub -P`). Shown this once: the hub
    /// keeps only a keyed argon2 hash of it.
    #[schema(pattern = "^[0-9a-f]{32}$")]
    pub password: String,
    /// When the password replaced the one before it, RFC 3339 UTC; null for a first one.
    #[schema(required = true, format = DateTime)]
    pub rotated: Option<String>,
    /// The MQTT user name: the device id.
    pub username: String,
}

impl IssuedCredential {
    fn new(issued: Issued) -> Self {
        let summary = CredentialSummary::new(&issued.info);
        IssuedCredential {
            created: summary.created,
            device: summary.device,
            password: issued.password,
            rotated: summary.rotated,
            username: summary.username,
        }
    }
}

/// The credential list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialList {
    /// Every credential, by device id, live or revoked.
    pub credentials: Vec<CredentialSummary>,
}

/// Make a device's MQTT password.
///
/// Needs the `admin` scope. The answer holds the password, which is shown this once. The device
/// then connects to the TLS listener for devices (`[mqtt.devices]`, with `passwords = "allow"`
/// or `"require"`) with its id as user name.
#[utoipa::path(
    post,
    path = "/device-credentials",
    security(("bearer" = ["admin"])),
    operation_id = "create_device_credential",
    tag = "device-credentials",
    request_body = NewCredential,
    responses(
        (status = 201, description = "The credential, with its password.", body = IssuedCredential),
        (status = 400, description = "The body is wrong, or the device id is not one."),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 404, description = "The token may not see this device."),
        (status = 409, description = "The device has a live password: rotate it or revoke it first."),
        (status = 413, description = "The body is larger than 16 KiB."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn create(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    body: Result<Json<NewCredential>, JsonRejection>,
) -> Result<Response, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let Json(body) = body.map_err(json_rejection)?;
    let device = visible_device(&identity, &body.device)?.to_owned();
    let issued = change(&state, move |c, now| c.create(&device, now)).await?;
    tracing::info!(device = %issued.info.device, by = %identity.name, "device credential created");
    Ok(secret_response(
        StatusCode::CREATED,
        IssuedCredential::new(issued),
    ))
}

/// List devices' MQTT credentials.
///
/// Needs the `admin` scope. Every credential of the devices the caller may see, without
/// passwords.
#[utoipa::path(
    get,
    path = "/device-credentials",
    security(("bearer" = ["admin"])),
    operation_id = "list_device_credentials",
    tag = "device-credentials",
    responses(
        (status = 200, description = "The credentials.", body = CredentialList),
        (status = 403, description = "The token lacks the `admin` scope."),
    ),
)]
pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<CredentialList>, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let credentials = state
        .credentials
        .list()
        .iter()
        .filter(|c| identity.may_access(&c.device))
        .map(CredentialSummary::new)
        .collect();
    Ok(Json(CredentialList { credentials }))
}

/// Rotate a device's MQTT password.
///
/// Needs the `admin` scope. A new password replaces the live one: the old one is refused from
/// this answer on, and a connection that logged in with it is closed.
#[utoipa::path(
    post,
    path = "/device-credentials/{id}/rotate",
    security(("bearer" = ["admin"])),
    operation_id = "rotate_device_credential",
    tag = "device-credentials",
    params(DeviceId),
    responses(
        (status = 200, description = "The new password.", body = IssuedCredential),
        (status = 400, description = "The device id is not one."),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 404, description = "The device has no live password, or the token may not see it."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn rotate(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let device = visible_device(&identity, &id)?.to_owned();
    let issued = change(&state, move |c, now| c.rotate(&device, now)).await?;
    tracing::info!(device = %issued.info.device, by = %identity.name, "device credential rotated");
    Ok(secret_response(
        StatusCode::OK,
        IssuedCredential::new(issued),
    ))
}

/// Revoke a device's MQTT password.
///
/// Needs the `admin` scope. The password is refused from this answer on, also after a restart,
/// and a connection that logged in with it is closed; the credential stays listed as revoked.
#[utoipa::path(
    delete,
    path = "/device-credentials/{id}",
    security(("bearer" = ["admin"])),
    operation_id = "revoke_device_credential",
    tag = "device-credentials",
    params(DeviceId),
    responses(
        (status = 204, description = "Revoked."),
        (status = 400, description = "The device id is not one."),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 404, description = "The device has no live password, or the token may not see it."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn revoke(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let device = visible_device(&identity, &id)?.to_owned();
    let lookup = device.clone();
    let revoked = change(&state, move |c, now| c.revoke(&lookup, now)).await?;
    match revoked {
        Some(_) => {
            tracing::info!(%device, by = %identity.name, "device credential revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::NotFound(format!(
            "device {device:?} has no password"
        ))),
    }
}

/// Runs `what` on the credentials at the current time, off the async workers (argon2, a durable
/// write).
async fn change<T: Send + 'static>(
    state: &ApiState,
    what: impl FnOnce(&DeviceCredentials, u64) -> Result<T, CredentialError> + Send + 'static,
) -> Result<T, ApiError> {
    let credentials = state.credentials.clone();
    tokio::task::spawn_blocking(move || what(&credentials, crate::clock::now_ms()))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(refused)
}

/// The answer for a refused change.
pub(super) fn refused(e: CredentialError) -> ApiError {
    match e {
        CredentialError::InvalidDevice(_) => ApiError::BadRequest(e.to_string()),
        CredentialError::Exists(_) => ApiError::Conflict(e.to_string()),
        CredentialError::NotFound(_) => ApiError::NotFound(e.to_string()),
        CredentialError::Store(_) | CredentialError::Random | CredentialError::Hash(_) => {
            tracing::error!(error = %e, "device credentials failed");
            ApiError::Internal
        }
    }
}
