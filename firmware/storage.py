# Small key -> bytes records in a folder of the flash filesystem (a directory
# on the unix port), one file each, replaced by rename so a reset mid-write
# leaves the old value; and the counters kept in them. Flash still goes bad
# (worn cells, an erased block, a file cut short): a record that cannot be
# read back as written is reported and the node goes on with defaults.
import json
import os

from micropython import const

_BLOCK = const(64)  # counter values reserved per flash write
_CHECK = const(0xFFFFFFFF)  # a counter record holds its value and the value XOR this: a damaged record shows
_FRESH = const(0x80000000)  # where a counter goes when its record is damaged (see PersistentCounter)
_ENOENT = const(2)  # errno: no such file
_END = const(0x100000000)  # a counter that reached this has no value left (SPEC.md 4.1)


def report(key, why):
    print("edgegw-node: bad flash record %s (%s): defaults used" % (key, why))


class Storage:
    def __init__(self, folder):
        self.folder = folder
        try:
            os.mkdir(folder)
        except OSError:
            pass

    def get(self, key):
        # The record, or None if there is none; one that is there but cannot be
        # read raises OSError.
        try:
            with open(self.folder + "/" + key, "rb") as handle:
                return handle.read()
        except OSError as error:
            if error.errno == _ENOENT:
                return None
            raise

    def put(self, key, value):
        path = self.folder + "/" + key
        with open(path + ".tmp", "wb") as handle:
            handle.write(value)
        os.rename(path + ".tmp", path)

    def remove(self, key):
        # The record gone; none there is no error.
        try:
            os.remove(self.folder + "/" + key)
        except OSError as error:
            if error.errno != _ENOENT:
                raise

    def settings(self, key):
        # A JSON map of settings ({} if none); a damaged one is reported and reads as {}.
        try:
            raw = self.get(key)
            value = {} if raw is None else json.loads(raw)
            if isinstance(value, dict):
                return value
            error = "not a map"
        except (OSError, ValueError) as caught:
            error = repr(caught)
        report(key, error)
        return {}


def _parse(raw):
    value, check = raw.split()  # ValueError unless exactly two fields
    value = int(value)
    if int(check) != value ^ _CHECK or not 1 <= value <= _END:
        raise ValueError("counter record %r" % raw[:24])
    return value


# A counter that never repeats across reboots (frame counter: SPEC.md 4.1).
# Persisted ahead in blocks, as LoRaWAN stacks do: one flash write per
# _BLOCK values; a crash skips at most _BLOCK values, it never reuses one.
# The blocks go to two records in turn (KEY and KEY.2), the first block after a
# boot to both, so the newest limit is in one and the one before it, at most a
# block lower, in the other: if one record is damaged, the other plus a block
# is still ahead of every value handed out.
class PersistentCounter:
    def __init__(self, storage, key="counter"):
        self._storage = storage
        self._keys = (key, key + ".2")
        found = []
        damaged = 0
        for name in self._keys:
            try:
                raw = storage.get(name)
                if raw is not None:
                    found.append(_parse(raw))
            except (OSError, ValueError) as error:
                report(name, repr(error))
                damaged += 1
        if not damaged:
            start = max(found) if found else 1  # a missing KEY.2: the first block was never followed by a second
        elif found:
            start = min(found[0] + _BLOCK, _END)  # the damaged one may have held the newest limit, at most a block higher
        else:
            # Both unreadable: the values used before are unknown, and reusing one would
            # let the gateway take new frames for duplicates of old ones (acknowledged,
            # never stored). A node counts at most a frame or two a second, so in a
            # lifetime it stays far below 2^31: the counter moves there, ahead of
            # anything it used, and the gateway accepts what follows as new without any
            # reset. Only both records damaged again after such a move can repeat values.
            start = _FRESH
        self._next = start
        self._limit = start  # nothing reserved yet
        self._turn = -1  # the first block goes to both records

    def take(self):
        # The next value, or None when none is left (_END reached).
        if self._next >= self._limit:
            if self._next >= _END:
                return None
            limit = min(self._next + _BLOCK, _END)
            # On flash before it counts: if the write fails (a MemoryError, a full or
            # failing flash) no value of the new block has been handed out.
            record = b"%d %d" % (limit, limit ^ _CHECK)
            for index in (0, 1) if self._turn < 0 else (self._turn,):
                self._storage.put(self._keys[index], record)
            self._turn = 0 if self._turn < 0 else self._turn ^ 1
            self._limit = limit
        value = self._next
        self._next += 1
        return value

    def peek(self):
        return self._next
