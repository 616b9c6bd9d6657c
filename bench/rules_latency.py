#!/usr/bin/env python3
"""Threshold-to-webhook latency of the hub's rules: publishes readings that cross a rule's
threshold (up, then down again) to the hub's MQTT endpoint, and times each until the webhook
receiver (served here) gets its transition. Prints one JSON line: count, p50_ms, p99_ms, max_ms.

    bench/rules_latency.py MQTT_PORT WEBHOOK_PORT [CROSSINGS]

The hub must run with a rule like bench/run's `latency` rule (device `lat-1`, metric `temp`,
above 50, a webhook to http://127.0.0.1:WEBHOOK_PORT/hook). QoS 1 with the hub's PUBACK, so the
time starts when the reading leaves here and ends when the POST arrives.
"""
import json
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

arrived = {}
cond = threading.Condition()


class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        at = time.monotonic()
        key = self.headers.get("Idempotency-Key", "")
        with cond:
            arrived.setdefault(key, (at, json.loads(body)))
            cond.notify_all()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def encode_len(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def mqtt_connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    var = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60)
    payload = utf8("rules-latency")
    s.sendall(bytes([0x10]) + encode_len(len(var) + len(payload)) + var + payload)
    s.recv(4)  # CONNACK
    return s


def publish(s, topic, payload, pid):
    var = utf8(topic) + struct.pack("!H", pid)
    data = payload.encode()
    s.sendall(bytes([0x32]) + encode_len(len(var) + len(data)) + var + data)
    s.recv(4)  # PUBACK: the reading is durable


def main():
    mqtt_port, hook_port = int(sys.argv[1]), int(sys.argv[2])
    crossings = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    server = ThreadingHTTPServer(("127.0.0.1", hook_port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    s = mqtt_connect(mqtt_port)
    hub = None
    latencies = []
    for i in range(crossings):
        value = 100.0 if i % 2 == 0 else 0.0
        sent = time.monotonic()
        publish(s, "devices/lat-1/telemetry", json.dumps({"temp": value}), i + 1)
        with cond:
            # Keys end in the alert's transition number; the hub's id is read from the first.
            def got():
                return [k for k in arrived if k.endswith(f".latency.lat-1.{i + 1}")]
            if not cond.wait_for(got, timeout=30):
                print(json.dumps({"error": f"no webhook for crossing {i + 1}"}))
                sys.exit(1)
            at, body = arrived[got()[0]]
            hub = body.get("hub")
        latencies.append((at - sent) * 1000)
        time.sleep(0.02)
    latencies.sort()

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))], 2)

    print(json.dumps({"count": len(latencies), "p50_ms": pct(50), "p99_ms": pct(99),
                      "max_ms": round(latencies[-1], 2), "hub": hub}))
    server.shutdown()


if __name__ == "__main__":
    main()
