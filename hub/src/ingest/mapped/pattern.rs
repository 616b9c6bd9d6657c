//! Topic patterns of mapped topics (`tele/{device}/SENSOR`) and metric-name templates
//! (`{component}`, `power.{channel}`): compiled once from the configuration, matched per message.
//!
//! A pattern is MQTT topic levels, each a literal or a whole-level `{name}`; `{device}` appears
//! exactly once. Its wildcard form (`tele/+/SENSOR`) is what the hub subscribes to behind an
//! external broker. Matching returns slices of the topic.

/// Most levels in a pattern.
const MAX_LEVELS: usize = 16;
/// Longest `{name}` of a level.
const MAX_NAME_LEN: usize = 32;

/// One level of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// Must equal the topic's level.
    Literal(String),
    /// Takes whatever the topic's level is (`{name}`).
    Named(String),
}

/// A compiled topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    levels: Vec<Level>,
    text: String,
}

/// The levels of a topic a pattern matched: `{device}` and the other named ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captures<'t> {
    /// The `{device}` level.
    pub device: &'t str,
    named: Vec<(&'t str, &'t str)>,
}

impl<'t> Captures<'t> {
    /// The level named `name`, if the pattern has it.
    pub fn get(&self, name: &str) -> Option<&'t str> {
        if name == "device" {
            return Some(self.device);
        }
        self.named.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// `{name}` of a level: `Some(name)` when the text is exactly one.
fn braced(text: &str) -> Option<&str> {
    text.strip_prefix('{')?.strip_suffix('}')
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Pattern {
    /// Compiles `text`, or says what is wrong with it.
    pub fn compile(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("the topic is empty".into());
        }
        if text.starts_with('$') {
            return Err("a topic starting with $ is the broker's own".into());
        }
        let mut levels = Vec::new();
        for level in text.split('/') {
            if level.contains(['+', '#', '\0']) {
                return Err(format!(
                    "level {level:?}: no wildcards (+, #); name a level {{like_this}} instead"
                ));
            }
            let parsed = match braced(level) {
                Some(name) if is_valid_name(name) => {
                    if levels
                        .iter()
                        .any(|l| matches!(l, Level::Named(n) if n == name))
                    {
                        return Err(format!("{{{name}}} appears twice"));
                    }
                    Level::Named(name.to_owned())
                }
                Some(name) => {
                    return Err(format!(
                        "{{{name}}}: a level's name is 1 to {MAX_NAME_LEN} of a-z 0-9 _"
                    ));
                }
                None if level.contains(['{', '}']) => {
                    return Err(format!("level {level:?}: a {{name}} must be a whole level"));
                }
                None => Level::Literal(level.to_owned()),
            };
            levels.push(parsed);
        }
        if levels.len() > MAX_LEVELS {
            return Err(format!("more than {MAX_LEVELS} levels"));
        }
        let devices = levels
            .iter()
            .filter(|l| matches!(l, Level::Named(n) if n == "device"))
            .count();
        if devices != 1 {
            return Err("the topic needs exactly one {device} level".into());
        }
        Ok(Pattern {
            levels,
            text: text.to_owned(),
        })
    }

    /// The pattern as configured.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has a level called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.levels
            .iter()
            .any(|l| matches!(l, Level::Named(n) if n == name))
    }

    /// The MQTT filter that receives every matching topic (`{name}` levels as `+`).
    pub fn filter(&self) -> String {
        let levels: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(text) => text.as_str(),
                Level::Named(_) => "+",
            })
            .collect();
        levels.join("/")
    }

    /// The levels of `topic` if it matches.
    pub fn captures<'t>(&'t self, topic: &'t str) -> Option<Captures<'t>> {
        let mut device = None;
        let mut named = Vec::new();
        let mut parts = topic.split('/');
        for level in &self.levels {
            let part = parts.next()?;
            match level {
                Level::Literal(text) if text != part => return None,
                Level::Literal(_) => {}
                Level::Named(name) if name == "device" => device = Some(part),
                Level::Named(name) => named.push((name.as_str(), part)),
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Captures {
            device: device?,
            named,
        })
    }
}

/// Whether some topic matches both MQTT filters `a` and `b` (`+` a level, `#` the rest).
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(x), Some(y)) if x == y || x == "+" || y == "+" => {}
            _ => return false,
        }
    }
}

/// Whether every topic `inner` matches, `outer` matches too (both with `+` levels only, and `#`
/// as `outer`'s last).
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    let (mut outer, mut inner) = (outer.split('/'), inner.split('/'));
    loop {
        match (outer.next(), inner.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(x), Some(y)) if x == y && y != "+" => {}
            _ => return false,
        }
    }
}

/// A metric name made of literal text and `{name}` levels of the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Level(String),
}

impl Template {
    /// Compiles `text` for `pattern`: every `{name}` must be a level of it.
    pub fn compile(text: &str, pattern: &Pattern) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| format!("{text:?}: a {{ without its }}"))?;
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let name = &rest[open + 1..close];
            if !pattern.has(name) {
                return Err(format!(
                    "{text:?}: {{{name}}} is not a level of the topic {:?}",
                    pattern.text()
                ));
            }
            parts.push(Part::Level(name.to_owned()));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err("a metric name cannot be empty".into());
        }
        let template = Template { parts };
        // The literal text must fit a metric name: only a topic's levels may make one invalid.
        let sample = template.render_with(|_| "x");
        if !device_protocol::is_valid_id(&sample) {
            return Err(format!(
                "{text:?} cannot make a metric name (1-64 of A-Z a-z 0-9 . _ -)"
            ));
        }
        Ok(template)
    }

    /// The metric name for a matched topic. A level's `:` is written `_` (Shelly names its
    /// components `switch:0`, a character metric names do not allow); any other character a
    /// metric name does not allow leaves the name invalid, which the caller refuses.
    pub fn render(&self, captures: &Captures<'_>) -> String {
        self.render_with(|name| captures.get(name).unwrap_or(""))
    }

    fn render_with<'a>(&self, level: impl Fn(&str) -> &'a str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Level(name) => out.extend(level(name).chars().map(|c| match c {
                    ':' => '_',
                    c => c,
                })),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn patterns_compile_and_match_whole_levels() {
        let p = Pattern::compile("tele/{device}/SENSOR").unwrap();
        assert_eq!(p.filter(), "tele/+/SENSOR");
        let c = p.captures("tele/plug-1/SENSOR").unwrap();
        assert_eq!(c.device, "plug-1");
        assert!(p.captures("tele/plug-1/STATE").is_none());
        assert!(p.captures("tele/plug-1/SENSOR/x").is_none());
        assert!(p.captures("tele/SENSOR").is_none());
        assert!(p.captures("tele/a/b/SENSOR").is_none());
        // An empty level matches, as `+` does; the device id check refuses it later.
        assert_eq!(p.captures("tele//SENSOR").unwrap().device, "");

        let p = Pattern::compile("{device}/status/{component}").unwrap();
        assert_eq!(p.filter(), "+/status/+");
        let c = p.captures("shellyplus1pm-a8/status/switch:0").unwrap();
        assert_eq!(
            (c.device, c.get("component")),
            ("shellyplus1pm-a8", Some("switch:0"))
        );
        assert_eq!(c.get("other"), None);
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("tele/+/SENSOR", "wildcards"),
            ("tele/{device}/#", "wildcards"),
            ("tele/SENSOR", "exactly one {device}"),
            ("{device}/{device}", "twice"),
            ("a/{device}x", "whole level"),
            ("a/{Device}", "a-z"),
            ("a/{}/{device}", "a-z"),
            ("$SYS/{device}", "broker"),
        ] {
            let e = Pattern::compile(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let deep = format!("{}{{device}}", "a/".repeat(MAX_LEVELS));
        assert!(Pattern::compile(&deep).unwrap_err().contains("levels"));
    }

    #[test]
    fn filters_overlap_as_mqtt_matches() {
        assert!(filters_overlap("tele/+/SENSOR", "tele/x/SENSOR"));
        assert!(filters_overlap("+/+/+", "devices/+/telemetry"));
        assert!(!filters_overlap("+/+", "devices/+/telemetry"));
        assert!(!filters_overlap("tele/+/SENSOR", "devices/+/telemetry"));
        assert!(filters_overlap("+/x", "spBv1.0/#"));
        assert!(!filters_overlap("a/x", "spBv1.0/#"));
        assert!(filters_overlap("a/b", "a/b"));
        assert!(filter_covers("devices/+/telemetry", "devices/+/telemetry"));
        assert!(filter_covers("devices/+/telemetry", "devices/x/telemetry"));
        assert!(!filter_covers("devices/+/telemetry", "+/status/+"));
        assert!(!filter_covers("devices/x/telemetry", "devices/+/telemetry"));
        assert!(filter_covers("spBv1.0/#", "spBv1.0/+/x"));
        assert!(!filter_covers("spBv1.0/#", "+/x"));
    }

    #[test]
    fn templates_name_metrics_from_levels() {
        let p = Pattern::compile("shellies/{device}/relay/{channel}/{kind}").unwrap();
        let t = Template::compile("relay.{channel}.{kind}", &p).unwrap();
        let c = p.captures("shellies/s1/relay/0/power").unwrap();
        assert_eq!(t.render(&c), "relay.0.power");
        let p = Pattern::compile("{device}/status/{component}").unwrap();
        let t = Template::compile("{component}", &p).unwrap();
        let c = p.captures("s/status/switch:0").unwrap();
        assert_eq!(t.render(&c), "switch_0");
        assert!(
            Template::compile("{nope}", &p)
                .unwrap_err()
                .contains("not a level")
        );
        assert!(Template::compile("a b{component}", &p).is_err());
        assert!(Template::compile("x{component", &p).is_err());
        assert!(Template::compile("", &p).is_err());
    }

    proptest! {
        /// A pattern matches exactly the topics its filter matches, and captures the device level.
        #[test]
        fn a_pattern_matches_what_its_filter_matches(
            literals in proptest::collection::vec("[ab]{1,2}", 1..4),
            topic in proptest::collection::vec("[ab]{0,2}", 1..4),
            device_at in 0usize..4,
        ) {
            let mut pattern = literals.clone();
            let at = device_at % pattern.len();
            pattern[at] = "{device}".into();
            let p = Pattern::compile(&pattern.join("/")).unwrap();
            let topic_text = topic.join("/");
            let expected = crate::ingest::endpoint::router::matches(&p.filter(), &topic_text);
            let captured = p.captures(&topic_text);
            prop_assert_eq!(captured.is_some(), expected);
            if let Some(c) = captured {
                prop_assert_eq!(c.device, topic[at].as_str());
            }
        }
    }
}
