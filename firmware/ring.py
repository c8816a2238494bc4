# Frames kept until the gateway acknowledges them, retransmitted with backoff.
# Bounded: when full the oldest is dropped and counted (reported in STATUS).
# Index-aligned lists, oldest first: no per-frame dict or tuple on the heap;
# a frame is kept as the very bytes that were sent, never copied.
import time

from micropython import const

_FIRST_RETRY_MS = const(2000)
_MAX_RETRY_MS = const(60000)


class Ring:
    def __init__(self, capacity):
        self.capacity = capacity
        self._counters = []
        self._wires = []  # wire bytes, resent unchanged
        self._due = []  # ticks_ms when due again
        self._delays = []  # current retry delay, ms
        self.dropped = 0
        self.retransmits = 0

    def oldest(self):
        return self._counters[0] if self._counters else None

    def add(self, counter, wire, now):
        # now: time.ticks_ms()
        if len(self._counters) >= self.capacity:
            self.drop_oldest()
        kept = len(self._counters)
        try:
            self._counters.append(counter)
            self._wires.append(wire)
            self._due.append(time.ticks_add(now, _FIRST_RETRY_MS))
            self._delays.append(_FIRST_RETRY_MS)
        except MemoryError:  # a list could not grow: all four stay as they were, aligned
            for column in (self._counters, self._wires, self._due, self._delays):
                del column[kept:]
            raise

    def drop_oldest(self):
        # Full ring, or a heap too full to go on: the oldest frame gives way, counted.
        if self._counters:
            self.forget(self._counters[0])
            self.dropped += 1

    def holds(self, counter):
        return counter in self._counters

    def forget(self, counter):
        if counter not in self._counters:
            return False
        index = self._counters.index(counter)
        for column in (self._counters, self._wires, self._due, self._delays):
            column.pop(index)
        return True

    def due(self, now, jitter):
        # Frames whose retry time has come, oldest first; reschedules them with
        # doubling delays and +-25 % jitter (SPEC.md 4.2).
        out = []
        for index in range(len(self._counters)):
            if time.ticks_diff(now, self._due[index]) >= 0:
                delay = min(self._delays[index] * 2, _MAX_RETRY_MS)
                self._delays[index] = delay
                self._due[index] = time.ticks_add(now, delay - delay // 4 + jitter(delay // 2))
                self.retransmits += 1
                out.append(self._wires[index])
        return out
