"""The cables between emulated nodes and the ports a gateway opens: one relay thread for every line.

A `Line` joins a node's pty (its UART) to the gateway's side of the cable. What
each side sends waits in a queue until it is due and the other side can take
it; beyond RELAY_BUFFER bytes per direction the oldest are dropped, as a UART
whose receiver is not reading loses them. Whatever stands on the cable does so
through a `LineHook`: `fw emulate` uses the plain one, the HIL rig one that
applies its fault timeline, pulls cables and taps the wire.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from collections import deque

UP, DOWN = "up", "down"  # node -> gateway, gateway -> node
RELAY_BUFFER = 65536  # bytes queued per direction before the oldest are dropped
IDLE_S = 0.05  # the longest the relay sleeps: how soon it sees a due byte or a hook's change


class Line:
    """One node's cable and its two queues of (deliver_at, bytes)."""

    def __init__(self, node_fd: int, gateway_fd: int) -> None:
        self.node_fd = node_fd
        self.gateway_fd = gateway_fd  # -1: no cable; nothing passes to or from the gateway's side
        self.queues: dict[str, deque[tuple[float, bytes]]] = {UP: deque(), DOWN: deque()}
        self.queued = {UP: 0, DOWN: 0}

    def target(self, direction: str) -> int:
        return self.gateway_fd if direction == UP else self.node_fd

    def push(self, direction: str, data: bytes, at: float) -> None:
        if not data:
            return
        queue = self.queues[direction]
        queue.append((at, data))
        self.queued[direction] += len(data)
        while self.queued[direction] > RELAY_BUFFER and queue:
            _at, dropped = queue.popleft()
            self.queued[direction] -= len(dropped)

    def clear(self, direction: str) -> None:
        self.queues[direction].clear()
        self.queued[direction] = 0

    def write_due(self, direction: str, fd: int, now: float) -> None:
        queue = self.queues[direction]
        while queue and queue[0][0] <= now:
            at, data = queue[0]
            try:
                written = os.write(fd, data)
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EIO):
                    return  # full, or nobody has the port open: the bytes wait
                raise
            self.queued[direction] -= written
            if written < len(data):
                queue[0] = (at, data[written:])
                return
            queue.popleft()


class LineHook:
    """What stands on a cable. This one is a plain cable: every byte passes at once, unchanged."""

    def tick(self, line: Line, now: float) -> None:
        """Before each round, under the relay's lock: plug or pull the cable (set `gateway_fd`), add noise (`push`)."""

    def carry(self, line: Line, direction: str, data: bytes, now: float) -> tuple[bytes, float]:
        """What arrives at the other side of the cable for what was read, and when (a monotonic time)."""
        return data, now


class Relay:
    """One thread moving bytes along every line; `lock` guards what the hook reads from other threads."""

    def __init__(self, lines: list[Line], hook: LineHook | None = None) -> None:
        self.lines = lines
        self.hook = hook or LineHook()
        self.lock = threading.Lock()
        self.error: str | None = None  # the first unexpected error, for whoever reports on the run
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.once()
            except Exception as error:  # remembered and reported; the relay goes on
                if self.error is None:
                    self.error = "%s: %s" % (type(error).__name__, error)
                time.sleep(0.01)

    def once(self) -> None:
        now = time.monotonic()
        readers: dict[int, tuple[Line, str]] = {}
        writers: dict[int, tuple[Line, str]] = {}
        next_due = now + IDLE_S
        with self.lock:
            for line in self.lines:
                self.hook.tick(line, now)
                readers[line.node_fd] = (line, UP)
                if line.gateway_fd >= 0:
                    readers[line.gateway_fd] = (line, DOWN)
                for direction in (UP, DOWN):
                    queue = line.queues[direction]
                    if not queue or line.target(direction) < 0:
                        continue
                    if queue[0][0] > now:
                        next_due = min(next_due, queue[0][0])  # wake up when it is due
                    else:
                        writers[line.target(direction)] = (line, direction)  # due: select says when it can go
        readable, writable, _ = select.select(list(readers), list(writers), [], max(0.0, next_due - now))
        now = time.monotonic()
        for fd in readable:
            line, direction = readers[fd]
            try:
                data = os.read(fd, 4096)
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EIO):
                    raise
                continue  # EIO: the other end is closed (a restart); nothing to read
            data, at = self.hook.carry(line, direction, data, now)
            line.push(direction, data, at)
        for fd in writable:
            line, direction = writers[fd]
            line.write_due(direction, fd, now)
