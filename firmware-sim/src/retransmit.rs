//! When a device resends every unacked reading.
//!
//! The hub's ack is cumulative, so a lost reading (or a lost ack) shows as an ack that stops
//! moving. The rule: when readings are unacked and the ack has not moved for the ack timeout, resend
//! them all, oldest first. A resend that brings no progress doubles the wait before the next one
//! (up to [`MAX_BACKOFF`] times the timeout), so a hub that is up but not acking is not flooded;
//! any progress brings the wait back to the timeout. The clock also restarts when a connection
//! starts streaming and when a reading is sent while nothing was outstanding, so an old quiet
//! period never counts against a new reading.

use std::time::{Duration, Instant};

/// The longest wait is this many times the ack timeout.
pub const MAX_BACKOFF: u32 = 8;

/// The retransmission clock of one device.
#[derive(Debug, Clone)]
pub struct Retransmit {
    timeout: Duration,
    wait: Duration,
    since: Instant,
}

impl Retransmit {
    /// A clock for `timeout`, started at `now`.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Retransmit {
            timeout,
            wait: timeout,
            since: now,
        }
    }

    /// The ack moved forward.
    pub fn progress(&mut self, now: Instant) {
        self.wait = self.timeout;
        self.since = now;
    }

    /// Start waiting afresh from `now` (a connection starts streaming, or the first reading after
    /// a quiet period is sent).
    pub fn restart(&mut self, now: Instant) {
        self.wait = self.timeout;
        self.since = now;
    }

    /// Wait again from `now`, keeping the current back-off (a resend that took a few steps).
    pub fn rearm(&mut self, now: Instant) {
        self.since = now;
    }

    /// True if the unacked readings should be resent now.
    pub fn due(&self, now: Instant, unacked: bool) -> bool {
        unacked && now.saturating_duration_since(self.since) >= self.wait
    }

    /// Everything unacked was just resent.
    pub fn resent(&mut self, now: Instant) {
        self.since = now;
        self.wait = (self.wait * 2).min(self.timeout * MAX_BACKOFF);
    }

    /// How long the current wait is.
    #[cfg(test)]
    pub fn wait(&self) -> Duration {
        self.wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);

    #[test]
    fn nothing_unacked_is_never_resent() {
        let t0 = Instant::now();
        let r = Retransmit::new(T, t0);
        assert!(!r.due(t0 + T * 100, false));
    }

    #[test]
    fn resends_once_the_ack_has_not_moved_for_the_timeout() {
        let t0 = Instant::now();
        let mut r = Retransmit::new(T, t0);
        assert!(!r.due(t0, true));
        assert!(!r.due(t0 + T - Duration::from_millis(1), true));
        // Progress just before the timeout pushes it back.
        r.progress(t0 + Duration::from_millis(1500));
        assert!(!r.due(t0 + T, true));
        assert!(!r.due(t0 + Duration::from_millis(3499), true));
        assert!(r.due(t0 + Duration::from_millis(3500), true));
    }

    #[test]
    fn resends_without_progress_back_off_up_to_the_cap_and_progress_resets_them() {
        let t0 = Instant::now();
        let mut r = Retransmit::new(T, t0);
        let mut now = t0 + T;
        let mut waits = Vec::new();
        for _ in 0..6 {
            assert!(r.due(now, true));
            r.resent(now);
            waits.push(r.wait().as_secs());
            assert!(!r.due(now + r.wait() - Duration::from_millis(1), true));
            now += r.wait();
        }
        assert_eq!(waits, [4, 8, 16, 16, 16, 16]);

        // Re-arming (the resend went out later, after a re-probe) keeps the back-off.
        r.rearm(now);
        assert!(!r.due(now + T, true));
        assert!(r.due(now + T * MAX_BACKOFF, true));

        r.progress(now);
        assert_eq!(r.wait(), T);
        assert!(r.due(now + T, true));
    }

    #[test]
    fn a_restart_forgets_an_old_quiet_period() {
        let t0 = Instant::now();
        let mut r = Retransmit::new(T, t0);
        r.resent(t0);
        // Long idle, then a new reading is sent: it gets a full timeout, not an instant resend.
        let later = t0 + T * 50;
        r.restart(later);
        assert!(!r.due(later + Duration::from_millis(1999), true));
        assert!(r.due(later + T, true));
    }
}
