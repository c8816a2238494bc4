"""What one port owes its nodes, kept as what is due and turned into bytes only when the port can take them.

When a port's output backs up (1,000 nodes saying HELLO at once after a power cut,
on a line that carries 11.5 KB/s), replies come due faster than the line carries
them. They wait here as what is due, not as bytes:

- ACK: one entry per node holding every counter due; when it is written it carries
  them all (MAX_ACKS counters a frame, more frames if more are due);
- TIME: one entry per node; the time is read when the frame is written, so a newer
  TIME never waits behind an older one (the older one is the newer one);
- any other frame (REJECT, CONFIG, ...): a bounded FIFO.

ACKs and TIMEs leave in the order they first came due, and before any other
frame: a node's retry timer runs while its ACK waits, so REJECTs earned by a
node flooding bad frames must not hold up its neighbours' ACKs. `take` builds frames (and spends
downlink counters) only when the transport has room for them, so however long a
port's reader stalls, what it holds is bounded by the limits below. What does not
fit is dropped and counted in `dropped`: a node resends what was not acknowledged,
asks for the time again, and a lost REJECT is answered again on the next resend.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from protocols import frame as fr
from protocols import messages

MAX_NODES = 4096  # nodes with an ACK due, and nodes with a TIME due, on one port
MAX_COUNTERS = 16384  # counters due on one port in all
MAX_FRAMES = 256  # other frames waiting on one port (each at most 255 bytes)
MAX_COUNTERS_PER_NODE = fr.WINDOW  # a node keeping the span rule never has more unacknowledged (SPEC.md §4.2)

_ACK, _TIME, _FRAME = 0, 1, 2


def time_fields() -> dict[str, int]:
    now = time.time()
    return {"unix": int(now), "ms": int(now * 1000) % 1000}


class Downlink:
    """The downlink queue of one port: coalescing, bounded, encoded on demand."""

    def __init__(
        self,
        next_counter: Callable[[], int],
        *,
        max_nodes: int = MAX_NODES,
        max_counters: int = MAX_COUNTERS,
        max_frames: int = MAX_FRAMES,
    ) -> None:
        self._next_counter = next_counter
        self._max_nodes = max_nodes
        self._max_counters = max_counters
        self._max_frames = max_frames
        # (kind, node id) -> what is due, in the order it first came due. ACK: {counter: None} (an ordered set); TIME: None.
        self._due: dict[tuple[int, Any], Any] = {}
        self._frames: dict[tuple[int, Any], Any] = {}  # (FRAME, sequence number) -> (node id, type, payload, flags)
        self._sizes = [0, 0, 0]  # entries per kind
        self._counters = 0
        self._sequence = 0
        self.dropped: Counter[str] = Counter()  # message name -> frames (ACK: counters) that did not fit

    def __bool__(self) -> bool:
        return bool(self._due or self._frames)

    def __len__(self) -> int:
        """Entries due: one per node with an ACK due, one per node with a TIME due, one per other frame."""
        return len(self._due) + len(self._frames)

    @property
    def counters(self) -> int:
        return self._counters

    def ack(self, node_id: bytes, counters: Iterable[int]) -> bool:
        """The node is owed an ACK for these counters. False if any did not fit (dropped, counted)."""
        key = (_ACK, node_id)
        due = self._due.get(key)
        fits = True
        for counter in counters:
            if due is not None and counter in due:
                continue
            if not self._ack_room(due):
                self.dropped["ACK"] += 1
                fits = False
                continue
            if due is None:
                due = self._due[key] = {}
                self._sizes[_ACK] += 1
            due[counter] = None
            self._counters += 1
        return fits

    def _ack_room(self, due: dict[int, None] | None) -> bool:
        if self._counters >= self._max_counters:
            return False
        if due is None:
            return self._sizes[_ACK] < self._max_nodes
        return len(due) < MAX_COUNTERS_PER_NODE

    def time(self, node_id: bytes) -> bool:
        """The node is owed a TIME. One already waiting serves: it reads the clock when it is written."""
        key = (_TIME, node_id)
        if key in self._due:
            return True
        if self._sizes[_TIME] >= self._max_nodes:
            self.dropped["TIME"] += 1
            return False
        self._due[key] = None
        self._sizes[_TIME] += 1
        return True

    def frame(self, node_id: bytes, mtype: int, fields: dict[str, Any], flags: int = 0) -> bool:
        """Any other frame, in FIFO order. Its payload is encoded and checked now, so what the schema
        refuses or what does not fit a frame raises ProtocolError here, to the caller, not when it is written."""
        payload = messages.encode_payload(mtype, fields)
        fr.pack(fr.Frame(mtype, node_id, 0, payload, fr.F_DOWNLINK | flags))  # the frame's own limits (length)
        if self._sizes[_FRAME] >= self._max_frames:
            self.dropped[messages.NAMES.get(mtype, str(mtype))] += 1
            return False
        self._sequence += 1
        self._frames[(_FRAME, self._sequence)] = (node_id, mtype, payload, flags)
        self._sizes[_FRAME] += 1
        return True

    def take(self, room: int) -> bytes:
        """Wire bytes of the frames due first, about `room` of them (at most one frame more); b"" when nothing is due."""
        out = bytearray()
        while (self._due or self._frames) and len(out) < room:
            due = self._due or self._frames  # ACKs and TIMEs first
            key = next(iter(due))
            kind = key[0]
            if kind == _ACK:
                counters = due[key]
                batch = []
                for counter in counters:
                    batch.append(counter)
                    if len(batch) == messages.MAX_ACKS:
                        break
                for counter in batch:
                    del counters[counter]
                self._counters -= len(batch)
                if not counters:
                    self._remove(key)
                out += self._wire(key[1], messages.ACK, messages.encode_payload(messages.ACK, {"counters": batch}), 0)
            elif kind == _TIME:
                self._remove(key)
                out += self._wire(key[1], messages.TIME, messages.encode_payload(messages.TIME, time_fields()), 0)
            else:
                node_id, mtype, payload, flags = due[key]
                self._remove(key)
                out += self._wire(node_id, mtype, payload, flags)
        return bytes(out)

    def _remove(self, key: tuple[int, Any]) -> None:
        del (self._frames if key[0] == _FRAME else self._due)[key]
        self._sizes[key[0]] -= 1

    def _wire(self, node_id: bytes, mtype: int, payload: bytes, flags: int) -> bytes:
        counter = self._next_counter()
        if counter > fr.MAX_COUNTER:  # the gateway's counters are used up: sending nothing beats wrapping (SPEC.md §4.1)
            return b""
        return fr.to_wire(fr.Frame(mtype, node_id, counter, payload, fr.F_DOWNLINK | flags))
