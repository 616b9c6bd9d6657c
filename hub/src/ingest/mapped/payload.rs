//! What a mapped topic's payload becomes: the metrics of a JSON object (nested objects and arrays
//! flattened, names joined with `.`), a bare value, or a device's online status. Pure functions;
//! every refusal is a sentence for the log.
//!
//! Rules of the JSON form, the same for every preset:
//! - a `null` is skipped (no value now, as Zigbee2MQTT says of a state it does not know);
//! - an array's elements are named by their index (`ENERGY.Voltage.0` of Tasmota's three phases);
//! - `fields` keeps a leaf whose name is one of them or lies under one (`ENERGY` keeps
//!   `ENERGY.Power`), `skip` drops the same way; then every name left must be a valid metric
//!   name and every string at most [`MAX_STR_LEN`] bytes, or the message is refused whole,
//!   naming the field (keep the others with `fields`).

use device_protocol::{MAX_STR_LEN, OwnedValue, json::MAX_JSON_METRICS};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ingest::decode::MAX_TIMESTAMP_MS;

/// Most leaves walked in one JSON payload, before `fields` and `skip` choose.
const MAX_LEAVES: usize = 1024;

/// How a JSON payload is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonRules {
    /// Fields kept (none: all).
    pub fields: Option<Vec<String>>,
    /// Fields dropped.
    pub skip: Vec<String>,
    /// The field holding the reading's time.
    pub ts_field: Option<String>,
}

/// Whether `name` is `entry` or lies under it.
fn under(name: &str, entry: &str) -> bool {
    name.strip_prefix(entry)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Metrics of one message, sorted by name, and its time (unix ms) if it gave one.
pub type Metrics = (Vec<(String, OwnedValue)>, Option<u64>);

/// The metrics of a JSON object payload (names prefixed with `prefix` and `.`, sorted), and the
/// time of its `ts_field`, if it has one.
pub fn json_metrics(
    payload: &[u8],
    rules: &JsonRules,
    prefix: Option<&str>,
) -> Result<Metrics, String> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err("payload is not a JSON object".into());
    };
    let mut leaves = Vec::new();
    for (key, value) in object {
        flatten(key, value, &mut leaves)?;
    }
    let mut timestamp_ms = None;
    let mut metrics = Vec::new();
    for (name, value) in leaves {
        if rules.ts_field.as_deref() == Some(name.as_str()) {
            timestamp_ms = Some(timestamp(&value)?);
            continue;
        }
        let kept = rules
            .fields
            .as_ref()
            .is_none_or(|fields| fields.iter().any(|f| under(&name, f)));
        if !kept || rules.skip.iter().any(|s| under(&name, s)) {
            continue;
        }
        let name = match prefix {
            Some(prefix) => format!("{prefix}.{name}"),
            None => name,
        };
        if !device_protocol::is_valid_id(&name) {
            return Err(format!(
                "field {:?} is not a valid metric name (1-64 of A-Z a-z 0-9 . _ -); keep the others with `fields`",
                cut(&name)
            ));
        }
        let value = scalar(&name, value)?;
        metrics.push((name, value));
    }
    if metrics.is_empty() {
        return Err("no metrics in the payload (after `fields` and `skip`)".into());
    }
    if metrics.len() > MAX_JSON_METRICS {
        return Err(format!(
            "{} metrics, more than {MAX_JSON_METRICS}; choose some with `fields`",
            metrics.len()
        ));
    }
    metrics.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = metrics.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(format!("metric {:?} appears more than once", pair[0].0));
    }
    Ok((metrics, timestamp_ms))
}

/// Walks `value` named `name` into its leaves (nulls skipped). serde_json bounds the depth.
fn flatten(name: String, value: Value, leaves: &mut Vec<(String, Value)>) -> Result<(), String> {
    match value {
        Value::Null => Ok(()),
        Value::Object(object) => object
            .into_iter()
            .try_for_each(|(key, value)| flatten(format!("{name}.{key}"), value, leaves)),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .try_for_each(|(i, value)| flatten(format!("{name}.{i}"), value, leaves)),
        leaf => {
            if leaves.len() >= MAX_LEAVES {
                return Err(format!("more than {MAX_LEAVES} values in the payload"));
            }
            leaves.push((name, leaf));
            Ok(())
        }
    }
}

/// A JSON leaf as a metric value.
fn scalar(name: &str, value: Value) -> Result<OwnedValue, String> {
    match value {
        Value::Bool(b) => Ok(OwnedValue::Bool(b)),
        Value::Number(n) => {
            number(&n).ok_or_else(|| format!("metric {name:?}: not a finite number"))
        }
        Value::String(s) if s.len() > MAX_STR_LEN => Err(format!(
            "metric {name:?}: a string of {} bytes, longer than {MAX_STR_LEN}",
            s.len()
        )),
        Value::String(s) => Ok(OwnedValue::Str(s)),
        // `flatten` leaves only scalars.
        other => Err(format!("metric {name:?}: {other} is not a value")),
    }
}

/// An integer stays one (beyond i64, the nearest f64); any other number is an f64.
fn number(n: &serde_json::Number) -> Option<OwnedValue> {
    if let Some(i) = n.as_i64() {
        return Some(OwnedValue::I64(i));
    }
    n.as_f64().filter(|x| x.is_finite()).map(OwnedValue::F64)
}

/// A reading's time from its `ts_field`: RFC 3339 with a zone, or unix seconds.
fn timestamp(value: &Value) -> Result<u64, String> {
    let ms = match value {
        Value::String(text) => {
            let time = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
                format!(
                    "the time field {:?} is not RFC 3339 with a zone: {e}",
                    cut(text)
                )
            })?;
            i64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(-1)
        }
        Value::Number(n) => match n.as_f64() {
            Some(seconds) if seconds.is_finite() => (seconds * 1000.0).round() as i64,
            _ => -1,
        },
        _ => {
            return Err("the time field is neither an RFC 3339 string nor unix seconds".into());
        }
    };
    match u64::try_from(ms) {
        Ok(ms) if ms <= MAX_TIMESTAMP_MS => Ok(ms),
        _ => Err(format!(
            "the time field {value} is before 1970 or after 9999"
        )),
    }
}

/// A bare payload as one value: `true` / `false`, a number (an integer stays one), a JSON string,
/// or else the text itself.
pub fn bare_value(payload: &[u8]) -> Result<OwnedValue, String> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| "the payload is not UTF-8 text".to_owned())?
        .trim();
    if text.is_empty() {
        return Err("the payload is empty".into());
    }
    let value = match serde_json::from_str::<Value>(text) {
        Ok(Value::Bool(b)) => OwnedValue::Bool(b),
        Ok(Value::Number(n)) => {
            number(&n).ok_or_else(|| "the payload is not a finite number".to_owned())?
        }
        Ok(Value::String(s)) => OwnedValue::Str(s),
        Ok(Value::Null | Value::Array(_) | Value::Object(_)) => {
            return Err("the payload is JSON but not a number, bool or string".into());
        }
        Err(_) => OwnedValue::Str(text.to_owned()),
    };
    match value {
        OwnedValue::Str(s) if s.len() > MAX_STR_LEN => Err(format!(
            "a string of {} bytes, longer than {MAX_STR_LEN}",
            s.len()
        )),
        value => Ok(value),
    }
}

/// Whether a status payload says online: `online` / `offline` (any case: Tasmota's `Online`),
/// `true` / `false` (Shelly), or an object whose `state` says so (Zigbee2MQTT's availability).
pub fn online(payload: &[u8]) -> Result<bool, String> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| "the status is not UTF-8 text".to_owned())?
        .trim();
    let word = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => match object.get("state") {
            Some(Value::String(state)) => state.clone(),
            _ => return Err("a status object needs a \"state\" string".into()),
        },
        Ok(Value::Bool(b)) => return Ok(b),
        Ok(Value::String(s)) => s,
        _ => text.to_owned(),
    };
    match word.to_ascii_lowercase().as_str() {
        "online" | "true" => Ok(true),
        "offline" | "false" => Ok(false),
        _ => Err(format!(
            "the status {:?} is not online/offline or true/false",
            cut(&word)
        )),
    }
}

/// Text cut for a log line.
fn cut(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all() -> JsonRules {
        JsonRules::default()
    }

    #[test]
    fn nested_objects_and_arrays_are_flattened_and_nulls_skipped() {
        let (metrics, ts) = json_metrics(
            br#"{"ENERGY":{"Total":0.172,"Voltage":[230,231.5]},"POWER":"ON","x":null,"ok":true}"#,
            &all(),
            None,
        )
        .unwrap();
        assert_eq!(ts, None);
        assert_eq!(
            metrics,
            vec![
                ("ENERGY.Total".into(), OwnedValue::F64(0.172)),
                ("ENERGY.Voltage.0".into(), OwnedValue::I64(230)),
                ("ENERGY.Voltage.1".into(), OwnedValue::F64(231.5)),
                ("POWER".into(), OwnedValue::Str("ON".into())),
                ("ok".into(), OwnedValue::Bool(true)),
            ]
        );
    }

    #[test]
    fn fields_keep_skip_drops_and_the_time_field_stamps() {
        let rules = JsonRules {
            fields: Some(vec!["ENERGY".into(), "t".into()]),
            skip: vec!["ENERGY.Today".into()],
            ts_field: Some("Time".into()),
        };
        let (metrics, ts) = json_metrics(
            br#"{"Time":"2026-11-21T10:00:00Z","ENERGY":{"Today":1,"Power":5},"t":2,"tt":3,"bad name":1}"#,
            &rules,
            Some("p"),
        )
        .unwrap();
        assert_eq!(ts, Some(1_795_255_200_000));
        let names: Vec<&str> = metrics.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["p.ENERGY.Power", "p.t"]);
        let seconds = JsonRules {
            ts_field: Some("ts".into()),
            ..all()
        };
        let (_, ts) = json_metrics(br#"{"ts":1631266595.44,"a":1}"#, &seconds, None).unwrap();
        assert_eq!(ts, Some(1_631_266_595_440));
    }

    #[test]
    fn what_cannot_be_stored_is_refused_naming_it() {
        let stamped = JsonRules {
            ts_field: Some("Time".into()),
            ..all()
        };
        for (payload, rules, why) in [
            (&b"not json"[..], all(), "not JSON"),
            (b"[1]", all(), "not a JSON object"),
            (b"{}", all(), "no metrics"),
            (b"{\"a\":null}", all(), "no metrics"),
            (b"{\"bad name\":1}", all(), "bad name"),
            (b"{\"a.b\":1,\"a\":{\"b\":2}}", all(), "more than once"),
            (
                b"{\"Time\":\"2019-05-28T12:32:50\",\"a\":1}",
                stamped.clone(),
                "zone",
            ),
            (b"{\"Time\":-5,\"a\":1}", stamped.clone(), "1970"),
            (b"{\"Time\":true,\"a\":1}", stamped, "neither"),
        ] {
            let e = json_metrics(payload, &rules, None).unwrap_err();
            assert!(e.contains(why), "{}: {e}", String::from_utf8_lossy(payload));
        }
        let long = format!("{{\"s\":\"{}\"}}", "x".repeat(MAX_STR_LEN + 1));
        assert!(
            json_metrics(long.as_bytes(), &all(), None)
                .unwrap_err()
                .contains("longer")
        );
        let many: Vec<String> = (0..=MAX_JSON_METRICS)
            .map(|i| format!("\"m{i}\":{i}"))
            .collect();
        let many = format!("{{{}}}", many.join(","));
        assert!(
            json_metrics(many.as_bytes(), &all(), None)
                .unwrap_err()
                .contains("fields")
        );
    }

    #[test]
    fn bare_values_and_statuses() {
        assert_eq!(bare_value(b"21.5"), Ok(OwnedValue::F64(21.5)));
        assert_eq!(bare_value(b" 7\n"), Ok(OwnedValue::I64(7)));
        assert_eq!(bare_value(b"true"), Ok(OwnedValue::Bool(true)));
        assert_eq!(bare_value(b"ON"), Ok(OwnedValue::Str("ON".into())));
        assert_eq!(bare_value(b"\"on\""), Ok(OwnedValue::Str("on".into())));
        assert!(bare_value(b"").is_err());
        assert!(bare_value(b"{\"a\":1}").is_err());
        assert!(bare_value(b"\xff").is_err());
        assert!(bare_value("x".repeat(MAX_STR_LEN + 1).as_bytes()).is_err());
        for (payload, expected) in [
            (&b"Online"[..], true),
            (b"Offline", false),
            (b"true", true),
            (b"false", false),
            (b"{\"state\":\"online\"}", true),
            (b"{\"state\":\"offline\"}", false),
            (b"offline", false),
        ] {
            assert_eq!(
                online(payload),
                Ok(expected),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        for bad in [&b"maybe"[..], b"{}", b"{\"state\":1}", b"\xff", b""] {
            assert!(online(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        /// No payload makes the decoders panic, and whatever they accept is storable.
        #[test]
        fn any_payload_is_decoded_or_refused(payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok((metrics, _)) = json_metrics(&payload, &all(), None) {
                prop_assert!(!metrics.is_empty() && metrics.len() <= MAX_JSON_METRICS);
                prop_assert!(metrics.iter().all(|(n, _)| device_protocol::is_valid_id(n)));
            }
            let _ = bare_value(&payload);
            let _ = online(&payload);
        }

        /// Valid JSON objects, cut at every byte or with a bit flipped, are decoded or refused.
        #[test]
        fn damaged_objects_are_decoded_or_refused(
            values in proptest::collection::vec((("[a-c]{1,3}"), any::<i32>()), 1..6),
            cut_at in any::<usize>(),
            flip in any::<(usize, u8)>(),
        ) {
            let body: Vec<String> = values.iter().map(|(k, v)| format!("\"{k}\":{{\"v\":{v}}}")).collect();
            let text = format!("{{{}}}", body.join(","));
            let bytes = text.as_bytes();
            prop_assert!(json_metrics(bytes, &all(), None).is_ok());
            let _ = json_metrics(&bytes[..cut_at % bytes.len()], &all(), None);
            let mut flipped = bytes.to_vec();
            let at = flip.0 % flipped.len();
            flipped[at] ^= 1 << (flip.1 % 8);
            let _ = json_metrics(&flipped, &all(), None);
        }
    }
}
