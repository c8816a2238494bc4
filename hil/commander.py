"""A command client: publishes command requests with QoS 1 and follows their retained states.

Requests go to `{prefix}/{gateway}/nodes/{node}/command` as JSON
(`{"id", "name", "args", "ttl_s"}`); the gateway publishes each command's
progress retained, QoS 1, on `{prefix}/{gateway}/nodes/{node}/command/{id}`
(`{"id", "name", "state", "at", "attempts", "result", "error"}`). Every state
message is kept with the moment it arrived (this process's `time.monotonic()`,
the clock of hil/capture.py), so a scenario can say how long a command took.

A persistent session (session expiry, an hour): states published while a
broker restart cut us off are delivered when we are back, and paho sends a
request the broker had not PUBACKed again after the reconnect (QoS 1: the
gateway may see a request id twice and must take it as the same command).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

FINAL_STATES = ("succeeded", "failed", "expired", "rejected")
STATES = ("queued", "sent", "delivered", *FINAL_STATES)


@dataclass
class StateSeen:
    node: str
    id: str
    state: str  # as published; a malformed document is kept with state "" and the text in document["raw"]
    at: float  # when it arrived here (monotonic)
    retained: bool
    document: dict[str, Any]


@dataclass
class Issued:
    node: str
    id: str
    name: str
    args: dict[str, Any]
    at: float  # when it was handed to paho (monotonic)
    acked_at: float | None = None  # the broker's PUBACK
    mid: int = -1


@dataclass
class CommandTrack:
    """One command's life as seen from the outside: what was asked, every state in the order it arrived."""

    issued: Issued
    states: list[StateSeen] = field(default_factory=list)

    @property
    def final(self) -> StateSeen | None:
        finals = [seen for seen in self.states if seen.state in FINAL_STATES]
        return finals[-1] if finals else None


def parse_state(topic: str, payload: bytes) -> tuple[str, str, dict[str, Any]] | None:
    """(node, id, document) of a state message on `.../nodes/{node}/command/{id}`; None for other topics."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[-2] != "command" or parts[-4] != "nodes":
        return None
    try:
        document = json.loads(payload)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        document = {"state": "", "raw": payload.decode(errors="replace")}
    return parts[-3], parts[-1], document


class Commander:
    def __init__(self, host: str, port: int, gateway_id: str, prefix: str = "edgegw", *, client_id: str | None = None) -> None:
        self.base = "%s/%s/nodes" % (prefix, gateway_id)
        self._lock = threading.Lock()
        self._acked: dict[int, float] = {}  # PUBACKs of mids not yet known to their Issued
        self.issued: dict[tuple[str, str], Issued] = {}
        self.states: list[StateSeen] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or "commander-%s" % uuid.uuid4().hex[:8],
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.reconnect_delay_set(1, 1)
        session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        session.SessionExpiryInterval = 3600
        self.client.connect(host, port, clean_start=False, properties=session)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("the command client could not subscribe to %s/+/command/+" % self.base)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, properties: object) -> None:
        client.subscribe("%s/+/command/+" % self.base, qos=1)

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: object, properties: object) -> None:
        now = time.monotonic()
        with self._lock:
            for issued in self.issued.values():
                if issued.mid == mid and issued.acked_at is None:
                    issued.acked_at = now
                    return
            self._acked[mid] = now  # its Issued does not know its mid yet

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        parsed = parse_state(message.topic, bytes(message.payload))
        if parsed is None:
            return
        node, command_id, document = parsed
        seen = StateSeen(node, command_id, str(document.get("state", "")), time.monotonic(), bool(message.retain), document)
        with self._lock:
            self.states.append(seen)

    def send(self, node: str, command_id: str, name: str, args: dict[str, Any] | None = None, ttl_s: int | None = None) -> Issued:
        """Publish one request (QoS 1); returns at once, the PUBACK is noted when it comes."""
        request: dict[str, Any] = {"id": command_id, "name": name, "args": args or {}}
        if ttl_s is not None:
            request["ttl_s"] = ttl_s
        topic = "%s/%s/command" % (self.base, node)
        payload = json.dumps(request).encode()
        issued = Issued(node, command_id, name, dict(args or {}), time.monotonic())
        with self._lock:  # registered before the publish, so that its states are matched however soon they come
            self.issued[(node, command_id)] = issued
        # Not under our lock: paho calls on_publish holding its own, and publish() takes that one (a deadlock).
        mid = self.client.publish(topic, payload, qos=1).mid  # queued by paho while disconnected
        with self._lock:
            issued.mid = mid
            if mid in self._acked:  # the PUBACK came before publish() returned
                issued.acked_at = self._acked.pop(mid)
        return issued

    def tracks(self) -> list[CommandTrack]:
        """Every issued command with the states seen for it, in the order they arrived."""
        with self._lock:
            tracks = {key: CommandTrack(issued) for key, issued in self.issued.items()}
            for seen in self.states:
                track = tracks.get((seen.node, seen.id))
                if track is not None:
                    track.states.append(seen)
        return list(tracks.values())

    def unknown_states(self) -> list[StateSeen]:
        """States for commands this client did not issue (another client's, or an old retained one)."""
        with self._lock:
            return [seen for seen in self.states if (seen.node, seen.id) not in self.issued]

    def pending(self) -> list[Issued]:
        """Issued commands with no final state yet."""
        return [track.issued for track in self.tracks() if track.final is None]

    def wait_final(self, timeout: float) -> list[Issued]:
        """Wait until every issued command has a final state, at most timeout seconds; the ones still pending."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.pending()
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.2)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
