"""The emulated world around role nodes (`edgegw fw emulate --role ...`), seen and driven from outside.

The unix port's emulations (firmware/emulated_*.py) read these files in the
node's data directory whenever they change; each is written whole and renamed
into place, so a node never reads half of one. Times are Unix seconds (the
wall clock): a profile means the same moment to every node and survives reboots.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

WATER = "water.txt"
CARS = "cars.txt"
LAMP_FAULT = "lamp.fault"
LAMP_LOG = "lamp.log"


def _replace(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # before the node's first boot too
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def set_water(data_dir: Path, points: Iterable[tuple[float, float]]) -> None:
    """Gauge: the stream's level, (unix_seconds, level_mm) points joined by straight lines (at most 64)."""
    _replace(Path(data_dir) / WATER, "".join("%.3f %.1f\n" % (t, mm) for t, mm in points))


def flood_wave(start: float, base_mm: float, peak_mm: float, rise_s: float, fall_s: float) -> list[tuple[float, float]]:
    """A flood wave's points for set_water: base level, up to the peak in rise_s, back down in fall_s."""
    return [(start, base_mm), (start + rise_s, peak_mm), (start + rise_s + fall_s, base_mm)]


def crossings(points: Sequence[tuple[float, float]], mark_mm: float, hysteresis_mm: float = 50.0) -> list[tuple[float, int]]:
    """When a gauge with this flood mark raises and ends its `flood` alarm on this profile, as (unix_seconds, 1 or 0).

    The gauge's rule (firmware/roles/gauge.py): on at the mark, off below the mark less the
    hysteresis. The node reads the level every 0.5 s with +-1 mm of noise: its events come
    that much later, or a little earlier where the profile crosses slowly.
    """
    found: list[tuple[float, int]] = []
    flood = 0
    for (t0, mm0), (t1, mm1) in itertools.pairwise(points):
        target, rising = (mark_mm - hysteresis_mm, False) if flood else (mark_mm, True)
        if (mm1 >= target > mm0) if rising else (mm1 < target <= mm0):
            found.append((t0 + (t1 - t0) * (target - mm0) / (mm1 - mm0), 1 - flood))
            flood = 1 - flood
    return found


def set_cars(data_dir: Path, visits: Iterable[tuple[float, float | None]]) -> None:
    """Parking: cars on the bay as (arrive, depart) Unix seconds (depart None: it stays); at most 64."""
    _replace(
        Path(data_dir) / CARS,
        "".join("%.3f\n" % arrive if depart is None else "%.3f %.3f\n" % (arrive, depart) for arrive, depart in visits),
    )


def fail_lamp(data_dir: Path, failed: bool = True) -> None:
    """Street light: the lamp fails (dark, no current) or, with failed=False, is replaced."""
    path = Path(data_dir) / LAMP_FAULT
    if failed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    else:
        path.unlink(missing_ok=True)


def lamp_levels(data_dir: Path) -> list[tuple[int, int]]:
    """Street light: every level change of the lamp so far, as (unix_ms, level %), oldest first."""
    try:
        text = (Path(data_dir) / LAMP_LOG).read_text()
    except FileNotFoundError:
        return []
    return [(int(ms), int(level)) for ms, level in (line.split() for line in text.splitlines() if line.strip())]
