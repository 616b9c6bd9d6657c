"""A stock MQTT device: paho-mqtt publishing numbered readings, trusting only the PUBACK.

Publishes `{"seq":n,"metrics":{"v":n}}` for n in 0..count on devices/<device>/telemetry at the
given QoS, with at most `window` unacknowledged at a time. A reading counts as acknowledged when
paho reports it published (PUBACK for QoS 1, PUBCOMP for QoS 2, after the PUBREC). Whenever the
connection drops (the broker or hub killed), it reconnects and sends again only the readings
that were never acknowledged. Prints one JSON line at the end: {"acked": n, "sent": n,
"connections": n} and exits 0 when every reading was acknowledged before the deadline, else 1.

With PAHO_FORM=tasmota in the environment it publishes as a Tasmota device instead: reading n
is `{"Time":"...","COUNTER":{"C1":n}}` on tele/<device>/SENSOR (no seq: the hub numbers it).

Usage: paho_publisher.py HOST PORT DEVICE COUNT QOS [WINDOW] [DEADLINE_S] [MQTT_VERSION: 3 or 5]
"""

import os

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main():
    host, port, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    count, qos = int(sys.argv[4]), int(sys.argv[5])
    window = int(sys.argv[6]) if len(sys.argv) > 6 else 50
    deadline = time.monotonic() + (float(sys.argv[7]) if len(sys.argv) > 7 else 120.0)
    v5 = len(sys.argv) > 8 and sys.argv[8] == "5"
    tasmota = os.environ.get("PAHO_FORM") == "tasmota"
    topic = f"tele/{device}/SENSOR" if tasmota else f"devices/{device}/telemetry"
    acked = set()
    lock = threading.Condition()
    sent = 0
    connections = 0

    while len(acked) < count and time.monotonic() < deadline:
        inflight = {}  # mid -> seq
        # "up": the CONNACK came; "lost": this connection dropped (paho may connect again by
        # itself, but then its unacknowledged messages are this device's to send again).
        state = {"up": None, "lost": False}

        def on_connect(client, userdata, flags, reason_code, properties):
            with lock:
                state["up"] = not reason_code.is_failure
                lock.notify_all()

        def on_disconnect(client, userdata, flags, reason_code, properties):
            with lock:
                state["up"] = False
                state["lost"] = True
                lock.notify_all()

        early = set()  # mids acknowledged before publish() returned them

        def on_publish(client, userdata, mid, reason_code, properties):
            with lock:
                seq = inflight.pop(mid, None)
                if seq is None:
                    early.add(mid)
                else:
                    acked.add(seq)
                lock.notify_all()

        if v5:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=f"paho-{device}",
                protocol=mqtt.MQTTv5,
            )
        else:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=f"paho-{device}",
                clean_session=True,
                protocol=mqtt.MQTTv311,
            )
        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        # paho must not resend on its own: this device decides what to send again.
        client.reconnect_delay_set(min_delay=1, max_delay=1)
        try:
            if v5:
                client.connect(host, port, keepalive=10, clean_start=True)
            else:
                client.connect(host, port, keepalive=10)
        except OSError:
            time.sleep(0.05)
            continue
        client.loop_start()
        with lock:
            lock.wait_for(lambda: state["up"] is not None, timeout=5)
        if not state["up"]:
            client.loop_stop()
            client.disconnect()
            time.sleep(0.05)
            continue
        connections += 1
        for seq in range(count):
            with lock:
                if seq in acked:
                    continue
                lock.wait_for(
                    lambda: len(inflight) < window or state["lost"], timeout=10
                )
                if state["lost"] or time.monotonic() > deadline:
                    break
            if tasmota:
                payload = json.dumps(
                    {"Time": "2026-01-01T00:00:00", "COUNTER": {"C1": seq}}
                )
            else:
                payload = json.dumps({"seq": seq, "metrics": {"v": seq}})
            # Not under the lock: paho's network thread holds its own lock while it calls
            # on_publish, which takes ours.
            info = client.publish(topic, payload, qos=qos)
            with lock:
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    state["lost"] = True
                    break
                sent += 1
                if info.mid in early:
                    early.discard(info.mid)
                    acked.add(seq)
                else:
                    inflight[info.mid] = seq
        # Wait for the last acknowledgements, or for the connection to drop.
        with lock:
            lock.wait_for(
                lambda: not inflight or state["lost"],
                timeout=max(0.0, min(10.0, deadline - time.monotonic())),
            )
        client.loop_stop()
        try:
            client.disconnect()
        except Exception:
            pass

    print(json.dumps({"acked": len(acked), "sent": sent, "connections": connections}))
    sys.exit(0 if len(acked) == count else 1)


if __name__ == "__main__":
    main()
