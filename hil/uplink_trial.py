"""The flaky-uplink trial: a gateway holding a backlog on disk, live nodes sending, and its broker
behind a FlakyProxy (hil/flaky_link.py); then the link turns good until everything arrived.

It reports what the buffer held (read from the gateway's database, as a second reader of its
WAL) and what the broker delivered: distinct rounds (node, `counter` value) and the rounds that
arrived more than once. tests/test_flaky_uplink.py runs a short one; `make bench` runs the one
from issue 11 (27,000 readings of backlog, 10 KB/s, a cut every 8 s, 126 s).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway import senml
from gateway.layouts import Layouts
from gateway.store import DB_NAME, Store, StoredFrame
from protocols import messages

from .broker import Mosquitto
from .capture import MqttCapture
from .flaky_link import FlakyProxy
from .gateway import GatewayProcess
from .scripted_node import ScriptedNode
from .serial_pair import PtyCable

READINGS_PER_ROUND = 4  # a counter and three temperature samples: a sensor node's round
CHUNK_FRAMES = 32  # frames per group commit in the backlog: a gateway with a handful of busy nodes
CHANNELS = [senml.Channel("temperature", "Cel", -2), senml.Channel("counter", "")]


@dataclass
class TrialSettings:
    backlog_rounds: int = 6750  # x 4 readings: 27,000
    backlog_nodes: int = 10
    live_nodes: int = 10
    live_interval: float = 1.0  # seconds between a live node's rounds
    rate: float | None = 10_000  # bytes/s each way on the flaky link (None: unthrottled)
    cut_every: float | None = 8.0  # None: never cut
    delay: float = 0.0  # seconds each way on the flaky link ...
    jitter: float = 0.0  # ... give or take this much
    flaky_s: float = 126.0
    settle_s: float = 300.0  # at most this long on the good link for everything to arrive
    seed: int = 11
    stop_at_end: bool = False  # SIGTERM the gateway at the end of the flaky phase (mid-drain), then start it again


@dataclass
class TrialResult:
    settings: dict[str, Any]
    backlog_start: int = 0  # readings on disk when the flaky link started
    backlog_peak: int = 0
    backlog_after_flaky: int = 0  # readings on disk when the link turned good
    backlog_end: int = 0  # when everything had arrived
    live_rounds: int = 0  # rounds the live nodes had acknowledged
    delivered_flaky: int = 0  # distinct rounds that arrived while the link was flaky
    duplicates_flaky: int = 0  # arrivals of a round that had arrived before, while the link was flaky
    delivered: int = 0  # distinct rounds in all
    duplicates: int = 0  # in all
    missing: int = 0  # rounds on disk or acknowledged to a node that never arrived
    cuts: int = 0
    good_link_s: float | None = None  # from the link turning good until everything had arrived
    stop_s: float | None = None  # SIGTERM to exit, on the flaky link mid-drain (stop_at_end)
    acked_while_stopping: int = 0  # live frames the gateway acknowledged between SIGTERM and its exit
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, readings on disk)

    @property
    def duplicate_fraction_flaky(self) -> float:
        return self.duplicates_flaky / max(1, self.delivered_flaky + self.duplicates_flaky)

    @property
    def duplicate_fraction(self) -> float:
        return self.duplicates / max(1, self.delivered + self.duplicates)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("samples")
        out["duplicate_fraction_flaky"] = round(self.duplicate_fraction_flaky, 4)
        out["duplicate_fraction"] = round(self.duplicate_fraction, 4)
        out["backlog_kept"] = round(self.backlog_after_flaky / max(1, self.backlog_start), 3)
        return out


def backlog_node(index: int) -> str:
    return "b0c1%012x" % index


def fill_backlog(data_dir: Path, rounds: int, nodes: int) -> None:
    """What a gateway holds after `rounds` READINGS (counter 1, 2, ... per node) arrived while its uplink was away."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(data_dir, max_bytes=10**10)
    layouts = Layouts()
    known = [layouts.announce(backlog_node(n), CHANNELS) for n in range(nodes)]
    info = json.dumps({"channels": [{"name": c.name, "unit": c.unit, "scale": c.scale} for c in CHANNELS]})
    store.save_node_infos({backlog_node(n): info for n in range(nodes)})
    group: list[StoredFrame] = []
    for k in range(rounds):
        node, number = k % nodes, k // nodes + 1
        samples: list[int] = [1, number, 0] + [value for t in range(3) for value in (0, 2000 + (k + t) % 300, t)]
        payload = messages.encode_payload(messages.READINGS, {"samples": samples, "base_time": 1_795_000_000 + 10 * number})
        group.append(StoredFrame(known[node].id, time.time(), payload))
        if len(group) == CHUNK_FRAMES or k == rounds - 1:
            store.commit(group, len(group) * READINGS_PER_ROUND, {}, known if k < CHUNK_FRAMES else None)
            group = []
    store.close()


def buffered_readings(data_dir: Path) -> int:
    """Readings in the gateway's buffer, read beside it (WAL: a reader never blocks its writer)."""
    db = sqlite3.connect(data_dir / DB_NAME, timeout=5)
    try:
        return int(db.execute("SELECT COALESCE(SUM(readings), 0) FROM chunks").fetchone()[0])
    finally:
        db.close()


class LiveNodes:
    """Scripted nodes on ptys sending a round each interval, on a thread of their own."""

    def __init__(self, workdir: Path, count: int, interval: float) -> None:
        self.cables = [PtyCable(workdir / ("ttyLIVE%d" % i)) for i in range(count)]
        self.nodes = [ScriptedNode(cable, bytes.fromhex("11ae%012x" % i)) for i, cable in enumerate(self.cables)]
        self.interval = interval
        self._frames: dict[str, dict[int, int]] = {node.node_id.hex(): {} for node in self.nodes}
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the nodes' state, between their thread and acknowledged()
        self._thread = threading.Thread(target=self._run, name="live-nodes", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        for node in self.nodes:
            node.wait_acked([node.hello()], timeout=30)
        self._thread.start()

    def _run(self) -> None:
        number = 0
        next_round = time.monotonic()
        try:
            while not self._stop.is_set():
                number += 1
                with self._lock:
                    for node in self.nodes:
                        samples: list[int | float] = [1, number, 0]
                        samples += [value for t in range(3) for value in (0, 2100 + (number + t) % 200, t)]
                        self._frames[node.node_id.hex()][number] = node.readings(samples)
                        node.poll(0)
                        if number % 5 == 0:  # like the firmware: what was not acknowledged (a gateway restart) is sent again
                            node.resend_unacked()
                next_round += self.interval
                while time.monotonic() < next_round and not self._stop.is_set():
                    time.sleep(0.01)
                    with self._lock:
                        for node in self.nodes:
                            node.poll(0)
        except BaseException as error:  # reported by acknowledged(); the trial goes on
            self.error = error

    def acknowledged(self) -> set[tuple[str, int]]:
        """(node, counter value) of every round the gateway acknowledged (so holds on disk or delivered)."""
        with self._lock:
            acked = {node.node_id.hex(): node.acked for node in self.nodes}
            return {(node, number) for node, frames in self._frames.items() for number, counter in frames.items() if counter in acked[node]}

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        deadline = time.monotonic() + 10  # the last rounds' ACKs
        while time.monotonic() < deadline and any(node.unacked for node in self.nodes):
            for node in self.nodes:
                node.resend_unacked()
            for _ in range(25):
                for node in self.nodes:
                    node.poll(0.02)

    def close(self) -> None:
        for cable in self.cables:
            cable.close()


def _rounds(capture: MqttCapture) -> tuple[int, int]:
    """(distinct rounds, repeated arrivals) delivered so far."""
    deliveries = capture.counter_deliveries()
    distinct = len({(node, value) for node, value, _at in deliveries})
    return distinct, len(deliveries) - distinct


def _stop_and_restart(gateway: GatewayProcess, live: LiveNodes, result: TrialResult) -> None:
    assert gateway.process is not None
    before = live.acknowledged()
    stopping = time.monotonic()
    code = gateway.stop(timeout=60)
    result.stop_s = round(time.monotonic() - stopping, 2)
    if code != 0:
        raise AssertionError("the gateway stopped with status %d" % code)
    result.acked_while_stopping = len(live.acknowledged() - before)
    gateway.start()  # the nodes resend what was not acknowledged


def run_trial(workdir: Path, settings: TrialSettings, progress: Any = None) -> TrialResult:
    """The whole trial; every process it starts is stopped before it returns."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = TrialResult(asdict(settings))
    gateway_dir = workdir / "gateway"
    data_dir = gateway_dir / "data"
    fill_backlog(data_dir, settings.backlog_rounds, settings.backlog_nodes)
    expected = {(backlog_node(k % settings.backlog_nodes), k // settings.backlog_nodes + 1) for k in range(settings.backlog_rounds)}
    with Mosquitto(workdir / "broker") as broker:
        capture = MqttCapture(broker.host, broker.port, ["edgegw/+/nodes/+/readings"])
        proxy = FlakyProxy(
            broker.port, settings.rate, settings.cut_every, settings.seed, delay=settings.delay, jitter=settings.jitter
        ).start()
        live = LiveNodes(workdir, settings.live_nodes, settings.live_interval)
        gateway = GatewayProcess(gateway_dir, proxy.port, [str(cable.link_path) for cable in live.cables])
        try:
            result.backlog_start = buffered_readings(data_dir)
            gateway.start()
            for cable in live.cables:
                gateway.wait_for_log("%s: open" % cable.link_path.name, timeout=60)
            live.start()
            started = time.monotonic()
            while time.monotonic() - started < settings.flaky_s:
                time.sleep(1.0)
                on_disk = buffered_readings(data_dir)
                result.samples.append((round(time.monotonic() - started, 1), on_disk))
                result.backlog_peak = max(result.backlog_peak, on_disk)
                if progress is not None:
                    so_far = _rounds(capture)[0]
                    progress("flaky link %.0f s: %d readings buffered, %d rounds delivered" % (result.samples[-1][0], on_disk, so_far))
            result.backlog_after_flaky = buffered_readings(data_dir)
            result.delivered_flaky, result.duplicates_flaky = _rounds(capture)
            result.cuts = proxy.cuts
            if settings.stop_at_end:
                _stop_and_restart(gateway, live, result)
            proxy.set_good()
            good = time.monotonic()
            deadline = good + settings.settle_s
            while time.monotonic() < deadline and buffered_readings(data_dir) > 0.02 * result.backlog_start:
                time.sleep(0.5)
            live.stop()
            expected |= live.acknowledged()
            result.live_rounds = len(live.acknowledged())
            while time.monotonic() < deadline:
                delivered = {(node, value) for node, value, _at in capture.counter_deliveries()}
                if expected <= delivered:
                    result.good_link_s = round(time.monotonic() - good, 1)
                    break
                time.sleep(0.5)
            gateway.stop()
            result.backlog_end = buffered_readings(data_dir)
            result.delivered, result.duplicates = _rounds(capture)
            result.missing = len(expected - {(node, value) for node, value, _at in capture.counter_deliveries()})
            if live.error is not None:
                raise live.error
        finally:
            gateway.close()
            live.stop()
            live.close()
            proxy.close()
            capture.close()
    return result
