//! One simulated device: its values, its seq, and its MQTT session.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

/// What one device does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub qos: QoS,
    pub interval: Duration,
    pub count: u64,
    pub deadline: Option<Instant>,
    pub seed: u64,
}

/// Plausible sensor values that change a little with every reading.
pub struct Sensors {
    rng: SmallRng,
    temperature: f64,
    humidity: f64,
    battery: f64,
    door_open: bool,
}

impl Sensors {
    pub fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        Sensors {
            temperature: rng.random_range(18.0..24.0),
            humidity: rng.random_range(35.0..60.0),
            battery: rng.random_range(80.0..100.0),
            door_open: false,
            rng,
        }
    }

    /// The next reading's metrics, as a JSON object.
    pub fn next(&mut self) -> serde_json::Value {
        self.temperature = (self.temperature + self.rng.random_range(-0.2..0.2)).clamp(-20.0, 50.0);
        self.humidity = (self.humidity + self.rng.random_range(-0.5..0.5)).clamp(5.0, 95.0);
        self.battery = (self.battery - self.rng.random_range(0.0..0.01)).max(0.0);
        if self.rng.random_bool(0.02) {
            self.door_open = !self.door_open;
        }
        let round = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
        serde_json::json!({
            "temperature": round(self.temperature, 2),
            "humidity": round(self.humidity, 1),
            "battery": round(self.battery, 2),
            "door": self.door_open,
        })
    }
}

fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Civil date from days since the epoch (Howard Hinnant's algorithm), to avoid a date crate.
    let secs = d.as_secs() as i64;
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
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Runs the device; returns how many readings it published, once the broker has accepted them all
/// (PUBACK for QoS 1, written to the socket for QoS 0).
pub async fn run(plan: Plan) -> anyhow::Result<u64> {
    let mut options = MqttOptions::new(plan.id.clone(), plan.host.clone(), plan.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let topic = format!("devices/{}/telemetry", plan.id);
    let mut sensors = Sensors::new(plan.seed);

    // Wait for the connection, so a wrong address fails fast and clearly.
    let connect = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .context("timed out connecting")?
        .with_context(|| format!("{}: cannot connect to {}:{}", plan.id, plan.host, plan.port))?;

    // The event loop is polled by its own task alone: polling is not cancel-safe, so it is never
    // raced against the ticker. It counts what the broker accepted.
    let (accepted_tx, mut accepted_rx) = tokio::sync::watch::channel(0u64);
    let qos = plan.qos;
    let id = plan.id.clone();
    let poller = tokio::spawn(async move {
        let mut accepted = 0u64;
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(accepted),
                Ok(event) => {
                    accepted += counts(&event, qos);
                    accepted_tx.send_replace(accepted);
                }
                Err(e) => return Err(anyhow::anyhow!("{id}: connection lost: {e}")),
            }
        }
    });

    let mut ticker = tokio::time::interval(plan.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    while !((plan.count > 0 && seq >= plan.count)
        || plan.deadline.is_some_and(|d| Instant::now() >= d))
    {
        ticker.tick().await;
        let payload =
            serde_json::json!({ "seq": seq, "ts": now_rfc3339(), "metrics": sensors.next() });
        client
            .publish(topic.clone(), plan.qos, false, payload.to_string())
            .await
            .with_context(|| format!("{}: publish", plan.id))?;
        seq += 1;
        if poller.is_finished() {
            break;
        }
    }
    let all_accepted = accepted_rx.wait_for(|n| *n >= seq);
    if tokio::time::timeout(Duration::from_secs(30), all_accepted)
        .await
        .is_err()
    {
        bail!(
            "{}: the broker did not acknowledge every reading within 30 s",
            plan.id
        );
    }
    let _ = client.disconnect().await;
    // Every reading was acknowledged; how the connection then ends does not change that.
    let _ = tokio::time::timeout(Duration::from_secs(5), poller).await;
    Ok(seq)
}

fn counts(event: &Event, qos: QoS) -> u64 {
    match (event, qos) {
        (Event::Incoming(Packet::PubAck(_)), QoS::AtLeastOnce) => 1,
        (Event::Outgoing(Outgoing::Publish(_)), QoS::AtMostOnce) => 1,
        _ => 0,
    }
}
