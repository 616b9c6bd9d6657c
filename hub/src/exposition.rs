//! How a part shows its counters in `/metrics`: the [`Collect`] trait, and the Prometheus text
//! exposition format (version 0.0.4) it writes through [`Exposition`]. A leaf: every part that
//! measures implements [`Collect`] for its own counters beside them, and `/metrics` walks the
//! collectors `app` registered, instead of reaching into each part.
//!
//! Invariants: a family's `# HELP` and `# TYPE` come once, right before its samples (so one
//! collector writes a whole family); label values are escaped.

use std::fmt::Write as _;

/// A part's counters, shown in `/metrics`.
pub trait Collect: Send + Sync {
    /// Writes the part's families. May block briefly (a store read): `/metrics` collects off the
    /// async workers.
    fn collect(&self, out: &mut Exposition) -> Result<(), CollectError>;
}

/// A collector could not read what it shows (the store failed); the scrape fails with 500.
#[derive(Debug, thiserror::Error)]
#[error("metrics of {part}: {why}")]
pub struct CollectError {
    /// The part.
    pub part: &'static str,
    /// Why.
    pub why: String,
}

impl CollectError {
    /// `part` failed with `why`.
    pub fn new(part: &'static str, why: impl std::fmt::Display) -> Self {
        CollectError {
            part,
            why: why.to_string(),
        }
    }
}

/// A counter family read from rows of `T`: its name, its help, and how a row gives its value.
pub type CounterFamily<'a, T> = (&'a str, &'a str, fn(&T) -> u64);

/// The text of a scrape being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// An empty scrape, with room for a typical one.
    pub fn new() -> Self {
        Exposition {
            text: String::with_capacity(16 << 10),
        }
    }

    /// Writes the `# HELP` and `# TYPE` lines of a family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// Writes one sample; `labels` is `a="b",c="d"` or empty.
    pub fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.text, "{name} {value}");
        } else {
            let _ = writeln!(self.text, "{name}{{{labels}}} {value}");
        }
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }

    /// Counter families read from the same rows: for each `(name, help, read)`, one sample per
    /// row, labelled with the row's labels and valued `read(row)`.
    pub fn counter_families<T>(&mut self, families: &[CounterFamily<T>], rows: &[(String, &T)]) {
        for (name, help, read) in families {
            self.family(name, "counter", help);
            for (labels, row) in rows {
                self.sample(name, labels, read(row));
            }
        }
    }

    /// The text so far, for writers of their own (histograms).
    pub fn text(&mut self) -> &mut String {
        &mut self.text
    }

    /// The finished scrape.
    pub fn into_text(self) -> String {
        self.text
    }
}

/// Escapes a label value (backslash, quote, newline).
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples_in_the_text_format() {
        let mut out = Exposition::new();
        out.single("a_total", "counter", "A things.", 3);
        out.family("b", "gauge", "B by kind.");
        out.sample("b", &format!("kind=\"{}\"", escape("x\"y")), 1.5);
        out.counter_families::<u64>(
            &[("c_total", "C.", |n| *n), ("d_total", "D.", |n| n * 2)],
            &[("x=\"1\"".into(), &1), ("x=\"2\"".into(), &2)],
        );
        assert_eq!(
            out.into_text(),
            "# HELP a_total A things.\n# TYPE a_total counter\na_total 3\n\
             # HELP b B by kind.\n# TYPE b gauge\nb{kind=\"x\\\"y\"} 1.5\n\
             # HELP c_total C.\n# TYPE c_total counter\nc_total{x=\"1\"} 1\nc_total{x=\"2\"} 2\n\
             # HELP d_total D.\n# TYPE d_total counter\nd_total{x=\"1\"} 2\nd_total{x=\"2\"} 4\n"
        );
    }
}
