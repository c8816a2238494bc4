"""The emulated rig: real firmware on the real MicroPython VM, each node behind a faulty cable.

Per node: the node's own pty (its UART), and a `PtyCable` whose stable symlink
the gateway opens, as it would open /dev/serial/by-id/... A relay thread joins
the two through `LineFaults`, so faults land between node and gateway, and a
tap decodes what each node sends *before* the faults: the first time a sample
of the `counter` channel appeared on the wire is the moment it was produced.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from collections import deque
from pathlib import Path

from gateway.fwtools.build import build
from gateway.fwtools.emulate import EmulatedNode, micropython_command
from protocols import messages
from protocols.errors import ProtocolError
from protocols.frame import node_hex
from protocols.stream import StreamDecoder

from .faults import DOWN, UP, Fault, LineFaults
from .serial_pair import PtyCable

RELAY_BUFFER = 65536  # bytes queued per direction before the oldest are dropped (a UART nobody reads)


class WireTap:
    """What the nodes sent, decoded independently of the gateway: (node, sample number) -> first seen."""

    def __init__(self) -> None:
        self._decoders: dict[int, StreamDecoder] = {}
        self._counter_channel: dict[str, int] = {}
        self.first_seen: dict[tuple[str, int], float] = {}
        self.highest: dict[str, int] = {}  # highest frame counter seen per node
        self.counter_reuse: dict[str, int] = {}  # HELLOs whose counter was not above everything seen before
        self._hello_counters: dict[str, set[int]] = {}
        self.lock = threading.Lock()

    def feed(self, index: int, data: bytes, at: float) -> None:
        decoder = self._decoders.setdefault(index, StreamDecoder())
        decoder.feed(data)
        for event in decoder.drain():
            if isinstance(event, ProtocolError):
                continue  # the node's own bytes are clean: nothing to count here
            node = node_hex(event.node_id)
            seen = self._hello_counters.setdefault(node, set())
            if event.type == messages.HELLO and event.counter not in seen:  # a new HELLO, not a resent one
                seen.add(event.counter)
                if node in self.highest and event.counter <= self.highest[node]:
                    self.counter_reuse[node] = self.counter_reuse.get(node, 0) + 1  # a reboot that re-numbered frames
                names = [channel["name"] for channel in event.fields["channels"]]
                if "counter" in names:
                    self._counter_channel[node] = names.index("counter")
            self.highest[node] = max(event.counter, self.highest.get(node, -1))
            if event.type == messages.READINGS and node in self._counter_channel:
                channel = self._counter_channel[node]
                samples = event.fields["samples"]
                with self.lock:
                    for position in range(0, len(samples), 3):
                        if samples[position] == channel:
                            self.first_seen.setdefault((node, int(samples[position + 1])), at)

    def snapshot(self) -> dict[tuple[str, int], float]:
        with self.lock:
            return dict(self.first_seen)


class _Line:
    """One node's cable and its two queues of (deliver_at, bytes)."""

    def __init__(self, node: EmulatedNode, cable: PtyCable, faults: LineFaults) -> None:
        self.node = node
        self.cable = cable
        self.faults = faults
        self.queues: dict[str, deque[tuple[float, bytes]]] = {UP: deque(), DOWN: deque()}
        self.queued = {UP: 0, DOWN: 0}
        self.forced_unplug = False

    def push(self, direction: str, data: bytes, at: float) -> None:
        if not data:
            return
        queue = self.queues[direction]
        queue.append((at, data))
        self.queued[direction] += len(data)
        while self.queued[direction] > RELAY_BUFFER and queue:
            _at, dropped = queue.popleft()
            self.queued[direction] -= len(dropped)

    def target(self, direction: str) -> int:
        return self.cable.master if direction == UP else self.node.node_master


class EmulatedRig:
    """N emulated nodes, each behind its own faulty cable; start, begin the timeline, stop."""

    target = "emulated"
    measures_latency = True

    def __init__(
        self,
        workdir: Path,
        count: int,
        *,
        interval: float = 1.0,
        heap: str = "128k",
        seed: int = 1,
        status_interval: float = 30.0,
        faults: list[Fault] | tuple[Fault, ...] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.interval = interval
        self.heap = heap
        self.status_interval = status_interval
        self.bundle = self.workdir / "bundle"
        self.nodes = [EmulatedNode(index, seed + index, self.workdir / ("node%d" % index)) for index in range(count)]
        self._faults = list(faults)
        self._seed = seed
        self._lines: list[_Line] = []
        self.tap = WireTap()
        self.t0: float | None = None  # the timeline's zero; no fault before begin()
        self._stop = threading.Event()
        self._relay: threading.Thread | None = None
        self._lock = threading.Lock()
        self.relay_error: str | None = None  # the first unexpected error of the relay thread, for the report

    @property
    def ports(self) -> list[str]:
        return [str(line.cable.link_path) for line in self._lines]

    def start(self) -> None:
        build(self.bundle, emulator=True)
        micropython_command()
        for node in self.nodes:
            node.open_uart()
            cable = PtyCable(self.workdir / ("tty-node%d" % node.index))
            self._lines.append(_Line(node, cable, LineFaults(self._faults, node.index, self._seed)))
        self._relay = threading.Thread(target=self._relay_forever, name="hil-relay", daemon=True)
        self._relay.start()
        for node in self.nodes:
            node.spawn(self.bundle, self.heap, self.interval, self.status_interval)

    def begin(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return 0.0 if self.t0 is None else time.monotonic() - self.t0

    def reboot(self, index: int) -> None:
        """The node's process is stopped and booted again; its flash (counters) is kept, its RAM (the ring) is not."""
        node = self.nodes[index]
        node.terminate()
        node.spawn(self.bundle, self.heap, self.interval, self.status_interval)

    def unplug(self, index: int) -> None:
        with self._lock:
            self._lines[index].forced_unplug = True

    def replug(self, index: int) -> None:
        with self._lock:
            self._lines[index].forced_unplug = False

    def produced(self, deliveries: list[tuple[str, int, float]]) -> dict[tuple[str, int], float]:
        """What the tap saw leave the nodes (the deliveries are not needed: the wire says it all)."""
        return self.tap.snapshot()

    def not_applicable(self, fault: Fault) -> str | None:
        return None  # every fault can be applied to an emulated rig

    def line_damage(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for line in self._lines:
            for key, value in line.faults.damage.items():
                total[key] = total.get(key, 0) + value
        return total

    def counter_reuse(self) -> dict[str, int]:
        return dict(self.tap.counter_reuse)

    def stop(self) -> None:
        self._stop.set()
        if self._relay is not None:
            self._relay.join(3)
        for line in self._lines:
            line.node.close()
            line.cable.close()

    # ------------------------------------------------------------ the relay

    def _plug_state(self, line: _Line, t: float | None) -> None:
        unplugged = line.forced_unplug or (t is not None and line.faults.unplugged(t))
        if unplugged and line.cable.plugged:
            line.cable.unplug()
            line.queues[UP].clear()
            line.queued[UP] = 0
        elif not unplugged and not line.cable.plugged:
            line.cable.plug()

    def _relay_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self._relay_once()
            except Exception as error:  # remembered and reported by the runner; the relay goes on
                if self.relay_error is None:
                    self.relay_error = "%s: %s" % (type(error).__name__, error)
                time.sleep(0.01)

    def _relay_once(self) -> None:
        now = time.monotonic()
        t = None if self.t0 is None else now - self.t0
        readers: dict[int, tuple[_Line, str]] = {}
        writers: dict[int, tuple[_Line, str]] = {}
        next_due = now + 0.05
        with self._lock:
            for line in self._lines:
                self._plug_state(line, t)
                readers[line.node.node_master] = (line, UP)
                if line.cable.plugged:
                    readers[line.cable.master] = (line, DOWN)
                for direction in (UP, DOWN):
                    if t is not None and (direction == DOWN or line.cable.plugged):
                        line.push(direction, line.faults.garbage(direction, t), now)  # no cable, no noise on it
                    queue = line.queues[direction]
                    if not queue:
                        continue
                    if queue[0][0] > now:
                        next_due = min(next_due, queue[0][0])  # wake up when it is due
                    elif direction == DOWN or line.cable.plugged:
                        writers[line.target(direction)] = (line, direction)  # due: select says when it can go
        timeout = max(0.0, min(0.05, next_due - now))
        readable, writable, _ = select.select(list(readers), list(writers), [], timeout)
        now = time.monotonic()
        t = None if self.t0 is None else now - self.t0
        for fd in readable:
            line, direction = readers[fd]
            try:
                data = os.read(fd, 4096)
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EIO):
                    raise
                continue  # EIO: the gateway side is closed (a restart); nothing to read
            if direction == UP:
                self.tap.feed(line.node.index, data, now)
                if not line.cable.plugged:
                    continue  # a cable that is not there carries nothing
            if t is None:
                line.push(direction, data, now)
            else:
                damaged, deliver_at = line.faults.process(direction, data, t)
                line.push(direction, damaged, now + (deliver_at - t))
        for fd in writable:
            line, direction = writers[fd]
            self._write_due(line, direction, fd, now)

    @staticmethod
    def _write_due(line: _Line, direction: str, fd: int, now: float) -> None:
        queue = line.queues[direction]
        while queue and queue[0][0] <= now:
            at, data = queue[0]
            try:
                written = os.write(fd, data)
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EIO):
                    return  # full, or nobody has the port open: the bytes wait
                raise
            line.queued[direction] -= written
            if written < len(data):
                queue[0] = (at, data[written:])
                return
            queue.popleft()
