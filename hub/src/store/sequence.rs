//! Per-device duplicate detection by `(boot, seq)`, and the cumulative ack a device is told.
//!
//! A device numbers its readings; a retransmitted reading carries the same `seq` and must be stored
//! once. A device whose counter starts again at every reboot also sends a boot number that changes
//! at every reboot, and its seqs count within that boot: a *run*. The hub keeps, per device, the
//! run of its latest boot and the one before ([`Runs`]), so readings of the previous boot still in
//! the device's outbox are recognised too. A reading of a third boot starts a new run and the
//! oldest is forgotten: a retransmission from it would then be stored again.
//!
//! Within a run the hub cannot keep every seq it has seen, so a [`SeqWindow`] keeps:
//!
//! - `base`: every seq at or below it is *settled*: stored, rejected, or listed below;
//! - a bitmap of the [`WINDOW`] seqs above `base`: which are settled;
//! - `missing`: seqs at or below `base` that were skipped over and never arrived (at most
//!   [`MAX_MISSING`]); a retransmission of one is stored;
//! - `gave_up`: when more than [`MAX_MISSING`] are missing, the oldest are given up and kept as
//!   ranges (at most [`MAX_GAVE_UP_RANGES`]), which the device is told of before the ack passes
//!   them. An *exact* range holds only seqs that never arrived, so one sent late is still stored;
//!   when there are too many ranges the two oldest are merged into an inexact one, which may also
//!   cover stored seqs, and a seq in it is taken for a duplicate.
//!
//! When a seq arrives more than [`WINDOW`] ahead of `base`, the window slides and the seqs it
//! leaves unfilled go to `missing`, so a device that never retransmits does not stall, and one
//! that does can still fill its gaps.
//!
//! The ack is the highest `n` such that every seq of the run up to `n` is settled or given up:
//! `missing[0] - 1` while gaps remain, else `base`. So an ack never passes a seq that was not
//! stored unless the seq was rejected (the device is told so with the answer to that reading)
//! or is in `gave_up`, which every answer that moves the ack past it lists.
//!
//! A run starts with the first seq the hub sees of its boot; readings older than that are taken
//! for duplicates, so after each (re)connection a device sends its oldest unacknowledged reading
//! first and waits for its ack before the rest. A seq at or below `base` that is not a recorded
//! gap is a duplicate, however old: a device whose counter restarts without a new boot breaks
//! that rule (its new readings look like old ones); [`SeqWindow::far_behind`] lets the caller
//! warn about it.

use device_protocol::SeqRange;
use serde::{Deserialize, Serialize};

/// Seqs tracked above `base`.
pub const WINDOW: u32 = 1024;
/// Gaps remembered below `base`, open to a late arrival.
pub const MAX_MISSING: usize = 256;
/// Ranges of given-up seqs remembered per run.
pub const MAX_GAVE_UP_RANGES: usize = 64;

/// What to do with an arriving seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New: store it.
    New,
    /// Already settled: acknowledge, do not store.
    Duplicate,
}

/// How a stored reading is numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadingSeq {
    /// By the device: its seq in the run of its boot (if it sends one).
    Device {
        /// The device's boot number.
        boot: Option<u32>,
        /// The device's seq.
        seq: u32,
    },
    /// By the hub, for a device that sends no seq, in a numbering of the device's own that never
    /// mixes with a device's seqs: retransmissions of such readings cannot be recognised.
    Hub(u32),
}

impl ReadingSeq {
    /// The device's seq, if the device numbered it.
    pub fn device_seq(self) -> Option<u32> {
        match self {
            ReadingSeq::Device { seq, .. } => Some(seq),
            ReadingSeq::Hub(_) => None,
        }
    }

    /// The device's boot, if it sent one.
    pub fn boot(self) -> Option<u32> {
        match self {
            ReadingSeq::Device { boot, .. } => boot,
            ReadingSeq::Hub(_) => None,
        }
    }

    /// The hub's number, if the hub numbered it.
    pub fn hub_seq(self) -> Option<u32> {
        match self {
            ReadingSeq::Hub(n) => Some(n),
            ReadingSeq::Device { .. } => None,
        }
    }
}

/// A range of seqs the hub gave up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GaveUpRange {
    /// First seq.
    pub first: u32,
    /// Last seq (at least `first`).
    pub last: u32,
    /// Every seq in it never arrived (not merged with another range).
    pub exact: bool,
}

/// The dedup state of one run, persisted with its device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqWindow {
    /// Every seq at or below this is settled (-1: none yet).
    base: i64,
    /// Bit `i` set: seq `base + 1 + i` is settled. `WINDOW / 8` bytes.
    bits: Vec<u8>,
    /// Settled seqs that never arrived and are still awaited, ascending.
    missing: Vec<u32>,
    /// Given-up seqs, ascending ranges, all below `missing`.
    gave_up: Vec<GaveUpRange>,
    /// Seqs given up so far (for metrics and logs).
    given_up: u64,
}

/// The layout of [`SeqWindow`] before schema 3 (no `gave_up`): what older device records hold.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WindowV1 {
    pub(in crate::store) base: i64,
    pub(in crate::store) bits: Vec<u8>,
    pub(in crate::store) missing: Vec<u32>,
    pub(in crate::store) given_up: u64,
}

impl From<WindowV1> for SeqWindow {
    fn from(old: WindowV1) -> Self {
        // The seqs an older hub gave up were never told to the device: nothing to list.
        SeqWindow {
            base: old.base,
            bits: old.bits,
            missing: old.missing,
            gave_up: Vec::new(),
            given_up: old.given_up,
        }
    }
}

impl SeqWindow {
    /// A run that starts with `seq`.
    pub fn starting_at(seq: u32) -> Self {
        let mut w = SeqWindow {
            base: i64::from(seq) - 1,
            bits: vec![0; (WINDOW / 8) as usize],
            missing: Vec::new(),
            gave_up: Vec::new(),
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

    /// Moves `base` up over settled seqs at the bottom of the window.
    fn settle(&mut self) {
        while self.bit(self.base + 1) {
            self.shift(1);
        }
    }

    /// Slides the window up by `n`, recording the unfilled seqs it leaves as missing, and giving
    /// up the oldest missing ones past [`MAX_MISSING`]; returns how many were given up.
    fn shift(&mut self, n: i64) -> u64 {
        for k in 0..n.min(i64::from(WINDOW)) {
            let seq = self.base + 1 + k;
            if !self.bit(seq)
                && let Ok(seq) = u32::try_from(seq)
            {
                self.missing.push(seq);
            }
        }
        let mut given_up = 0;
        if self.missing.len() > MAX_MISSING {
            let excess = self.missing.len() - MAX_MISSING;
            for seq in self.missing.drain(..excess) {
                add_gave_up(&mut self.gave_up, seq);
            }
            given_up = excess as u64;
            self.given_up += given_up;
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
        given_up
    }

    /// The exact given-up range holding `seq`, if any.
    fn exact_gave_up(&self, seq: u32) -> Option<usize> {
        self.gave_up
            .iter()
            .position(|r| r.exact && (r.first..=r.last).contains(&seq))
    }

    /// What `seq` is, without changing anything.
    pub fn classify(&self, seq: u32) -> Verdict {
        let s = i64::from(seq);
        if s <= self.base {
            let awaited =
                self.missing.binary_search(&seq).is_ok() || self.exact_gave_up(seq).is_some();
            return if awaited {
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
    /// whose counter restarted without a new boot (which the hub cannot tell apart, and reports).
    pub fn far_behind(&self, seq: u32) -> bool {
        i64::from(seq) < self.base - i64::from(WINDOW)
    }

    /// Records `seq` as settled (stored or rejected), after a [`Verdict::New`]; returns how many
    /// seqs its arrival made the hub give up.
    pub fn record(&mut self, seq: u32) -> u64 {
        let s = i64::from(seq);
        if s <= self.base {
            if let Ok(i) = self.missing.binary_search(&seq) {
                self.missing.remove(i);
            } else if let Some(i) = self.exact_gave_up(seq) {
                fill_gave_up(&mut self.gave_up, i, seq);
            }
            return 0;
        }
        let over = s - (self.base + i64::from(WINDOW));
        let given_up = if over > 0 { self.shift(over) } else { 0 };
        self.set(seq);
        given_up
    }

    /// The cumulative ack: every seq of this run up to it is settled or given up.
    pub fn ack(&self) -> Option<u32> {
        let n = match self.missing.first() {
            Some(first) => i64::from(*first) - 1,
            None => self.base,
        };
        u32::try_from(n).ok()
    }

    /// The ranges given up, ascending.
    pub fn gave_up(&self) -> &[GaveUpRange] {
        &self.gave_up
    }
}

/// Adds `seq`, above every range, to `ranges`; merges the two oldest past the bound.
fn add_gave_up(ranges: &mut Vec<GaveUpRange>, seq: u32) {
    match ranges.last_mut() {
        Some(last) if last.exact && u64::from(last.last) + 1 == u64::from(seq) => last.last = seq,
        _ => ranges.push(GaveUpRange {
            first: seq,
            last: seq,
            exact: true,
        }),
    }
    bound_gave_up(ranges);
}

/// Takes `seq` out of the exact range `ranges[i]`, which holds it: it arrived after all.
fn fill_gave_up(ranges: &mut Vec<GaveUpRange>, i: usize, seq: u32) {
    let Some(range) = ranges.get(i).copied() else {
        return;
    };
    match (range.first == seq, range.last == seq) {
        (true, true) => {
            ranges.remove(i);
        }
        (true, false) => ranges[i].first = seq + 1,
        (false, true) => ranges[i].last = seq - 1,
        (false, false) => {
            ranges[i].last = seq - 1;
            ranges.insert(
                i + 1,
                GaveUpRange {
                    first: seq + 1,
                    last: range.last,
                    exact: true,
                },
            );
            bound_gave_up(ranges);
        }
    }
}

/// Merges the two oldest ranges while there are more than [`MAX_GAVE_UP_RANGES`].
fn bound_gave_up(ranges: &mut Vec<GaveUpRange>) {
    while ranges.len() > MAX_GAVE_UP_RANGES {
        let second = ranges.remove(1);
        ranges[0] = GaveUpRange {
            first: ranges[0].first,
            last: second.last,
            exact: false,
        };
    }
}

/// One run: the readings a device numbered since one boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The boot (`None`: the device sends none).
    pub boot: Option<u32>,
    /// Its seqs.
    pub window: SeqWindow,
}

/// What the device is told about a run: its cumulative ack and what the hub gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAck {
    /// The run's boot.
    pub boot: Option<u32>,
    /// Every seq of the run up to this is settled or given up.
    pub seq: u32,
    /// The given-up ranges of the run, ascending (at most [`MAX_GAVE_UP_RANGES`]).
    pub gave_up: Vec<SeqRange>,
}

/// What became of an arriving `(boot, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// New (now settled) or a duplicate.
    pub verdict: Verdict,
    /// The reading started a run (its boot was not one of the runs kept).
    pub new_run: bool,
    /// Seqs its arrival made the hub give up.
    pub given_up: u64,
    /// It lies far below its run (see [`SeqWindow::far_behind`]).
    pub far_behind: bool,
}

/// The runs kept for one device: of its latest boot, and of the one before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runs {
    current: Option<Run>,
    previous: Option<Run>,
}

impl Runs {
    /// The runs of a device record written before boots were known: its one window, without boot.
    pub fn from_window(window: Option<SeqWindow>) -> Self {
        Runs {
            current: window.map(|window| Run { boot: None, window }),
            previous: None,
        }
    }

    fn run_mut(&mut self, boot: Option<u32>) -> Option<&mut Run> {
        if self.current.as_ref().is_some_and(|r| r.boot == boot) {
            return self.current.as_mut();
        }
        self.previous.as_mut().filter(|r| r.boot == boot)
    }

    fn run(&self, boot: Option<u32>) -> Option<&Run> {
        [self.current.as_ref(), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|r| r.boot == boot)
    }

    /// Takes the reading `seq` of `boot`: settles it if it is new. A boot of neither run kept
    /// starts a new one, and the older of the two is forgotten.
    pub fn take(&mut self, boot: Option<u32>, seq: u32) -> Taken {
        let Some(run) = self.run_mut(boot) else {
            self.previous = self.current.take();
            self.current = Some(Run {
                boot,
                window: SeqWindow::starting_at(seq),
            });
            return Taken {
                verdict: Verdict::New,
                new_run: true,
                given_up: 0,
                far_behind: false,
            };
        };
        let verdict = run.window.classify(seq);
        let given_up = match verdict {
            Verdict::New => run.window.record(seq),
            Verdict::Duplicate => 0,
        };
        Taken {
            verdict,
            new_run: false,
            given_up,
            far_behind: verdict == Verdict::Duplicate && run.window.far_behind(seq),
        }
    }

    /// What the device is told about the run of `boot`, if the hub keeps it.
    pub fn ack(&self, boot: Option<u32>) -> Option<RunAck> {
        let run = self.run(boot)?;
        Some(RunAck {
            boot,
            seq: run.window.ack()?,
            gave_up: run
                .window
                .gave_up()
                .iter()
                .map(|r| SeqRange {
                    first: r.first,
                    last: r.last,
                })
                .collect(),
        })
    }

    /// The boot of the latest run.
    pub fn current_boot(&self) -> Option<u32> {
        self.current.as_ref().and_then(|r| r.boot)
    }

    /// Whether any run is kept (the device numbers its readings).
    pub fn is_empty(&self) -> bool {
        self.current.is_none()
    }
}

#[cfg(test)]
#[path = "sequence_tests.rs"]
mod tests;
