"""Per-node sessions: what each node said, what it may be told, and when it is acknowledged.

HELLO registers a node (and is answered with ACK and TIME) and its channel
layout, READINGS go to the committer as the node sent them, duplicates are re-acknowledged without being
stored twice, and a counter that went backwards is handled as SPEC.md §4.3 says.
Node info is kept on disk so a restarted gateway still knows every node's channels.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocols import CounterWindow, Message, ProtocolError, messages, node_hex
from protocols import errors as perr
from protocols import frame as fr
from protocols import window as win

from . import senml
from .committer import CommitResult, Committer, Pending
from .fast_decode import ReceivedMessage
from .layouts import Layout, Layouts
from .logs import Digest
from .serial_link import Link
from .store import StoredFrame

log = logging.getLogger(__name__)

STALE_LOG_INTERVAL_S = 10.0
STATUS_REPUBLISH_S = 60.0  # a node's retained status is refreshed at most this often by readings alone
_REJECT_REASONS = (perr.E_VERSION, perr.E_TYPE, perr.E_SCHEMA)
_INFO_FIELDS = ("fw_version", "hw_model", "caps", "proto", "interval")
_STATUS_FIELDS = ("uptime", "free_heap", "reset_cause", "battery_mv", "rssi", "snr", "dropped", "retransmits", "rx_errors", "heap_peak")


@dataclass
class Node:
    node_id: bytes
    window: CounterWindow
    layout: Layout | None = None  # None until the node said HELLO
    info: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    link: Link | None = None
    last_seen: float = 0.0
    status_sent_at: float = 0.0
    waiting: dict[int, list[Link]] = field(default_factory=dict)  # counters in the commit queue -> links to ACK
    stale: int = 0
    stale_logged_at: float = -1e9
    hex: str = field(init=False)  # the node id as shown everywhere; computed once, it is looked up per frame

    def __post_init__(self) -> None:
        self.hex = node_hex(self.node_id)


class Sessions:
    """The LinkHandler for every port: one place that knows every node."""

    def __init__(
        self,
        gateway_id: str,
        topic_prefix: str,
        committer: Committer,
        layouts: Layouts,
        publish_retained: Callable[[str, bytes], None],
        save_info: Callable[[str, str], None],
    ) -> None:
        self.topic_base = "%s/%s" % (topic_prefix, gateway_id)
        self._committer = committer
        self._layouts = layouts
        self._publish_retained = publish_retained
        self._save_info = save_info
        self.nodes: dict[str, Node] = {}
        self._by_id: dict[bytes, Node] = {}  # the same nodes by their 8 id bytes, as frames carry them
        self._hellos = Digest(log, "HELLOs")  # 1,000 nodes powering up write a few lines, not 1,000

    # ------------------------------------------------------------ restoring

    def restore(self, windows: dict[str, tuple[int, int]], infos: dict[str, str]) -> None:
        for node_hex_id, (highest, seen) in windows.items():
            self._node(bytes.fromhex(node_hex_id)).window = CounterWindow(highest, seen)
        for node_hex_id, text in infos.items():
            node = self._node(bytes.fromhex(node_hex_id))
            try:
                info = json.loads(text)
            except ValueError:
                continue
            if "channels" in info:
                channels = [senml.Channel(c["name"], c["unit"], c.get("scale", 0)) for c in info["channels"]]
                node.layout = self._layouts.announce(node.hex, channels)
                node.info = info

    def _node(self, node_id: bytes) -> Node:
        node = self._by_id.get(node_id)
        if node is None:
            node = self._by_id[node_id] = self.nodes[node_hex(node_id)] = Node(node_id, CounterWindow())
        return node

    def reported_drops(self) -> dict[str, int]:
        """Node -> frames it says it dropped from its ring since it booted (the `dropped` of its latest STATUS)."""
        return {node.hex: node.status["dropped"] for node in self.nodes.values() if type(node.status.get("dropped")) is int}

    # ------------------------------------------------------------ LinkHandler

    def message(self, link: Link, message: ReceivedMessage) -> None:
        if message.flags & fr.F_DOWNLINK:
            return  # our own kind of frame echoed back: not for us
        node = self._node(message.node_id)
        node.link = link
        node.last_seen = time.time()
        if message.type == messages.HELLO:
            self._hello(node, link, message)
            return
        if message.type == messages.ACK:
            return  # acknowledgements of our downlink frames: nothing is kept waiting for them yet
        verdict = node.window.check(message.counter)
        if verdict == win.STALE:
            node.stale += 1
            if time.monotonic() - node.stale_logged_at >= STALE_LOG_INTERVAL_S:
                log.warning(
                    "node %s: counter went backwards from %d to %d (%d such frames); rejected until the node says HELLO",
                    node.hex,
                    node.window.highest,
                    message.counter,
                    node.stale,
                )
                node.stale_logged_at = time.monotonic()
            self._reject(link, node, message, perr.E_STALE, "counter %d is behind %d; send HELLO" % (message.counter, node.window.highest))
            return
        if message.type == messages.READINGS:
            self._readings(node, link, message, verdict)
            return
        if verdict == win.NEW:
            node.window.accept(message.counter)  # not a stored frame: no durability to wait for
            self._other(node, link, message)
        if message.flags & fr.F_ACK_REQ:
            self._ack(link, node, [message.counter])

    def bad_frame(self, link: Link, error: ProtocolError) -> None:
        if error.node_id is None or error.code not in _REJECT_REASONS:
            return
        node = self._node(error.node_id)
        self._send(link, node, messages.REJECT, {"reason": error.code, "detail": error.detail[:80], "counter": error.counter or 0})

    # ------------------------------------------------------------ messages

    def _hello(self, node: Node, link: Link, message: ReceivedMessage) -> None:
        known = node.layout is not None
        verdict = node.window.check(message.counter)
        if verdict == win.STALE:
            log.warning(
                "node %s: counter reset from %d to %d (HELLO); accepting the new counter", node.hex, node.window.highest, message.counter
            )
            node.window = CounterWindow(message.counter, 1)  # a new object: frames queued before stay out of it
        elif verdict == win.NEW:
            node.window.accept(message.counter)
        fields = message.fields
        channels = [senml.Channel(c["name"], c["unit"], c.get("scale", 0)) for c in fields["channels"]]
        node.layout = self._layouts.announce(node.hex, channels)
        node.info = {key: fields[key] for key in _INFO_FIELDS if key in fields}
        node.info["channels"] = [{"name": c.name, "unit": c.unit, "scale": c.scale} for c in channels]
        if verdict != win.DUPLICATE:
            self._hellos.note(
                {"": "known" if known else "new", "firmware": str(fields["fw_version"]), "port": link.path},
                "node %s: HELLO on %s, firmware %s on %s, channels %s",
                node.hex,
                link.path,
                fields["fw_version"],
                fields["hw_model"],
                ", ".join("%s[%s]" % (c.name, c.unit) for c in channels) or "none",
            )
        self._save_info(node.hex, json.dumps(node.info))
        self._ack(link, node, [message.counter])
        self.send_time(link, node)
        self._publish_status(node, force=True)

    def _readings(self, node: Node, link: Link, message: ReceivedMessage, verdict: int) -> None:
        counter = message.counter
        if counter in node.waiting:
            node.waiting[counter].append(link)  # a retransmission of a frame on its way to disk
            return
        if verdict == win.DUPLICATE:
            self._ack(link, node, [counter])
            return
        layout = node.layout
        if layout is None:
            self._reject(link, node, message, perr.E_UNKNOWN_NODE, "no HELLO from this node; send HELLO")
            return
        samples = message.fields["samples"]
        if samples and max(samples[0::3]) >= len(layout.channels):
            channel = max(samples[0::3])
            self._reject(link, node, message, perr.E_SCHEMA, "channel %d not in HELLO (%d channels)" % (channel, len(layout.channels)))
            return
        frame = StoredFrame(layout.id, round(time.time(), 3), message.payload)  # ms, as the buffer keeps it
        node.waiting[counter] = [link]
        self._committer.submit(Pending(node.hex, counter, frame, len(samples) // 3, layout, node, node.window))
        if time.time() - node.status_sent_at >= STATUS_REPUBLISH_S:
            self._publish_status(node)

    def committed(self, result: CommitResult) -> None:
        """After a transaction: accept the counters, then ACK them (each port's queue makes one ACK per node of them)."""
        for pending in result.committed:
            node = pending.owner
            if pending.window is node.window:  # not from before a counter reset
                node.window.accept(pending.counter)
            for link in node.waiting.pop(pending.counter, []):
                link.ack(node.node_id, [pending.counter])
        for pending in result.refused:
            pending.owner.waiting.pop(pending.counter, None)

    def _other(self, node: Node, link: Link, message: Message) -> None:
        fields = message.fields
        if message.type == messages.STATUS:
            node.status = {key: fields[key] for key in _STATUS_FIELDS if key in fields}
            self._publish_status(node, force=True)
        elif message.type == messages.TIME and "unix" not in fields:
            self.send_time(link, node)
        elif message.type == messages.CONFIG and fields["op"] == messages.CONFIG_REPORT:
            node.info["config"] = fields.get("values", {})
            if fields.get("errors"):
                log.warning("node %s: config not applied: %s", node.hex, fields["errors"])
            self._save_info(node.hex, json.dumps(node.info))
            self._publish_status(node, force=True)
        elif message.type == messages.LOG:
            level = logging.ERROR if fields["severity"] <= 3 else logging.WARNING if fields["severity"] == 4 else logging.INFO
            log.log(level, "node %s says: %s", node.hex, fields["text"])
        elif message.type == messages.REJECT:
            log.warning(
                "node %s rejected our frame %s: %s %s",
                node.hex,
                fields.get("counter"),
                perr.REASONS.get(fields["reason"], fields["reason"]),
                fields.get("detail", ""),
            )
        elif message.type == messages.COMMAND_RESULT:
            self._publish_retained("%s/nodes/%s/command_result" % (self.topic_base, node.hex), json.dumps(fields, default=repr).encode())
        else:
            log.info("node %s: %s not handled by this gateway", node.hex, message.name)

    # ------------------------------------------------------------ replies
    # Handed to the port's downlink queue as what is due; it builds the frames when the port has room.

    def _send(self, link: Link, node: Node, mtype: int, fields: dict[str, Any], flags: int = 0) -> bool:
        return link.send(node.node_id, mtype, fields, flags)

    def _ack(self, link: Link, node: Node, counters: list[int]) -> None:
        link.ack(node.node_id, counters)

    def _reject(self, link: Link, node: Node, message: Message, code: int, detail: str) -> None:
        self._send(link, node, messages.REJECT, {"reason": code, "detail": detail, "counter": message.counter, "type": message.type})

    def send_time(self, link: Link, node: Node) -> None:
        link.time(node.node_id)

    def send_config(self, node_hex_id: str, values: dict[str, Any]) -> bool:
        node = self.nodes.get(node_hex_id)
        if node is None or node.link is None:
            return False
        return self._send(node.link, node, messages.CONFIG, {"op": messages.CONFIG_SET, "values": values}, fr.F_ACK_REQ)

    def _publish_status(self, node: Node, force: bool = False) -> None:
        now = time.time()
        if not force and now - node.status_sent_at < STATUS_REPUBLISH_S:
            return
        node.status_sent_at = now
        document = {
            "node_id": node.hex,
            "last_seen": round(node.last_seen, 3),
            "port": node.link.path if node.link else None,
            **{key: value for key, value in node.info.items() if key != "channels"},
            "channels": node.info.get("channels", []),
            **node.status,
        }
        self._publish_retained("%s/nodes/%s/status" % (self.topic_base, node.hex), json.dumps(document).encode())
