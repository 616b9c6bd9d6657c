//! How a simulated device answers the hub's commands, the same on every transport.
//!
//! | name | answer |
//! | --- | --- |
//! | `echo` | ok; the result is the args (JSON: `result` is the args object; binary: the payload is the args fields) |
//! | `fail` | error: JSON `"requested failure"`, binary `Error(1)` |
//! | `sleep` (integer arg `ms`) | after `ms` milliseconds (telemetry goes on meanwhile): ok, result `{"slept_ms": ms}` |
//! | `ignore` | never answered (to test the hub's timeout) |
//! | anything else | error: JSON `"unknown command <name>"`, binary `Error(2)` |
//!
//! A `sleep` without a non-negative integer `ms` fails (JSON `"sleep needs a non-negative
//! integer arg ms"`, binary `Error(3)`); more than [`MAX_SLEEPING`] sleeps at once fail too (JSON
//! `"too many commands in progress"`, binary `Error(4)`).
//!
//! A command delivered again (same id) is answered again the same way, from a memory of the last
//! [`MEMORY`] ids: an answered one gets the same answer again at once, an ignored one is ignored
//! again, one still sleeping is not started twice (its answer comes once, when it is done).
//!
//! [`Commands`] does no I/O: a device hands it the payloads it receives (JSON from
//! `devices/{id}/commands`, or postcard `Downlink::Command` bytes from `devices/{id}/down` or a
//! serial frame) and sends the replies it returns (JSON to `devices/{id}/command-results`, postcard
//! `Uplink::CommandResult` bytes to `devices/{id}/up` or as a serial frame).
//!
//! Here: what each command comes to, the sleeps and the memory of ids; `wire` reads commands and
//! writes answers in each encoding.

#[cfg(test)]
mod tests;
mod wire;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use device_protocol::{MAX_STR_LEN, OwnedValue};
use serde::Serialize;

/// Command ids remembered, with their answers, for redeliveries.
pub const MEMORY: usize = 64;
/// Most `sleep` commands in progress at once.
pub const MAX_SLEEPING: usize = 256;

/// Longest wait of a `sleep` (a longer one waits this long: about never, for a test).
const MAX_SLEEP_MS: u64 = 365 * 86_400_000;

/// Binary error code of `fail`.
pub const CODE_REQUESTED: u16 = 1;
/// Binary error code of an unknown command.
pub const CODE_UNKNOWN: u16 = 2;
/// Binary error code of a `sleep` without a valid `ms`.
pub const CODE_BAD_ARGS: u16 = 3;
/// Binary error code when too many sleeps are in progress.
pub const CODE_BUSY: u16 = 4;

/// The longest command name quoted in an error, in chars (the error must fit [`MAX_STR_LEN`]).
const MAX_QUOTED_NAME: usize = 48;

/// How commands and their results are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `JsonCommand` in, `JsonCommandResult` out.
    Json,
    /// postcard `Downlink::Command` in, `Uplink::CommandResult` out.
    Binary,
}

/// Counters for the summary and `--report`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CommandStats {
    /// Commands received, redeliveries included.
    pub received: u64,
    /// Redeliveries of an id still remembered.
    pub duplicates: u64,
    /// Payloads on the command topic that were not a command (not answered).
    pub invalid: u64,
}

/// A command's arguments, as they came.
#[derive(Debug, Clone, PartialEq)]
enum Args {
    Json(serde_json::Map<String, serde_json::Value>),
    Binary(Vec<(String, OwnedValue)>),
}

/// A received command.
#[derive(Debug, Clone, PartialEq)]
struct Command {
    id: u64,
    name: String,
    args: Args,
}

/// What a command comes to.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Ok, with result fields.
    Ok(Args),
    /// Failed: binary code and JSON text.
    Err(u16, String),
}

/// What is remembered of an id.
#[derive(Debug, Clone, PartialEq)]
enum Memo {
    /// Sleeping: answered when it wakes.
    Sleeping,
    /// Never answered.
    Ignored,
    /// Answered with these bytes.
    Answered(Vec<u8>),
}

#[derive(Debug)]
struct Sleeping {
    wake_at: Instant,
    id: u64,
    ms: u64,
}

/// One device's command handler and its memory of recent ids.
#[derive(Debug)]
pub struct Commands {
    encoding: Encoding,
    memory: VecDeque<(u64, Memo)>,
    sleeping: Vec<Sleeping>,
    pub stats: CommandStats,
}

impl Commands {
    pub fn new(encoding: Encoding) -> Self {
        Commands {
            encoding,
            memory: VecDeque::with_capacity(MEMORY),
            sleeping: Vec::new(),
            stats: CommandStats::default(),
        }
    }

    /// Takes a command's payload received at `now`; returns the reply to send at once, if any.
    /// A payload that is not a command is counted and returned as an error (for a log line).
    pub fn receive(&mut self, payload: &[u8], now: Instant) -> Result<Option<Vec<u8>>, String> {
        let command = match self.parse(payload) {
            Ok(command) => command,
            Err(e) => {
                self.stats.invalid += 1;
                return Err(e);
            }
        };
        self.stats.received += 1;
        if let Some((_, memo)) = self.memory.iter().find(|(id, _)| *id == command.id) {
            self.stats.duplicates += 1;
            return Ok(match memo {
                Memo::Answered(reply) => Some(reply.clone()),
                Memo::Sleeping | Memo::Ignored => None,
            });
        }
        let (memo, reply) = match self.decide(&command, now) {
            Decision::Answer(outcome) => {
                let reply = self.encode(command.id, outcome);
                (Memo::Answered(reply.clone()), Some(reply))
            }
            Decision::Sleep => (Memo::Sleeping, None),
            Decision::Ignore => (Memo::Ignored, None),
        };
        self.remember(command.id, memo);
        Ok(reply)
    }

    /// When the next sleeping command wakes.
    pub fn next_wake(&self) -> Option<Instant> {
        self.sleeping.iter().map(|s| s.wake_at).min()
    }

    /// The replies of the sleeping commands that are done at `now`.
    pub fn wake(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut replies = Vec::new();
        let mut i = 0;
        while i < self.sleeping.len() {
            if self.sleeping[i].wake_at > now {
                i += 1;
                continue;
            }
            let done = self.sleeping.swap_remove(i);
            let reply = self.encode(done.id, Outcome::Ok(self.slept(done.ms)));
            if let Some((_, memo)) = self.memory.iter_mut().find(|(id, _)| *id == done.id) {
                *memo = Memo::Answered(reply.clone());
            }
            replies.push(reply);
        }
        replies
    }

    fn decide(&mut self, command: &Command, now: Instant) -> Decision {
        match command.name.as_str() {
            "echo" => Decision::Answer(Outcome::Ok(command.args.clone())),
            "fail" => Decision::Answer(Outcome::Err(CODE_REQUESTED, "requested failure".into())),
            "ignore" => Decision::Ignore,
            "sleep" => {
                let Some(ms) = sleep_ms(&command.args) else {
                    return Decision::Answer(Outcome::Err(
                        CODE_BAD_ARGS,
                        "sleep needs a non-negative integer arg ms".into(),
                    ));
                };
                if self.sleeping.len() >= MAX_SLEEPING {
                    return Decision::Answer(Outcome::Err(
                        CODE_BUSY,
                        "too many commands in progress".into(),
                    ));
                }
                // Longer than a year is about never, and stays within what the clock can say.
                let wake_at = now
                    .checked_add(Duration::from_millis(ms.min(MAX_SLEEP_MS)))
                    .unwrap_or(now);
                self.sleeping.push(Sleeping {
                    wake_at,
                    id: command.id,
                    ms,
                });
                Decision::Sleep
            }
            other => Decision::Answer(Outcome::Err(
                CODE_UNKNOWN,
                format!("unknown command {}", quote(other)),
            )),
        }
    }

    /// The result of a finished `sleep`.
    fn slept(&self, ms: u64) -> Args {
        match self.encoding {
            Encoding::Json => {
                let mut map = serde_json::Map::new();
                map.insert("slept_ms".into(), ms.into());
                Args::Json(map)
            }
            Encoding::Binary => Args::Binary(vec![(
                "slept_ms".into(),
                OwnedValue::I64(i64::try_from(ms).unwrap_or(i64::MAX)),
            )]),
        }
    }

    fn remember(&mut self, id: u64, memo: Memo) {
        if self.memory.len() >= MEMORY {
            self.memory.pop_front();
        }
        self.memory.push_back((id, memo));
    }
}

enum Decision {
    Answer(Outcome),
    Sleep,
    Ignore,
}

/// The `ms` arg of a `sleep`: a non-negative integer.
fn sleep_ms(args: &Args) -> Option<u64> {
    match args {
        Args::Json(map) => map.get("ms")?.as_u64(),
        Args::Binary(fields) => match fields.iter().find(|(name, _)| name == "ms")?.1 {
            OwnedValue::I64(ms) => u64::try_from(ms).ok(),
            _ => None,
        },
    }
}

/// A command name for an error text: cut to [`MAX_QUOTED_NAME`] chars, so the error stays far
/// below [`MAX_STR_LEN`] bytes.
fn quote(name: &str) -> String {
    const _: () = assert!(MAX_QUOTED_NAME * 4 + 32 <= MAX_STR_LEN);
    match name.char_indices().nth(MAX_QUOTED_NAME) {
        Some((cut, _)) => format!("{}...", &name[..cut]),
        None => name.to_owned(),
    }
}
