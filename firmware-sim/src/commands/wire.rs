//! How a command and its answer look in each [`Encoding`]: a `JsonCommand` in and a
//! `JsonCommandResult` out, or a postcard `Downlink::Command` in and an `Uplink::CommandResult`
//! out.
//!
//! Invariants: a payload that is not a command is an error (for a log line), never an answer; an
//! answer is always made, if need be without its result fields.

use device_protocol::json::{JsonCommand, JsonCommandResult};
use device_protocol::{
    CommandResult, CommandStatus, Downlink, Field, Fields, OwnedValue, Uplink, Value,
};

use super::{Args, Command, Commands, Encoding, Outcome};

impl Commands {
    pub(super) fn parse(&self, payload: &[u8]) -> Result<Command, String> {
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

    /// The reply bytes of `outcome` for command `id`.
    pub(super) fn encode(&self, id: u64, outcome: Outcome) -> Vec<u8> {
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
