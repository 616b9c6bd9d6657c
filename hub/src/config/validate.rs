//! What is checked of the values together, every problem listed at once.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Broker, Config, ConfigError};

impl Config {
    /// Checks the values together and lists every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.api.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "api.listen: {:?} is not an address:port",
                self.api.listen
            ));
        }
        match self.mqtt.broker() {
            Ok(Broker::Embedded) => match self.mqtt.listen.parse::<SocketAddr>() {
                Err(_) => problems.push(format!(
                    "mqtt.listen: {:?} is not an address:port",
                    self.mqtt.listen
                )),
                // The plain listener checks no one: beyond loopback anyone could publish as any
                // device, so that takes an explicit yes.
                Ok(addr) if !addr.ip().is_loopback() && !self.mqtt.allow_insecure_listen => {
                    problems.push(format!(
                        "mqtt.listen: {addr} is not a loopback address, and the plain MQTT \
                         listener authenticates no one; let devices connect through the TLS listener \
                         [mqtt.devices] listen instead, or set mqtt.allow_insecure_listen = true"
                    ))
                }
                Ok(_) => {}
            },
            Ok(Broker::External { tls, .. }) => {
                if self.mqtt.devices.listen.is_some() {
                    problems.push(
                        "mqtt.devices.listen: needs the hub's own endpoint (mqtt.broker = \"embedded\"); give an external broker \
                         its own TLS listener and ACL (see deploy/mosquitto)"
                            .into(),
                    );
                }
                if !tls && (self.mqtt.ca.is_some() || self.mqtt.client_cert.is_some()) {
                    problems.push("mqtt.ca and mqtt.client_cert need an mqtts:// broker".into());
                }
            }
            Err(e) => problems.push(e),
        }
        if self.mqtt.client_cert.is_some() != self.mqtt.client_key.is_some() {
            problems.push("mqtt.client_cert and mqtt.client_key: give both or neither".into());
        }
        if self.mqtt.password.is_some() && self.mqtt.username.is_none() {
            problems.push("mqtt.password needs mqtt.username".into());
        }

        if self.mqtt.client_id.is_empty() || self.mqtt.client_id.len() > 23 {
            problems.push("mqtt.client_id: must be 1 to 23 characters".into());
        }
        if !(1..=100_000).contains(&self.mqtt.max_connections) {
            problems.push("mqtt.max_connections: must be 1 to 100000".into());
        }
        match crate::ingest::mapped::TopicMaps::compile(&self.mqtt.map) {
            Err(found) => problems.extend(found),
            Ok(maps) if self.mqtt.sparkplug.enabled => {
                if let Some(filter) = maps.overlap(crate::ingest::sparkplug::FILTER) {
                    problems.push(format!(
                        "mqtt.map: {filter} would take Sparkplug B's topics (spBv1.0/...), which [mqtt.sparkplug] reads"
                    ));
                }
            }
            Ok(_) => {}
        }
        if self.mqtt.inflight == 0 {
            problems.push("mqtt.inflight: must be at least 1".into());
        }
        let gate = &self.mqtt.devices;
        if let Some(listen) = &gate.listen
            && listen.parse::<SocketAddr>().is_err()
        {
            problems.push(format!(
                "mqtt.devices.listen: {listen:?} is not an address:port"
            ));
        }
        if gate.passwords != crate::config::PasswordAuth::Off && gate.listen.is_none() {
            problems.push(
                "mqtt.devices.passwords: devices log in with passwords on the TLS listener only;                  give it mqtt.devices.listen (with an external broker, its own password file)"
                    .into(),
            );
        }
        if !(1..=100_000).contains(&gate.max_connections) {
            problems.push("mqtt.devices.max_connections: must be 1 to 100000".into());
        }
        if gate.connect_timeout.0.is_zero() {
            problems.push("mqtt.devices.connect_timeout: must be more than 0".into());
        }
        if !((1 << 10)..=crate::ingest::endpoint::MAX_PLAIN_PACKET as u64)
            .contains(&gate.max_packet.0)
        {
            problems.push("mqtt.devices.max_packet: must be 1KiB to 1MiB".into());
        }
        if self.ingest.queue == 0 {
            problems.push("ingest.queue: must be at least 1".into());
        }
        if !((64 << 10)..=(1 << 30)).contains(&self.ingest.queue_bytes.0) {
            problems.push("ingest.queue_bytes: 64KiB to 1GiB".into());
        }
        if !(1..=65_536).contains(&self.ingest.batch_max) {
            problems.push("ingest.batch_max: must be 1 to 65536".into());
        }
        if self.ingest.flush_window.0 > Duration::from_secs(10) {
            problems.push("ingest.flush_window: at most 10s (acks wait for it)".into());
        }
        if self.data.checkpoint_bytes.0 < 64 << 10 || self.data.checkpoint_bytes.0 > 256 << 20 {
            problems.push("data.checkpoint_bytes: between 64KiB and 256MiB".into());
        }
        if !(1..=1_000_000).contains(&self.data.seal_batch) {
            problems.push("data.seal_batch: between 1 and 1000000".into());
        }
        if self.data.checkpoint_every.0 < Duration::from_secs(1) {
            problems.push("data.checkpoint_every: at least 1s".into());
        }
        if self.ingest.batch_window.0 > Duration::from_secs(1) {
            problems.push("ingest.batch_window: at most 1s (acks wait for it)".into());
        }
        if self.ingest.stall_after.0 < Duration::from_secs(1) {
            problems.push("ingest.stall_after: at least 1s".into());
        }
        if !(64..=(1 << 20)).contains(&self.ingest.max_payload.0) {
            problems.push("ingest.max_payload: must be 64B to 1MiB".into());
        }
        if self.data.cache.0 < (256 << 10) {
            problems.push("data.cache: must be at least 256KiB".into());
        }
        if self.data.dir.as_os_str().is_empty() {
            problems.push("data.dir: must not be empty".into());
        }
        if !(1..=100_000).contains(&self.api.max_page) {
            problems.push("api.max_page: must be 1 to 100000".into());
        }
        if self.api.max_pull_wait.0 > std::time::Duration::from_secs(3600) {
            problems.push("api.max_pull_wait: at most 1h".into());
        }
        for (i, serial) in self.serial.iter().enumerate() {
            if serial.path.as_os_str().is_empty() {
                problems.push(format!("serial[{i}].path: must not be empty"));
            }
            if !(300..=4_000_000).contains(&serial.baud) {
                problems.push(format!(
                    "serial[{i}].baud: {} is not 300 to 4000000",
                    serial.baud
                ));
            }
            if let Some(id) = &serial.device_id
                && !device_protocol::is_valid_id(id)
            {
                problems.push(format!(
                    "serial[{i}].device_id: {id:?} is not 1 to 64 of A-Z a-z 0-9 . _ -"
                ));
            }
            if serial.silence_timeout.0 < Duration::from_millis(100) {
                problems.push(format!("serial[{i}].silence_timeout: at least 100ms"));
            }
            if self.serial[..i]
                .iter()
                .any(|other| other.path == serial.path)
            {
                problems.push(format!(
                    "serial[{i}].path: {} is listed twice",
                    serial.path.display()
                ));
            }
        }
        if self.api.max_connections == 0 {
            problems.push("api.max_connections: must be at least 1".into());
        }
        if self.api.max_connections_per_address == 0 {
            problems.push("api.max_connections_per_address: must be at least 1".into());
        }
        if self.api.body_timeout.0.is_zero() {
            problems.push("api.body_timeout: must be more than 0".into());
        }
        if self.api.header_timeout.0.is_zero() {
            problems.push("api.header_timeout: must be more than 0".into());
        }
        if self.api.tls_cert.is_some() != self.api.tls_key.is_some() {
            problems.push("api.tls_cert and api.tls_key: give both or neither".into());
        }
        for (i, client) in self.api.clients.iter().enumerate() {
            if client.name.is_empty() || client.name.len() > 253 {
                problems.push(format!("api.clients[{i}].name: 1 to 253 characters"));
            }
            if client.scopes.is_empty()
                || client
                    .scopes
                    .iter()
                    .any(|s| crate::auth::Scope::parse(s).is_none())
            {
                problems.push(format!(
                    "api.clients[{i}].scopes: one or more of {}",
                    crate::auth::tokens::SCOPE_NAMES
                ));
            }
        }
        if self.devices.offline_after.0 < Duration::from_secs(1) {
            problems.push("devices.offline_after: at least 1s".into());
        }
        let c = &self.commands;
        if c.default_ttl.0 > c.max_ttl.0 {
            problems.push("commands.default_ttl: at most commands.max_ttl".into());
        }
        if c.default_timeout.0.is_zero() || c.default_timeout.0 > c.max_timeout.0 {
            problems.push(
                "commands.default_timeout: more than 0 and at most commands.max_timeout".into(),
            );
        }
        if c.max_wait.0 > Duration::from_secs(600) {
            problems.push("commands.max_wait: at most 10m".into());
        }
        if c.max_open_per_device == 0 {
            problems.push("commands.max_open_per_device: at least 1".into());
        }
        if c.keep < 100 {
            problems.push("commands.keep: at least 100".into());
        }

        if self.data.max_disk.0 < (16 << 20) {
            problems.push("data.max_disk: at least 16MiB".into());
        }
        // The log keeps room in the store file for a checkpoint (twice checkpoint_bytes, see
        // `store::log`): at more than a quarter of the quota, retention would keep next to nothing.
        if self.data.write_path == crate::store::WritePath::Log
            && self.data.checkpoint_bytes.0.saturating_mul(4) > self.data.max_disk.0
        {
            problems.push(
                "data.checkpoint_bytes: at most a quarter of data.max_disk with data.write_path = \"log\""
                    .into(),
            );
        }
        if !self.data.max_age.0.is_zero() && self.data.max_age.0 < Duration::from_secs(60) {
            problems.push("data.max_age: 0 (no limit) or at least 1m".into());
        }
        self.sync.problems(&mut problems);
        super::modbus::problems(&self.modbus, &mut problems);
        problems.extend(crate::rules::config_problems(&self.rules));
        self.homeassistant.problems(&self.mqtt, &mut problems);

        if super::log_filter(&self.log.level).is_err() {
            problems.push(format!(
                "log.level: {:?} is not a valid filter",
                self.log.level
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}
