//! A plain MQTT publisher (`--acks broker`): a reading counts as delivered when the broker has it
//! (its PUBACK for QoS 1, written to the socket for QoS 0). No outbox, no hub acks: this is what
//! measures a bare broker such as mosquitto.
//!
//! One rumqttc client per device, with a persistent session (`clean_session = false`), so a QoS 1
//! reading in flight when the connection drops is published again after reconnecting if the
//! broker kept the session (and counted as lost if it did not). Its event loop is polled by one
//! task alone, which reconnects with back-off. Readings are queued with `try_publish`: when the
//! client's queue is full (the broker does not keep up, or the connection is down) the device
//! stalls instead of blocking, and produces the reading at a later tick.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::device::{DeviceReport, Plan, Stop};
use crate::link::Endpoint;
use crate::sensors::{Sensors, hello_bytes, now_ms, telemetry_json};

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Runs a plain publisher until it has produced its readings and the broker has them all, or it
/// gives up.
pub async fn run(plan: Plan) -> DeviceReport {
    let mut report = DeviceReport {
        id: plan.id.clone(),
        ..Default::default()
    };
    if let Err(e) = publish(&plan, &mut report).await {
        report.error = Some(format!("{e:#}"));
    }
    report
}

async fn publish(plan: &Plan, report: &mut DeviceReport) -> anyhow::Result<()> {
    let Endpoint::Mqtt {
        host,
        port,
        qos,
        binary,
    } = &plan.endpoint
    else {
        anyhow::bail!("--acks broker needs an MQTT transport");
    };
    let mut options = MqttOptions::new(plan.id.clone(), host.clone(), *port);
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(100);
    let (client, eventloop) = AsyncClient::new(options, 1024);
    let (accepted_tx, mut accepted_rx) = watch::channel(0u64);
    let poller = tokio::spawn(poll(eventloop, *qos, plan.id.clone(), accepted_tx));

    let topic = if *binary {
        format!("devices/{}/up", plan.id)
    } else {
        format!("devices/{}/telemetry", plan.id)
    };
    // Messages that the broker must accept: the readings, and a binary device's Hello.
    let mut expected = 0u64;
    if *binary {
        let hello = hello_bytes(&plan.id)?;
        client.publish(topic.as_str(), *qos, false, hello).await?;
        expected += 1;
    }

    let mut sensors = Sensors::new(plan.seed);
    let mut ticker = tokio::time::interval(plan.interval.max(Duration::from_micros(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stop = plan.stop.clone();
    let mut seq: u64 = 0;
    // A reading made but not queued yet (the queue was full): it is offered again next tick.
    let mut waiting: Option<Vec<u8>> = None;
    let mut stalled_since: Option<Instant> = None;
    let done = |seq: u64| (plan.count > 0 && seq >= plan.count) || seq > u64::from(u32::MAX);
    while !done(seq) && *stop.borrow() == Stop::Run {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => continue,
        }
        let now = Instant::now();
        for _ in 0..plan.burst {
            if done(seq) {
                break;
            }
            let payload = match waiting.take() {
                Some(payload) => payload,
                None => {
                    let message = sensors.reading(seq as u32, now_ms());
                    if *binary {
                        message
                    } else {
                        telemetry_json(&message)?
                    }
                }
            };
            match client.try_publish(topic.as_str(), *qos, false, payload.clone()) {
                Ok(()) => {
                    seq += 1;
                    expected += 1;
                    report.produced += 1;
                    if let Some(since) = stalled_since.take() {
                        report.stalled_seconds += now.duration_since(since).as_secs_f64();
                    }
                }
                Err(_) => {
                    waiting = Some(payload);
                    if stalled_since.is_none() {
                        stalled_since = Some(now);
                        report.stalls += 1;
                    }
                    break;
                }
            }
        }
    }
    if let Some(since) = stalled_since.take() {
        report.stalled_seconds += since.elapsed().as_secs_f64();
    }

    // Drain: wait for the broker to accept everything.
    let drain = async {
        let mut abort = plan.stop.clone();
        tokio::select! {
            _ = accepted_rx.wait_for(|n| *n >= expected) => {}
            _ = abort.wait_for(|s| *s == Stop::Abort) => {}
        }
    };
    let _ = tokio::time::timeout(plan.drain_timeout, drain).await;
    let accepted = (*accepted_rx.borrow()).min(expected);
    let hellos = expected - report.produced;
    report.acked = accepted.saturating_sub(hellos);
    report.acked_through = report.acked.checked_sub(1).map(|n| n as u32);
    report.unacked = report.produced - report.acked;
    report.next_seq = seq;

    let _ = client.try_disconnect();
    let mut poller = poller;
    if tokio::time::timeout(Duration::from_secs(2), &mut poller)
        .await
        .is_err()
    {
        poller.abort();
    }
    Ok(())
}

/// The only poller of the event loop: counts what the broker accepted, reconnects on errors,
/// ends after the client's DISCONNECT has gone out.
async fn poll(mut eventloop: EventLoop, qos: QoS, id: String, accepted_tx: watch::Sender<u64>) {
    let mut accepted = 0u64;
    let mut backoff = RECONNECT_MIN;
    let mut failures = 0u32;
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if failures > 0 {
                    eprintln!("firmware-sim: {id}: connected again");
                }
                failures = 0;
                backoff = RECONNECT_MIN;
            }
            Ok(event) => {
                let counts = matches!(
                    (&event, qos),
                    (Event::Incoming(Packet::PubAck(_)), QoS::AtLeastOnce)
                        | (Event::Outgoing(Outgoing::Publish(_)), QoS::AtMostOnce)
                );
                if counts {
                    accepted += 1;
                    accepted_tx.send_replace(accepted);
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    eprintln!(
                        "firmware-sim: {id}: connection lost ({e}); retrying in {} ms",
                        backoff.as_millis()
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
        }
    }
}
