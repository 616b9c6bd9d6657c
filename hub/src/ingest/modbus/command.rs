//! Writes to Modbus devices, as commands: `{"name":"write","args":{"point":..,"value":..}}`.
//!
//! [`ModbusDownlink`] is the handle the command dispatcher (through
//! [`crate::ingest::downlink::Transports`]) uses: it knows each device's register map, so a
//! command is checked when it is asked for (a point that is not writable is refused then, with
//! why), and it queues the write for the bus's task, which writes, reads the point back and
//! records the command's result with what the device now holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value as Json};
use tokio::sync::mpsc;

use super::points::{Encoded, encode};
use crate::config::{ModbusBusConfig, PointConfig};
use crate::ingest::Handed;
use crate::ingest::downlink::Refused;

/// Writes one bus's task may have queued; more wait in the dispatcher.
pub const MAX_QUEUED_WRITES: usize = 16;

/// A write, as the bus's task takes it.
#[derive(Debug)]
pub struct Write {
    /// The command's id.
    pub command_id: u64,
    /// The device.
    pub device: String,
    /// The point's index in the device's map.
    pub point: usize,
    /// What to put on the wire.
    pub encoded: Encoded,
}

/// Sends writes to the devices of one bus; never waits.
#[derive(Clone)]
pub struct ModbusDownlink {
    /// Each device's register map.
    devices: Arc<HashMap<String, Vec<PointConfig>>>,
    writes_tx: mpsc::Sender<Write>,
    /// Whether the bus is open now.
    connected: Arc<AtomicBool>,
}

impl ModbusDownlink {
    /// A handle for the devices of `config`, and the end the bus's task reads.
    pub(super) fn new(
        config: &ModbusBusConfig,
        connected: Arc<AtomicBool>,
    ) -> (ModbusDownlink, mpsc::Receiver<Write>) {
        let devices = config
            .devices
            .iter()
            .map(|d| (d.id.clone(), d.points.clone()))
            .collect();
        let (writes_tx, writes_rx) = mpsc::channel(MAX_QUEUED_WRITES);
        let downlink = ModbusDownlink {
            devices: Arc::new(devices),
            writes_tx,
            connected,
        };
        (downlink, writes_rx)
    }

    /// Whether `device` is on this bus.
    pub fn serves(&self, device: &str) -> bool {
        self.devices.contains_key(device)
    }

    /// Whether command `name` with `args` is a write `device` can take; why not.
    pub fn check(&self, device: &str, name: &str, args: &Map<String, Json>) -> Result<(), String> {
        self.write_for(device, name, args).map(drop)
    }

    /// Queues command `id` for the bus's task.
    pub fn send(
        &self,
        device: &str,
        id: u64,
        name: &str,
        args: &Map<String, Json>,
    ) -> Result<Handed, Refused> {
        let (point, encoded) = self.write_for(device, name, args).map_err(Refused::Never)?;
        // Not connected, or busy: the dispatcher tries again.
        if !self.connected.load(Ordering::Relaxed) {
            return Err(Refused::Later);
        }
        let write = Write {
            command_id: id,
            device: device.to_owned(),
            point,
            encoded,
        };
        self.writes_tx
            .try_send(write)
            .map(|()| Handed::Delivered)
            .map_err(|_| Refused::Later)
    }

    /// The point and the registers of a write command; why it is not one.
    fn write_for(
        &self,
        device: &str,
        name: &str,
        args: &Map<String, Json>,
    ) -> Result<(usize, Encoded), String> {
        let points = self
            .devices
            .get(device)
            .ok_or_else(|| format!("device {device:?} is not on this Modbus bus"))?;
        parse_write(device, points, name, args)
    }
}

/// The point a write command names (its index) and what to write; why the command is not a
/// write this map allows.
pub fn parse_write(
    device: &str,
    points: &[PointConfig],
    name: &str,
    args: &Map<String, Json>,
) -> Result<(usize, Encoded), String> {
    const USAGE: &str = r#"a Modbus device takes the command "write" with args {"point": "<name>", "value": <number or bool>}"#;
    if name != "write" {
        return Err(format!("{USAGE}, not {name:?}"));
    }
    if let Some(other) = args.keys().find(|k| *k != "point" && *k != "value") {
        return Err(format!("{USAGE}; {other:?} is not one of its arguments"));
    }
    let (Some(Json::String(wanted)), Some(value)) = (args.get("point"), args.get("value")) else {
        return Err(USAGE.to_owned());
    };
    let Some(index) = points.iter().position(|p| p.name == *wanted) else {
        let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
        return Err(format!(
            "device {device:?} has no point {wanted:?} (its points: {})",
            names.join(", ")
        ));
    };
    let point = &points[index];
    if !point.writable {
        return Err(format!(
            "point {wanted:?} of device {device:?} is not writable (only points marked writable = true in the configuration can be written)"
        ));
    }
    Ok((index, encode(point, value)?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{ByteOrder, PointType, Table};

    fn points() -> Vec<PointConfig> {
        let point = |name: &str, table, kind, writable| PointConfig {
            name: name.into(),
            table,
            address: 0,
            kind,
            length: None,
            word_order: ByteOrder::Big,
            byte_order: ByteOrder::Big,
            scale: Some(0.1),
            offset: None,
            unit: None,
            writable,
        };
        vec![
            point("voltage", Table::Input, PointType::F32, false),
            point("setpoint", Table::Holding, PointType::I16, true),
        ]
    }

    fn args(v: Json) -> Map<String, Json> {
        match v {
            Json::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_write_names_a_writable_point_and_a_value_that_fits() {
        let points = points();
        let ok = parse_write(
            "m",
            &points,
            "write",
            &args(json!({"point": "setpoint", "value": 21.5})),
        );
        assert_eq!(ok, Ok((1, Encoded::Registers(vec![215]))));

        let refused = |name: &str, a: Json| parse_write("m", &points, name, &args(a)).unwrap_err();
        let e = refused("write", json!({"point": "voltage", "value": 1}));
        assert!(
            e.contains("\"voltage\"") && e.contains("not writable"),
            "{e}"
        );
        let e = refused("write", json!({"point": "nope", "value": 1}));
        assert!(
            e.contains("no point \"nope\"") && e.contains("voltage, setpoint"),
            "{e}"
        );
        let e = refused("reboot", json!({}));
        assert!(e.contains("\"write\""), "{e}");
        let e = refused("write", json!({"point": "setpoint"}));
        assert!(e.contains("\"value\""), "{e}");
        let e = refused(
            "write",
            json!({"point": "setpoint", "value": 1, "force": true}),
        );
        assert!(e.contains("\"force\""), "{e}");
        let e = refused("write", json!({"point": "setpoint", "value": 1e9}));
        assert!(e.contains("does not fit"), "{e}");
    }
}
