# Frames kept until the gateway acknowledges them, retransmitted with backoff.
# Bounded: when full the oldest is dropped and counted (reported in STATUS).
import time

from micropython import const

_FIRST_RETRY_MS = const(2000)
_MAX_RETRY_MS = const(60000)


class Ring:
    def __init__(self, capacity):
        self.capacity = capacity
        self._counters = []  # oldest first; at most capacity entries
        self._frames = {}  # counter -> wire bytes (RETRY flag set for resends)
        self._due = {}  # counter -> ticks_ms when it is due again
        self._delay = {}
        self.dropped = 0
        self.retransmits = 0

    def __len__(self):
        return len(self._counters)

    def oldest(self):
        return self._counters[0] if self._counters else None

    def add(self, counter, wire, now):
        # now: time.ticks_ms()
        if len(self._counters) >= self.capacity:
            self.forget(self._counters[0])
            self.dropped += 1
        self._counters.append(counter)
        self._frames[counter] = wire
        self._due[counter] = time.ticks_add(now, _FIRST_RETRY_MS)
        self._delay[counter] = _FIRST_RETRY_MS

    def holds(self, counter):
        return counter in self._frames

    def forget(self, counter):
        if counter in self._frames:
            self._counters.remove(counter)
            del self._frames[counter]
            del self._due[counter]
            del self._delay[counter]
            return True
        return False

    def due(self, now, jitter):
        # Frames whose retry time has come, oldest first; reschedules them with
        # doubling delays and +-25 % jitter (SPEC.md 4.2).
        out = []
        for counter in self._counters:
            if time.ticks_diff(now, self._due[counter]) >= 0:
                delay = min(self._delay[counter] * 2, _MAX_RETRY_MS)
                self._delay[counter] = delay
                self._due[counter] = time.ticks_add(now, delay - delay // 4 + jitter(delay // 2))
                self.retransmits += 1
                out.append(self._frames[counter])
        return out
