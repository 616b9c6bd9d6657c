//! What ingest shows in `/metrics`: device messages by transport and outcome, readings dropped
//! after all (QoS 0 only), and the device connections open on the hub's endpoint.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{DropReason, IngestStats, Rejection};
use crate::exposition::{Collect, CollectError, Exposition};

/// The ingest counters of every transport, by transport name.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Each transport's counters (`mqtt`, `serial`, ...).
    pub transports: Vec<(&'static str, Arc<IngestStats>)>,
}

impl Collect for IngestMetrics {
    fn collect(&self, out: &mut Exposition) -> Result<(), CollectError> {
        out.family(
            "hub_ingest_messages_total",
            "counter",
            "Device messages by transport and outcome: accepted (handed to the store writer) or the reason they were skipped.",
        );
        for (transport, stats) in &self.transports {
            out.sample(
                "hub_ingest_messages_total",
                &format!("transport=\"{transport}\",outcome=\"accepted\""),
                stats.accepted.load(Ordering::Relaxed),
            );
            for reason in Rejection::ALL {
                out.sample(
                    "hub_ingest_messages_total",
                    &format!("transport=\"{transport}\",outcome=\"{}\"", reason.name()),
                    stats.rejected(reason),
                );
            }
        }
        out.family(
            "hub_ingest_dropped_total",
            "counter",
            "Readings accepted and then lost after all, by transport and reason: only QoS 0 ones, which cannot be sent again (anything acknowledged is never dropped).",
        );
        for (transport, stats) in &self.transports {
            for reason in DropReason::ALL {
                out.sample(
                    "hub_ingest_dropped_total",
                    &format!("transport=\"{transport}\",reason=\"{}\"", reason.name()),
                    stats.dropped(reason),
                );
            }
        }
        out.family(
            "hub_device_connections",
            "gauge",
            "MQTT client connections open on the hub's endpoint (plain and TLS listeners).",
        );
        out.sample(
            "hub_device_connections",
            "listener=\"mqtt\"",
            self.transports
                .iter()
                .map(|(_, s)| s.connections.load(Ordering::Relaxed))
                .sum::<u64>(),
        );
        Ok(())
    }
}
