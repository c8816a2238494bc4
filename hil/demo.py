"""`edgegw demo` (`make demo`): a local broker, three emulated nodes, the gateway, and a live view of what arrives.

Everything is real: mosquitto on a free loopback port, the firmware on the
MicroPython VM behind pseudo-terminals, `edgegw run` as its own process. The
view is an MQTT subscriber, as any city system would be one.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import TextIO

from .broker import Mosquitto
from .capture import MqttCapture, decode_senml, is_gateway_status
from .chain import Chain
from .gateway import GatewayProcess
from .rig import EmulatedRig

CLEAR = "\x1b[H\x1b[2J"


class LiveView:
    """Latest value per (node, channel), readings per minute per node, and the gateway's own status."""

    def __init__(self, capture: MqttCapture) -> None:
        self.capture = capture
        self._seen = 0
        self.latest: dict[tuple[str, str], tuple[float, str | None, float]] = {}  # (node, channel) -> value, unit, at
        self.arrivals: dict[str, deque[float]] = {}
        self.gateway_status: dict[str, object] = {}

    def update(self) -> None:
        messages = self.capture.snapshot()[self._seen :]
        self._seen += len(messages)
        for message in messages:
            if message.topic.endswith("/readings"):
                for record in decode_senml(message.payload):
                    parts = record["name"].split(":")
                    if len(parts) != 5:
                        continue
                    node, channel = parts[3], parts[4]
                    self.latest[(node, channel)] = (record["value"], record["unit"], message.at)
                    self.arrivals.setdefault(node, deque()).append(message.at)
            elif is_gateway_status(message.topic):
                with contextlib.suppress(ValueError):  # not the gateway's JSON status: ignore
                    self.gateway_status = json.loads(message.payload)

    def per_minute(self, node: str, now: float) -> float:
        arrivals = self.arrivals.get(node, deque())
        while arrivals and arrivals[0] < now - 60:
            arrivals.popleft()
        span = min(60.0, max(1.0, now - arrivals[0])) if arrivals else 60.0
        return len(arrivals) * 60.0 / span

    def render(self, broker: Mosquitto, started: float, gateway: GatewayProcess | None = None) -> str:
        now = time.monotonic()
        status = self.gateway_status
        lines = [
            "edgegw demo: 3 emulated sensor nodes -> serial (pty) -> edgegw gateway -> MQTT broker -> this view",
            "broker mqtt://127.0.0.1:%d   gateway %s, buffered on disk: %s readings   running %ds   Ctrl-C stops everything"
            % (broker.port, status.get("state", "starting"), status.get("buffered_readings", "?"), now - started),
            "watch it yourself:  mosquitto_sub -p %d -t 'edgegw/#' -v" % broker.port,
            *_technician(gateway),
            "",
            "%-18s %-12s %14s  %-6s %8s  %s" % ("node", "channel", "latest value", "unit", "age", "readings/min (node)"),
        ]
        for (node, channel), (value, unit, at) in sorted(self.latest.items()):
            lines.append(
                "%-18s %-12s %14s  %-6s %7.0fs  %.0f" % (node, channel, _value(value), unit or "", now - at, self.per_minute(node, now))
            )
        if not self.latest:
            lines.append("(waiting for the first readings: the nodes sample every 2 s)")
        lines += [
            "",
            "Each node samples temperature/humidity/pressure (an emulated BME280), a stream's water level (emulated",
            "ADC), rain-gauge pulses, and 'counter' = 1, 2, 3, ... (proof nothing is lost). The gateway stores every",
            "frame on disk before acknowledging it and publishes SenML (CBOR) to edgegw/<gateway>/nodes/<node>/readings.",
        ]
        return "\n".join(lines)


def _technician(gateway: GatewayProcess | None) -> list[str]:
    """What a technician would use on this gateway: its status, and its page once it said where (its log)."""
    if gateway is None:
        return []
    page = gateway.page_url()
    return [
        "the gateway's own view:  edgegw status --config %s   (--watch to follow)" % gateway.config_path,
        "its status page:  %s   (Prometheus: %smetrics)" % (page, page) if page else "its status page: starting",
    ]


def _value(value: object) -> str:
    if isinstance(value, float):
        return "%.3f" % value if abs(value) < 1000 else "%.1f" % value
    return str(value)


def run(out: TextIO = sys.stdout, seconds: float | None = None, workdir: Path | None = None) -> int:
    """Until Ctrl-C (or `seconds`); every process started here is stopped on the way out."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgegw-demo-"))
    print("edgegw demo: starting mosquitto, 3 emulated nodes (MicroPython) and the gateway in %s ..." % workdir, file=out, flush=True)
    rig = EmulatedRig(workdir / "nodes", 3, interval=2.0, heap="64k", seed=1, status_interval=30.0)
    try:
        with Chain(workdir, rig, gateway_id="demo-gw") as chain:
            return _show(chain, out, stop, seconds)
    finally:
        print("edgegw demo: stopped.", file=out, flush=True)


def _show(chain: Chain, out: TextIO, stop: threading.Event, seconds: float | None) -> int:
    assert chain.capture is not None and chain.gateway is not None
    view = LiveView(chain.capture)
    started = time.monotonic()
    next_plain = 0.0
    interactive = out.isatty()
    while not stop.is_set():
        now = time.monotonic()
        if seconds is not None and now - started >= seconds:
            break
        process = chain.gateway.process
        if process is not None and process.poll() is not None:
            print("edgegw demo: the gateway stopped; its log:\n%s" % chain.gateway.log()[-2000:], file=out)
            return 1
        view.update()
        if interactive:
            out.write(CLEAR + view.render(chain.broker, started, chain.gateway) + "\n")
            out.flush()
        elif now >= next_plain:
            print(view.render(chain.broker, started, chain.gateway) + "\n", file=out, flush=True)
            next_plain = now + 10.0
        stop.wait(1.0)
    print("edgegw demo: stopping the gateway, the nodes and the broker ...", file=out, flush=True)
    return 0
