//! The JSON payloads of the MQTT topics (feature `std`).
//!
//! - `devices/{id}/telemetry` (up): [`parse_telemetry`] into [`JsonTelemetry`] ([`reading_id`]
//!   names a reading that breaks a rule);
//! - `devices/{id}/ack` (down): [`JsonAck`];
//! - `devices/{id}/commands` (down): [`JsonCommand`];
//! - `devices/{id}/command-results` (up): [`parse_command_result`] into [`JsonCommandResult`].
//!
//! Telemetry comes in two forms. It is the envelope `{"seq":7,"boot":3,"ts":..,"metrics":{..}}` if
//! and only if the top-level object has the key `metrics`; then `seq`, `boot` and `ts` are optional
//! and no other key is allowed. Otherwise the whole object is the metrics
//! (`{"temp":21.5,"door":false}`), so in that form `seq`, `boot` and `ts` are ordinary metric names.
//!
//! The parser keeps every key it reads, so a duplicate is reported rather than silently replaced,
//! whatever serde_json's `preserve_order` feature says. [`JsonTelemetry::metrics`] is sorted by
//! name. Errors are [`JsonError`]s whose text fits a log line: any name quoted from the input is
//! escaped and cut to a bounded length.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{MAX_STR_LEN, OwnedValue, is_valid_id};

/// Maximum number of metrics in one JSON telemetry message.
pub const MAX_JSON_METRICS: usize = 64;

/// Longest name (in chars) quoted in an error message; longer ones are cut.
const MAX_QUOTED_CHARS: usize = 80;

/// Telemetry received as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonTelemetry {
    /// The device's sequence number, if it sent one (envelope form only).
    pub seq: Option<u32>,
    /// The device's boot number, if it sent one (envelope form only; see
    /// [`crate::Telemetry::boot`]).
    pub boot: Option<u32>,
    /// When the readings were taken, unix milliseconds UTC, if the device said (envelope `ts`).
    pub timestamp_ms: Option<u64>,
    /// One to [`MAX_JSON_METRICS`] readings, names valid and unique, sorted by name.
    pub metrics: Vec<(String, OwnedValue)>,
}

/// Why a JSON payload was rejected. The text is meant for a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// The payload is not JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// The payload is JSON but not an object.
    #[error("payload is not a JSON object")]
    NotAnObject,
    /// The envelope's `metrics` is not an object.
    #[error("\"metrics\" is not a JSON object")]
    MetricsNotAnObject,
    /// The envelope has a key other than `seq`, `boot`, `ts` and `metrics`.
    #[error("unknown key {0:?} in the telemetry envelope (allowed: seq, boot, ts, metrics)")]
    UnknownKey(String),
    /// A key of the envelope appears more than once.
    #[error("key {0:?} appears more than once")]
    DuplicateKey(String),
    /// There are no metrics.
    #[error("no metrics: telemetry needs at least one reading")]
    NoMetrics,
    /// There are more than [`MAX_JSON_METRICS`] metrics.
    #[error("{0} metrics, more than the limit of {MAX_JSON_METRICS}")]
    TooManyMetrics(usize),
    /// A metric name is not a valid id.
    #[error("metric {0:?} is not a valid name (1-64 of A-Z a-z 0-9 . _ -)")]
    InvalidMetricName(String),
    /// A metric's value is `null`, an array or an object.
    #[error("metric {metric:?} is {kind}; a value must be a number, a bool or a string")]
    UnsupportedValue {
        /// The metric.
        metric: String,
        /// `null`, `an array` or `an object`.
        kind: &'static str,
    },
    /// A metric's number is not finite.
    #[error("metric {0:?} is not a finite number")]
    NonFiniteNumber(String),
    /// A metric's string is longer than [`MAX_STR_LEN`] bytes.
    #[error("metric {metric:?} has a string of {len} bytes, longer than {MAX_STR_LEN}")]
    StringTooLong {
        /// The metric.
        metric: String,
        /// The string's length in bytes.
        len: usize,
    },
    /// A metric name appears more than once.
    #[error("metric {0:?} appears more than once")]
    DuplicateMetric(String),
    /// `seq` is not an integer that fits a u32.
    #[error("seq is not an integer in 0..=4294967295")]
    BadSeq,
    /// `boot` is not an integer that fits a u32.
    #[error("boot is not an integer in 0..=4294967295")]
    BadBoot,
    /// `ts` is not an RFC 3339 time or an integer of unix milliseconds at or after 1970.
    #[error("ts is not an RFC 3339 time or integer unix milliseconds: {0}")]
    BadTimestamp(String),
    /// A command result does not have the expected shape.
    #[error("invalid command result: {0}")]
    InvalidCommandResult(String),
}

/// Parses a telemetry payload, flat or envelope (see the module docs).
pub fn parse_telemetry(payload: &[u8]) -> Result<JsonTelemetry, JsonError> {
    let top = match parse_raw(payload)? {
        Raw::Object(members) => members,
        _ => return Err(JsonError::NotAnObject),
    };
    if !top.iter().any(|(key, _)| key == "metrics") {
        return Ok(JsonTelemetry {
            seq: None,
            boot: None,
            timestamp_ms: None,
            metrics: convert_metrics(top)?,
        });
    }

    let mut seq = None;
    let mut boot = None;
    let mut timestamp_ms = None;
    let mut metrics = None;
    for (key, value) in top {
        let seen = match key.as_str() {
            "seq" => seq.replace(parse_seq(&value)?).is_some(),
            "boot" => boot
                .replace(parse_u32(&value).ok_or(JsonError::BadBoot)?)
                .is_some(),
            "ts" => timestamp_ms.replace(parse_ts(&value)?).is_some(),
            "metrics" => match value {
                Raw::Object(members) => metrics.replace(members).is_some(),
                _ => return Err(JsonError::MetricsNotAnObject),
            },
            _ => return Err(JsonError::UnknownKey(quote(&key))),
        };
        if seen {
            return Err(JsonError::DuplicateKey(key));
        }
    }
    Ok(JsonTelemetry {
        seq,
        boot,
        timestamp_ms,
        metrics: convert_metrics(metrics.unwrap_or_default())?,
    })
}

/// The seq and boot of an envelope that [`parse_telemetry`] refuses for its content (a string too
/// long, a bad metric name, a bad `ts`...), so the hub can name the reading it rejects. `None`
/// when the payload is not an envelope with one valid `seq` (and at most one valid `boot`): then
/// there is no reading to name.
pub fn reading_id(payload: &[u8]) -> Option<crate::ReadingId> {
    let Ok(Raw::Object(top)) = parse_raw(payload) else {
        return None;
    };
    if !top.iter().any(|(key, _)| key == "metrics") {
        return None;
    }
    let mut seqs = top.iter().filter(|(key, _)| key == "seq");
    let seq = parse_seq(&seqs.next()?.1).ok()?;
    let mut boots = top.iter().filter(|(key, _)| key == "boot");
    let boot = match boots.next() {
        Some((_, raw)) => Some(parse_u32(raw)?),
        None => None,
    };
    if seqs.next().is_some() || boots.next().is_some() {
        return None;
    }
    Some(crate::ReadingId { seq, boot })
}

/// What the hub tells a JSON device that sends `seq`, on `devices/{id}/ack`; the JSON form of
/// [`crate::Ack`], [`crate::Rejected`] and [`crate::GaveUp`] together:
///
/// ```json
/// {"seq":1200,"boot":3,"rejected":{"seq":1,"reason":"..."},"gave_up":[[5,5],[7,9]]}
/// ```
///
/// `seq` is cumulative for the boot: every seq up to it is stored, or was named in `rejected` or
/// `gave_up` of this message or an earlier one. `boot` is there when the device sent one; the
/// other two only when they say something. A device that sends neither boot nor anything to
/// report gets `{"seq":n}`, as before version 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonAck {
    /// Every seq of the boot up to this one is settled.
    pub seq: u32,
    /// The boot the ack is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<u32>,
    /// The reading this message answers, refused for its content: drop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<JsonRejected>,
    /// Seqs the hub stopped waiting for, as inclusive `[first, last]` ranges (see
    /// [`crate::GaveUp`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gave_up: Vec<[u32; 2]>,
}

/// A reading refused for its content, in a [`JsonAck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonRejected {
    /// Its seq.
    pub seq: u32,
    /// Why.
    pub reason: String,
}

impl JsonAck {
    /// The plain ack `{"seq":n}` (with `boot` when given).
    pub fn new(seq: u32, boot: Option<u32>) -> Self {
        JsonAck {
            seq,
            boot,
            rejected: None,
            gave_up: Vec::new(),
        }
    }

    /// Its JSON text.
    pub fn to_json(&self) -> String {
        // Only strings and integers: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A command for a JSON device: `{"id":..,"name":..,"args":{..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonCommand {
    /// The command id; the device echoes it in [`JsonCommandResult::id`].
    pub id: u64,
    /// The command's name.
    pub name: String,
    /// The arguments (missing means none when deserializing).
    #[serde(default)]
    pub args: serde_json::Map<String, serde_json::Value>,
}

/// A JSON device's answer to a command: `{"id":..,"ok":true,"result":{..}}` or
/// `{"id":..,"ok":false,"error":".."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonCommandResult {
    /// The [`JsonCommand::id`] being answered.
    pub id: u64,
    /// Whether the command succeeded.
    pub ok: bool,
    /// Optional result data (any JSON; `null` reads as absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why the command failed: present if and only if `ok` is false, at most [`MAX_STR_LEN`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Parses a command result. Only the keys `id`, `ok`, `result`, `error` are allowed, each once;
/// `error` is required when `ok` is false and forbidden when it is true.
pub fn parse_command_result(payload: &[u8]) -> Result<JsonCommandResult, JsonError> {
    // A first pass tells "not JSON" from "not an object"; the second, typed one reports
    // missing, unknown and duplicate fields by name.
    match parse_raw(payload)? {
        Raw::Object(_) => {}
        _ => return Err(JsonError::NotAnObject),
    }
    let result: JsonCommandResult = serde_json::from_slice(payload)
        .map_err(|e| JsonError::InvalidCommandResult(e.to_string()))?;
    match (&result.error, result.ok) {
        (Some(_), true) => Err(JsonError::InvalidCommandResult(
            "\"ok\" is true but an \"error\" is given".into(),
        )),
        (None, false) => Err(JsonError::InvalidCommandResult(
            "\"ok\" is false but no \"error\" is given".into(),
        )),
        (Some(error), false) if error.len() > MAX_STR_LEN => {
            Err(JsonError::InvalidCommandResult(format!(
                "\"error\" is {} bytes, longer than {MAX_STR_LEN}",
                error.len()
            )))
        }
        _ => Ok(result),
    }
}

fn parse_raw(payload: &[u8]) -> Result<Raw, JsonError> {
    serde_json::from_slice(payload).map_err(|e| JsonError::NotJson(e.to_string()))
}

fn convert_metrics(members: Vec<(String, Raw)>) -> Result<Vec<(String, OwnedValue)>, JsonError> {
    if members.is_empty() {
        return Err(JsonError::NoMetrics);
    }
    if members.len() > MAX_JSON_METRICS {
        return Err(JsonError::TooManyMetrics(members.len()));
    }
    let mut metrics = Vec::with_capacity(members.len());
    for (name, raw) in members {
        if !is_valid_id(&name) {
            return Err(JsonError::InvalidMetricName(quote(&name)));
        }
        let value = convert_value(&name, raw)?;
        metrics.push((name, value));
    }
    metrics.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = metrics.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(JsonError::DuplicateMetric(pair[0].0.clone()));
    }
    Ok(metrics)
}

fn convert_value(name: &str, raw: Raw) -> Result<OwnedValue, JsonError> {
    let unsupported = |kind| JsonError::UnsupportedValue {
        metric: name.to_owned(),
        kind,
    };
    match raw {
        Raw::Bool(b) => Ok(OwnedValue::Bool(b)),
        Raw::I64(i) => Ok(OwnedValue::I64(i)),
        Raw::U64(u) => Ok(match i64::try_from(u) {
            Ok(i) => OwnedValue::I64(i),
            // Beyond i64: kept as the nearest f64.
            Err(_) => OwnedValue::F64(u as f64),
        }),
        Raw::F64(x) if x.is_finite() => Ok(OwnedValue::F64(x)),
        Raw::F64(_) => Err(JsonError::NonFiniteNumber(name.to_owned())),
        Raw::Str(s) if s.len() > MAX_STR_LEN => Err(JsonError::StringTooLong {
            metric: name.to_owned(),
            len: s.len(),
        }),
        Raw::Str(s) => Ok(OwnedValue::Str(s)),
        Raw::Null => Err(unsupported("null")),
        Raw::Array => Err(unsupported("an array")),
        Raw::Object(_) => Err(unsupported("an object")),
    }
}

fn parse_seq(raw: &Raw) -> Result<u32, JsonError> {
    parse_u32(raw).ok_or(JsonError::BadSeq)
}

fn parse_u32(raw: &Raw) -> Option<u32> {
    match *raw {
        Raw::U64(u) => u32::try_from(u).ok(),
        Raw::I64(i) => u32::try_from(i).ok(),
        _ => None,
    }
}

fn parse_ts(raw: &Raw) -> Result<u64, JsonError> {
    let bad = |why: &str| JsonError::BadTimestamp(why.to_owned());
    match raw {
        Raw::U64(ms) => Ok(*ms),
        Raw::I64(_) => Err(bad("negative")),
        Raw::Str(text) => {
            let time = OffsetDateTime::parse(text, &Rfc3339)
                .map_err(|e| JsonError::BadTimestamp(format!("{:?}: {e}", quote(text))))?;
            // RFC 3339 allows a leap second (`23:59:60`), which the parser folds into the second
            // before it; stored so, it would sort and show as a time the device never sent. Unix
            // time has no leap seconds: refused. The parse above fixed the layout
            // `YYYY-MM-DDTHH:MM:SS`, so the seconds are bytes 17 and 18.
            if text.get(17..19) == Some("60") {
                return Err(JsonError::BadTimestamp(format!(
                    "{:?}: a leap second (:60), which unix time cannot hold",
                    quote(text)
                )));
            }
            let ms = time.unix_timestamp_nanos().div_euclid(1_000_000);
            u64::try_from(ms).map_err(|_| bad("before 1970"))
        }
        _ => Err(bad("expected a string or an integer")),
    }
}

/// `name` cut to [`MAX_QUOTED_CHARS`] chars (marked with `...`), for an error message.
fn quote(name: &str) -> String {
    match name.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}...", &name[..cut]),
        None => name.to_owned(),
    }
}

/// A JSON value as far as this module needs it. Objects keep every member in document order,
/// duplicates included. serde_json limits nesting depth, so the recursion is bounded.
///
/// Note: this relies on serde_json calling `visit_u64` / `visit_i64` / `visit_f64` for numbers,
/// which is not the case with its `arbitrary_precision` feature (not used in this workspace).
#[derive(Debug)]
enum Raw {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
    /// The elements are not needed: an array is never a valid value here.
    Array,
    Object(Vec<(String, Raw)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::I64(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::U64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::F64(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Raw::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut members = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Raw>()?;
            members.push((key, value));
        }
        Ok(Raw::Object(members))
    }
}
