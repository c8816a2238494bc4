"""The emulated world of a city scenario: node roles at boot, and the files the roles' emulations read and write.

The firmware's emulations on the unix port (firmware/emulated_*.py, ROLES-API.md)
work through each node's data directory, on the wall clock (Unix seconds), so
a timeline written here means the same moment to every node and survives a
node's reboot:

- `node.json`   {"role": ...} read at boot (the board's configuration file);
- `water.txt`   a gauge's stream: lines "UNIX_SECONDS LEVEL_MM", straight lines between them;
- `cars.txt`    a parking bay: lines "ARRIVE DEPART" (Unix seconds; no DEPART: the car stays);
- `lamp.fault`  a street light's lamp has failed while it exists;
- `lamp.log`    written by the lamp: "UNIX_MS LEVEL" each time its level changes (its own record).

What the world did is read back from those same files (the lamp's log; the
profile and the cars the nodes were given), never from the plan in memory.
Times are converted to this process's monotonic clock (hil/capture.py's).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .timeline import WorldStep

GAUGE_MARK_MM = 1500  # firmware/roles/gauge.py's flood mark and hysteresis until set_threshold
GAUGE_HYST_MM = 50
MANOEUVRE_S = 2.0  # firmware/emulated_cars.py: parking takes this long; a car stays at least 3 of these
FIRMWARE_ROLE = {"sensor": None, "streetlight": "streetlight", "gauge": "gauge", "parking": "parking"}


def prepare_node(data_dir: Path, role: str, config: dict[str, Any]) -> None:
    """The node's configuration file, before it boots (a sensor node without a role keeps the classic firmware)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(config)
    if FIRMWARE_ROLE[role] is not None:
        settings["role"] = FIRMWARE_ROLE[role]
    if settings:
        _write(data_dir / "node.json", json.dumps(settings))


def _write(path: Path, text: str) -> None:
    """Whole and renamed into place: a node never reads half a file, and a new inode is a change it notices."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Clock:
    """Wall clock <-> monotonic, fixed once: the nodes stamp wall time, the capture monotonic time."""

    wall0: float = field(default_factory=time.time)
    mono0: float = field(default_factory=time.monotonic)

    def wall(self, mono: float) -> float:
        return self.wall0 + (mono - self.mono0)

    def mono(self, wall: float) -> float:
        return self.mono0 + (wall - self.wall0)


def water_profile(step: WorldStep, order: int, start_wall: float) -> list[tuple[float, float]]:
    """A wave on one gauge (the order-th down the stream): base, a straight rise to the crest, a fall back."""
    begin = start_wall + step.at + step.stagger_s * order
    half = step.duration / 2
    base, peak = step.base_m * 1000, step.peak_m * 1000
    return [(begin, base), (begin + half, peak), (begin + step.duration, base)]


def car_plan(step: WorldStep, nodes: tuple[int, ...], start_wall: float, seed: int) -> dict[int, list[tuple[float, float | None]]]:
    """Which bays change (fraction of them) and when, seeded: arrivals spread over the step's window, each car
    staying long enough to be seen parked (3 manoeuvres at least) before it leaves, if it leaves."""
    rng = random.Random(seed * 7919 + int(step.at * 1000))
    chosen = sorted(rng.sample(list(nodes), round(len(nodes) * step.fraction)))
    plan: dict[int, list[tuple[float, float | None]]] = {}
    window = max(step.duration, 0.001)
    for index in chosen:
        cars: list[tuple[float, float | None]] = []
        t = start_wall + step.at + rng.uniform(0, window / step.changes)
        for change in range(0, step.changes, 2):
            leaves = change + 1 < step.changes
            stay = rng.uniform(3 * MANOEUVRE_S, 3 * MANOEUVRE_S + window / step.changes) if leaves else None
            cars.append((t, t + stay if stay is not None else None))
            if stay is not None:
                t += stay + 3 * MANOEUVRE_S + rng.uniform(0, window / step.changes)
        plan[index] = cars
    return plan


class World:
    """Writes a scenario's world timeline for its nodes and reads back what happened."""

    def __init__(self, steps: list[WorldStep], node_dirs: list[Path], roles: list[str], seed: int) -> None:
        self.steps = steps
        self.node_dirs = node_dirs
        self.roles = roles
        self.seed = seed
        self.clock = Clock()

    def begin(self, start_mono: float) -> list[tuple[float, Any]]:
        """Write the profiles and the cars for the whole timeline (t = 0 is start_mono); the actions that must
        happen at their moment (lamp failures), as (seconds into the timeline, callable)."""
        start_wall = self.clock.wall(start_mono)
        water: dict[int, list[tuple[float, float]]] = {}
        cars: dict[int, list[tuple[float, float | None]]] = {}
        actions: list[tuple[float, Any]] = []
        for step in self.steps:
            if step.kind == "water_wave":
                for order, index in enumerate(step.nodes):
                    water.setdefault(index, []).extend(water_profile(step, order, start_wall))
            elif step.kind == "cars":
                for index, planned in car_plan(step, step.nodes, start_wall, self.seed).items():
                    cars.setdefault(index, []).extend(planned)
            elif step.kind == "lamp_failure":
                for index in step.nodes:
                    actions.append((step.at, lambda path=self.node_dirs[index] / "lamp.fault": path.write_text("failed\n")))
        for index, points in water.items():
            _write(self.node_dirs[index] / "water.txt", "".join("%.3f %.0f\n" % point for point in sorted(points)))
        for index, planned in cars.items():
            lines = ["%.3f %.3f\n" % (a, d) if d is not None else "%.3f\n" % a for a, d in sorted(planned, key=lambda c: c[0])]
            _write(self.node_dirs[index] / "cars.txt", "".join(lines))
        return actions

    # What happened, from the files.

    def lamp_levels(self, index: int) -> list[tuple[float, int]]:
        """The lamp's own record: (monotonic time, level) per change of level."""
        return [(self.clock.mono(ms / 1000), int(level)) for ms, level in _rows(self.node_dirs[index] / "lamp.log")]

    def flood_changes(self, index: int, mark_mm: int = GAUGE_MARK_MM, hyst_mm: int = GAUGE_HYST_MM) -> list[tuple[float, int]]:
        """When the stream the gauge was given crossed its flood mark (1) and fell back under mark - hysteresis (0)."""
        return [(self.clock.mono(at), state) for at, state in crossings(_rows(self.node_dirs[index] / "water.txt"), mark_mm, hyst_mm)]

    def bay_changes(self, index: int) -> list[tuple[float, int]]:
        """When a car arrived on the bay (1) and left it (0), as the bay's file has it."""
        changes = []
        for row in _rows(self.node_dirs[index] / "cars.txt"):
            changes.append((self.clock.mono(row[0]), 1))
            if len(row) > 1:
                changes.append((self.clock.mono(row[1]), 0))
        return sorted(changes)

    def lamp_failures(self, index: int) -> list[tuple[float, int]]:
        path = self.node_dirs[index] / "lamp.fault"
        return [(self.clock.mono(path.stat().st_mtime), 0)] if path.exists() else []


def crossings(points: list[list[float]], mark_mm: float, hyst_mm: float) -> list[tuple[float, int]]:
    """Where a piecewise-linear level (wall seconds, mm) reaches the mark going up and falls under mark - hyst going down."""
    out: list[tuple[float, int]] = []
    state = 1 if points and points[0][1] >= mark_mm else 0
    for (t0, mm0), (t1, mm1) in itertools.pairwise(points):
        if t1 <= t0:
            continue
        if not state and mm1 >= mark_mm > mm0:
            out.append((t0 + (t1 - t0) * (mark_mm - mm0) / (mm1 - mm0), 1))
            state = 1
        if state and mm1 < mark_mm - hyst_mm <= mm0:
            out.append((t0 + (t1 - t0) * (mm0 - (mark_mm - hyst_mm)) / (mm0 - mm1), 0))
            state = 0
    return out


def _rows(path: Path) -> list[list[float]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        words = line.split("#")[0].split()
        if words:
            rows.append([float(word) for word in words])
    return rows
