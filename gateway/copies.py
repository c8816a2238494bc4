"""Which bridge's copy of a radio node's frame counts (issue 15, SPEC.md §5.11): the copies of one transmission.

Every bridge in range relays a frame it heard, so the gateway gets one copy per bridge of each transmission. The
node's own retransmission of a counter is another transmission: it ends at least COPY_SPAN_S after the first did
(the node's receive windows and time-off come between), and may reach other bridges than the first did (only the
bridges that heard it have a receive window for its answer). A recording played back by someone in range is one
more transmission of an old counter, at whatever power, SF and channel the player chose.

So copies are grouped by when they ended on air (the bridge's `at`, on the gateway's estimate of that bridge's
clock: a report held up on a serial line or in a busy gateway is still of its transmission), and a copy on another
SF or channel than its transmission's first is not the node's. Per node: the best copy of each transmission is the
one downlinks go through, and only the copies of a counter's first transmission, heard while the counter was new to
the node's window, describe the node's link (its status' reception and link adaptation's SNRs), so that a replay
cannot talk the gateway into another SF or bridge for it.

A node keeps its duty cycle (protocols/dutycycle.py: 1 % in the sub-band of its uplink channels). One heard on air
for more than twice that over the last hour is broken, or played back by someone in range: its transmissions past
that are `over` (SPEC.md §5.11), neither handled nor answered, so that one node cannot spend its bridges' downlink
budget, which every node of theirs shares. Two hours are kept: the transmissions of counters new to the node's
window (each counter once), which decide whether a new counter is handled, and the others (the node's
retransmissions, replays), which decide only whether they are answered again; a recording played back cannot
silence the node's own frames. Twice: the gateway's estimate of when a transmission ended may put a frame in
another minute than the node's own clock did, and a copy whose bridge's clock is badly estimated may count as a
transmission of its own.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from protocols.dutycycle import DutyCycle
from protocols.lora import UPLINK_CHANNELS
from protocols.window import NEW, CounterWindow

# Copies of one transmission ended on air within this of each other, as the gateway estimates the bridges' clocks
# (or, from a bridge that gives no time, as its reports arrived). A node sends a counter again only after its RX2
# window closed (2.5 s after the frame ended) and its time-off: 99 airtimes at 1 %, over 4 s for the shortest frame
# at SF7 (41 ms).
COPY_SPAN_S = 3.0
KEPT = 64  # counters remembered: a node's retransmissions are of its latest few
PER_COUNTER = 4  # transmissions remembered per counter (the node's retransmissions of it, replays)
_HOUR_MS = 3_600_000


class Copy(NamedTuple):
    best: bool  # the strongest copy of its transmission so far (of those whose bridge opened a window for it, if
    # any did: one that says not when it heard a frame has none): downlinks go through its bridge
    first: bool  # of the counter's first transmission, heard while the counter was new: a measure of the node's link
    again: bool  # not the first copy of its transmission: another bridge's copy came before it
    answered: bool  # an earlier copy of its transmission came from a bridge that opened a receive window for it
    over: bool = False  # its transmission took the node past twice its duty cycle over the last hour: not answered


@dataclass
class _Transmission:
    ended: float  # when it ended on air (monotonic s, estimated)
    best: tuple[bool, float]  # its best copy's (window, rssi): a bridge that can answer first, then the strongest
    first: bool
    channel: tuple[int, int]  # (sf, freq) of its first copy
    answered: bool
    over: bool


class Transmissions:
    """A radio node's transmissions as its bridges reported them, to tell what each copy is (Copy)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # counter -> its latest transmissions (PER_COUNTER): a copy belongs to whichever of them its end is near, so
        # a bridge whose clock is estimated badly starts no transmission of its own between two that are right
        self._seen: OrderedDict[int, list[_Transmission]] = OrderedDict()
        # The counters whose new transmission fit its hour: new no more, however often they come again. As the node's
        # own window keeps them (the same span; a counter behind it is never new), not among the counters kept
        # above, which a player of 64 other recordings could push one out of (an uplink ACK's, which the node's
        # window never takes, would be new again)
        self._handled = CounterWindow()
        # The node's airtime heard, each transmission at half its airtime (the 1 % hour allows it twice its own):
        # what new counters took, which decides whether a new counter is handled; and what the counters the
        # window has took again (the node's retransmissions, replays), which decides only whether they are
        # answered again. A replay cannot fill the first: it cannot silence the node's own new frames.
        self._hours: dict[bool, DutyCycle] = {}  # made at a first such transmission: a cable's node needs none
        self._latest_ms = 0

    def copy(self, counter: int, rssi: float, new: bool, channel: tuple[int, int], late_s: float | None, airtime_us: int = 0) -> Copy:
        """A copy of frame `counter` heard at `rssi` dBm on `channel` (sf, freq); `new`: its counter is new to the
        node's window (never accepted: not a retransmission of a frame the gateway has, nor a replay); `late_s`: how
        long after it ended on air its bridge reported it, which opened a receive window for it (AirTransport.late),
        or None: its bridge opened none (a report without `at`), and when it came is all there is; `airtime_us`: the
        frame's time on air, what its transmission adds to the node's hour."""
        window = late_s is not None
        ended = self._clock() - (late_s or 0.0)
        kept = self._seen.get(counter, [])
        seen = next((t for t in kept if abs(ended - t.ended) <= COPY_SPAN_S), None)
        if seen is not None:
            answered = seen.answered
            seen.answered = answered or window
            if channel != seen.channel:  # not the node's: one transmission is on one channel at one SF
                return Copy(False, False, True, answered, seen.over)
            best = (window, rssi) > seen.best
            seen.best = max(seen.best, (window, rssi))
            return Copy(best, seen.first, True, answered, seen.over)
        # New once: a counter whose first transmission was handled is never new again, even if the window did not take
        # it (an uplink ACK, a refused frame): played back, it would fill the hour that decides the node's new frames
        new = new and self._handled.check(counter) == NEW
        ended_ms = int(ended * 1000)
        over = False
        if ended_ms >= self._latest_ms - _HOUR_MS:  # one that ended over an hour before the latest is in no hour now
            self._latest_ms = max(self._latest_ms, ended_ms)
            hour = self._hours.get(new)
            if hour is None:
                hour = self._hours[new] = DutyCycle(time_off=False)  # the hour's rule alone: the node keeps its time-off
            over = not hour.spend(UPLINK_CHANNELS[0], airtime_us // 2, ended_ms)  # its uplink sub-band, whatever freq says
        if new and not over:
            self._handled.accept(counter)
        kept.append(_Transmission(ended, (window, rssi), new, channel, window, over))
        del kept[:-PER_COUNTER]
        self._seen[counter] = kept
        self._seen.move_to_end(counter)
        while len(self._seen) > KEPT:
            self._seen.popitem(last=False)
        return Copy(True, new, False, False, over)

    def counter_reset(self) -> None:
        """The node's counter was reset (a HELLO behind its window, SPEC.md §4.3): its counters start again, new to
        the gateway; what it was heard on air for stays in its hours."""
        self._seen.clear()
        self._handled = CounterWindow()
