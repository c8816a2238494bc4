"""The bench target: real boards on real serial ports, described in a TOML file.

    [[boards]]
    port = "/dev/serial/by-id/usb-MicroPython_Board_e6614c3113-if00"
    role = "sensor"
    flash = true                     # false: the board already runs this firmware
    settings = { interval = 1 }      # given to `edgegw fw flash --set KEY=VALUE`

The gateway opens the boards' ports directly, so nothing sits on the line:
faults on the cable and node reboots cannot be applied and are reported as
not applicable. Without a tap, what a node produced is inferred from the
sample numbers that arrived (a gap is a loss), and latency is not measured.
Two limits follow: a board that resets skips up to 63 sample numbers (its
counter is persisted ahead in blocks of 64), which reads as a loss here; and
readings lost after a node's last arrival are not seen. Recovery times and the
backlog are dated by arrival, so they say little on a bench.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .faults import LINE_KINDS, Fault
from .tomlfile import read_toml


class BenchError(ValueError):
    pass


@dataclass
class Board:
    port: str
    role: str = "sensor"
    flash: bool = True
    settings: dict[str, Any] = field(default_factory=dict)


def load_bench(path: Path | str) -> list[Board]:
    path = Path(path)
    data = read_toml(path, "bench file", BenchError)
    boards = data.get("boards")
    if not isinstance(boards, list) or not boards:
        raise BenchError("%s: expected at least one [[boards]] table with a 'port'" % path)
    out = []
    for number, raw in enumerate(boards, 1):
        unknown = set(raw) - {"port", "role", "flash", "settings"}
        if unknown:
            raise BenchError("%s: boards #%d: unknown key %s (expected port, role, flash, settings)" % (path, number, sorted(unknown)[0]))
        if not isinstance(raw.get("port"), str):
            raise BenchError("%s: boards #%d: 'port' must be the board's serial port path" % (path, number))
        out.append(Board(raw["port"], raw.get("role", "sensor"), bool(raw.get("flash", True)), dict(raw.get("settings", {}))))
    return out


class BenchRig:
    target = "bench"
    measures_latency = False

    def __init__(self, boards: list[Board], workdir: Path) -> None:
        self.boards = boards
        self.workdir = Path(workdir)

    @property
    def ports(self) -> list[str]:
        return [board.port for board in self.boards]

    def start(self) -> None:
        for board in self.boards:
            if not board.flash:
                continue
            command = [sys.executable, "-m", "gateway.cli", "fw", "flash", "--port", board.port, "--role", board.role]
            for key, value in board.settings.items():
                command += ["--set", "%s=%s" % (key, value)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BenchError("flashing %s failed: %s" % (board.port, (done.stderr or done.stdout).strip()))

    def begin(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def reboot(self, index: int) -> None:
        raise BenchError("node reboots are not applicable on a bench")

    def not_applicable(self, fault: Fault) -> str | None:
        if fault.kind in LINE_KINDS:
            return "the gateway opens the board's port directly: nothing on the line to damage"
        if fault.kind == "node_reboot":
            return "rebooting a board needs its port, which the gateway holds"
        return None

    def line_damage(self) -> dict[str, int]:
        return {}

    def counter_reuse(self) -> dict[str, int]:
        return {}  # no tap: frame counters are not seen on a bench

    def keys(self) -> dict[str, bytes]:
        return {}  # its nodes are not provisioned: their frames need no tag

    def produced(self, deliveries: list[tuple[str, int, float]]) -> dict[tuple[str, int], float]:
        """Every sample number between a node's first and last arrival; a missing one is dated by its predecessor."""
        arrived: dict[str, dict[int, float]] = {}
        for node, sample, at in deliveries:
            seen = arrived.setdefault(node, {})
            seen[sample] = min(at, seen.get(sample, at))
        out: dict[tuple[str, int], float] = {}
        for node, seen in arrived.items():
            last_at = min(seen.values())
            for sample in range(min(seen), max(seen) + 1):
                last_at = seen.get(sample, last_at)
                out[(node, sample)] = last_at
        return out
