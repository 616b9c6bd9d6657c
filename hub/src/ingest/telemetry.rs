//! Turns an MQTT topic and payload into a reading for the store, or the reason to skip it.
//! Pure functions: no I/O, so every rule is tested here.

use device_protocol::json;

use super::Rejection;
use crate::store::{NewReading, Transport};

/// The topic filter of JSON telemetry.
pub const TELEMETRY_FILTER: &str = "devices/+/telemetry";

/// The device id of a `devices/{id}/telemetry` topic.
pub fn telemetry_device(topic: &str) -> Result<&str, Rejection> {
    let rest = topic.strip_prefix("devices/").ok_or(Rejection::BadTopic)?;
    let id = rest.strip_suffix("/telemetry").ok_or(Rejection::BadTopic)?;
    if device_protocol::is_valid_id(id) {
        Ok(id)
    } else {
        Err(Rejection::BadDeviceId)
    }
}

/// Decodes JSON telemetry published on `topic`.
pub fn decode(
    topic: &str,
    payload: &[u8],
    max_payload: usize,
    received_ms: u64,
) -> Result<NewReading, (Rejection, String)> {
    let device = telemetry_device(topic).map_err(|r| (r, String::new()))?;
    if payload.len() > max_payload {
        return Err((
            Rejection::TooLarge,
            format!("{} bytes, limit {max_payload}", payload.len()),
        ));
    }
    let telemetry =
        json::parse_telemetry(payload).map_err(|e| (Rejection::BadPayload, e.to_string()))?;
    Ok(NewReading {
        device: device.to_owned(),
        transport: Transport::Mqtt,
        seq: telemetry.seq,
        timestamp_ms: telemetry.timestamp_ms,
        received_ms,
        metrics: telemetry.metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use device_protocol::OwnedValue;

    #[test]
    fn flat_and_envelope_forms_become_readings() {
        let r = decode(
            "devices/gh-1/telemetry",
            br#"{"temp":21.5,"door":false}"#,
            1024,
            77,
        )
        .unwrap();
        assert_eq!(r.device, "gh-1");
        assert_eq!((r.seq, r.timestamp_ms, r.received_ms), (None, None, 77));
        assert!(r.metrics.contains(&("temp".into(), OwnedValue::F64(21.5))));
        assert!(
            r.metrics
                .contains(&("door".into(), OwnedValue::Bool(false)))
        );

        let r = decode(
            "devices/gh-1/telemetry",
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
    fn bad_topics_ids_sizes_and_payloads_are_rejected_with_a_reason() {
        let ok = br#"{"t":1}"#;
        assert_eq!(
            decode("device/x/telemetry", ok, 64, 0).unwrap_err().0,
            Rejection::BadTopic
        );
        assert_eq!(
            decode("devices/x/telemetry/more", ok, 64, 0).unwrap_err().0,
            Rejection::BadTopic
        );
        assert_eq!(
            decode("devices/x y/telemetry", ok, 64, 0).unwrap_err().0,
            Rejection::BadDeviceId
        );
        assert_eq!(
            decode("devices//telemetry", ok, 64, 0).unwrap_err().0,
            Rejection::BadDeviceId
        );
        let long = format!("devices/{}/telemetry", "a".repeat(65));
        assert_eq!(
            decode(&long, ok, 64, 0).unwrap_err().0,
            Rejection::BadDeviceId
        );
        assert_eq!(
            decode("devices/x/telemetry", &[b' '; 65], 64, 0)
                .unwrap_err()
                .0,
            Rejection::TooLarge
        );
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"{}",
            b"{\"a\":null}",
            b"{\"a\":{\"b\":1}}",
            b"\"str\"",
        ] {
            let (reason, detail) = decode("devices/x/telemetry", bad, 64, 0).unwrap_err();
            assert_eq!(
                reason,
                Rejection::BadPayload,
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(!detail.is_empty());
        }
    }
}
