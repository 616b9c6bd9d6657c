//! The JSON answer of `/readings`: one page of raw readings or of buckets, with the cursor of
//! the next; its bodies are also the lines of an NDJSON export.
//!
//! Invariants: fields are in alphabetical order, so the bytes stay what they were when the bodies
//! were `serde_json` maps; a bucket carries `count` and the aggregates asked for, and only those.

use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Page, Source, not_found, read_page};
use crate::api::error::ApiError;
use crate::api::params;
use crate::store::{Agg, AggValue, Bucket, Store};
use crate::values::{MetricValue, ReadingJson};

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
    pub(super) fn new(b: &Bucket, aggs: &[Agg]) -> Self {
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

/// The JSON answer: one page.
pub(super) async fn json_page(store: &Store, source: Source) -> Result<Response, ApiError> {
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
