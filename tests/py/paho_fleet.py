"""A fleet of stock MQTT devices (paho-mqtt) with persistent sessions, driven from one thread.

Each device is a paho client with client id PREFIX0000.. and `clean_session = False`, all served
by one select loop (paho's external-loop API), so a thousand of them cost one process.

  enrol HOST PORT PREFIX COUNT [DEADLINE_S]
      Each device connects, subscribes to devices/<id>/commands at QoS 1, publishes one reading
      at QoS 1 (so the hub knows it), waits for the SUBACK and the PUBACK, and disconnects.
      Prints {"enrolled": n}; exits 0 when all were.

  serve HOST PORT PREFIX COUNT [DEADLINE_S]
      Each device connects again with its persistent session, subscribes again when the broker
      says it kept no session (as MQTT asks of a client), and answers every command it gets with
      {"id":..,"ok":true,"result":{"name":..}} on devices/<id>/command-results at QoS 1. Ends when
      every device got a command and every answer was acknowledged. Prints {"devices_served": n,
      "commands": n, "repeated": n, "sessions_present": n}; exits 0 when every device was served.
"""

import json
import selectors
import sys
import time

import paho.mqtt.client as mqtt


class Device:
    def __init__(self, host, port, device_id, mode):
        self.id = device_id
        self.mode = mode
        self.commands = {}  # command id -> times received
        self.waiting = set()  # mids not yet acknowledged
        self.subscribed = False
        self.session_present = None
        self.done = False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=device_id,
            clean_session=False,
        )
        self.client.on_connect = self.on_connect
        self.client.on_subscribe = self.on_subscribe
        self.client.on_publish = self.on_publish
        self.client.on_message = self.on_message
        self.client.connect(host, port, keepalive=60)

    def on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            return
        self.session_present = flags.session_present
        if self.mode == "enrol" or not flags.session_present:
            client.subscribe(f"devices/{self.id}/commands", qos=1)
        else:
            self.subscribed = True
        if self.mode == "enrol":
            info = client.publish(
                f"devices/{self.id}/telemetry", json.dumps({"metrics": {"v": 1}}), qos=1
            )
            self.waiting.add(info.mid)

    def on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subscribed = all(not rc.is_failure for rc in reason_codes)
        self.check()

    def on_publish(self, client, userdata, mid, reason_code, properties):
        self.waiting.discard(mid)
        self.check()

    def on_message(self, client, userdata, message):
        try:
            command = json.loads(message.payload)
            command_id = command["id"]
        except (ValueError, KeyError, TypeError):
            return
        self.commands[command_id] = self.commands.get(command_id, 0) + 1
        answer = {"id": command_id, "ok": True, "result": {"name": command.get("name")}}
        info = client.publish(f"devices/{self.id}/command-results", json.dumps(answer), qos=1)
        self.waiting.add(info.mid)

    def check(self):
        if not self.subscribed or self.waiting:
            return
        if self.mode == "enrol" or self.commands:
            self.done = True


def main():
    mode, host, port, prefix, count = sys.argv[1:6]
    port, count = int(port), int(count)
    deadline = time.monotonic() + (float(sys.argv[6]) if len(sys.argv) > 6 else 120.0)
    devices = [Device(host, port, f"{prefix}{i:04}", mode) for i in range(count)]
    selector = selectors.DefaultSelector()
    for device in devices:
        selector.register(device.client.socket(), selectors.EVENT_READ, device)
    last_misc = 0.0
    while time.monotonic() < deadline and not all(d.done for d in devices):
        for device in devices:
            if device.client.want_write():
                device.client.loop_write()
        for key, _ in selector.select(timeout=0.05):
            key.data.client.loop_read()
        if time.monotonic() - last_misc >= 1.0:
            last_misc = time.monotonic()
            for device in devices:
                device.client.loop_misc()
    served = [d for d in devices if d.done]
    for device in devices:
        device.client.disconnect()
        if device.client.want_write():
            device.client.loop_write()
    if mode == "enrol":
        print(json.dumps({"enrolled": len(served)}))
    else:
        print(
            json.dumps(
                {
                    "devices_served": len(served),
                    "commands": sum(len(d.commands) for d in devices),
                    "repeated": sum(n - 1 for d in devices for n in d.commands.values()),
                    "sessions_present": sum(1 for d in devices if d.session_present),
                }
            )
        )
    sys.exit(0 if len(served) == count else 1)


if __name__ == "__main__":
    main()
