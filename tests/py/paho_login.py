"""A device that logs in with a user name and password over TLS (no client certificate): paho-mqtt.

Prints JSON lines:
- {"connack": RC, "reason": "..."} once the CONNACK comes (RC: the MQTT 3.1.1 return code, or the
  MQTT 5 reason code), or {"connack": null} when none came;
- with MODE "hold": then {"disconnected": true, "after_s": S} when the hub closes the connection
  (or {"disconnected": false} after HOLD_S seconds);
- with MODE "publish": a reading {"metrics":{"v":1}} (no seq: the hub numbers it) on
  devices/TOPIC_DEVICE/telemetry at QoS 1, then {"acked": true|false}.

Exits 0 whatever the outcome: the test reads the lines.

Usage: paho_login.py HOST PORT CAFILE USER PASSWORD CLIENT_ID MODE [TOPIC_DEVICE] [MQTT_VERSION 3|5]
Environment: PAHO_BIND (source address, e.g. 127.0.0.2), PAHO_HOLD_S (default 30).
"""

import json
import os
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main():
    host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    user, password, client_id, mode = sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
    topic_device = sys.argv[8] if len(sys.argv) > 8 else user
    v5 = len(sys.argv) > 9 and sys.argv[9] == "5"
    hold_s = float(os.environ.get("PAHO_HOLD_S", "30"))
    lock = threading.Condition()
    state = {"connack": None, "reason": None, "down": False, "acked": False}

    def on_connect(client, userdata, flags, reason_code, properties):
        with lock:
            state["connack"] = reason_code.value
            state["reason"] = str(reason_code)
            lock.notify_all()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        with lock:
            state["down"] = True
            lock.notify_all()

    def on_publish(client, userdata, mid, reason_code, properties):
        with lock:
            state["acked"] = True
            lock.notify_all()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    client.username_pw_set(user, password)
    client.tls_set(ca_certs=cafile, cert_reqs=ssl.CERT_REQUIRED)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    bind = os.environ.get("PAHO_BIND", "")
    try:
        client.connect(host, port, keepalive=60, bind_address=bind)
    except Exception as e:  # a refused TLS handshake or socket
        print(json.dumps({"connack": None, "error": str(e)}), flush=True)
        return
    client.loop_start()
    with lock:
        lock.wait_for(lambda: state["connack"] is not None or state["down"], timeout=20)
    print(json.dumps({"connack": state["connack"], "reason": state["reason"]}), flush=True)
    if state["connack"] == 0 and mode == "hold":
        started = time.monotonic()
        with lock:
            lock.wait_for(lambda: state["down"], timeout=hold_s)
        print(
            json.dumps(
                {"disconnected": state["down"], "after_s": round(time.monotonic() - started, 3)}
            ),
            flush=True,
        )
    elif state["connack"] == 0 and mode == "publish":
        payload = json.dumps({"metrics": {"v": 1}})
        client.publish(f"devices/{topic_device}/telemetry", payload, qos=1)
        with lock:
            lock.wait_for(lambda: state["acked"] or state["down"], timeout=20)
        print(json.dumps({"acked": state["acked"]}), flush=True)
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
