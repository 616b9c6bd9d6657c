//! The device's connection to the hub: opening it, the probe that starts each connection, the
//! link's events (acks, rejections, readings the hub gave up on, commands), sending the window and
//! the answers to commands, and reconnecting after a failure. The module above says why each
//! step is as it is.
//!
//! Invariants: only the `--window` oldest unacked readings are ever on the wire; only acks of the
//! device's boot (or without one) count; a rejected reading leaves the outbox at once; an answer
//! that finds no link waits for the next connect (at most [`commands::MEMORY`] of them); a
//! failed link is closed and reopened after a jittered wait that doubles up to [`RECONNECT_MAX`].

use std::time::Instant;

use anyhow::Context;

use super::{Device, Phase, RECONNECT_MAX, RECONNECT_MIN};
use crate::commands;
use crate::link::{Link, LinkEvent};

impl Device<'_> {
    /// Opens a new link.
    pub(super) fn connect(&mut self) {
        match Link::open(&self.plan.endpoint, &self.plan.id) {
            Ok(link) => {
                self.link = Some(link);
                self.phase = Phase::Connecting;
            }
            Err(e) => self.schedule_reconnect(&format!("{e:#}")),
        }
    }

    pub(super) async fn on_event(&mut self, event: LinkEvent) -> anyhow::Result<()> {
        let now = Instant::now();
        match event {
            LinkEvent::Up => {
                self.report.connections += 1;
                self.backoff = RECONNECT_MIN;
                if self.failures > 0 {
                    eprintln!("firmware-sim: {}: connected again", self.plan.id);
                }
                self.failures = 0;
                self.reprobing = false;
                self.start_probe(now, 0).await;
                while let Some(reply) = self.undelivered.front().cloned() {
                    if !self.send_reply(&reply).await {
                        break;
                    }
                    self.undelivered.pop_front();
                }
            }
            LinkEvent::Command(payload) => match self.commands.receive(&payload, now) {
                Ok(Some(reply)) => self.answer(reply).await,
                Ok(None) => {}
                Err(e) => {
                    let invalid = self.commands.stats.invalid;
                    if invalid == 1 || invalid.is_multiple_of(100) {
                        eprintln!(
                            "firmware-sim: {}: ignored a command payload ({invalid} so far): {e}",
                            self.plan.id
                        );
                    }
                }
            },
            LinkEvent::Ack { boot, .. } if !self.answers_us(boot) => {
                self.report.acks_other_boot += 1;
            }
            LinkEvent::Ack { seq, .. } => {
                let acked = self
                    .outbox
                    .ack_through(seq)
                    .with_context(|| format!("{}: updating its outbox", self.plan.id))?;
                if acked > 0 {
                    self.report.acked += acked as u64;
                    self.retransmit.progress(now);
                    self.next_unsent = self.next_unsent.saturating_sub(acked);
                }
                match self.phase {
                    Phase::Probing { .. } => self.start_streaming(now).await,
                    // The window moved: send what entered it.
                    Phase::Streaming => self.pump().await,
                    _ => {}
                }
            }
            LinkEvent::Rejected { seq, boot, reason } => {
                // Never to be stored: it leaves the outbox (the ack that follows passes it).
                if self.answers_us(boot)
                    && let Some(i) = self.outbox.remove(seq)
                {
                    self.report.rejected += 1;
                    if i < self.next_unsent {
                        self.next_unsent -= 1;
                    }
                    eprintln!(
                        "firmware-sim: {}: the hub rejected reading {seq}: {reason}",
                        self.plan.id
                    );
                }
            }
            LinkEvent::GaveUp { boot, ranges } => {
                // Sent once more at once: the hub stores one it can still tell was never stored.
                if self.answers_us(boot) {
                    for i in self.outbox.held_in(&ranges) {
                        self.report.gave_up += 1;
                        if !self.send_at(i).await {
                            break;
                        }
                    }
                }
            }
            LinkEvent::TimeSync(_) => {
                self.report.time_syncs += 1;
                if matches!(self.phase, Phase::Probing { .. }) {
                    self.start_streaming(now).await;
                }
            }
            LinkEvent::Down(why) => {
                if let Some(link) = self.link.take() {
                    link.close().await;
                }
                self.schedule_reconnect(&why);
            }
        }
        Ok(())
    }

    /// Whether an answer for the readings of `boot` is for this run of the device: of its boot,
    /// or without one (a hub older than protocol version 2 takes every ack as its own).
    fn answers_us(&self, boot: Option<u32>) -> bool {
        boot.is_none() || boot == self.plan.boot
    }

    /// Sends the probe of a connection (its `tries`-th so far).
    pub(super) async fn start_probe(&mut self, now: Instant, tries: u32) {
        let says_hello = self.link.as_ref().is_some_and(Link::says_hello);
        self.next_unsent = 0;
        if says_hello {
            self.phase = Phase::Probing {
                sent_at: Some(now),
                tries: tries + 1,
            };
            let hello = std::mem::take(&mut self.hello);
            self.send_raw(&hello).await;
            self.hello = hello;
        } else if self.outbox.is_empty() {
            self.phase = Phase::Probing {
                sent_at: None,
                tries,
            };
        } else {
            self.phase = Phase::Probing {
                sent_at: Some(now),
                tries: tries + 1,
            };
            self.send_at(0).await;
            self.next_unsent = 1;
        }
    }

    /// The hub answered: send the window, oldest first, and stream from now on.
    pub(super) async fn start_streaming(&mut self, now: Instant) {
        self.phase = Phase::Streaming;
        if std::mem::take(&mut self.reprobing) {
            // Still no progress since the ack timeout: keep backing off.
            self.retransmit.rearm(now);
        } else {
            self.retransmit.restart(now);
        }
        self.resend_window().await;
    }
    /// Sends the window again from its start: every unacked reading, oldest first, up to
    /// `--window` of them.
    pub(super) async fn resend_window(&mut self) {
        self.next_unsent = 0;
        self.pump().await;
    }

    /// Sends the readings of the window not sent yet in this round; stops if the link fails.
    pub(super) async fn pump(&mut self) {
        while self.next_unsent < self.outbox.len().min(self.plan.window) {
            if !self.send_at(self.next_unsent).await {
                return;
            }
            self.next_unsent += 1;
        }
    }

    /// Sends the `i`-th unacked reading; false if the link failed (it is then down).
    pub(super) async fn send_at(&mut self, i: usize) -> bool {
        let (Some(link), Some(record)) = (self.link.as_mut(), self.outbox.get_mut(i)) else {
            return false;
        };
        if record.sends > 0 {
            self.report.retransmitted += 1;
        }
        record.sends += 1;
        match link.send(&record.message, &mut self.noise).await {
            Ok(()) => true,
            Err(e) => {
                self.link_failed(&format!("{e:#}")).await;
                false
            }
        }
    }

    /// Sends the answer to a command now, or after the next connect if there is no link.
    pub(super) async fn answer(&mut self, reply: Vec<u8>) {
        if self.send_reply(&reply).await {
            return;
        }
        if self.undelivered.len() >= commands::MEMORY {
            self.undelivered.pop_front();
        }
        self.undelivered.push_back(reply);
    }

    /// Sends the answer to a command; false if there is no link or it failed (it is then down).
    async fn send_reply(&mut self, reply: &[u8]) -> bool {
        let Some(link) = self.link.as_mut() else {
            return false;
        };
        match link.send_reply(reply, &mut self.noise).await {
            Ok(()) => {
                self.report.commands_answered += 1;
                true
            }
            Err(e) => {
                self.link_failed(&format!("{e:#}")).await;
                false
            }
        }
    }

    /// Sends a message that is not a reading (the `Hello`).
    async fn send_raw(&mut self, message: &[u8]) -> bool {
        let Some(link) = self.link.as_mut() else {
            return false;
        };
        match link.send(message, &mut self.noise).await {
            Ok(()) => true,
            Err(e) => {
                self.link_failed(&format!("{e:#}")).await;
                false
            }
        }
    }

    async fn link_failed(&mut self, why: &str) {
        if let Some(link) = self.link.take() {
            link.close().await;
        }
        self.schedule_reconnect(why);
    }

    /// No link: try again after a jittered, growing wait.
    fn schedule_reconnect(&mut self, why: &str) {
        use rand::Rng;
        self.failures += 1;
        let wait = self.backoff.mul_f64(self.jitter.random_range(0.5..=1.0));
        // The first failure of an outage, then every tenth.
        if self.failures == 1 || self.failures.is_multiple_of(10) {
            eprintln!(
                "firmware-sim: {}: link down ({why}); retrying in {} ms",
                self.plan.id,
                wait.as_millis()
            );
        }
        self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
        self.phase = Phase::Down {
            retry_at: Instant::now() + wait,
        };
    }
}
