//! Prometheus metrics: the counters every part already keeps, rendered in the text exposition
//! format when `/metrics` is asked, plus the few measurements kept here (histograms of commits
//! and API requests).
//!
//! Nothing here allocates per event: counters are atomics, histograms fixed arrays of atomics,
//! and API requests are counted in a map bounded by the routes (unmatched paths share one label).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

pub use crate::histogram::Histogram;

/// Bounds of API request latency, seconds.
pub const REQUEST_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Most distinct (route, method, status) series; more are counted under `route="other"`.
const MAX_REQUEST_SERIES: usize = 512;

/// API requests by route, method and status.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    series: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
}

impl RequestMetrics {
    /// Counts one answered request of `route` (the matched template, not the path).
    pub fn record(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let Ok(mut series) = self.series.lock() else {
            return;
        };
        let key = (route.to_owned(), method.to_owned(), status);
        let key = if series.contains_key(&key) || series.len() < MAX_REQUEST_SERIES {
            key
        } else {
            ("other".to_owned(), method.to_owned(), status)
        };
        let route = key.0.clone();
        *series.entry(key).or_insert(0) += 1;
        drop(series);
        if let Ok(mut latency) = self.latency.lock() {
            latency
                .entry((route, method.to_owned()))
                .or_insert_with(|| Histogram::new(REQUEST_SECONDS))
                .observe(seconds);
        }
    }

    /// Writes the request counters and latency histograms.
    pub fn render(&self, out: &mut String) {
        family(
            out,
            "hub_api_requests_total",
            "counter",
            "API requests answered, by route template, method and status.",
        );
        if let Ok(series) = self.series.lock() {
            for ((route, method, status), n) in series.iter() {
                let _ = writeln!(
                    out,
                    "hub_api_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        family(
            out,
            "hub_api_request_duration_seconds",
            "histogram",
            "Time to answer an API request (to the response head), by route template and method.",
        );
        if let Ok(latency) = self.latency.lock() {
            for ((route, method), histogram) in latency.iter() {
                let labels = format!("route=\"{}\",method=\"{method}\",", escape(route));
                histogram.render(out, "hub_api_request_duration_seconds", &labels);
            }
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one sample; `labels` is `a="b",c="d"` or empty.
pub fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// A family with a single unlabelled sample.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    sample(out, name, "", value);
}

/// Escapes a label value (backslash, quote, newline).
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The process's resident memory, from `/proc/self/status` (Linux), in bytes.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(3.0);
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\",");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"2\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 5\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
    }

    #[test]
    fn request_series_stay_bounded() {
        let m = RequestMetrics::default();
        for i in 0..(MAX_REQUEST_SERIES + 10) {
            m.record(&format!("/r{i}"), "GET", 200, 0.001);
        }
        let series = m.series.lock().unwrap();
        assert!(series.len() <= MAX_REQUEST_SERIES + 1);
        assert_eq!(series.get(&("other".into(), "GET".into(), 200)), Some(&10));
    }
}

/// Unix time at which each certificate expires, by name; updated whenever they are loaded.
pub type Expiry = std::sync::Arc<Mutex<BTreeMap<&'static str, i64>>>;

/// What `/metrics` reads besides the API's own state: the counters of ingest and the store
/// writer, and the certificates' expiry.
#[derive(Debug, Default)]
pub struct Sources {
    /// Ingest counters by transport.
    pub ingest: Vec<(&'static str, std::sync::Arc<crate::ingest::IngestStats>)>,
    /// Each Modbus bus's counters.
    pub modbus: Vec<std::sync::Arc<crate::ingest::modbus::ModbusStats>>,
    /// The store writer's counters and commit histograms.
    pub writer: std::sync::Arc<crate::store::writer::WriterStats>,
    /// Whether ingest is stalled.
    pub liveness: std::sync::Arc<crate::liveness::IngestLiveness>,
    /// Unix time at which each certificate of the API expires (`server`, `client_ca`), as of
    /// the last load.
    pub certificates: Expiry,
    /// API requests.
    pub requests: RequestMetrics,
    /// Unix time the process started, seconds.
    pub started: u64,
}
