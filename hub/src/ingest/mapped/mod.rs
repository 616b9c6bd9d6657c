//! Mapped MQTT topics (`[[mqtt.map]]`): devices that publish their own topic layout (Tasmota,
//! Shelly, Zigbee2MQTT, or one described in the configuration) become devices of the hub, with
//! transport `mqtt`.
//!
//! Input: a topic and its payload that none of the hub's own topics took. Output: a reading of
//! the device named by the topic's `{device}` level (after `device_prefix`), or its online status,
//! or the reason to skip the message. The first map whose topic (or status topic) matches takes
//! the message. Such devices send no seq: the hub numbers their readings, so a retransmission may
//! be stored twice.
//!
//! A `{device}` level that is not a valid device id is refused (`bad_device_id`), never changed
//! into one: `Living Room` must not become another device's `Living_Room`.

pub mod pattern;
pub mod payload;

use crate::config::{MapPreset, PayloadForm, TopicMapConfig};
use crate::store::{DeviceStatus, Ingest, NewReading, Transport, Wire};

use super::Rejection;
use pattern::{Captures, Pattern, Template, filter_covers, filters_overlap};
use payload::JsonRules;

/// The filters of the hub's own device topics. They are read first: a map whose every topic is
/// one of them would never see a message, and is refused.
const OWN_FILTERS: [&str; 4] = [
    super::decode::TELEMETRY_FILTER,
    super::decode::UP_FILTER,
    super::decode::COMMAND_RESULTS_FILTER,
    super::decode::STATUS_FILTER,
];

/// How a map reads its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// A JSON object; metric names prefixed by the template's, if any.
    Json {
        rules: JsonRules,
        prefix: Option<Template>,
    },
    /// One bare value, named by the template.
    Value { metric: Template },
}

/// One compiled `[[mqtt.map]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMap {
    topic: Pattern,
    form: Form,
    device_prefix: String,
    status: Option<Pattern>,
}

/// What a map found a message to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// A reading.
    Reading(NewReading),
    /// The device's online status.
    Status(DeviceStatus),
}

impl Mapped {
    /// The store item.
    pub fn into_item(self) -> Ingest {
        match self {
            Mapped::Reading(r) => Ingest::Reading(r),
            Mapped::Status(s) => Ingest::Status(s),
        }
    }
}

/// The defaults a preset gives: topic, payload form, metric prefix, skipped fields, status topic.
struct Preset {
    topic: &'static str,
    metric: Option<&'static str>,
    skip: &'static [&'static str],
    status: &'static str,
}

fn preset(which: MapPreset) -> Preset {
    match which {
        // `Time` is the device's local time without a zone: the hub's receive time is truer.
        MapPreset::Tasmota => Preset {
            topic: "tele/{device}/SENSOR",
            metric: None,
            skip: &["Time"],
            status: "tele/{device}/LWT",
        },
        MapPreset::Shelly => Preset {
            topic: "{device}/status/{component}",
            metric: Some("{component}"),
            skip: &[],
            status: "{device}/online",
        },
        MapPreset::Zigbee2mqtt => Preset {
            topic: "zigbee2mqtt/{device}",
            metric: None,
            skip: &[],
            status: "zigbee2mqtt/{device}/availability",
        },
    }
}

impl TopicMap {
    /// Compiles one `[[mqtt.map]]`, or lists what is wrong with it.
    pub fn compile(config: &TopicMapConfig) -> Result<TopicMap, Vec<String>> {
        let mut problems = Vec::new();
        let preset = config.preset.map(preset);
        let topic_text = config.topic.as_deref().or(preset.as_ref().map(|p| p.topic));
        let topic = match topic_text.map(Pattern::compile) {
            Some(Ok(topic)) => Some(topic),
            Some(Err(e)) => {
                problems.push(format!("topic: {e}"));
                None
            }
            None => {
                problems.push("topic: needed when there is no preset".into());
                None
            }
        };
        let form = config
            .payload
            .or(preset.as_ref().map(|_| PayloadForm::Json));
        let metric = config
            .metric
            .as_deref()
            .or(preset.as_ref().and_then(|p| p.metric));
        let device_prefix = config.device_prefix.clone().unwrap_or_default();
        if device_prefix.len() >= device_protocol::MAX_ID_LEN
            || !device_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            problems.push(format!(
                "device_prefix: {device_prefix:?} is not shorter than {} of A-Z a-z 0-9 . _ -",
                device_protocol::MAX_ID_LEN
            ));
        }
        let status_text = match config.status_topic.as_deref() {
            Some("") => None,
            Some(text) => Some(text),
            None => preset.as_ref().map(|p| p.status),
        };
        let status = match status_text.map(Pattern::compile) {
            Some(Ok(status)) => Some(status),
            Some(Err(e)) => {
                problems.push(format!("status_topic: {e}"));
                None
            }
            None => None,
        };
        for (key, pattern) in [("topic", topic.as_ref()), ("status_topic", status.as_ref())] {
            let Some(pattern) = pattern else { continue };
            let filter = pattern.filter();
            if let Some(own) = OWN_FILTERS.iter().find(|own| filter_covers(own, &filter)) {
                problems.push(format!(
                    "{key}: {:?} would take messages of the hub's own topic {own}",
                    pattern.text()
                ));
            }
        }
        if let (Some(topic), Some(status)) = (&topic, &status)
            && filters_overlap(&topic.filter(), &status.filter())
        {
            problems.push(format!(
                "status_topic: {:?} overlaps the topic {:?}",
                status.text(),
                topic.text()
            ));
        }
        let json_only = [
            ("fields", config.fields.is_some()),
            ("skip", config.skip.is_some()),
            ("ts_field", config.ts_field.is_some()),
        ];
        let form = match (form, &topic) {
            (None, _) => {
                problems.push("payload: \"json\" or \"value\", when there is no preset".into());
                None
            }
            (Some(_), None) => None,
            (Some(PayloadForm::Json), Some(topic)) => {
                let prefix = match metric.map(|m| Template::compile(m, topic)) {
                    Some(Ok(prefix)) => Some(prefix),
                    Some(Err(e)) => {
                        problems.push(format!("metric: {e}"));
                        None
                    }
                    None => None,
                };
                let preset_skip = preset.as_ref().map_or(&[][..], |p| p.skip);
                let rules = JsonRules {
                    fields: config.fields.clone(),
                    skip: config
                        .skip
                        .clone()
                        .unwrap_or_else(|| preset_skip.iter().map(|s| (*s).to_owned()).collect()),
                    ts_field: config.ts_field.clone(),
                };
                Some(Form::Json { rules, prefix })
            }
            (Some(PayloadForm::Value), Some(topic)) => {
                for (key, given) in json_only {
                    if given {
                        problems.push(format!("{key}: only for payload = \"json\""));
                    }
                }
                match metric.map(|m| Template::compile(m, topic)) {
                    Some(Ok(metric)) => Some(Form::Value { metric }),
                    Some(Err(e)) => {
                        problems.push(format!("metric: {e}"));
                        None
                    }
                    None => {
                        problems.push(
                            "metric: payload = \"value\" needs the metric's name (fixed or {level})"
                                .into(),
                        );
                        None
                    }
                }
            }
        };
        match (topic, form) {
            (Some(topic), Some(form)) if problems.is_empty() => Ok(TopicMap {
                topic,
                form,
                device_prefix,
                status,
            }),
            _ => Err(problems),
        }
    }

    /// The filters that receive this map's messages.
    fn filters(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(self.topic.filter()).chain(self.status.as_ref().map(Pattern::filter))
    }

    /// The hub's device id for a matched topic, or why the `{device}` level cannot be one.
    fn device(&self, captures: &Captures<'_>) -> Result<String, (Rejection, String)> {
        let id = format!("{}{}", self.device_prefix, captures.device);
        if device_protocol::is_valid_id(&id) {
            Ok(id)
        } else {
            Err((
                Rejection::BadDeviceId,
                format!(
                    "{:?} is not a device id (1-64 of A-Z a-z 0-9 . _ -); rename the device",
                    id.chars().take(80).collect::<String>()
                ),
            ))
        }
    }

    /// What the message is, if this map takes its topic.
    fn decode(
        &self,
        topic: &str,
        payload: &[u8],
        max_payload: usize,
        received_ms: u64,
    ) -> Option<Result<Mapped, (Rejection, String)>> {
        let too_large = || {
            Err((
                Rejection::TooLarge,
                format!("{} bytes, limit {max_payload}", payload.len()),
            ))
        };
        if let Some(captures) = self.topic.captures(topic) {
            if payload.len() > max_payload {
                return Some(too_large());
            }
            return Some(self.reading(&captures, payload, received_ms));
        }
        let captures = self.status.as_ref()?.captures(topic)?;
        if payload.len() > max_payload {
            return Some(too_large());
        }
        let status = self.device(&captures).and_then(|device| {
            let online = payload::online(payload).map_err(|e| (Rejection::BadPayload, e))?;
            Ok(Mapped::Status(DeviceStatus {
                device,
                transport: Transport::Mqtt,
                online,
                reason: "reported",
                received_ms,
            }))
        });
        Some(status)
    }

    fn reading(
        &self,
        captures: &Captures<'_>,
        payload: &[u8],
        received_ms: u64,
    ) -> Result<Mapped, (Rejection, String)> {
        let device = self.device(captures)?;
        let bad = |e: String| (Rejection::BadPayload, e);
        let (metrics, timestamp_ms) = match &self.form {
            Form::Json { rules, prefix } => {
                let prefix = prefix.as_ref().map(|p| p.render(captures));
                payload::json_metrics(payload, rules, prefix.as_deref()).map_err(bad)?
            }
            Form::Value { metric } => {
                let name = metric.render(captures);
                if !device_protocol::is_valid_id(&name) {
                    return Err(bad(format!(
                        "the metric name {:?} from the topic is not valid (1-64 of A-Z a-z 0-9 . _ -)",
                        name.chars().take(80).collect::<String>()
                    )));
                }
                let value = payload::bare_value(payload).map_err(bad)?;
                (vec![(name, value)], None)
            }
        };
        Ok(Mapped::Reading(NewReading {
            device,
            transport: Transport::Mqtt,
            wire: Wire::Json,
            seq: None,
            boot: None,
            timestamp_ms,
            received_ms,
            metrics,
        }))
    }
}

/// Every `[[mqtt.map]]`, in the configuration's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicMaps {
    maps: Vec<TopicMap>,
}

impl TopicMaps {
    /// Compiles every map; the problems of all, each with its map's place.
    pub fn compile(configs: &[TopicMapConfig]) -> Result<TopicMaps, Vec<String>> {
        let mut maps = Vec::new();
        let mut problems = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            match TopicMap::compile(config) {
                Ok(map) => maps.push(map),
                Err(found) => {
                    problems.extend(found.into_iter().map(|p| format!("mqtt.map[{i}].{p}")))
                }
            }
        }
        if problems.is_empty() {
            Ok(TopicMaps { maps })
        } else {
            Err(problems)
        }
    }

    /// Whether there is no map.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// The filters to subscribe to behind an external broker, without repeats.
    pub fn filters(&self) -> Vec<String> {
        let mut filters: Vec<String> = Vec::new();
        for filter in self.maps.iter().flat_map(TopicMap::filters) {
            if !filters.contains(&filter) {
                filters.push(filter);
            }
        }
        filters
    }

    /// Whether any map's topics overlap `filter` (for the checks of other topic families).
    pub fn overlap(&self, filter: &str) -> Option<String> {
        self.maps
            .iter()
            .flat_map(TopicMap::filters)
            .find(|f| filters_overlap(f, filter))
    }

    /// What the message on `topic` is, if a map takes it; `None` when none does.
    pub fn decode(
        &self,
        topic: &str,
        payload: &[u8],
        max_payload: usize,
        received_ms: u64,
    ) -> Option<Result<Mapped, (Rejection, String)>> {
        self.maps
            .iter()
            .find_map(|map| map.decode(topic, payload, max_payload, received_ms))
    }
}

#[cfg(test)]
mod tests;
