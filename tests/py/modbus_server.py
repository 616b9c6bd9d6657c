"""A Modbus server (pymodbus) with several units, as the hub's Modbus tests, the bench and the
README's tour poll it: over TCP (--tcp HOST:PORT) or RTU on a serial port (--rtu PATH).

Every unit holds the same map with values that depend on its unit id (u):

  input    0-1   f32  230 + u/2          (volts; big word order)
  input    2-3   f32  4.25 * u           (amps; little word order)
  input    4     u16  5000               (hertz * 100: scale 0.01)
  input    5     i16  -125 - u           (tenths of a degree: scale 0.1)
  input    10-13 u64  counts up by 1 every 100 ms (energy)
  holding  0-3   string "SDM630" (8 bytes, NUL padded)
  holding  10    i16  200 + u            (a setpoint in tenths: scale 0.1, writable)
  holding  11-12 u32  123456789 + u      (little word order, little byte order)
  holding  20-21 i32  -100000 * u
  holding  30-33 f64  1234.5678
  coil     0-2   true, false, true       (coil 2: a relay, writable)
  discrete 0     true

Addresses not listed answer exception 2 (illegal data address). An unknown unit gets no answer,
as on an RS-485 line.

Commands on stdin, one a line, acknowledged with "ok" on stdout:
  silent U       unit U stops answering
  exception U    unit U answers every request with exception 4 (server device failure)
  answer U       unit U answers again
"ready" is printed once the server listens.
"""

import argparse
import asyncio
import struct
import sys

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

TABLE_OF_FUNCTION = {1: "c", 5: "c", 15: "c", 2: "d", 4: "i"}
TABLE_OF_FUNCTION.update({f: "h" for f in (3, 6, 16, 22, 23)})


def words(fmt, value):
    """A value packed big-endian, as 16-bit registers, most significant first."""
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def unit_map(u):
    """The registers and bits of unit u, by table letter and address."""
    tables = {"h": {}, "i": {}, "c": {}, "d": {}}

    def put(table, address, registers):
        for i, r in enumerate(registers):
            tables[table][address + i] = r

    put("i", 0, words("f", 230 + u / 2))
    put("i", 2, list(reversed(words("f", 4.25 * u))))
    put("i", 4, [5000])
    put("i", 5, words("h", -125 - u))
    put("i", 10, words("Q", 0))
    put("h", 0, [int.from_bytes(b"SDM630\0\0"[i : i + 2], "big") for i in range(0, 8, 2)])
    put("h", 10, words("h", 200 + u))
    # Little word order, and the bytes of each word swapped.
    put("h", 11, [((w & 0xFF) << 8) | (w >> 8) for w in reversed(words("I", 123456789 + u))])
    put("h", 20, words("i", -100000 * u))
    put("h", 30, words("d", 1234.5678))
    put("c", 0, [True, False, True])
    put("d", 0, [True])
    return tables


class Units:
    """The units' data, and which are silent or failing: what the server's requests read."""

    def __init__(self, units):
        self.tables = {u: unit_map(u) for u in units}
        self.silent = set()
        self.failing = set()

    def _unit(self, device_id):
        if device_id not in self.tables or device_id in self.silent:
            raise NoSuchIdException(f"unit {device_id} does not answer")
        return self.tables[device_id]

    async def async_getValues(self, device_id, func_code, address, count=1):
        tables = self._unit(device_id)
        if device_id in self.failing:
            return ExcCodes.DEVICE_FAILURE
        table = tables[TABLE_OF_FUNCTION[func_code]]
        try:
            return [table[a] for a in range(address, address + count)]
        except KeyError:
            return ExcCodes.ILLEGAL_ADDRESS

    async def async_setValues(self, device_id, func_code, address, values):
        tables = self._unit(device_id)
        if device_id in self.failing:
            return ExcCodes.DEVICE_FAILURE
        table = tables[TABLE_OF_FUNCTION[func_code]]
        if any(a not in table for a in range(address, address + len(values))):
            return ExcCodes.ILLEGAL_ADDRESS
        for i, v in enumerate(values):
            table[address + i] = v
        return None

    def device_ids(self):
        return list(self.tables)

    async def count_energy(self):
        """Input registers 10-13 of every unit count up, so readings change."""
        n = 0
        while True:
            await asyncio.sleep(0.1)
            n += 1
            for tables in self.tables.values():
                for i, w in enumerate(words("Q", n)):
                    tables["i"][10 + i] = w


async def commands(units):
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        parts = line.split()
        if len(parts) != 2:
            continue
        what, unit = parts[0], int(parts[1])
        units.silent.discard(unit)
        units.failing.discard(unit)
        if what == "silent":
            units.silent.add(unit)
        elif what == "exception":
            units.failing.add(unit)
        print("ok", flush=True)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tcp", help="HOST:PORT to listen on")
    parser.add_argument("--rtu", help="serial port to serve")
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--units", default="1,2,3", help="unit ids: 1,2,3 or 1-100")
    args = parser.parse_args()
    if "-" in args.units:
        first, last = args.units.split("-")
        unit_ids = list(range(int(first), int(last) + 1))
    else:
        unit_ids = [int(u) for u in args.units.split(",")]
    units = Units(unit_ids)

    # The server is built with a stand-in context, then reads the units directly: requests call
    # the context's async_getValues / async_setValues.
    stand_in = ModbusServerContext(devices={0: ModbusDeviceContext(
        hr=ModbusSequentialDataBlock(1, [0]))}, single=False)
    if args.tcp:
        host, port = args.tcp.rsplit(":", 1)
        server = ModbusTcpServer(stand_in, address=(host, int(port)), ignore_missing_devices=True)
    else:
        server = ModbusSerialServer(
            stand_in,
            framer=FramerType.RTU,
            port=args.rtu,
            baudrate=args.baud,
            ignore_missing_devices=True,
        )
    server.context = units
    await server.serve_forever(background=True)
    print("ready", flush=True)
    await asyncio.gather(units.count_energy(), commands(units))


if __name__ == "__main__":
    asyncio.run(main())
