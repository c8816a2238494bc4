"""Processes the harness starts are killed at exit if a test that failed half-way left them running."""

from __future__ import annotations

import atexit
import subprocess

_RUNNING: set[subprocess.Popen[bytes]] = set()


def track(process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    _RUNNING.add(process)
    return process


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_RUNNING):
        if process.poll() is None:
            process.kill()
