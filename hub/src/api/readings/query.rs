//! The query of `/readings`: its parameters as the client wrote them, as the OpenAPI document
//! describes them, and checked into what the store reads.
//!
//! Invariants: parameters stay strings until [`parse`], so every mistake gets a 400 that names the
//! parameter; an export takes no `limit` (it streams the whole range); `bucket` needs `metric`,
//! `agg` needs `bucket`, and a bucket range spans at most [`MAX_BUCKETS_IN_RANGE`] buckets.

use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{EXPORT_PAGE, Source};
use crate::api::ApiState;
use crate::api::devices::DEFAULT_PAGE;
use crate::api::error::ApiError;
use crate::api::params::{self, Format};
use crate::clock::now_ms;
use crate::store::downsample::{MAX_BUCKETS_IN_RANGE, buckets_in_range};
use crate::store::{DownsampleQuery, Order, ReadingsQuery};

/// Query parameters of `/readings`. They stay strings here and are checked by [`parse`], so every
/// mistake gets a 400 that names the parameter; the OpenAPI attributes say what is accepted.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(in crate::api) struct ReadingsParams {
    /// Only this metric: readings without it are left out, and the others' values too. Required
    /// with `bucket`.
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "temp")]
    metric: Option<String>,
    /// From this time, inclusive: RFC 3339 (any offset), unix milliseconds, or relative to now
    /// (`-15m`, `-1h`, `-7d`).
    #[param(example = "2026-11-20T00:00:00Z")]
    from: Option<String>,
    /// Up to this time, exclusive; the same forms as `from`.
    #[param(example = "2026-11-21T00:00:00Z")]
    to: Option<String>,
    /// Readings (or buckets) per page: 1 to `api.max_page` (1000 unless configured), 100 when
    /// absent. Refused for CSV and NDJSON, which stream the whole range.
    #[param(minimum = 1)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page (a raw-readings cursor, or one made for another
    /// `bucket`, is refused).
    #[param(pattern = "^b?[0-9a-f]{32}$")]
    cursor: Option<String>,
    /// `newest` first (the default) or `oldest` first.
    #[param(value_type = Option<OrderName>, inline)]
    order: Option<String>,
    /// Downsample into buckets of this width: a count and a unit, `ms`, `s`, `m`, `h` or `d`, at
    /// least 1s (`10s`, `1m`, `15m`, `1h`, `1d`). Buckets start at multiples of the width since
    /// the unix epoch; only non-empty ones are listed; a range may span at most 100000 buckets.
    #[param(pattern = "^[0-9]+(ms|s|m|h|d)$", example = "1m")]
    bucket: Option<String>,
    /// With `bucket`: a comma list of `avg`, `min`, `max`, `count`, `first`, `last`, `sum`
    /// (default `avg`). Integers and floats aggregate as f64, booleans as 0 or 1; strings count
    /// for `count`, `first` and `last` only.
    #[param(
        pattern = r"^\s*(avg|min|max|count|first|last|sum)\s*(,\s*(avg|min|max|count|first|last|sum)\s*)*$",
        example = "avg,min,max"
    )]
    agg: Option<String>,
    /// The representation; wins over `Accept` (`text/csv`, `application/x-ndjson`,
    /// `application/json`). CSV and NDJSON stream the whole range instead of a page.
    #[param(value_type = Option<FormatName>, inline)]
    pub(super) format: Option<String>,
}

// Values of `order`, for the description only: [`parse`] reads the string, so that a wrong one
// gets the API's own 400.
/// The order of readings or buckets.
#[derive(Debug, ToSchema)]
#[allow(dead_code, reason = "read by the OpenAPI derive only")]
enum OrderName {
    #[schema(rename = "newest")]
    Newest,
    #[schema(rename = "oldest")]
    Oldest,
}

// Values of `format`, for the description only: [`params::format`] reads the string.
/// The representation of the answer.
#[derive(Debug, ToSchema)]
#[allow(dead_code, reason = "read by the OpenAPI derive only")]
enum FormatName {
    #[schema(rename = "json")]
    Json,
    #[schema(rename = "csv")]
    Csv,
    #[schema(rename = "ndjson")]
    Ndjson,
}

/// Checks every parameter and builds the query.
pub(super) async fn parse(
    state: &ApiState,
    id: &str,
    p: ReadingsParams,
    format: Format,
) -> Result<Source, ApiError> {
    let now = now_ms();
    let order = match p.order.as_deref() {
        None | Some("newest") => Order::Newest,
        Some("oldest") => Order::Oldest,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "`order`: {other:?} is not newest or oldest"
            )));
        }
    };
    if let Some(m) = &p.metric
        && !device_protocol::is_valid_id(m)
    {
        return Err(ApiError::BadRequest(
            "`metric` must be 1 to 64 characters of A-Z a-z 0-9 . _ -".into(),
        ));
    }
    let from_ms = p
        .from
        .as_deref()
        .map(|t| params::parse_time("from", t, now))
        .transpose()?;
    let to_ms =
        p.to.as_deref()
            .map(|t| params::parse_time("to", t, now))
            .transpose()?;
    if let (Some(f), Some(t)) = (from_ms, to_ms)
        && f > t
    {
        return Err(ApiError::BadRequest("`from` is after `to`".into()));
    }
    // An export reads the whole range; a page size there would silently cut it.
    let limit = match (format, p.limit) {
        (Format::Json, given) => params::limit(given, DEFAULT_PAGE, state.max_page)?,
        (_, None) => EXPORT_PAGE,
        (_, Some(_)) => {
            return Err(ApiError::BadRequest(
                "`limit` does not apply to CSV or NDJSON export, which streams the whole range; bound it with `from` and `to`".into(),
            ));
        }
    };
    let Some(width) = p.bucket else {
        if p.agg.is_some() {
            return Err(ApiError::BadRequest("`agg` needs `bucket`".into()));
        }
        return Ok(Source::Raw(ReadingsQuery {
            device: id.to_owned(),
            metric: p.metric,
            from_ms,
            to_ms,
            order,
            limit,
            after: p.cursor.as_deref().map(params::decode_cursor).transpose()?,
        }));
    };
    let bucket_ms = params::bucket(&width)?;
    let metric = p
        .metric
        .ok_or_else(|| ApiError::BadRequest("`metric` is required with `bucket`".into()))?;
    let aggs = params::aggs(p.agg.as_deref().unwrap_or("avg"))?;
    // The range is the one asked for; an open end is where the device's readings end.
    let (from, to) = match (from_ms, to_ms) {
        (Some(f), Some(t)) => (Some(f), Some(t)),
        _ => {
            let store = state.store.clone();
            let lookup = id.to_owned();
            let span = tokio::task::spawn_blocking(move || store.reading_span(&lookup))
                .await
                .map_err(|_| ApiError::Internal)??;
            (
                from_ms.or(span.map(|(first, _)| first)),
                to_ms.or(span.map(|(_, last)| last.saturating_add(1))),
            )
        }
    };
    if let (Some(f), Some(t)) = (from, to) {
        let n = buckets_in_range(f, t, bucket_ms);
        if n > MAX_BUCKETS_IN_RANGE {
            return Err(ApiError::BadRequest(format!(
                "`bucket`: {width} makes {n} buckets over this range, more than {MAX_BUCKETS_IN_RANGE}; widen it or narrow `from`/`to`"
            )));
        }
    }
    let after = p
        .cursor
        .as_deref()
        .map(|c| params::decode_bucket_cursor(c, bucket_ms))
        .transpose()?;
    Ok(Source::Buckets {
        query: DownsampleQuery {
            device: id.to_owned(),
            metric,
            from_ms,
            to_ms,
            bucket_ms,
            order,
            limit,
            after,
        },
        aggs,
        width,
    })
}
