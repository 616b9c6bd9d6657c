//! Keeps ingest from outrunning retention at the quota.
//!
//! Retention deletes the oldest readings after commits, off to the side. While the store is
//! within its quota that is enough; at the quota a fast burst could otherwise commit batch after
//! batch while one deleting round runs, and the engine would grow its file (redb doubles it) past
//! the quota before the deletes land. So while retention reports the store tight, the writer
//! commits a batch only once a retention round that began after its last commit has finished:
//! commits and deletes take turns, and devices wait (unacknowledged, so they keep their readings)
//! instead of the disk filling.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

/// Turn-taking between the store writer and retention.
#[derive(Debug, Default)]
pub struct Room {
    /// Set by retention while live data is above its low mark (see [`super::retention`]).
    tight: AtomicBool,
    /// Rounds retention has begun.
    begun: AtomicU64,
    /// The latest round retention has finished (rounds never overlap).
    finished: AtomicU64,
    round_finished: Notify,
}

impl Room {
    /// Retention begins a round; returns its number, to pass to [`Room::finish_round`].
    pub fn begin_round(&self) -> u64 {
        self.begun.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Retention found live data above (`true`) or within its low mark.
    pub fn set_tight(&self, tight: bool) {
        self.tight.store(tight, Ordering::SeqCst);
    }

    /// Retention finished round `round`.
    pub fn finish_round(&self, round: u64) {
        self.finished.store(round, Ordering::SeqCst);
        self.round_finished.notify_waiters();
    }

    /// Retention stopped: the writer no longer waits for it.
    pub fn release(&self) {
        self.tight.store(false, Ordering::SeqCst);
        self.round_finished.notify_waiters();
    }

    /// The writer just committed: the round its next commit waits for, when the store is tight.
    pub fn committed(&self) -> u64 {
        self.begun.load(Ordering::SeqCst) + 1
    }

    /// Waits, while the store is tight, until round `turn` (from [`Room::committed`]) is
    /// finished.
    pub async fn wait_turn(&self, turn: u64) {
        loop {
            let finished = self.round_finished.notified();
            tokio::pin!(finished);
            // Registered before the checks, so a round finishing in between still wakes us.
            finished.as_mut().enable();
            if !self.tight.load(Ordering::SeqCst) || self.finished.load(Ordering::SeqCst) >= turn {
                return;
            }
            finished.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::task::JoinHandle;

    use super::*;

    /// A round found the store tight, then the writer committed and now waits for its turn.
    fn writer_waiting_at_the_quota(room: &Arc<Room>) -> (u64, JoinHandle<()>) {
        let round = room.begin_round();
        room.set_tight(true);
        room.finish_round(round);
        let turn = room.committed();
        let waiting = tokio::spawn({
            let room = room.clone();
            async move { room.wait_turn(turn).await }
        });
        (turn, waiting)
    }

    async fn goes_on(waiting: JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn while_tight_the_writer_waits_for_a_round_begun_after_its_commit() {
        let room = Arc::new(Room::default());
        // Not tight: no wait.
        room.wait_turn(room.committed()).await;

        let (turn, waiting) = writer_waiting_at_the_quota(&room);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no round since the commit");
        let round = room.begin_round();
        assert_eq!(round, turn);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the round has not finished");
        room.finish_round(round);
        goes_on(waiting).await;
    }

    #[tokio::test]
    async fn a_stopped_retention_lets_the_writer_go() {
        let room = Arc::new(Room::default());
        let (_, waiting) = writer_waiting_at_the_quota(&room);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        room.release();
        goes_on(waiting).await;
    }

    #[tokio::test]
    async fn a_round_that_finds_room_lets_the_writer_go() {
        let room = Arc::new(Room::default());
        let (_, waiting) = writer_waiting_at_the_quota(&room);
        let round = room.begin_round();
        room.set_tight(false);
        room.finish_round(round);
        goes_on(waiting).await;
    }
}
