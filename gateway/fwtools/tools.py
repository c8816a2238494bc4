"""Finding the MicroPython toolchain that came with this installation, and stopping what it runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

# What a node can be (node.json "role"): firmware/roles/ has one module each; "sensor" is the
# BME280, stream probe and rain gauge node of firmware/hal_*.py.
ROLES = ("sensor", "streetlight", "gauge", "parking", "lora_sensor", "lora_bridge")


def find_tool(name: str) -> str | None:
    """A console script of this virtualenv (beside the interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def stop_process(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM, and SIGKILL if it has not exited within grace_s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
