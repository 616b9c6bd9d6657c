//! Loading: defaults, then the TOML file, then `HUB_*` environment variables, then flags.

use serde::Deserialize;

use super::{Config, ConfigError, Overrides};

/// Type errors reported before giving up (each found one costs a deserialisation).
const MAX_TYPE_ERRORS: usize = 64;

impl Config {
    /// Loads defaults, then `file`, then `HUB_*` variables from `env`, then `overrides`; validates.
    /// Every problem is listed at once: each syntax error of the file (with its line), each value
    /// of the wrong type or unknown key (with its key, and its line or variable), and each value
    /// that makes no sense with the others.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        let name = file.map(|p| p.display().to_string()).unwrap_or_default();
        let mut table = match text.parse::<toml::Table>() {
            Ok(table) => table,
            // Nothing of a file that does not parse can be trusted: its syntax errors, all of them.
            Err(_) => return Err(ConfigError::Invalid(syntax_errors(&name, &text))),
        };
        let mut problems = Vec::new();
        // Where each key set by a variable came from, to name it in a problem.
        let mut from_env: Vec<(String, String)> = Vec::new();
        for (variable, value) in env {
            let Some(path) = variable.strip_prefix("HUB_") else {
                continue;
            };
            if path == "CONFIG" || path.is_empty() {
                continue;
            }
            let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
            match set_path(&mut table, &keys, env_value(&value)) {
                Ok(()) => from_env.push((keys.join("."), variable)),
                Err(e) => problems.push(format!("{variable}: {e}")),
            }
        }
        let mut config = loop {
            let error = match Config::deserialize(toml::Value::Table(table.clone())) {
                Ok(config) => break config,
                Err(error) => error,
            };
            let (key, message) = wrong_key(&error);
            let origin = match from_env.iter().find(|(k, _)| *k == key) {
                Some((_, variable)) => format!(" ({variable})"),
                None => line_of(&text, &key)
                    .map(|line| format!(" ({name} line {line})"))
                    .unwrap_or_default(),
            };
            problems.push(format!("{key}{origin}: {message}"));
            // Without the key, its default applies and the rest can be checked.
            if key.is_empty() || !remove_path(&mut table, &key) || problems.len() > MAX_TYPE_ERRORS
            {
                return Err(ConfigError::Invalid(problems));
            }
        };
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
        if let Err(ConfigError::Invalid(more)) = config.validate() {
            problems.extend(more);
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// Every syntax error of `text` (the file `name`), each with its line.
fn syntax_errors(name: &str, text: &str) -> Vec<String> {
    let (_, errors) = toml::de::DeTable::parse_recoverable(text);
    errors
        .iter()
        .map(|e| match e.span() {
            Some(span) => format!("{name} line {}: {}", line_at(text, span.start), e.message()),
            None => format!("{name}: {}", e.message()),
        })
        .collect()
}

/// The key a deserialisation error is about (dotted; array items by index), and what is wrong
/// with it. An unknown key is named itself, not its section.
fn wrong_key(error: &toml::de::Error) -> (String, String) {
    let shown = error.to_string();
    let section = shown
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("in `")?.strip_suffix('`'))
        .unwrap_or("")
        .to_owned();
    let message = error.message().trim().to_owned();
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    let key = match unknown {
        Some(field) if section.is_empty() => field.to_owned(),
        Some(field) => format!("{section}.{field}"),
        None => section,
    };
    (key, message)
}

/// Removes the value at the dotted `key` (array items by index; a name after an array of tables,
/// which the errors give without the index, from each item); whether there was one.
fn remove_path(table: &mut toml::Table, key: &str) -> bool {
    let parts: Vec<&str> = key.split('.').collect();
    remove_in_table(table, &parts)
}

fn remove_in_table(table: &mut toml::Table, parts: &[&str]) -> bool {
    match parts {
        [] => false,
        [last] => table.remove(*last).is_some(),
        [first, rest @ ..] => table
            .get_mut(*first)
            .is_some_and(|value| remove_in_value(value, rest)),
    }
}

fn remove_in_value(value: &mut toml::Value, parts: &[&str]) -> bool {
    match value {
        toml::Value::Table(table) => remove_in_table(table, parts),
        toml::Value::Array(items) => match parts.first().and_then(|p| p.parse::<usize>().ok()) {
            Some(i) => {
                let rest = parts.get(1..).unwrap_or_default();
                if rest.is_empty() && i < items.len() {
                    items.remove(i);
                    return true;
                }
                items
                    .get_mut(i)
                    .is_some_and(|item| remove_in_value(item, rest))
            }
            None => {
                let mut removed = false;
                for item in items.iter_mut() {
                    removed |= remove_in_value(item, parts);
                }
                removed
            }
        },
        _ => false,
    }
}

/// The line of `text` where the dotted `key` is written, if it is.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let mut table = document.get_ref();
    let mut at = None;
    let parts: Vec<&str> = key.split('.').collect();
    let mut i = 0;
    while let Some(part) = parts.get(i) {
        let (name, value) = table.iter().find(|(name, _)| name.get_ref() == part)?;
        at = Some(name.span().start);
        i += 1;
        let mut value = value.get_ref();
        // An array of tables: the next part is the index, or (errors leave it out) the first
        // item that has the key is meant.
        if let toml::de::DeValue::Array(items) = value {
            let next = parts.get(i).copied().unwrap_or("");
            let item = match next.parse::<usize>() {
                Ok(n) => {
                    i += 1;
                    items.get(n)
                }
                Err(_) => items.iter().find(|item| match item.get_ref() {
                    toml::de::DeValue::Table(t) => t.iter().any(|(k, _)| k.get_ref() == next),
                    _ => false,
                }),
            };
            if let Some(item) = item {
                at = Some(item.span().start);
                value = item.get_ref();
            }
        }
        match value {
            toml::de::DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    at.map(|offset| line_at(text, offset))
}

fn line_at(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
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
