"""The emulated world of a city scenario: its timeline written for the roles' emulations, and what happened read back.

The firmware's emulations on the unix port (firmware/emulated_*.py, ROLES-API.md)
work through each node's data directory on the wall clock (Unix seconds);
gateway/fwtools/world.py writes and reads those files (water.txt, cars.txt,
lamp.fault, lamp.log). This module turns the scenario's [[world]] steps into
them, and reads back what the world did: the lamps' own record of their level
changes, and the profile and the cars the nodes were actually given (the
files, never the plan in memory). Times are converted to this process's
monotonic clock (hil/capture.py's).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from gateway.fwtools import world as fw_world

from .timeline import WorldStep

GAUGE_MARK_MM = 1500  # firmware/roles/gauge.py's flood mark and hysteresis until set_threshold
GAUGE_HYST_MM = 50
MANOEUVRE_S = 2.0  # firmware/emulated_parking.py: parking takes this long; a car stays at least 3 of these


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
    return fw_world.flood_wave(begin, step.base_m * 1000, step.peak_m * 1000, step.duration / 2, step.duration / 2)


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
                    actions.append((step.at, partial(fw_world.fail_lamp, self.node_dirs[index])))
        for index, points in water.items():
            fw_world.set_water(self.node_dirs[index], sorted(points))
        for index, planned in cars.items():
            fw_world.set_cars(self.node_dirs[index], sorted(planned, key=lambda car: car[0]))
        return actions

    # What happened, from the files.

    def lamp_levels(self, index: int) -> list[tuple[float, int]]:
        """The lamp's own record: (monotonic time, level) per change of level."""
        return [(self.clock.mono(ms / 1000), level) for ms, level in fw_world.lamp_levels(self.node_dirs[index])]

    def flood_changes(self, index: int, mark_mm: int = GAUGE_MARK_MM, hyst_mm: int = GAUGE_HYST_MM) -> list[tuple[float, int]]:
        """When the stream the gauge was given reached its flood mark (1) and fell under mark - hysteresis (0)."""
        points = [(row[0], row[1]) for row in _rows(self.node_dirs[index] / fw_world.WATER)]
        return [(self.clock.mono(at), state) for at, state in fw_world.crossings(points, mark_mm, hyst_mm)]

    def bay_changes(self, index: int) -> list[tuple[float, int]]:
        """When a car arrived on the bay (1) and left it (0), as the bay's file has it."""
        changes = []
        for row in _rows(self.node_dirs[index] / fw_world.CARS):
            changes.append((self.clock.mono(row[0]), 1))
            if len(row) > 1:
                changes.append((self.clock.mono(row[1]), 0))
        return sorted(changes)

    def lamp_failures(self, index: int) -> list[tuple[float, int]]:
        path = self.node_dirs[index] / fw_world.LAMP_FAULT
        return [(self.clock.mono(path.stat().st_mtime), 0)] if path.exists() else []


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
