//! A simulated device for load: one MQTT connection, JSON telemetry (`{"seq":n,"ts":..,
//! "metrics":{..}}` on `devices/{id}/telemetry`) or binary postcard `Uplink::Telemetry` (on
//! `devices/{id}/up`), as fast as allowed by its limits:
//!
//! - `rate`: readings per second of this device (0: no limit);
//! - `window`: readings not yet covered by the hub's cumulative ack (`{"seq":n}` on
//!   `devices/{id}/ack`, `Ack` on `devices/{id}/down`), as a device keeps them; 0 for no limit
//!   (mosquitto alone never acks). Acks are best effort (a lost reading also holds the
//!   cumulative ack back), so after `stall` without progress the device sends its oldest
//!   unacknowledged reading again, as the README asks of devices, and counts a stall;
//! - `inflight`: QoS 1 PUBLISHes not yet PUBACKed by the broker.
//!
//! Nothing else is retransmitted: a reading lost without a stall after it stays lost and shows in
//! the count, and every resend shows in `stalls` (and as a duplicate in the hub's counters when it
//! was stored already).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use device_protocol::{Downlink, Field, Fields, Hello, PROTOCOL_VERSION, Telemetry, Uplink, Value};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::Packet;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::mqtt::{self, KEEP_ALIVE};

/// After the publishers stop, how long a device keeps sending its unacknowledged readings again.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// How readings are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// JSON telemetry envelope on `devices/{id}/telemetry`.
    Json,
    /// postcard `Uplink::Telemetry` on `devices/{id}/up`.
    Binary,
    /// A Tasmota sensor's `{"Time":..,"AM2301":{..},..}` on `tele/{id}/SENSOR` (a mapped topic:
    /// the hub needs `[[mqtt.map]] preset = "tasmota"`). No seq, so no hub ack: `--window 0`.
    Tasmota,
}

/// The CLI spelling of a value.
pub trait Name {
    /// Lowercase name.
    fn name(&self) -> &'static str;
}

impl Name for Format {
    fn name(&self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Binary => "binary",
            Format::Tasmota => "tasmota",
        }
    }
}

/// What every device of a run does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Encoding.
    pub format: Format,
    /// QoS of the PUBLISHes.
    pub qos: QoS,
    /// Readings per second per device; 0 for as fast as the limits allow.
    pub rate: f64,
    /// Readings out without the hub's ack; 0 for no limit (and no ack subscription).
    pub window: u64,
    /// QoS 1 PUBLISHes out without PUBACK.
    pub inflight: u64,
    /// No ack progress for this long: send the oldest unacknowledged reading again.
    pub stall: Duration,
    /// Most PUBLISHes written in one syscall.
    pub chunk: u64,
    /// Add a metric `sent_us` (unix µs when the reading was encoded), for latency probes.
    pub sent_us: bool,
    /// Readings out, all devices together, that the consumer ([`Totals::received`]) has not
    /// received yet; 0 for no limit. The broker-alone baseline's counterpart of the ack window.
    pub total_window: u64,
}

/// Counters summed over every device of a run.
#[derive(Debug, Default)]
pub struct Totals {
    /// PUBLISHes written to the socket.
    pub published: AtomicU64,
    /// Readings covered by the hub's acks.
    pub acked: AtomicU64,
    /// PUBACKs from the broker.
    pub pubacks: AtomicU64,
    /// Times a device, without acks for `stall`, sent its oldest unacknowledged reading again.
    pub stalls: AtomicU64,
    /// Devices whose connection failed during the run.
    pub failed: AtomicU64,
    /// What the consumer received, kept up to date by whoever counts it (with `total_window`).
    pub received: AtomicU64,
    /// Woken when `received` moves.
    pub credit: Notify,
}

/// A connection's state shared by its reader and writer.
#[derive(Debug, Default)]
struct Shared {
    /// Per device (lane): readings covered by the hub's cumulative ack (its seq + 1).
    acked: Vec<AtomicU64>,
    pubacks: AtomicU64,
    progress: Notify,
}

/// One device on a connection.
struct Lane {
    id: String,
    topic: String,
    seq: u64,
    last_acked: u64,
    last_progress: Instant,
}

/// A connection with the devices it publishes for (one, unless the broker limits connections),
/// ready to run.
pub struct Device {
    name: String,
    lanes: Vec<Lane>,
    writer: mqtt::Writer,
    shared: Arc<Shared>,
}

impl Device {
    /// Connects with client id `ids[0]` as the devices `ids`, subscribes to their ack topics when
    /// the plan waits for acks, and (binary) sends their `Hello`s. Its reader runs from now on.
    pub async fn connect(
        addr: SocketAddr,
        ids: &[String],
        plan: &Plan,
        totals: Arc<Totals>,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<Device> {
        let name = ids.first().context("a connection without devices")?.clone();
        let (up, ack) = match plan.format {
            Format::Json | Format::Tasmota => ("telemetry", "ack"),
            Format::Binary => ("up", "down"),
        };
        let up_topic = |id: &str| match plan.format {
            Format::Tasmota => format!("tele/{id}/SENSOR"),
            Format::Json | Format::Binary => format!("devices/{id}/{up}"),
        };
        let subscribe: Vec<String> = if plan.window > 0 {
            ids.iter().map(|id| format!("devices/{id}/{ack}")).collect()
        } else {
            vec![]
        };
        let mqtt::Connection { mut reader, writer } =
            mqtt::connect(addr, &name, &subscribe).await?;
        let shared = Arc::new(Shared {
            acked: ids.iter().map(|_| AtomicU64::new(0)).collect(),
            ..Shared::default()
        });
        let lanes: Vec<Lane> = ids
            .iter()
            .map(|id| Lane {
                id: id.clone(),
                topic: up_topic(id),
                seq: 0,
                last_acked: 0,
                last_progress: Instant::now(),
            })
            .collect();
        let mut device = Device {
            name: name.clone(),
            lanes,
            writer,
            shared: shared.clone(),
        };
        if plan.format == Format::Binary {
            for lane in &device.lanes {
                let mut buf = [0u8; 256];
                let hello = Uplink::Hello(Hello {
                    device_id: &lane.id,
                    firmware: "hub-bench",
                    protocol_version: PROTOCOL_VERSION,
                    boot: None,
                })
                .encode(&mut buf)
                .map_err(|e| anyhow::anyhow!("encoding Hello: {e:?}"))?;
                device.writer.publish(&lane.topic, QoS::AtMostOnce, hello)?;
            }
            device.writer.flush().await?;
        }
        let format = plan.format;
        let lane_of: std::collections::HashMap<String, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("devices/{id}/{ack}"), i))
            .collect();
        tokio::spawn(async move {
            loop {
                match reader.next().await {
                    Ok(Packet::PubAck(_)) => {
                        shared.pubacks.fetch_add(1, Ordering::Relaxed);
                        totals.pubacks.fetch_add(1, Ordering::Relaxed);
                        shared.progress.notify_one();
                    }
                    Ok(Packet::Publish(p)) => {
                        let lane = lane_of.get(p.topic.as_str()).copied();
                        if let (Some(lane), Some(seq)) = (lane, ack_seq(format, &p.payload)) {
                            let covered = u64::from(seq) + 1;
                            let before = shared.acked[lane].fetch_max(covered, Ordering::Relaxed);
                            if covered > before {
                                totals.acked.fetch_add(covered - before, Ordering::Relaxed);
                                shared.progress.notify_one();
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !stop.load(Ordering::Relaxed) {
                            eprintln!("{name}: {e:#}");
                            totals.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        // Wake the writer so it sees the end.
                        shared.progress.notify_one();
                        return;
                    }
                }
            }
        });
        Ok(device)
    }

    /// Publishes from `start` until `stop`, within the plan's limits; then, waiting for acks,
    /// sends no new readings but keeps sending unacknowledged ones again, as a device with an
    /// outbox does, until every reading is acknowledged or [`DRAIN_LIMIT`] has passed.
    pub async fn run(
        mut self,
        plan: Plan,
        totals: Arc<Totals>,
        start: Instant,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        let mut published: u64 = 0;
        let mut last_write = Instant::now();
        let mut payload = Vec::with_capacity(256);
        let qos1 = plan.qos != QoS::AtMostOnce;
        let mut stopped_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
                stopped_at = Some(now);
            }
            if let Some(at) = stopped_at {
                let all_acked =
                    plan.window == 0
                        || self.lanes.iter().enumerate().all(|(i, lane)| {
                            self.shared.acked[i].load(Ordering::Relaxed) >= lane.seq
                        });
                if all_acked || now - at > DRAIN_LIMIT {
                    break;
                }
            }
            let timestamp_ms = crate::now_ms();
            // QoS 1: the connection's PUBLISHes without PUBACK.
            let mut room = if qos1 {
                let out = published.saturating_sub(self.shared.pubacks.load(Ordering::Relaxed));
                plan.inflight.saturating_sub(out)
            } else {
                u64::MAX
            };
            if plan.total_window > 0 {
                let out = totals
                    .published
                    .load(Ordering::Relaxed)
                    .saturating_sub(totals.received.load(Ordering::Relaxed));
                room = room.min(plan.total_window.saturating_sub(out));
            }
            let mut sent = 0;
            // When the rate is what holds every lane back: the earliest moment one may send.
            let mut next_due: Option<Duration> = None;
            for (i, lane) in self.lanes.iter_mut().enumerate() {
                let mut n = if stopped_at.is_some() {
                    0
                } else {
                    plan.chunk.min(room)
                };
                if plan.rate > 0.0 {
                    let due = ((now - start).as_secs_f64() * plan.rate) as u64 + 1;
                    let allowed = due.saturating_sub(lane.seq);
                    if allowed == 0 {
                        let at = Duration::from_secs_f64((lane.seq + 1) as f64 / plan.rate);
                        next_due = Some(next_due.map_or(at, |d| d.min(at)));
                    }
                    n = n.min(allowed);
                }
                if plan.window > 0 {
                    let acked = self.shared.acked[i].load(Ordering::Relaxed);
                    if acked != lane.last_acked {
                        lane.last_acked = acked;
                        lane.last_progress = now;
                    }
                    if lane.seq > acked && now - lane.last_progress > plan.stall {
                        // As a device does: the oldest unacknowledged reading again. Stored
                        // already, the hub answers it with the ack (a lost ack); lost on the
                        // way, it is stored now.
                        totals.stalls.fetch_add(1, Ordering::Relaxed);
                        payload.clear();
                        encode(&plan, acked, timestamp_ms, &mut payload)?;
                        self.writer.publish(&lane.topic, plan.qos, &payload)?;
                        lane.last_progress = now;
                        if qos1 {
                            published += 1;
                            room = room.saturating_sub(1);
                        }
                    }
                    n = n.min(plan.window.saturating_sub(lane.seq - acked.min(lane.seq)));
                }
                for k in 0..n {
                    payload.clear();
                    encode(&plan, lane.seq + k, timestamp_ms, &mut payload)?;
                    self.writer.publish(&lane.topic, plan.qos, &payload)?;
                }
                lane.seq += n;
                sent += n;
                if qos1 {
                    published += n;
                    room -= n;
                }
            }
            if sent > 0 {
                totals.published.fetch_add(sent, Ordering::Relaxed);
            }
            if sent > 0 || !self.writer.is_empty() {
                self.writer
                    .flush()
                    .await
                    .with_context(|| format!("{}: publishing", self.name))?;
                last_write = Instant::now();
                continue;
            }
            let longest = if plan.total_window > 0 {
                // The consumer's count is polled: do not sleep past its next poll by much.
                Duration::from_millis(2)
            } else {
                Duration::from_millis(50)
            };
            let wait = match next_due {
                Some(at) => (start + at)
                    .saturating_duration_since(Instant::now())
                    .min(longest),
                None => longest,
            };
            tokio::select! {
                _ = self.shared.progress.notified() => {}
                _ = totals.credit.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            if last_write.elapsed() > KEEP_ALIVE / 3 {
                self.writer.ping()?;
                self.writer.flush().await?;
                last_write = Instant::now();
            }
        }
        self.writer.disconnect().await;
        Ok(())
    }
}

/// The seq of a hub ack (`{"seq":n}`, or a postcard `Downlink::Ack`).
fn ack_seq(format: Format, payload: &[u8]) -> Option<u32> {
    match format {
        Format::Tasmota => None,
        Format::Json => {
            let text = std::str::from_utf8(payload).ok()?;
            let rest = &text[text.find("\"seq\"")? + 5..];
            let rest = rest.trim_start().strip_prefix(':')?.trim_start();
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        }
        Format::Binary => match Downlink::decode(payload).ok()? {
            Downlink::Ack(ack) => Some(ack.seq),
            _ => None,
        },
    }
}

/// Writes reading `seq` of the plan's format into `out`. The values wander a little with `seq`
/// (four metrics, as firmware-sim sends: temperature, humidity, battery, door).
pub fn encode(plan: &Plan, seq: u64, timestamp_ms: u64, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let wobble = (seq % 200) as f64;
    let temperature = 18.0 + wobble * 0.03;
    let humidity = 40.0 + wobble * 0.1;
    let battery = 100.0 - (seq % 10_000) as f64 * 0.001;
    let door = seq.is_multiple_of(50);
    match plan.format {
        Format::Json => {
            write!(
                out,
                "{{\"seq\":{seq},\"ts\":{timestamp_ms},\"metrics\":{{\"temperature\":{temperature:.2},\"humidity\":{humidity:.1},\"battery\":{battery:.3},\"door\":{door}"
            )?;
            if plan.sent_us {
                write!(out, ",\"sent_us\":{}", crate::now_us())?;
            }
            out.extend_from_slice(b"}}");
        }
        Format::Tasmota => write!(
            out,
            "{{\"Time\":\"2026-11-21T10:00:00\",\"AM2301\":{{\"Temperature\":{temperature:.2},\"Humidity\":{humidity:.1}}},\"Battery\":{battery:.3},\"Door\":{door}}}"
        )?,
        Format::Binary => {
            let mut readings = Fields::new();
            let sent = crate::now_us() as i64;
            let fields = [
                ("temperature", Value::F64(temperature)),
                ("humidity", Value::F64(humidity)),
                ("battery", Value::F64(battery)),
                ("door", Value::Bool(door)),
                ("sent_us", Value::I64(sent)),
            ];
            let take = if plan.sent_us { 5 } else { 4 };
            for (name, value) in fields.into_iter().take(take) {
                readings
                    .push(Field { name, value })
                    .map_err(|_| anyhow::anyhow!("too many fields"))?;
            }
            let message = Uplink::Telemetry(Telemetry {
                seq: seq as u32,
                timestamp_ms: Some(timestamp_ms),
                readings,
                boot: None,
            });
            let mut buf = [0u8; 512];
            let bytes = message
                .encode(&mut buf)
                .map_err(|e| anyhow::anyhow!("encoding telemetry: {e:?}"))?;
            out.extend_from_slice(bytes);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(format: Format) -> Plan {
        Plan {
            format,
            qos: QoS::AtMostOnce,
            rate: 0.0,
            window: 0,
            inflight: 100,
            stall: Duration::from_secs(1),
            chunk: 64,
            sent_us: true,
            total_window: 0,
        }
    }

    #[test]
    fn json_readings_are_what_the_hub_parses() {
        let mut out = Vec::new();
        encode(&plan(Format::Json), 7, 1_700_000_000_000, &mut out).unwrap();
        let parsed = device_protocol::json::parse_telemetry(&out).unwrap();
        assert_eq!(parsed.seq, Some(7));
        assert_eq!(parsed.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(parsed.metrics.len(), 5);
    }

    #[test]
    fn binary_readings_decode() {
        let mut out = Vec::new();
        encode(&plan(Format::Binary), 9, 1_700_000_000_000, &mut out).unwrap();
        match Uplink::decode(&out).unwrap() {
            Uplink::Telemetry(t) => {
                assert_eq!(t.seq, 9);
                assert_eq!(t.readings.len(), 5);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tasmota_readings_carry_the_same_four_metrics() {
        let mut out = Vec::new();
        encode(&plan(Format::Tasmota), 3, 0, &mut out).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["AM2301"]["Humidity"], 40.3);
        assert_eq!(value["Door"], false);
        assert!(value["Time"].is_string() && value["Battery"].is_number());
    }

    #[test]
    fn acks_parse() {
        assert_eq!(ack_seq(Format::Json, br#"{"seq":41}"#), Some(41));
        assert_eq!(ack_seq(Format::Json, br#"{"seq": 3 }"#), Some(3));
        let mut buf = [0u8; 32];
        let ack = Downlink::Ack(device_protocol::Ack {
            seq: 12,
            boot: None,
        });
        let bytes = ack.encode(&mut buf).unwrap();
        assert_eq!(ack_seq(Format::Binary, bytes), Some(12));
    }
}
