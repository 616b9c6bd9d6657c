//! `[[modbus]]`: Modbus buses (an RS-485 line or a TCP endpoint), the devices on each, and each
//! device's register map; and what is checked of them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// Registers one read request may ask for (function codes 3 and 4).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Coils or discrete inputs one read request may ask for (function codes 1 and 2).
pub const MAX_READ_BITS: u16 = 2000;
/// Longest string point, in bytes (it must fit one read request).
pub const MAX_STRING_BYTES: u16 = 2 * MAX_READ_REGISTERS;

/// Points of one device: a poll is one reading, which holds at most this many metrics (as a JSON
/// telemetry message does).
pub const MAX_POINTS: usize = device_protocol::json::MAX_JSON_METRICS;

/// `[[modbus]]`: one bus and the devices on it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusBusConfig {
    /// The bus's name, in logs and metrics: 1 to 64 of `A-Z a-z 0-9 . _ -`, unique.
    pub name: String,
    /// `rtu` (a serial line) or `tcp`.
    pub transport: ModbusTransport,
    /// rtu: the serial port, e.g. `/dev/ttyUSB0`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// rtu: line speed.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// rtu: `none`, `even` or `odd`.
    #[serde(default)]
    pub parity: ModbusParity,
    /// rtu: 7 or 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// rtu: 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// tcp: `host:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// How long one request waits for its answer.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// The devices on the bus (`[[modbus.devices]]`).
    #[serde(default)]
    pub devices: Vec<ModbusDeviceConfig>,
}

/// How a bus is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModbusTransport {
    /// Modbus RTU on a serial line (RS-485): one request at a time, frames apart by a gap.
    Rtu,
    /// Modbus TCP.
    Tcp,
}

/// Parity of an RTU line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModbusParity {
    /// No parity bit.
    #[default]
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// `[[modbus.devices]]`: one unit on a bus, polled as one hub device.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDeviceConfig {
    /// The hub's device id.
    pub id: String,
    /// The Modbus unit (slave) id: 1 to 247 on a line; 0 to 255 over TCP.
    pub unit: u8,
    /// How often it is polled; each poll is one reading.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Its register map.
    pub points: Vec<PointConfig>,
}

/// One point of a register map: a metric of the device's readings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// The metric name.
    pub name: String,
    /// Which table it is in.
    pub table: Table,
    /// Its protocol address (0-based) in that table.
    pub address: u16,
    /// How its registers are read.
    #[serde(rename = "type")]
    pub kind: PointType,
    /// string: its length in bytes (two a register).
    #[serde(default)]
    pub length: Option<u16>,
    /// Order of the registers of a value wider than one: `big` (most significant first, the
    /// Modbus convention) or `little`.
    #[serde(default)]
    pub word_order: ByteOrder,
    /// Order of the two bytes within each register: `big` (the Modbus convention) or `little`.
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// The value is the raw number times `scale`, plus `offset`.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Added after `scale`.
    #[serde(default)]
    pub offset: Option<f64>,
    /// Engineering unit, for the reader of the configuration (e.g. `V`); not stored.
    #[serde(default)]
    pub unit: Option<String>,
    /// Whether the `write` command may set it (holding registers and coils only).
    #[serde(default)]
    pub writable: bool,
}

/// The four Modbus tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Holding registers (read 3, write 6 and 16).
    Holding,
    /// Input registers (read 4).
    Input,
    /// Coils (read 1, write 5).
    Coil,
    /// Discrete inputs (read 2).
    Discrete,
}

impl Table {
    /// Whether it holds bits (coils, discrete inputs) rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// Most items one read request may ask for.
    pub fn max_read(self) -> u16 {
        if self.is_bits() {
            MAX_READ_BITS
        } else {
            MAX_READ_REGISTERS
        }
    }

    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Table::Holding => "holding",
            Table::Input => "input",
            Table::Coil => "coil",
            Table::Discrete => "discrete",
        }
    }
}

/// How a point's registers (or bit) become a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PointType {
    /// One register, unsigned.
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, two's complement.
    I32,
    /// Four registers, unsigned.
    U64,
    /// Four registers, two's complement.
    I64,
    /// Two registers, IEEE 754 single.
    F32,
    /// Four registers, IEEE 754 double.
    F64,
    /// A coil or discrete input.
    Bool,
    /// `length` bytes of text, two a register, NULs at the end trimmed.
    String,
}

impl PointType {
    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            PointType::U16 => "u16",
            PointType::I16 => "i16",
            PointType::U32 => "u32",
            PointType::I32 => "i32",
            PointType::U64 => "u64",
            PointType::I64 => "i64",
            PointType::F32 => "f32",
            PointType::F64 => "f64",
            PointType::Bool => "bool",
            PointType::String => "string",
        }
    }

    /// Whether the value is a number that `scale` and `offset` apply to.
    pub fn is_number(self) -> bool {
        !matches!(self, PointType::Bool | PointType::String)
    }
}

impl PointConfig {
    /// How many registers (or bits) the point spans.
    pub fn span(&self) -> u16 {
        match self.kind {
            PointType::Bool | PointType::U16 | PointType::I16 => 1,
            PointType::U32 | PointType::I32 | PointType::F32 => 2,
            PointType::U64 | PointType::I64 | PointType::F64 => 4,
            PointType::String => self.length.unwrap_or(0).div_ceil(2),
        }
    }
}

/// Byte or word order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ByteOrder {
    /// Most significant first.
    #[default]
    Big,
    /// Least significant first.
    Little,
}

fn default_baud() -> u32 {
    9600
}

fn default_data_bits() -> u8 {
    8
}

fn default_stop_bits() -> u8 {
    1
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}

fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

/// Adds every problem of the `[[modbus]]` tables to `problems`. Device ids must be unique across
/// buses: a poll of either would be stored as the same device.
pub(super) fn problems(buses: &[ModbusBusConfig], problems: &mut Vec<String>) {
    let mut ids: Vec<&str> = Vec::new();
    for (b, bus) in buses.iter().enumerate() {
        let at = format!("modbus[{b}]");
        if !device_protocol::is_valid_id(&bus.name) {
            problems.push(format!("{at}.name: 1 to 64 of A-Z a-z 0-9 . _ -"));
        } else if buses[..b].iter().any(|other| other.name == bus.name) {
            problems.push(format!("{at}.name: {:?} is used twice", bus.name));
        }
        bus_problems(bus, &at, problems);
        if bus.timeout.0 < Duration::from_millis(10) || bus.timeout.0 > Duration::from_secs(60) {
            problems.push(format!("{at}.timeout: 10ms to 60s"));
        }
        if bus.devices.is_empty() {
            problems.push(format!(
                "{at}.devices: a bus needs at least one [[modbus.devices]]"
            ));
        }
        for (d, device) in bus.devices.iter().enumerate() {
            let at = format!("{at}.devices[{d}]");
            if !device_protocol::is_valid_id(&device.id) {
                problems.push(format!(
                    "{at}.id: {:?} is not 1 to 64 of A-Z a-z 0-9 . _ -",
                    device.id
                ));
            } else if ids.contains(&device.id.as_str()) {
                problems.push(format!("{at}.id: {:?} is used twice", device.id));
            }
            ids.push(device.id.as_str());
            if bus.transport == ModbusTransport::Rtu && !(1..=247).contains(&device.unit) {
                problems.push(format!(
                    "{at}.unit: {} is not 1 to 247 (0 is broadcast, which no unit answers)",
                    device.unit
                ));
            }
            if device.interval.0 < Duration::from_millis(10) {
                problems.push(format!("{at}.interval: at least 10ms"));
            }
            if !(1..=MAX_POINTS).contains(&device.points.len()) {
                problems.push(format!("{at}.points: 1 to {MAX_POINTS} points"));
            }
            for (p, point) in device.points.iter().enumerate() {
                let at = format!("{at}.points[{p}]");
                if device.points[..p].iter().any(|o| o.name == point.name) {
                    problems.push(format!("{at}.name: {:?} is used twice", point.name));
                }
                point_problems(point, &at, problems);
            }
        }
    }
}

/// What is wrong with a bus's transport settings.
fn bus_problems(bus: &ModbusBusConfig, at: &str, problems: &mut Vec<String>) {
    match bus.transport {
        ModbusTransport::Rtu => {
            if bus.path.as_ref().is_none_or(|p| p.as_os_str().is_empty()) {
                problems.push(format!(
                    "{at}.path: an rtu bus needs the serial port, e.g. \"/dev/ttyUSB0\""
                ));
            }
            if bus.address.is_some() {
                problems.push(format!("{at}.address: only for a tcp bus (rtu uses path)"));
            }
            if !(300..=4_000_000).contains(&bus.baud) {
                problems.push(format!("{at}.baud: {} is not 300 to 4000000", bus.baud));
            }
            if !(7..=8).contains(&bus.data_bits) {
                problems.push(format!("{at}.data_bits: 7 or 8"));
            }
            if !(1..=2).contains(&bus.stop_bits) {
                problems.push(format!("{at}.stop_bits: 1 or 2"));
            }
        }
        ModbusTransport::Tcp => {
            match &bus.address {
                None => problems.push(format!(
                    "{at}.address: a tcp bus needs host:port, e.g. \"192.168.1.50:502\""
                )),
                Some(address) => {
                    if !address.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                    }) {
                        problems.push(format!("{at}.address: {address:?} is not host:port"));
                    }
                }
            }
            if bus.path.is_some() {
                problems.push(format!("{at}.path: only for an rtu bus (tcp uses address)"));
            }
        }
    }
}

/// What is wrong with one point.
fn point_problems(point: &PointConfig, at: &str, problems: &mut Vec<String>) {
    if !device_protocol::is_valid_id(&point.name) {
        problems.push(format!(
            "{at}.name: {:?} is not 1 to 64 of A-Z a-z 0-9 . _ -",
            point.name
        ));
    }
    let bits = point.table.is_bits();
    if bits != (point.kind == PointType::Bool) {
        problems.push(format!(
            "{at}.type: a {} point cannot be {} (coils and discrete inputs are bool; registers are numbers or strings)",
            point.table.name(),
            point.kind.name()
        ));
    }
    match (point.kind, point.length) {
        (PointType::String, None) => {
            problems.push(format!("{at}.length: a string needs its length in bytes"))
        }
        (PointType::String, Some(n)) if !(1..=MAX_STRING_BYTES).contains(&n) => {
            problems.push(format!("{at}.length: 1 to {MAX_STRING_BYTES} bytes"))
        }
        (PointType::String, Some(_)) => {}
        (_, Some(_)) => problems.push(format!("{at}.length: only for a string")),
        (_, None) => {}
    }
    if u32::from(point.address) + u32::from(point.span()) > 65_536 {
        problems.push(format!(
            "{at}.address: {} plus its {} registers passes 65535",
            point.address,
            point.span()
        ));
    }
    if !point.kind.is_number() && (point.scale.is_some() || point.offset.is_some()) {
        problems.push(format!(
            "{at}: scale and offset apply to numbers, not to a {}",
            point.kind.name()
        ));
    }
    if let Some(scale) = point.scale
        && (scale == 0.0 || !scale.is_finite())
    {
        problems.push(format!("{at}.scale: a finite number other than 0"));
    }
    if point.offset.is_some_and(|o| !o.is_finite()) {
        problems.push(format!("{at}.offset: a finite number"));
    }
    if point.writable && !matches!(point.table, Table::Holding | Table::Coil) {
        problems.push(format!(
            "{at}.writable: only holding registers and coils can be written, not a {} point",
            point.table.name()
        ));
    }
    if point.writable && point.kind == PointType::String {
        problems.push(format!("{at}.writable: string points are read-only"));
    }
}
