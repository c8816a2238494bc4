"""Processes the harness starts: killed at exit if a test that failed half-way left them running, and metered."""

from __future__ import annotations

import atexit
import os
import subprocess
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_RUNNING: set[subprocess.Popen[bytes]] = set()


def track(process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    _RUNNING.add(process)
    return process


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_RUNNING):
        if process.poll() is None:
            process.kill()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, all its threads (/proc/PID/stat, fields 14 and 15)."""
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
