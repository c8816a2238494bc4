# What the emulated roles' worlds share on the unix port: the HIL drives each
# world through a file of numbers in the node's data directory, read again
# whenever it changes (written whole and renamed into place: a new inode is a
# change even within the same second), and the world's clock is the wall clock
# (Unix seconds), so a profile written by the HIL means the same moment to every
# node and survives a node's reboot. One base class, so an emulated device is
# one object on the node's small heap.
import os
import time

from micropython import const

_ROWS = const(64)  # rows kept at most


class World:
    def __init__(self, path, seed, clock=time.time):  # tests pass another clock (tests/portable/roles_check.py)
        self._path = path
        self._clock = clock
        self._seen = None
        self.rows = []  # the file's lines as lists of floats ("#" starts a comment)
        self.seed = seed
        self._x = (seed * 2654435761 + 1) & 0x7FFFFFFF

    def now(self):
        # The world's time, after reading the file again if it changed.
        try:
            stat = os.stat(self._path)
            seen = (stat[1], stat[6], stat[8])  # inode, size, mtime
        except OSError:
            seen = None
        if seen != self._seen:
            self._seen = seen
            self.rows = []
            try:
                with open(self._path) as handle:
                    for line in handle:
                        words = line.split("#")[0].split()
                        if words and len(self.rows) < _ROWS:
                            self.rows.append([float(word) for word in words])
            except (OSError, ValueError) as error:
                print("edgegw-node: emulation file %s not read: %r" % (self._path, error))
        return self._clock()

    def noise(self, span):
        # Seeded and repeatable: a uniform integer in [-span, span].
        self._x = (self._x * 1103515245 + 12345) & 0x7FFFFFFF
        return (self._x >> 8) % (2 * span + 1) - span
