//! Each command name's answer in JSON and binary, sleeps that answer when they wake, redeliveries
//! answered from the bounded memory, garbage counted and not answered.

use device_protocol::json::{JsonCommandResult, parse_command_result};
use device_protocol::{CommandStatus, Downlink, Field, Fields, Uplink, Value};

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
