# Small key -> bytes records in a folder of the flash filesystem (a directory
# on the unix port), one file each, replaced by rename so a reset mid-write
# leaves the old value; and the counters kept in them.
import os

from micropython import const

_BLOCK = const(64)  # counter values reserved per flash write


class Storage:
    def __init__(self, folder):
        self._folder = folder
        try:
            os.mkdir(folder)
        except OSError:
            pass

    def get(self, key):
        try:
            with open(self._folder + "/" + key, "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def put(self, key, value):
        path = self._folder + "/" + key
        with open(path + ".tmp", "wb") as handle:
            handle.write(value)
        os.rename(path + ".tmp", path)


# A counter that never repeats across reboots (frame counter: SPEC.md 4.1).
# Persisted ahead in blocks, as LoRaWAN stacks do: one flash write per
# _BLOCK values; a crash skips at most _BLOCK values, it never reuses one.
class PersistentCounter:
    def __init__(self, storage, key="counter"):
        self._storage = storage
        self._key = key
        raw = storage.get(key)
        start = int(raw) if raw else 1
        self._next = start
        self._limit = start  # nothing reserved yet

    def take(self):
        if self._next >= self._limit:
            self._limit = self._next + _BLOCK
            self._storage.put(self._key, b"%d" % self._limit)
        value = self._next
        self._next += 1
        return value & 0xFFFFFFFF

    def peek(self):
        return self._next
