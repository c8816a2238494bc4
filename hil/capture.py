"""An MQTT subscriber that records what the broker delivers, decoding SenML CBOR itself (cbor2).

It keeps a persistent session with a fixed client id, so messages published
while it was cut off by a broker restart are delivered when it is back.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float
    properties: Any


def is_gateway_status(topic: str) -> bool:
    """The gateway's own status topic, `{prefix}/{gateway}/status` (a node's is `{prefix}/{gateway}/nodes/{node}/status`)."""
    return topic.count("/") == 2 and topic.endswith("/status")


def decode_senml(payload: bytes) -> list[dict[str, Any]]:
    """Resolved records (RFC 8428 §4.6): name, unit, value, time. Written from the RFC, not from gateway/senml.py."""
    records = cbor2.loads(payload)
    out = []
    bn, bu, bt = "", "", 0.0
    for record in records:
        bn = record.get(-2, bn)
        bt = record.get(-3, bt)
        bu = record.get(-4, bu)
        out.append(
            {"name": bn + record.get(0, ""), "unit": record.get(1, bu or None), "value": record.get(2), "time": bt + record.get(6, 0)}
        )
    return out


class MqttCapture:
    def __init__(
        self,
        host: str,
        port: int,
        topics: list[str],
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self.connects: list[float] = []  # when each connection (the first and every reconnect) was made (monotonic s)
        self._counters: list[tuple[str, int, float]] = []
        self._counted = 0  # messages already scanned for counter records
        self._lock = threading.Lock()
        self._topics = topics
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="capture-%s" % uuid.uuid4().hex[:8], protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.reconnect_delay_set(1, 1)
        if username:
            self.client.username_pw_set(username, password)
        if ca_file:
            self.client.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
        session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        session.SessionExpiryInterval = 3600  # keep the session (and queue for it) across broker restarts
        self.client.connect(host, port, clean_start=False, properties=session)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("capture could not subscribe")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, properties: object) -> None:
        self.connects.append(time.monotonic())
        for topic in self._topics:
            client.subscribe(topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(
                Received(message.topic, bytes(message.payload), bool(message.retain), time.monotonic(), message.properties)
            )

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.snapshot()
            if predicate(current):
                return current
            time.sleep(0.05)
        raise AssertionError("MQTT capture: condition not met within %.0f s (%d messages)" % (timeout, len(self.snapshot())))

    def readings(self, suffix: str = "/readings") -> list[tuple[str, dict[str, Any]]]:
        """(topic, record) for every SenML record received on readings topics."""
        out = []
        for message in self.snapshot():
            if message.topic.endswith(suffix):
                out += [(message.topic, record) for record in decode_senml(message.payload)]
        return out

    def counter_deliveries(self) -> list[tuple[str, int, float]]:
        """(node, sample number, received at) for every `counter` record delivered so far (see hil/continuity.py)."""
        with self._lock:
            fresh = self.messages[self._counted :]
            self._counted = len(self.messages)
        for message in fresh:
            if not message.topic.endswith("/readings"):
                continue
            for record in decode_senml(message.payload):
                parts = record["name"].split(":")
                if len(parts) == 5 and parts[:3] == ["urn", "dev", "edgegw"] and parts[4] == "counter":
                    self._counters.append((parts[3], int(record["value"]), message.at))
        return list(self._counters)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
