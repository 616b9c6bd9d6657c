//! The store's public types: what goes in (readings, hellos, statuses), what comes out (readings,
//! devices, latest values, pages) and what each item came to.

use super::*;

/// A reading on its way in.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReading {
    /// Device id (already validated).
    pub device: String,
    /// Transport it came over.
    pub transport: Transport,
    /// How it was encoded.
    pub wire: Wire,
    /// The device's seq, if it sent one.
    pub seq: Option<u32>,
    /// The device's boot, if it sent one (a binary device's readings without one count in the
    /// boot of its last `Hello`).
    pub boot: Option<u32>,
    /// The device's timestamp, if it sent one.
    pub timestamp_ms: Option<u64>,
    /// When the hub received it.
    pub received_ms: u64,
    /// Metric names (already validated) and values.
    pub metrics: Vec<(String, OwnedValue)>,
}

/// A reading with a seq that was refused for its content: nothing of it is stored, but its seq
/// is settled, so the ack passes it, and the device is told to drop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedReading {
    /// Device id (already validated).
    pub device: String,
    /// Transport it came over.
    pub transport: Transport,
    /// How it was encoded.
    pub wire: Wire,
    /// Its seq.
    pub seq: u32,
    /// Its boot, if it named one.
    pub boot: Option<u32>,
    /// When the hub received it.
    pub received_ms: u64,
}

/// A stored reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Hub offset.
    pub offset: u64,
    /// Device id.
    pub device: String,
    /// How it is numbered.
    pub seq: ReadingSeq,
    /// Timestamp (device clock, or hub receive time).
    pub timestamp_ms: u64,
    /// Metric names and values.
    pub metrics: Vec<(String, OwnedValue)>,
}

/// The latest value of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestValue {
    /// Metric name.
    pub metric: String,
    /// Timestamp of the reading it came in.
    pub timestamp_ms: u64,
    /// Offset of that reading.
    pub offset: u64,
    /// The value.
    pub value: OwnedValue,
}

/// A device as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// The stored record.
    pub record: DeviceRecord,
    /// Metric names it has sent.
    pub metric_names: Vec<String>,
}

/// What an operator changes on a device; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevicePatch {
    /// New labels (replacing the old ones).
    pub labels: Option<BTreeMap<String, String>>,
    /// New display name; `Some(None)` removes it.
    pub display_name: Option<Option<String>>,
}

/// Order of a readings query.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    Oldest,
    /// Newest first.
    Newest,
}

/// Where a readings page stopped: the last reading returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Its timestamp.
    pub timestamp_ms: u64,
    /// Its offset.
    pub offset: u64,
}

/// A raw readings query over one device's time index.
#[derive(Debug, Clone)]
pub struct ReadingsQuery {
    /// Device id.
    pub device: String,
    /// Only this metric (readings without it are skipped, the others' values left out).
    pub metric: Option<String>,
    /// Inclusive lower time bound.
    pub from_ms: Option<u64>,
    /// Exclusive upper time bound.
    pub to_ms: Option<u64>,
    /// Order.
    pub order: Order,
    /// Most readings to return.
    pub limit: usize,
    /// Continue after this position (from the previous page).
    pub after: Option<Position>,
}

/// One page of readings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingsPage {
    /// The readings.
    pub readings: Vec<Reading>,
    /// Position to continue from, when more may follow.
    pub next: Option<Position>,
}

/// A device introducing itself (binary `Hello`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceHello {
    /// Device id (already validated).
    pub device: String,
    /// Transport it came over.
    pub transport: Transport,
    /// Firmware version.
    pub firmware: String,
    /// Protocol version it speaks.
    pub protocol_version: u16,
    /// Its boot number, if it sends one.
    pub boot: Option<u32>,
    /// When the hub received it.
    pub received_ms: u64,
}

/// A device's connection changed: its MQTT last will or an `online`/`offline` status it
/// published, or its serial line was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Device id (already validated).
    pub device: String,
    /// Transport it concerns.
    pub transport: Transport,
    /// Reachable or not.
    pub online: bool,
    /// Why, for the device event: `announced`, `last_will`, `link_down`; a Modbus device that
    /// stopped answering: `timeout`, `exception`, `bad_frame`.
    pub reason: &'static str,
    /// When the hub learnt it.
    pub received_ms: u64,
}

/// One thing for the store writer.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingest {
    /// A reading to store.
    Reading(NewReading),
    /// A reading refused for its content, to settle.
    Rejected(RejectedReading),
    /// A device registering or updating itself.
    Hello(DeviceHello),
    /// A device's answer to a command.
    CommandResult(CommandResultIn),
    /// A device's connection changed.
    Status(DeviceStatus),
}

impl Ingest {
    /// About the memory the item takes: its own size and what it points to. The store writer's
    /// queue is bounded by the sum of these (see [`writer::SubmissionSender`]).
    pub fn approx_bytes(&self) -> usize {
        let heap = match self {
            Ingest::Reading(r) => {
                r.device.len()
                    + r.metrics.capacity() * std::mem::size_of::<(String, OwnedValue)>()
                    + r.metrics
                        .iter()
                        .map(|(metric, value)| {
                            metric.len()
                                + match value {
                                    OwnedValue::Str(s) => s.len(),
                                    _ => 0,
                                }
                        })
                        .sum::<usize>()
            }
            Ingest::Rejected(r) => r.device.len(),
            Ingest::Hello(h) => h.device.len() + h.firmware.len(),
            Ingest::CommandResult(c) => {
                c.device.len()
                    + c.result.as_ref().map_or(0, String::len)
                    + c.error.as_ref().map_or(0, String::len)
            }
            Ingest::Status(s) => s.device.len(),
        };
        std::mem::size_of::<Ingest>() + heap
    }

    /// The device the item is about.
    pub fn device(&self) -> &str {
        match self {
            Ingest::Reading(r) => &r.device,
            Ingest::Rejected(r) => &r.device,
            Ingest::Hello(h) => &h.device,
            Ingest::CommandResult(c) => &c.device,
            Ingest::Status(s) => &s.device,
        }
    }
}

/// What became of one item of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored at this offset with this seq (given or assigned).
    Stored {
        /// Hub offset.
        offset: u64,
        /// Its numbering.
        seq: ReadingSeq,
    },
    /// Already stored (or rejected) earlier: not stored again.
    Duplicate {
        /// Seq.
        seq: u32,
    },
    /// A reading refused for its content ([`Ingest::Rejected`]): settled, not stored.
    Rejected {
        /// Seq.
        seq: u32,
    },
    /// A `Hello` was recorded.
    Registered,
    /// A command result: the command's new state, or `None` when it was ignored (unknown
    /// command, another device's, or already final).
    CommandResult {
        /// The command id.
        id: u64,
        /// Its state now, if the result changed it.
        state: Option<CommandState>,
    },
    /// A status was noted.
    Status,
    /// A reading refused because the store is full and its policy is `reject_new`.
    Refused,
}

/// The outcome of an item and, for a numbered reading, the cumulative ack of its run (boot) after
/// the batch: every seq of the run up to `ack.seq` is durable, rejected or given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What became of the item.
    pub outcome: Outcome,
    /// The ack of the item's run, when it is a numbered reading.
    pub ack: Option<RunAck>,
    /// The item made the store register its device.
    pub new_device: bool,
    /// Seqs its arrival made the store give up waiting for.
    pub given_up: u64,
}

impl From<&Reading> for crate::values::ReadingJson {
    fn from(r: &Reading) -> Self {
        crate::values::ReadingJson {
            boot: r.seq.boot(),
            device: r.device.clone(),
            hub_seq: r.seq.hub_seq(),
            metrics: crate::values::MetricValue::map(&r.metrics),
            offset: r.offset,
            seq: r.seq.device_seq(),
            ts: crate::clock::rfc3339(r.timestamp_ms),
        }
    }
}
