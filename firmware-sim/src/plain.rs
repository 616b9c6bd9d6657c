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
//!
//! Commands: on every ConnAck the poller subscribes (QoS 1) to `devices/{id}/commands` (JSON) or
//! `devices/{id}/down` (binary) and passes what comes there to a responder task, which answers
//! through [`crate::commands`] with QoS 1 publishes of its own, so neither telemetry nor a `sleep`
//! waits for the other. The broker's PUBACKs of those answers are told apart from the readings'
//! by count only: the summary's `acked` is the PUBACKs less the Hellos and answers sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::commands::{CommandStats, Commands, Encoding};
use crate::device::{DeviceReport, Plan, Stop};
use crate::link::{Endpoint, LinkEvent, Topics};
use crate::sensors::{Sensors, hello_bytes, telemetry_json};

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
    let topics = Topics::new(&plan.id, *binary);
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let answers = Arc::new(AtomicU64::new(0));
    let responder = tokio::spawn(respond(
        client.clone(),
        topics.results.clone(),
        if *binary {
            Encoding::Binary
        } else {
            Encoding::Json
        },
        commands_rx,
        answers.clone(),
        plan.id.clone(),
    ));
    let poller = tokio::spawn(poll(
        eventloop,
        *qos,
        plan.id.clone(),
        accepted_tx,
        Commanded {
            client: client.clone(),
            topics: topics.clone(),
            tx: commands_tx,
        },
    ));

    let topic = topics.up.clone();
    // Messages that the broker must accept: the readings, and a binary device's Hello.
    let mut expected = 0u64;
    if *binary {
        let hello = hello_bytes(&plan.id, plan.boot)?;
        client.publish(topic.as_str(), *qos, false, hello).await?;
        expected += 1;
    }

    let mut sensors = Sensors::new(plan.seed).with_boot(plan.boot);
    let mut ticker = tokio::time::interval(plan.interval.max(Duration::from_micros(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stop = plan.stop.clone();
    let mut seq: u64 = 0;
    // A reading made but not queued yet (the queue was full): it is offered again next tick.
    let mut waiting: Option<Vec<u8>> = None;
    let mut stalled_since: Option<Instant> = None;
    let done =
        |seq: u64| plan.idle || (plan.count > 0 && seq >= plan.count) || seq > u64::from(u32::MAX);
    // Idle: nothing to produce, only commands to answer until stopped.
    while plan.idle && *stop.borrow() == Stop::Run {
        if stop.changed().await.is_err() {
            break;
        }
    }
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
                    let message = sensors.reading(seq as u32, plan.timestamps.at(seq));
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

    // Drain: wait for the broker to accept everything (the answers to commands too).
    let drain = async {
        let mut abort = plan.stop.clone();
        let expected = expected + answers.load(Ordering::Relaxed);
        tokio::select! {
            _ = accepted_rx.wait_for(|n| *n >= expected) => {}
            _ = abort.wait_for(|s| *s == Stop::Abort) => {}
        }
    };
    let _ = tokio::time::timeout(plan.drain_timeout, drain).await;
    let answered = answers.load(Ordering::Relaxed);
    let accepted = (*accepted_rx.borrow()).min(expected + answered);
    let hellos = expected - report.produced;
    report.acked = accepted
        .saturating_sub(hellos + answered)
        .min(report.produced);
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
        let _ = poller.await;
    }
    // The poller is gone with its sender: the responder ends.
    let mut responder = responder;
    match tokio::time::timeout(Duration::from_secs(2), &mut responder).await {
        Ok(Ok(stats)) => {
            report.commands_received = stats.received;
            report.commands_duplicates = stats.duplicates;
            report.commands_invalid = stats.invalid;
        }
        Ok(Err(_)) => {}
        Err(_) => responder.abort(),
    }
    report.commands_answered = answers.load(Ordering::Relaxed);
    Ok(())
}

/// What the poller needs to take commands: the client to subscribe with, the topics, and where
/// to pass them.
struct Commanded {
    client: AsyncClient,
    topics: Topics,
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

impl Commanded {
    /// The topic commands come on: `devices/{id}/commands` (JSON) or `devices/{id}/down` (binary).
    fn topic(&self) -> &str {
        self.topics
            .commands
            .as_deref()
            .unwrap_or(self.topics.down.as_str())
    }
}

/// Answers the commands the poller passes on, until it is gone; `answers` counts the answers
/// queued for the broker.
async fn respond(
    client: AsyncClient,
    topic: String,
    encoding: Encoding,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    answers: Arc<AtomicU64>,
    id: String,
) -> CommandStats {
    let mut commands = Commands::new(encoding);
    loop {
        let wake_at = commands.next_wake();
        let replies = tokio::select! {
            payload = rx.recv() => {
                let Some(payload) = payload else { break };
                match commands.receive(&payload, Instant::now()) {
                    Ok(reply) => reply.into_iter().collect(),
                    Err(e) => {
                        let invalid = commands.stats.invalid;
                        if invalid == 1 || invalid.is_multiple_of(100) {
                            eprintln!(
                                "firmware-sim: {id}: ignored a command payload ({invalid} so far): {e}"
                            );
                        }
                        Vec::new()
                    }
                }
            }
            _ = tokio::time::sleep_until(wake_at.unwrap_or_else(Instant::now).into()),
                if wake_at.is_some() => commands.wake(Instant::now()),
        };
        for reply in replies {
            if client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, reply)
                .await
                .is_ok()
            {
                answers.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    commands.stats
}

/// The only poller of the event loop: counts what the broker accepted, reconnects on errors,
/// ends after the client's DISCONNECT has gone out.
async fn poll(
    mut eventloop: EventLoop,
    qos: QoS,
    id: String,
    accepted_tx: watch::Sender<u64>,
    commanded: Commanded,
) {
    let mut accepted = 0u64;
    let mut backoff = RECONNECT_MIN;
    let mut failures = 0u32;
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Err(e) = commanded
                    .client
                    .try_subscribe(commanded.topic(), QoS::AtLeastOnce)
                {
                    eprintln!("firmware-sim: {id}: cannot subscribe to commands: {e}");
                }
                if failures > 0 {
                    eprintln!("firmware-sim: {id}: connected again");
                }
                failures = 0;
                backoff = RECONNECT_MIN;
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                for event in commanded.topics.events(&publish.topic, &publish.payload) {
                    if let LinkEvent::Command(payload) = event {
                        let _ = commanded.tx.send(payload);
                    }
                }
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
