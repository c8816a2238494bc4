"""What the node sessions learn, as MQTT topics and JSON (gateway/sessions.py decides, this says it).

- `{prefix}/{gw}/nodes/{node}/status`, retained: the node's status document (what its HELLO said,
  its latest STATUS and CONFIG report, when it was last heard and on which port). Published when
  any of that changes, and refreshed by readings alone at most every STATUS_REPUBLISH_S.
- `{prefix}/{gw}/nodes/{node}/command_result`, retained: a node's COMMAND_RESULT as it came
  (`RawResults`, the default DownlinkListener until commands have a life cycle of their own).

Values from nodes go out as valid JSON whatever they hold (gateway/render.py, SPEC.md §6.5).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from .render import json_value

STATUS_REPUBLISH_S = 60.0  # a node's retained status is refreshed at most this often by readings alone


class Shown(Protocol):
    """What a status document is made of (gateway/sessions.py's Node)."""

    hex: str
    last_seen: float
    info: dict[str, Any]
    status: dict[str, Any]
    radio: dict[str, Any]  # a node heard through a LoRa bridge: its last reception ({} for a node on a cable)

    @property
    def port(self) -> str | None: ...


class Presenter:
    def __init__(self, topic_base: str, publish_retained: Callable[[str, bytes], None]) -> None:
        self.topic_base = topic_base  # {prefix}/{gateway id}
        self._publish_retained = publish_retained
        self._status_sent_at: dict[str, float] = {}  # node -> when its status document was last published

    def status(self, node: Shown, force: bool = False) -> None:
        """The node's status document: when force (something in it changed), else if it is older than STATUS_REPUBLISH_S."""
        now = time.time()
        if not force and now - self._status_sent_at.get(node.hex, 0.0) < STATUS_REPUBLISH_S:
            return
        self._status_sent_at[node.hex] = now
        document = {
            "node_id": node.hex,
            "last_seen": round(node.last_seen, 3),
            "port": node.port,
            **{key: value for key, value in node.info.items() if key != "channels"},
            "channels": node.info.get("channels", []),
            **node.status,
        }
        if node.radio:
            document["radio"] = node.radio
        self._publish_retained("%s/nodes/%s/status" % (self.topic_base, node.hex), json.dumps(document, allow_nan=False).encode())

    def command_result(self, node: str, result: dict[str, Any]) -> None:
        """A COMMAND_RESULT as the node sent it (its fields by name)."""
        topic = "%s/nodes/%s/command_result" % (self.topic_base, node)
        self._publish_retained(topic, json.dumps(json_value(result), allow_nan=False).encode())


class RawResults:
    """The DownlinkListener of a gateway without a command life cycle: results are published as they come,
    the rest is not tracked (a CONFIG report still reaches the status document through the sessions)."""

    def __init__(self, presenter: Presenter) -> None:
        self._presenter = presenter

    def hello(self, node: str, commands: dict[str, str] | None) -> None:
        pass

    def link_changed(self, node: str, port: str | None) -> None:
        pass

    def acked(self, node: str, counters: list[int]) -> None:
        pass

    def command_result(self, node: str, result: dict[str, Any]) -> None:
        self._presenter.command_result(node, result)

    def config_report(self, node: str, report: dict[str, Any]) -> None:
        pass

    def rejected(self, node: str, counter: int, reason: int, detail: str) -> None:
        pass

    def downlink_ready(self, node: str) -> None:
        pass
