//! Parsing and formatting of API parameters: timestamps, cursors, limits, device ids.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::ApiError;
use crate::store::Position;

/// Formats unix milliseconds as RFC 3339 in UTC with milliseconds: `2026-11-21T10:00:00.000Z`.
pub fn rfc3339(ms: u64) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return String::new();
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses a time bound: RFC 3339, unix milliseconds, or relative to `now_ms` (`-15m`, `-1h`, `-7d`).
pub fn parse_time(name: &str, text: &str, now_ms: u64) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "`{name}`: {text:?} is not RFC 3339 (2026-11-21T10:00:00Z), unix milliseconds, or relative (-15m, -1h, -7d)"
        ))
    };
    if let Some(rel) = text.strip_prefix('-') {
        let split = rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len());
        let (n, unit) = rel.split_at(split);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let unit_ms: u64 = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        return Ok(now_ms.saturating_sub(n.saturating_mul(unit_ms)));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
