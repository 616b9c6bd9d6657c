//! `GET /api/v1/devices/{id}/readings`: raw readings, downsampled buckets, and streamed export.
//!
//! Inputs: the query parameters (`metric`, `from`, `to`, `order`, `limit`, `cursor`, `bucket`,
//! `agg`, `format`) and the `Accept` header. Outputs: a JSON page (`readings` or `buckets` with a
//! `next_cursor`), or, for CSV and NDJSON, the whole range streamed.
//!
//! Invariants:
//! - JSON answers are pages of at most `limit` readings or buckets;
//! - an export never holds more than one store page (about [`EXPORT_PAGE`] readings or buckets)
//!   being rendered plus [`EXPORT_CHUNKS`] rendered pages waiting for the client: each page is
//!   read from a fresh snapshot on the blocking pool, and the next one only once the client has
//!   taken enough, so a slow client slows the reads instead of filling memory, and no read
//!   transaction stays open for the length of a download;
//! - every error before the first byte is a problem+json answer; a store failure after it ends
//!   the body early (the status line is gone by then), and is logged.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use device_protocol::OwnedValue;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::devices::{DEFAULT_PAGE, query, require, visible_device};
use super::error::ApiError;
use super::params::{self, Format};
use super::schema::DeviceId;
use crate::auth::{Identity, Scope};
use crate::clock::now_ms;
use crate::store::downsample::{MAX_BUCKETS_IN_RANGE, buckets_in_range};
use crate::store::{
    Agg, AggValue, Bucket, DownsampleQuery, Order, Reading, ReadingsQuery, Store, StoreError,
};
use crate::values::MetricValue;

/// Readings (or buckets) read from the store per export page.
pub const EXPORT_PAGE: usize = 1_000;
/// Rendered export pages waiting for a slow client.
pub const EXPORT_CHUNKS: usize = 4;

/// Query parameters of `/readings`. They stay strings here and are checked by [`parse`], so every
/// mistake gets a 400 that names the parameter; the OpenAPI attributes say what is accepted.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ReadingsParams {
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
    format: Option<String>,
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

/// A page of raw readings.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadingsPage {
    /// The device id.
    device: String,
    /// The `cursor` for the next page; null on the last one.
    #[schema(required = true, pattern = "^[0-9a-f]{32}$")]
    next_cursor: Option<String>,
    /// The readings of this page, in the order asked for.
    readings: Vec<ReadingJson>,
}

// Fields are in alphabetical order, here and in every body of this module: the bytes stay what
// they were when the bodies were built as `serde_json` maps, which sort their keys.
/// A reading (also each line of an NDJSON export). `(device, boot, seq)` identifies a reading the
/// device numbered; one it did not number has a `hub_seq` instead, and no `seq`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadingJson {
    /// The device's boot number, when it sends one: its seqs count within a boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    boot: Option<u32>,
    /// The hub's number of a reading the device sent without a seq (a numbering of the device's
    /// own, apart from its seqs; a retransmission of such a reading cannot be recognised).
    #[serde(skip_serializing_if = "Option::is_none")]
    hub_seq: Option<u32>,
    /// Values by metric name.
    metrics: BTreeMap<String, MetricValue>,
    /// The hub offset: a number that only grows.
    offset: u64,
    /// The device's sequence number, when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u32>,
    /// Timestamp (the device's, else the hub's receive time), RFC 3339 UTC.
    #[schema(format = DateTime)]
    ts: String,
}

impl From<&Reading> for ReadingJson {
    fn from(r: &Reading) -> Self {
        ReadingJson {
            boot: r.seq.boot(),
            hub_seq: r.seq.hub_seq(),
            metrics: MetricValue::map(&r.metrics),
            offset: r.offset,
            seq: r.seq.device_seq(),
            ts: crate::clock::rfc3339(r.timestamp_ms),
        }
    }
}

/// A page of buckets of one metric.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketsPage {
    /// The width, as the client wrote it.
    #[schema(example = "1m")]
    bucket: String,
    /// The non-empty buckets of this page, in the order asked for.
    buckets: Vec<BucketJson>,
    /// The device id.
    device: String,
    /// The metric.
    metric: String,
    /// The `cursor` for the next page; null on the last one.
    #[schema(required = true, pattern = "^b[0-9a-f]{32}$")]
    next_cursor: Option<String>,
}

/// One bucket: its start, how many values it holds, and the aggregates asked for (and only
/// those). A numeric aggregate of a bucket without numbers is null.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketJson {
    /// Mean of the numeric values.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    avg: Option<Option<f64>>,
    /// Number of values, of any type.
    count: u64,
    /// The earliest value (by timestamp), of any type.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = MetricValue)]
    first: Option<Option<MetricValue>>,
    /// The latest value (by timestamp), of any type.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = MetricValue)]
    last: Option<Option<MetricValue>>,
    /// Largest numeric value.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    max: Option<Option<f64>>,
    /// Smallest numeric value.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    min: Option<Option<f64>>,
    /// Start of the bucket, RFC 3339 UTC.
    #[schema(format = DateTime)]
    start: String,
    /// Sum of the numeric values.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    sum: Option<Option<f64>>,
}

impl BucketJson {
    /// `b` with the aggregates in `aggs`.
    fn new(b: &Bucket, aggs: &[Agg]) -> Self {
        let mut out = BucketJson {
            count: b.count,
            start: crate::clock::rfc3339(b.start_ms),
            ..BucketJson::default()
        };
        for agg in aggs {
            let number = || match b.get(*agg) {
                AggValue::Number(x) => x,
                _ => None,
            };
            let value = || match b.get(*agg) {
                AggValue::Value(v) => v.map(MetricValue),
                _ => None,
            };
            match agg {
                // Always there: `count` is part of every bucket.
                Agg::Count => {}
                Agg::Avg => out.avg = Some(number()),
                Agg::Min => out.min = Some(number()),
                Agg::Max => out.max = Some(number()),
                Agg::Sum => out.sum = Some(number()),
                Agg::First => out.first = Some(value()),
                Agg::Last => out.last = Some(value()),
            }
        }
        out
    }
}

/// The JSON answer of `/readings`: raw readings, or buckets with `bucket`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ReadingsAnswer {
    /// Raw readings.
    Readings(ReadingsPage),
    /// Buckets.
    Buckets(BucketsPage),
}

/// What a request reads, page by page.
#[derive(Debug, Clone)]
enum Source {
    /// Raw readings.
    Raw(ReadingsQuery),
    /// Buckets of one metric, with the aggregates asked for and the width as the client wrote it.
    Buckets {
        query: DownsampleQuery,
        aggs: Vec<Agg>,
        width: String,
    },
}

/// Readings of a device: raw, downsampled, or exported.
///
/// Raw readings by timestamp, newest first unless `order=oldest`, a page at a time; with
/// `bucket`, buckets of one metric. With `Accept: text/csv` or `application/x-ndjson` (or
/// `format`), the whole range is streamed instead of a page: `from`, `to`, `metric`, `order`,
/// `bucket`, `agg` and `cursor` apply, `limit` is refused. CSV (RFC 4180, CRLF line ends) has the
/// header `ts,offset,boot,seq,hub_seq,metric,value` and a row per metric value (a reading's
/// `boot`, `seq` or `hub_seq` empty where it has none), strings always double-quoted,
/// and a string or metric name that starts with `=`, `+`, `-`, `@`, a tab or a carriage return
/// prefixed with `'` so that a spreadsheet does not run it as a formula;
/// with `bucket`, the columns are `start,count,<aggs>`. NDJSON has one reading (or bucket) per
/// line, shaped like an element of `readings` (or `buckets`). A store failure during an export
/// ends the body early: the status was already sent.
#[utoipa::path(
    get,
    path = "/devices/{id}/readings",
    security(("bearer" = ["read"])),
    tag = "readings",
    params(DeviceId, ReadingsParams),
    responses(
        (status = 200, description = "A page of readings or buckets; or the export, streamed.",
            content(
                (ReadingsAnswer = "application/json"),
                (String = "text/csv"),
                (String = "application/x-ndjson"),
            ),
        ),
        (status = 400, description = "A parameter is wrong, unknown or does not fit the others; the detail names it."),
        (status = 403, description = "The token lacks the `read` scope."),
        (status = 404, description = "No such device, or not one the token may see."),
        (status = 500, description = "The store failed; the hub's log says why."),
    ),
)]
pub(super) async fn readings(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<ReadingsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    require(&identity, Scope::Read, "read")?;
    let id = visible_device(&identity, &id)?.to_owned();
    let p = query(q)?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = params::format(p.format.as_deref(), accept)?;
    let source = parse(&state, &id, p, format).await?;
    let mut response = match format {
        Format::Json => json_page(&state.store, source).await?,
        Format::Csv | Format::Ndjson => export(state.store.clone(), source, format).await?,
    };
    // The same URL answers in several formats.
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    Ok(response)
}

/// Checks every parameter and builds the query.
async fn parse(
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

/// One page read from the store: the items rendered in a format, and the cursor after them.
enum Page {
    Raw {
        readings: Vec<Reading>,
        next: Option<crate::store::Position>,
    },
    Buckets {
        buckets: Vec<Bucket>,
        next: Option<u64>,
    },
}

impl Source {
    /// Reads the page the query describes (blocking); `None` for an unknown device.
    fn read(&self, store: &Store) -> Result<Option<Page>, StoreError> {
        Ok(match self {
            Source::Raw(q) => store.readings(q)?.map(|p| Page::Raw {
                readings: p.readings,
                next: p.next,
            }),
            Source::Buckets { query, .. } => store.downsample(query)?.map(|p| Page::Buckets {
                buckets: p.buckets,
                next: p.next,
            }),
        })
    }

    /// Moves the query past `page`; false when nothing follows it.
    fn advance(&mut self, page: &Page) -> bool {
        match (self, page) {
            (Source::Raw(q), Page::Raw { next: Some(n), .. }) => {
                q.after = Some(*n);
                true
            }
            (Source::Buckets { query, .. }, Page::Buckets { next: Some(n), .. }) => {
                query.after = Some(*n);
                true
            }
            _ => false,
        }
    }

    /// The first line of a CSV export.
    fn csv_header(&self) -> String {
        match self {
            Source::Raw(_) => "ts,offset,boot,seq,hub_seq,metric,value\r\n".to_owned(),
            Source::Buckets { aggs, .. } => {
                let mut line = "start,count".to_owned();
                for agg in aggs.iter().filter(|a| **a != Agg::Count) {
                    line.push(',');
                    line.push_str(agg.name());
                }
                line.push_str("\r\n");
                line
            }
        }
    }

    /// `page` rendered as CSV rows or NDJSON lines.
    fn render(&self, page: &Page, format: Format) -> String {
        let mut out = String::new();
        match (page, format) {
            (Page::Raw { readings, .. }, Format::Csv) => {
                for r in readings {
                    let ts = crate::clock::rfc3339(r.timestamp_ms);
                    let cell = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_default();
                    let (boot, seq) = (cell(r.seq.boot()), cell(r.seq.device_seq()));
                    let hub_seq = cell(r.seq.hub_seq());
                    for (metric, value) in &r.metrics {
                        let metric = formula_safe(metric);
                        let _ = write!(out, "{ts},{},{boot},{seq},{hub_seq},{metric},", r.offset);
                        csv_value(&mut out, value);
                        out.push_str("\r\n");
                    }
                }
            }
            (Page::Buckets { buckets, .. }, Format::Csv) => {
                let aggs = self.aggs();
                for b in buckets {
                    let _ = write!(out, "{},{}", crate::clock::rfc3339(b.start_ms), b.count);
                    for agg in aggs.iter().filter(|a| **a != Agg::Count) {
                        out.push(',');
                        match b.get(*agg) {
                            AggValue::Count(n) => {
                                let _ = write!(out, "{n}");
                            }
                            AggValue::Number(Some(x)) => out.push_str(&json_number(x)),
                            AggValue::Value(Some(v)) => csv_value(&mut out, &v),
                            AggValue::Number(None) | AggValue::Value(None) => {}
                        }
                    }
                    out.push_str("\r\n");
                }
            }
            (Page::Raw { readings, .. }, _) => {
                for r in readings {
                    json_line(&mut out, &ReadingJson::from(r));
                }
            }
            (Page::Buckets { buckets, .. }, _) => {
                let aggs = self.aggs();
                for b in buckets {
                    json_line(&mut out, &BucketJson::new(b, aggs));
                }
            }
        }
        out
    }

    fn aggs(&self) -> &[Agg] {
        match self {
            Source::Raw(_) => &[],
            Source::Buckets { aggs, .. } => aggs,
        }
    }
}

/// Reads one page on the blocking pool.
async fn read_page(store: &Store, source: &Source) -> Result<Option<Page>, ApiError> {
    let store = store.clone();
    let source = source.clone();
    Ok(tokio::task::spawn_blocking(move || source.read(&store))
        .await
        .map_err(|_| ApiError::Internal)??)
}

fn not_found(source: &Source) -> ApiError {
    let id = match source {
        Source::Raw(q) => &q.device,
        Source::Buckets { query, .. } => &query.device,
    };
    ApiError::NotFound(format!("no device {id:?}"))
}

/// The JSON answer: one page.
async fn json_page(store: &Store, source: Source) -> Result<Response, ApiError> {
    let page = read_page(store, &source)
        .await?
        .ok_or_else(|| not_found(&source))?;
    let body = match (source, page) {
        (Source::Raw(q), Page::Raw { readings, next }) => ReadingsAnswer::Readings(ReadingsPage {
            device: q.device,
            next_cursor: next.map(params::encode_cursor),
            readings: readings.iter().map(ReadingJson::from).collect(),
        }),
        (Source::Buckets { query, aggs, width }, Page::Buckets { buckets, next }) => {
            ReadingsAnswer::Buckets(BucketsPage {
                bucket: width,
                buckets: buckets.iter().map(|b| BucketJson::new(b, &aggs)).collect(),
                device: query.device,
                metric: query.metric,
                next_cursor: next.map(|n| params::encode_bucket_cursor(n, query.bucket_ms)),
            })
        }
        _ => return Err(ApiError::Internal),
    };
    Ok(axum::Json(body).into_response())
}

/// The streamed answer. The first page is read before answering, so an unknown device or a
/// failing store still gets a problem; the rest follows from a task that reads a page only when
/// the client has room for it.
async fn export(store: Store, mut source: Source, format: Format) -> Result<Response, ApiError> {
    let page = read_page(&store, &source)
        .await?
        .ok_or_else(|| not_found(&source))?;
    let mut first = match format {
        Format::Csv => source.csv_header(),
        _ => String::new(),
    };
    first.push_str(&source.render(&page, format));
    let more = source.advance(&page);
    drop(page);

    let (chunk_tx, chunk_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(EXPORT_CHUNKS);
    if more {
        tokio::spawn(async move {
            // Stops when the range is done, the store fails, or the client has gone (the body,
            // and with it the receiver, is dropped).
            while !chunk_tx.is_closed() {
                let read = {
                    let store = store.clone();
                    let mut source = source.clone();
                    tokio::task::spawn_blocking(move || {
                        let page = source.read(&store)?;
                        Ok::<_, StoreError>(page.map(|page| {
                            let chunk = source.render(&page, format);
                            let more = source.advance(&page);
                            (chunk, more, source)
                        }))
                    })
                    .await
                };
                match read {
                    Ok(Ok(Some((chunk, more, next)))) => {
                        if !chunk.is_empty() && chunk_tx.send(Ok(Bytes::from(chunk))).await.is_err()
                        {
                            return;
                        }
                        if !more {
                            return;
                        }
                        source = next;
                    }
                    // The device went away mid-export: what was sent is all there is.
                    Ok(Ok(None)) => return,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "store read failed during export; ending the body early");
                        let _ = chunk_tx
                            .send(Err(std::io::Error::other("store read failed")))
                            .await;
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "export page task failed; ending the body early");
                        let _ = chunk_tx
                            .send(Err(std::io::Error::other("export failed")))
                            .await;
                        return;
                    }
                }
            }
        });
    }
    let body = tokio_stream::once(Ok(Bytes::from(first))).chain(ReceiverStream::new(chunk_rx));
    let mut response = Body::from_stream(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    Ok(response)
}

/// `value` as one NDJSON line.
fn json_line<T: Serialize>(out: &mut String, value: &T) {
    // Serializing these types cannot fail: every map key is a string.
    if let Ok(line) = serde_json::to_string(value) {
        out.push_str(&line);
        out.push('\n');
    }
}

/// A float as JSON writes it (shortest round-trip form); empty when not finite, as CSV has no
/// spelling for it.
fn json_number(x: f64) -> String {
    serde_json::Number::from_f64(x)
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// A value as a CSV field: numbers and booleans bare, strings always in double quotes with inner
/// quotes doubled (RFC 4180), so a string "12" stays apart from the number 12.
fn csv_value(out: &mut String, value: &OwnedValue) {
    match value {
        OwnedValue::F64(x) => out.push_str(&json_number(*x)),
        OwnedValue::I64(i) => {
            let _ = write!(out, "{i}");
        }
        OwnedValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        OwnedValue::Str(s) => {
            out.push('"');
            out.push_str(&formula_safe(s).replace('"', "\"\""));
            out.push('"');
        }
    }
}

/// A text cell that a spreadsheet would run as a formula (it starts with `=`, `+`, `-`, `@`, a
/// tab or a carriage return) gets a `'` in front, as OWASP advises against CSV injection: a
/// device's string must never become a formula on the desk of whoever opens the export.
fn formula_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{text}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_values_quote_strings_the_rfc_4180_way() {
        let mut out = String::new();
        for v in [
            OwnedValue::F64(21.5),
            OwnedValue::F64(f64::NAN),
            OwnedValue::I64(-3),
            OwnedValue::Bool(true),
            OwnedValue::Str("a \"b\", c\r\nd".into()),
        ] {
            csv_value(&mut out, &v);
            out.push('|');
        }
        assert_eq!(out, "21.5||-3|true|\"a \"\"b\"\", c\r\nd\"|");
    }

    #[test]
    fn csv_strings_that_look_like_formulas_are_neutralised() {
        let mut out = String::new();
        for text in [
            "=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "=\"x\"", "a=b", "",
        ] {
            csv_value(&mut out, &OwnedValue::Str(text.into()));
            out.push('|');
        }
        assert_eq!(
            out,
            "\"'=1+2\"|\"'+1\"|\"'-1\"|\"'@SUM(A1)\"|\"'\tx\"|\"'\rx\"|\"'=\"\"x\"\"\"|\"a=b\"|\"\"|"
        );
        // Numbers stay numbers: a negative one is not text.
        let mut out = String::new();
        csv_value(&mut out, &OwnedValue::I64(-3));
        csv_value(&mut out, &OwnedValue::F64(-0.5));
        assert_eq!(out, "-3-0.5");
        assert_eq!(formula_safe("-rssi"), "'-rssi");
        assert_eq!(formula_safe("rssi"), "rssi");
    }

    #[test]
    fn bucket_csv_lists_count_once() {
        let source = Source::Buckets {
            query: DownsampleQuery {
                device: "d".into(),
                metric: "m".into(),
                from_ms: None,
                to_ms: None,
                bucket_ms: 60_000,
                order: Order::Oldest,
                limit: 10,
                after: None,
            },
            aggs: vec![Agg::Max, Agg::Count, Agg::Last],
            width: "1m".into(),
        };
        assert_eq!(source.csv_header(), "start,count,max,last\r\n");
        let mut b = Bucket::new(60_000);
        b.add(&OwnedValue::Str("x".into()), Order::Oldest);
        let page = Page::Buckets {
            buckets: vec![b],
            next: None,
        };
        assert_eq!(
            source.render(&page, Format::Csv),
            "1970-01-01T00:01:00.000Z,1,,\"x\"\r\n"
        );
        assert_eq!(
            source.render(&page, Format::Ndjson),
            "{\"count\":1,\"last\":\"x\",\"max\":null,\"start\":\"1970-01-01T00:01:00.000Z\"}\n"
        );
    }
}
