//! A full file system: whether the store's commits fail for want of room, since when, and the
//! wait for room to come back.
//!
//! The store writer sets it when a commit fails with [`super::EngineError::DiskFull`] and holds
//! that batch (unacknowledged: devices and brokers keep their readings); it clears it once the
//! batch is committed. `/readyz`, `/metrics`, `/sync/status` (and so `hub status`) and the
//! liveness watch read it. Reads of the store go on meanwhile: the engine reopens itself after the
//! failed commit (see `redb_engine`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a part that keeps meeting a full file system says so.
pub const FULL_REMIND_EVERY: Duration = Duration::from_secs(60);

/// Lets a part that retries a write (retention, a sink saving its position) say that the file
/// system is full once, then at most every [`FULL_REMIND_EVERY`], instead of at every retry.
#[derive(Debug, Default)]
pub struct FullNotice {
    said_at: Option<Instant>,
}

impl FullNotice {
    /// Whether to say it now (and, if so, it counts as said).
    pub fn due(&mut self) -> bool {
        let due = self
            .said_at
            .is_none_or(|at| at.elapsed() >= FULL_REMIND_EVERY);
        if due {
            self.said_at = Some(Instant::now());
        }
        due
    }
}

/// Whether the file system holding the store is full.
#[derive(Debug, Default)]
pub struct DiskSpace {
    /// Unix ms since which commits fail for want of room; 0 while there is room.
    full_since_ms: AtomicU64,
}

impl DiskSpace {
    /// Whether commits now fail for want of room.
    pub fn is_full(&self) -> bool {
        self.full_since_ms.load(Ordering::Relaxed) != 0
    }

    /// Unix ms since which the file system has been full, if it is.
    pub fn full_since_ms(&self) -> Option<u64> {
        match self.full_since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(since),
        }
    }

    /// A commit failed for want of room at `now_ms`; returns whether that is news (it was not
    /// full before).
    pub fn set_full(&self, now_ms: u64) -> bool {
        self.full_since_ms
            .compare_exchange(0, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// A commit succeeded; returns since when the file system had been full, if it was.
    pub fn set_room(&self) -> Option<u64> {
        match self.full_since_ms.swap(0, Ordering::Relaxed) {
            0 => None,
            since => Some(since),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_from_the_first_failure_until_a_commit_succeeds() {
        let space = DiskSpace::default();
        assert!(!space.is_full());
        assert!(space.set_full(1_000));
        assert!(!space.set_full(2_000), "only the first failure is news");
        assert_eq!(space.full_since_ms(), Some(1_000));
        assert_eq!(space.set_room(), Some(1_000));
        assert!(!space.is_full());
        assert_eq!(space.set_room(), None);
    }

    #[test]
    fn a_full_disk_is_said_once_then_at_most_once_a_minute() {
        let mut notice = FullNotice::default();
        assert!(notice.due());
        assert!(!notice.due());
        notice.said_at = Instant::now().checked_sub(FULL_REMIND_EVERY);
        assert!(notice.due());
        assert!(!notice.due());
    }
}
