//! A device's outbox: every reading is appended here before it is sent, and stays until the hub's
//! cumulative ack covers its seq. It also remembers the device's next seq, so that seqs keep
//! counting up across restarts of the simulator.
//!
//! # In memory or on disk
//!
//! [`Outbox::in_memory`] keeps the readings in memory only (retransmission works, a restarted
//! simulator starts again at seq 0). [`Outbox::open`] keeps them in two files per device in a
//! directory, loaded when the outbox is opened (the files, how they are loaded, compacted and
//! synced: `disk`).

mod disk;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io::{self, Write};

use self::disk::{Disk, push_frame};

/// One reading waiting for its ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The reading's seq.
    pub seq: u32,
    /// The postcard bytes of its `Uplink::Telemetry`.
    pub message: Vec<u8>,
    /// How many times it was sent (loaded records count as sent once by an earlier run).
    pub sends: u32,
}

/// The readings of one device that the hub has not acked yet, oldest first.
#[derive(Debug)]
pub struct Outbox {
    pending: VecDeque<Record>,
    /// The seq of the next reading (`u32::MAX + 1` once every seq is used).
    next_seq: u64,
    acked_through: Option<u32>,
    max: usize,
    disk: Option<Disk>,
    /// Acks for seqs this outbox never produced (the hub remembers another run of this device).
    pub acks_beyond: u64,
}

impl Outbox {
    /// An outbox in memory that holds at most `max` readings.
    pub fn in_memory(max: usize) -> Self {
        Outbox {
            pending: VecDeque::new(),
            next_seq: 0,
            acked_through: None,
            max: max.max(1),
            disk: None,
            acks_beyond: 0,
        }
    }

    /// Unacked readings.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when every reading is acked.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// True when it holds `max` readings (or more, if `max` was lowered): produce no more.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.max
    }

    /// The seq the next reading gets (`u32::MAX + 1` once they are all used).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Every seq up to this one is acked.
    pub fn acked_through(&self) -> Option<u32> {
        self.acked_through
    }

    /// The unacked readings, oldest first.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.pending.iter()
    }

    /// The `i`-th unacked reading, oldest first.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Record> {
        self.pending.get_mut(i)
    }

    /// Drops the unacked reading `seq` (the hub rejected it); its index before, if it was held.
    /// Not written to disk: the ack that passes it follows.
    pub fn remove(&mut self, seq: u32) -> Option<usize> {
        let i = self.pending.iter().position(|r| r.seq == seq)?;
        self.pending.remove(i);
        Some(i)
    }

    /// The indexes of the unacked readings whose seq lies in one of `ranges` (inclusive).
    pub fn held_in(&self, ranges: &[(u32, u32)]) -> Vec<usize> {
        self.pending
            .iter()
            .enumerate()
            .filter(|(_, r)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&r.seq)))
            .map(|(i, _)| i)
            .collect()
    }

    /// Appends the reading `seq`, which must be [`Outbox::next_seq`], whose postcard
    /// `Uplink::Telemetry` bytes are `message`. It is written to the log (and synced, with
    /// `fsync`) before this returns. The caller checks [`Outbox::is_full`] first.
    pub fn append(&mut self, seq: u32, message: Vec<u8>) -> io::Result<()> {
        if u64::from(seq) != self.next_seq {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("appending seq {seq}, expected {}", self.next_seq),
            ));
        }
        if let Some(disk) = self.disk.as_mut() {
            let mut frame = Vec::with_capacity(message.len() + 16);
            push_frame(&message, &mut frame)?;
            disk.log.write_all(&frame)?;
            if disk.fsync {
                disk.log.sync_data()?;
            }
            disk.records_in_file += 1;
        }
        self.pending.push_back(Record {
            seq,
            message,
            sends: 0,
        });
        self.next_seq += 1;
        Ok(())
    }

    /// Applies the hub's cumulative ack: every seq up to `seq` is stored. Returns how many readings
    /// it newly acked. An ack below the current one changes nothing; one above every produced seq
    /// is counted in [`Outbox::acks_beyond`] and acks everything.
    pub fn ack_through(&mut self, seq: u32) -> io::Result<usize> {
        let Some(last) = self.next_seq.checked_sub(1) else {
            self.acks_beyond += 1;
            return Ok(0);
        };
        let mut seq = u64::from(seq);
        if seq > last {
            self.acks_beyond += 1;
            seq = last;
        }
        if self.acked_through.is_some_and(|k| u64::from(k) >= seq) {
            return Ok(0);
        }
        let mut acked = 0;
        while self
            .pending
            .front()
            .is_some_and(|r| u64::from(r.seq) <= seq)
        {
            self.pending.pop_front();
            acked += 1;
        }
        // `seq <= last <= u32::MAX`.
        self.acked_through = Some(seq as u32);
        if let Some(disk) = self.disk.as_mut() {
            disk.ack_dirty = true;
        }
        self.maybe_compact()?;
        Ok(acked)
    }
}
