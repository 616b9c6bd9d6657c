//! What one simulated device did, for the summary line and `--report`.

use serde::Serialize;

/// What one device did, for the summary and `--report`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DeviceReport {
    #[serde(skip)]
    pub id: String,
    /// Readings produced by this run.
    pub produced: u64,
    /// Readings acked during this run (a loaded backlog included).
    pub acked: u64,
    /// Every seq up to this one is acked (null: none yet).
    pub acked_through: Option<u32>,
    /// Readings sent again (after a reconnect, an ack timeout, or loaded from the outbox).
    pub retransmitted: u64,
    /// Readings still unacked at the end.
    pub unacked: u64,
    /// Times production stopped because the outbox was full.
    pub stalls: u64,
    /// Time spent stalled.
    pub stalled_seconds: f64,
    /// Unacked readings loaded from the outbox at start.
    pub loaded: u64,
    /// The seq the next reading would get.
    pub next_seq: u64,
    /// Connections that came up.
    pub connections: u64,
    /// Times the ack did not move for the ack timeout (and the window was resent).
    pub ack_timeouts: u64,
    /// Probes that went unanswered for the ack timeout.
    pub probe_timeouts: u64,
    /// Connections dropped on purpose by `--disconnect-every`.
    pub forced_disconnects: u64,
    /// Time syncs received.
    pub time_syncs: u64,
    /// Acks for seqs this device never produced (the hub knows another run of it).
    pub acks_beyond: u64,
    /// Acks for another boot than this run's (`--boot`), ignored.
    pub acks_other_boot: u64,
    /// Readings the hub rejected for their content (dropped: never delivered).
    pub rejected: u64,
    /// Readings the hub gave up waiting for while this device still held them (sent once more,
    /// then dropped: maybe never delivered).
    pub gave_up: u64,
    /// Serial frames preceded by garbage.
    pub noise_frames: u64,
    /// Serial frames sent with a flipped bit.
    pub corrupted_frames: u64,
    /// Commands received (redeliveries included).
    pub commands_received: u64,
    /// Answers to commands sent (a redelivery's included).
    pub commands_answered: u64,
    /// Commands delivered again with an id still remembered.
    pub commands_duplicates: u64,
    /// Payloads on a command topic that were not a command.
    pub commands_invalid: u64,
    /// Why the device failed, if it did.
    pub error: Option<String>,
}

impl DeviceReport {
    /// True if every reading was acked, and none was rejected or given up.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.unacked == 0 && self.rejected == 0 && self.gave_up == 0
    }
}
