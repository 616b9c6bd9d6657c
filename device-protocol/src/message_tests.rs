//! Tests of `message`: the protocol's rules, appended fields, and the id of a refused reading.

use super::*;

fn fields<'a>(items: &[(&'a str, Value<'a>)]) -> Fields<'a> {
    let mut out = Fields::new();
    for (name, value) in items {
        out.push(Field {
            name,
            value: value.clone(),
        })
        .unwrap();
    }
    out
}

fn telemetry<'a>(readings: Fields<'a>) -> Uplink<'a> {
    Uplink::Telemetry(Telemetry {
        seq: 1,
        timestamp_ms: None,
        readings,
        boot: None,
    })
}

#[test]
fn valid_messages_pass() {
    let t = telemetry(fields(&[("temp", Value::F64(1.0)), ("n", Value::I64(-1))]));
    assert_eq!(t.validate(), Ok(()));
    let hello = Uplink::Hello(Hello {
        device_id: "dev-1",
        firmware: "",
        protocol_version: 1,
        boot: None,
    });
    assert_eq!(hello.validate(), Ok(()));
    let cmd = Downlink::Command(Command {
        command_id: 1,
        name: "reboot",
        args: Fields::new(),
    });
    assert_eq!(cmd.validate(), Ok(()));
}

#[test]
fn rule_violations_are_invalid() {
    let long = "x".repeat(MAX_STR_LEN + 1);
    let cases = [
        telemetry(Fields::new()),
        telemetry(fields(&[("bad name", Value::Bool(true))])),
        telemetry(fields(&[("a", Value::F64(f64::NAN))])),
        telemetry(fields(&[("a", Value::F64(f64::INFINITY))])),
        telemetry(fields(&[("a", Value::Str(&long))])),
        telemetry(fields(&[("a", Value::I64(1)), ("a", Value::I64(2))])),
        Uplink::Hello(Hello {
            device_id: "",
            firmware: "1.0",
            protocol_version: 1,
            boot: None,
        }),
        Uplink::Hello(Hello {
            device_id: "d",
            firmware: &long,
            protocol_version: 1,
            boot: None,
        }),
        Uplink::Hello(Hello {
            device_id: "d",
            firmware: "1.0",
            protocol_version: 0,
            boot: None,
        }),
        Uplink::CommandResult(CommandResult {
            command_id: 1,
            status: CommandStatus::Ok,
            payload: fields(&[("é", Value::Bool(true))]),
        }),
    ];
    let mut buf = [0u8; 1024];
    for case in cases {
        assert_eq!(case.validate(), Err(Error::Invalid), "{case:?}");
        assert_eq!(case.encode(&mut buf), Err(Error::Invalid), "{case:?}");
    }
    let bad_command = Downlink::Command(Command {
        command_id: 1,
        name: "re boot",
        args: Fields::new(),
    });
    assert_eq!(bad_command.validate(), Err(Error::Invalid));
}

#[test]
fn decode_rejects_invalid_content() {
    // Encoded without validation: postcard accepts what the protocol forbids.
    let message = telemetry(fields(&[("bad name", Value::Bool(true))]));
    let mut buf = [0u8; 64];
    let bytes = postcard::to_slice(&message, &mut buf).unwrap();
    assert_eq!(Uplink::decode(bytes), Err(Error::Invalid));
}

#[test]
fn decode_errors() {
    assert_eq!(Uplink::decode(&[]), Err(Error::Empty));
    assert_eq!(Downlink::decode(&[]), Err(Error::Empty));
    assert_eq!(Uplink::decode(&[9]), Err(Error::Decode)); // unknown variant
    assert_eq!(Downlink::decode(&[0]), Err(Error::Decode)); // truncated Ack
    // More fields than MAX_FIELDS: length 17, then nothing.
    assert_eq!(Uplink::decode(&[1, 1, 0, 17]), Err(Error::Decode));
}

#[test]
fn encode_reports_small_buffer() {
    let message = Downlink::TimeSync(TimeSync { unix_ms: u64::MAX });
    let mut buf = [0u8; 4];
    assert_eq!(message.encode(&mut buf), Err(Error::BufferTooSmall));
}

#[test]
fn trailing_bytes_are_ignored() {
    let message = Downlink::Ack(Ack { seq: 5, boot: None });
    let mut buf = [0u8; 16];
    let len = message.encode(&mut buf).unwrap().len();
    buf[len] = 0xAB;
    assert_eq!(Downlink::decode(&buf[..=len]), Ok(message));
}

#[test]
fn appended_boot_is_written_only_when_some_and_old_bytes_read_as_none() {
    let mut readings = Fields::new();
    readings
        .push(Field {
            name: "t",
            value: Value::I64(1),
        })
        .unwrap();
    let old = Telemetry {
        seq: 3,
        timestamp_ms: None,
        readings,
        boot: None,
    };
    let old_bytes = Uplink::Telemetry(old.clone()).to_vec().unwrap();
    let new = Telemetry {
        boot: Some(300),
        ..old.clone()
    };
    let new_bytes = Uplink::Telemetry(new.clone()).to_vec().unwrap();
    // The version 1 bytes, then Some(300).
    assert_eq!(new_bytes, [&old_bytes[..], &[0x01, 0xac, 0x02]].concat());
    assert_eq!(
        Uplink::decode(&old_bytes),
        Ok(Uplink::Telemetry(old.clone()))
    );
    assert_eq!(Uplink::decode(&new_bytes), Ok(Uplink::Telemetry(new)));
    // Trailing bytes that are not an Option: ignored, as an older decoder would.
    for tail in [&[0x07][..], &[0x01], &[0x01, 0x80]] {
        let odd = [&old_bytes[..], tail].concat();
        assert_eq!(
            Uplink::decode(&odd),
            Ok(Uplink::Telemetry(old.clone())),
            "{tail:?}"
        );
    }
    let ack = Downlink::Ack(Ack {
        seq: 1,
        boot: Some(2),
    });
    let bytes = ack.to_vec().unwrap();
    assert_eq!(bytes, [0x00, 0x01, 0x01, 0x02]);
    assert_eq!(Downlink::decode(&bytes), Ok(ack));
}

#[test]
fn reading_id_names_telemetry_that_breaks_a_rule() {
    let long = "x".repeat(MAX_STR_LEN + 1);
    let mut readings = Fields::new();
    readings
        .push(Field {
            name: "s",
            value: Value::Str(&long),
        })
        .unwrap();
    let bad = Uplink::Telemetry(Telemetry {
        seq: 9,
        timestamp_ms: None,
        readings,
        boot: Some(4),
    });
    let bytes = postcard::to_allocvec(&bad).unwrap();
    assert_eq!(Uplink::decode(&bytes), Err(Error::Invalid));
    assert_eq!(
        Uplink::reading_id(&bytes),
        Some(ReadingId {
            seq: 9,
            boot: Some(4)
        })
    );
    let hello = Uplink::Hello(Hello {
        device_id: "d",
        firmware: "",
        protocol_version: 2,
        boot: None,
    })
    .to_vec()
    .unwrap();
    assert_eq!(Uplink::reading_id(&hello), None);
    assert_eq!(Uplink::reading_id(&[0x01, 0x05]), None);
    assert_eq!(Uplink::reading_id(&[]), None);
}

#[test]
fn rejected_and_gave_up_are_checked() {
    let long = "x".repeat(MAX_STR_LEN + 1);
    let rejected = |reason| {
        Downlink::Rejected(Rejected {
            seq: 1,
            boot: None,
            reason,
        })
    };
    assert_eq!(rejected("too long").validate(), Ok(()));
    assert_eq!(rejected(&long).validate(), Err(Error::Invalid));
    let gave_up = |ranges: &[(u32, u32)]| {
        let mut list = SeqRanges::new();
        for &(first, last) in ranges {
            list.push(SeqRange { first, last }).unwrap();
        }
        Downlink::GaveUp(GaveUp {
            boot: Some(1),
            ranges: list,
        })
    };
    assert_eq!(gave_up(&[(1, 1), (3, 7)]).validate(), Ok(()));
    assert_eq!(gave_up(&[]).validate(), Err(Error::Invalid));
    assert_eq!(gave_up(&[(5, 4)]).validate(), Err(Error::Invalid));
}
