"""A Sparkplug B edge node with one device, driven line by line on stdin.

Payloads are built and read with mqtt-spb-wrapper's Sparkplug B protobuf (Eclipse Tahu's
generated sparkplug_b_pb2, its addMetric helper, its SpbPayloadParser); MQTT is its paho-mqtt 1.6.
The node is group GROUP, edge node EDGE, device "boiler". Its MQTT last will is its NDEATH.

Commands (one a line), each answered with one line on stdout:
  birth        NBIRTH (seq 0) then DBIRTH; metrics get aliases     -> "born"
  data N       NDATA and DDATA by alias only, values from N         -> "sent"
  gap          skip a sequence number (as if a message were lost)   -> "gapped"
  rebirth?     wait for an NCMD "Node Control/Rebirth" = true, then birth again -> "rebirth" | "none"
  dcmd?        wait for a DCMD for the device                       -> JSON {"name":..,"value":..} | "none"
  ddeath       DDEATH of the device                                 -> "dead"

Usage: spb_edge_node.py HOST PORT GROUP EDGE
"""

import json
import queue
import sys
import time

import paho.mqtt.client as mqtt
from mqtt_spb_wrapper.spb_protobuf import MetricDataType, Payload, addMetric
from mqtt_spb_wrapper import SpbPayloadParser

NS = "spBv1.0"
BD_SEQ = 3
WAIT_S = 20


def main():
    host, port, group, edge = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    device = "boiler"
    commands = queue.Queue()
    seq = [0]

    def next_seq():
        s = seq[0]
        seq[0] = (s + 1) % 256
        return s

    def payload(metrics, with_seq=True):
        p = Payload()
        p.timestamp = int(time.time() * 1000)
        if with_seq:
            p.seq = next_seq()
        for name, alias, datatype, value in metrics:
            addMetric(p, name, alias, datatype, value, int(time.time() * 1000))
        return bytes(p.SerializeToString())

    client = mqtt.Client(client_id=f"spb-{group}-{edge}", clean_session=True)
    death = payload([("bdSeq", None, MetricDataType.Int64, BD_SEQ)], with_seq=False)
    client.will_set(f"{NS}/{group}/NDEATH/{edge}", death, qos=1)

    def on_message(_client, _userdata, msg):
        parsed = SpbPayloadParser().parse_payload(msg.payload)
        commands.put((msg.topic, parsed))

    def on_connect(c, _userdata, _flags, rc):
        c.subscribe(f"{NS}/{group}/NCMD/{edge}", qos=1)
        c.subscribe(f"{NS}/{group}/DCMD/{edge}/{device}", qos=1)

    client.on_message = on_message
    client.on_connect = on_connect
    client.connect(host, port, keepalive=10)
    client.loop_start()

    def publish(topic, data):
        client.publish(topic, data, qos=1).wait_for_publish(timeout=WAIT_S)

    def birth():
        seq[0] = 0
        publish(
            f"{NS}/{group}/NBIRTH/{edge}",
            payload(
                [
                    ("bdSeq", None, MetricDataType.Int64, BD_SEQ),
                    ("Node Control/Rebirth", None, MetricDataType.Boolean, False),
                    ("Properties/Hardware Make", 1, MetricDataType.String, "acme"),
                    ("Inputs/Counter", 2, MetricDataType.Int32, -5),
                ]
            ),
        )
        publish(
            f"{NS}/{group}/DBIRTH/{edge}/{device}",
            payload(
                [
                    ("Inputs/Temp", 10, MetricDataType.Float, 20.5),
                    ("Outputs/LED", 11, MetricDataType.Boolean, False),
                ]
            ),
        )

    def wait_for(kind):
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                topic, parsed = commands.get(timeout=0.2)
            except queue.Empty:
                continue
            if f"/{kind}/" in topic and parsed:
                return parsed
        return None

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "birth":
            birth()
            print("born", flush=True)
        elif words[0] == "data":
            n = int(words[1])
            publish(
                f"{NS}/{group}/NDATA/{edge}",
                payload([(None, 2, MetricDataType.Int32, n)]),
            )
            publish(
                f"{NS}/{group}/DDATA/{edge}/{device}",
                payload([(None, 10, MetricDataType.Float, 20.0 + n)]),
            )
            print("sent", flush=True)
        elif words[0] == "gap":
            next_seq()
            print("gapped", flush=True)
        elif words[0] == "rebirth?":
            parsed = wait_for("NCMD")
            metrics = (parsed or {}).get("metrics", [])
            if any(m.get("name") == "Node Control/Rebirth" and m.get("value") for m in metrics):
                birth()
                print("rebirth", flush=True)
            else:
                print("none", flush=True)
        elif words[0] == "dcmd?":
            parsed = wait_for("DCMD")
            if parsed and parsed.get("metrics"):
                m = parsed["metrics"][0]
                print(json.dumps({"name": m.get("name"), "value": m.get("value")}), flush=True)
            else:
                print("none", flush=True)
        elif words[0] == "ddeath":
            publish(f"{NS}/{group}/DDEATH/{edge}/{device}", payload([]))
            print("dead", flush=True)


if __name__ == "__main__":
    main()
