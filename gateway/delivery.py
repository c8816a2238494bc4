"""A radio node's packet delivery ratio (its status `pdr`, SPEC.md §5.11): the counters heard over the air since
this gateway started, each once however late, over the span they cover (after a restart, those above the node's
window on disk).

A counter first heard as a retransmission counts: what was lost is what never arrived at all. A copy another bridge
brought does not count twice. The counters a HELLO skips are not frames lost: after a reboot a node goes on from
the counter it persisted ahead (SPEC.md §4.1). A restarted gateway leaves out the counters up to the highest of
the node's window on disk (`after`): the last run's span. A retransmission of one of them now (a frame whose ACK
the restart lost), or its first transmission behind newer frames, would stretch this run's span back over
counters it never heard: in a street-lights-radio run with a gateway SIGKILL a lamp was published at 0.31, its
first counters after the restart being 3 and 4 (a STATUS and a READINGS made at its boot that went on air behind
newer frames), while the last run had heard 6-12. The span starts at the first counter counted, not after the
window's highest: what the window does not hold (a node's ACK of a downlink enters no window) may have been heard.
But a HELLO of a node that rebooted while the gateway was down skipped from the window's highest: a late copy of a
counter sent before the reboot would otherwise count the whole skip as lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SPAN = 256  # counters the ratio remembers it heard
SKIPS_KEPT = 8  # a node's latest reboots whose skipped counters the ratio leaves out of the span


@dataclass
class DeliveryRatio:
    first: int = -1
    high: int = -1
    new: int = 0
    heard: set[int] = field(default_factory=set)  # the counters counted, the last SPAN of them
    # The latest HELLOs' skips (a reboot's counters, never sent): [first, end), and how many of them came after all
    # (sent just before the reboot, a late copy through another bridge)
    skips: list[list[int]] = field(default_factory=list)
    floor: int = -1  # counters up to this are not counted: the last run's (after)

    @classmethod
    def after(cls, counter: int) -> DeliveryRatio:
        """The ratio of a node whose counters up to `counter` a gateway run before this one had (its window on disk)."""
        return cls(floor=counter)

    def count(self, counter: int, hello: bool = False) -> None:
        """A counter heard (of a HELLO: the counters it skipped were never sent)."""
        if counter <= self.floor or counter in self.heard:
            return
        last = max(self.high, self.floor)  # after a restart a HELLO may be the first counted: it skipped from the floor
        if hello and 0 <= last < counter - 1:
            self.skips = [*self.skips[1 - SKIPS_KEPT :], [last + 1, counter, 0]]
        else:
            for skip in self.skips:
                if skip[0] <= counter < skip[1]:
                    skip[2] += 1
        self.first = counter if self.high < 0 else min(self.first, counter)
        self.high = max(self.high, counter)
        self.new += 1
        self.heard.add(counter)
        if len(self.heard) > 2 * SPAN:  # bounded: a counter this far back will not come again
            self.heard = {c for c in self.heard if c > self.high - SPAN}

    def ratio(self) -> float | None:
        """Counters heard over their span, less the skipped ones that never came, to 3 decimals; None before the first."""
        skipped = 0
        for low, end, came in self.skips:  # within the span: a skip from the floor may start below its first counter
            skipped += max(0, min(end, self.high + 1) - max(low, self.first)) - came
        span = self.high - self.first + 1 - skipped
        return round(self.new / span, 3) if self.new and span > 0 else None

    def fields(self) -> dict[str, float]:
        """The node status' `pdr`; left out before a counter was counted (after a restart, the last run's only)."""
        ratio = self.ratio()
        return {} if ratio is None else {"pdr": ratio}
