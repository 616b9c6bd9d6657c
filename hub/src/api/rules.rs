//! `/api/v1/rules` (admin): the alert rules, those of the configuration file and those added here
//! (kept in the store); and `/api/v1/alerts` (read): the alerts now and their transitions.
//!
//! A rule is refused with `400` and every problem listed, each with its key, in the problem's
//! `detail` (`above: must be a finite number; actions[0].webhook: ...`). A configuration rule
//! cannot be replaced or deleted here (`409`).

use axum::Extension;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::devices::{json_rejection, query, require};
use super::error::ApiError;
use super::params;
use crate::auth::{Identity, Scope};
use crate::config::RuleConfig;
use crate::rules::RuleError;
use crate::rules::handle::Listed;
use crate::store::alerts::{AlertEvent, AlertRecord, AlertState};

/// Transitions listed when the client gives no limit.
const DEFAULT_HISTORY: usize = 100;

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::Invalid(problems) => ApiError::BadRequest(problems.join("; ")),
            e @ (RuleError::FromConfig(_) | RuleError::TooMany) => {
                ApiError::Conflict(e.to_string())
            }
            e @ RuleError::NotFound(_) => ApiError::NotFound(e.to_string()),
            RuleError::Store(e) => e.into(),
        }
    }
}

/// A rule as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RuleView {
    /// Its name.
    name: String,
    /// `config` (the configuration file) or `api`.
    #[schema(example = "api")]
    origin: &'static str,
    /// Its definition, in the shape `POST /rules` takes.
    #[schema(value_type = Object)]
    definition: Value,
}

impl From<Listed> for RuleView {
    fn from(l: Listed) -> Self {
        RuleView {
            name: l.config.name.clone(),
            origin: l.origin.name(),
            definition: serde_json::to_value(&l.config).unwrap_or(Value::Null),
        }
    }
}

/// Every rule.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RuleList {
    /// The configuration's rules first, then those added through the API, by name.
    rules: Vec<RuleView>,
}

/// A rule's name in the path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "read by the OpenAPI derive only")]
pub(super) struct RuleName {
    /// The rule's name.
    #[param(example = "freezer-warm", pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    name: String,
}

/// A rule, as `[[rules]]` in the configuration file, in JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(
    dead_code,
    reason = "the schema of the body; the handler reads it as a RuleConfig"
)]
pub(super) struct NewRule {
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`.
    #[schema(example = "freezer-warm")]
    name: String,
    /// Device-id pattern (`*` wildcards).
    #[schema(example = "freezer-*")]
    devices: Option<String>,
    /// Devices carrying all of these labels.
    #[schema(value_type = Option<Object>)]
    labels: Option<Value>,
    /// The metric the condition reads.
    #[schema(example = "temp")]
    metric: Option<String>,
    /// Fires while the value is above this (one condition per rule: above, below, rate, change,
    /// silent, offline or expr).
    #[schema(example = -15.0)]
    above: Option<f64>,
    /// Fires while the value is below this.
    below: Option<f64>,
    /// How far back on the good side a firing threshold alert's value must come to resolve.
    hysteresis: Option<f64>,
    /// How long the condition must hold before the alert fires (`2m`).
    #[serde(rename = "for")]
    #[schema(rename = "for", example = "2m")]
    for_: Option<String>,
    /// `{"per": "1m", "above": 2.0}`: the rate of change per `per`.
    #[schema(value_type = Option<Object>)]
    rate: Option<Value>,
    /// `{"deadband": 0.5}`: each move beyond it fires.
    #[schema(value_type = Option<Object>)]
    change: Option<Value>,
    /// No reading for this long (`10m`).
    silent: Option<String>,
    /// The device is offline.
    offline: Option<bool>,
    /// A Rhai expression over `value`, `device` and the reading's metrics.
    #[schema(example = "value > 30.0 && hum < 80")]
    expr: Option<String>,
    /// Shortest time between two firings of one alert (`1m`).
    min_interval: Option<String>,
    /// Actions: each one of `{"webhook": url}`, `{"command": {"device", "name", "args"}}`,
    /// `{"mqtt": {"topic", "qos"}}`, `{"log": "warn"}`, with `"on"`: firing, resolved or both.
    #[schema(value_type = Option<Vec<Object>>)]
    actions: Option<Value>,
}

/// List the rules.
///
/// Needs the `admin` scope.
#[utoipa::path(
    get,
    path = "/rules",
    operation_id = "list_rules",
    security(("bearer" = ["admin"])),
    tag = "rules",
    responses(
        (status = 200, description = "Every rule.", body = RuleList),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<RuleList>, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let rules = state.rules.list().await?;
    Ok(Json(RuleList {
        rules: rules.into_iter().map(RuleView::from).collect(),
    }))
}

/// Add a rule, or replace one added here before.
///
/// Needs the `admin` scope. `201` when new, `200` when it replaced the rule of its name.
#[utoipa::path(
    post,
    path = "/rules",
    operation_id = "put_rule",
    security(("bearer" = ["admin"])),
    tag = "rules",
    request_body = NewRule,
    responses(
        (status = 200, description = "Replaced.", body = RuleView),
        (status = 201, description = "Added.", body = RuleView),
        (status = 400, description = "The rule is not valid; the detail lists every problem with its key."),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 409, description = "A rule of the configuration file has this name, or there are too many rules."),
        (status = 413, description = "The body is larger than 16 KiB."),
        (status = 415, description = "The body is not declared as JSON."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn put(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    let Json(body) = body.map_err(json_rejection)?;
    let config: RuleConfig =
        serde_json::from_value(body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let new = state.rules.put(config.clone()).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let view = RuleView::from(Listed {
        origin: crate::rules::Origin::Api,
        config,
    });
    Ok((status, Json(view)).into_response())
}

/// One rule.
#[utoipa::path(
    get,
    path = "/rules/{name}",
    operation_id = "get_rule",
    security(("bearer" = ["admin"])),
    tag = "rules",
    params(RuleName),
    responses(
        (status = 200, description = "The rule.", body = RuleView),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 404, description = "No such rule."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn get(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    state
        .rules
        .list()
        .await?
        .into_iter()
        .find(|r| r.config.name == name)
        .map(|r| Json(RuleView::from(r)))
        .ok_or_else(|| ApiError::NotFound(format!("no rule {name:?}")))
}

/// Delete a rule added through the API.
#[utoipa::path(
    delete,
    path = "/rules/{name}",
    operation_id = "delete_rule",
    security(("bearer" = ["admin"])),
    tag = "rules",
    params(RuleName),
    responses(
        (status = 204, description = "Deleted; its alerts are forgotten."),
        (status = 403, description = "The token lacks the `admin` scope."),
        (status = 404, description = "No such rule."),
        (status = 409, description = "The rule comes from the configuration file."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn delete(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&identity, Scope::Admin, "admin")?;
    state.rules.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Which alerts and transitions.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AlertParams {
    /// Only alerts and transitions in this state.
    #[param(inline)]
    state: Option<StateFilter>,
    /// The history's page: transitions numbered below this (the last page's `next_cursor`).
    #[param(minimum = 0)]
    cursor: Option<u64>,
    /// Transitions per page (100 unless given).
    #[param(minimum = 1)]
    limit: Option<usize>,
}

/// An alert state to filter by.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum StateFilter {
    /// Held, not yet firing.
    Pending,
    /// Firing.
    Firing,
    /// Resolved.
    Resolved,
}

impl From<StateFilter> for AlertState {
    fn from(s: StateFilter) -> Self {
        match s {
            StateFilter::Pending => AlertState::Pending,
            StateFilter::Firing => AlertState::Firing,
            StateFilter::Resolved => AlertState::Resolved,
        }
    }
}

/// An alert now.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AlertView {
    rule: String,
    device: String,
    /// `pending`, `firing` or `resolved`.
    #[schema(example = "firing")]
    state: &'static str,
    /// Since when it is in that state.
    #[schema(format = DateTime)]
    since: String,
    /// Transitions notified so far.
    transition: u64,
    /// The value that moved it last.
    #[schema(required = true)]
    value: Option<f64>,
}

impl From<AlertRecord> for AlertView {
    fn from(a: AlertRecord) -> Self {
        AlertView {
            state: a.state.name(),
            since: crate::clock::rfc3339(a.since_ms),
            transition: a.transition,
            value: a.value.filter(|v| v.is_finite()),
            rule: a.rule,
            device: a.device,
        }
    }
}

/// One notified transition.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TransitionView {
    /// Its number in the history (the cursor of pages).
    number: u64,
    rule: String,
    device: String,
    /// `firing` or `resolved`.
    #[schema(example = "firing")]
    state: &'static str,
    /// The alert's transition number (as in the webhook's `Idempotency-Key`).
    transition: u64,
    #[schema(format = DateTime)]
    ts: String,
    #[schema(required = true)]
    value: Option<f64>,
}

impl TransitionView {
    fn new(number: u64, e: AlertEvent) -> Self {
        TransitionView {
            number,
            state: e.state.name(),
            transition: e.transition,
            ts: crate::clock::rfc3339(e.at_ms),
            value: e.value.filter(|v| v.is_finite()),
            rule: e.rule,
            device: e.device,
        }
    }
}

/// Alerts now and the history of transitions.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AlertsView {
    /// Every alert with a state now (pending, firing, or resolved and remembered).
    alerts: Vec<AlertView>,
    /// Transitions, newest first, one page.
    history: Vec<TransitionView>,
    /// The `cursor` of the next (older) page; null when this one is the last.
    #[schema(required = true)]
    next_cursor: Option<u64>,
}

/// Alerts and their history.
///
/// Needs the `read` scope; a token limited to some devices sees their alerts only.
#[utoipa::path(
    get,
    path = "/alerts",
    operation_id = "list_alerts",
    security(("bearer" = ["read"])),
    tag = "rules",
    params(AlertParams),
    responses(
        (status = 200, description = "Alerts now and a page of transitions.", body = AlertsView),
        (status = 400, description = "A parameter is wrong; the detail says which."),
        (status = 403, description = "The token lacks the `read` scope."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn alerts(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    q: Result<Query<AlertParams>, QueryRejection>,
) -> Result<Json<AlertsView>, ApiError> {
    require(&identity, Scope::Read, "read")?;
    let p = query(q)?;
    let limit = params::limit(p.limit, DEFAULT_HISTORY, state.max_page)?;
    let wanted: Option<AlertState> = p.state.map(AlertState::from);
    let store = state.store.clone();
    let cursor = p.cursor;
    let reader = identity.clone();
    // The history is filtered by device as it is read, so a limited identity gets full pages.
    let (alerts, history) = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((
            store.alerts()?,
            store.alert_history_of(wanted, cursor, limit, &|d| reader.may_access(d))?,
        ))
    })
    .await
    .map_err(|_| ApiError::Internal)??;
    let full_page = history.len() >= limit;
    let next_cursor = history.last().map(|(n, _)| *n).filter(|_| full_page);
    Ok(Json(AlertsView {
        alerts: alerts
            .into_iter()
            .filter(|a| wanted.is_none_or(|s| s == a.state) && identity.may_access(&a.device))
            .map(AlertView::from)
            .collect(),
        history: history
            .into_iter()
            .map(|(n, e)| TransitionView::new(n, e))
            .collect(),
        next_cursor,
    }))
}
