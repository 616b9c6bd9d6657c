//! The MQTT JSON forms: every accepted telemetry form and every error case, command results, acks
//! and commands.
#![cfg(feature = "std")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers may panic"
)]

use device_protocol::OwnedValue;
use device_protocol::ReadingId;
use device_protocol::json::{
    JsonAck, JsonCommand, JsonCommandResult, JsonError, JsonRejected, JsonTelemetry,
    MAX_JSON_METRICS, parse_command_result, parse_telemetry, reading_id,
};
use serde_json::json;

/// 2026-11-21T10:00:00Z in unix milliseconds.
const TS_MS: u64 = 1_795_255_200_000;

fn ok(payload: &str) -> JsonTelemetry {
    match parse_telemetry(payload.as_bytes()) {
        Ok(t) => t,
        Err(e) => panic!("{payload} rejected: {e}"),
    }
}

fn err(payload: &str) -> JsonError {
    match parse_telemetry(payload.as_bytes()) {
        Ok(t) => panic!("{payload} accepted: {t:?}"),
        Err(e) => e,
    }
}

fn metrics(items: &[(&str, OwnedValue)]) -> Vec<(String, OwnedValue)> {
    items
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect()
}

// ----- accepted forms ------------------------------------------------------------------------

#[test]
fn flat_object() {
    let t = ok(r#"{"temp":21.5,"door":false}"#);
    assert_eq!(
        t,
        JsonTelemetry {
            seq: None,
            boot: None,
            timestamp_ms: None,
            // Sorted by name.
            metrics: metrics(&[
                ("door", OwnedValue::Bool(false)),
                ("temp", OwnedValue::F64(21.5)),
            ]),
        }
    );
}

#[test]
fn value_kinds() {
    let long = "x".repeat(device_protocol::MAX_STR_LEN);
    let payload = json!({
        "int": 42,
        "neg": -7,
        "i64max": i64::MAX,
        "i64min": i64::MIN,
        "u64max": u64::MAX,
        "float": 1.5,
        "whole_float": 2.0,
        "exp": 1e3,
        "yes": true,
        "text": "hello",
        "empty": "",
        "longest": long,
    })
    .to_string();
    let t = ok(&payload);
    assert_eq!(
        t.metrics,
        metrics(&[
            ("empty", OwnedValue::Str(String::new())),
            ("exp", OwnedValue::F64(1000.0)),
            ("float", OwnedValue::F64(1.5)),
            ("i64max", OwnedValue::I64(i64::MAX)),
            ("i64min", OwnedValue::I64(i64::MIN)),
            ("int", OwnedValue::I64(42)),
            ("longest", OwnedValue::Str(long.clone())),
            ("neg", OwnedValue::I64(-7)),
            ("text", OwnedValue::Str("hello".into())),
            // Integers beyond i64 become f64.
            ("u64max", OwnedValue::F64(u64::MAX as f64)),
            ("whole_float", OwnedValue::F64(2.0)),
            ("yes", OwnedValue::Bool(true)),
        ])
    );
}

#[test]
fn flat_form_treats_seq_and_ts_as_metrics() {
    let t = ok(r#"{"seq":7,"ts":"x"}"#);
    assert_eq!(t.seq, None);
    assert_eq!(t.timestamp_ms, None);
    assert_eq!(
        t.metrics,
        metrics(&[
            ("seq", OwnedValue::I64(7)),
            ("ts", OwnedValue::Str("x".into()))
        ])
    );
}

#[test]
fn envelope_full() {
    let t = ok(r#"{"seq":7,"ts":"2026-11-21T10:00:00Z","metrics":{"temp":21.5,"door":false}}"#);
    assert_eq!(
        t,
        JsonTelemetry {
            seq: Some(7),
            boot: None,
            timestamp_ms: Some(TS_MS),
            metrics: metrics(&[
                ("door", OwnedValue::Bool(false)),
                ("temp", OwnedValue::F64(21.5)),
            ]),
        }
    );
}

#[test]
fn envelope_key_order_does_not_matter() {
    let a = ok(r#"{"metrics":{"b":1,"a":2},"ts":1000,"seq":3}"#);
    let b = ok(r#"{"seq":3,"ts":1000,"metrics":{"a":2,"b":1}}"#);
    assert_eq!(a, b);
}

#[test]
fn envelope_optional_parts() {
    let t = ok(r#"{"metrics":{"a":1}}"#);
    assert_eq!((t.seq, t.timestamp_ms), (None, None));
    let t = ok(r#"{"seq":0,"metrics":{"a":1}}"#);
    assert_eq!((t.seq, t.timestamp_ms), (Some(0), None));
    let t = ok(r#"{"seq":4294967295,"metrics":{"a":1}}"#);
    assert_eq!(t.seq, Some(u32::MAX));
    let t = ok(r#"{"ts":1795255200000,"metrics":{"a":1}}"#);
    assert_eq!((t.seq, t.timestamp_ms), (None, Some(TS_MS)));
}

#[test]
fn envelope_timestamps() {
    let ts = |text: &str| {
        ok(&format!(r#"{{"ts":{text},"metrics":{{"a":1}}}}"#))
            .timestamp_ms
            .unwrap()
    };
    assert_eq!(ts(r#""2026-11-21T10:00:00Z""#), TS_MS);
    // Any offset, converted to UTC.
    assert_eq!(ts(r#""2026-11-21T12:00:00+02:00""#), TS_MS);
    assert_eq!(ts(r#""2026-11-21T05:30:00-04:30""#), TS_MS);
    assert_eq!(ts(r#""2026-11-21T10:00:00.123Z""#), TS_MS + 123);
    // Below a millisecond is cut off.
    assert_eq!(ts(r#""2026-11-21T10:00:00.123999Z""#), TS_MS + 123);
    assert_eq!(ts(r#""1970-01-01T00:00:00Z""#), 0);
    assert_eq!(ts("0"), 0);
    assert_eq!(ts("1795255200000"), TS_MS);
}

#[test]
fn limits_are_inclusive() {
    let name = "n".repeat(64);
    let t = ok(&format!(r#"{{"{name}":1}}"#));
    assert_eq!(t.metrics[0].0, name);

    let many: serde_json::Map<_, _> = (0..MAX_JSON_METRICS)
        .map(|i| (format!("m{i}"), json!(i)))
        .collect();
    let t = ok(&serde_json::Value::Object(many).to_string());
    assert_eq!(t.metrics.len(), MAX_JSON_METRICS);
}

// ----- errors --------------------------------------------------------------------------------

#[test]
fn not_json() {
    for payload in ["", "not json", "{", r#"{"a":1} trailing"#, r#"{"a":1e400}"#] {
        assert!(matches!(err(payload), JsonError::NotJson(_)), "{payload:?}");
    }
    // Invalid UTF-8.
    assert!(matches!(
        parse_telemetry(b"{\"a\":\"\xff\"}"),
        Err(JsonError::NotJson(_))
    ));
}

#[test]
fn not_an_object() {
    for payload in ["[1,2]", "1", r#""text""#, "null", "true", "[]"] {
        assert_eq!(err(payload), JsonError::NotAnObject, "{payload:?}");
    }
}

#[test]
fn no_metrics() {
    assert_eq!(err("{}"), JsonError::NoMetrics);
    assert_eq!(err(r#"{"metrics":{}}"#), JsonError::NoMetrics);
    assert_eq!(err(r#"{"seq":1,"metrics":{}}"#), JsonError::NoMetrics);
}

#[test]
fn too_many_metrics() {
    let many: serde_json::Map<_, _> = (0..=MAX_JSON_METRICS)
        .map(|i| (format!("m{i}"), json!(i)))
        .collect();
    let flat = serde_json::Value::Object(many.clone()).to_string();
    assert_eq!(err(&flat), JsonError::TooManyMetrics(65));
    let envelope = json!({ "metrics": many }).to_string();
    assert_eq!(err(&envelope), JsonError::TooManyMetrics(65));
}

#[test]
fn invalid_metric_names() {
    let e = err(r#"{"x y":1}"#);
    assert_eq!(e, JsonError::InvalidMetricName("x y".into()));
    assert_eq!(
        e.to_string(),
        r#"metric "x y" is not a valid name (1-64 of A-Z a-z 0-9 . _ -)"#
    );
    let too_long = "n".repeat(65);
    for name in ["", "a/b", "é", "a\"b", too_long.as_str()] {
        let payload = json!({ name: 1 }).to_string();
        assert!(
            matches!(err(&payload), JsonError::InvalidMetricName(_)),
            "{name:?}"
        );
    }
    // Also inside an envelope.
    assert!(matches!(
        err(r#"{"metrics":{"bad name":1}}"#),
        JsonError::InvalidMetricName(_)
    ));
}

#[test]
fn long_bad_names_are_cut_in_the_message() {
    let name = "é".repeat(1000);
    let e = err(&json!({ name: 1 }).to_string());
    let JsonError::InvalidMetricName(quoted) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(quoted.chars().count(), 83);
    assert!(quoted.ends_with("..."));
    assert!(e.to_string().len() < 300);
    // Control characters are escaped in the text.
    let e = err(r#"{"a\nb":1}"#);
    assert_eq!(
        e.to_string(),
        r#"metric "a\nb" is not a valid name (1-64 of A-Z a-z 0-9 . _ -)"#
    );
}

#[test]
fn unsupported_values() {
    for (value, kind) in [
        ("null", "null"),
        ("[1]", "an array"),
        (r#"{"x":1}"#, "an object"),
    ] {
        let expected = JsonError::UnsupportedValue {
            metric: "a".into(),
            kind,
        };
        assert_eq!(err(&format!(r#"{{"a":{value}}}"#)), expected);
        assert_eq!(err(&format!(r#"{{"metrics":{{"a":{value}}}}}"#)), expected);
    }
    assert_eq!(
        err(r#"{"a":null}"#).to_string(),
        r#"metric "a" is null; a value must be a number, a bool or a string"#
    );
}

#[test]
fn bad_seq() {
    for seq in [
        "-1",
        "4294967296",
        "1.5",
        "7.0",
        r#""7""#,
        "null",
        "true",
        "{}",
    ] {
        let payload = format!(r#"{{"seq":{seq},"metrics":{{"a":1}}}}"#);
        assert_eq!(err(&payload), JsonError::BadSeq, "{payload}");
    }
}

#[test]
fn bad_ts() {
    for ts in [
        r#""yesterday""#,
        r#""2026-11-21""#,
        r#""2026-13-01T00:00:00Z""#,
        r#""2026-11-21T10:00:00""#, // no offset
        r#""1969-12-31T23:59:59Z""#,
        // Leap seconds: unix time has none; in any offset, with or without fractions.
        r#""2016-12-31T23:59:60Z""#,
        r#""2016-12-31T23:59:60.5Z""#,
        r#""2017-01-01T00:59:60+01:00""#,
        "-1",
        "1.5",
        "true",
        "null",
        "[]",
    ] {
        let payload = format!(r#"{{"ts":{ts},"metrics":{{"a":1}}}}"#);
        assert!(
            matches!(err(&payload), JsonError::BadTimestamp(_)),
            "{payload}"
        );
    }
}

#[test]
fn string_too_long() {
    let long = "é".repeat(129); // 258 bytes
    assert_eq!(
        err(&json!({ "s": long }).to_string()),
        JsonError::StringTooLong {
            metric: "s".into(),
            len: 258
        }
    );
}

#[test]
fn duplicates() {
    assert_eq!(
        err(r#"{"a":1,"b":2,"a":3}"#),
        JsonError::DuplicateMetric("a".into())
    );
    assert_eq!(
        err(r#"{"metrics":{"a":1,"a":1}}"#),
        JsonError::DuplicateMetric("a".into())
    );
    assert_eq!(
        err(r#"{"seq":1,"seq":2,"metrics":{"a":1}}"#),
        JsonError::DuplicateKey("seq".into())
    );
    assert_eq!(
        err(r#"{"metrics":{"a":1},"metrics":{"b":1}}"#),
        JsonError::DuplicateKey("metrics".into())
    );
}

#[test]
fn envelope_shape_errors() {
    assert_eq!(
        err(r#"{"metrics":{"a":1},"temp":2}"#),
        JsonError::UnknownKey("temp".into())
    );
    assert_eq!(err(r#"{"metrics":[1]}"#), JsonError::MetricsNotAnObject);
    assert_eq!(err(r#"{"metrics":5}"#), JsonError::MetricsNotAnObject);
    assert_eq!(err(r#"{"metrics":null}"#), JsonError::MetricsNotAnObject);
}

// ----- ack and commands ----------------------------------------------------------------------

#[test]
fn ack() {
    // A device that sends no boot, with nothing to report, gets the version 1 form.
    assert_eq!(JsonAck::new(7, None).to_json(), r#"{"seq":7}"#);
    assert_eq!(
        JsonAck::new(u32::MAX, None).to_json(),
        r#"{"seq":4294967295}"#
    );
    assert_eq!(JsonAck::new(7, Some(3)).to_json(), r#"{"seq":7,"boot":3}"#);
    let full = JsonAck {
        seq: 1200,
        boot: Some(3),
        rejected: Some(JsonRejected {
            seq: 1,
            reason: "too \"long\"".into(),
        }),
        gave_up: vec![[5, 5], [7, 9]],
    };
    let text = full.to_json();
    assert_eq!(
        text,
        r#"{"seq":1200,"boot":3,"rejected":{"seq":1,"reason":"too \"long\""},"gave_up":[[5,5],[7,9]]}"#
    );
    assert_eq!(serde_json::from_str::<JsonAck>(&text).unwrap(), full);
    // A device of version 1 reads the new form as before: extra keys are ignored.
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed["seq"], 1200);
    assert_eq!(
        serde_json::from_str::<JsonAck>(r#"{"seq":4}"#).unwrap(),
        JsonAck::new(4, None)
    );
}

#[test]
fn envelope_boot() {
    let t = ok(r#"{"seq":7,"boot":3,"metrics":{"a":1}}"#);
    assert_eq!((t.seq, t.boot), (Some(7), Some(3)));
    let t = ok(r#"{"boot":3,"metrics":{"a":1}}"#);
    assert_eq!((t.seq, t.boot), (None, Some(3)));
    for bad in [
        r#"{"boot":-1,"metrics":{"a":1}}"#,
        r#"{"boot":4294967296,"metrics":{"a":1}}"#,
        r#"{"boot":"3","metrics":{"a":1}}"#,
        r#"{"boot":1.5,"metrics":{"a":1}}"#,
    ] {
        assert_eq!(err(bad), JsonError::BadBoot, "{bad}");
    }
    assert_eq!(
        err(r#"{"boot":1,"boot":2,"metrics":{"a":1}}"#),
        JsonError::DuplicateKey("boot".into())
    );
    // In the flat form it is a metric like any other.
    assert_eq!(
        ok(r#"{"boot":3}"#).metrics,
        metrics(&[("boot", OwnedValue::I64(3))])
    );
}

#[test]
fn reading_id_names_an_envelope_refused_for_its_content() {
    let long = "x".repeat(device_protocol::MAX_STR_LEN + 1);
    let payload = json!({"seq": 1, "boot": 2, "metrics": {"s": long}}).to_string();
    assert!(matches!(
        parse_telemetry(payload.as_bytes()),
        Err(JsonError::StringTooLong { .. })
    ));
    assert_eq!(
        reading_id(payload.as_bytes()),
        Some(ReadingId {
            seq: 1,
            boot: Some(2)
        })
    );
    assert_eq!(
        reading_id(br#"{"seq":5,"ts":"yesterday","metrics":{"a":1}}"#),
        Some(ReadingId { seq: 5, boot: None })
    );
    for nameless in [
        &br#"{"metrics":{"a":1}}"#[..],
        br#"{"seq":5,"a":1}"#,
        br#"{"seq":-5,"metrics":{}}"#,
        br#"{"seq":5,"boot":-1,"metrics":{}}"#,
        br#"{"seq":5,"seq":6,"metrics":{}}"#,
        br#"{"seq":5,"boot":1,"boot":2,"metrics":{}}"#,
        b"not json",
        b"[1]",
    ] {
        assert_eq!(
            reading_id(nameless),
            None,
            "{}",
            String::from_utf8_lossy(nameless)
        );
    }
}

#[test]
fn command_json() {
    let mut args = serde_json::Map::new();
    args.insert("delay".into(), json!(3));
    let command = JsonCommand {
        id: 5,
        name: "reboot".into(),
        args,
    };
    let text = serde_json::to_string(&command).unwrap();
    assert_eq!(text, r#"{"id":5,"name":"reboot","args":{"delay":3}}"#);
    let back: JsonCommand = serde_json::from_str(&text).unwrap();
    assert_eq!(back, command);
    let no_args: JsonCommand = serde_json::from_str(r#"{"id":1,"name":"x"}"#).unwrap();
    assert!(no_args.args.is_empty());
}

#[test]
fn command_results_accepted() {
    let r = parse_command_result(br#"{"id":9,"ok":true,"result":{"uptime":12}}"#).unwrap();
    assert_eq!(
        r,
        JsonCommandResult {
            id: 9,
            ok: true,
            result: Some(json!({"uptime": 12})),
            error: None
        }
    );
    let r = parse_command_result(br#"{"id":9,"ok":true}"#).unwrap();
    assert_eq!((r.ok, r.result, r.error), (true, None, None));
    let r = parse_command_result(br#"{"id":9,"ok":true,"result":null}"#).unwrap();
    assert_eq!(r.result, None);
    let r =
        parse_command_result(br#"{"error":"busy","ok":false,"id":18446744073709551615}"#).unwrap();
    assert_eq!(
        r,
        JsonCommandResult {
            id: u64::MAX,
            ok: false,
            result: None,
            error: Some("busy".into())
        }
    );
}

#[test]
fn command_result_serializes_without_absent_parts() {
    let r = JsonCommandResult {
        id: 1,
        ok: false,
        result: None,
        error: Some("no".into()),
    };
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"id":1,"ok":false,"error":"no"}"#
    );
}

#[test]
fn command_results_rejected() {
    assert!(matches!(
        parse_command_result(b"nope"),
        Err(JsonError::NotJson(_))
    ));
    assert_eq!(parse_command_result(b"[1]"), Err(JsonError::NotAnObject));
    for payload in [
        r#"{"ok":true}"#,                    // no id
        r#"{"id":1}"#,                       // no ok
        r#"{"id":-1,"ok":true}"#,            // id not a u64
        r#"{"id":1,"ok":"yes"}"#,            // ok not a bool
        r#"{"id":1,"ok":true,"extra":1}"#,   // unknown field
        r#"{"id":1,"id":2,"ok":true}"#,      // duplicate field
        r#"{"id":1,"ok":true,"error":"x"}"#, // ok with an error
        r#"{"id":1,"ok":false}"#,            // failure without an error
        r#"{"id":1,"ok":false,"error":5}"#,  // error not a string
    ] {
        assert!(
            matches!(
                parse_command_result(payload.as_bytes()),
                Err(JsonError::InvalidCommandResult(_))
            ),
            "{payload}"
        );
    }
    let long = json!({"id": 1, "ok": false, "error": "e".repeat(257)}).to_string();
    assert!(matches!(
        parse_command_result(long.as_bytes()),
        Err(JsonError::InvalidCommandResult(_))
    ));
}
