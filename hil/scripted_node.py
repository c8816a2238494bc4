"""A node played by the test: it sends protocol frames on a pty and reads the gateway's answers.

It behaves like the firmware where the gateway can tell: counters increase,
frames are kept until acknowledged and can be resent. Used where a test needs
exact control of every frame (malformed input, duplicates, counter resets).
"""

from __future__ import annotations

import time
from typing import Any

from protocols import Message, ProtocolError, StreamDecoder, encode, messages
from protocols import frame as fr
from protocols.frame import WINDOW

from .serial_pair import PtyCable

CHANNELS = [
    {"name": "temperature", "unit": "Cel", "scale": -2},
    {"name": "counter", "unit": "", "scale": 0},
]


class ScriptedNode:
    def __init__(self, cable: PtyCable, node_id: bytes, counter: int = 1, key: bytes | None = None) -> None:
        self.cable = cable
        self.node_id = node_id
        self.counter = counter
        self.key = key  # a provisioned node: every frame tagged (SPEC.md §3.4), only tagged ones taken
        self.decoder = StreamDecoder(lambda node_id: key if node_id == self.node_id else None)
        self.inbox: list[Message] = []
        self.acked: set[int] = set()
        self.unacked: dict[int, bytes] = {}

    def send(self, mtype: int, fields: dict[str, Any], flags: int = fr.F_ACK_REQ, span_timeout: float = 15.0) -> int:
        """Send one frame; like the firmware, first wait until the span rule (SPEC.md §4.2) allows it."""
        deadline = time.monotonic() + span_timeout
        while not self.may_send():
            if time.monotonic() > deadline:
                raise AssertionError("span rule: counter %d, oldest unacknowledged %d" % (self.counter, min(self.unacked)))
            self.poll(0.05)
        counter = self.counter
        self.counter += 1
        if self.key is not None:
            flags |= fr.F_AUTH
        wire = encode(Message(mtype, self.node_id, counter, fields, flags), self.key)
        if flags & fr.F_ACK_REQ:
            self.unacked[counter] = wire
        self.cable.write(b"\x00" + wire)
        return counter

    def may_send(self) -> bool:
        """The span rule: the next counter stays within WINDOW of the oldest unacknowledged frame."""
        return not self.unacked or self.counter - min(self.unacked) < WINDOW - 1

    def hello(self, channels: list[dict[str, Any]] | None = None) -> int:
        caps = 0x0B | (messages.CAP_AUTH if self.key is not None else 0)
        fields = {"proto": [1, 0], "fw_version": "test-1", "hw_model": "pty", "caps": caps, "channels": channels or CHANNELS}
        return self.send(messages.HELLO, fields)

    def readings(self, samples: list[int | float], base_time: float | None = None) -> int:
        fields: dict[str, Any] = {"samples": samples}
        if base_time is not None:
            fields["base_time"] = base_time
        return self.send(messages.READINGS, fields)

    def resend_unacked(self) -> int:
        for wire in list(self.unacked.values()):
            self.cable.write(b"\x00" + wire)
        return len(self.unacked)

    def poll(self, timeout: float = 0.1) -> list[Message]:
        data = self.cable.read(timeout)
        got = []
        if data:
            self.decoder.feed(data)
            for message in self.decoder.drain():
                if isinstance(message, ProtocolError) or (self.key is not None and not message.flags & fr.F_AUTH):
                    continue
                got.append(message)
                if message.type == messages.ACK:
                    for counter in message.fields["counters"]:
                        self.acked.add(counter)
                        self.unacked.pop(counter, None)
        self.inbox += got
        return got

    def wait_acked(self, counters: set[int] | list[int], timeout: float = 15.0) -> None:
        wanted = set(counters)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wanted <= self.acked:
                return
            self.poll(0.05)
        raise AssertionError("not acknowledged within %.0f s: %s" % (timeout, sorted(wanted - self.acked)[:20]))

    def wait_for(self, mtype: int, timeout: float = 15.0) -> Message:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for message in self.inbox[seen:]:
                if message.type == mtype:
                    self.inbox.remove(message)
                    return message
            seen = len(self.inbox)
            self.poll(0.05)
        raise AssertionError("no %s within %.0f s" % (messages.NAMES[mtype], timeout))
