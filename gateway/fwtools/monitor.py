"""`edgegw fw monitor`: a live protocol sniffer on a serial port."""

from __future__ import annotations

import time
from collections.abc import Callable

import serial

from protocols import StreamDecoder

from ..render import describe_event


def monitor(port: str, baud: int, out: Callable[[str], None], frames: int | None = None, seconds: float | None = None) -> int:
    """Print every frame (and every bad one) until interrupted, or until `frames` / `seconds` are reached."""
    decoder = StreamDecoder()
    shown = 0
    deadline = None if seconds is None else time.monotonic() + seconds
    with serial.Serial(port, baud, timeout=0.2) as line:
        while (frames is None or shown < frames) and (deadline is None or time.monotonic() < deadline):
            data = line.read(line.in_waiting or 1)
            if not data:
                continue
            decoder.feed(data)
            stamp = time.strftime("%H:%M:%S")
            for event in decoder.drain():
                out("%s %s" % (stamp, describe_event(event)))
                shown += 1
    return 0
