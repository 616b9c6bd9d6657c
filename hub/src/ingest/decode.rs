//! Turns what devices send into items for the store writer, or the reason to skip it. Pure
//! functions, shared by the MQTT and serial transports, so every rule is tested here.

use device_protocol::{CommandStatus, OwnedValue, Uplink, json};

use super::Rejection;
use crate::store::{
    CommandResultIn, DeviceHello, DeviceStatus, Ingest, NewReading, RejectedReading, Transport,
    Wire,
};

/// Topic filter of JSON telemetry.
pub const TELEMETRY_FILTER: &str = "devices/+/telemetry";
/// Topic filter of binary (postcard) uplink messages.
pub const UP_FILTER: &str = "devices/+/up";
/// Topic filter of JSON command results.
pub const COMMAND_RESULTS_FILTER: &str = "devices/+/command-results";
/// Topic filter of device status (`online` / `offline`, typically the device's MQTT last will).
pub const STATUS_FILTER: &str = "devices/+/status";

/// The last instant RFC 3339 can write (9999-12-31T23:59:59.999Z). The API shows every
/// timestamp in RFC 3339, so a reading stamped later could never be shown: the API answered
/// `"ts": ""` for one, which its OpenAPI description (and every client) refuses; schemathesis
/// found it. Such a timestamp is a device clock gone wrong, refused like any other bad `ts`.
pub const MAX_TIMESTAMP_MS: u64 = 253_402_300_799_999;

/// Refuses a device timestamp after [`MAX_TIMESTAMP_MS`].
fn check_timestamp(timestamp_ms: Option<u64>) -> Result<(), (Rejection, String)> {
    match timestamp_ms {
        Some(ms) if ms > MAX_TIMESTAMP_MS => Err((
            Rejection::BadPayload,
            format!("ts {ms} is after 9999-12-31T23:59:59.999Z, the last time RFC 3339 can write"),
        )),
        _ => Ok(()),
    }
}

/// A device topic the hub reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic<'a> {
    /// `devices/{id}/telemetry`: JSON.
    Telemetry(&'a str),
    /// `devices/{id}/up`: postcard `Uplink`.
    Up(&'a str),
    /// `devices/{id}/command-results`: JSON.
    CommandResults(&'a str),
    /// `devices/{id}/status`: `online` or `offline`.
    Status(&'a str),
}

impl<'a> Topic<'a> {
    /// The device id in the topic.
    pub fn device(self) -> &'a str {
        match self {
            Topic::Telemetry(d) | Topic::Up(d) | Topic::CommandResults(d) | Topic::Status(d) => d,
        }
    }
}

/// Parses a device topic the hub reads, checking the id.
pub fn parse_topic(topic: &str) -> Result<Topic<'_>, Rejection> {
    let rest = topic.strip_prefix("devices/").ok_or(Rejection::BadTopic)?;
    let (id, kind) = rest.rsplit_once('/').ok_or(Rejection::BadTopic)?;
    let parsed = match kind {
        "telemetry" => Topic::Telemetry(id),
        "up" => Topic::Up(id),
        "command-results" => Topic::CommandResults(id),
        "status" => Topic::Status(id),
        _ => return Err(Rejection::BadTopic),
    };
    if device_protocol::is_valid_id(id) {
        Ok(parsed)
    } else {
        Err(Rejection::BadDeviceId)
    }
}

/// Refuses a payload larger than `max_payload`.
fn check_size(payload: &[u8], max_payload: usize) -> Result<(), (Rejection, String)> {
    if payload.len() > max_payload {
        return Err((
            Rejection::TooLarge,
            format!("{} bytes, limit {max_payload}", payload.len()),
        ));
    }
    Ok(())
}

/// Decodes JSON telemetry from `device`.
pub fn json_telemetry(
    device: &str,
    payload: &[u8],
    max_payload: usize,
    received_ms: u64,
) -> Result<NewReading, (Rejection, String)> {
    check_size(payload, max_payload)?;
    let telemetry =
        json::parse_telemetry(payload).map_err(|e| (Rejection::BadPayload, e.to_string()))?;
    check_timestamp(telemetry.timestamp_ms)?;
    Ok(NewReading {
        device: device.to_owned(),
        transport: Transport::Mqtt,
        wire: Wire::Json,
        seq: telemetry.seq,
        boot: telemetry.boot,
        timestamp_ms: telemetry.timestamp_ms,
        received_ms,
        metrics: telemetry.metrics,
    })
}

/// Turns a decoded binary uplink from `device` into a store item.
pub fn uplink(
    message: &Uplink<'_>,
    device: &str,
    transport: Transport,
    received_ms: u64,
) -> Result<Ingest, (Rejection, String)> {
    match message {
        Uplink::Hello(hello) => Ok(Ingest::Hello(DeviceHello {
            device: device.to_owned(),
            transport,
            firmware: hello.firmware.to_owned(),
            protocol_version: hello.protocol_version,
            boot: hello.boot,
            received_ms,
        })),
        Uplink::Telemetry(t) => check_timestamp(t.timestamp_ms).map(|()| {
            Ingest::Reading(NewReading {
                device: device.to_owned(),
                transport,
                wire: Wire::Binary,
                seq: Some(t.seq),
                boot: t.boot,
                timestamp_ms: t.timestamp_ms,
                received_ms,
                metrics: t
                    .readings
                    .iter()
                    .map(|f| (f.name.to_owned(), OwnedValue::from(&f.value)))
                    .collect(),
            })
        }),
        Uplink::CommandResult(r) => {
            let payload = (!r.payload.is_empty()).then(|| fields_json(&r.payload));
            let (ok, error, error_code) = match r.status {
                CommandStatus::Ok => (true, None, None),
                CommandStatus::Error(code) => {
                    (false, Some(format!("device error code {code}")), Some(code))
                }
            };
            Ok(Ingest::CommandResult(CommandResultIn {
                device: device.to_owned(),
                transport,
                id: r.command_id,
                ok,
                result: payload,
                error,
                error_code,
                received_ms,
            }))
        }
        #[allow(unreachable_patterns)]
        _ => Err((Rejection::Unsupported, "unknown uplink message".into())),
    }
}

/// The item that settles a JSON reading refused for its content, when the payload names its seq
/// (see [`json::reading_id`]); `None` for any other refusal (too large to read, not an envelope
/// with a seq): such a message names no reading to settle.
pub fn rejected_json(
    device: &str,
    payload: &[u8],
    reason: Rejection,
    received_ms: u64,
) -> Option<Ingest> {
    let id = (reason == Rejection::BadPayload).then(|| json::reading_id(payload))??;
    Some(rejected(
        device,
        Transport::Mqtt,
        Wire::Json,
        id,
        received_ms,
    ))
}

/// The item that settles binary telemetry refused for its content (see [`Uplink::reading_id`]),
/// like [`rejected_json`].
pub fn rejected_uplink(
    device: &str,
    bytes: &[u8],
    transport: Transport,
    reason: Rejection,
    received_ms: u64,
) -> Option<Ingest> {
    let id = (reason == Rejection::BadPayload).then(|| Uplink::reading_id(bytes))??;
    Some(rejected(device, transport, Wire::Binary, id, received_ms))
}

fn rejected(
    device: &str,
    transport: Transport,
    wire: Wire,
    id: device_protocol::ReadingId,
    received_ms: u64,
) -> Ingest {
    Ingest::Rejected(RejectedReading {
        device: device.to_owned(),
        transport,
        wire,
        seq: id.seq,
        boot: id.boot,
        received_ms,
    })
}

/// Fields as a JSON object, as text.
fn fields_json(fields: &device_protocol::Fields<'_>) -> String {
    let object: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|f| {
            let value = match OwnedValue::from(&f.value) {
                OwnedValue::F64(x) => serde_json::json!(x),
                OwnedValue::I64(x) => serde_json::json!(x),
                OwnedValue::Bool(x) => serde_json::json!(x),
                OwnedValue::Str(x) => serde_json::json!(x),
            };
            (f.name.to_owned(), value)
        })
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// Decodes a JSON command result published on `devices/{device}/command-results`.
pub fn json_command_result(
    device: &str,
    payload: &[u8],
    max_payload: usize,
    received_ms: u64,
) -> Result<Ingest, (Rejection, String)> {
    check_size(payload, max_payload)?;
    let r =
        json::parse_command_result(payload).map_err(|e| (Rejection::BadPayload, e.to_string()))?;
    Ok(Ingest::CommandResult(CommandResultIn {
        device: device.to_owned(),
        transport: Transport::Mqtt,
        id: r.id,
        ok: r.ok,
        result: r.result.map(|v| v.to_string()),
        error: r.error,
        error_code: None,
        received_ms,
    }))
}

/// Decodes `online` or `offline` published on `devices/{device}/status` (by the device, or by the
/// broker as the device's last will).
pub fn status(
    device: &str,
    payload: &[u8],
    received_ms: u64,
) -> Result<Ingest, (Rejection, String)> {
    let online = match payload.trim_ascii() {
        b"online" => true,
        b"offline" => false,
        _ => {
            return Err((
                Rejection::BadPayload,
                "a status is `online` or `offline`".into(),
            ));
        }
    };
    Ok(Ingest::Status(DeviceStatus {
        device: device.to_owned(),
        transport: Transport::Mqtt,
        online,
        reason: "reported",
        received_ms,
    }))
}

/// Decodes a binary uplink published on `devices/{device}/up`; a `Hello` must name that device.
pub fn mqtt_uplink(
    device: &str,
    payload: &[u8],
    max_payload: usize,
    received_ms: u64,
) -> Result<Ingest, (Rejection, String)> {
    // The same limit as JSON: trailing bytes (fields of a newer sender) are allowed, a megabyte
    // of them is not.
    check_size(payload, max_payload)?;
    let message = Uplink::decode(payload).map_err(|e| (Rejection::BadPayload, e.to_string()))?;
    if let Uplink::Hello(hello) = &message
        && hello.device_id != device
    {
        return Err((
            Rejection::BadPayload,
            format!("Hello names another device on {device}'s topic"),
        ));
    }
    uplink(&message, device, Transport::Mqtt, received_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use device_protocol::{Field, Fields, Hello, Telemetry, Value};

    #[test]
    fn topics_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_topic("devices/gh-1/telemetry"),
            Ok(Topic::Telemetry("gh-1"))
        );
        assert_eq!(parse_topic("devices/gh-1/up"), Ok(Topic::Up("gh-1")));
        assert_eq!(parse_topic("device/x/telemetry"), Err(Rejection::BadTopic));
        assert_eq!(parse_topic("devices/x/down"), Err(Rejection::BadTopic));
        assert_eq!(
            parse_topic("devices/x/telemetry/more"),
            Err(Rejection::BadTopic)
        );
        assert_eq!(
            parse_topic("devices/x/y/telemetry"),
            Err(Rejection::BadDeviceId)
        );
        assert_eq!(
            parse_topic("devices/x y/telemetry"),
            Err(Rejection::BadDeviceId)
        );
        assert_eq!(
            parse_topic("devices//telemetry"),
            Err(Rejection::BadDeviceId)
        );
        let long = format!("devices/{}/telemetry", "a".repeat(65));
        assert_eq!(parse_topic(&long), Err(Rejection::BadDeviceId));
    }

    #[test]
    fn flat_and_envelope_forms_become_readings() {
        let r = json_telemetry("gh-1", br#"{"temp":21.5,"door":false}"#, 1024, 77).unwrap();
        assert_eq!((r.seq, r.timestamp_ms, r.received_ms), (None, None, 77));
        assert!(r.metrics.contains(&("temp".into(), OwnedValue::F64(21.5))));
        assert!(
            r.metrics
                .contains(&("door".into(), OwnedValue::Bool(false)))
        );
        let r = json_telemetry(
            "gh-1",
            br#"{"seq":7,"ts":"2026-11-21T10:00:00Z","metrics":{"temp":1}}"#,
            1024,
            77,
        )
        .unwrap();
        assert_eq!(r.seq, Some(7));
        assert_eq!(r.timestamp_ms, Some(1_795_255_200_000));
        assert_eq!(r.metrics, vec![("temp".into(), OwnedValue::I64(1))]);
    }

    #[test]
    fn bad_sizes_and_payloads_are_rejected_with_a_reason() {
        assert_eq!(
            json_telemetry("x", &[b' '; 65], 64, 0).unwrap_err().0,
            Rejection::TooLarge
        );
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"{}",
            b"{\"a\":null}",
            b"{\"a\":{\"b\":1}}",
            b"\"s\"",
        ] {
            let (reason, detail) = json_telemetry("x", bad, 64, 0).unwrap_err();
            assert_eq!(
                reason,
                Rejection::BadPayload,
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(!detail.is_empty());
        }
    }

    #[test]
    fn timestamps_rfc_3339_cannot_write_are_rejected() {
        let last = format!(r#"{{"seq":1,"ts":{MAX_TIMESTAMP_MS},"metrics":{{"t":1}}}}"#);
        let r = json_telemetry("x", last.as_bytes(), 1024, 0).unwrap();
        assert_eq!(r.timestamp_ms, Some(MAX_TIMESTAMP_MS));
        assert_eq!(
            crate::clock::rfc3339(MAX_TIMESTAMP_MS),
            "9999-12-31T23:59:59.999Z"
        );
        for ts in [MAX_TIMESTAMP_MS + 1, u64::MAX] {
            let late = format!(r#"{{"seq":1,"ts":{ts},"metrics":{{"t":1}}}}"#);
            let (reason, detail) = json_telemetry("x", late.as_bytes(), 1024, 0).unwrap_err();
            assert_eq!(reason, Rejection::BadPayload);
            assert!(detail.contains("9999"), "{detail}");
        }
        let mut readings = Fields::new();
        readings
            .push(Field {
                name: "t",
                value: Value::I64(1),
            })
            .unwrap();
        let late = Uplink::Telemetry(Telemetry {
            seq: 1,
            timestamp_ms: Some(u64::MAX),
            readings,
            boot: None,
        });
        assert_eq!(
            uplink(&late, "x", Transport::Serial, 0).unwrap_err().0,
            Rejection::BadPayload
        );
    }

    #[test]
    fn binary_uplinks_become_readings_and_hellos() {
        let mut readings = Fields::new();
        readings
            .push(Field {
                name: "t",
                value: Value::F64(1.5),
            })
            .unwrap();
        let telemetry = Uplink::Telemetry(Telemetry {
            seq: 9,
            timestamp_ms: Some(5),
            readings,
            boot: None,
        });
        let bytes = telemetry.to_vec().unwrap();
        match mqtt_uplink("b-1", &bytes, 1024, 7).unwrap() {
            Ingest::Reading(r) => {
                assert_eq!(
                    (r.seq, r.timestamp_ms, r.received_ms),
                    (Some(9), Some(5), 7)
                );
                assert_eq!(r.metrics, vec![("t".into(), OwnedValue::F64(1.5))]);
            }
            other => panic!("{other:?}"),
        }
        let hello = Uplink::Hello(Hello {
            device_id: "b-1",
            firmware: "2.0",
            protocol_version: 1,
            boot: None,
        });
        let bytes = hello.to_vec().unwrap();
        assert!(
            matches!(mqtt_uplink("b-1", &bytes, 1024, 7), Ok(Ingest::Hello(h)) if h.firmware == "2.0")
        );
        assert_eq!(
            mqtt_uplink("b-2", &bytes, 1024, 7).unwrap_err().0,
            Rejection::BadPayload
        );
        assert_eq!(
            mqtt_uplink("b-1", b"\xff\xff", 1024, 7).unwrap_err().0,
            Rejection::BadPayload
        );
        // Trailing bytes are allowed (a newer sender's fields), but not past the payload limit.
        let mut long = bytes.clone();
        long.extend_from_slice(&[0u8; 16]);
        assert!(mqtt_uplink("b-1", &long, 1024, 7).is_ok());
        long.resize(1025, 0);
        assert_eq!(
            mqtt_uplink("b-1", &long, 1024, 7).unwrap_err().0,
            Rejection::TooLarge
        );
    }
}
