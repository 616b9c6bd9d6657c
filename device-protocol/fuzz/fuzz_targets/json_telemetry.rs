//! Parses arbitrary bytes as JSON telemetry (and as a command result). Checks: no panic, and what
//! is accepted keeps the documented invariants.
#![no_main]

use device_protocol::json::{MAX_JSON_METRICS, parse_command_result, parse_telemetry};
use device_protocol::{MAX_STR_LEN, OwnedValue, is_valid_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(telemetry) = parse_telemetry(data) {
        assert!(!telemetry.metrics.is_empty());
        assert!(telemetry.metrics.len() <= MAX_JSON_METRICS);
        // Sorted by name, names unique.
        assert!(telemetry.metrics.windows(2).all(|w| w[0].0 < w[1].0));
        for (name, value) in &telemetry.metrics {
            assert!(is_valid_id(name));
            match value {
                OwnedValue::F64(x) => assert!(x.is_finite()),
                OwnedValue::Str(s) => assert!(s.len() <= MAX_STR_LEN),
                OwnedValue::I64(_) | OwnedValue::Bool(_) => {}
            }
        }
    }
    if let Ok(result) = parse_command_result(data) {
        assert_eq!(result.ok, result.error.is_none());
    }
});
