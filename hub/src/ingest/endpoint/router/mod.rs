//! The sessions of the MQTT endpoint and the way downlinks (acks, commands, time syncs) reach them.
//!
//! A session is a client id's state: its subscriptions, the QoS 1 messages it has not yet
//! acknowledged, the QoS 2 packet ids it has been sent a PUBREC for. A persistent session
//! (`clean_session = false`) outlives its connection: QoS 1 downlinks for it wait, bounded, and
//! are sent again (DUP) when it comes back. A clean session ends with its connection. A new
//! connection with a client id that is connected takes the session over and closes the old one.
//!
//! The hub only ever publishes downlinks, so routing is one-way: a downlink goes to each session
//! whose filter matches its topic, once per session. Exact filters (what devices use) are found
//! by a hash look-up; wildcard filters (a local tool's `devices/+/commands`) are few and scanned.
//!
//! A command (a QoS 1 downlink the dispatcher tracks) is told back as a [`CommandHandoff`]: the
//! device acknowledged it, or its session ended without that (a clean session closed, a
//! persistent one forgotten to make room), so the dispatcher knows whether to send it again.
//!
//! Bounds: sessions ([`Router::new`]'s `max_sessions`: past it, the disconnected persistent
//! session that left first is forgotten), subscriptions per session, queued messages per
//! session, QoS 1 messages in flight per connection, QoS 2 ids awaiting their PUBREL.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::ingest::{CommandHandoff, DownlinkError};

/// Subscriptions one session may hold.
pub const MAX_SUBSCRIPTIONS: usize = 32;
/// Messages queued for one session (sent or not, not yet acknowledged).
pub const MAX_QUEUED: usize = 128;
/// QoS 1 downlinks sent to one connection and not yet acknowledged.
pub const MAX_INFLIGHT_DOWN: usize = 16;
/// QoS 2 publishes of one session answered with PUBREC and awaiting their PUBREL.
pub const MAX_AWAITING_RELEASE: usize = 256;
/// Sessions left by their connections that make it worth packing the routes (see
/// [`Router::pack_when_quiet`]).
const PACK_AFTER_DEPARTURES: usize = 64;
/// How long no session has come or gone before the routes are packed.
const PACK_WHEN_QUIET: Duration = Duration::from_secs(10);

/// A message for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its topic.
    pub topic: Arc<str>,
    /// Its payload.
    pub payload: Bytes,
    /// At most once or at least once.
    pub qos: QoS,
    /// Its packet id, once sent at QoS 1 (kept when sent again).
    pub pkid: Option<u16>,
    /// Sent before on an earlier connection (MQTT's DUP flag).
    pub dup: bool,
    /// The command it carries, when its delivery is tracked (QoS 1 only).
    pub command: Option<u64>,
}

/// One client id's state; shared by the router and the connection that serves it.
#[derive(Debug)]
pub struct Session {
    /// The client id.
    pub client_id: String,
    state: Mutex<SessionState>,
    /// Woken when a message is queued for the connection to send.
    pub wake: Notify,
}

#[derive(Debug, Default, Clone)]
struct SessionState {
    persistent: bool,
    /// The connection serving it: its number and how to close it.
    connection: Option<(u64, CancellationToken)>,
    subscriptions: Vec<(String, QoS)>,
    /// Waiting to be sent, oldest first; QoS 1 messages that were sent and not acknowledged
    /// when the connection ended come first again.
    outbox: VecDeque<Message>,
    /// Sent at QoS 1 on the current connection, awaiting PUBACK, by packet id.
    inflight: Vec<Message>,
    next_pkid: u16,
    awaiting_release: HashSet<u16>,
    /// When it was last disconnected (an order number), to forget the oldest first.
    left: u64,
}

/// What a connection may take from its session's queue now.
pub struct Sendable {
    /// Messages to send, with their packet id set when QoS 1.
    pub messages: Vec<Message>,
}

impl Session {
    fn new(client_id: &str, persistent: bool) -> Self {
        Session {
            client_id: client_id.to_owned(),
            state: Mutex::new(SessionState {
                persistent,
                next_pkid: 1,
                ..SessionState::default()
            }),
            wake: Notify::new(),
        }
    }

    /// The session in fresh allocations when only the router holds it (no connection serves it,
    /// no downlink is being offered to it), else itself.
    fn packed(self: &Arc<Self>) -> Arc<Self> {
        if Arc::strong_count(self) > 1 {
            return self.clone();
        }
        Arc::new(Session {
            client_id: self.client_id.clone(),
            state: Mutex::new(self.state().clone()),
            wake: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, SessionState> {
        // The state stays consistent at every step, so a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes what may be sent now: every queued QoS 0 message, and QoS 1 messages up to the
    /// in-flight limit, numbered.
    pub fn take_sendable(&self) -> Sendable {
        let mut state = self.state();
        let mut messages = Vec::new();
        let mut kept = VecDeque::new();
        while let Some(mut message) = state.outbox.pop_front() {
            if message.qos == QoS::AtMostOnce {
                messages.push(message);
                continue;
            }
            if state.inflight.len() >= MAX_INFLIGHT_DOWN {
                kept.push_back(message);
                continue;
            }
            match message.pkid {
                Some(_) => message.dup = true,
                None => message.pkid = Some(state.next_id()),
            }
            state.inflight.push(message.clone());
            messages.push(message);
        }
        state.outbox = kept;
        Sendable { messages }
    }

    /// The device acknowledged the QoS 1 message `pkid`; the command it carried, if tracked.
    pub fn acked(&self, pkid: u16) -> Option<u64> {
        let mut state = self.state();
        let at = state.inflight.iter().position(|m| m.pkid == Some(pkid));
        let command = at.and_then(|at| state.inflight.remove(at).command);
        if !state.outbox.is_empty() {
            self.wake.notify_one();
        }
        command
    }

    /// Records that the QoS 2 publish `pkid` was stored and answered with PUBREC; false when too
    /// many await their PUBREL.
    pub fn await_release(&self, pkid: u16) -> bool {
        let mut state = self.state();
        if state.awaiting_release.len() >= MAX_AWAITING_RELEASE {
            return false;
        }
        state.awaiting_release.insert(pkid);
        true
    }

    /// Whether the QoS 2 publish `pkid` was already stored (its PUBREL has not come yet).
    pub fn is_awaiting_release(&self, pkid: u16) -> bool {
        self.state().awaiting_release.contains(&pkid)
    }

    /// The PUBREL of `pkid` came: the exchange is over.
    pub fn released(&self, pkid: u16) {
        self.state().awaiting_release.remove(&pkid);
    }

    /// Queues `message`, unless the queue is full or a QoS 0 message has no connection to go to.
    fn offer(&self, message: Message) -> Result<(), DownlinkError> {
        let mut state = self.state();
        if state.connection.is_none() && message.qos == QoS::AtMostOnce {
            return Err(DownlinkError::NotConnected);
        }
        if state.outbox.len() + state.inflight.len() >= MAX_QUEUED {
            return Err(DownlinkError::Busy);
        }
        state.outbox.push_back(message);
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    fn subscribed_qos(&self, topic: &str) -> Option<QoS> {
        self.state()
            .subscriptions
            .iter()
            .filter(|(filter, _)| matches(filter, topic))
            .map(|(_, qos)| *qos)
            .max_by_key(|qos| *qos as u8)
    }
}

impl SessionState {
    fn next_id(&mut self) -> u16 {
        // Packet id 0 is not allowed; skip ids still in flight.
        loop {
            let id = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|m| m.pkid == Some(id)) {
                return id;
            }
        }
    }
}

/// Whether `filter` (with `+` and `#` wildcards) matches `topic`.
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match part {
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

/// Whether `filter` is a valid MQTT topic filter: not empty, `#` only as the last level, `+` and
/// `#` only as whole levels.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let parts: Vec<&str> = filter.split('/').collect();
    parts.iter().enumerate().all(|(i, part)| match *part {
        "#" => i + 1 == parts.len(),
        "+" => true,
        other => !other.contains(['+', '#']),
    })
}

fn is_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// What a CONNECT found.
pub struct Connected {
    /// The session, new or taken over.
    pub session: Arc<Session>,
    /// Whether an earlier persistent session was resumed.
    pub session_present: bool,
}

/// Every session, and the subscriptions that route downlinks to them.
#[derive(Debug)]
pub struct Router {
    routes: Mutex<Routes>,
    max_sessions: usize,
    /// Where tracked commands are told back.
    handoffs: Option<mpsc::Sender<CommandHandoff>>,
}

#[derive(Debug, Default)]
struct Routes {
    sessions: HashMap<String, Arc<Session>>,
    /// Exact filter -> client ids subscribed with it.
    exact: HashMap<String, HashSet<String>>,
    /// Client ids with at least one wildcard filter.
    wildcard: HashSet<String>,
    /// Order numbers for disconnections.
    departures: u64,
    /// Sessions left by their connections since the routes were last packed.
    departed_since_packed: usize,
    /// When a session last came or went.
    last_change: Option<Instant>,
}

impl Router {
    /// A router keeping at most `max_sessions` sessions, telling tracked commands back on
    /// `handoffs`.
    pub fn new(max_sessions: usize, handoffs: Option<mpsc::Sender<CommandHandoff>>) -> Self {
        Router {
            routes: Mutex::new(Routes::default()),
            max_sessions: max_sessions.max(1),
            handoffs,
        }
    }

    /// Tells the dispatcher what became of a tracked command. A full channel loses the note:
    /// the command then waits for its TTL, as a command to an unreachable device does.
    pub fn tell(&self, handoff: CommandHandoff) {
        if let Some(handoffs) = &self.handoffs
            && handoffs.try_send(handoff).is_err()
        {
            tracing::warn!(
                ?handoff,
                "the command dispatcher is not listening; a command's delivery goes untold"
            );
        }
    }

    fn tell_lost(&self, lost: Vec<u64>) {
        for command in lost {
            self.tell(CommandHandoff::Lost(command));
        }
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection numbered `connection` (closed by `close`) starts a session for `client_id`:
    /// a clean one replaces any earlier session, a persistent one resumes it. Any connection that
    /// held the session is closed.
    pub fn connect(
        &self,
        client_id: &str,
        clean: bool,
        connection: u64,
        close: CancellationToken,
    ) -> Connected {
        let mut routes = self.routes();
        let mut lost = Vec::new();
        let existing = routes.sessions.get(client_id).cloned();
        if let Some(old) = &existing {
            let mut state = old.state();
            if let Some((_, old_close)) = state.connection.take() {
                old_close.cancel();
            }
            requeue_inflight(&mut state);
        }
        let (session, present) = match existing {
            Some(old) if !clean && old.state().persistent => (old, true),
            other => {
                if other.is_some() {
                    lost.extend(routes.forget(client_id));
                }
                lost.extend(routes.make_room(self.max_sessions));
                let session = Arc::new(Session::new(client_id, !clean));
                routes
                    .sessions
                    .insert(client_id.to_owned(), session.clone());
                routes.last_change = Some(Instant::now());
                (session, false)
            }
        };
        session.state().connection = Some((connection, close));
        if present {
            // What waited for the device goes out at once.
            session.wake.notify_one();
        }
        drop(routes);
        self.tell_lost(lost);
        Connected {
            session,
            session_present: present,
        }
    }

    /// The connection numbered `connection` ended: a clean session ends with it, a persistent one
    /// keeps its unacknowledged messages for the next connection.
    pub fn disconnected(&self, session: &Arc<Session>, connection: u64) {
        let mut routes = self.routes();
        let persistent = {
            let mut state = session.state();
            if state.connection.as_ref().map(|(n, _)| *n) != Some(connection) {
                // Taken over by a newer connection, which now owns the session.
                return;
            }
            state.connection = None;
            requeue_inflight(&mut state);
            state.outbox.retain(|m| m.qos != QoS::AtMostOnce);
            routes.departures += 1;
            state.left = routes.departures;
            state.persistent
        };
        routes.last_change = Some(Instant::now());
        routes.departed_since_packed += 1;
        if !persistent
            && routes
                .sessions
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            let lost = routes.forget(&session.client_id);
            drop(routes);
            self.tell_lost(lost);
        }
    }

    /// Subscribes `session` to `filters` (checked by the caller), replacing the QoS of a filter it
    /// already has; the QoS granted for each, or `None` where the session has too many.
    pub fn subscribe(&self, session: &Arc<Session>, filters: &[(String, QoS)]) -> Vec<Option<QoS>> {
        let mut routes = self.routes();
        let mut state = session.state();
        let mut granted = Vec::with_capacity(filters.len());
        for (filter, qos) in filters {
            // The hub sends at most QoS 1.
            let qos = if *qos == QoS::ExactlyOnce {
                QoS::AtLeastOnce
            } else {
                *qos
            };
            if let Some(existing) = state.subscriptions.iter_mut().find(|(f, _)| f == filter) {
                existing.1 = qos;
            } else if state.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                granted.push(None);
                continue;
            } else {
                state.subscriptions.push((filter.clone(), qos));
                if is_wildcard(filter) {
                    routes.wildcard.insert(session.client_id.clone());
                } else {
                    routes
                        .exact
                        .entry(filter.clone())
                        .or_default()
                        .insert(session.client_id.clone());
                }
            }
            granted.push(Some(qos));
        }
        granted
    }

    /// Removes `filters` from `session`'s subscriptions.
    pub fn unsubscribe(&self, session: &Arc<Session>, filters: &[String]) {
        let mut routes = self.routes();
        let mut state = session.state();
        state.subscriptions.retain(|(f, _)| !filters.contains(f));
        for filter in filters.iter().filter(|f| !is_wildcard(f)) {
            routes.unroute(filter, &session.client_id);
        }
        if !state.subscriptions.iter().any(|(f, _)| is_wildcard(f)) {
            routes.wildcard.remove(&session.client_id);
        }
    }

    /// Sends `payload` on `topic` to every session subscribed to it, at `qos` or the
    /// subscription's, whichever is lower. Fails when no session took it.
    pub fn publish(&self, topic: &str, payload: Bytes, qos: QoS) -> Result<(), DownlinkError> {
        self.route(topic, payload, qos, None).map(|_| ())
    }

    /// Sends command `command` at QoS 1 like [`Router::publish`]; whether its delivery is
    /// tracked (some session took it at QoS 1: a [`CommandHandoff`] will tell how it ended).
    pub fn publish_command(
        &self,
        topic: &str,
        payload: Bytes,
        command: u64,
    ) -> Result<bool, DownlinkError> {
        self.route(topic, payload, QoS::AtLeastOnce, Some(command))
    }

    /// Offers a message to every subscribed session; whether a session took it tracked.
    fn route(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        command: Option<u64>,
    ) -> Result<bool, DownlinkError> {
        let targets: Vec<Arc<Session>> = {
            let routes = self.routes();
            let exact = routes.exact.get(topic);
            let wildcard = routes
                .wildcard
                .iter()
                .filter(|id| !exact.is_some_and(|ids| ids.contains(*id)));
            exact
                .into_iter()
                .flatten()
                .chain(wildcard)
                .filter_map(|id| routes.sessions.get(id).cloned())
                .collect()
        };
        let topic: Arc<str> = Arc::from(topic);
        let mut outcome = Err(DownlinkError::NotConnected);
        let mut tracked = false;
        for session in targets {
            let Some(granted) = session.subscribed_qos(&topic) else {
                continue;
            };
            let qos = if (granted as u8) < (qos as u8) {
                granted
            } else {
                qos
            };
            let command = command.filter(|_| qos == QoS::AtLeastOnce);
            let offered = session.offer(Message {
                topic: topic.clone(),
                payload: payload.clone(),
                qos,
                pkid: None,
                dup: false,
                command,
            });
            tracked |= offered.is_ok() && command.is_some();
            outcome = match (outcome, offered) {
                (Ok(()), _) | (_, Ok(())) => Ok(()),
                (Err(DownlinkError::Busy), _) | (_, Err(DownlinkError::Busy)) => {
                    Err(DownlinkError::Busy)
                }
                (_, Err(e)) => Err(e),
            };
        }
        outcome.map(|()| tracked)
    }

    /// Sessions kept now (connected or not).
    pub fn sessions(&self) -> usize {
        self.routes().sessions.len()
    }

    /// Packs the routes when at least [`PACK_AFTER_DEPARTURES`] sessions have been left by their
    /// connections since the last time and no session has come or gone for [`PACK_WHEN_QUIET`]
    /// before `now`; whether it did.
    ///
    /// Packing copies the persistent sessions no connection holds, and the maps that route to
    /// sessions, into fresh allocations side by side, and frees the old ones. Each session was
    /// allocated as its device connected, among that connection's buffers, and once the
    /// connection closed it kept the freed pages around it from going back to the system (as
    /// `store::Catalog::repack` and `live::Devices::pack` do for theirs); and a map keeps the
    /// size it grew to when its entries go (1000 clean sessions left 212 KB of empty tables).
    pub fn pack_when_quiet(&self, now: Instant) -> bool {
        let mut routes = self.routes();
        let quiet = routes
            .last_change
            .is_none_or(|at| now.saturating_duration_since(at) >= PACK_WHEN_QUIET);
        if routes.departed_since_packed < PACK_AFTER_DEPARTURES || !quiet {
            return false;
        }
        routes.pack();
        true
    }
}

/// Checks every second whether the router's routes are worth packing, until `shutdown`.
pub async fn pack_when_quiet(router: Arc<Router>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if router.pack_when_quiet(Instant::now()) {
            crate::memory::give_back();
            tracing::debug!("MQTT sessions packed after their connections left");
        }
    }
}

/// QoS 1 messages sent and not acknowledged go back to the front of the queue, to be sent again.
fn requeue_inflight(state: &mut SessionState) {
    for message in state.inflight.drain(..).rev() {
        state.outbox.push_front(message);
    }
}

impl Routes {
    /// See [`Router::pack_when_quiet`].
    fn pack(&mut self) {
        let (sessions, exact, wildcard) = crate::memory::packed(|| {
            let sessions = self
                .sessions
                .iter()
                .map(|(id, session)| (id.clone(), session.packed()))
                .collect();
            let exact = self
                .exact
                .iter()
                .map(|(filter, ids)| (filter.clone(), ids.iter().cloned().collect()))
                .collect();
            (sessions, exact, self.wildcard.iter().cloned().collect())
        });
        self.sessions = sessions;
        self.exact = exact;
        self.wildcard = wildcard;
        self.departed_since_packed = 0;
    }

    fn unroute(&mut self, filter: &str, client_id: &str) {
        if let Some(ids) = self.exact.get_mut(filter) {
            ids.remove(client_id);
            if ids.is_empty() {
                self.exact.remove(filter);
            }
        }
    }

    /// Removes a session and its routes; the tracked commands it had not delivered.
    fn forget(&mut self, client_id: &str) -> Vec<u64> {
        let Some(session) = self.sessions.remove(client_id) else {
            return Vec::new();
        };
        let (filters, lost) = {
            let mut state = session.state();
            let filters: Vec<String> = state.subscriptions.iter().map(|(f, _)| f.clone()).collect();
            let state = &mut *state;
            let lost = state
                .inflight
                .drain(..)
                .chain(state.outbox.drain(..))
                .filter_map(|m| m.command)
                .collect();
            (filters, lost)
        };
        for filter in &filters {
            self.unroute(filter, client_id);
        }
        self.wildcard.remove(client_id);
        lost
    }

    /// Forgets the disconnected persistent sessions that left first while at the limit; the
    /// tracked commands they had not delivered.
    fn make_room(&mut self, max_sessions: usize) -> Vec<u64> {
        let mut lost = Vec::new();
        while self.sessions.len() >= max_sessions {
            let oldest = self
                .sessions
                .values()
                .filter_map(|s| {
                    let state = s.state();
                    state
                        .connection
                        .is_none()
                        .then_some((state.left, s.client_id.clone()))
                })
                .min();
            match oldest {
                Some((_, id)) => lost.extend(self.forget(&id)),
                // Every session is connected: the connection limit keeps their number bounded.
                None => break,
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests;
