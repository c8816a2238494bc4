"""The emulated rig: real firmware on the real MicroPython VM, each node behind a faulty cable.

Per node: the node's own pty (its UART), and a `PtyCable` whose stable symlink
the gateway opens, as it would open /dev/serial/by-id/... The relay that `fw
emulate` uses (gateway/fwtools/relay.py) joins the two, with a hook that applies
`LineFaults`, so faults land between node and gateway, and a tap decodes what
each node sends *before* the faults: the first time a sample
of the `counter` channel appeared on the wire is the moment it was produced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.fwtools.build import build
from gateway.fwtools.emulate import EmulatedNode, micropython_command
from gateway.fwtools.relay import Line, LineHook, Relay
from protocols import messages
from protocols.errors import ProtocolError
from protocols.frame import F_PRIORITY, node_hex
from protocols.stream import StreamDecoder

from .faults import DOWN, UP, Fault, LineFaults
from .serial_pair import PtyCable


class WireTap:
    """What the nodes sent, decoded independently of the gateway: (node, sample number) -> first seen."""

    def __init__(self, key_of: Callable[[bytes], object] | None = None) -> None:
        self._key_of = key_of  # node id -> its key(s), for nodes whose frames are tagged (StreamDecoder's)
        self._decoders: dict[int, StreamDecoder] = {}
        self._counter_channel: dict[str, int] = {}
        self.first_seen: dict[tuple[str, int], float] = {}
        self.highest: dict[str, int] = {}  # highest frame counter seen per node
        self.counter_reuse: dict[str, int] = {}  # HELLOs whose counter was not above everything seen before
        self._hello_counters: dict[str, set[int]] = {}
        self.events: dict[tuple[str, int], float] = {}  # (node, frame counter) of a PRIORITY READINGS -> first seen
        # (node, the event's time as the gateway will publish it: base_time + the first sample's offset, to the ms) ->
        # first seen; a frame without base_time (sent before the node had the time: the gateway dates it on arrival)
        # by ("frame", its counter)
        self.moments: dict[tuple[str, object], float] = {}
        self.lock = threading.Lock()

    def feed(self, index: int, data: bytes, at: float) -> None:
        decoder = self._decoders.setdefault(index, StreamDecoder(self._key_of))
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
            if event.type == messages.READINGS and event.flags & F_PRIORITY:
                fields = event.fields
                moment: object = ("frame", event.counter)
                if "base_time" in fields and fields["samples"]:
                    moment = round(fields["base_time"] + fields["samples"][2], 3)
                with self.lock:
                    self.events.setdefault((node, event.counter), at)
                    self.moments.setdefault((node, moment), at)
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

    def event_moments(self) -> dict[tuple[str, object], float]:
        """Every distinct event the nodes sent, by the time it carries (two event frames of one node with one time are
        one event to a subscriber): (node, time) -> first seen."""
        with self.lock:
            return dict(self.moments)

    def events_sent(self) -> dict[tuple[str, int], float]:
        """Every event frame the nodes sent (resent copies once): (node, frame counter) -> first seen."""
        with self.lock:
            return dict(self.events)


class _Line(Line):
    """One node's cable, with the faults of its timeline."""

    def __init__(self, node: EmulatedNode, cable: PtyCable, faults: LineFaults) -> None:
        super().__init__(node.node_master, cable.master)
        self.node = node
        self.cable = cable
        self.faults = faults
        self.forced_unplug = False


class _FaultyCables(LineHook):
    """The rig on the shared relay: the tap reads what each node sends before the
    faults, then the fault timeline damages, delays, adds noise and pulls cables."""

    def __init__(self, rig: EmulatedRig) -> None:
        self.rig = rig

    def tick(self, line: Line, now: float) -> None:
        assert isinstance(line, _Line)
        t = self.rig.timeline(now)
        unplugged = line.forced_unplug or (t is not None and line.faults.unplugged(t))
        if unplugged and line.cable.plugged:
            line.cable.unplug()
            line.clear(UP)
        elif not unplugged and not line.cable.plugged:
            line.cable.plug()
        line.gateway_fd = line.cable.master
        if t is not None:
            for direction in (UP, DOWN):
                if direction == DOWN or line.cable.plugged:  # no cable, no noise on it
                    line.push(direction, line.faults.garbage(direction, t), now)

    def carry(self, line: Line, direction: str, data: bytes, now: float) -> tuple[bytes, float]:
        assert isinstance(line, _Line)
        if direction == UP:
            self.rig.tap.feed(line.node.index, data, now)
            if not line.cable.plugged:
                return b"", now  # a cable that is not there carries nothing
        t = self.rig.timeline(now)
        if t is None:
            return data, now
        damaged, deliver_at = line.faults.process(direction, data, t)
        return damaged, now + (deliver_at - t)


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
        roles: list[str] | None = None,
        role_config: list[dict[str, Any]] | None = None,
        intervals: list[float] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.interval = interval
        self.heap = heap
        self.status_interval = status_interval
        self.bundle = self.workdir / "bundle"
        self.roles = roles or ["sensor"] * count  # per node (hil/timeline.py ROLES); node.json is written at open_uart()
        settings = role_config or [{} for _ in range(count)]
        self.nodes = [
            EmulatedNode(index, seed + index, self.workdir / ("node%d" % index), self.roles[index], dict(settings[index]))
            for index in range(count)
        ]
        self.intervals = intervals or [interval] * count  # per node
        self._faults = list(faults)
        self._seed = seed
        self._lines: list[_Line] = []
        self.tap = WireTap()
        self.t0: float | None = None  # the timeline's zero; no fault before begin()
        self._relay = Relay([], _FaultyCables(self))

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
        self._relay.lines = list(self._lines)
        self._relay.start()
        for node in self.nodes:
            node.spawn(self.bundle, self.heap, self.intervals[node.index], self.status_interval)

    def begin(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return 0.0 if self.t0 is None else time.monotonic() - self.t0

    def timeline(self, now: float) -> float | None:
        """Seconds since begin() at monotonic time now; None before it (no faults yet)."""
        return None if self.t0 is None else now - self.t0

    @property
    def relay_error(self) -> str | None:
        """The first unexpected error of the relay thread, for the report."""
        return self._relay.error

    def reboot(self, index: int) -> None:
        """The node's process is stopped and booted again; its flash (counters) is kept, its RAM (the ring) is not."""
        node = self.nodes[index]
        node.terminate()
        node.spawn(self.bundle, self.heap, self.intervals[index], self.status_interval)

    def unplug(self, index: int) -> None:
        with self._relay.lock:
            self._lines[index].forced_unplug = True

    def replug(self, index: int) -> None:
        with self._relay.lock:
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

    def keys(self) -> dict[str, bytes]:
        return {}  # its nodes are not provisioned: their frames need no tag

    def stop(self) -> None:
        self._relay.stop()
        for line in self._lines:
            line.node.close()
            line.cable.close()
