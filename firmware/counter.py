# A counter that never repeats across reboots (frame counter: SPEC.md 4.1).
# Persisted ahead in blocks, as LoRaWAN stacks do: one flash write per
# _BLOCK frames; a crash skips at most _BLOCK values, it never reuses one.
from micropython import const

_BLOCK = const(64)


class PersistentCounter:
    def __init__(self, storage, key="counter"):
        self._storage = storage
        self._key = key
        raw = storage.get(key)
        start = int(raw) if raw else 1
        self._next = start
        self._limit = start  # nothing reserved yet
        self.writes = 0

    def take(self):
        if self._next >= self._limit:
            self._limit = self._next + _BLOCK
            self._storage.put(self._key, b"%d" % self._limit)
            self.writes += 1
        value = self._next
        self._next += 1
        return value & 0xFFFFFFFF

    def peek(self):
        return self._next
