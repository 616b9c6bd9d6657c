//! Tests of `sequence`: windows against models that remember every seq, boots, given-up ranges.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

/// Feeds `seqs` through a window as the store does; returns what was stored.
fn run(seqs: &[u32]) -> (Vec<u32>, SeqWindow) {
    let mut stored = Vec::new();
    let mut w: Option<SeqWindow> = None;
    for &s in seqs {
        match w.as_ref().map(|w| w.classify(s)) {
            None => {
                w = Some(SeqWindow::starting_at(s));
                stored.push(s);
            }
            Some(Verdict::New) => {
                if let Some(w) = w.as_mut() {
                    w.record(s);
                }
                stored.push(s);
            }
            Some(Verdict::Duplicate) => {}
        }
    }
    (stored, w.expect("at least one seq"))
}

/// Every seq covered by `w`'s given-up ranges.
fn given_up_seqs(w: &SeqWindow) -> BTreeSet<u32> {
    w.gave_up().iter().flat_map(|r| r.first..=r.last).collect()
}

#[test]
fn in_order_with_retransmissions_stores_each_once_and_acks_the_highest() {
    let (stored, w) = run(&[0, 1, 2, 2, 1, 3, 0, 4]);
    assert_eq!(stored, vec![0, 1, 2, 3, 4]);
    assert_eq!(w.ack(), Some(4));
}

#[test]
fn a_gap_holds_the_ack_until_filled_and_out_of_order_arrivals_are_kept() {
    let (stored, w) = run(&[10, 11, 13, 14]);
    assert_eq!(stored, vec![10, 11, 13, 14]);
    assert_eq!(w.ack(), Some(11));
    let (stored, w) = run(&[10, 11, 13, 14, 12, 13]);
    assert_eq!(stored, vec![10, 11, 13, 14, 12]);
    assert_eq!(w.ack(), Some(14));
}

#[test]
fn a_jump_past_the_window_keeps_the_gaps_fillable() {
    let far = 5 + WINDOW + 10;
    let (stored, w) = run(&[0, 1, 2, far]);
    assert_eq!(stored, vec![0, 1, 2, far]);
    assert_eq!(w.ack(), Some(2), "the skipped seqs are not acknowledged");
    let (stored, w) = run(&[0, 1, 2, far, 3, 3, 4]);
    assert_eq!(stored, vec![0, 1, 2, far, 3, 4]);
    assert_eq!(w.ack(), Some(4));
}

#[test]
fn only_even_seqs_the_ack_passes_no_odd_one_that_was_not_given_up() {
    // The device: even seqs only, up to 3,000.
    let seqs: Vec<u32> = (0..=3000).filter(|s| s % 2 == 0).collect();
    let mut w = SeqWindow::starting_at(0);
    let mut given_up = 0;
    for &s in &seqs[1..] {
        assert_eq!(w.classify(s), Verdict::New);
        given_up += w.record(s);
        let ack = w.ack().expect("an ack");
        let named = given_up_seqs(&w);
        for odd in (1..=ack).filter(|s| s % 2 == 1) {
            assert!(named.contains(&odd), "ack {ack} passes {odd}, never named");
        }
    }
    assert!(w.missing.len() <= MAX_MISSING && w.gave_up.len() <= MAX_GAVE_UP_RANGES);
    assert_eq!(given_up, w.given_up);
    let ack = w.ack().expect("an ack");
    assert_eq!(
        given_up,
        u64::from(ack.div_ceil(2)),
        "every odd seq the ack passed was given up and counted"
    );
}

#[test]
fn a_given_up_seq_that_comes_late_is_stored_while_its_range_is_exact() {
    // 0, then a jump that leaves 1..=400 missing: 144 of them are given up as one range.
    let mut w = SeqWindow::starting_at(0);
    let top = 400 + WINDOW;
    assert_eq!(w.record(top), 144);
    assert_eq!(
        w.gave_up(),
        &[GaveUpRange {
            first: 1,
            last: 144,
            exact: true
        }]
    );
    assert_eq!(w.ack(), Some(144), "the ack passes what it names");
    for late in [1, 144, 70] {
        assert_eq!(w.classify(late), Verdict::New);
        assert_eq!(w.record(late), 0);
        assert_eq!(w.classify(late), Verdict::Duplicate, "stored once");
    }
    let ranges: Vec<(u32, u32)> = w.gave_up().iter().map(|r| (r.first, r.last)).collect();
    assert_eq!(ranges, vec![(2, 69), (71, 143)]);
}

#[test]
fn too_many_ranges_merge_the_oldest_which_then_take_nothing_late() {
    let seqs: Vec<u32> = (0..=6000).filter(|s| s % 2 == 0).collect();
    let (_, w) = run(&seqs);
    assert_eq!(w.gave_up().len(), MAX_GAVE_UP_RANGES);
    let oldest = w.gave_up()[0];
    assert!(!oldest.exact && oldest.first == 1);
    // 3 was given up but now lies in a merged range, with stored 2 and 4: taken for stored.
    assert_eq!(w.classify(3), Verdict::Duplicate);
    // The newest ranges are exact: a late one is stored.
    let newest = *w.gave_up().last().expect("ranges");
    assert!(newest.exact);
    assert_eq!(w.classify(newest.first), Verdict::New);
}

#[test]
fn old_seqs_are_duplicates_however_far_behind() {
    // A retransmission that lags far behind (its acks were lost) is stored once, not again.
    let seqs: Vec<u32> = (0..5000).chain(0..5000).collect();
    let (stored, w) = run(&seqs);
    assert_eq!(stored, (0..5000).collect::<Vec<_>>());
    assert_eq!(w.ack(), Some(4999));
    assert!(w.far_behind(0) && !w.far_behind(4000));
    // Below the first seq of the run: a duplicate too (a backlog is sent oldest first).
    let (stored, _) = run(&[5000, 5001, 7]);
    assert_eq!(stored, vec![5000, 5001]);
}

#[test]
fn a_new_boot_starts_a_run_and_the_previous_boot_is_still_known() {
    let mut runs = Runs::default();
    for seq in 0..50 {
        assert_eq!(runs.take(Some(1), seq).verdict, Verdict::New);
    }
    // Rebooted: the counter starts again, with a new boot.
    let first = runs.take(Some(2), 0);
    assert!(first.new_run && first.verdict == Verdict::New);
    for seq in 1..50 {
        assert_eq!(runs.take(Some(2), seq).verdict, Verdict::New, "seq {seq}");
    }
    assert_eq!(runs.ack(Some(2)).map(|a| a.seq), Some(49));
    // A late retransmission from the first boot is still a duplicate.
    assert_eq!(runs.take(Some(1), 10).verdict, Verdict::Duplicate);
    assert_eq!(runs.ack(Some(1)).map(|a| a.seq), Some(49));
    assert_eq!(runs.current_boot(), Some(2));
    // A third boot forgets the first.
    assert!(runs.take(Some(3), 0).new_run);
    assert!(runs.ack(Some(1)).is_none() && runs.ack(Some(2)).is_some());
    // Without a boot, a restarted counter is taken for old readings (the device must keep
    // seq across restarts, or send a boot).
    let mut plain = Runs::default();
    plain.take(None, 5000);
    let taken = plain.take(None, 0);
    assert_eq!(taken.verdict, Verdict::Duplicate);
    assert!(taken.far_behind, "which the store warns about");
}

#[test]
fn survives_a_round_trip_through_the_store_encoding_and_stays_small() {
    let (_, typical) = run(&(0..500).collect::<Vec<_>>());
    let (_, worst) = run(&(0..=6000).filter(|s| s % 2 == 0).collect::<Vec<_>>());
    assert_eq!(worst.missing.len(), MAX_MISSING);
    for w in [typical, worst] {
        let bytes = postcard::to_allocvec(&w).unwrap();
        assert_eq!(postcard::from_bytes::<SeqWindow>(&bytes).unwrap(), w);
        let bound = if w.missing.is_empty() {
            150
        } else {
            150 + 5 * MAX_MISSING + 12 * MAX_GAVE_UP_RANGES
        };
        assert!(bytes.len() <= bound, "{} bytes per device", bytes.len());
    }
}

#[test]
fn a_window_of_the_first_layout_reads_as_one_without_given_up_ranges() {
    let old = WindowV1 {
        base: 9,
        bits: vec![0; (WINDOW / 8) as usize],
        missing: vec![3],
        given_up: 2,
    };
    let w = SeqWindow::from(
        postcard::from_bytes::<WindowV1>(&postcard::to_allocvec(&old).unwrap()).unwrap(),
    );
    assert_eq!((w.ack(), w.given_up, w.gave_up().len()), (Some(2), 2, 0));
    assert_eq!(w.classify(3), Verdict::New);
    assert_eq!(w.classify(4), Verdict::Duplicate);
}

proptest! {
    /// Against a model that remembers every seq: a device whose seqs stay within the window of
    /// its run gets each distinct seq stored exactly once, and the ack never covers a seq
    /// that was neither stored nor given up.
    #[test]
    fn matches_a_model_that_remembers_everything(
        start in 1u32..1000,
        steps in proptest::collection::vec(0u32..200, 1..600),
    ) {
        // Seqs wander around a rising point: retransmissions, reordering, gaps.
        let seqs: Vec<u32> = steps.iter().enumerate().map(|(i, d)| start + i as u32 / 2 + d).collect();
        let mut model = BTreeSet::new();
        let mut expected = Vec::new();
        let first = seqs[0];
        for &s in &seqs {
            if s >= first && model.insert(s) {
                expected.push(s);
            }
        }
        let (stored, w) = run(&seqs);
        prop_assert_eq!(stored, expected);
        if let Some(ack) = w.ack() {
            let named = given_up_seqs(&w);
            for s in first..=ack {
                prop_assert!(model.contains(&s) || named.contains(&s), "ack {} covers {} which was never stored nor named", ack, s);
            }
        }
    }

    /// Sparse seqs that run far ahead of the window: still never stored twice, and the ack
    /// never passes a seq that was neither stored nor named as given up.
    #[test]
    fn sparse_seqs_are_stored_once_and_every_passed_gap_is_named(
        steps in proptest::collection::vec((1u32..40, any::<bool>()), 1..800),
    ) {
        let mut seqs = Vec::new();
        let mut top = 0u32;
        for (i, (jump, back)) in steps.iter().enumerate() {
            top += jump;
            // Now and then a late one from below.
            seqs.push(if *back && i % 3 == 0 { top.saturating_sub(jump * 37) } else { top });
        }
        let (stored, w) = run(&seqs);
        let unique: BTreeSet<u32> = stored.iter().copied().collect();
        prop_assert_eq!(unique.len(), stored.len(), "a seq stored twice");
        if let Some(ack) = w.ack() {
            let named = given_up_seqs(&w);
            for s in seqs[0]..=ack {
                prop_assert!(unique.contains(&s) || named.contains(&s), "ack {} passes {}", ack, s);
            }
        }
    }
}
