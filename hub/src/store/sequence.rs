//! Per-device duplicate detection by `seq`, and the cumulative ack a device is told.
//!
//! A device numbers its readings; a retransmitted reading carries the same `seq` and must be stored
//! once. The hub cannot keep every seq it has seen, so it keeps, per device:
//!
//! - `base`: every seq at or below it is *settled*: stored, or listed in `missing`;
//! - a bitmap of the [`WINDOW`] seqs above `base`: which are stored;
//! - `missing`: seqs at or below `base` that were skipped over and never arrived (at most
//!   [`MAX_MISSING`]; when more, the oldest are given up and counted).
//!
//! When a seq arrives more than [`WINDOW`] ahead of `base`, the window slides and the seqs it leaves
//! unfilled go to `missing`, so a device that never retransmits does not stall, and one that does
//! can still fill its gaps. The ack is the highest seq `n` such that every seq of the device's
//! current run up to `n` is stored: `missing[0] - 1` while gaps remain, else `base`.
//!
//! A run starts with the first seq the hub sees from the device; readings older than that are
//! taken for duplicates, so after each (re)connection a device sends its oldest unacknowledged
//! reading first and waits for its ack before the rest.
//!
//! `(device, seq)` identifies a reading, so there is no guessing: a seq at or below `base` that is
//! not a recorded gap is a duplicate, however old. A device whose counter restarts breaks that
//! rule (its new readings look like old ones); [`SeqWindow::far_behind`] lets the caller warn about
//! it. Devices must keep `seq` across their restarts, or send none.

use serde::{Deserialize, Serialize};

/// Seqs tracked above `base`.
pub const WINDOW: u32 = 1024;
/// Gaps remembered below `base`.
pub const MAX_MISSING: usize = 256;

/// What to do with an arriving seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Store it.
    New,
    /// Already stored: acknowledge, do not store.
    Duplicate,
}

/// The dedup state of one device, persisted with its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqWindow {
    /// Every seq at or below this is settled (-1: none yet).
    base: i64,
    /// Bit `i` set: seq `base + 1 + i` is stored. `WINDOW / 8` bytes.
    bits: Vec<u8>,
    /// Settled seqs that were never stored, ascending.
    missing: Vec<u32>,
    /// Gaps given up because `missing` was full (for metrics and logs).
    pub given_up: u64,
}

impl SeqWindow {
    /// A run that starts with `seq`.
    pub fn starting_at(seq: u32) -> Self {
        let mut w = SeqWindow {
            base: i64::from(seq) - 1,
            bits: vec![0; (WINDOW / 8) as usize],
            missing: Vec::new(),
            given_up: 0,
        };
        w.set(seq);
        w
    }

    fn bit(&self, seq: i64) -> bool {
        let i = seq - self.base - 1;
        if !(0..i64::from(WINDOW)).contains(&i) {
            return false;
        }
        let i = i as usize;
        self.bits
            .get(i / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    fn set(&mut self, seq: u32) {
        let i = i64::from(seq) - self.base - 1;
        if (0..i64::from(WINDOW)).contains(&i) {
            let i = i as usize;
            if let Some(b) = self.bits.get_mut(i / 8) {
                *b |= 1 << (i % 8);
            }
        }
        self.settle();
    }

    /// Moves `base` up over stored seqs at the bottom of the window.
    fn settle(&mut self) {
        while self.bit(self.base + 1) {
            self.shift(1);
        }
    }

    /// Slides the window up by `n`, recording the unfilled seqs it leaves as missing.
    fn shift(&mut self, n: i64) {
        for k in 0..n.min(i64::from(WINDOW)) {
            let seq = self.base + 1 + k;
            if !self.bit(seq)
                && let Ok(seq) = u32::try_from(seq)
            {
                self.missing.push(seq);
            }
        }
        if self.missing.len() > MAX_MISSING {
            let excess = self.missing.len() - MAX_MISSING;
            self.missing.drain(..excess);
            self.given_up += excess as u64;
        }
        // Move the bits down by n in place (n >= WINDOW clears them all): byte by byte, each
        // byte taking the high bits of the next one. Reads are at or after the byte written.
        let n_bits = n.clamp(0, i64::from(WINDOW)) as usize;
        let (skip, rem) = (n_bits / 8, n_bits % 8);
        for i in 0..self.bits.len() {
            let lo = self.bits.get(i + skip).copied().unwrap_or(0);
            let hi = self.bits.get(i + skip + 1).copied().unwrap_or(0);
            let shifted = if rem == 0 {
                lo
            } else {
                (lo >> rem) | (hi << (8 - rem))
            };
            if let Some(b) = self.bits.get_mut(i) {
                *b = shifted;
            }
        }
        self.base += n;
    }

    /// What `seq` is, without changing anything.
    pub fn classify(&self, seq: u32) -> Verdict {
        let s = i64::from(seq);
        if s <= self.base {
            return if self.missing.binary_search(&seq).is_ok() {
                Verdict::New
            } else {
                Verdict::Duplicate
            };
        }
        if self.bit(s) {
            Verdict::Duplicate
        } else {
            Verdict::New
        }
    }

    /// Whether `seq` lies far below everything tracked: a very late retransmission, or a device
    /// whose counter restarted (which the hub cannot tell apart, and reports).
    pub fn far_behind(&self, seq: u32) -> bool {
        i64::from(seq) < self.base - i64::from(WINDOW)
    }

    /// Records `seq` as stored, after a [`Verdict::New`].
    pub fn record(&mut self, seq: u32) {
        let s = i64::from(seq);
        if s <= self.base {
            if let Ok(i) = self.missing.binary_search(&seq) {
                self.missing.remove(i);
            }
            return;
        }
        let over = s - (self.base + i64::from(WINDOW));
        if over > 0 {
            self.shift(over);
        }
        self.set(seq);
    }

    /// The cumulative ack: every seq of this run up to it is stored.
    pub fn ack(&self) -> Option<u32> {
        let n = match self.missing.first() {
            Some(first) => i64::from(*first) - 1,
            None => self.base,
        };
        u32::try_from(n).ok()
    }
}

#[cfg(test)]
mod tests {
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
    fn too_many_gaps_are_given_up_and_counted() {
        let mut seqs = vec![0];
        // Every other seq, far enough to push many gaps out of the window.
        seqs.extend((1..=(2 * (WINDOW + MAX_MISSING as u32) + 10)).filter(|s| s % 2 == 0));
        let (_, w) = run(&seqs);
        assert!(w.missing.len() <= MAX_MISSING);
        assert!(w.given_up > 0);
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
    fn survives_a_round_trip_through_the_store_encoding_and_stays_small() {
        let (_, typical) = run(&(0..500).collect::<Vec<_>>());
        let (_, worst) = run(&[3, 4, 9, 20_000]);
        assert_eq!(worst.missing.len(), MAX_MISSING);
        for w in [typical, worst] {
            let bytes = postcard::to_allocvec(&w).unwrap();
            assert_eq!(postcard::from_bytes::<SeqWindow>(&bytes).unwrap(), w);
            let bound = if w.missing.is_empty() {
                150
            } else {
                150 + 5 * MAX_MISSING
            };
            assert!(bytes.len() <= bound, "{} bytes per device", bytes.len());
        }
    }

    proptest! {
        /// Against a model that remembers every seq: a device whose seqs stay within the window of
        /// its run (no restart) gets each distinct seq stored exactly once, and the ack never
        /// covers a seq that was not stored.
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
                for s in first..=ack {
                    prop_assert!(model.contains(&s), "ack {} covers {} which was never stored", ack, s);
                }
            }
        }
    }
}
