"""Many gateways, one broker (issue 16): N gateway processes, each with a backlog on its disk and no nodes,
drain to one mosquitto, and the broker restarts while they drain. What is measured: when each gateway came
back after the broker did (the jittered exponential backoff of gateway/uplink.py spreads them), whether
every gateway came back, and whether every reading of every backlog reached the broker once at least.

    python -m hil.fleet [--gateways 50] [--rounds 400] [--down 20] [--reconnect-max 30] [--json OUT]

A run takes about a minute at 50 gateways on two cores. tests/test_fleet.py runs a small one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .broker import Mosquitto
from .capture import MqttCapture, decode_senml
from .gateway import GatewayProcess
from .uplink_trial import backlog_node, buffered_readings, fill_backlog

NODES = 4  # backlog nodes per gateway
CONNECTED = "connected to 127.0.0.1:"  # gateway/uplink.py's line on each accepted connection


@dataclass
class FleetResult:
    gateways: int
    readings_per_gateway: int
    down_s: float
    reconnect_max_s: int
    reconnect_s: list[float] = field(default_factory=list)  # per gateway: from the broker's return to its reconnection
    not_back: list[str] = field(default_factory=list)
    frames: int = 0  # READINGS frames in all the backlogs (4 readings each), each with a counter
    lost: int = 0  # frames of the backlogs never delivered (by their counter)
    packs_at_stop: int = 0  # readings packs the broker had passed on when it was stopped: the drain was under way
    buffered_at_stop: int = 0  # readings still in the gateways' buffers then (a chunk counts until it is deleted)
    duplicated: int = 0  # deliveries beyond the first (QoS 1 is at least once; an outage may resend a pack)
    drained_s: float = 0.0  # from the broker's return until every buffer was empty
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.not_back and self.lost == 0

    def histogram(self, bin_s: float = 2.0) -> list[tuple[float, int]]:
        """(bin start, gateways that reconnected within it) from 0 to the last reconnection."""
        if not self.reconnect_s:
            return []
        bins = Counter(int(delay // bin_s) for delay in self.reconnect_s)
        return [(index * bin_s, bins.get(index, 0)) for index in range(max(bins) + 1)]

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        delays = sorted(self.reconnect_s)
        out["reconnect_s"] = [round(delay, 2) for delay in delays]
        if delays:
            out["reconnect_median_s"] = round(delays[len(delays) // 2], 2)
            out["reconnect_last_s"] = round(delays[-1], 2)
        out["histogram"] = self.histogram()
        out["passed"] = self.passed
        return out


def _connects(gateway: GatewayProcess) -> list[float]:
    """Unix times of the gateway's 'connected to' log lines (its log's own timestamps, local time, ms)."""
    times = []
    for line in gateway.log().splitlines():
        if CONNECTED in line:
            stamp = line[:23]  # "2026-12-04 16:31:47,123"
            try:
                times.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
            except ValueError:
                continue
    return times


def run(
    workdir: Path,
    gateways: int = 50,
    rounds: int = 400,
    down_s: float = 20.0,
    reconnect_max: int = 30,
    settle_s: float = 180.0,
    log: Callable[[str], None] = lambda text: None,
) -> FleetResult:
    began = time.monotonic()
    result = FleetResult(gateways, rounds * 4, down_s, reconnect_max)
    broker = Mosquitto(workdir / "broker")
    broker.start()
    capture = MqttCapture(broker.host, broker.port, ["edgegw/+/nodes/+/readings"])
    fleet: list[GatewayProcess] = []
    try:
        for index in range(gateways):
            gateway = GatewayProcess(
                workdir / ("gw%02d" % index), broker.port, [], gateway_id="gw-%02d" % index, reconnect_max=reconnect_max
            )
            fill_backlog(gateway.data_dir, rounds, NODES)
            fleet.append(gateway)
        log("%d gateways with %d readings each on disk; starting them" % (gateways, result.readings_per_gateway))
        for gateway in fleet:
            gateway.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(_connects(gateway) for gateway in fleet):
            time.sleep(0.2)
        result.packs_at_stop = len({(m.topic, m.payload) for m in capture.snapshot()})
        result.buffered_at_stop = sum(buffered_readings(gateway.data_dir) for gateway in fleet)
        log("all connected; the broker goes down for %.0f s while they drain" % down_s)
        broker.stop()
        time.sleep(down_s)
        back = time.time()  # from the moment it is started: a gateway may be back before start() has seen the port open
        broker.start()
        log("the broker is back; waiting for every gateway and every reading")
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            if all(any(at >= back for at in _connects(gateway)) for gateway in fleet) and all(
                buffered_readings(gateway.data_dir) == 0 for gateway in fleet
            ):
                break
            time.sleep(0.5)
        result.drained_s = round(time.time() - back, 1)
        time.sleep(2.0)  # the last PUBACKed packs reach the capture
        for gateway in fleet:
            after = [at - back for at in _connects(gateway) if at >= back]
            if after:
                result.reconnect_s.append(min(after))
            else:
                result.not_back.append(gateway.gateway_id)
        seen: Counter[tuple[str, str, int]] = Counter()
        for message in capture.snapshot():
            parts = message.topic.split("/")
            for record in decode_senml(message.payload):
                if str(record["name"]).endswith(":counter"):
                    seen[(parts[1], parts[3], int(record["value"]))] += 1
        wanted = {("gw-%02d" % g, backlog_node(k % NODES), k // NODES + 1) for g in range(gateways) for k in range(rounds)}
        result.frames = len(wanted)
        result.lost = len(wanted - set(seen))
        result.duplicated = sum(count - 1 for key, count in seen.items() if key in wanted)
    finally:
        for gateway in fleet:
            gateway.close()
        capture.close()
        broker.stop()
    result.wall_s = round(time.monotonic() - began, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateways", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=400, help="READINGS frames in each gateway's backlog (4 readings each)")
    parser.add_argument("--down", type=float, default=20.0, help="seconds the broker is down")
    parser.add_argument("--reconnect-max", type=int, default=30, help="the gateways' [mqtt] reconnect_max")
    parser.add_argument("--json", type=Path, help="write the result here too")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgegw-fleet-"))
    result = run(workdir, args.gateways, args.rounds, args.down, args.reconnect_max, log=lambda text: print(text, flush=True))
    summary = result.summary()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print("fleet: %s" % ("PASSED" if result.passed else "FAILED"))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
