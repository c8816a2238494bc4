"""Which bridge's copy of a radio node's frame counts (issue 15, SPEC.md §5.11): the copies of one transmission.

Every bridge in range relays a frame it heard, so the gateway gets one copy per bridge of each transmission, within
the relay's latency of each other. The node's own retransmission of a counter is another transmission: it comes
after the node's receive windows and time-off, at least COPY_SPAN_S later, and may reach other bridges than the
first did (only the bridges that heard it have a receive window for its ACK). A recording played back later by
someone in range is one more transmission of an old counter, at whatever power and SF the player chose.

So per node: the best copy of each transmission is the one downlinks go through, and only the copies of a counter's
first transmission, while the counter is new to the node's window, describe the node's link (its status' reception
and link adaptation's SNRs), so that a replay cannot talk the gateway into another SF or bridge for it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

# Copies of one transmission reach the gateway within this of each other (each bridge relays a frame when it ends,
# over its own serial line). A node sends a counter again only after its RX2 window closed (2.5 s after the frame
# ended) and its time-off: 99 airtimes at 1 %, over 4 s for the shortest frame at SF7 (41 ms).
COPY_SPAN_S = 3.0
KEPT = 64  # counters remembered: a node's retransmissions are of its latest few


class Transmissions:
    """A radio node's transmissions as its bridges reported them, to tell what each copy is (Copy)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: OrderedDict[int, list[Any]] = OrderedDict()  # counter -> [first copy's arrival, best RSSI, first]

    def copy(self, counter: int, rssi: float, new: bool) -> Copy:
        """A copy of frame `counter` heard at `rssi` dBm arrived now; `new`: its counter is new to the node's window
        (never accepted: not a retransmission of a frame the gateway has, nor a replay)."""
        now = self._clock()
        seen = self._seen.get(counter)
        if seen is not None and now - seen[0] <= COPY_SPAN_S:
            best = rssi > seen[1]
            seen[1] = max(seen[1], rssi)
            return Copy(best, seen[2], True)
        self._seen[counter] = [now, rssi, new]
        self._seen.move_to_end(counter)
        while len(self._seen) > KEPT:
            self._seen.popitem(last=False)
        return Copy(True, new, False)


class Copy(NamedTuple):
    best: bool  # the strongest copy of its transmission so far: downlinks go through its bridge
    first: bool  # its transmission is the counter's first heard while the counter was new: a measure of the node's link
    again: bool  # not the first copy of its transmission: another bridge's copy came before it
