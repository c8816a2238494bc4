"""Duplicate suppression by frame counter (SPEC.md §4).

Per sender: the highest counter seen and a bitmap of the WINDOW counters below
it, as in IPsec anti-replay. Small enough to persist per node, exact within the
window, and it tolerates frames that arrive out of order after a retransmission.
"""

from ._compat import const
from .frame import WINDOW

NEW = const(0)  # never seen: accept
DUPLICATE = const(1)  # seen before: acknowledge again, do not store again
STALE = const(2)  # more than WINDOW behind the highest: replay, or the node lost its counter


class CounterWindow:
    def __init__(self, highest: int = -1, seen: int = 0) -> None:
        self.highest = highest  # -1: nothing seen yet
        self.seen = seen  # bit i set: counter (highest - i) was seen; bit 0 is highest itself

    def check(self, counter: int) -> int:
        if counter > self.highest:
            return NEW
        behind = self.highest - counter
        if behind >= WINDOW:
            return STALE
        return DUPLICATE if (self.seen >> behind) & 1 else NEW

    def accept(self, counter: int) -> None:
        """Record a counter that check() called NEW (or a counter reset after STALE)."""
        if counter > self.highest:
            shift = counter - self.highest
            self.seen = ((self.seen << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            self.highest = counter
        elif self.highest - counter < WINDOW:
            self.seen |= 1 << (self.highest - counter)
        # else: too far behind to remember; check() calls such a counter STALE anyway

    def reset(self, counter: int) -> None:
        """Forget the history: the node rebooted with a lost counter and said HELLO (SPEC.md §4.3)."""
        self.highest = counter
        self.seen = 1
