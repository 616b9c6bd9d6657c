//! Prometheus metrics: the collectors `app` registers (each part's own, see
//! [`crate::exposition::Collect`]), the process's (build, memory, start, certificates' expiry),
//! and the API requests' counters and latency.
//!
//! Nothing here allocates per event: counters are atomics, histograms fixed arrays of atomics,
//! and API requests are counted in a map bounded by the routes (unmatched paths share one label).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::exposition::{Collect, CollectError, Exposition, escape};

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
    pub fn render(&self, out: &mut Exposition) {
        out.family(
            "hub_api_requests_total",
            "counter",
            "API requests answered, by route template, method and status.",
        );
        if let Ok(series) = self.series.lock() {
            for ((route, method, status), n) in series.iter() {
                let _ = writeln!(
                    out.text(),
                    "hub_api_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        out.family(
            "hub_api_request_duration_seconds",
            "histogram",
            "Time to answer an API request (to the response head), by route template and method.",
        );
        if let Ok(latency) = self.latency.lock() {
            for ((route, method), histogram) in latency.iter() {
                let labels = format!("route=\"{}\",method=\"{method}\",", escape(route));
                histogram.render(out.text(), "hub_api_request_duration_seconds", &labels);
            }
        }
    }
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

/// The process's own: build, resident memory, start time, and when certificates expire.
#[derive(Debug, Default)]
pub struct ProcessMetrics {
    /// Unix time the process started, seconds.
    pub started: u64,
    /// Unix time at which each certificate of the API and the device listener expires, as of
    /// the last load.
    pub certificates: Expiry,
}

impl Collect for ProcessMetrics {
    fn collect(&self, out: &mut Exposition) -> Result<(), CollectError> {
        out.family("hub_build_info", "gauge", "The hub's version (always 1).");
        out.sample(
            "hub_build_info",
            concat!("version=\"", env!("CARGO_PKG_VERSION"), "\""),
            1,
        );
        if let Some(rss) = resident_bytes() {
            out.single(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of the process.",
                rss,
            );
        }
        out.single(
            "process_start_time_seconds",
            "gauge",
            "When the process started, unix seconds.",
            self.started,
        );
        out.family(
            "hub_certificate_expiry_timestamp_seconds",
            "gauge",
            "When a certificate of the API expires (the earliest in its file), unix seconds.",
        );
        if let Ok(certificates) = self.certificates.lock() {
            for (name, not_after) in certificates.iter() {
                out.sample(
                    "hub_certificate_expiry_timestamp_seconds",
                    &format!("certificate=\"{name}\""),
                    not_after,
                );
            }
        }
        Ok(())
    }
}

/// What `/metrics` shows besides the API's own counters: the collectors of the parts, in the
/// order registered.
#[derive(Default)]
pub struct Registry {
    collectors: Vec<Arc<dyn Collect>>,
}

impl Registry {
    /// Adds a part's collector.
    pub fn register(&mut self, collector: Arc<dyn Collect>) -> &mut Self {
        self.collectors.push(collector);
        self
    }

    /// Writes every collector's families. Blocks: some read the store.
    pub fn collect(&self, out: &mut Exposition) -> Result<(), CollectError> {
        for collector in &self.collectors {
            collector.collect(out)?;
        }
        Ok(())
    }
}
