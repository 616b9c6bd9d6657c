//! How the parts that follow the store (retention, the sinks, the pull API) hear of new durable
//! readings: the store writer announces, after each commit, the offset the next reading will get.
//! Every reading below it is durable. One `watch` channel serves every follower: each wakes once
//! per commit (or once for several, if it was busy), instead of each polling the store.
//!
//! Invariants: the announced offset only grows; it is announced after the commit returned, never
//! before; every commit is announced, also one that stored no reading (retention takes turns with
//! the writer per commit, see [`super::room`]).

use tokio::sync::watch;

/// The writer's end: announces each commit.
#[derive(Debug)]
pub struct Announcer(watch::Sender<u64>);

/// A follower's end: the newest durable offset, and a wait for the next commit.
#[derive(Debug, Clone)]
pub struct Durable(watch::Receiver<u64>);

/// A channel starting at `next_offset`, the store's next offset when it opened.
pub fn channel(next_offset: u64) -> (Announcer, Durable) {
    let (tx, rx) = watch::channel(next_offset);
    (Announcer(tx), Durable(rx))
}

impl Announcer {
    /// Says that a commit returned and the store's next offset is now `next_offset`.
    pub fn committed(&self, next_offset: u64) {
        // `send_replace` wakes every follower even when no reading was stored: see the module doc.
        self.0.send_replace(next_offset);
    }

    /// A new follower.
    pub fn follow(&self) -> Durable {
        Durable(self.0.subscribe())
    }
}

impl Durable {
    /// The offset the next stored reading will get: every reading below it is durable.
    pub fn next_offset(&self) -> u64 {
        *self.0.borrow()
    }

    /// Waits for the next commit after the last one this follower saw. Once the writer has
    /// ended (the hub is stopping) no commit comes again, and this waits forever: callers race
    /// it with their shutdown or a deadline.
    pub async fn committed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn every_commit_wakes_a_follower_even_one_that_stored_nothing() {
        let (announcer, mut durable) = channel(5);
        assert_eq!(durable.next_offset(), 5);
        announcer.committed(5);
        tokio::time::timeout(Duration::from_secs(5), durable.committed())
            .await
            .expect("a commit that stored nothing still wakes followers");
        announcer.committed(9);
        durable.committed().await;
        assert_eq!(durable.next_offset(), 9);
    }

    #[tokio::test]
    async fn a_follower_waits_quietly_once_the_writer_is_gone() {
        let (announcer, mut durable) = channel(0);
        drop(announcer);
        let waited = tokio::time::timeout(Duration::from_millis(50), durable.committed()).await;
        assert!(
            waited.is_err(),
            "no commit comes after the writer ended, so the wait must not end"
        );
    }
}
