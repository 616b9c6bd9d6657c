//! Parsing and formatting of API parameters: timestamps, cursors, limits, device ids, bucket
//! widths and aggregates, and the response format a client asks for.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::ApiError;
use crate::store::Position;
use crate::store::downsample::{Agg, MIN_BUCKET_MS};

/// A span like `250ms`, `10s`, `15m`, `1h` or `7d`, in milliseconds; `None` when it is not one or
/// overflows.
fn span_ms(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.parse::<u64>().ok()?.checked_mul(unit_ms)
}

/// Parses a time bound: RFC 3339, unix milliseconds, or relative to `now_ms` (`-15m`, `-1h`, `-7d`).
pub fn parse_time(name: &str, text: &str, now_ms: u64) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "`{name}`: {text:?} is not RFC 3339 (2026-11-21T10:00:00Z), unix milliseconds, or relative (-15m, -1h, -7d)"
        ))
    };
    if let Some(rel) = text.strip_prefix('-') {
        let span = span_ms(rel).ok_or_else(bad)?;
        return Ok(now_ms.saturating_sub(span));
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| bad());
    }
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| bad())?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())
}

/// An opaque cursor for a readings position.
pub fn encode_cursor(p: Position) -> String {
    format!("{:016x}{:016x}", p.timestamp_ms, p.offset)
}

/// Parses a cursor made by [`encode_cursor`].
pub fn decode_cursor(text: &str) -> Result<Position, ApiError> {
    let bad = || ApiError::BadRequest("`cursor` is not one this API returned".into());
    if text.len() != 32 || !text.is_ascii() {
        return Err(bad());
    }
    let timestamp_ms = u64::from_str_radix(&text[..16], 16).map_err(|_| bad())?;
    let offset = u64::from_str_radix(&text[16..], 16).map_err(|_| bad())?;
    Ok(Position {
        timestamp_ms,
        offset,
    })
}

/// A page size: `default` when absent, 1 to `max` otherwise.
/// A duration parameter (`500ms`, `30s`, `10m`, `1h`).
pub fn duration(name: &str, text: &str) -> Result<std::time::Duration, ApiError> {
    crate::config::HumanDuration::parse(text)
        .map(|d| d.0)
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "`{name}`: {text:?} is not a duration like 500ms, 30s, 10m, 1h"
            ))
        })
}

pub fn limit(given: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match given {
        None => Ok(default.min(max)),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "`limit`: {n} is not between 1 and {max}"
        ))),
    }
}

/// Checks a device id from a path.
pub fn device_id(id: &str) -> Result<&str, ApiError> {
    if device_protocol::is_valid_id(id) {
        Ok(id)
    } else {
        Err(ApiError::BadRequest(
            "device id must be 1 to 64 characters of A-Z a-z 0-9 . _ -".into(),
        ))
    }
}

/// Parses a bucket width: a positive count and a unit, `ms`, `s`, `m`, `h` or `d` (`10s`, `15m`,
/// `1d`); at least [`MIN_BUCKET_MS`].
pub fn bucket(text: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "`bucket`: {text:?} is not a width of at least 1s such as 10s, 1m, 15m, 1h or 1d"
        ))
    };
    match span_ms(text) {
        Some(ms) if ms >= MIN_BUCKET_MS => Ok(ms),
        _ => Err(bad()),
    }
}

/// Parses a comma list of aggregates (`avg,min,max`); repeats are dropped, the order kept.
pub fn aggs(text: &str) -> Result<Vec<Agg>, ApiError> {
    let mut out = Vec::new();
    for name in text.split(',').map(str::trim) {
        let agg = Agg::from_name(name).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`agg`: {name:?} is not one of avg, min, max, count, first, last, sum"
            ))
        })?;
        if !out.contains(&agg) {
            out.push(agg);
        }
    }
    Ok(out)
}

/// An opaque cursor for a bucket page: the last bucket's start and the width it was made for,
/// so a cursor is never applied to buckets of another width (or to raw readings).
pub fn encode_bucket_cursor(start_ms: u64, width_ms: u64) -> String {
    format!("b{start_ms:016x}{width_ms:016x}")
}

/// Parses a cursor made by [`encode_bucket_cursor`] for buckets of `width_ms`.
pub fn decode_bucket_cursor(text: &str, width_ms: u64) -> Result<u64, ApiError> {
    let bad =
        || ApiError::BadRequest("`cursor` is not one this API returned for this `bucket`".into());
    let hex = text.strip_prefix('b').ok_or_else(bad)?;
    if hex.len() != 32 || !hex.is_ascii() {
        return Err(bad());
    }
    let start = u64::from_str_radix(&hex[..16], 16).map_err(|_| bad())?;
    let width = u64::from_str_radix(&hex[16..], 16).map_err(|_| bad())?;
    if width == width_ms && width > 0 && start % width == 0 {
        Ok(start)
    } else {
        Err(bad())
    }
}

/// The representation of a readings answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON document, paged.
    Json,
    /// CSV (RFC 4180), streamed.
    Csv,
    /// Newline-delimited JSON, streamed.
    Ndjson,
}

impl Format {
    /// The content type of the answer.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Ndjson => "application/x-ndjson",
        }
    }
}

/// The format: `format` when given (`json`, `csv`, `ndjson`), else the `Accept` type with the
/// highest q-value among those served (the first listed on a tie), else JSON. An `Accept` naming
/// only other types still gets JSON, as it did before export existed.
pub fn format(given: Option<&str>, accept: Option<&str>) -> Result<Format, ApiError> {
    if let Some(given) = given {
        return match given {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "ndjson" => Ok(Format::Ndjson),
            other => Err(ApiError::BadRequest(format!(
                "`format`: {other:?} is not json, csv or ndjson"
            ))),
        };
    }
    let mut best: Option<(f32, Format)> = None;
    for range in accept.unwrap_or("").split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let served = match media.as_str() {
            "application/json" | "application/*" | "*/*" => Format::Json,
            "text/csv" => Format::Csv,
            "application/x-ndjson" | "application/ndjson" => Format::Ndjson,
            _ => continue,
        };
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .map(|q| q.trim().parse::<f32>().unwrap_or(0.0))
            .next()
            .unwrap_or(1.0);
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, served));
        }
    }
    Ok(best.map_or(Format::Json, |(_, f)| f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::rfc3339;

    #[test]
    fn timestamps_format_and_parse_every_accepted_form() {
        assert_eq!(rfc3339(1_795_255_200_123), "2026-11-21T10:00:00.123Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_time("from", "2026-11-21T10:00:00Z", 0).unwrap(),
            1_795_255_200_000
        );
        assert_eq!(
            parse_time("from", "2026-11-21T11:00:00.5+01:00", 0).unwrap(),
            1_795_255_200_500
        );
        assert_eq!(
            parse_time("from", "1795255200000", 0).unwrap(),
            1_795_255_200_000
        );
        assert_eq!(parse_time("from", "-15m", 1_000_000).unwrap(), 100_000);
        assert_eq!(parse_time("from", "-7d", 1).unwrap(), 0);
        for bad in ["", "yesterday", "-5y", "2026-13-01T00:00:00Z", "-m", "12ab"] {
            let err = parse_time("from", bad, 0).unwrap_err();
            assert!(
                matches!(err, ApiError::BadRequest(d) if d.contains("`from`")),
                "{bad}"
            );
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let p = Position {
            timestamp_ms: 1_795_255_200_000,
            offset: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(p)).unwrap(), p);
        for bad in ["", "zz", &"g".repeat(32), "é".repeat(16).as_str()] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_default_and_bound() {
        assert_eq!(limit(None, 100, 1000).unwrap(), 100);
        assert_eq!(limit(None, 100, 10).unwrap(), 10);
        assert_eq!(limit(Some(1000), 100, 1000).unwrap(), 1000);
        assert!(limit(Some(0), 100, 1000).is_err());
        assert!(limit(Some(1001), 100, 1000).is_err());
    }

    #[test]
    fn buckets_parse_with_units_and_refuse_the_rest() {
        assert_eq!(bucket("10s").unwrap(), 10_000);
        assert_eq!(bucket("1m").unwrap(), 60_000);
        assert_eq!(bucket("15m").unwrap(), 900_000);
        assert_eq!(bucket("1h").unwrap(), 3_600_000);
        assert_eq!(bucket("1d").unwrap(), 86_400_000);
        assert_eq!(bucket("1500ms").unwrap(), 1_500);
        for bad in [
            "",
            "s",
            "0s",
            "999ms",
            "1w",
            "1.5m",
            "-1m",
            "99999999999999999999d",
            "m1",
        ] {
            let err = bucket(bad).unwrap_err();
            assert!(
                matches!(err, ApiError::BadRequest(d) if d.contains("`bucket`")),
                "{bad}"
            );
        }
    }

    #[test]
    fn aggs_parse_and_unknown_names_are_refused() {
        assert_eq!(aggs("avg").unwrap(), vec![Agg::Avg]);
        assert_eq!(
            aggs("max, min,max,count").unwrap(),
            vec![Agg::Max, Agg::Min, Agg::Count]
        );
        for bad in ["", "mean", "avg,", "avg,median"] {
            assert!(
                matches!(aggs(bad), Err(ApiError::BadRequest(d)) if d.contains("`agg`")),
                "{bad}"
            );
        }
    }

    #[test]
    fn bucket_cursors_round_trip_for_their_width_only() {
        let c = encode_bucket_cursor(120_000, 60_000);
        assert_eq!(decode_bucket_cursor(&c, 60_000).unwrap(), 120_000);
        assert!(decode_bucket_cursor(&c, 1_000).is_err());
        let raw = encode_cursor(Position {
            timestamp_ms: 120_000,
            offset: 0,
        });
        assert!(decode_bucket_cursor(&raw, 60_000).is_err());
        assert!(decode_cursor(&c).is_err());
        assert!(decode_bucket_cursor(&encode_bucket_cursor(1, 60_000), 60_000).is_err());
    }

    #[test]
    fn formats_follow_the_parameter_then_accept() {
        assert_eq!(
            format(Some("csv"), Some("application/json")).unwrap(),
            Format::Csv
        );
        assert!(
            matches!(format(Some("xml"), None), Err(ApiError::BadRequest(d)) if d.contains("`format`"))
        );
        assert_eq!(format(None, None).unwrap(), Format::Json);
        assert_eq!(format(None, Some("text/csv")).unwrap(), Format::Csv);
        assert_eq!(
            format(None, Some("application/x-ndjson")).unwrap(),
            Format::Ndjson
        );
        assert_eq!(
            format(None, Some("application/json;q=0.5, text/csv")).unwrap(),
            Format::Csv
        );
        assert_eq!(
            format(None, Some("text/csv;q=0, */*")).unwrap(),
            Format::Json
        );
        assert_eq!(
            format(None, Some("text/html,application/xhtml+xml,*/*;q=0.8")).unwrap(),
            Format::Json
        );
        assert_eq!(format(None, Some("image/png")).unwrap(), Format::Json);
    }
}
