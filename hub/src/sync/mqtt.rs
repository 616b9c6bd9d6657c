//! The `mqtt` sink's uplink. (Skeleton: filled in by the sink transports work.)

use super::{Batch, Delivery, SyncError};
use crate::config::SinkConfig;

/// Publishes batches to a cloud broker at QoS 1.
pub struct MqttUplink {
    name: String,
}

impl MqttUplink {
    /// An uplink for `config` publishing as `hub_id`; fails on an unusable URL or certificate.
    pub fn new(config: &SinkConfig, hub_id: &str) -> Result<Self, SyncError> {
        let _ = hub_id;
        Ok(MqttUplink {
            name: config.name.clone(),
        })
    }

    /// Publishes `batch` once and waits for its PUBACK.
    pub async fn deliver(&mut self, batch: &Batch) -> Delivery {
        let _ = batch;
        Delivery::Retry {
            after: None,
            reason: format!("sink {}: mqtt uplink not built yet", self.name),
        }
    }
}
