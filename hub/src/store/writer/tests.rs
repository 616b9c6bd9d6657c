//! The writer's tests: answers in order, the queue's bounds, a full disk, turns at the quota.

use super::*;
use crate::store::memory::MemoryEngine;
use crate::store::{NewReading, Outcome, Transport};
use device_protocol::OwnedValue;

fn reading(seq: u32) -> NewReading {
    NewReading {
        device: "d".into(),
        transport: Transport::Mqtt,
        wire: crate::store::Wire::Json,
        seq: Some(seq),
        boot: None,
        timestamp_ms: None,
        received_ms: 1,
        metrics: vec![("v".into(), OwnedValue::I64(seq as i64))],
    }
}

#[tokio::test]
async fn answers_every_submission_in_order_with_acks_and_drains_on_close() {
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    let stats = Arc::new(WriterStats::default());
    let (tx, rx) = queue(128, 1 << 20);
    let mut answers = Vec::new();
    // 0..50, then 40..50 again: the retransmissions are answered but not stored.
    for seq in (0..50).chain(40..50) {
        let (done_tx, done_rx) = oneshot::channel();
        let items = vec![Ingest::Reading(reading(seq))];
        tx.send(Submission {
            items,
            done_tx: Some(done_tx),
        })
        .await
        .unwrap();
        answers.push((seq, done_rx));
    }
    drop(tx);
    let window = std::time::Duration::from_millis(1);
    StoreWriter::new(store.clone(), 8, window, stats.clone())
        .run(rx)
        .await;
    for (i, (seq, answer)) in answers.into_iter().enumerate() {
        let applied = answer.await.unwrap().unwrap();
        assert_eq!(applied.len(), 1);
        let expected = if i < 50 {
            Outcome::Stored {
                offset: i as u64,
                seq: crate::store::ReadingSeq::Device { boot: None, seq },
            }
        } else {
            Outcome::Duplicate { seq }
        };
        assert_eq!(applied[0].outcome, expected);
        let ack = applied[0].ack.as_ref().unwrap();
        assert!(
            ack.seq >= seq,
            "the ack covers the reading once it is durable"
        );
    }
    assert_eq!(stats.readings.load(Ordering::Relaxed), 50);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 10);
    assert!(
        stats.commits.load(Ordering::Relaxed) >= 60 / 8,
        "batched by at most batch_max"
    );
    assert_eq!(store.next_offset().unwrap(), 50);
}

#[tokio::test]
async fn the_queue_holds_at_most_its_bytes_until_their_commit_is_over() {
    let submission = |seq| Submission {
        items: vec![Ingest::Reading(reading(seq))],
        done_tx: None,
    };
    let one = Ingest::Reading(reading(0)).approx_bytes();
    assert!(one > std::mem::size_of::<Ingest>(), "the heap counts too");
    let (tx, rx) = queue(1_000, 2 * one);
    tx.send(submission(0)).await.unwrap();
    tx.send(submission(1)).await.unwrap();
    // Room for two: a third waits, in number of submissions far from the bound.
    let waits = tokio::time::timeout(Duration::from_millis(200), tx.send(submission(2)));
    assert!(waits.await.is_err(), "the queue took more than its bytes");
    assert!(!tx.try_send(submission(2)));
    // The writer commits what is queued, and the room comes back.
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    let stats = Arc::new(WriterStats::default());
    let writer = tokio::spawn(StoreWriter::new(store.clone(), 8, Duration::ZERO, stats).run(rx));
    tokio::time::timeout(Duration::from_secs(10), tx.send(submission(2)))
        .await
        .expect("no room after the commit")
        .unwrap();
    drop(tx);
    writer.await.unwrap();
    assert_eq!(store.next_offset().unwrap(), 3);
}

#[tokio::test]
async fn readers_holding_room_that_proved_too_small_never_wait_on_each_other() {
    let submission = |seq| Submission {
        items: vec![Ingest::Reading(reading(seq))],
        done_tx: None,
    };
    let one = Ingest::Reading(reading(0)).approx_bytes();
    let (tx, mut rx) = queue(1_000, one);
    // Two readers reserved half the queue each, then decoded more than they reserved: the
    // queue is all reserved, so waiting for the rest would wait for ever (nothing is queued
    // for the writer to free). Both go in.
    let first = tx.room(one / 2).await.unwrap();
    let second = tx.room(one / 2).await.unwrap();
    for (seq, room) in [(0, first), (1, second)] {
        tokio::time::timeout(Duration::from_secs(5), tx.send_in(room, submission(seq)))
            .await
            .expect("a reader waited on another's reservation")
            .unwrap();
    }
    assert!(rx.recv().await.is_some() && rx.recv().await.is_some());
    // A reservation larger than its items gives the rest back at once.
    let big = tx.room(one * 10).await.unwrap();
    tx.send_in(big, submission(2)).await.unwrap();
    drop(rx.recv().await);
    assert!(
        tx.try_send(submission(3)),
        "the unused room was not given back"
    );
}

#[tokio::test]
async fn a_full_disk_holds_the_batch_unanswered_until_there_is_room_then_stores_it_once() {
    let engine = MemoryEngine::new();
    let store = Store::open(Arc::new(engine.clone())).unwrap();
    store.append(&[reading(0)]).unwrap();
    engine.set_full(true);
    let stats = Arc::new(WriterStats::default());
    let (tx, rx) = queue(16, 1 << 20);
    let writer =
        tokio::spawn(StoreWriter::new(store.clone(), 4, Duration::ZERO, stats.clone()).run(rx));
    let mut answers = Vec::new();
    for seq in 1..=6 {
        let (done_tx, done_rx) = oneshot::channel();
        let items = vec![Ingest::Reading(reading(seq))];
        let done_tx = Some(done_tx);
        tx.send(Submission { items, done_tx }).await.unwrap();
        answers.push(done_rx);
    }
    // Full: nothing is answered (so nothing acknowledged), the store says so, reads go on.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for answer in &mut answers {
        assert!(
            answer.try_recv().is_err(),
            "answered while the disk is full"
        );
    }
    assert!(store.space().is_full());
    assert_eq!(store.next_offset().unwrap(), 1);
    assert!(store.device("d").unwrap().is_some());
    let failed = stats.failed_commits.load(Ordering::Relaxed);
    assert_eq!(failed, 1, "no retry while the file system has no room");
    // Room again: every held reading is stored once and answered, and the state clears.
    engine.set_full(false);
    for (seq, answer) in (1..=6).zip(answers) {
        let applied = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("not answered once there was room")
            .unwrap()
            .unwrap();
        assert_eq!(
            applied[0].outcome,
            Outcome::Stored {
                offset: seq as u64,
                seq: crate::store::sequence::ReadingSeq::Device { boot: None, seq }
            }
        );
    }
    assert!(!store.space().is_full());
    assert_eq!(store.next_offset().unwrap(), 7);
    drop(tx);
    writer.await.unwrap();
}

#[tokio::test]
async fn a_writer_stopping_on_a_full_disk_gives_up_without_answering_ok() {
    let engine = MemoryEngine::new();
    let store = Store::open(Arc::new(engine.clone())).unwrap();
    engine.set_full(true);
    let stats = Arc::new(WriterStats::default());
    let (tx, rx) = queue(16, 1 << 20);
    let (done_tx, done_rx) = oneshot::channel();
    let items = vec![Ingest::Reading(reading(1))];
    tx.send(Submission {
        items,
        done_tx: Some(done_tx),
    })
    .await
    .unwrap();
    drop(tx);
    let run = StoreWriter::new(store.clone(), 4, Duration::ZERO, stats).run(rx);
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the writer waited for room while the hub stops");
    assert_eq!(done_rx.await.unwrap(), Err(CommitFailed));
    assert_eq!(store.next_offset().unwrap(), 0);
}

#[tokio::test]
async fn at_the_quota_each_commit_waits_for_a_round_begun_after_the_last() {
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    let room_of = store.clone();
    let room = room_of.room();
    let first = room.begin_round();
    room.set_tight(true);
    room.finish_round(first);
    // Retention's side of the turns, with rounds started only by commits (no timer), so a
    // commit that waited for a round nothing starts would wait forever.
    let (announcer, durable) = crate::store::durable::channel(0);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rounds = tokio::spawn({
        let (store, mut durable, seen) = (store.clone(), durable, seen.clone());
        async move {
            loop {
                durable.committed().await;
                let round = store.room().begin_round();
                seen.lock().unwrap().push(store.next_offset().unwrap());
                store.room().finish_round(round);
            }
        }
    });
    let (tx, rx) = queue(16, 1 << 20);
    let stats = Arc::new(WriterStats::default());
    let writer = StoreWriter::new(store.clone(), 1, Duration::ZERO, stats)
        .announcing(announcer)
        .run(rx);
    let writer = tokio::spawn(writer);
    let mut answers = Vec::new();
    for seq in 0..5 {
        let (done_tx, done_rx) = oneshot::channel();
        let items = vec![Ingest::Reading(reading(seq))];
        let done_tx = Some(done_tx);
        tx.send(Submission { items, done_tx }).await.unwrap();
        answers.push(done_rx);
    }
    for answer in answers {
        tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("a commit waited for a round that never began")
            .unwrap()
            .unwrap();
    }
    // Between two commits a round ran that saw the first of them.
    let seen = seen.lock().unwrap().clone();
    for offset in 1..5 {
        assert!(seen.contains(&offset), "{seen:?}");
    }
    drop(tx);
    writer.await.unwrap();
    rounds.abort();
}

/// Submits reading `seq` and returns its answer.
async fn submit(
    tx: &SubmissionSender,
    seq: u32,
) -> oneshot::Receiver<Result<Vec<Applied>, CommitFailed>> {
    let (done_tx, done_rx) = oneshot::channel();
    tx.send(Submission {
        items: vec![Ingest::Reading(reading(seq))],
        done_tx: Some(done_tx),
    })
    .await
    .unwrap();
    done_rx
}

#[tokio::test(start_paused = true)]
async fn a_flush_window_gathers_readings_that_keep_coming_and_not_a_lone_one() {
    let store = Store::open(Arc::new(MemoryEngine::new())).unwrap();
    let stats = Arc::new(WriterStats::default());
    let (tx, rx) = queue(128, 1 << 20);
    let writer = StoreWriter::new(store, 2048, Duration::ZERO, stats.clone())
        .flushing(Duration::from_secs(1));
    let task = tokio::spawn(writer.run(rx));
    // A reading every 10 ms for 0.5 s: all share one commit, answered only after the last.
    let mut answers = Vec::new();
    for seq in 0..50 {
        answers.push(submit(&tx, seq).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for answer in answers {
        answer.await.unwrap().unwrap();
    }
    assert_eq!(stats.commits.load(Ordering::Relaxed), 1);
    // A lone reading waits only until nothing else came for FLUSH_IDLE.
    let started = tokio::time::Instant::now();
    submit(&tx, 50).await.await.unwrap().unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= FLUSH_IDLE && waited < Duration::from_secs(1),
        "{waited:?}"
    );
    assert_eq!(stats.commits.load(Ordering::Relaxed), 2);
    drop(tx);
    task.await.unwrap();
}
