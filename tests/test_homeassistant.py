"""Issue 16: Home Assistant MQTT discovery. The configs for every role's channels checked against Home
Assistant's documented schema (its MQTT sensor's keys; its sensor device classes and the units each takes,
DEVICE_CLASS_UNITS in homeassistant/components/sensor/const.py), and end to end: a gateway with discovery on,
a node on a pty, a real mosquitto, what Home Assistant would receive."""

from __future__ import annotations

import json
import pathlib
import re
import time
from typing import Any

import paho.mqtt.publish as publish

from gateway.homeassistant import HomeAssistant
from gateway.senml import Channel
from hil.broker import Mosquitto
from hil.capture import MqttCapture
from hil.gateway import GatewayProcess
from hil.scripted_node import ScriptedNode
from hil.serial_pair import PtyCable

NODE = "0000a4cf12b3c4d5"

# https://www.home-assistant.io/integrations/sensor.mqtt/ : the configuration variables of an MQTT sensor
SENSOR_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic", "device", "device_class",
    "enabled_by_default", "encoding", "entity_category", "entity_picture", "expire_after", "force_update", "icon",
    "json_attributes_template", "json_attributes_topic", "last_reset_value_template", "name", "object_id",
    "default_entity_id", "options", "origin", "payload_available", "payload_not_available", "platform",
    "suggested_display_precision", "qos", "state_class", "state_topic", "unique_id", "unit_of_measurement",
    "value_template",
}  # fmt: skip
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id", "name",
    "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
# Home Assistant's DEVICE_CLASS_UNITS, for the classes edgegw uses (homeassistant/components/sensor/const.py)
DEVICE_CLASS_UNITS = {
    "temperature": {"°C", "°F", "K"},
    "humidity": {"%"},
    "pressure": {"cbar", "bar", "hPa", "mmHg", "inHg", "inH₂O", "kPa", "mbar", "Pa", "psi"},
    "distance": {"km", "m", "cm", "mm", "mi", "nmi", "yd", "in", "ft"},
    "power": {"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"},
    "voltage": {"µV", "mV", "V", "kV", "MV"},
    "current": {"mA", "A"},
    "illuminance": {"lx"},
    "frequency": {"Hz", "kHz", "MHz", "GHz"},
    "precipitation_intensity": {"in/d", "in/h", "mm/d", "mm/h"},
    "duration": {"d", "h", "min", "s", "ms"},
    "speed": {"ft/s", "in/d", "in/h", "in/s", "km/h", "kn", "m/s", "mph", "mm/d", "mm/s"},
    "battery": {"%"},
}
TOPIC_LEVEL = re.compile(r"^[a-zA-Z0-9_-]+$")
# The channels of every role of the firmware (firmware/sensors.py, bme280.py, roles/*.py)
ROLE_CHANNELS = [
    ("temperature", "Cel", -2), ("humidity", "%RH", -2), ("pressure", "Pa", 0), ("water_level", "m", -3),
    ("pulses", "count", 0), ("counter", "", 0), ("level", "%", 0), ("power", "W", -1), ("lamp_ok", "", 0),
    ("hours", "h", -3), ("rate", "mm/h", 0), ("flood", "", 0), ("rise", "", 0), ("occupied", "", 0), ("field", "T", -7),
]  # fmt: skip


def check_sensor_config(topic: str, config: dict[str, Any], prefix: str = "homeassistant") -> None:
    """Home Assistant's documented rules for a discovered MQTT sensor, each an assertion."""
    parts = topic.split("/")
    assert parts[0] == prefix and parts[1] == "sensor" and parts[-1] == "config" and len(parts) in (4, 5), topic
    assert all(TOPIC_LEVEL.match(level) for level in parts[2:-1]), topic  # node_id and object_id: [a-zA-Z0-9_-]
    assert set(config) <= SENSOR_KEYS, set(config) - SENSOR_KEYS
    assert isinstance(config["state_topic"], str) and "+" not in config["state_topic"] and "#" not in config["state_topic"]
    assert isinstance(config["unique_id"], str) and config["unique_id"]
    assert config.get("state_class", "measurement") in STATE_CLASSES
    if "device_class" in config:
        assert config["device_class"] in DEVICE_CLASS_UNITS, config["device_class"]
        assert config.get("unit_of_measurement") in DEVICE_CLASS_UNITS[config["device_class"]], config
    device = config["device"]
    assert set(device) <= DEVICE_KEYS and isinstance(device["identifiers"], list) and all(isinstance(i, str) for i in device["identifiers"])
    for entry in config.get("availability", []):
        assert set(entry) <= {"topic", "payload_available", "payload_not_available", "value_template"} and entry["topic"]
    assert re.fullmatch(r"\{\{ value_json(\[\"[^\"]+\"\]|\.\w+) \}\}", config["value_template"]), config["value_template"]


def render(template: str, payload: bytes) -> Any:
    """What Home Assistant's `{{ value_json[...] }}` gives for a JSON payload (the two forms used here)."""
    value = json.loads(payload)
    match = re.fullmatch(r"\{\{ value_json\[(\"[^\"]+\")\] \}\}", template)
    return value[json.loads(match.group(1))] if match else value[template[len("{{ value_json.") : -3]]


def test_every_roles_channels_make_configs_home_assistant_takes() -> None:
    published: dict[str, bytes] = {}
    ha = HomeAssistant("edgegw/gw-1", "gw-1", "homeassistant", "edgegw/gw-1/status", published.__setitem__)
    channels = tuple(Channel(name, unit, scale) for name, unit, scale in ROLE_CHANNELS)
    ha.node(NODE, {"fw_version": "0.1.0", "hw_model": "esp32-devkitc"}, channels)
    ha.gateway("0.1.0")
    configs = {topic: json.loads(payload) for topic, payload in published.items()}
    assert len(configs) == len(ROLE_CHANNELS) + 2
    for topic, config in configs.items():
        check_sensor_config(topic, config)
    assert len({config["unique_id"] for config in configs.values()}) == len(configs)
    temperature = configs["homeassistant/sensor/%s/temperature/config" % NODE]
    assert (temperature["device_class"], temperature["unit_of_measurement"]) == ("temperature", "°C")
    assert "device_class" not in configs["homeassistant/sensor/%s/field/config" % NODE]  # tesla: no class in Home Assistant

    published.clear()
    ha.readings(NODE, channels, [0, 2137, 0, 7, 412, 0, 0, 2150, 10, 14, float("nan"), 0, 99, 1, 0])
    ha.flush()
    state = published["edgegw/gw-1/nodes/%s/state" % NODE]
    assert json.loads(state) == {"temperature": 21.5, "power": 41.2}  # the latest, scaled; NaN and channel 99 left out
    assert render(temperature["value_template"], state) == 21.5
    ha.flush()
    assert len(published) == 1  # nothing new: nothing again


def test_a_gateway_with_discovery_on_shows_its_nodes_to_home_assistant(tmp_path: pathlib.Path, hil_broker: Mosquitto) -> None:
    cable = PtyCable(tmp_path / "ttyNODE0")
    gateway = GatewayProcess(tmp_path / "gw", hil_broker.port, [str(tmp_path / "ttyNODE*")])
    with gateway.config_path.open("a") as config:
        config.write("[homeassistant]\ndiscovery = true\n")
    ha = MqttCapture(hil_broker.host, hil_broker.port, ["homeassistant/#", "edgegw/gw-test/nodes/+/state", "edgegw/gw-test/status"])
    gateway.start()
    try:
        gateway.wait_for_log("ttyNODE0: open")
        node = ScriptedNode(cable, bytes.fromhex(NODE))
        node.wait_acked([node.hello()])
        node.wait_acked([node.readings([0, 2137, 0, 1, 5, 0])])
        config_topic = "homeassistant/sensor/%s/temperature/config" % NODE
        ha.wait_for(lambda messages: any(m.topic.endswith("/state") for m in messages), timeout=15)
        configs = {m.topic: m for m in ha.snapshot() if m.topic.endswith("/config")}
        assert set(configs) >= {config_topic, "homeassistant/sensor/%s/counter/config" % NODE}
        for topic, message in configs.items():
            check_sensor_config(topic, json.loads(message.payload))
        temperature = json.loads(configs[config_topic].payload)
        state = [m for m in ha.snapshot() if m.topic == temperature["state_topic"]][-1]
        assert render(temperature["value_template"], state.payload) == 21.37
        status = [m for m in ha.snapshot() if m.topic == "edgegw/gw-test/status"][-1]
        assert json.loads(status.payload)["state"] == "online"  # what its availability template reads

        # Home Assistant restarts: its birth message brings every config again
        before = sum(1 for m in ha.snapshot() if m.topic == config_topic)
        publish.single("homeassistant/status", "online", hostname=hil_broker.host, port=hil_broker.port)
        deadline = time.monotonic() + 10
        while sum(1 for m in ha.snapshot() if m.topic == config_topic) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum(1 for m in ha.snapshot() if m.topic == config_topic) == before + 1
    finally:
        ha.close()
        gateway.close()
        cable.close()


def test_a_channel_a_new_hello_drops_is_removed_and_two_names_make_two_entities() -> None:
    published: list[tuple[str, bytes]] = []
    ha = HomeAssistant("edgegw/gw-1", "gw-1", "homeassistant", "edgegw/gw-1/status", lambda t, p: published.append((t, p)))
    ha.node(NODE, {}, (Channel("pm2.5", "", 0), Channel("pm2_5", "", 0), Channel("temperature", "Cel", -2)))
    topics = [topic for topic, _ in published]
    assert len(set(topics)) == 3 and len({json.loads(p)["unique_id"] for _, p in published}) == 3
    ha.readings(NODE, (Channel("pm2.5", "", 0), Channel("pm2_5", "", 0), Channel("temperature", "Cel", -2)), [2, 2137, 0])
    published.clear()
    ha.node(NODE, {}, (Channel("temperature", "Cel", -2),))  # its new HELLO: the two pm channels gone
    emptied = sorted(topic for topic, payload in published if payload == b"")
    assert emptied == sorted(t for t in topics if "/pm2" in t)  # an empty retained config: Home Assistant removes it
    published.clear()
    ha.gateway("0.1.0")
    published.clear()
    ha.again()  # Home Assistant restarted: the gateway's own sensors come again too
    assert any("/edgegw_gateway_gw-1/" in topic for topic, _ in published)
