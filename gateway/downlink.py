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

Counters are per node (SPEC.md §4.1, gateway/counters.py) and only those reserved on disk are
used: what is due to a node whose reservation is not on disk yet stays here, unbuilt, while the
other nodes' frames go out (`Link.resume` asks again once it is). A frame given a counter by its
sender (a retransmitted COMMAND keeps its counter) is built with that one.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

from protocols import frame as fr
from protocols import messages

MAX_NODES = 4096  # nodes with an ACK due, and nodes with a TIME due, on one port
MAX_COUNTERS = 16384  # counters due on one port in all
MAX_FRAMES = 256  # other frames waiting on one port (each at most 255 bytes)
MAX_COUNTERS_PER_NODE = fr.WINDOW  # a node keeping the span rule never has more unacknowledged (SPEC.md §4.2)

_ACK, _TIME, _FRAME = 0, 1, 2

# The counter source: the next downlink counter of a frame to this node id. None: none may be used yet
# (its reservation is not on disk): the frame waits here. Above fr.MAX_COUNTER: used up, the frame is
# dropped (SPEC.md §4.1: never wrapped).
CounterSource: TypeAlias = Callable[[bytes], int | None]


def time_fields() -> dict[str, int]:
    now = time.time()
    return {"unix": int(now), "ms": int(now * 1000) % 1000}


class Downlink:
    """The downlink queue of one port: coalescing, bounded, encoded on demand."""

    def __init__(
        self,
        next_counter: CounterSource,
        *,
        max_nodes: int = MAX_NODES,
        max_counters: int = MAX_COUNTERS,
        max_frames: int = MAX_FRAMES,
        key_of: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        self._next_counter = next_counter
        self._key_of = key_of  # node id -> the key frames to it are tagged with (SPEC.md §3.4); None: a CRC
        self._max_nodes = max_nodes
        self._max_counters = max_counters
        self._max_frames = max_frames
        # (kind, node id) -> what is due, in the order it first came due. ACK: {counter: None} (an ordered set); TIME: None.
        self._due: dict[tuple[int, Any], Any] = {}
        # (FRAME, sequence number) -> (node id, type, payload, flags, counter or None: taken when written)
        self._frames: dict[tuple[int, Any], Any] = {}
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

    def frame(
        self,
        node_id: bytes,
        mtype: int,
        fields: dict[str, Any],
        flags: int = 0,
        counter: int | None = None,
        only_under: bytes | None = None,
    ) -> bool:
        """Any other frame, in FIFO order. Its payload is encoded and checked now, so what the schema
        refuses or what does not fit a frame raises ProtocolError here, to the caller, not when it is written.
        counter: the frame's own (a retransmission keeps it); None: the node's next one when it is written.
        only_under: the key it must be tagged with (a rekey, wrapped under it): dropped, counted, if the node's
        key is another one by the time it is written."""
        payload = messages.encode_payload(mtype, fields)
        tagged = fr.F_AUTH if self._key_of is not None and self._key_of(node_id) is not None else 0
        fr.pack(fr.Frame(mtype, node_id, counter or 0, payload, fr.F_DOWNLINK | flags | tagged), bytes(32))  # its limits, tag included
        if self._sizes[_FRAME] >= self._max_frames:
            self.dropped[messages.NAMES.get(mtype, str(mtype))] += 1
            return False
        self._sequence += 1
        self._frames[(_FRAME, self._sequence)] = (node_id, mtype, payload, flags, counter, only_under)
        self._sizes[_FRAME] += 1
        return True

    def take(self, room: int) -> bytes:
        """Wire bytes of the frames due first, about `room` of them (at most one frame more); b"" when nothing
        can go out now (nothing is due, or only frames to nodes without a counter reserved yet)."""
        out = bytearray()
        waiting: set[bytes] = set()  # nodes found without a counter in this call: their entries stay as they are
        while len(out) < room:
            key = self._first(waiting)
            if key is None:
                break
            kind = key[0]
            if kind == _FRAME:
                node_id, mtype, payload, flags, counter, only_under = self._frames[key]
                if only_under is not None and (self._key_of is None or self._key_of(node_id) != only_under):
                    self._remove(key)  # its key changed since it was queued: tagged now, it would say something else
                    self.dropped["key changed"] += 1
                    continue
            else:
                node_id, counter = key[1], None
            if counter is None:
                counter = self._next_counter(node_id)
                if counter is None:
                    waiting.add(node_id)
                    continue
            if kind == _ACK:
                counters = self._due[key]
                batch = []
                for acked in counters:
                    batch.append(acked)
                    if len(batch) == messages.MAX_ACKS:
                        break
                for acked in batch:
                    del counters[acked]
                self._counters -= len(batch)
                if not counters:
                    self._remove(key)
                out += self._wire(node_id, counter, messages.ACK, messages.encode_payload(messages.ACK, {"counters": batch}), 0)
            elif kind == _TIME:
                self._remove(key)
                out += self._wire(node_id, counter, messages.TIME, messages.encode_payload(messages.TIME, time_fields()), 0)
            else:
                self._remove(key)
                out += self._wire(node_id, counter, mtype, payload, flags)
        return bytes(out)

    def _first(self, waiting: set[bytes]) -> tuple[int, Any] | None:
        """The key due first (ACKs and TIMEs before other frames) whose node is not waiting for a counter.
        Nodes wait only while a reservation is late (a failing disk): then this looks past their entries."""
        if not waiting:
            for due in (self._due, self._frames):
                for key in due:
                    return key
            return None
        for key in self._due:
            if key[1] not in waiting:
                return key
        for key, entry in self._frames.items():
            if entry[0] not in waiting or entry[4] is not None:  # a frame with its own counter needs none
                return key
        return None

    def _remove(self, key: tuple[int, Any]) -> None:
        del (self._frames if key[0] == _FRAME else self._due)[key]
        self._sizes[key[0]] -= 1

    def _wire(self, node_id: bytes, counter: int, mtype: int, payload: bytes, flags: int) -> bytes:
        if counter > fr.MAX_COUNTER:  # the node's counters are used up: sending nothing beats wrapping (SPEC.md §4.1)
            return b""
        key = self._key_of(node_id) if self._key_of is not None else None
        if key is not None:  # a node with a key takes only tagged frames: a forged ACK or dim is never acted on
            flags |= fr.F_AUTH
        return fr.to_wire(fr.Frame(mtype, node_id, counter, payload, fr.F_DOWNLINK | flags), key)
