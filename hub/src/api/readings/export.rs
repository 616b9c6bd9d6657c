//! The streamed export of `/readings` (CSV or NDJSON): the whole range, page by page.
//!
//! Invariants: at most one store page being rendered plus [`EXPORT_CHUNKS`] rendered pages wait
//! for the client, each page read from a fresh snapshot on the blocking pool; CSV is RFC 4180
//! (CRLF line ends, strings always double-quoted) and no device's string becomes a spreadsheet
//! formula; a store failure after the first byte ends the body early, and is logged.

use std::fmt::Write as _;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use device_protocol::OwnedValue;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use super::json::BucketJson;
use super::{EXPORT_CHUNKS, Page, Source, not_found, read_page};
use crate::api::error::ApiError;
use crate::api::params::Format;
use crate::store::{Agg, AggValue, Store, StoreError};
use crate::values::ReadingJson;

impl Source {
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

/// The streamed answer. The first page is read before answering, so an unknown device or a
/// failing store still gets a problem; the rest follows from a task that reads a page only when
/// the client has room for it.
pub(super) async fn export(
    store: Store,
    mut source: Source,
    format: Format,
) -> Result<Response, ApiError> {
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
    use crate::store::{Bucket, DownsampleQuery, Order};

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
