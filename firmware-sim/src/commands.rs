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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use device_protocol::json::{JsonCommand, JsonCommandResult};
use device_protocol::{
    CommandResult, CommandStatus, Downlink, Field, Fields, MAX_STR_LEN, OwnedValue, Uplink, Value,
};
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

    fn parse(&self, payload: &[u8]) -> Result<Command, String> {
        match self.encoding {
            Encoding::Json => {
                let c: JsonCommand = serde_json::from_slice(payload)
                    .map_err(|e| format!("not a JSON command: {e}"))?;
                Ok(Command {
                    id: c.id,
                    name: c.name,
                    args: Args::Json(c.args),
                })
            }
            Encoding::Binary => match Downlink::decode(payload) {
                Ok(Downlink::Command(c)) => Ok(Command {
                    id: c.command_id,
                    name: c.name.to_owned(),
                    args: Args::Binary(
                        c.args
                            .iter()
                            .map(|f| (f.name.to_owned(), OwnedValue::from(&f.value)))
                            .collect(),
                    ),
                }),
                Ok(_) => Err("not a command".into()),
                Err(e) => Err(format!("not a downlink message: {e}")),
            },
        }
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

    /// The reply bytes of `outcome` for command `id`.
    fn encode(&self, id: u64, outcome: Outcome) -> Vec<u8> {
        match self.encoding {
            Encoding::Json => {
                let result = match outcome {
                    Outcome::Ok(args) => JsonCommandResult {
                        id,
                        ok: true,
                        result: Some(json_result(args)),
                        error: None,
                    },
                    Outcome::Err(_, error) => JsonCommandResult {
                        id,
                        ok: false,
                        result: None,
                        error: Some(error),
                    },
                };
                // A struct of a map, a string and numbers always serializes.
                serde_json::to_vec(&result).unwrap_or_default()
            }
            Encoding::Binary => {
                let (status, fields) = match &outcome {
                    Outcome::Ok(Args::Binary(fields)) => (CommandStatus::Ok, fields.as_slice()),
                    Outcome::Ok(Args::Json(_)) => (CommandStatus::Ok, &[][..]),
                    Outcome::Err(code, _) => (CommandStatus::Error(*code), &[][..]),
                };
                let mut payload = Fields::new();
                for (name, value) in fields {
                    // At most MAX_FIELDS: they came from a command's args, or are one field.
                    let _ = payload.push(Field {
                        name,
                        value: value.as_value(),
                    });
                }
                let message = Uplink::CommandResult(CommandResult {
                    command_id: id,
                    status,
                    payload,
                });
                // Fields from a validated command are valid; if not, answer without them.
                message.to_vec().unwrap_or_else(|_| {
                    Uplink::CommandResult(CommandResult {
                        command_id: id,
                        status,
                        payload: Fields::new(),
                    })
                    .to_vec()
                    .unwrap_or_default()
                })
            }
        }
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

/// JSON result data: the args object as it came (binary args, never here, as an object too).
fn json_result(args: Args) -> serde_json::Value {
    match args {
        Args::Json(map) => serde_json::Value::Object(map),
        Args::Binary(fields) => serde_json::Value::Object(
            fields
                .into_iter()
                .map(|(name, value)| {
                    let value = match value.as_value() {
                        Value::F64(x) => serde_json::Number::from_f64(x)
                            .map_or(serde_json::Value::Null, serde_json::Value::Number),
                        Value::I64(i) => i.into(),
                        Value::Bool(b) => b.into(),
                        Value::Str(s) => s.into(),
                    };
                    (name, value)
                })
                .collect(),
        ),
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

#[cfg(test)]
mod tests {
    use device_protocol::json::parse_command_result;

    use super::*;

    fn json(id: u64, name: &str, args: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"id": id, "name": name, "args": args})).unwrap()
    }

    fn binary(id: u64, name: &str, args: &[(&str, Value<'_>)]) -> Vec<u8> {
        let mut fields = Fields::new();
        for (name, value) in args {
            fields
                .push(Field {
                    name,
                    value: value.clone(),
                })
                .unwrap();
        }
        Downlink::Command(device_protocol::Command {
            command_id: id,
            name,
            args: fields,
        })
        .to_vec()
        .unwrap()
    }

    fn json_reply(bytes: &[u8]) -> JsonCommandResult {
        // The hub's own parser accepts it.
        parse_command_result(bytes).unwrap()
    }

    /// (id, status, payload) of a binary reply.
    fn binary_reply(bytes: &[u8]) -> (u64, CommandStatus, Vec<(String, OwnedValue)>) {
        match Uplink::decode(bytes).unwrap() {
            Uplink::CommandResult(r) => (
                r.command_id,
                r.status,
                r.payload
                    .iter()
                    .map(|f| (f.name.to_owned(), OwnedValue::from(&f.value)))
                    .collect(),
            ),
            other => panic!("not a command result: {other:?}"),
        }
    }

    #[test]
    fn json_names_map_to_their_answers() {
        let now = Instant::now();
        let mut c = Commands::new(Encoding::Json);
        let args = serde_json::json!({"a": 1, "b": [true, "x"], "c": {"d": null}});
        let r = json_reply(
            &c.receive(&json(1, "echo", args.clone()), now)
                .unwrap()
                .unwrap(),
        );
        assert_eq!((r.id, r.ok, r.result, r.error), (1, true, Some(args), None));

        let r = json_reply(
            &c.receive(&json(2, "fail", serde_json::json!({})), now)
                .unwrap()
                .unwrap(),
        );
        assert_eq!(
            (r.id, r.ok, r.error.as_deref()),
            (2, false, Some("requested failure"))
        );

        let r = json_reply(
            &c.receive(&json(3, "reboot", serde_json::json!({})), now)
                .unwrap()
                .unwrap(),
        );
        assert_eq!(r.error.as_deref(), Some("unknown command reboot"));

        assert_eq!(
            c.receive(&json(4, "ignore", serde_json::json!({})), now),
            Ok(None)
        );

        // No args at all is an empty object.
        let r = json_reply(
            &c.receive(br#"{"id":5,"name":"echo"}"#, now)
                .unwrap()
                .unwrap(),
        );
        assert_eq!(r.result, Some(serde_json::json!({})));
        assert_eq!(c.stats.received, 5);
    }

    #[test]
    fn binary_names_map_to_their_answers() {
        let now = Instant::now();
        let mut c = Commands::new(Encoding::Binary);
        let reply = c
            .receive(
                &binary(7, "echo", &[("x", Value::I64(-3)), ("s", Value::Str("hi"))]),
                now,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            binary_reply(&reply),
            (
                7,
                CommandStatus::Ok,
                vec![
                    ("x".into(), OwnedValue::I64(-3)),
                    ("s".into(), OwnedValue::Str("hi".into()))
                ]
            )
        );
        let reply = c.receive(&binary(8, "fail", &[]), now).unwrap().unwrap();
        assert_eq!(binary_reply(&reply), (8, CommandStatus::Error(1), vec![]));
        let reply = c.receive(&binary(9, "nope", &[]), now).unwrap().unwrap();
        assert_eq!(binary_reply(&reply), (9, CommandStatus::Error(2), vec![]));
        assert_eq!(c.receive(&binary(10, "ignore", &[]), now), Ok(None));
        let reply = c
            .receive(&binary(11, "sleep", &[("ms", Value::F64(1.0))]), now)
            .unwrap()
            .unwrap();
        assert_eq!(binary_reply(&reply), (11, CommandStatus::Error(3), vec![]));
    }

    #[test]
    fn sleep_answers_when_it_wakes_and_not_before() {
        let t0 = Instant::now();
        for encoding in [Encoding::Json, Encoding::Binary] {
            let mut c = Commands::new(encoding);
            let payload = match encoding {
                Encoding::Json => json(1, "sleep", serde_json::json!({"ms": 250})),
                Encoding::Binary => binary(1, "sleep", &[("ms", Value::I64(250))]),
            };
            assert_eq!(c.receive(&payload, t0), Ok(None));
            assert_eq!(c.next_wake(), Some(t0 + Duration::from_millis(250)));
            assert!(c.wake(t0 + Duration::from_millis(249)).is_empty());
            // Delivered again while sleeping: not started twice, no answer yet.
            assert_eq!(
                c.receive(&payload, t0 + Duration::from_millis(100)),
                Ok(None)
            );
            assert_eq!(c.next_wake(), Some(t0 + Duration::from_millis(250)));
            let replies = c.wake(t0 + Duration::from_millis(250));
            assert_eq!(replies.len(), 1);
            assert_eq!(c.next_wake(), None);
            match encoding {
                Encoding::Json => {
                    let r = json_reply(&replies[0]);
                    assert_eq!((r.id, r.ok), (1, true));
                    assert_eq!(r.result, Some(serde_json::json!({"slept_ms": 250})));
                }
                Encoding::Binary => assert_eq!(
                    binary_reply(&replies[0]),
                    (
                        1,
                        CommandStatus::Ok,
                        vec![("slept_ms".into(), OwnedValue::I64(250))]
                    )
                ),
            }
            // Delivered again after: the same answer at once.
            assert_eq!(
                c.receive(&payload, t0 + Duration::from_secs(1)),
                Ok(Some(replies[0].clone()))
            );
        }
    }

    #[test]
    fn a_sleep_without_a_valid_ms_fails() {
        let now = Instant::now();
        let mut c = Commands::new(Encoding::Json);
        for (id, args) in [
            (1, serde_json::json!({})),
            (2, serde_json::json!({"ms": -1})),
            (3, serde_json::json!({"ms": 1.5})),
            (4, serde_json::json!({"ms": "10"})),
        ] {
            let r = json_reply(&c.receive(&json(id, "sleep", args), now).unwrap().unwrap());
            assert!(!r.ok && r.error.unwrap().contains("ms"), "{id}");
        }
        assert_eq!(c.next_wake(), None);
    }

    #[test]
    fn redeliveries_get_the_same_answer_and_the_memory_is_bounded() {
        let now = Instant::now();
        let mut c = Commands::new(Encoding::Json);
        let first = c
            .receive(&json(0, "echo", serde_json::json!({"n": 0})), now)
            .unwrap()
            .unwrap();
        // Same id, other content: the remembered answer wins (it is the same command).
        let again = c
            .receive(&json(0, "fail", serde_json::json!({})), now)
            .unwrap()
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(
            c.receive(&json(1, "ignore", serde_json::json!({})), now),
            Ok(None)
        );
        assert_eq!(
            c.receive(&json(1, "echo", serde_json::json!({})), now),
            Ok(None)
        );
        assert_eq!(c.stats.duplicates, 2);

        for id in 2..(MEMORY as u64 + 10) {
            c.receive(&json(id, "echo", serde_json::json!({})), now)
                .unwrap();
            assert!(c.memory.len() <= MEMORY);
        }
        assert_eq!(c.memory.len(), MEMORY);
        // Id 0 was forgotten: it is a new command now.
        let r = json_reply(
            &c.receive(&json(0, "fail", serde_json::json!({})), now)
                .unwrap()
                .unwrap(),
        );
        assert!(!r.ok);
    }

    #[test]
    fn too_many_sleeps_at_once_fail() {
        let now = Instant::now();
        let mut c = Commands::new(Encoding::Binary);
        for id in 0..MAX_SLEEPING as u64 {
            assert_eq!(
                c.receive(&binary(id, "sleep", &[("ms", Value::I64(1000))]), now),
                Ok(None)
            );
        }
        let reply = c
            .receive(&binary(9999, "sleep", &[("ms", Value::I64(1000))]), now)
            .unwrap()
            .unwrap();
        assert_eq!(binary_reply(&reply).1, CommandStatus::Error(CODE_BUSY));
        assert_eq!(c.wake(now + Duration::from_secs(1)).len(), MAX_SLEEPING);
    }

    #[test]
    fn garbage_is_counted_not_answered() {
        let now = Instant::now();
        let mut json_c = Commands::new(Encoding::Json);
        assert!(json_c.receive(b"{\"name\":\"echo\"}", now).is_err());
        assert!(json_c.receive(b"nope", now).is_err());
        let mut bin = Commands::new(Encoding::Binary);
        let ack = Downlink::Ack(device_protocol::Ack { seq: 1, boot: None })
            .to_vec()
            .unwrap();
        assert!(bin.receive(&ack, now).is_err());
        assert!(bin.receive(&[0xff, 0xff], now).is_err());
        assert_eq!((json_c.stats.invalid, json_c.stats.received), (2, 0));
        assert_eq!((bin.stats.invalid, bin.stats.received), (2, 0));
    }

    #[test]
    fn a_long_unknown_name_still_makes_a_valid_error() {
        let now = Instant::now();
        let mut c = Commands::new(Encoding::Json);
        let name = "é".repeat(1000);
        let r = json_reply(
            &c.receive(&json(1, &name, serde_json::json!({})), now)
                .unwrap()
                .unwrap(),
        );
        let error = r.error.unwrap();
        assert!(error.starts_with("unknown command ééé") && error.len() <= MAX_STR_LEN);
    }
}
