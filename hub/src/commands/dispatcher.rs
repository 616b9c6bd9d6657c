//! The task that delivers commands: at once when the device is online, else when it comes online,
//! until the command's TTL runs out; then waits for the result until its timeout.

use super::*;

/// An open command, as the dispatcher keeps it.
#[derive(Debug, Clone)]
struct Open {
    device: String,
    name: String,
    args: Map<String, Json>,
    delivered: bool,
    /// Queued in a device's MQTT session, awaiting its acknowledgement (still pending).
    handed: bool,
    /// Pending: when its TTL runs out. Delivered: when its result is due.
    deadline_ms: u64,
    result_timeout_ms: u64,
}

impl Open {
    /// Whether it should be sent now (if its device can take it).
    fn is_due(&self) -> bool {
        !self.delivered && !self.handed
    }
}

/// The task that delivers commands and times them out.
pub struct Dispatcher {
    pub(super) store: Store,
    pub(super) presence: Arc<Presence>,
    pub(super) live: Live,
    pub(super) settings: Arc<CommandSettings>,
    pub(super) open: Arc<OpenCount>,
    pub(super) transports: Transports,
    pub(super) dispatch_rx: mpsc::Receiver<u64>,
    /// What became of commands whose delivery a transport tracks.
    pub(super) handoffs: mpsc::Receiver<CommandHandoff>,
}

impl Dispatcher {
    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut events = self.live.events_tx.subscribe();
        let mut open: HashMap<u64, Open> = HashMap::new();
        self.load_open(&mut open).await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                id = self.dispatch_rx.recv() => {
                    let Some(id) = id else { break };
                    self.take(id, &mut open).await;
                    let devices: Vec<String> = open.get(&id).map(|c| c.device.clone()).into_iter().collect();
                    self.deliver_to(&devices, &mut open).await;
                }
                Some(handoff) = self.handoffs.recv() => self.handed_off(handoff, &mut open).await,
                event = events.recv() => match event {
                    Ok(Event::Device { device, change: DeviceChange::Online | DeviceChange::New, .. }) => {
                        self.deliver_to(&[device], &mut open).await;
                    }
                    Ok(Event::Command { id, state, device }) if state.is_final() => {
                        if open.remove(&id).is_some() {
                            self.open.close(&device);
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => self.reload(&mut open).await,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tick.tick() => {
                    self.expire(&mut open).await;
                    let waiting: Vec<String> = open.values().filter(|c| c.is_due()).map(|c| c.device.clone()).collect();
                    self.deliver_to(&waiting, &mut open).await;
                    if last_prune.elapsed() >= PRUNE_EVERY {
                        last_prune = tokio::time::Instant::now();
                        self.prune().await;
                    }
                }
            }
        }
    }

    /// Loads every open command from the store (at start, and after missed events).
    async fn load_open(&self, open: &mut HashMap<u64, Open>) {
        let store = self.store.clone();
        let stored = match tokio::task::spawn_blocking(move || store.open_commands()).await {
            Ok(Ok(stored)) => stored,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read open commands; they time out unseen");
                return;
            }
            Err(_) => return,
        };
        for (id, record) in stored {
            if open.contains_key(&id) {
                continue;
            }
            if let Some(command) = open_from(&record) {
                // Counted like new ones, so the limits hold across restarts.
                self.open.add(&record.device);
                open.insert(id, command);
            }
        }
    }

    /// After missed events: drops what the store says is final, picks up what it says is open.
    async fn reload(&self, open: &mut HashMap<u64, Open>) {
        let ids: Vec<u64> = open.keys().copied().collect();
        for id in ids {
            if let Ok(Some(record)) = self.store.command(id)
                && record.state.is_final()
                && let Some(command) = open.remove(&id)
            {
                self.open.close(&command.device);
            }
        }
        self.load_open(open).await;
    }

    /// Adds command `id` (just submitted) to the open ones.
    async fn take(&self, id: u64, open: &mut HashMap<u64, Open>) {
        if open.contains_key(&id) {
            return;
        }
        let store = self.store.clone();
        if let Ok(Ok(Some(record))) = tokio::task::spawn_blocking(move || store.command(id)).await
            && let Some(command) = open_from(&record)
        {
            open.insert(id, command);
        }
    }

    /// Tries to deliver every pending command of `devices` that are online, oldest first.
    async fn deliver_to(&self, devices: &[String], open: &mut HashMap<u64, Open>) {
        if devices.is_empty() {
            return;
        }
        let mut due: Vec<u64> = open
            .iter()
            .filter(|(_, c)| c.is_due() && devices.contains(&c.device))
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        let mut blocked: Vec<String> = Vec::new();
        for id in due {
            let Some(command) = open.get(&id).cloned() else {
                continue;
            };
            if blocked.contains(&command.device) || !self.presence.is_online(&command.device) {
                continue;
            }
            match self.send(id, &command) {
                Ok(Handed::Delivered) => self.delivered(id, open).await,
                Ok(Handed::Tracked) => {
                    if let Some(c) = open.get_mut(&id) {
                        c.handed = true;
                    }
                }
                Err(Refused::Later) => blocked.push(command.device.clone()),
                Err(Refused::Never(reason)) => {
                    let transition = Transition::TimedOut {
                        at_ms: now_ms(),
                        reason,
                    };
                    self.advance(id, &command.device, transition).await;
                }
            }
        }
    }

    /// Records that open command `id` reached its device: its result is due from now.
    async fn delivered(&self, id: u64, open: &mut HashMap<u64, Open>) {
        let Some(device) = open.get(&id).map(|c| c.device.clone()) else {
            return;
        };
        let now = now_ms();
        let transition = Transition::Delivered { at_ms: now };
        if self.advance(id, &device, transition).await
            && let Some(c) = open.get_mut(&id)
        {
            c.delivered = true;
            c.deadline_ms = now + c.result_timeout_ms;
        }
    }

    /// A tracked command was acknowledged by its device, or lost with its session (then it is
    /// due again, and goes out at once if the device can take it).
    async fn handed_off(&self, handoff: CommandHandoff, open: &mut HashMap<u64, Open>) {
        match handoff {
            CommandHandoff::Delivered(id) => {
                if open.get(&id).is_some_and(|c| !c.delivered) {
                    self.delivered(id, open).await;
                }
            }
            CommandHandoff::Lost(id) => {
                let Some(c) = open.get_mut(&id).filter(|c| !c.delivered) else {
                    return;
                };
                c.handed = false;
                let device = c.device.clone();
                self.deliver_to(&[device], open).await;
            }
        }
    }

    /// Sends one command over its device's transport.
    fn send(&self, id: u64, command: &Open) -> Result<Handed, Refused> {
        let device = match self.store.device(&command.device) {
            Ok(Some(device)) => device.record,
            Ok(None) => return Err(Refused::Never("the device is gone".into())),
            Err(_) => return Err(Refused::Later),
        };
        self.transports.send_command(CommandOut {
            device: &command.device,
            wire: &device.wire,
            transport: device.transport,
            id,
            name: &command.name,
            args: &command.args,
        })
    }

    /// Times out what is past its deadline.
    async fn expire(&self, open: &mut HashMap<u64, Open>) {
        let now = now_ms();
        let expired: Vec<(u64, Open)> = open
            .iter()
            .filter(|(_, c)| c.deadline_ms <= now)
            .map(|(id, c)| (*id, c.clone()))
            .collect();
        for (id, command) in expired {
            let reason = if command.delivered {
                "no result from the device within the command's timeout"
            } else {
                "not delivered within the command's ttl (the device stayed offline)"
            };
            let transition = Transition::TimedOut {
                at_ms: now,
                reason: reason.into(),
            };
            self.advance(id, &command.device, transition).await;
            // Whatever the store said (a result may have just won the race), it is closed now.
            if open.remove(&id).is_some() {
                self.open.close(&command.device);
            }
        }
    }

    /// Applies a transition durably and tells listeners; whether it changed the command.
    async fn advance(&self, id: u64, device: &str, transition: Transition) -> bool {
        let store = self.store.clone();
        let applied =
            tokio::task::spawn_blocking(move || store.advance_command(id, &transition)).await;
        match applied {
            Ok(Ok(Some(record))) => {
                self.live.event(Event::Command {
                    device: device.to_owned(),
                    id,
                    state: record.state,
                });
                true
            }
            Ok(Ok(None)) => false,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, command = id, "cannot record a command's state");
                false
            }
            Err(_) => false,
        }
    }

    async fn prune(&self) {
        let store = self.store.clone();
        let keep = self.settings.keep;
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.prune_commands(keep)).await {
            tracing::warn!(error = %e, "cannot prune old commands");
        }
    }
}

fn open_from(record: &CommandRecord) -> Option<Open> {
    let args = match serde_json::from_str::<Json>(&record.args) {
        Ok(Json::Object(args)) => args,
        _ => Map::new(),
    };
    let delivered = match record.state {
        CommandState::Pending => false,
        CommandState::Delivered => true,
        _ => return None,
    };
    Some(Open {
        device: record.device.clone(),
        name: record.name.clone(),
        args,
        delivered,
        handed: false,
        deadline_ms: if delivered {
            record.delivered_ms.unwrap_or(record.created_ms) + record.result_timeout_ms
        } else {
            record.expires_ms
        },
        result_timeout_ms: record.result_timeout_ms,
    })
}
