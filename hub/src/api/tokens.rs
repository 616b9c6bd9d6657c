//! `/api/v1/tokens`: make, list and revoke bearer tokens (admin scope), through
//! [`crate::auth::TokenRegistry`].
//!
//! A token's secret is in the answer to its creation and nowhere else: not in the list, not in
//! the log, not in the store (which keeps only its keyed hash). A token is named by a public
//! `id`, the first 16 hex digits of that hash.

use axum::Extension;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::devices::{json_rejection, require};
use super::error::ApiError;
use crate::auth::tokens::{ID_LEN, TokenInfo, TokenSpec};
use crate::auth::{Identity, Scope};

/// The body of a token request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A name for people: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    #[schema(example = "app-1", pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// What it may do: at least one of `read`, `command`, `admin`, `metrics`, `sync` (commit
    /// the pull consumer named like the token).
    #[schema(example = json!(["read", "command"]), min_items = 1)]
    pub scopes: Vec<String>,
    /// Device-id patterns it is limited to (`*` matches any run of characters), at most 32;
    /// absent or empty for every device.
    #[serde(default)]
    #[schema(example = json!(["greenhouse-*"]), max_items = 32)]
    pub devices: Vec<String>,
    /// How long it lives (`30d`, `12h`), at most 100 years (`36500d`); absent or null for ever.
    #[serde(default)]
    #[schema(example = "30d", pattern = r"^[0-9]{1,9}(ms|s|m|h|d)$")]
    pub expires: Option<String>,
}

/// A token as the list shows it: never its secret, nor the hash of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSummary {
    /// When it was made, RFC 3339 UTC.
    #[schema(format = DateTime, example = "2026-11-21T10:00:00.000Z")]
    pub created: String,
    /// Device-id patterns it is limited to; empty for every device.
    pub devices: Vec<String>,
    /// When it stops working, RFC 3339 UTC; null for never.
    #[schema(required = true, format = DateTime)]
    pub expires: Option<String>,
    /// Its public id, for `DELETE /api/v1/tokens/{id}`: 16 hex digits, not part of the secret.
    #[schema(pattern = "^[0-9a-f]{16}$", example = "3f9a0c1d2e4b5a69")]
    pub id: String,
    /// When it was last used, RFC 3339 UTC; null if never. Kept in memory and saved about once
    /// a minute, so after a crash of the hub it may lag by that much.
    #[schema(required = true, format = DateTime)]
    pub last_used: Option<String>,
    /// Its name.
    #[schema(example = "app-1")]
    pub name: String,
    /// Whether it was revoked (it is then refused).
    pub revoked: bool,
    /// What it may do.
    #[schema(example = json!(["read"]))]
    pub scopes: Vec<String>,
}

impl TokenSummary {
    /// The summary of `token`.
    pub fn new(token: &TokenInfo) -> Self {
        let r = &token.record;
        TokenSummary {
            created: crate::clock::rfc3339(r.created_ms),
            devices: r.devices.clone(),
            expires: r.expires_ms.map(crate::clock::rfc3339),
            id: token.id.clone(),
            last_used: r.last_used_ms.map(crate::clock::rfc3339),
            name: r.name.clone(),
            revoked: r.revoked,
            scopes: r.scopes.clone(),
        }
    }
}

/// A token just made, with its secret: the only answer that ever holds it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatedToken {
    /// When it was made, RFC 3339 UTC.
    #[schema(format = DateTime)]
    pub created: String,
    /// Device-id patterns it is limited to; empty for every device.
    pub devices: Vec<String>,
    /// When it stops working, RFC 3339 UTC; null for never.
    #[schema(required = true, format = DateTime)]
    pub expires: Option<String>,
    /// Its public id.
    #[schema(pattern = "^[0-9a-f]{16}$")]
    pub id: String,
    /// Its name.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<String>,
    /// The secret, for `Authorization: Bearer <secret>`. Shown this once: the hub keeps only
    /// a keyed hash of it.
    #[schema(pattern = "^hub_[0-9a-f]{64}$")]
    pub secret: String,
}

/// The token list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenList {
    /// Every token, oldest first, live, expired or revoked.
    pub tokens: Vec<TokenSummary>,
}

// The token in the path, for the description only (the handler checks it itself).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "read by the OpenAPI derive only")]
pub(super) struct TokenPath {
    /// The token's public id, as the list or the creation answered it.
    #[param(pattern = "^[0-9a-f]{16}$", example = "3f9a0c1d2e4b5a69")]
    id: String,
}

/// Make a token.
///
/// Needs the `admin` scope. The answer holds the secret, which is shown this once.
#[utoipa::path(
    post,
    path = "/tokens",
    security(("bearer" = ["admin"])),
    operation_id = "create_token",
    tag = "tokens",
    request_body = NewToken,
    responses(
        (status = 201, description = "The token, with its secret.", body = CreatedToken),
        (status = 400, description = "The body is wrong; the detail says which field and why."),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 413, description = "The body is larger than 16 KiB."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn create(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    body: Result<Json<NewToken>, JsonRejection>,
) -> Result<Response, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let Json(body) = body.map_err(json_rejection)?;
    let spec = TokenSpec {
        name: body.name,
        scopes: body.scopes,
        devices: body.devices,
        expires: body.expires,
    };
    let record = spec
        .validate(crate::clock::now_ms())
        .map_err(|e| ApiError::BadRequest(e.0))?;
    let tokens = state.tokens.clone();
    let (secret, info) = tokio::task::spawn_blocking(move || tokens.create_token(record))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(auth_failed)?;
    tracing::info!(id = %info.id, name = %info.record.name, by = %identity.name, "token created");
    let summary = TokenSummary::new(&info);
    let created = CreatedToken {
        created: summary.created,
        devices: summary.devices,
        expires: summary.expires,
        id: summary.id,
        name: summary.name,
        scopes: summary.scopes,
        secret,
    };
    Ok(secret_response(StatusCode::CREATED, created))
}

/// `body` as JSON with `status`, marked so that no cache, shared or private, keeps it: it holds
/// a secret.
pub(super) fn secret_response(status: StatusCode, body: impl Serialize) -> Response {
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// List tokens.
///
/// Needs the `admin` scope. Every token, without secrets.
#[utoipa::path(
    get,
    path = "/tokens",
    security(("bearer" = ["admin"])),
    operation_id = "list_tokens",
    tag = "tokens",
    responses(
        (status = 200, description = "The tokens.", body = TokenList),
        (status = 403, description = "The token lacks the `admin` scope."),
    ),
)]
pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<TokenList>, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let tokens = state.tokens.list().iter().map(TokenSummary::new).collect();
    Ok(Json(TokenList { tokens }))
}

/// Revoke a token.
///
/// Needs the `admin` scope. The token is refused from this answer on, also after a restart;
/// it stays in the list, marked revoked. A token may revoke itself.
#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    security(("bearer" = ["admin"])),
    operation_id = "revoke_token",
    tag = "tokens",
    params(TokenPath),
    responses(
        (status = 204, description = "Revoked (or it already was)."),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 404, description = "No token has this id."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn revoke(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let well_formed = id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !well_formed {
        return Err(ApiError::NotFound("no token with this id".into()));
    }
    let tokens = state.tokens.clone();
    let lookup = id.clone();
    let revoked = tokio::task::spawn_blocking(move || tokens.revoke(&lookup))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(auth_failed)?;
    match revoked {
        Some(info) => {
            tracing::info!(id = %info.id, name = %info.record.name, by = %identity.name, "token revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::NotFound(format!("no token {id:?}"))),
    }
}

fn auth_failed(e: crate::auth::AuthError) -> ApiError {
    tracing::error!(error = %e, "token store failed");
    ApiError::Internal
}
