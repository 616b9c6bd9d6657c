//! Loading: defaults, then the TOML file, then `HUB_*` environment variables, then flags.

use super::{Config, ConfigError, Overrides};

impl Config {
    /// Loads defaults, then `file`, then `HUB_*` variables from `env`, then `overrides`; validates.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(path) = name.strip_prefix("HUB_") else {
                continue;
            };
            if path == "CONFIG" || path.is_empty() {
                continue;
            }
            let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
            set_path(&mut table, &keys, env_value(&value))
                .map_err(|e| ConfigError::Parse(format!("{name}: {e}")))?;
        }
        let mut config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(format!("configuration: {e}")))?;
        if let Some(dir) = &overrides.data_dir {
            config.data.dir = dir.clone();
        }
        if let Some(listen) = &overrides.api_listen {
            config.api.listen = listen.clone();
        }
        if let Some(listen) = &overrides.mqtt_listen {
            config.mqtt.listen = listen.clone();
        }
        if let Some(broker) = &overrides.mqtt_broker {
            config.mqtt.broker = broker.clone();
        }
        if let Some(format) = overrides.log_format {
            config.log.format = format;
        }
        config.validate()?;
        Ok(config)
    }
}

/// An environment value as TOML: numbers and booleans as such, anything else as a string.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    toml::Value::String(raw.to_owned())
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    match keys {
        [] => Err("empty key".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(format!("{first} is not a section")),
            }
        }
    }
}
