"""Stands in for Home Assistant on a broker: reads what the hub publishes for MQTT discovery and
checks it against Home Assistant's documented discovery schema. Home Assistant itself cannot run
in the test environment, so the checks below are written from its documentation (the MQTT
integration page, sections "MQTT Discovery", "Discovery topic", "Discovery messages",
"Using availability topics", "Birth and last will messages", and the MQTT Sensor and MQTT Binary
sensor pages):

- the config topic is `<discovery_prefix>/<component>/[<node_id>/]<object_id>/config`, where
  node_id and object_id consist only of `[a-zA-Z0-9_-]`, and component is a supported platform
  (here `sensor` or `binary_sensor`);
- config messages are retained, so Home Assistant finds them after it restarts;
- the payload is a JSON object of the platform's configuration variables: `state_topic`
  (required for both platforms, a topic to subscribe to, so without `+` or `#`), `unique_id`,
  `name`, `device` (a mapping that needs `identifiers` or `connections`; `name`, `model`,
  `sw_version`, ... strings), `origin` (a mapping whose `name` is required), `availability`
  (a list of mappings with a required `topic`) or `availability_topic`, never both,
  `availability_mode` one of `all`, `any`, `latest`; `state_class` (sensor only) one of
  `measurement`, `measurement_angle`, `total`, `total_increasing`; `payload_on`/`payload_off`
  (binary sensor only); no key outside the documented ones;
- availability payloads are `online` / `offline` (the defaults of `payload_available` and
  `payload_not_available`); a binary sensor's state is its `payload_on` or `payload_off`; a
  sensor with a `state_class` must have a numeric state; a state is at most 255 characters;
- Home Assistant's birth message is `online` on `<discovery_prefix>/status`; on it, discovery
  configs are to be published again.

Usage:
  ha_discovery_check.py check HOST PORT DEVICE [METRIC=STATE ...] [--availability online|offline]
      Connects afresh (so it sees only retained messages), waits until every named metric of
      DEVICE has a retained config and the expected state (and availability), checks every
      config against the schema, prints one JSON line, exits 0 when all holds, else 1.
  ha_discovery_check.py birth HOST PORT DEVICE METRIC...
      Subscribes, lets the retained messages pass, publishes the birth message, and waits for
      the named metrics' configs to be published again (live, not retained). Exits 0 or 1.
"""

import json
import re
import sys
import threading
import time

import paho.mqtt.client as mqtt

DISCOVERY_PREFIX = "homeassistant"
DEADLINE_S = 30.0
ID = re.compile(r"^[a-zA-Z0-9_-]+$")
COMPONENTS = {"sensor", "binary_sensor"}
COMMON_KEYS = {
    "name", "unique_id", "state_topic", "availability", "availability_topic",
    "availability_mode", "payload_available", "payload_not_available", "device", "origin",
    "value_template", "qos", "encoding", "icon", "enabled_by_default", "entity_category",
    "expire_after", "force_update", "json_attributes_topic", "json_attributes_template",
    "device_class", "object_id", "default_entity_id",
}
SENSOR_KEYS = {"unit_of_measurement", "state_class", "suggested_display_precision",
               "last_reset_value_template", "options"}
BINARY_KEYS = {"payload_on", "payload_off", "off_delay"}
DEVICE_KEYS = {"identifiers", "connections", "name", "model", "model_id", "manufacturer",
               "sw_version", "hw_version", "serial_number", "suggested_area", "via_device",
               "configuration_url"}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}


def slug(name):
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)


def schema_problems(topic, payload):
    """What in one config message goes against the documented schema."""
    problems = []
    levels = topic.split("/")
    if len(levels) not in (4, 5) or levels[0] != DISCOVERY_PREFIX or levels[-1] != "config":
        return [f"{topic}: not <prefix>/<component>/[<node_id>/]<object_id>/config"]
    component = levels[1]
    if component not in COMPONENTS:
        problems.append(f"{topic}: component {component!r} is not sensor or binary_sensor")
    for level in levels[2:-1]:
        if not ID.match(level):
            problems.append(f"{topic}: id {level!r} has characters outside [a-zA-Z0-9_-]")
    try:
        config = json.loads(payload)
    except ValueError as e:
        return problems + [f"{topic}: payload is not JSON: {e}"]
    if not isinstance(config, dict):
        return problems + [f"{topic}: payload is not a JSON object"]
    allowed = COMMON_KEYS | (SENSOR_KEYS if component == "sensor" else BINARY_KEYS)
    for key in config:
        if key not in allowed:
            problems.append(f"{topic}: key {key!r} is not documented for {component}")
    state_topic = config.get("state_topic")
    if not isinstance(state_topic, str) or not state_topic or "+" in state_topic or "#" in state_topic:
        problems.append(f"{topic}: state_topic missing or not a topic: {state_topic!r}")
    for key in ("unique_id", "name"):
        if not isinstance(config.get(key), str) or not config.get(key):
            problems.append(f"{topic}: {key} missing or not a string")
    if "availability" in config and "availability_topic" in config:
        problems.append(f"{topic}: availability and availability_topic must not be used together")
    availability = config.get("availability", [])
    if not isinstance(availability, list) or not all(
            isinstance(a, dict) and isinstance(a.get("topic"), str) for a in availability):
        problems.append(f"{topic}: availability must be a list of mappings with a topic")
    if config.get("availability_mode", "latest") not in ("all", "any", "latest"):
        problems.append(f"{topic}: availability_mode {config['availability_mode']!r}")
    device = config.get("device")
    if not isinstance(device, dict):
        problems.append(f"{topic}: device block missing")
    else:
        if not device.get("identifiers") and not device.get("connections"):
            problems.append(f"{topic}: device needs identifiers or connections")
        for key, value in device.items():
            if key not in DEVICE_KEYS:
                problems.append(f"{topic}: device key {key!r} is not documented")
            elif key in ("name", "model", "sw_version") and not isinstance(value, str):
                problems.append(f"{topic}: device {key} is not a string")
    origin = config.get("origin")
    if origin is not None and (not isinstance(origin, dict) or not origin.get("name")):
        problems.append(f"{topic}: origin needs a name")
    if "state_class" in config and config["state_class"] not in STATE_CLASSES:
        problems.append(f"{topic}: state_class {config['state_class']!r}")
    return problems


class Listener:
    """Every message on the broker, newest per topic, with its retain flag."""

    def __init__(self, host, port):
        self.lock = threading.Condition()
        self.messages = {}  # topic -> (payload bytes, retained)
        self.live_configs = set()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ha-stand-in")
        self.client.on_message = self.on_message
        self.client.connect(host, port)
        self.client.subscribe("#", qos=1)
        self.client.loop_start()

    def on_message(self, client, userdata, message):
        with self.lock:
            self.messages[message.topic] = (bytes(message.payload), bool(message.retain))
            if not message.retain and message.topic.endswith("/config"):
                self.live_configs.add(message.topic)
            self.lock.notify_all()

    def wait(self, done):
        deadline = time.monotonic() + DEADLINE_S
        with self.lock:
            while not done() and time.monotonic() < deadline:
                self.lock.wait(0.1)
            return done()


def config_topic(device, metric, component):
    return f"{DISCOVERY_PREFIX}/{component}/{slug(device)}/{slug(metric)}/config"


def check(host, port, device, expected, availability):
    problems = []

    def found(listener):
        """The expected entities' configs, states and availability, or None."""
        seen = {}
        for metric, state in expected.items():
            configs = [config_topic(device, metric, c) for c in COMPONENTS]
            present = [t for t in configs if listener.messages.get(t, (b"",))[0]]
            if len(present) != 1:
                return None
            config = json.loads(listener.messages[present[0]][0])
            got = listener.messages.get(config.get("state_topic"), (b"", False))
            if got[0].decode() != state:
                return None
            seen[metric] = (present[0], config, got)
        if availability is not None:
            for metric, (_, config, _) in seen.items():
                topics = [a["topic"] for a in config.get("availability", [])]
                device_topic = topics[-1] if topics else None
                if listener.messages.get(device_topic, (b"",))[0].decode() != availability:
                    return None
        return seen

    # Until it holds, messages may still come live (the hub publishing them now); once it does,
    # a second, fresh client must find the same among the retained messages alone.
    for attempt in ("live", "retained"):
        listener = Listener(host, port)
        ok = listener.wait(lambda: found(listener) is not None)
        time.sleep(0.3)  # let the rest of the retained messages come
        with listener.lock:
            seen = found(listener)
            messages = dict(listener.messages)
        listener.client.loop_stop()
        listener.client.disconnect()
        if not ok or seen is None:
            problems.append(f"not all of {expected} (availability {availability}) seen for "
                            f"{device} ({attempt})")
            seen = {}
            break
    configs = {t: p for t, (p, _) in messages.items()
               if t.startswith(DISCOVERY_PREFIX + "/") and t.endswith("/config") and p}
    for topic, (payload, retained) in messages.items():
        if topic in configs and not retained:
            problems.append(f"{topic}: config not retained")
    for topic, payload in configs.items():
        problems.extend(schema_problems(topic, payload))
        config = json.loads(payload)
        state, _ = messages.get(config.get("state_topic"), (None, False))
        if state is None:
            continue
        text = state.decode()
        if len(text) > 255:
            problems.append(f"{topic}: state longer than 255 characters")
        if topic.split("/")[1] == "binary_sensor" and text not in (
                config.get("payload_on", "ON"), config.get("payload_off", "OFF")):
            problems.append(f"{topic}: binary state {text!r} is neither payload_on nor payload_off")
        if "state_class" in config:
            try:
                float(text)
            except ValueError:
                problems.append(f"{topic}: state {text!r} of a sensor with a state_class is not numeric")
        for a in config.get("availability", []):
            value, _ = messages.get(a["topic"], (b"", False))
            if value.decode() not in ("online", "offline"):
                problems.append(f"{topic}: availability {a['topic']} says {value!r}")
    print(json.dumps({
        "ok": not problems,
        "problems": problems,
        "configs": {t: json.loads(p) for t, p in configs.items()},
        "states": {m: s[2][0].decode() for m, s in seen.items()},
    }))
    return 0 if not problems else 1


def birth(host, port, device, metrics):
    listener = Listener(host, port)
    wanted = {config_topic(device, m, c) for m in metrics for c in COMPONENTS}
    # Let the retained configs arrive first: only what comes after the birth message counts.
    listener.wait(lambda: sum(1 for t in wanted if t in listener.messages) >= len(metrics))
    time.sleep(0.5)
    with listener.lock:
        listener.live_configs.clear()
    listener.client.publish(f"{DISCOVERY_PREFIX}/status", "online", qos=1)
    ok = listener.wait(lambda: len(listener.live_configs & wanted) >= len(metrics))
    with listener.lock:
        again = sorted(listener.live_configs & wanted)
    listener.client.loop_stop()
    listener.client.disconnect()
    print(json.dumps({"ok": ok, "announced_again": again}))
    return 0 if ok else 1


def main():
    mode, host, port, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rest = sys.argv[5:]
    if mode == "check":
        availability = None
        if "--availability" in rest:
            at = rest.index("--availability")
            availability = rest[at + 1]
            rest = rest[:at] + rest[at + 2:]
        expected = dict(arg.split("=", 1) for arg in rest)
        return check(host, port, device, expected, availability)
    if mode == "birth":
        return birth(host, port, device, rest)
    print(f"unknown mode {mode}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
