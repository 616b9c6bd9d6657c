//! The `mqtt` sink's uplink: publishes each batch at QoS 1 to a cloud broker and waits for its
//! PUBACK.
//!
//! Inputs: the sink's [`SinkConfig`] (URL, topic, client id, credentials, TLS material, timeout)
//! and one [`Batch`] per call; the body goes out as it is (MQTT 3.1.1 has no content encoding or
//! per-message headers, and the body carries its own idempotency key).
//!
//! Invariants: one PUBLISH per [`MqttUplink::deliver`], bounded by the sink's timeout. rumqttc
//! sends unacknowledged publishes again when its event loop reconnects, which would put a batch
//! out twice, or a batch the sink has since given up on; so the event loop is only polled inside
//! `deliver`, and after any failure the client and its event loop are dropped whole and the
//! next delivery starts a new clean session. The connection is kept between deliveries only
//! while it is fresh (see [`REUSE_IDLE_MAX`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::time::Instant;

use super::{Batch, Delivery, SyncError};
use crate::config::{Broker, MqttConfig, SinkConfig};

/// Keep-alive asked of the broker.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// An idle connection is used again only this soon after its last delivery: nothing polls it
/// between deliveries, so no PINGREQ keeps it (or a NAT mapping on the way) alive; well inside
/// [`KEEP_ALIVE`] it is still open at the broker.
const REUSE_IDLE_MAX: Duration = Duration::from_secs(30);
/// Requests queued for the event loop: one publish at a time, and the pings rumqttc adds.
const REQUEST_QUEUE: usize = 4;
/// Largest packet rumqttc sends: MQTT's own limit; a broker with a smaller one says so by
/// closing the connection (3.1.1 has no way to tell the client beforehand).
const MAX_OUTGOING_PACKET: usize = 268_435_455;
/// Largest packet taken from the broker: only CONNACK, PUBACK and PINGRESP come, nothing is
/// subscribed.
const MAX_INCOMING_PACKET: usize = 16 << 10;
/// The status reported for a batch too large to publish (HTTP's "Content Too Large").
const TOO_LARGE: u16 = 413;

/// Publishes batches to a cloud broker at QoS 1.
pub struct MqttUplink {
    name: String,
    options: MqttOptions,
    topic: String,
    timeout: Duration,
    /// The connection of the last successful delivery, when there is one.
    session: Option<Session>,
    /// The refusal last logged as needing the operator, so it is logged once per change.
    alarm: Option<String>,
}

/// One clean MQTT session: its client, its event loop, and when it last delivered.
struct Session {
    client: AsyncClient,
    eventloop: EventLoop,
    /// Whether the broker has taken the CONNECT (for the reason of a timeout).
    connected: bool,
    idle_since: Instant,
}

/// Why a publish did not get its PUBACK.
enum Failure {
    /// The batch cannot be sent as one packet.
    TooLarge(String),
    /// The broker refused the CONNECT (credentials, client id, authorisation).
    Refused(String),
    /// Connection, TLS, protocol error.
    Link(String),
}

impl MqttUplink {
    /// An uplink for `config` publishing as `hub_id`; fails on an unusable URL or certificate.
    pub fn new(config: &SinkConfig, hub_id: &str) -> Result<Self, SyncError> {
        let config_error = |reason: String| SyncError::Config {
            sink: config.name.clone(),
            reason,
        };
        // The same `mqtt://` / `mqtts://host:port` syntax as the hub's own broker setting.
        let parsed = MqttConfig {
            broker: config.url.clone(),
            ..MqttConfig::default()
        }
        .broker()
        .map_err(|e| config_error(e.replacen("mqtt.broker", "url", 1)))?;
        let Broker::External { host, port, tls } = parsed else {
            return Err(config_error(format!(
                "url {:?}: must be mqtt://host:port or mqtts://host:port",
                config.url
            )));
        };
        let topic = config.topic_for(hub_id);
        if !rumqttc::valid_topic(&topic) {
            return Err(config_error(format!(
                "topic {topic:?}: not a topic to publish to (empty, or holds + or #)"
            )));
        }
        let tls = if tls {
            Some(Arc::new(super::http::tls_config(config)?))
        } else {
            None
        };
        let credentials = crate::mqtt_client::credentials(&config.username, &config.password);
        let mut options = crate::mqtt_client::client_options(
            &config.client_id_for(hub_id),
            &host,
            port,
            tls.as_ref(),
            credentials.as_ref(),
        );
        // A clean session: the broker keeps nothing for us, so an old session's queue is never
        // replayed; each publish is waited for here.
        options
            .set_clean_session(true)
            .set_keep_alive(KEEP_ALIVE)
            .set_inflight(1)
            .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
        Ok(MqttUplink {
            name: config.name.clone(),
            options,
            topic,
            timeout: config.timeout(),
            session: None,
            alarm: None,
        })
    }

    /// Publishes `batch` once and waits for its PUBACK.
    pub async fn deliver(&mut self, batch: &Batch) -> Delivery {
        let mut kept = self.session.take();
        if let Some(session) = kept.as_mut()
            && (session.idle_since.elapsed() >= REUSE_IDLE_MAX || !session.is_up())
        {
            kept = None;
        }
        let mut session = match kept {
            Some(session) => session,
            None => {
                let (client, eventloop) = AsyncClient::new(self.options.clone(), REQUEST_QUEUE);
                Session {
                    client,
                    eventloop,
                    connected: false,
                    idle_since: Instant::now(),
                }
            }
        };
        let timeout = self.timeout;
        // On every path but success the session is dropped here, with whatever rumqttc holds.
        match tokio::time::timeout(timeout, session.publish(&self.topic, &batch.body)).await {
            Ok(Ok(())) => {
                session.idle_since = Instant::now();
                self.session = Some(session);
                if self.alarm.take().is_some() {
                    tracing::info!(sink = %self.name, "the broker takes batches again");
                }
                Delivery::Delivered
            }
            // Not the data's fault: the same batch goes once the operator has fixed the setup.
            Ok(Err(Failure::Refused(reason))) => {
                if self.alarm.as_ref() != Some(&reason) {
                    tracing::error!(sink = %self.name, %reason, "the broker refuses the connection: operator must act (credentials, client id, ACL)");
                    self.alarm = Some(reason.clone());
                }
                Delivery::Retry {
                    after: None,
                    reason: format!("{reason} (operator must act)"),
                }
            }
            Ok(Err(Failure::TooLarge(reason))) => {
                tracing::error!(sink = %self.name, bytes = batch.body.len(), %reason, "a batch is too large to publish");
                Delivery::Refused {
                    status: TOO_LARGE,
                    reason,
                }
            }
            Ok(Err(Failure::Link(reason))) => Delivery::Retry {
                after: None,
                reason,
            },
            Err(_) => Delivery::Retry {
                after: None,
                reason: if session.connected {
                    format!("no PUBACK within {timeout:?}")
                } else {
                    format!("not connected to the broker within {timeout:?}")
                },
            },
        }
    }
}

impl Session {
    /// Whether the idle connection still looks open: takes what the broker sent meanwhile (a
    /// PINGRESP, or the end of the connection when the broker went away) without waiting, so
    /// a broker that restarted is met with a new connection rather than a failed delivery.
    fn is_up(&mut self) -> bool {
        // Bounded: each round takes one event already there. Dropping the unfinished poll is
        // safe here: nothing is queued, so at most a due PINGREQ sits in rumqttc's write buffer
        // and goes out with the next poll.
        for _ in 0..8 {
            match self.eventloop.poll().now_or_never() {
                None => return true,
                Some(Ok(_)) => {}
                Some(Err(_)) => return false,
            }
        }
        true
    }

    /// Publishes `payload` at QoS 1 and drives the event loop until its PUBACK.
    async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), Failure> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .map_err(|e| Failure::Link(format!("queueing the publish: {e}")))?;
        let mut sent = None;
        loop {
            match self.eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => self.connected = true,
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => sent = Some(pkid),
                Ok(Event::Incoming(Packet::PubAck(ack))) if Some(ack.pkid) == sent => {
                    return Ok(());
                }
                Ok(_) => {}
                Err(ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                    rumqttc::mqttbytes::Error::OutgoingPacketTooLarge { pkt_size, max },
                ))) => {
                    return Err(Failure::TooLarge(format!(
                        "a packet of {pkt_size} bytes, more than the {max} MQTT allows"
                    )));
                }
                Err(e @ ConnectionError::ConnectionRefused(_)) => {
                    return Err(Failure::Refused(e.to_string()));
                }
                Err(e) => return Err(Failure::Link(link_reason(&e))),
            }
        }
    }
}

/// What went wrong with the connection, with the cause rumqttc's own text leaves out.
fn link_reason(e: &ConnectionError) -> String {
    match std::error::Error::source(e) {
        Some(source) if !e.to_string().contains(&source.to_string()) => format!("{e}: {source}"),
        _ => e.to_string(),
    }
}

/// A real mosquitto for tests (of this uplink and of the sink loop): listens on a free loopback
/// port, anonymous, and is killed on drop so no broker outlives its test.
#[cfg(test)]
pub(crate) mod test_broker {
    use std::process::{Child, Command, Stdio};

    /// A running mosquitto.
    pub(crate) struct Mosquitto {
        /// Its port on 127.0.0.1.
        pub port: u16,
        dir: tempfile::TempDir,
        child: Option<Child>,
    }

    impl Mosquitto {
        /// Starts one and waits until it takes connections.
        pub(crate) async fn start() -> Mosquitto {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
            )
            .unwrap();
            let mut broker = Mosquitto {
                port,
                dir,
                child: None,
            };
            broker.spawn().await;
            broker
        }

        /// `mqtt://127.0.0.1:port`.
        pub(crate) fn url(&self) -> String {
            format!("mqtt://127.0.0.1:{}", self.port)
        }

        /// Kills it (its clients see the connection end).
        pub(crate) fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        /// Kills it and starts a new one on the same port.
        pub(crate) async fn restart(&mut self) {
            self.stop();
            self.spawn().await;
        }

        async fn spawn(&mut self) {
            let conf = self.dir.path().join("mosquitto.conf");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            // The port may still be held for a moment after a kill: start again until it listens.
            loop {
                let mut child = Command::new("mosquitto")
                    .arg("-c")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("mosquitto (Debian package mosquitto) must be installed");
                loop {
                    if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                        .await
                        .is_ok()
                    {
                        self.child = Some(child);
                        return;
                    }
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "mosquitto did not listen on {}",
                        self.port
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "mosquitto did not start on {}",
                    self.port
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }

    impl Drop for Mosquitto {
        fn drop(&mut self) {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::sync::{mpsc, oneshot};

    use super::test_broker::Mosquitto;
    use super::*;
    use crate::config::{Compression, HumanDuration};
    use crate::sync::http::test_receiver::retry_reason;

    const BODY: &[u8] = br#"{"hub":"h1","key":"m-1-2","readings":[]}"#;

    fn sink(url: String) -> SinkConfig {
        SinkConfig {
            name: "cloud".into(),
            url,
            timeout: Some(HumanDuration(Duration::from_secs(10))),
            ..SinkConfig::default()
        }
    }

    fn batch(body: &[u8]) -> Batch {
        Batch {
            first: 1,
            last: 2,
            count: 2,
            key: "m-1-2".into(),
            body: body.to_vec(),
            encoding: Compression::None,
        }
    }

    /// Subscribes to `topic` at QoS 1; payloads arrive on the channel. Returns once subscribed.
    async fn watch(
        port: u16,
        topic: &str,
    ) -> (mpsc::Receiver<Vec<u8>>, tokio::task::JoinHandle<()>) {
        let mut options = MqttOptions::new(format!("watcher-{port}"), "127.0.0.1", port);
        options.set_max_packet_size(4 << 20, 4 << 10);
        let (client, mut eventloop) = AsyncClient::new(options, 10);
        client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        let (payloads_tx, payloads_rx) = mpsc::channel(16);
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let _client = client;
            let mut ready_tx = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = payloads_tx.send(p.payload.to_vec()).await;
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .unwrap()
            .unwrap();
        (payloads_rx, task)
    }

    /// The one payload that arrives, and that no second one follows.
    async fn exactly_one(payloads: &mut mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
        let payload = tokio::time::timeout(Duration::from_secs(10), payloads.recv())
            .await
            .expect("nothing published")
            .unwrap();
        let more = tokio::time::timeout(Duration::from_millis(500), payloads.recv()).await;
        assert!(more.is_err(), "published twice: {more:?}");
        payload
    }

    /// Delivers `body` while subscribed to `topic`: it must be taken and published exactly once.
    async fn delivered_once(uplink: &mut MqttUplink, broker: &Mosquitto, topic: &str, body: &[u8]) {
        let (mut payloads, watcher) = watch(broker.port, topic).await;
        assert_eq!(uplink.deliver(&batch(body)).await, Delivery::Delivered);
        assert_eq!(exactly_one(&mut payloads).await, body);
        watcher.abort();
    }

    #[tokio::test]
    async fn publishes_once_to_the_topic_and_waits_for_the_puback() {
        let broker = Mosquitto::start().await;
        let (mut payloads, watcher) = watch(broker.port, "gateways/h1/readings").await;
        let mut uplink = MqttUplink::new(&sink(broker.url()), "h1").unwrap();
        assert_eq!(uplink.deliver(&batch(BODY)).await, Delivery::Delivered);
        assert_eq!(exactly_one(&mut payloads).await, BODY);
        assert!(uplink.session.is_some(), "the connection is kept");
        assert_eq!(uplink.deliver(&batch(b"second")).await, Delivery::Delivered);
        assert_eq!(exactly_one(&mut payloads).await, b"second");
        watcher.abort();
    }

    #[tokio::test]
    async fn a_broker_down_is_a_retry_and_a_restarted_one_takes_the_next_batch() {
        let mut broker = Mosquitto::start().await;
        let mut config = sink(broker.url());
        config.topic = Some("up/{hub_id}".into());
        config.timeout = Some(HumanDuration(Duration::from_secs(2)));
        let mut uplink = MqttUplink::new(&config, "h2").unwrap();
        assert_eq!(uplink.deliver(&batch(BODY)).await, Delivery::Delivered);

        broker.stop();
        let started = Instant::now();
        assert!(matches!(
            uplink.deliver(&batch(BODY)).await,
            Delivery::Retry { after: None, .. }
        ));
        assert!(started.elapsed() < Duration::from_secs(5));

        broker.restart().await;
        // Only this batch: the one that failed while the broker was down is not replayed.
        delivered_once(&mut uplink, &broker, "up/h2", b"after").await;
    }

    #[tokio::test]
    async fn a_broker_restarted_between_deliveries_is_met_with_a_new_connection() {
        let mut broker = Mosquitto::start().await;
        let mut uplink = MqttUplink::new(&sink(broker.url()), "h3").unwrap();
        assert_eq!(uplink.deliver(&batch(BODY)).await, Delivery::Delivered);
        broker.restart().await;
        delivered_once(&mut uplink, &broker, "gateways/h3/readings", b"next").await;
    }

    #[tokio::test]
    async fn a_silent_broker_is_a_retry_within_the_timeout() {
        // Takes the TCP connection and never answers the CONNECT.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let mut config = sink(format!("mqtt://127.0.0.1:{port}"));
        config.timeout = Some(HumanDuration(Duration::from_millis(300)));
        let mut uplink = MqttUplink::new(&config, "h4").unwrap();
        let started = Instant::now();
        let reason = retry_reason(uplink.deliver(&batch(BODY)).await);
        assert!(reason.contains("not connected"), "{reason}");
        assert!(started.elapsed() < Duration::from_secs(5));
        hold.abort();
    }

    #[test]
    fn unusable_settings_are_config_errors() {
        let config_error = |config: &SinkConfig| {
            matches!(MqttUplink::new(config, "h1"), Err(SyncError::Config { .. }))
        };
        assert!(config_error(&sink("mqtt://:1883".into())));
        assert!(config_error(&sink("mqtt://host:99999".into())));
        assert!(config_error(&sink("http://host:1883".into())));
        let mut config = sink("mqtt://host:1883".into());
        config.topic = Some("up/#".into());
        assert!(config_error(&config));
        let mut config = sink("mqtts://host:8883".into());
        config.ca = Some("no/such/ca.pem".into());
        assert!(config_error(&config));
        assert!(MqttUplink::new(&sink("mqtt://host".into()), "h1").is_ok());
    }
}
