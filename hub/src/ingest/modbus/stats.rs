//! Counters of one Modbus bus, shared with `/metrics`: failed requests by reason, polls, points
//! read, and how late each poll started against its schedule.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::histogram::Histogram;

/// Bounds of poll lateness, seconds: from a millisecond (a loaded line or runtime) to ten
/// seconds (a line held up by units that time out).
pub const LATENESS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Why a request to a unit failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No answer within the bus's timeout.
    Timeout,
    /// The unit answered with a Modbus exception.
    Exception,
    /// An answer that does not decode (bad CRC, garbled) or is not the request's.
    BadFrame,
    /// The port or socket failed (or could not be opened).
    Link,
}

impl Reason {
    /// All reasons, in a fixed order.
    pub const ALL: [Reason; 4] = [
        Reason::Timeout,
        Reason::Exception,
        Reason::BadFrame,
        Reason::Link,
    ];

    /// A short name for logs, metrics and device events.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Exception => "exception",
            Reason::BadFrame => "bad_frame",
            Reason::Link => "link_down",
        }
    }
}

/// Counters of one bus.
#[derive(Debug)]
pub struct ModbusStats {
    /// The bus's name (a metric label).
    pub bus: String,
    errors: [AtomicU64; Reason::ALL.len()],
    /// Polls that became a reading.
    pub polls: AtomicU64,
    /// Points read in those polls.
    pub points: AtomicU64,
    /// Requests sent (reads and writes, answered or not).
    pub requests: AtomicU64,
    /// How late each poll started against its schedule, seconds.
    pub lateness: Histogram,
}

impl ModbusStats {
    /// Zeroed counters of bus `bus`.
    pub fn new(bus: &str) -> Self {
        ModbusStats {
            bus: bus.to_owned(),
            errors: Default::default(),
            polls: AtomicU64::new(0),
            points: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            lateness: Histogram::new(LATENESS_SECONDS),
        }
    }

    /// Counts a failed request.
    pub fn count_error(&self, reason: Reason) {
        self.errors[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Failed requests for `reason`.
    pub fn errors(&self, reason: Reason) -> u64 {
        self.errors[reason as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_counted_on_its_own() {
        let stats = ModbusStats::new("line-1");
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "{}", reason.name());
            for _ in 0..=i {
                stats.count_error(reason);
            }
        }
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(stats.errors(reason), i as u64 + 1);
        }
    }
}

/// The Modbus buses' counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct ModbusMetrics {
    /// Each bus's counters.
    pub buses: Vec<std::sync::Arc<ModbusStats>>,
}

impl crate::exposition::Collect for ModbusMetrics {
    fn collect(
        &self,
        out: &mut crate::exposition::Exposition,
    ) -> Result<(), crate::exposition::CollectError> {
        use crate::exposition::escape;
        out.family(
            "hub_modbus_errors_total",
            "counter",
            "Failed Modbus requests by bus and reason: timeout, exception (the unit refused), bad_frame (bad CRC, garbled or another's answer), link_down (the port or socket failed or would not open).",
        );
        for bus in &self.buses {
            for reason in Reason::ALL {
                out.sample(
                    "hub_modbus_errors_total",
                    &format!("bus=\"{}\",reason=\"{}\"", escape(&bus.bus), reason.name()),
                    bus.errors(reason),
                );
            }
        }
        let counters: [crate::exposition::CounterFamily<'_, ModbusStats>; 3] = [
            (
                "hub_modbus_polls_total",
                "Polls of Modbus devices that became a reading, by bus.",
                |s| s.polls.load(Ordering::Relaxed),
            ),
            (
                "hub_modbus_points_total",
                "Points read in those polls, by bus.",
                |s| s.points.load(Ordering::Relaxed),
            ),
            (
                "hub_modbus_requests_total",
                "Modbus requests sent (reads and writes, answered or not), by bus.",
                |s| s.requests.load(Ordering::Relaxed),
            ),
        ];
        let rows: Vec<(String, &ModbusStats)> = self
            .buses
            .iter()
            .map(|bus| (format!("bus=\"{}\"", escape(&bus.bus)), &**bus))
            .collect();
        out.counter_families(&counters, &rows);
        out.family(
            "hub_modbus_poll_lateness_seconds",
            "histogram",
            "How late each Modbus poll started against its schedule (start + n * interval), by bus.",
        );
        for bus in &self.buses {
            let labels = format!("bus=\"{}\",", escape(&bus.bus));
            bus.lateness
                .render(out.text(), "hub_modbus_poll_lateness_seconds", &labels);
        }
        Ok(())
    }
}
