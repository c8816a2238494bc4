"""Home Assistant MQTT discovery ([homeassistant] discovery = true): every node channel appears in Home
Assistant as a sensor, without any YAML.

Home Assistant cannot read the SenML CBOR of `.../readings`, so each node also gets a JSON state topic,
`{prefix}/{gw}/nodes/{node}/state`, retained: the latest value of each channel by name, already scaled
(`{"temperature": 21.37, "humidity": 48.2}`), published at most every STATE_EVERY_S per node. It is a view
of the latest values, not the record: the record stays on `.../readings`, durable and complete.

For each channel a discovery config goes (retained) to `{discovery prefix}/sensor/{node}/{channel}/config`
when the node's channels become known (its HELLO, or at start) and again when Home Assistant says it came
online (`{discovery prefix}/status` = `online`). Its unit and device class come from the SenML unit, by
Home Assistant's sensor device classes and their units (`DEVICE_CLASS_UNITS` in its sensor/const.py); a
unit it has no class for goes without one. Entities are available while the gateway's status says online.
The gateway itself is a device too, with its buffer and nodes as sensors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

STATE_EVERY_S = 5.0
MANUFACTURER = "edgegw"

# SenML unit (RFC 8428 §12.1) -> (Home Assistant unit, device class); state class is "measurement" for all
UNITS: dict[str, tuple[str | None, str | None]] = {
    "Cel": ("°C", "temperature"),
    "K": ("K", "temperature"),
    "%RH": ("%", "humidity"),
    "Pa": ("Pa", "pressure"),
    "m": ("m", "distance"),
    "W": ("W", "power"),
    "V": ("V", "voltage"),
    "A": ("A", "current"),
    "lx": ("lx", "illuminance"),
    "Hz": ("Hz", "frequency"),
    "mm/h": ("mm/h", "precipitation_intensity"),
    "h": ("h", "duration"),
    "s": ("s", "duration"),
    "m/s": ("m/s", "speed"),
    "%EL": ("%", "battery"),
    "ppm": ("ppm", None),
    "%": ("%", None),
    "T": ("T", None),
    "count": (None, None),
    "": (None, None),
}
_ID = re.compile(r"[^A-Za-z0-9_-]")


def object_id(name: str) -> str:
    """A channel name as a discovery topic level and id ([a-zA-Z0-9_-]: a '.' becomes '_')."""
    return _ID.sub("_", name)


def unit_of(senml: str) -> tuple[str | None, str | None]:
    return UNITS.get(senml, (senml or None, None))


class HomeAssistant:
    def __init__(
        self, topic_base: str, gateway_id: str, prefix: str, status_topic: str, publish_retained: Callable[[str, bytes], None]
    ) -> None:
        self.topic_base = topic_base
        self.gateway_id = gateway_id
        self.prefix = prefix
        self.status_topic = status_topic
        self._publish = publish_retained
        self._announced: dict[str, tuple[Any, ...]] = {}  # node -> the channels its configs were made for
        self._topics: dict[str, set[str]] = {}  # node -> the config topics published for it (a channel gone: emptied)
        self._version = ""
        self._infos: dict[str, dict[str, Any]] = {}
        self._latest: dict[str, dict[str, float]] = {}  # node -> channel name -> latest value
        self._due: set[str] = set()  # nodes whose state changed since the last flush

    @property
    def birth_topic(self) -> str:
        """Home Assistant says `online` here when it (re)starts: every config is published again."""
        return "%s/status" % self.prefix

    def _availability(self) -> list[dict[str, str]]:
        return [{"topic": self.status_topic, "value_template": "{{ value_json.state }}"}]

    def _device(self, node: str, info: dict[str, Any]) -> dict[str, Any]:
        device: dict[str, Any] = {
            "identifiers": ["edgegw_%s" % node],
            "name": "edgegw node %s" % node,
            "manufacturer": MANUFACTURER,
            "via_device": "edgegw_gateway_%s" % self.gateway_id,
        }
        if isinstance(info.get("hw_model"), str):
            device["model"] = info["hw_model"][:64]
        if isinstance(info.get("fw_version"), str):
            device["sw_version"] = info["fw_version"][:64]
        return device

    def node(self, node: str, info: dict[str, Any], channels: tuple[Any, ...], force: bool = False) -> None:
        """The node's channels are known (HELLO, or restored at start): a config per channel, when they changed."""
        if not force and self._announced.get(node) == channels:
            return
        self._announced[node] = channels
        self._infos[node] = info
        topics = set()
        taken: set[str] = set()
        for channel in channels:
            ident = object_id(channel.name)
            while ident in taken:  # "pm2.5" and "pm2_5" are two channels: not one entity
                ident += "_"
            taken.add(ident)
            topic, config = self.sensor_config(node, info, channel.name, channel.unit, ident)
            topics.add(topic)
            self._publish(topic, json.dumps(config, ensure_ascii=False).encode())
        for gone in self._topics.get(node, set()) - topics:  # a channel its new HELLO no longer has: removed in HA
            self._publish(gone, b"")
        self._topics[node] = topics
        names = {channel.name for channel in channels}
        latest = self._latest.get(node)
        if latest is not None and set(latest) - names:
            self._latest[node] = {name: value for name, value in latest.items() if name in names}

    def sensor_config(
        self, node: str, info: dict[str, Any], name: str, senml_unit: str, ident: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        ident = ident or object_id(name)
        unit, device_class = unit_of(senml_unit)
        config: dict[str, Any] = {
            "name": name,
            "unique_id": "edgegw_%s_%s" % (node, ident),
            "default_entity_id": "sensor.edgegw_%s_%s" % (node, ident),  # object_id's successor (Home Assistant 2025.10)
            "state_topic": self.state_topic(node),
            "value_template": "{{ value_json[%s] }}" % json.dumps(name),
            "state_class": "measurement",
            "availability": self._availability(),
            "device": self._device(node, info),
            "origin": {"name": "edgegw"},
        }
        if unit is not None:
            config["unit_of_measurement"] = unit
        if device_class is not None:
            config["device_class"] = device_class
        return "%s/sensor/%s/%s/config" % (self.prefix, node, ident), config

    def gateway(self, version: str) -> None:
        """The gateway as a device: its buffer and its nodes, from its own retained status."""
        self._version = version
        device = {"identifiers": ["edgegw_gateway_%s" % self.gateway_id], "name": "edgegw %s" % self.gateway_id}
        device |= {"manufacturer": MANUFACTURER, "sw_version": version}
        for key, name in (("buffered_readings", "buffered readings"), ("nodes", "nodes")):
            config = {
                "name": name,
                "unique_id": "edgegw_gateway_%s_%s" % (self.gateway_id, key),
                "default_entity_id": "sensor.edgegw_gateway_%s_%s" % (object_id(self.gateway_id), key),
                "state_topic": self.status_topic,
                "value_template": "{{ value_json.%s }}" % key,
                "state_class": "measurement",
                "availability": self._availability(),
                "device": device,
                "origin": {"name": "edgegw"},
            }
            self._publish(
                "%s/sensor/edgegw_gateway_%s/%s/config" % (self.prefix, object_id(self.gateway_id), key), json.dumps(config).encode()
            )

    def again(self) -> None:
        """Home Assistant restarted: every config once more (they are retained, but it may have lost them)."""
        if self._version:
            self.gateway(self._version)
        for node, channels in list(self._announced.items()):
            self.node(node, self._infos.get(node, {}), channels, force=True)

    def state_topic(self, node: str) -> str:
        return "%s/nodes/%s/state" % (self.topic_base, node)

    def readings(self, node: str, channels: tuple[Any, ...], samples: list[Any]) -> None:
        """A READINGS frame's samples ([channel, value, dt] triples): the latest of each channel, published later."""
        latest = self._latest.setdefault(node, {})
        for index, value in zip(samples[0::3], samples[1::3], strict=True):
            if not 0 <= index < len(channels) or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            channel = channels[index]
            scaled = value * 10.0**channel.scale if channel.scale else value
            if isinstance(scaled, float) and not math.isfinite(scaled):
                continue  # JSON has no NaN or infinity
            latest[channel.name] = round(scaled, 9) if isinstance(scaled, float) else scaled
        self._due.add(node)

    def flush(self) -> None:
        """The states that changed since the last call (the agent calls it every STATE_EVERY_S)."""
        due, self._due = self._due, set()
        for node in due:
            self._publish(self.state_topic(node), json.dumps(self._latest[node], ensure_ascii=False, allow_nan=False).encode())
