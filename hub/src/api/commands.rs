//! `POST /api/v1/devices/{id}/commands`, `GET /api/v1/devices/{id}/commands` and
//! `GET /api/v1/devices/{id}/commands/{cid}`: commands for devices, through [`crate::commands`].
//!
//! A command is answered `202 Accepted` with its record (state `pending` or `delivered`) and a
//! `Location`; with `?wait=10s` the request is held until the command reaches a final state
//! (`succeeded`, `failed`, `timed_out`) or the wait ends, and a final command is answered `200`.
//! A device that is offline gets the command when it comes back, within the command's `ttl`; a
//! request with `ttl` `0s` is refused with `409` instead of waiting.
//!
//! Listing a device's commands needs the `read` scope, as reading one does: the records are the
//! same, and with ids that only grow a reader could walk them one by one anyway, so a stricter
//! scope on the list would protect nothing. Sending needs `command`.

use axum::Extension;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ApiState;
use super::devices::{json_rejection, query, require, visible_device};
use super::error::ApiError;
use super::params;
use super::schema::DeviceId;
use crate::auth::{Identity, Scope};
use crate::commands::{CommandError, CommandRequest};
use crate::store::{CommandRecord, CommandState};
use utoipa::{IntoParams, ToSchema};

/// The body of a command request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewCommand {
    /// The command's name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    #[schema(example = "set-valve", pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    name: String,
    /// Arguments: a JSON object (for binary and serial devices, numbers, booleans and strings
    /// only, at most 16).
    #[serde(default)]
    #[schema(value_type = Option<Object>, example = json!({"open": true}))]
    args: Option<Map<String, Value>>,
    /// How long to wait for an offline device (`10m`); `0s` refuses the command if it is offline.
    #[serde(default)]
    #[schema(example = "10m", pattern = r"^[0-9]{1,9}(ms|s|m|h|d)$")]
    ttl: Option<String>,
    /// How long a delivered command waits for the device's result (`30s`).
    #[serde(default)]
    #[schema(example = "30s", pattern = r"^[0-9]{1,9}(ms|s|m|h|d)$")]
    timeout: Option<String>,
}

/// Commands listed when the client gives no `limit`.
const DEFAULT_LIST: usize = 20;

/// Query of a device's command list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// The next (older) page: commands numbered below this (the previous page's
    /// `next_cursor`).
    #[param(minimum = 0, example = 42)]
    cursor: Option<u64>,
    /// Commands per page, 1 to `api.max_page` (20 unless given).
    #[param(minimum = 1, example = 20)]
    limit: Option<usize>,
}

/// A page of a device's commands.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CommandList {
    /// The device.
    device: String,
    /// Its commands, newest first.
    commands: Vec<CommandView>,
    /// The `cursor` of the next (older) page; null when this one is the last.
    #[schema(required = true)]
    next_cursor: Option<u64>,
}

/// Query of a command request.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SendParams {
    /// Hold the request until the command is final, at most this long (`10s`; at most
    /// `commands.max_wait`, 1m unless configured).
    #[param(example = "1s", pattern = r"^[0-9]{1,9}(ms|s|m|h|d)$")]
    wait: Option<String>,
}

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum StateName {
    /// Stored; waiting for the device to be online.
    Pending,
    /// Handed to the device's transport; waiting for its result.
    Delivered,
    /// The device answered that it succeeded.
    Succeeded,
    /// The device answered that it failed.
    Failed,
    /// Not delivered within its ttl, or no result within its timeout.
    TimedOut,
}

impl From<CommandState> for StateName {
    fn from(s: CommandState) -> Self {
        match s {
            CommandState::Pending => StateName::Pending,
            CommandState::Delivered => StateName::Delivered,
            CommandState::Succeeded => StateName::Succeeded,
            CommandState::Failed => StateName::Failed,
            CommandState::TimedOut => StateName::TimedOut,
        }
    }
}

// The command in the path, for the description only (the handler parses it itself).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "read by the OpenAPI derive only")]
pub(super) struct CommandPath {
    /// The device id.
    #[param(
        pattern = r"^([A-Za-z0-9_-][A-Za-z0-9._-]{0,63}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}|\.\.[A-Za-z0-9._-]{1,62})$",
        example = "greenhouse-1"
    )]
    id: String,
    /// The command id, as the POST answered it (digits; anything else is no command: 404).
    #[param(example = "42", pattern = r"^[0-9]{1,20}$")]
    cid: String,
}

/// A command as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CommandView {
    /// Command id (per hub, only grows).
    id: u64,
    /// The device it is for.
    device: String,
    /// Its name.
    name: String,
    /// Its arguments.
    #[schema(value_type = Object)]
    args: Value,
    /// Where it is.
    state: StateName,
    /// Who asked for it.
    requested_by: String,
    /// When it was accepted.
    #[schema(format = DateTime)]
    created: String,
    /// When it times out if not delivered.
    #[schema(format = DateTime)]
    expires: String,
    /// How long after delivery the device has to answer, in milliseconds.
    timeout_ms: u64,
    /// When it was handed to the device's transport; null before.
    #[schema(required = true, format = DateTime)]
    delivered: Option<String>,
    /// When it reached a final state; null before.
    #[schema(required = true, format = DateTime)]
    finished: Option<String>,
    /// The device's result data, if it sent any.
    #[schema(required = true, value_type = Option<Object>)]
    result: Option<Value>,
    /// Why it failed or timed out.
    #[schema(required = true)]
    error: Option<String>,
    /// A binary device's error code.
    #[schema(required = true)]
    error_code: Option<u16>,
}

impl CommandView {
    fn new(id: u64, r: CommandRecord) -> Self {
        CommandView {
            id,
            args: serde_json::from_str(&r.args).unwrap_or(Value::Object(Map::new())),
            state: r.state.into(),
            created: crate::clock::rfc3339(r.created_ms),
            expires: crate::clock::rfc3339(r.expires_ms),
            timeout_ms: r.result_timeout_ms,
            delivered: r.delivered_ms.map(crate::clock::rfc3339),
            finished: r.finished_ms.map(crate::clock::rfc3339),
            result: r.result.and_then(|text| serde_json::from_str(&text).ok()),
            error: r.error,
            error_code: r.error_code,
            device: r.device,
            name: r.name,
            requested_by: r.requested_by,
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::UnknownDevice(d) => ApiError::NotFound(format!("no device {d:?}")),
            CommandError::Invalid(detail) => ApiError::BadRequest(detail),
            e @ CommandError::Offline(_) => ApiError::Conflict(e.to_string()),
            CommandError::TooMany(detail) => ApiError::TooMany(detail),
            CommandError::Store(e) => e.into(),
            CommandError::Stopping => ApiError::Unavailable("the hub is shutting down".into()),
        }
    }
}

/// Send a command to a device.
///
/// Needs the `command` scope. The command is stored, then delivered over the device's transport
/// at once if it is online, else when it comes back within `ttl`. `202` with the command; with
/// `wait`, `200` once the command is final (`202` if the wait ends first).
#[utoipa::path(
    post,
    path = "/devices/{id}/commands",
    security(("bearer" = ["command"])),
    tag = "commands",
    params(DeviceId, SendParams),
    request_body = NewCommand,
    responses(
        (status = 200, description = "The command reached a final state within `wait`.", body = CommandView),
        (status = 202, description = "Accepted; the command is pending or delivered.", body = CommandView,
            headers(("location" = String, description = "Where to GET the command."))),
        (status = 400, description = "The body, a parameter or the id is wrong; the detail says which."),
        (status = 403, description = "The token lacks the `command` scope."),
        (status = 404, description = "No such device, or not one the token may see."),
        (status = 409, description = "The device is offline and `ttl` is 0."),
        (status = 413, description = "The body is larger than 16 KiB."),
        (status = 415, description = "The body is not declared as JSON."),
        (status = 429, description = "The device has too many open commands.",
            headers(("retry-after" = String, description = "Seconds to wait."))),
        (status = 500, description = "The store failed; the hub's log says why."),
        (status = 503, description = "The hub is shutting down."),
    ),
)]
pub(super) async fn send(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
    q: Result<Query<SendParams>, QueryRejection>,
    body: Result<Json<NewCommand>, JsonRejection>,
) -> Result<Response, ApiError> {
    require(&identity, Scope::Command, "command")?;
    let device = visible_device(&identity, &id)?.to_owned();
    let p = query(q)?;
    let Json(body) = body.map_err(json_rejection)?;
    let wait = match &p.wait {
        Some(text) => {
            let wait = params::duration("wait", text)?;
            if wait > state.max_wait {
                return Err(ApiError::BadRequest(format!(
                    "`wait` is at most {} s",
                    state.max_wait.as_secs()
                )));
            }
            Some(wait)
        }
        None => None,
    };
    let request = CommandRequest {
        device: device.clone(),
        name: body.name,
        args: body.args.unwrap_or_default(),
        ttl: body
            .ttl
            .as_deref()
            .map(|t| params::duration("ttl", t))
            .transpose()?,
        timeout: body
            .timeout
            .as_deref()
            .map(|t| params::duration("timeout", t))
            .transpose()?,
        requested_by: identity.name.clone(),
    };
    // Subscribed before the command exists, so its result cannot slip by unseen.
    let events = wait.map(|_| state.commands.subscribe());
    let (command_id, mut record) = state.commands.submit(request).await?;
    if let (Some(wait), Some(events)) = (wait, events)
        && let Some(latest) = state.commands.wait_for(command_id, events, wait).await?
    {
        record = latest;
    }
    let status = if record.state.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = format!("/api/v1/devices/{device}/commands/{command_id}");
    let mut response = (status, Json(CommandView::new(command_id, record))).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// One command.
///
/// Its state and, once the device answered, its result.
#[utoipa::path(
    get,
    path = "/devices/{id}/commands/{cid}",
    security(("bearer" = ["read"])),
    tag = "commands",
    params(CommandPath),
    responses(
        (status = 200, description = "The command.", body = CommandView),
        (status = 400, description = "The id is not a device id."),
        (status = 403, description = "The token lacks the `read` scope."),
        (status = 404, description = "No such command for this device, or a device the token may not see."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn get(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path((id, command)): Path<(String, String)>,
) -> Result<Json<CommandView>, ApiError> {
    require(&identity, Scope::Read, "read")?;
    let device = visible_device(&identity, &id)?;
    let not_found = || ApiError::NotFound(format!("no command {command:?} for device {device:?}"));
    let command_id: u64 = command.parse().map_err(|_| not_found())?;
    match state.commands.get(command_id).await? {
        // Another device's command is not shown through this device's path.
        Some(record) if record.device == device => Ok(Json(CommandView::new(command_id, record))),
        _ => Err(not_found()),
    }
}

/// A device's commands.
///
/// Newest first, a page at a time: each with its state and, once the device answered, its
/// result. Follow `next_cursor` for older ones; a page may hold fewer than `limit` and still
/// have a `next_cursor` (the hub looks at a bounded number of stored commands per page).
#[utoipa::path(
    get,
    path = "/devices/{id}/commands",
    operation_id = "list_commands",
    security(("bearer" = ["read"])),
    tag = "commands",
    params(DeviceId, ListParams),
    responses(
        (status = 200, description = "A page of the device's commands, newest first.", body = CommandList),
        (status = 400, description = "The id, `limit` or `cursor` is wrong; the detail says which."),
        (status = 403, description = "The token lacks the `read` scope."),
        (status = 404, description = "No such device, or not one the token may see."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<CommandList>, ApiError> {
    require(&identity, Scope::Read, "read")?;
    let device = visible_device(&identity, &id)?.to_owned();
    let p = query(q)?;
    let limit = params::limit(p.limit, DEFAULT_LIST, state.max_page)?;
    let page = state.commands.list(device.clone(), p.cursor, limit).await?;
    Ok(Json(CommandList {
        device,
        commands: page
            .commands
            .into_iter()
            .map(|(id, record)| CommandView::new(id, record))
            .collect(),
        next_cursor: page.next_before,
    }))
}
