//! The `http` sink's uplink. (Skeleton: filled in by the sink transports work.)

use super::{Batch, Delivery, SyncError};
use crate::config::SinkConfig;

/// POSTs batches to one URL.
pub struct HttpUplink {
    name: String,
}

impl HttpUplink {
    /// An uplink for `config`; fails on an unusable URL, certificate or token file.
    pub fn new(config: &SinkConfig) -> Result<Self, SyncError> {
        Ok(HttpUplink {
            name: config.name.clone(),
        })
    }

    /// Sends `batch` once and says what became of it.
    pub async fn deliver(&mut self, batch: &Batch) -> Delivery {
        let _ = batch;
        Delivery::Retry {
            after: None,
            reason: format!("sink {}: http uplink not built yet", self.name),
        }
    }
}
