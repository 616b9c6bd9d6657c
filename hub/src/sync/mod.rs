//! Upstream sync: push sinks that follow the readings log, and retention that deletes what every
//! follower has passed.
//!
//! A sink ([`pump`]) reads batches in offset order from the store, hands each to its uplink
//! ([`http`] or [`mqtt`]), and moves its persisted position only once the receiver took the
//! batch (a 2xx, a PUBACK). Data flows one way: the store is only read here, except for the
//! positions, parked readings and retention's deletes.

pub mod compress;
pub mod http;
pub mod mqtt;

use std::time::Duration;

use crate::config::Compression;

/// A batch ready for an uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Offset of its first reading.
    pub first: u64,
    /// Offset of its last reading.
    pub last: u64,
    /// Readings in it.
    pub count: usize,
    /// Derived from its offsets: a batch sent again carries the same key.
    pub key: String,
    /// The body, already compressed with `encoding`.
    pub body: Vec<u8>,
    /// How `body` is compressed.
    pub encoding: Compression,
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver took it (2xx, PUBACK): the position moves past it.
    Delivered,
    /// Not now (network, timeout, 5xx, 429, ...): the same batch is sent again later, after
    /// `after` if the receiver said (`Retry-After`), else after the sink's back-off.
    Retry {
        /// The receiver's own wait, if it gave one.
        after: Option<Duration>,
        /// Why, for the log (never holds a secret).
        reason: String,
    },
    /// Refused for good (a permanent 4xx): the batch is split to find the readings at fault,
    /// which are parked.
    Refused {
        /// The receiver's status code.
        status: u16,
        /// What it said, shortened, for the operator.
        reason: String,
    },
}

/// What setting up a sink can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The sink's configuration cannot be used (bad URL, unreadable certificate or token file).
    #[error("sink {sink}: {reason}")]
    Config {
        /// The sink's name.
        sink: String,
        /// Why.
        reason: String,
    },
    /// Compressing a body failed.
    #[error("compressing a batch: {0}")]
    Compress(std::io::Error),
}
