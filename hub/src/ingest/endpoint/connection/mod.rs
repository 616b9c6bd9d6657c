//! One client connection to the MQTT endpoint, from its CONNECT to its end.
//!
//! Two halves run at once, so neither can stall the other on a full socket:
//! - the reader takes packets from the client. A PUBLISH on a device topic is decoded and handed
//!   to the store writer, with the other publishes that the same read brought in (up to 64, one
//!   submission: 1 device at QoS 0 went from 183k to 206k-212k readings/s, 1000 devices from 59k
//!   to 67k-79k); their acknowledgements (PUBACK for QoS 1, PUBREC for QoS 2) are queued in
//!   arrival order behind the commit. When the writer falls behind, the reader stops reading: the
//!   unacknowledged publishes of a connection are bounded in number and in bytes, so back-pressure
//!   reaches the client's socket instead of a queue growing or a reading being dropped.
//! - the writer sends, in this order of preference: answers that wait for nothing (CONNACK,
//!   SUBACK, PINGRESP, PUBCOMP), the acknowledgements whose commit is done (in arrival order),
//!   and downlinks queued for the session (acks, commands).
//!
//! A PUBACK or PUBREC from the hub therefore means "durable". A commit that fails is never
//! acknowledged: the connection is closed, so the client sends the message again when it comes
//! back; a QoS 0 reading lost that way is counted (`dropped{reason="commit_failed"}`).

//!
//! Here: serving a connection (this file); `admit.rs` lets a CONNECT in, `reader.rs` and
//! `writer.rs` are the two halves.

mod admit;
mod reader;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Context;
use super::login::{Logins, Presented};
use super::wire::{Outbound, PacketReader, PacketWriter, Version, WireError};
use crate::ingest::Rejection;
use crate::ingest::reply::Reply;
use crate::store::Applied;
use crate::store::writer::CommitFailed;
use admit::{admit, submit_will};
use reader::Reader;
use writer::Writer;

/// Publishes of one connection read and not yet acknowledged (waiting for their commit). Room
/// for two of the writer's batches, so one device can fill the next commit while one is on disk:
/// 1 device at QoS 0 (loadgen, release build) went from 158k to 183k readings/s with 1,024 -> 4,096.
/// Memory stays bounded by the writer's queue, which every connection shares.
pub const MAX_UNACKED: usize = 4096;
/// Payload bytes of one connection read and not yet acknowledged.
pub const MAX_UNACKED_BYTES: usize = 4 << 20;
/// Answers that wait for nothing, queued for the writer.
const CONTROL_QUEUE: usize = 16;
/// Silence allowed to a client that asks for no keep-alive.
const IDLE_WITHOUT_KEEP_ALIVE: Duration = Duration::from_secs(300);

/// Why a connection ended early; logged at debug, never fatal to the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// No CONNECT in time.
    #[error("no CONNECT within the time allowed")]
    ConnectTimeout,
    /// The first packet was something else.
    #[error("the first packet is not a CONNECT")]
    NotConnect,
    /// The CONNECT was refused.
    #[error("CONNECT refused: {0}")]
    Refused(&'static str),
    /// Silent past its keep-alive.
    #[error("silent for longer than its keep-alive allows")]
    Idle,
    /// Did not take what the hub sent in time.
    #[error("did not read what the hub sent within its keep-alive")]
    WriteTimeout,
    /// A packet only a server sends, or a second CONNECT.
    #[error("a packet only a server sends, or a second CONNECT")]
    Unexpected,
    /// Too many QoS 2 exchanges open.
    #[error("too many QoS 2 publishes awaiting their PUBREL")]
    TooManyPending,
    /// A commit failed: its publishes are not acknowledged, the client sends them again.
    #[error("a commit failed; the client will send its unacknowledged messages again")]
    CommitFailed,
    /// Another connection took the session over.
    #[error("another connection took over the client id")]
    TakenOver,
    /// The device's password was rotated or revoked, or the device removed.
    #[error("the device's credentials changed, or the device was removed")]
    Revoked,
    /// The hub is stopping.
    #[error("the hub is stopping")]
    Stopping,
    /// The stream failed.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Publishes read together (one read's burst, at most [`MAX_BATCH`]) waiting for the commit that
/// holds their readings, before their acknowledgements and their devices' replies.
struct Unacked {
    /// The commit's outcome; `None` when there was nothing to commit (only skipped messages).
    done_rx: Option<oneshot::Receiver<Result<Vec<Applied>, CommitFailed>>>,
    /// The publishes, in arrival order.
    publishes: Vec<Published>,
    /// Their share of the connection's byte budget, given back with the acknowledgements.
    _bytes: Option<OwnedSemaphorePermit>,
}

/// One publish of a batch.
struct Published {
    qos: QoS,
    pkid: u16,
    reply: Reply,
    /// Its item's place in the submission, if it was handed to the store.
    item: Option<usize>,
}

/// Publishes taken from what one read brought in, handed to the store writer as one submission.
const MAX_BATCH: usize = 64;

/// Publishes read and decoded, not yet handed to the store.
#[derive(Default)]
struct Batch {
    items: Vec<crate::store::Ingest>,
    publishes: Vec<Published>,
    bytes: usize,
}

/// A connection before its CONNECT.
#[derive(Debug)]
pub struct Client {
    /// What it showed (a certificate, or nothing).
    pub presented: Presented,
    /// Where it comes from.
    pub peer: std::net::SocketAddr,
    /// Its number, unique in this process.
    pub number: u64,
}

/// Serves one connection: what `client` showed and its CONNECT say what it may do, `max_packet`
/// is its listener's largest packet either way. Returns the client id when it ends cleanly.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    client: Client,
    max_packet: usize,
    context: &Context,
    shutdown: &CancellationToken,
) -> Result<String, ConnectionError> {
    let connection = client.number;
    let (from_client, to_client) = tokio::io::split(io);
    let mut reader = PacketReader::new(from_client, max_packet);
    let mut writer = PacketWriter::new(to_client, max_packet);
    let deadline = tokio::time::Instant::now() + context.settings.connect_timeout;
    let connect = match tokio::time::timeout_at(deadline, reader.next()).await {
        Err(_) => return Err(ConnectionError::ConnectTimeout),
        Ok(Ok(Some(Packet::Connect(connect)))) => connect,
        Ok(Ok(_)) => return Err(ConnectionError::NotConnect),
        Ok(Err(e)) => return Err(e.into()),
    };
    let version = reader.version().unwrap_or(Version::V4);
    writer.speak(version);
    let connack = |code, session_present, assigned_id| Outbound::ConnAck {
        code,
        session_present,
        assigned_id,
        receive_max: MAX_UNACKED as u16,
    };
    let asked_for_id = !connect.client_id.is_empty();
    let logged_in = Logins::admit(
        context.logins.as_ref(),
        client.presented,
        connect.login.as_ref(),
        client.peer.ip(),
        deadline,
    )
    .await;
    let (identity, credential) = match logged_in {
        Ok(logged_in) => logged_in,
        Err(refusal) => {
            let detail = format!("{}: {}", client.peer.ip(), refusal.why());
            context.stats.reject(Rejection::BadLogin, "", &detail);
            writer.send(&connack(refusal.code(), false, None)).await?;
            return Err(ConnectionError::Refused(refusal.why()));
        }
    };
    let admitted = match admit(&identity, connection, connect) {
        Ok(admitted) => admitted,
        Err((code, why)) => {
            context.stats.reject(
                Rejection::ForbiddenConnect,
                "",
                &format!("{}: {why}", identity.name()),
            );
            writer.send(&connack(code, false, None)).await?;
            return Err(ConnectionError::Refused(why));
        }
    };
    let idle = match admitted.keep_alive {
        0 => IDLE_WITHOUT_KEEP_ALIVE,
        secs => Duration::from_millis(u64::from(secs) * 1500),
    };
    let close = shutdown.child_token();
    let connected = context.router.connect(
        &admitted.client_id,
        admitted.clean,
        connection,
        close.clone(),
    );
    let session = connected.session;
    // MQTT 5 tells a client the id the hub chose for it.
    let assigned = (version == Version::V5 && !asked_for_id).then(|| admitted.client_id.clone());
    writer
        .send(&connack(
            ConnectReturnCode::Success,
            connected.session_present,
            assigned,
        ))
        .await?;

    // Boxed: a channel allocates its slots 32 at a time, so its first block costs 32 items
    // whatever the load; boxes keep that at 32 pointers (measured with 1000 connections: the two
    // channels' blocks were 3.6 MB of the hub's heap at the load's peak).
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (unacked_tx, unacked_rx) = mpsc::channel(MAX_UNACKED);
    let half = Reader {
        identity: &identity,
        context,
        session: &session,
        control_tx,
        unacked_tx,
        budget: Arc::new(Semaphore::new(MAX_UNACKED_BYTES)),
    };
    let sender = Writer {
        context,
        session: &session,
        told: HashMap::new(),
        idle,
    };
    let ended = tokio::select! {
        _ = close.cancelled() => Err(if shutdown.is_cancelled() {
            ConnectionError::Stopping
        } else {
            ConnectionError::TakenOver
        }),
        _ = revoked(credential.as_ref()) => Err(ConnectionError::Revoked),
        ended = half.run(&mut reader, idle) => ended,
        ended = sender.run(&mut writer, control_rx, unacked_rx) => ended,
    };
    context.router.disconnected(&session, connection);
    match ended {
        Ok(()) => Ok(admitted.client_id),
        Err(e) => {
            // The will is published only when a connection ends without a DISCONNECT.
            if let Some((topic, payload)) = admitted.will {
                submit_will(context, &topic, &payload).await;
            }
            Err(e)
        }
    }
}

/// Ends when `credential` (a device's watch token) is cancelled; never without one.
async fn revoked(credential: Option<&CancellationToken>) {
    match credential {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// The outcome of the head's commit (cancel-safe: the receiver stays in the head).
async fn wait_commit(head: &mut Option<Box<Unacked>>) -> Result<Vec<Applied>, CommitFailed> {
    match head.as_mut().and_then(|h| h.done_rx.as_mut()) {
        None => Ok(Vec::new()),
        // A dropped sender means the writer is gone: nothing was made durable.
        Some(done_rx) => done_rx.await.unwrap_or(Err(CommitFailed)),
    }
}

/// The outcome of `unacked`'s commit if it is done.
fn try_commit(unacked: &mut Unacked) -> Option<Result<Vec<Applied>, CommitFailed>> {
    match unacked.done_rx.as_mut() {
        None => Some(Ok(Vec::new())),
        Some(done_rx) => match done_rx.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(CommitFailed)),
        },
    }
}

#[cfg(test)]
mod tests;
