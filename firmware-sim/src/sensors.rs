//! Plausible sensor values, the telemetry message built from them, and its JSON form.
//!
//! A reading is kept (in the outbox, on the wire) as the postcard bytes of an
//! [`Uplink::Telemetry`]: the binary and serial transports send those bytes as they are, the JSON
//! transport turns them into the envelope `{"seq":n,"boot":b,"ts":"<RFC 3339>","metrics":{..}}`
//! (`boot` with `--boot`, as in the `Hello` and the telemetry of a binary device).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use device_protocol::{Field, Fields, Hello, PROTOCOL_VERSION, Telemetry, Uplink, Value};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Plausible sensor values that change a little with every reading: a temperature and humidity
/// that drift, a battery that drains, a door switch that sometimes flips.
pub struct Sensors {
    rng: SmallRng,
    /// The boot number the readings count in (`--boot`).
    boot: Option<u32>,
    temperature: f64,
    humidity: f64,
    battery: f64,
    door_open: bool,
}

impl Sensors {
    pub fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        Sensors {
            boot: None,
            temperature: rng.random_range(18.0..24.0),
            humidity: rng.random_range(35.0..60.0),
            battery: rng.random_range(80.0..100.0),
            door_open: false,
            rng,
        }
    }

    /// The same sensors, whose readings count in `boot`.
    pub fn with_boot(mut self, boot: Option<u32>) -> Self {
        self.boot = boot;
        self
    }

    /// The next values: temperature (°C), humidity (%), battery (%), door (open).
    fn next_values(&mut self) -> [(&'static str, Value<'static>); 4] {
        self.temperature = (self.temperature + self.rng.random_range(-0.2..0.2)).clamp(-20.0, 50.0);
        self.humidity = (self.humidity + self.rng.random_range(-0.5..0.5)).clamp(5.0, 95.0);
        self.battery = (self.battery - self.rng.random_range(0.0..0.01)).max(0.0);
        if self.rng.random_bool(0.02) {
            self.door_open = !self.door_open;
        }
        let round = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
        [
            ("temperature", Value::F64(round(self.temperature, 2))),
            ("humidity", Value::F64(round(self.humidity, 1))),
            ("battery", Value::F64(round(self.battery, 2))),
            ("door", Value::Bool(self.door_open)),
        ]
    }

    /// The next reading as the postcard bytes of an `Uplink::Telemetry`.
    pub fn reading(&mut self, seq: u32, timestamp_ms: u64) -> Vec<u8> {
        let mut readings = Fields::new();
        for (name, value) in self.next_values() {
            // Four fields always fit in MAX_FIELDS.
            let _ = readings.push(Field { name, value });
        }
        Uplink::Telemetry(Telemetry {
            seq,
            timestamp_ms: Some(timestamp_ms),
            readings,
            boot: self.boot,
        })
        .to_vec()
        .expect("a simulated reading is a valid message")
    }
}

/// The postcard bytes of this simulator's `Hello`, with its `boot` (`--boot`).
pub fn hello_bytes(device_id: &str, boot: Option<u32>) -> anyhow::Result<Vec<u8>> {
    let firmware = concat!("firmware-sim/", env!("CARGO_PKG_VERSION"));
    Uplink::Hello(Hello {
        device_id,
        firmware,
        protocol_version: PROTOCOL_VERSION,
        boot,
    })
    .to_vec()
    .map_err(|e| anyhow::anyhow!("{device_id}: cannot build a Hello: {e}"))
}

/// The seq of a telemetry message's postcard bytes.
#[cfg(test)]
pub fn telemetry_seq(message: &[u8]) -> Option<u32> {
    match Uplink::decode(message) {
        Ok(Uplink::Telemetry(t)) => Some(t.seq),
        _ => None,
    }
}

/// The JSON envelope of a telemetry message: `{"seq":n,"boot":b,"ts":"..","metrics":{..}}`.
pub fn telemetry_json(message: &[u8]) -> anyhow::Result<Vec<u8>> {
    let Uplink::Telemetry(t) = Uplink::decode(message).context("decoding a stored reading")? else {
        bail!("a stored message is not telemetry");
    };
    let mut metrics = serde_json::Map::new();
    for field in &t.readings {
        let value = match field.value {
            Value::F64(x) => serde_json::Number::from_f64(x)
                .map(serde_json::Value::Number)
                .context("a non-finite reading")?,
            Value::I64(i) => serde_json::Value::from(i),
            Value::Bool(b) => serde_json::Value::Bool(b),
            Value::Str(s) => serde_json::Value::from(s),
        };
        metrics.insert(field.name.to_owned(), value);
    }
    let mut envelope = serde_json::Map::new();
    envelope.insert("seq".into(), t.seq.into());
    if let Some(boot) = t.boot {
        envelope.insert("boot".into(), boot.into());
    }
    if let Some(ms) = t.timestamp_ms {
        envelope.insert("ts".into(), rfc3339(ms).into());
    }
    envelope.insert("metrics".into(), metrics.into());
    Ok(serde_json::to_vec(&envelope)?)
}

/// The device timestamps of a device's readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamps {
    /// The clock when the reading is made.
    Now,
    /// `--backfill`: seq `i` of `count` gets `start_ms - span_ms + i * span_ms / count`, so the
    /// readings are spread evenly over `[start_ms - span_ms, start_ms)`.
    Backfill {
        start_ms: u64,
        span_ms: u64,
        count: u64,
    },
}

impl Timestamps {
    /// The device timestamp of the reading with this seq.
    pub fn at(&self, seq: u64) -> u64 {
        match *self {
            Timestamps::Now => now_ms(),
            Timestamps::Backfill {
                start_ms,
                span_ms,
                count,
            } => {
                let count = u128::from(count.max(1));
                let i = u128::from(seq).min(count - 1);
                let step = i * u128::from(span_ms) / count;
                // step < span_ms, so this fits in a u64.
                let step = u64::try_from(step).unwrap_or(span_ms);
                start_ms.saturating_sub(span_ms).saturating_add(step)
            }
        }
    }
}

/// Parses a duration like `24h`, `90m`, `30s`, `7d` or `500ms` into milliseconds.
pub fn parse_span(text: &str) -> Option<u64> {
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

/// Now, in unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, e.g. `2026-11-21T10:00:00.000Z`.
pub fn rfc3339(unix_ms: u64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm), to avoid a date crate.
    let secs = (unix_ms / 1000) as i64;
    let millis = unix_ms % 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_255_200_000), "2026-11-21T10:00:00.000Z");
    }

    #[test]
    fn a_reading_is_telemetry_and_its_json_is_the_envelope_the_hub_parses() {
        let mut sensors = Sensors::new(7);
        let bytes = sensors.reading(42, 1_795_255_200_000);
        assert_eq!(telemetry_seq(&bytes), Some(42));
        let json = telemetry_json(&bytes).unwrap();
        let parsed = device_protocol::json::parse_telemetry(&json).unwrap();
        assert_eq!(parsed.seq, Some(42));
        assert_eq!(parsed.timestamp_ms, Some(1_795_255_200_000));
        let names: Vec<&str> = parsed.metrics.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["battery", "door", "humidity", "temperature"]);
    }

    #[test]
    fn with_a_boot_the_reading_and_its_envelope_carry_it() {
        let mut sensors = Sensors::new(7).with_boot(Some(3));
        let bytes = sensors.reading(0, 1_795_255_200_000);
        let json = telemetry_json(&bytes).unwrap();
        let parsed = device_protocol::json::parse_telemetry(&json).unwrap();
        assert_eq!((parsed.seq, parsed.boot), (Some(0), Some(3)));
        let hello = hello_bytes("d", Some(3)).unwrap();
        match Uplink::decode(&hello).unwrap() {
            Uplink::Hello(h) => assert_eq!((h.boot, h.protocol_version), (Some(3), 2)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backfill_spreads_the_readings_evenly_over_the_span_before_the_start() {
        let day = 86_400_000;
        let start = 1_795_255_200_000;
        let t = Timestamps::Backfill {
            start_ms: start,
            span_ms: day,
            count: 4,
        };
        let ts: Vec<u64> = (0..4).map(|i| t.at(i)).collect();
        assert_eq!(
            ts,
            [
                start - day,
                start - day * 3 / 4,
                start - day / 2,
                start - day / 4
            ]
        );
        let million = Timestamps::Backfill {
            start_ms: start,
            span_ms: day,
            count: 1_000_000,
        };
        assert_eq!(million.at(0), start - day);
        assert_eq!(million.at(500_000), start - day / 2);
        assert!(million.at(999_999) < start && million.at(999_999) >= start - 87);
        // Strictly increasing while count <= span_ms.
        assert!((1..1000).all(|i| million.at(i) > million.at(i - 1)));
    }

    #[test]
    fn spans_parse_with_units() {
        assert_eq!(parse_span("24h"), Some(86_400_000));
        assert_eq!(parse_span("90m"), Some(5_400_000));
        assert_eq!(parse_span("30s"), Some(30_000));
        assert_eq!(parse_span("7d"), Some(604_800_000));
        assert_eq!(parse_span("500ms"), Some(500));
        for bad in ["", "24", "h", "1.5h", "-1h", "1w", "99999999999999999999d"] {
            assert_eq!(parse_span(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_values() {
        let (mut a, mut b) = (Sensors::new(3), Sensors::new(3));
        for seq in 0..50 {
            assert_eq!(a.reading(seq, 1), b.reading(seq, 1));
        }
    }
}
