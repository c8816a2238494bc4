"""The counters of provisioned nodes, written before they are acknowledged: replay protection across a kill.

The node windows are folded into the store lazily (gateway/agent.py FOLD_EVERY_S): a frame the broker
confirmed moves its node's window in memory only, and after a crash a start knew only the last fold. For a
node without a key that costs a duplicate at most (SPEC.md §4.2, 5). For a node with a key it let a
recorded frame of that gap be taken as new after a restart: a replay stored again (docs/SECURITY.md).

So every counter a node with a key gets acknowledged for is appended here first: 13 bytes (node id,
counter, and whether it was a reset of the window), one write() for a burst, no fsync. A write() is in
the kernel before the ACK is queued, so a kill -9 (or an OOM kill, a crash of the interpreter) loses none;
a power cut may lose the last seconds the kernel had not written back, which docs/SECURITY.md states.
A start applies both files to the windows it loaded (`replay`). Each fold starts a new file (`rotate`)
and deletes the one before once the fold is done (`folded`): the file holds about an hour of a
provisioned node's frames, bounded by the fold.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Iterable
from pathlib import Path

from protocols import CounterWindow

log = logging.getLogger(__name__)

_RECORD = struct.Struct(">8sIB")  # node id, counter, kind
_ACCEPT, _RESET = 0, 1
NAME = "replay.journal"


class ReplayJournal:
    def __init__(self, folder: Path) -> None:
        self._current = Path(folder) / NAME
        self._older = Path(folder) / (NAME + ".1")
        self._fd: int | None = None
        self._failed = False

    def replay(self, windows: dict[str, tuple[int, int]]) -> dict[str, bool]:
        """The counters of both files accepted into these windows (node hex -> (highest, seen)). Returns the nodes
        whose windows it changed, each with whether a reset is among its records (its window then replaces the
        stored one, as a reset's does: WindowState.reset). The caller writes those windows durably before
        anything else, then `discard`s the files: a start that died before that reads them again."""
        touched: dict[str, bool] = {}
        for path in (self._older, self._current):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as error:
                log.error(
                    "%s cannot be read (%s): frames of provisioned nodes acknowledged since the last fold may be replayed once", path, error
                )
                continue
            usable = len(data) - len(data) % _RECORD.size  # a record cut short by a crash mid-write is ignored
            for node_id, counter, kind in _RECORD.iter_unpack(data[:usable]):
                name = node_id.hex()
                window = CounterWindow(*windows.get(name, (-1, 0)))
                if kind == _RESET:  # the node's counter was reset: what came before is not joined to what follows
                    window.reset(counter)
                else:
                    window.accept(counter)
                windows[name] = (window.highest, window.seen)
                touched[name] = touched.get(name, False) or kind == _RESET
        return touched

    def discard(self) -> None:
        """Both files, once the windows they changed are in the store (after `replay`)."""
        self.close()
        for path in (self._older, self._current):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def append(self, records: Iterable[tuple[bytes, int]]) -> None:
        self._write(b"".join(_RECORD.pack(node_id, counter, _ACCEPT) for node_id, counter in records))

    def reset(self, node_id: bytes, counter: int) -> None:
        """The node's window was reset to this counter (a HELLO, SPEC.md §4.3)."""
        self._write(_RECORD.pack(node_id, counter, _RESET))

    def _write(self, data: bytes) -> None:
        if not data:
            return
        try:
            if self._fd is None:
                self._fd = os.open(self._current, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(self._fd, data)
        except OSError as error:  # a full or failing disk: the frames are still acknowledged (they are safe)
            if not self._failed:
                log.error("cannot write %s (%s): a replay of frames acknowledged now is possible after a crash", self._current, error)
            self._failed = True
            return
        self._failed = False

    def rotate(self) -> None:
        """A fold begins: what comes after it goes to a new file; the older one stays until the fold is done."""
        self.close()
        if not self._current.exists():
            return
        if self._older.exists():  # the fold before failed: its counters are not in the store yet, they stay
            with open(self._older, "ab") as older:
                older.write(self._current.read_bytes())
            self._current.unlink()
            return
        os.replace(self._current, self._older)

    def folded(self) -> None:
        """The fold is done: the windows it wrote hold every counter of the older file."""
        with contextlib.suppress(FileNotFoundError):
            self._older.unlink()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
