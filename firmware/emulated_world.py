# What the emulated roles' worlds share on the unix port: the HIL drives each
# world through files in the node's data directory, read again whenever they
# change (written whole and renamed into place: a new inode is a change even
# within the same second), and the world's clock is the wall clock (Unix
# seconds), so a profile written by the HIL means the same moment to every node
# and survives a node's reboot.
import os
import time

now = time.time  # the world's clock; the emulations take another for tests (tests/portable/roles_check.py)


class WorldFile:
    # A text file of numbers the HIL writes: rows() of floats, re-read on change.
    def __init__(self, path, limit):
        self._path = path
        self._limit = limit  # rows kept at most: the node's heap is small
        self._seen = None

    def changed(self):
        try:
            stat = os.stat(self._path)
            seen = (stat[1], stat[6], stat[8])  # inode, size, mtime
        except OSError:
            seen = None
        if seen == self._seen:
            return False
        self._seen = seen
        return True

    def rows(self):
        found: list = []
        try:
            with open(self._path) as handle:
                for line in handle:
                    words = line.split("#")[0].split()
                    if words and len(found) < self._limit:
                        found.append([float(word) for word in words])
        except (OSError, ValueError) as error:
            print("edgegw-node: emulation file %s not read: %r" % (self._path, error))
        return found


class Noise:
    # Seeded and repeatable: uniform integers in [-span, span].
    def __init__(self, seed):
        self._x = (seed * 2654435761 + 1) & 0x7FFFFFFF

    def next(self, span):
        self._x = (self._x * 1103515245 + 12345) & 0x7FFFFFFF
        return (self._x >> 8) % (2 * span + 1) - span
