//! From a rule's configuration ([`RuleConfig`], from the file or the API) to a checked [`Rule`].
//!
//! Invariants: a rule that compiles has exactly one condition, the metric that condition needs,
//! durations that parse, actions that each do one thing, and an expression that parsed; every
//! problem of a rule is listed at once, each with its key (`rules[2] (freezer-warm).above: ...`
//! in the file, `above: ...` in the API).

use std::collections::BTreeMap;

use crate::config::{ActionConfig, HumanDuration, RuleConfig};

use super::expr::Expression;

/// Rules at most, of the configuration and the API together.
pub const MAX_RULES: usize = 1000;
/// Actions of one rule at most.
pub const MAX_ACTIONS: usize = 8;
/// Labels one rule may select by at most.
const MAX_LABELS: usize = 16;

/// Where a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `[[rules]]` of the configuration file (changed by editing it and SIGHUP).
    Config,
    /// Added through the API (kept in the store).
    Api,
}

impl Origin {
    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Api => "api",
        }
    }
}

/// What makes an alert active.
#[derive(Debug)]
pub enum Condition {
    /// The value above (`above` true) or below a limit; a firing alert resolves once the value is
    /// `hysteresis` back on the good side.
    Threshold {
        /// Above (true) or below.
        above: bool,
        /// The limit.
        limit: f64,
        /// How far back a firing alert's value must come.
        hysteresis: f64,
    },
    /// The change per `per_ms` over the last `per_ms`, above or below a limit.
    Rate {
        /// The unit and the window.
        per_ms: u64,
        /// Fires above this.
        above: Option<f64>,
        /// Fires below this.
        below: Option<f64>,
    },
    /// The value moved more than `deadband` from where it last fired: each move fires anew, none
    /// resolves.
    Change {
        /// Moves this large or smaller are ignored.
        deadband: f64,
    },
    /// No reading for `after_ms`.
    Silent {
        /// How long.
        after_ms: u64,
    },
    /// The device is offline.
    Offline,
    /// An expression of the reading is true.
    Expr(Box<Expression>),
}

/// Which transitions an action runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct On {
    /// On firing.
    pub firing: bool,
    /// On resolving.
    pub resolved: bool,
}

/// What an action does.
#[derive(Debug, Clone)]
pub enum ActionKind {
    /// POST the transition to a URL (through the durable outbox).
    Webhook(String),
    /// Send a command; `device` `None` means the alert's device.
    Command {
        /// The device (`{device}` replaced).
        device: Option<String>,
        /// The command's name.
        name: String,
        /// Its arguments.
        args: serde_json::Map<String, serde_json::Value>,
    },
    /// Publish the transition on a topic (`{rule}` and `{device}` replaced), at QoS 0 or 1.
    Mqtt {
        /// The topic, before replacing.
        topic: String,
        /// The QoS of the publish (1 unless the rule says 0).
        qos: rumqttc::QoS,
    },
    /// A log line at this level.
    Log(tracing::Level),
}

/// One action of a rule.
#[derive(Debug, Clone)]
pub struct Action {
    /// What it does.
    pub kind: ActionKind,
    /// When.
    pub on: On,
}

/// A checked rule.
#[derive(Debug)]
pub struct Rule {
    /// Its name.
    pub name: String,
    /// Where it comes from.
    pub origin: Origin,
    /// Device-id pattern, if any.
    pub devices: Option<String>,
    /// Labels a device must carry.
    pub labels: BTreeMap<String, String>,
    /// The metric it reads, if any.
    pub metric: Option<String>,
    /// What makes its alerts active.
    pub condition: Condition,
    /// How long the condition must hold before an alert fires.
    pub for_ms: u64,
    /// The shortest time between two firings of one alert.
    pub min_interval_ms: u64,
    /// What to do on transitions.
    pub actions: Vec<Action>,
    /// The configuration it was made from (what the API shows).
    pub config: RuleConfig,
}

impl Rule {
    /// Whether the rule's device selection takes `device` with these `labels`.
    pub fn selects(&self, device: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        if let Some(pattern) = &self.devices
            && !crate::patterns::pattern_matches(pattern, device)
        {
            return false;
        }
        if self.labels.is_empty() {
            return true;
        }
        labels.is_some_and(|have| self.labels.iter().all(|(k, v)| have.get(k) == Some(v)))
    }
}

fn duration(key: &str, text: &str, problems: &mut Vec<String>) -> u64 {
    match HumanDuration::parse(text) {
        Ok(d) => d.0.as_millis() as u64,
        Err(e) => {
            problems.push(format!("{key}: {e}"));
            0
        }
    }
}

fn finite(key: &str, value: Option<f64>, problems: &mut Vec<String>) {
    if value.is_some_and(|v| !v.is_finite()) {
        problems.push(format!("{key}: must be a finite number"));
    }
}

/// Checks `config` and makes the rule; every problem, each with its key.
pub fn compile(config: &RuleConfig, origin: Origin) -> Result<Rule, Vec<String>> {
    let mut problems = Vec::new();
    let c = config;
    if !device_protocol::is_valid_id(&c.name) {
        problems.push("name: must be 1 to 64 of A-Z a-z 0-9 . _ -".into());
    }
    if let Some(pattern) = &c.devices
        && (pattern.is_empty()
            || pattern.len() > 64
            || !pattern
                .chars()
                .all(|ch| ch == '*' || ch.is_ascii_alphanumeric() || ".-_".contains(ch)))
    {
        problems.push("devices: a device-id pattern: 1 to 64 of A-Z a-z 0-9 . _ - and *".into());
    }
    if c.labels.len() > MAX_LABELS {
        problems.push(format!("labels: at most {MAX_LABELS}"));
    }
    if let Some(metric) = &c.metric
        && (metric.is_empty() || metric.len() > 128)
    {
        problems.push("metric: 1 to 128 characters".into());
    }
    finite("above", c.above, &mut problems);
    finite("below", c.below, &mut problems);
    finite("hysteresis", c.hysteresis, &mut problems);

    let given: Vec<&str> = [
        ("above", c.above.is_some()),
        ("below", c.below.is_some()),
        ("rate", c.rate.is_some()),
        ("change", c.change.is_some()),
        ("silent", c.silent.is_some()),
        ("offline", c.offline.is_some()),
        ("expr", c.expr.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect();
    let condition = match given.as_slice() {
        [] => {
            problems.push(
                "a condition is needed: one of above, below, rate, change, silent, offline, expr"
                    .into(),
            );
            None
        }
        [_] => condition(c, &mut problems),
        many => {
            problems.push(format!("one condition per rule, found {}", many.join(", ")));
            None
        }
    };
    let threshold = matches!(condition, Some(Condition::Threshold { .. }));
    if c.hysteresis.is_some_and(|h| h < 0.0) {
        problems.push("hysteresis: must be 0 or more".into());
    }
    if c.hysteresis.is_some() && !threshold && condition.is_some() {
        problems.push("hysteresis: only with above or below".into());
    }
    let needs_metric = matches!(
        condition,
        Some(
            Condition::Threshold { .. }
                | Condition::Rate { .. }
                | Condition::Change { .. }
                | Condition::Expr(_)
        )
    );
    if needs_metric && c.metric.is_none() {
        problems.push(format!("metric: needed by {}", given.join("")));
    }
    if matches!(condition, Some(Condition::Offline)) && c.metric.is_some() {
        problems.push("metric: not with offline (a device is offline, not a metric)".into());
    }
    let for_ms = match &c.for_ {
        Some(text) => {
            let ms = duration("for", text, &mut problems);
            if condition.is_some()
                && !matches!(
                    condition,
                    Some(Condition::Threshold { .. } | Condition::Rate { .. } | Condition::Expr(_))
                )
            {
                problems.push("for: only with above, below, rate or expr".into());
            }
            ms
        }
        None => 0,
    };
    let min_interval_ms = c
        .min_interval
        .as_deref()
        .map_or(0, |text| duration("min_interval", text, &mut problems));
    if c.actions.len() > MAX_ACTIONS {
        problems.push(format!("actions: at most {MAX_ACTIONS}"));
    }
    let actions: Vec<Action> = c
        .actions
        .iter()
        .enumerate()
        .filter_map(|(i, a)| action(a, &format!("actions[{i}]"), &mut problems))
        .collect();
    match condition {
        Some(condition) if problems.is_empty() => Ok(Rule {
            name: c.name.clone(),
            origin,
            devices: c.devices.clone(),
            labels: c.labels.clone(),
            metric: c.metric.clone(),
            condition,
            for_ms,
            min_interval_ms,
            actions,
            config: c.clone(),
        }),
        _ => Err(problems),
    }
}

fn condition(c: &RuleConfig, problems: &mut Vec<String>) -> Option<Condition> {
    if let Some(limit) = c.above.or(c.below) {
        return Some(Condition::Threshold {
            above: c.above.is_some(),
            limit,
            hysteresis: c.hysteresis.unwrap_or(0.0),
        });
    }
    if let Some(rate) = &c.rate {
        let per_ms = duration("rate.per", &rate.per, problems);
        if per_ms == 0 && !rate.per.is_empty() {
            problems.push("rate.per: must be more than 0".into());
        }
        if rate.per.is_empty() {
            problems.push("rate.per: needed (the window, like 1m)".into());
        }
        finite("rate.above", rate.above, problems);
        finite("rate.below", rate.below, problems);
        if rate.above.is_some() == rate.below.is_some() {
            problems.push("rate: give one of above or below".into());
        }
        return Some(Condition::Rate {
            per_ms,
            above: rate.above,
            below: rate.below,
        });
    }
    if let Some(change) = &c.change {
        if !(change.deadband.is_finite() && change.deadband >= 0.0) {
            problems.push("change.deadband: must be 0 or more".into());
        }
        return Some(Condition::Change {
            deadband: change.deadband,
        });
    }
    if let Some(text) = &c.silent {
        let after_ms = duration("silent", text, problems);
        if after_ms < 1000 {
            problems.push("silent: at least 1s".into());
        }
        return Some(Condition::Silent { after_ms });
    }
    if let Some(offline) = c.offline {
        if !offline {
            problems.push("offline: only `true` makes sense".into());
        }
        return Some(Condition::Offline);
    }
    if let Some(text) = &c.expr {
        return match Expression::compile(text) {
            Ok(expr) => Some(Condition::Expr(Box::new(expr))),
            Err(e) => {
                problems.push(format!("expr: {e}"));
                None
            }
        };
    }
    None
}

fn action(a: &ActionConfig, key: &str, problems: &mut Vec<String>) -> Option<Action> {
    let set = [
        a.webhook.is_some(),
        a.command.is_some(),
        a.mqtt.is_some(),
        a.log.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        problems.push(format!(
            "{key}: give exactly one of webhook, command, mqtt, log"
        ));
        return None;
    }
    let on = match a.on.as_deref() {
        None if a.command.is_some() => On {
            firing: true,
            resolved: false,
        },
        None | Some("both") => On {
            firing: true,
            resolved: true,
        },
        Some("firing") => On {
            firing: true,
            resolved: false,
        },
        Some("resolved") => On {
            firing: false,
            resolved: true,
        },
        Some(other) => {
            problems.push(format!(
                "{key}.on: {other:?} is not one of firing, resolved, both"
            ));
            return None;
        }
    };
    let kind = if let Some(url) = &a.webhook {
        if let Err(e) = crate::http_client::Target::parse(url) {
            problems.push(format!("{key}.webhook: {e}"));
            return None;
        }
        ActionKind::Webhook(url.clone())
    } else if let Some(command) = &a.command {
        if !device_protocol::is_valid_id(&command.name) {
            problems.push(format!(
                "{key}.command.name: must be 1 to 64 of A-Z a-z 0-9 . _ -"
            ));
        }
        if let Some(device) = &command.device
            && device != "{device}"
            && !device_protocol::is_valid_id(device)
        {
            problems.push(format!(
                "{key}.command.device: a device id, or \"{{device}}\" for the alert's device"
            ));
        }
        ActionKind::Command {
            device: command.device.clone().filter(|d| d != "{device}"),
            name: command.name.clone(),
            args: command.args.clone(),
        }
    } else if let Some(mqtt) = &a.mqtt {
        if mqtt.topic.is_empty() || mqtt.topic.contains(['+', '#']) || mqtt.topic.len() > 256 {
            problems.push(format!(
                "{key}.mqtt.topic: 1 to 256 characters, no wildcards (+ #)"
            ));
        }
        if mqtt.qos.is_some_and(|q| q > 1) {
            problems.push(format!("{key}.mqtt.qos: 0 or 1"));
        }
        ActionKind::Mqtt {
            topic: mqtt.topic.clone(),
            qos: match mqtt.qos {
                Some(0) => rumqttc::QoS::AtMostOnce,
                _ => rumqttc::QoS::AtLeastOnce,
            },
        }
    } else {
        let level = match a.log.as_deref() {
            Some("info") => tracing::Level::INFO,
            Some("warn") => tracing::Level::WARN,
            Some("error") => tracing::Level::ERROR,
            other => {
                problems.push(format!(
                    "{key}.log: {other:?} is not one of info, warn, error"
                ));
                return None;
            }
        };
        ActionKind::Log(level)
    };
    Some(Action { kind, on })
}

/// Every problem of the configuration's rules, each with its place (`rules[0] (name).key`), and
/// of the rules together (names used twice, too many rules).
pub fn config_problems(rules: &[RuleConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    if rules.len() > MAX_RULES {
        problems.push(format!("rules: at most {MAX_RULES}"));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let place = format!("rules[{i}] ({})", rule.name);
        if !seen.insert(rule.name.as_str()) {
            problems.push(format!("{place}.name: used by an earlier rule"));
        }
        if let Err(found) = compile(rule, Origin::Config) {
            problems.extend(found.into_iter().map(|p| format!("{place}.{p}")));
        }
    }
    problems
}
