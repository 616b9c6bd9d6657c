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
//!
//! Here: the handler and what it reads, page by page from the store. `query` checks the
//! parameters, `json` answers one page, `export` streams the whole range.

mod export;
mod json;
mod query;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;

use self::export::export;
use self::json::{ReadingsAnswer, json_page};
use self::query::{ReadingsParams, parse};
use super::ApiState;
use super::devices::{query, require, visible_device};
use super::error::ApiError;
use super::params::{self, Format};
use super::schema::DeviceId;
use crate::auth::{Identity, Scope};
use crate::store::{Agg, Bucket, DownsampleQuery, Reading, ReadingsQuery, Store, StoreError};

/// Readings (or buckets) read from the store per export page.
pub const EXPORT_PAGE: usize = 1_000;
/// Rendered export pages waiting for a slow client.
pub const EXPORT_CHUNKS: usize = 4;

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
        (status = 304, description = "Not modified: `If-None-Match` names the current `ETag` (JSON pages only)."),
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
