use super::*;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, text).unwrap();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load(Some(&path), env, &Overrides::default())
}

#[test]
fn no_file_gives_the_documented_defaults() {
    let c = Config::load(None, Vec::new(), &Overrides::default()).unwrap();
    assert_eq!(c.api.listen, "127.0.0.1:8443");
    assert_eq!(c.mqtt.listen, "127.0.0.1:1883");
    assert_eq!(c.mqtt.broker().unwrap(), Broker::Embedded);
    assert_eq!(c.data.dir, PathBuf::from("./hub-data"));
    assert_eq!(c.data.engine, EngineKind::Redb);
    // Log first: what an SD card needs (README, "The log: a write path made for flash").
    assert_eq!(c.data.write_path, crate::store::WritePath::Log);
}

#[test]
fn the_example_file_is_valid_and_matches_the_defaults() {
    let c = load(EXAMPLE, &[]).unwrap();
    let d = Config::default();
    assert_eq!(c.api.listen, d.api.listen);
    assert_eq!(c.ingest.batch_max, d.ingest.batch_max);
    assert_eq!(c.data.cache, d.data.cache);
    assert_eq!(c.data.write_path, d.data.write_path);
    let (m, dm) = (&c.mqtt.devices, &d.mqtt.devices);
    assert_eq!(c.mqtt.allow_insecure_listen, d.mqtt.allow_insecure_listen);
    assert_eq!(c.mqtt.max_connections, d.mqtt.max_connections);
    assert_eq!(
        (
            m.listen.as_deref(),
            m.passwords,
            m.max_connections,
            m.connect_timeout,
            m.max_packet
        ),
        (
            dm.listen.as_deref(),
            dm.passwords,
            dm.max_connections,
            dm.connect_timeout,
            dm.max_packet
        )
    );
}

#[test]
fn environment_overrides_file_and_flags_override_both() {
    let c = load(
        "[api]\nlisten = \"127.0.0.1:1\"\n",
        &[
            ("HUB_API__LISTEN", "127.0.0.1:2"),
            ("HUB_INGEST__QUEUE", "7"),
            ("OTHER", "x"),
        ],
    )
    .unwrap();
    assert_eq!(c.api.listen, "127.0.0.1:2");
    assert_eq!(c.ingest.queue, 7);
    let overrides = Overrides {
        api_listen: Some("127.0.0.1:3".into()),
        ..Overrides::default()
    };
    let c = Config::load(
        None,
        vec![("HUB_API__LISTEN".into(), "127.0.0.1:2".into())],
        &overrides,
    )
    .unwrap();
    assert_eq!(c.api.listen, "127.0.0.1:3");
}

#[test]
fn sinks_are_checked_by_kind_and_name() {
    let c = load(
        "[[sync.http]]\nname = \"cloud\"\nurl = \"https://x.example/in\"\n\
         [[sync.mqtt]]\nname = \"broker\"\nurl = \"mqtts://x.example:8883\"\n",
        &[],
    )
    .unwrap();
    let sinks: Vec<_> = c.sync.sinks().collect();
    assert_eq!(sinks.len(), 2);
    assert_eq!(sinks[0].1.compression(SinkKind::Http), Compression::Gzip);
    assert_eq!(sinks[1].1.compression(SinkKind::Mqtt), Compression::None);
    assert_eq!(sinks[1].1.topic_for("gw"), "gateways/gw/readings");
    let Err(ConfigError::Invalid(problems)) = load(
        "[[sync.http]]\nname = \"a\"\nurl = \"ftp://x\"\ntopic = \"t\"\n\
         [[sync.mqtt]]\nname = \"a\"\nurl = \"mqtt://x:1\"\ntoken = \"s\"\nbatch_max = 0\n",
        &[],
    ) else {
        panic!("bad sinks accepted");
    };
    let all = problems.join("\n");
    for expected in [
        "sync.http[0].url",
        "sync.http[0].topic",
        "sync.mqtt[0].name",
        "sync.mqtt[0].token",
        "sync.mqtt[0].batch_max",
    ] {
        assert!(all.contains(expected), "{expected} missing from:\n{all}");
    }
}

#[test]
fn unknown_keys_are_refused() {
    let err = load("[api]\nlisen = \"x\"\n", &[]).unwrap_err().to_string();
    assert!(err.contains("lisen"), "{err}");
}

#[test]
fn every_problem_is_listed_at_once() {
    let text = "[api]\nlisten = \"nowhere\"\nmax_page = 0\n[mqtt]\nbroker = \"amqp://x\"\n[ingest]\nbatch_max = 0\n";
    let err = load(text, &[]).unwrap_err().to_string();
    for needle in [
        "api.listen",
        "api.max_page",
        "mqtt.broker",
        "ingest.batch_max",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
}

#[test]
fn the_log_path_s_checkpoints_must_fit_the_quota_four_times() {
    let text = |checkpoint: &str| {
        format!(
            "[data]\nmax_disk = \"16MiB\"\nwrite_path = \"log\"\ncheckpoint_bytes = \"{checkpoint}\"\n"
        )
    };
    assert!(load(&text("4MiB"), &[]).is_ok());
    let err = load(&text("5MiB"), &[]).unwrap_err().to_string();
    assert!(err.contains("data.checkpoint_bytes"), "{err}");
    // The direct path keeps no tail: the same sizes are fine there.
    let direct =
        "[data]\nmax_disk = \"16MiB\"\nwrite_path = \"direct\"\ncheckpoint_bytes = \"5MiB\"\n";
    assert!(load(direct, &[]).is_ok());
}

#[test]
fn log_filters_of_targets_and_levels_are_taken_and_bad_ones_named() {
    for good in [
        "info",
        "warn,hub::ingest=debug",
        "hub=trace,rustls=off",
        "debug",
    ] {
        assert!(
            load(&format!("[log]\nlevel = {good:?}\n"), &[]).is_ok(),
            "{good}"
        );
    }
    for bad in ["hub=loud", "hub=debug=info", "hub[{id=info"] {
        let err = load(&format!("[log]\nlevel = {bad:?}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.level"), "{bad}: {err}");
    }
}

#[test]
fn type_errors_unknown_keys_and_bad_variables_are_all_listed_with_their_place() {
    let text = "[api]\nrate_limit = \"x\"\ncolour = \"blue\"\nlisten = \"nowhere\"\n\
                [ingest]\nmax_payload = \"12 parsecs\"\n[[serial]]\npath = \"/dev/a\"\nbaud = \"fast\"\n";
    let err = load(text, &[("HUB_COMMANDS__KEEP", "lots")]).unwrap_err();
    let ConfigError::Invalid(problems) = err else {
        panic!("not a list of problems: {err}");
    };
    for (key, place) in [
        ("api.rate_limit", "line 2"),
        ("api.colour", "line 3"),
        ("ingest.max_payload", "line 6"),
        ("serial.baud", "line 9"),
        ("commands.keep", "HUB_COMMANDS__KEEP"),
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(key) && p.contains(place)),
            "{key} at {place} missing from: {problems:#?}"
        );
    }
    // The values that parse are still checked together.
    assert!(
        problems.iter().any(|p| p.starts_with("api.listen:")),
        "{problems:#?}"
    );
}

#[test]
fn every_syntax_error_of_the_file_is_listed_with_its_line() {
    let err = load("[api\nx = = 1\n\n[ok]\ny = \"open\n", &[]).unwrap_err();
    let ConfigError::Invalid(problems) = err else {
        panic!("not a list of problems: {err}");
    };
    for line in ["line 1:", "line 2:", "line 5:"] {
        assert!(
            problems.iter().any(|p| p.contains(line)),
            "{line} missing from: {problems:#?}"
        );
    }
}

#[test]
fn the_embedded_broker_stays_on_loopback_unless_insecure_is_asked_for() {
    let err = load("[mqtt]\nlisten = \"0.0.0.0:1883\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mqtt.listen") && err.contains("allow_insecure_listen"),
        "{err}"
    );
    let c = load(
        "[mqtt]\nlisten = \"0.0.0.0:1883\"\nallow_insecure_listen = true\n",
        &[],
    )
    .unwrap();
    assert!(c.mqtt.allow_insecure_listen);
    assert!(load("[mqtt]\nlisten = \"[::1]:1883\"\n", &[]).is_ok());
}

#[test]
fn the_embedded_brokers_connection_limit_is_checked() {
    for bad in ["0", "100001"] {
        let err = load(&format!("[mqtt]\nmax_connections = {bad}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.max_connections"), "{err}");
    }
    let c = load("[mqtt]\nmax_connections = 5000\n", &[]).unwrap();
    assert_eq!(c.mqtt.max_connections, 5000);
}

#[test]
fn the_devices_listener_is_checked() {
    let c = load("[mqtt.devices]\nlisten = \"0.0.0.0:8883\"\n", &[]).unwrap();
    assert_eq!(c.mqtt.devices.listen.as_deref(), Some("0.0.0.0:8883"));
    assert_eq!(c.mqtt.devices.max_packet, ByteSize(64 << 10));
    let c = load("", &[("HUB_MQTT__DEVICES__LISTEN", "127.0.0.1:8883")]).unwrap();
    assert_eq!(c.mqtt.devices.listen.as_deref(), Some("127.0.0.1:8883"));
    let text = "[mqtt]\nbroker = \"mqtt://broker.lan\"\n[mqtt.devices]\nlisten = \"nowhere\"\nmax_connections = 0\nmax_packet = \"2MiB\"\n";
    let err = load(text, &[]).unwrap_err().to_string();
    for needle in [
        "mqtt.devices.listen: needs the hub's own endpoint",
        "mqtt.devices.listen: \"nowhere\"",
        "mqtt.devices.max_connections",
        "mqtt.devices.max_packet",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    // Passwords: off by default, taken on the TLS listener only, and only the three words.
    assert_eq!(c.mqtt.devices.passwords, PasswordAuth::Off);
    let c = load(
        "[mqtt.devices]\nlisten = \"0.0.0.0:8883\"\npasswords = \"allow\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.mqtt.devices.passwords, PasswordAuth::Allow);
    let err = load("[mqtt.devices]\npasswords = \"require\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mqtt.devices.passwords: devices log in"),
        "{err}"
    );
    let err = load("[mqtt.devices]\npasswords = \"yes\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("passwords"), "{err}");
}

#[test]
fn sizes_and_durations_parse_with_units_and_refuse_nonsense() {
    assert_eq!(ByteSize::parse("16KiB").unwrap(), ByteSize(16384));
    assert_eq!(ByteSize::parse("2GiB").unwrap(), ByteSize(2 << 30));
    assert_eq!(ByteSize::parse("512").unwrap(), ByteSize(512));
    assert!(ByteSize::parse("12 parsecs").is_err());
    assert!(ByteSize::parse("99999999999999999999GiB").is_err());
    assert_eq!(
        HumanDuration::parse("250ms").unwrap().0,
        Duration::from_millis(250)
    );
    assert_eq!(
        HumanDuration::parse("5m").unwrap().0,
        Duration::from_secs(300)
    );
    assert!(HumanDuration::parse("soon").is_err());
}

#[test]
fn external_broker_urls_parse() {
    let parse = |url: &str| {
        MqttConfig {
            broker: url.into(),
            ..MqttConfig::default()
        }
        .broker()
    };
    let external = |host: &str, port, tls| Broker::External {
        host: host.into(),
        port,
        tls,
    };
    assert_eq!(
        parse("mqtt://10.0.0.5:1884").unwrap(),
        external("10.0.0.5", 1884, false)
    );
    assert_eq!(
        parse("mqtt://broker.lan").unwrap(),
        external("broker.lan", 1883, false)
    );
    assert_eq!(
        parse("mqtts://broker.lan").unwrap(),
        external("broker.lan", 8883, true)
    );
    assert_eq!(
        parse("mqtts://[::1]:8884").unwrap(),
        external("::1", 8884, true)
    );
    assert!(parse("mqtt://:1").is_err());
    assert!(parse("amqp://x").is_err());
}

#[test]
fn the_documented_bus_loads() {
    let c = load(
        r#"
[[modbus]]
name = "line-1"
transport = "rtu"
path = "/dev/ttyUSB0"
baud = 9600
parity = "even"
timeout = "500ms"

[[modbus.devices]]
id = "meter-1"
unit = 1
interval = "1s"
points = [
  { name = "voltage",  table = "input",   address = 0,  type = "f32", unit = "V" },
  { name = "setpoint", table = "holding", address = 10, type = "i16", scale = 0.1, writable = true },
  { name = "model", table = "holding", address = 20, type = "string", length = 8 },
  { name = "relay", table = "coil", address = 0, type = "bool", writable = true },
]

[[modbus]]
name = "plc"
transport = "tcp"
address = "192.168.1.50:502"

[[modbus.devices]]
id = "plc-1"
unit = 0
points = [{ name = "energy", table = "holding", address = 0, type = "u64", word_order = "little" }]
"#,
        &[],
    )
    .unwrap();
    assert_eq!(c.modbus.len(), 2);
    assert_eq!(c.modbus[0].devices[0].points.len(), 4);
    assert_eq!(c.modbus[1].devices[0].interval.0.as_secs(), 1, "default 1s");
}

#[test]
fn every_problem_of_a_bad_bus_is_named() {
    let Err(ConfigError::Invalid(problems)) = load(
        r#"
[[modbus]]
name = "line 1"
transport = "rtu"
baud = 12

[[modbus.devices]]
id = "meter/1"
unit = 0
points = [
  { name = "v", table = "input", address = 0, type = "f32", writable = true },
  { name = "v", table = "coil", address = 0, type = "u16" },
  { name = "s", table = "holding", address = 65535, type = "string" },
  { name = "k", table = "holding", address = 1, type = "u16", scale = 0 },
]

[[modbus]]
name = "tcp"
transport = "tcp"
address = "no-port"
"#,
        &[],
    ) else {
        panic!("refused");
    };
    let all = problems.join("\n");
    for expected in [
        "modbus[0].name: 1 to 64",
        "modbus[0].path: an rtu bus needs the serial port",
        "modbus[0].baud: 12 is not 300 to 4000000",
        "modbus[0].devices[0].id: \"meter/1\" is not 1 to 64",
        "modbus[0].devices[0].unit: 0 is not 1 to 247",
        "modbus[0].devices[0].points[0].writable: only holding registers and coils",
        "modbus[0].devices[0].points[1].name: \"v\" is used twice",
        "modbus[0].devices[0].points[1].type: a coil point cannot be u16",
        "modbus[0].devices[0].points[2].length: a string needs its length",
        "modbus[0].devices[0].points[3].scale: a finite number other than 0",
        "modbus[1].address: \"no-port\" is not host:port",
        "modbus[1].devices: a bus needs at least one",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}
