"""`make bench`: measure the real gateway and the baseline on the same frames and broker; write the results.

    python -m bench.run [--quick] [--only STEP,...] [--results bench/results.jsonl] [--doc docs/PERFORMANCE.md]

Benchmarks measure and report; they never fail a build. Every run appends one
JSON line to the results file (with the commit measured) and regenerates
docs/PERFORMANCE.md and its plots from it. `--only` runs some steps again
(e.g. `--only city_1000,city_10000,cpu_1000,cpu_8000`: storage and CPU at city
load); the report shows each step's newest run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from random import Random
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import senml
from gateway.committer import MAX_GROUP
from gateway.layouts import Layouts
from gateway.store import Store, StoredFrame
from hil.broker import Mosquitto
from hil.continuity import percentile
from hil.gateway import GatewayProcess
from hil.processes import cpu_seconds
from hil.uplink_trial import TrialSettings, run_trial
from protocols import cobs, messages
from protocols import frame as fr

from . import radio, radio_gateway
from .feeder import SAMPLES_PER_FRAME, Feeders, FeedResult, node_id, readings_frame

ROOT = Path(__file__).resolve().parent.parent
# Steady-load latencies leave out frames written in the first seconds: the first frame of each of 1,000 nodes
# costs first-contact work (node status, channels), which is start-up, not steady state. Reported separately.
WARMUP_S = 2.0
# Frames a second the feeders can offer at full speed (400,000 readings/s, above the 250,000 budget).
FULL_SPEED_SUPPLY = 40_000


# ------------------------------------------------------------------ process meters


def io_counters(pid: int) -> dict[str, int]:
    """/proc/PID/io: rchar, wchar, syscr, syscw, read_bytes, write_bytes, cancelled_write_bytes (all threads)."""
    return {key: int(value) for key, value in (line.split(": ") for line in Path("/proc/%d/io" % pid).read_text().splitlines())}


def peak_rss_mb(pid: int) -> float:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


class Subscriber:
    """Counts readings arriving on a topic filter and dates the `seq` values (SenML CBOR or the baseline's JSON)."""

    def __init__(self, port: int, topic: str) -> None:
        self.readings = 0
        self.backlog_readings = 0  # readings of packs that open with a negative seq: the drain benchmark's buffered frames
        self.backlog_last: float | None = None
        self.arrived: dict[int, float] = {}
        self.first: float | None = None
        self.last: float | None = None
        self._lock = threading.Lock()
        # A persistent session (as hil/capture.py): what is published while the broker restarts and this
        # client has not resubscribed yet is queued for it, not lost to the measurement.
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub-%d" % os.getpid(), protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.reconnect_delay_set(1, 1)
        session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        session.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=session)
        self.client.loop_start()
        subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        payload = bytes(message.payload)
        with self._lock:
            self.first = self.first or now
            self.last = now
            if payload[:1] == b"{":
                reading = json.loads(payload)
                self.readings += 1
                if reading["channel"] == "seq":
                    self.arrived.setdefault(reading["value"], now)
                return
            # The gateway's packs put channels without a unit first: the `seq` group opens the pack.
            # Only that group is looked at, so the subscriber does not compete for the CPU it measures.
            records = cbor2.loads(payload)
            self.readings += len(records)
            if records and str(records[0].get(-2, "")).endswith(":seq"):
                if records[0][2] < 0:
                    self.backlog_readings += len(records)
                    self.backlog_last = now
                    return
                self.arrived.setdefault(records[0][2], now)
                for record in itertools.islice(records, 1, None):  # the rest of the `seq` group: one per frame
                    if -2 in record:
                        break
                    self.arrived.setdefault(record[2], now)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# ------------------------------------------------------------------ the systems under test


class System:
    """The gateway (`edgegw run`) or the baseline script, on K serial ports."""

    def __init__(self, kind: str, workdir: Path, broker: Mosquitto, links: list[Path]) -> None:
        self.kind = kind
        self.workdir = workdir
        self.broker = broker
        self.links = links
        self.gateway: GatewayProcess | None = None
        self.baselines: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        if self.kind == "gateway":
            self.gateway = GatewayProcess(self.workdir / "gateway", self.broker.port, [str(link) for link in self.links], reconnect_max=2)
            self.gateway.start()
            self.gateway.wait_for_log("running as", timeout=30)
        else:
            for link in self.links:
                command = [sys.executable, "-m", "bench.baseline", str(link), str(self.broker.port)]
                self.baselines.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
            time.sleep(1.0)

    @property
    def pids(self) -> list[int]:
        if self.gateway is not None and self.gateway.process is not None:
            return [self.gateway.process.pid]
        return [p.pid for p in self.baselines]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def rss(self) -> float:
        return sum(peak_rss_mb(pid) for pid in self.pids)

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.close()
        for process in self.baselines:
            process.send_signal(signal.SIGTERM)
        for process in self.baselines:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def topic_for(kind: str) -> str:
    return "edgegw/+/nodes/+/readings" if kind == "gateway" else "baseline/#"


# ------------------------------------------------------------------ benchmarks


def ingest(kind: str, workdir: Path, ports: int, nodes: int, seconds: float) -> dict[str, Any]:
    """Full speed: how many readings a second are acknowledged (after COMMIT, for the gateway)."""
    # Enough frames that the feeders cannot run dry before the end: once they did (60,000 frames a port, 2.42
    # million readings), every run from the eighth measured 2.42 million / 20 s = 121,000 readings/s, a ceiling of
    # the benchmark, not of the gateway.
    frames_per_node = int(FULL_SPEED_SUPPLY * seconds / (ports * nodes)) + 10
    with Mosquitto(workdir / "broker") as broker:
        feeders = Feeders(workdir, ports, nodes, frames_per_node=frames_per_node, seconds=seconds)
        feeders.start()
        system = System(kind, workdir, broker, feeders.links)
        try:
            results, cpu, _rss = _measure(system, feeders, seconds)
        finally:
            system.stop()
            feeders.stop()
    summary = _feed_summary(results, cpu)
    summary["ran_dry"] = summary["frames_sent"] >= ports * nodes * frames_per_node  # true: a ceiling of the feeders
    return summary


def _measure(system: System, feeders: Feeders, seconds: float) -> tuple[list[FeedResult], float, float]:
    """Start the system, let the feeders go, meter it: (feed results, CPU seconds it used, its peak RSS in MB)."""
    system.start()
    cpu_before = system.cpu()
    feeders.go()
    results = feeders.results(timeout=seconds + 120)
    return results, system.cpu() - cpu_before, system.rss()


def _feed_summary(results: list[FeedResult], cpu: float) -> dict[str, Any]:
    acked = sum(r.acked for r in results)
    span = max(r.finished for r in results) - min(r.started for r in results)
    latencies = [x for r in results for x in r.latencies]
    readings = acked * SAMPLES_PER_FRAME
    return {
        "readings_per_s": readings / span if span else 0.0,
        "frames_sent": sum(r.sent for r in results),
        "frames_acked": acked,
        "ack_p50_ms": _ms(percentile(latencies, 0.5)),
        "ack_p99_ms": _ms(percentile(latencies, 0.99)),
        "cpu_s_per_million": cpu / (readings / 1e6) if readings else None,
    }


def steady(kind: str, workdir: Path, ports: int, nodes: int, frames_per_s: float, seconds: float) -> dict[str, Any]:
    """A steady load: frame -> ACK and frame -> subscriber latency."""
    with Mosquitto(workdir / "broker") as broker:
        per_port = frames_per_s / ports
        feeders = Feeders(
            workdir, ports, nodes, int(per_port * seconds / nodes) + 10, seconds, rate_per_port=per_port, keep_times=True, warmup=WARMUP_S
        )
        feeders.start()
        system = System(kind, workdir, broker, feeders.links)
        subscriber = Subscriber(broker.port, topic_for(kind))
        try:
            results, cpu, rss = _measure(system, feeders, seconds)
            time.sleep(3)  # the last readings on their way
        finally:
            system.stop()
            feeders.stop()
            subscriber.close()
    written = {seq: at for r in results for seq, at in r.written_at.items()}
    e2e_all = [(at, subscriber.arrived[seq] - at) for seq, at in written.items() if seq in subscriber.arrived]
    steady_from = min(r.started for r in results) + WARMUP_S
    e2e = [latency for at, latency in e2e_all if at >= steady_from]
    summary = _feed_summary(results, cpu)
    summary.update(
        {
            "offered_readings_per_s": frames_per_s * SAMPLES_PER_FRAME,
            "warmup_s": WARMUP_S,
            "e2e_p50_ms": _ms(percentile(e2e, 0.5)),
            "e2e_p99_ms": _ms(percentile(e2e, 0.99)),
            "e2e_p99_with_warmup_ms": _ms(percentile([latency for _at, latency in e2e_all], 0.99)),
            "delivered_fraction": len(e2e_all) / len(written) if written else 0.0,
            "peak_rss_mb": rss,
            "nodes": ports * nodes,
        }
    )
    return summary


def load(
    workdir: Path,
    ports: int,
    nodes: int,
    frames_per_s: float,
    warmup: float,
    window: float,
    trace_window: float,
    outage: bool,
    settle: float = 10.0,
) -> dict[str, Any]:
    """Storage and CPU at a steady load: `ports` x `nodes` emulated nodes, `frames_per_s` 10-sample frames a
    second spread evenly over them, against the real `edgegw run` and mosquitto.

    After the HELLOs and `warmup` seconds (long enough for every node's first frame: first contact is start-up,
    not steady state), one window of `window` seconds with the broker up meters the gateway process
    (/proc/PID/io write_bytes, utime + stime, readings ACKed); then a separate sub-window of `trace_window`
    seconds under strace counts fsync/fdatasync and attributes the write calls to files (its overhead stays out
    of the CPU figure). With `outage`, the broker is then stopped for good: after `settle` seconds the same
    window and sub-window again, twice (the outage's first and second minute, for a window of 60 s), the
    gateway buffering everything to disk.
    """
    # The second minute of the outage apart from the first: a cost once per node at the switch to the disk path
    # falls in the first (every node sends once a minute), the steady cost of buffering shows in the second.
    phases = ["broker_up"] + (["broker_down", "broker_down_later"] if outage else [])
    per_phase = window + trace_window + 2.0
    feed_s = warmup + len(phases) * per_phase + (settle if outage else 0.0) + 5.0
    per_port = frames_per_s / ports
    results: dict[str, Any] = {
        "nodes": ports * nodes,
        "offered_readings_per_s": frames_per_s * SAMPLES_PER_FRAME,
        "warmup_s": warmup,
        "window_s": window,
        "trace_window_s": trace_window,
    }
    with Mosquitto(workdir / "broker") as broker:
        feeders = Feeders(workdir, ports, nodes, int(per_port * feed_s / nodes) + 10, feed_s, rate_per_port=per_port, keep_times=True)
        feeders.start()
        system = System("gateway", workdir, broker, feeders.links)
        try:
            system.start()
            pid = system.pids[0]
            go = time.monotonic()
            feeders.go()
            helloed_at, never_helloed = feeders.helloed(timeout=600)
            results["hello_s"] = round(helloed_at - go, 2)
            results["hello_unanswered"] = never_helloed
            time.sleep(max(0.0, helloed_at + warmup - time.monotonic()))
            windows = []
            for phase in phases:
                if phase == "broker_down":
                    broker.stop()
                    time.sleep(settle)
                windows.append((phase, _meter_window(pid, window)))
                results[phase] = {"trace": _trace_window(pid, trace_window, system.workdir)}
            feed = feeders.results(timeout=feed_s + 120)
        finally:
            system.stop()
            feeders.stop()
    acks = [ack for r in feed for ack in r.acks]
    for phase, (started, ended, before, after) in windows:
        in_window = [(sent, got) for sent, got in acks if started <= got < ended]
        readings = len(in_window) * SAMPLES_PER_FRAME
        seconds = ended - started
        written = after["write_bytes"] - before["write_bytes"]
        cpu = after["cpu_s"] - before["cpu_s"]
        trace = results[phase].pop("trace")
        results[phase].update(
            {
                "readings_per_s": readings / seconds,
                "write_bytes_per_reading": written / readings if readings else None,
                "gb_per_day": written / seconds * 86_400 / 1e9,
                "wchar_per_reading": (after["wchar"] - before["wchar"]) / readings if readings else None,
                "cancelled_write_bytes": after["cancelled_write_bytes"] - before["cancelled_write_bytes"],
                "write_bytes_each_s": after["write_bytes_each_s"],
                "read_bytes": after["read_bytes"] - before["read_bytes"],
                "cpu_us_per_reading": cpu / readings * 1e6 if readings else None,  # = CPU-seconds per million readings
                "ack_p50_ms": _ms(percentile([got - sent for sent, got in in_window], 0.5)),
                "ack_p99_ms": _ms(percentile([got - sent for sent, got in in_window], 0.99)),
                **trace,
            }
        )
    results["frames_sent"] = sum(r.sent for r in feed)
    results["frames_acked"] = sum(r.acked for r in feed)
    return results


def _meter_window(pid: int, seconds: float) -> tuple[float, float, dict[str, Any], dict[str, Any]]:
    """(start, end, meters at start, meters at end) of a window of `seconds`: /proc/PID/io and CPU seconds, and
    `write_bytes` second by second (a one-off burst and a steady rate look alike in the total)."""

    def meters() -> dict[str, Any]:
        return {**io_counters(pid), "cpu_s": cpu_seconds(pid)}

    before = meters()
    started = time.monotonic()
    each_second = []
    last = before["write_bytes"]
    for tick in range(1, int(seconds) + 1):
        time.sleep(max(0.0, started + tick - time.monotonic()))
        now = io_counters(pid)["write_bytes"]
        each_second.append(now - last)
        last = now
    time.sleep(max(0.0, started + seconds - time.monotonic()))
    after = {**meters(), "write_bytes_each_s": each_second}
    return started, time.monotonic(), before, after


STRACE_CALL = re.compile(r"^(\d+)\s+(\w+)\((\d+)<([^>]*)>")
STRACE_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>")
STRACE_RESULT = re.compile(r"= (-?\d+)(?: [A-Z]\w+ \(.*\))?$")
SYNCS = ("fsync", "fdatasync")


def _trace_window(pid: int, seconds: float, gateway_dir: Path) -> dict[str, Any]:
    """fsync/fdatasync a second and bytes handed to write calls per file, from `strace -f -y` attached to the
    gateway for `seconds` (all its threads). Storage files are named by their place in the gateway's folder."""
    strace = shutil.which("strace")
    if strace is None:
        return {"trace_error": "strace is not installed (apt-get install strace)"}
    output = gateway_dir.parent / ("strace-%d.txt" % pid)
    command = [strace, "-f", "-y", "-s", "0", "-qq", "-o", str(output), "-p", str(pid)]
    command += ["-e", "trace=fsync,fdatasync,write,pwrite64,writev,pwritev,pwritev2"]
    started = time.monotonic()
    written_before = io_counters(pid)["write_bytes"]
    tracer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(seconds)
    tracer.send_signal(signal.SIGINT)
    storage_bytes = io_counters(pid)["write_bytes"] - written_before
    try:
        _out, err = tracer.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        tracer.kill()
        _out, err = tracer.communicate()
    elapsed = time.monotonic() - started
    if not output.exists():
        return {"trace_error": "strace: %s" % err.decode(errors="replace").strip()[-300:]}
    syncs: dict[str, int] = {}
    written: dict[str, int] = {}
    unfinished: dict[str, tuple[str, str]] = {}
    for line in output.read_text(errors="replace").splitlines():
        call = STRACE_CALL.match(line)
        if call:
            tid, name, _fd, path = call.groups()
            if line.endswith("<unfinished ...>"):
                unfinished[tid] = (name, path)
                continue
        else:
            resumed = STRACE_RESUMED.match(line)
            if not resumed or resumed.group(1) not in unfinished:
                continue
            name, path = unfinished.pop(resumed.group(1))
        result = STRACE_RESULT.search(line)
        if result is None or int(result.group(1)) < 0:
            continue
        where = _storage_name(path, gateway_dir)
        if where is None:
            continue
        if name in SYNCS:
            syncs[where] = syncs.get(where, 0) + 1
        else:
            written[where] = written.get(where, 0) + int(result.group(1))
    output.unlink()
    return {
        "fsyncs_per_s": sum(syncs.values()) / elapsed,
        "fsyncs_by_file": syncs,
        "write_call_bytes_per_s_by_file": {where: round(count / elapsed) for where, count in sorted(written.items())},
        "traced_s": round(elapsed, 1),
        "traced_write_bytes_per_s": round(storage_bytes / elapsed),  # /proc/PID/io over the same sub-window
    }


def _storage_name(path: str, gateway_dir: Path) -> str | None:
    """A file's name relative to the gateway's folder (data/buffer.db-wal, gateway.log), or None for what is not
    storage (pseudo-terminals, sockets, pipes)."""
    if not path.startswith("/") or path.startswith(("/dev/", "/proc/")):
        return None
    try:
        return str(Path(path).relative_to(gateway_dir))
    except ValueError:
        return path


def outage_loss(kind: str, workdir: Path, frames_per_s: float, before: float, outage: float, after: float) -> dict[str, Any]:
    """Readings lost when the broker goes away for `outage` seconds during a steady flow."""
    broker = Mosquitto(workdir / "broker")
    broker.start()
    seconds = before + outage + after
    feeders = Feeders(workdir, 1, 10, int(frames_per_s * seconds / 10) + 10, seconds, rate_per_port=frames_per_s, keep_times=True)
    feeders.start()
    system = System(kind, workdir, broker, feeders.links)
    subscriber = Subscriber(broker.port, topic_for(kind))
    try:
        system.start()
        feeders.go()
        time.sleep(before)
        broker.stop()
        time.sleep(outage)
        broker.start()
        results = feeders.results(timeout=after + 120)
        deadline = time.monotonic() + 60
        written = {seq for r in results for seq in r.written_at}
        while time.monotonic() < deadline and not written <= set(subscriber.arrived):
            time.sleep(0.5)
    finally:
        system.stop()
        feeders.stop()
        subscriber.close()
        broker.stop()
    delivered = len(written & set(subscriber.arrived))
    return {
        "frames_written": len(written),
        "frames_delivered": delivered,
        "lost_fraction": 1 - delivered / len(written) if written else None,
    }


def drain(workdir: Path, readings: int, nodes: int, seconds: float) -> dict[str, Any]:
    """`readings` buffered while the broker was away; how fast they leave once it is back, and live latency meanwhile."""
    gateway_dir = workdir / "gateway"
    frames = readings // SAMPLES_PER_FRAME
    fill_started = time.monotonic()
    store_bytes = _fill_store(gateway_dir / "data", frames, nodes)
    fill_s = time.monotonic() - fill_started
    with Mosquitto(workdir / "broker") as broker:
        subscriber = Subscriber(broker.port, topic_for("gateway"))
        live = Feeders(workdir, 1, 5, int(10 * seconds / 5) + 10, seconds, rate_per_port=10, keep_times=True)
        live.start()
        gateway = GatewayProcess(gateway_dir, broker.port, [str(live.links[0])], reconnect_max=2)
        try:
            gateway.start()
            gateway.wait_for_log("running as", timeout=120)
            started = time.monotonic()
            live.go()
            results = live.results(timeout=seconds + 60)
            elapsed = time.monotonic() - started
            assert gateway.process is not None
            rss = peak_rss_mb(gateway.process.pid)
            cpu = cpu_seconds(gateway.process.pid)
        finally:
            gateway.close()
            live.stop()
            subscriber.close()
    written = {seq: at for r in results for seq, at in r.written_at.items()}
    live_latency = [subscriber.arrived[seq] - at for seq, at in written.items() if seq in subscriber.arrived]
    drained = subscriber.backlog_readings
    if drained >= frames * SAMPLES_PER_FRAME and subscriber.backlog_last is not None:
        elapsed = subscriber.backlog_last - started  # all of it arrived: the drain took until its last pack
    return {
        "buffered_readings": frames * SAMPLES_PER_FRAME,
        "fill_s": fill_s,
        "disk_bytes_per_reading": store_bytes / (frames * SAMPLES_PER_FRAME),
        "drained_readings": drained,
        "drain_seconds": elapsed,
        "drain_readings_per_s": drained / elapsed if elapsed else 0.0,
        "live_p50_ms": _ms(percentile(live_latency, 0.5)),
        "live_p99_ms": _ms(percentile(live_latency, 0.99)),
        "live_delivered_fraction": len(live_latency) / len(written) if written else 0.0,
        "peak_rss_mb": rss,
        "cpu_s": cpu,
        "nodes": nodes,
    }


def _fill_store(data_dir: Path, frames: int, nodes: int) -> int:
    """What a gateway holds after `frames` READINGS from `nodes` nodes arrived while the broker was away."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(data_dir, max_bytes=50_000_000_000)
    channels = [senml.Channel("seq", ""), senml.Channel("temperature", "Cel", -2)]
    layouts = Layouts()
    known = [layouts.announce(node_id(9, n).hex(), channels) for n in range(nodes)]
    info = json.dumps({"channels": [{"name": c.name, "unit": c.unit, "scale": c.scale} for c in channels]})
    store.save_node_infos({node_id(9, n).hex(): info for n in range(nodes)})
    random = Random(1)
    temperature = [1500] * nodes  # centi-degrees: each node's own random walk, as real data would be (not all alike)
    for first in range(0, frames, MAX_GROUP):  # as the committer writes them: a group commit a chunk
        group = []
        for k in range(first, min(frames, first + MAX_GROUP)):
            samples: list[int] = [0, -(k + 1), 0]  # negative seq: never confused with a live frame's
            for position in range(1, SAMPLES_PER_FRAME):
                temperature[k % nodes] += random.randint(-3, 3)
                samples += [1, temperature[k % nodes], position]
            base_time = 1_795_000_000 + 10 * (k // nodes)
            payload = messages.encode_payload(messages.READINGS, {"samples": samples, "base_time": base_time})
            group.append(StoredFrame(known[k % nodes].id, time.time(), payload))
        store.commit(group, len(group) * SAMPLES_PER_FRAME, {}, known if not first else None)
    store.close()
    return sum(path.stat().st_size for path in data_dir.iterdir() if path.is_file())


def flaky_uplink(workdir: Path, scale: float) -> dict[str, Any]:
    """Issue 11's bad link: 27,000 buffered readings and 10 live nodes (400 readings/s) behind 10 KB/s cut
    about every 8 s, for 126 s; a SIGTERM at its end (mid-drain) and a restart; then a good link until
    everything arrived."""
    settings = TrialSettings(flaky_s=126 * scale, backlog_rounds=int(6750 * scale), live_interval=0.1, stop_at_end=True)
    return run_trial(workdir, settings).summary()


def footprint() -> dict[str, Any]:
    """Bytes per reading: on the link, in the MQTT payload (SenML CBOR and JSON), from the frames themselves."""
    frame = readings_frame(node_id(0, 0), 2, 12345)
    node = "be00000000000001"
    emulated = [  # the channels of an emulated node (firmware/emulation.py, firmware/sensors.py)
        senml.Channel("temperature", "Cel", -2),
        senml.Channel("humidity", "%RH", -2),
        senml.Channel("pressure", "Pa"),
        senml.Channel("water_level", "m", -3),
        senml.Channel("pulses", "count"),
        senml.Channel("counter", ""),
    ]

    def per_reading(samples: list[int]) -> tuple[float, float]:
        pack = senml.pack(node, emulated, [(samples, 1_795_000_000)])
        records = senml.unpack(pack)
        as_json = json.dumps([{"n": r["name"], "u": r["unit"], "v": r["value"], "t": r["time"]} for r in records], separators=(",", ":"))
        return len(pack) / (len(samples) // 3), len(as_json) / (len(samples) // 3)

    decimal: list[int] = []
    integer: list[int] = []
    mixed: list[int] = []
    for k in range(50):
        decimal += [0, 1500 + k, k * 10]  # temperature, centi-degrees: not exact in a float narrower than a double
        integer += [2, 101325 + k, k * 10]  # pressure in Pa
        mixed += [k % 6, [1523, 6512, 101325, 350, 3, 100][k % 6] + k, (k // 6) * 10]
    cbor_decimal, json_decimal = per_reading(decimal)
    cbor_integer, _json = per_reading(integer)
    cbor_mixed, _json = per_reading(mixed)
    # What the gateway's check of a frame costs on CPython: its CRC, or an authenticated frame's tag (SPEC 3.4)
    key = bytes(range(32))
    plain = cobs.decode(frame[:-1])
    received = fr.unpack(plain)
    tagged = bytes(fr.pack(fr.Frame(received.type, received.node_id, received.counter, received.payload, fr.F_AUTH | fr.F_ACK_REQ), key))
    keys = (key, None, None)  # as the gateway's keys file gives them: current, next, previous
    checks = 20_000
    crc_s = timeit.timeit(lambda: fr.unpack(plain), number=checks)
    tag_s = timeit.timeit(lambda: fr.unpack(tagged, lambda node: keys), number=checks)
    return {
        "link_bytes_per_reading": len(frame) / SAMPLES_PER_FRAME,
        "gateway_frame_check_us_crc": round(crc_s / checks * 1e6, 2),
        "gateway_frame_check_us_tag": round(tag_s / checks * 1e6, 2),
        "senml_cbor_bytes_per_reading_50": cbor_mixed,
        "senml_cbor_bytes_per_reading_50_decimal": cbor_decimal,
        "senml_cbor_bytes_per_reading_50_integer": cbor_integer,
        "senml_json_bytes_per_reading_50_decimal": json_decimal,
        "baseline_json_bytes_per_reading": len(
            json.dumps({"node": "be00000000000001", "channel": "temperature", "value": 1500, "time": 1795000001})
        ),
    }


def firmware(workdir: Path, seconds: float) -> dict[str, Any]:
    """Frames a second the node firmware produces on the MicroPython VM, its heap high-water mark, what an
    authenticated frame's tag costs there (auth_tag_us) and an idle node's CPU."""
    from gateway.fwtools.build import build
    from gateway.fwtools.tools import find_tool

    bundle = workdir / "bundle"
    build(bundle, emulator=True)  # the unix HAL and the ROMFS image the emulated node boots from
    micropython = find_tool("micropython")
    script = bundle / "frames_per_s.py"
    script.write_text(FIRMWARE_SCRIPT)
    env = dict(os.environ, MICROPYPATH=".frozen:%s" % bundle)
    done = subprocess.run(
        [str(micropython), "-X", "heapsize=64k", script.name, str(seconds)],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    for heap_kb in (32, 36, 40, 44, 48, 52, 56, 60, 64, 72, 80, 96):
        peak, _cpu = _node_runs(bundle, str(micropython), heap_kb, seconds=6)
        if peak is not None:
            result["heap_kb"] = heap_kb  # the smallest -X heapsize the node ran in, ACKed, without a MemoryError
            result["heap_peak_bytes"] = peak  # its own report (STATUS heap_peak: live heap after a collection)
            break
    # An idle node (a sample every 30 s, as the parking bays): what a rig of 200 of them costs the machine.
    _peak, result["idle_cpu_percent"] = _node_runs(bundle, str(micropython), 64, seconds=20, interval="30")
    return result


def _node_runs(bundle: Path, micropython: str, heap_kb: int, seconds: float, interval: str = "0.2") -> tuple[int | None, float]:
    """The node's reported heap peak if it ran `seconds` in this heap with every frame acknowledged, else None;
    and the CPU it took (user + system, % of one core) after its first 3 s (its boot)."""
    import select
    import tty

    from protocols import messages as m
    from protocols.frame import F_ACK_REQ, F_DOWNLINK
    from protocols.messages import Message, encode
    from protocols.stream import StreamDecoder

    master, slave = os.openpty()
    tty.setraw(slave)
    data = Path(tempfile.mkdtemp(prefix="edgegw-heap-"))
    from gateway.fwtools.emulate import node_command

    # The node's heap for its data: its code runs from the ROMFS image, outside it (README "Heap").
    command = [*node_command(bundle, "%dk" % heap_kb), os.ttyname(slave), str(data), "5", "0.2", "1"]
    env = dict(os.environ, MICROPYPATH=".frozen")
    node = subprocess.Popen(command, cwd=bundle, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    decoder = StreamDecoder()
    peak = None
    counter = 1000
    booted: tuple[float, int] | None = None
    cpu = 0.0
    try:
        begin = time.monotonic()
        deadline = begin + seconds
        while time.monotonic() < deadline and node.poll() is None:
            if booted is None and time.monotonic() - begin >= 3:
                booted = (time.monotonic(), _cpu_ticks(node.pid))
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                continue
            decoder.feed(os.read(master, 4096))
            for message in decoder.drain():
                if not isinstance(message, Message):
                    continue
                if message.flags & F_ACK_REQ:
                    counter += 1
                    os.write(master, encode(Message(m.ACK, message.node_id, counter, {"counters": [message.counter]}, F_DOWNLINK)))
                if message.type == m.STATUS:
                    peak = message.fields.get("heap_peak")
        if booted is not None and node.poll() is None:
            cpu = 100.0 * (_cpu_ticks(node.pid) - booted[1]) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - booted[0])
    finally:
        node.terminate()
        out, _ = node.communicate(timeout=10)
        os.close(master)
        os.close(slave)
        shutil.rmtree(data, ignore_errors=True)
    said = out.decode(errors="replace")
    if "MemoryError" in said or "out of memory" in said or "Traceback" in said:
        return None, cpu
    return peak, cpu


def _cpu_ticks(pid: int) -> int:
    """User + system clock ticks of a process, all its threads (/proc/PID/stat fields 14 and 15)."""
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


FIRMWARE_SCRIPT = """
import gc, json, sys, time
from protocols import messages
from protocols.frame import F_ACK_REQ
from protocols.messages import Message, encode
node = bytes([0xE1, 0, 0, 0, 0, 0, 0, 7])
seconds = float(sys.argv[1])
frames = 0
peak = 0
start = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), start) < seconds * 1000:
    samples = []
    for channel in range(6):
        samples += [channel, 1500 + frames % 100, 0]
    encode(Message(messages.READINGS, node, frames + 1, {"base_time": 1795000000, "samples": samples * 2}, F_ACK_REQ))
    frames += 1
    if frames % 50 == 0:
        gc.collect()
        peak = max(peak, gc.mem_alloc())
elapsed = time.ticks_diff(time.ticks_ms(), start) / 1000
# The authenticated variant's cost (SPEC.md 3.4): the tag of a frame of MAX_FRAME bytes (HMAC-SHA256
# of its 247 bytes before the tag), on the VM, per frame.
from protocols.auth import tag
key = bytes(range(32))
body = bytes(247)
tags = 0
begin = time.ticks_us()
while time.ticks_diff(time.ticks_us(), begin) < seconds * 200000:
    tag(key, body)
    tags += 1
tag_us = time.ticks_diff(time.ticks_us(), begin) / tags
print(json.dumps({"frames_per_s": frames / elapsed, "samples_per_frame": 12, "heap_alloc_after_collect": peak, "auth_tag_us": tag_us}))
"""


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 2)


# ------------------------------------------------------------------ the run


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


def commits() -> dict[str, Any]:
    """The commit measured: HEAD, and the newest commit that changed the code under measurement or its tests (the
    gateway, the protocol, the firmware, the harness that starts them, the dependencies), which is what a
    before/after comparison is about; `dirty` if those files were edited."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    outside = ["gateway", "protocols", "firmware", "hil", "tests", "pyproject.toml"]
    return {
        "commit": git("rev-parse", "--short=7", "HEAD"),
        "code_commit": git("log", "-1", "--format=%h", "--abbrev=7", "--", *outside),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", *outside)),
    }


def run_all(quick: bool, log: Callable[[str], None], only: set[str] | None = None) -> dict[str, Any]:
    scale = 0.25 if quick else 1.0
    seconds = 20 * scale
    results: dict[str, Any] = {"machine": machine(), "quick": quick, "when": time.strftime("%Y-%m-%d %H:%M:%S"), **commits()}
    if only:
        results["only"] = sorted(only)
    results["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]  # the machine is shared: how busy it was
    work = Path(tempfile.mkdtemp(prefix="edgegw-bench-"))
    try:
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("footprint", footprint),
            ("radio", lambda: radio.figures(scale)),  # issue 15: airtime per reading, nodes per bridge (bench/radio.py)
            # issue 15: delivery against nodes per bridge through a real bridge, gateway and broker (bench/radio_gateway.py)
            ("radio_gateway", lambda: radio_gateway.figures(work / "rg", scale, log)),
            ("firmware", lambda: firmware(work / "fw", 5 * scale)),
            ("ingest_gateway", lambda: ingest("gateway", work / "ig", 4, 50, seconds)),
            ("ingest_baseline", lambda: ingest("baseline", work / "ib", 4, 50, seconds)),
            ("steady_gateway", lambda: steady("gateway", work / "sg", 4, 250, 1000, seconds)),
            ("steady_baseline", lambda: steady("baseline", work / "sb", 4, 250, 1000, seconds)),
            ("drain_gateway", lambda: drain(work / "dg", int(5_000_000 * scale * scale), 1000, 60 * scale)),
            ("outage_baseline", lambda: outage_loss("baseline", work / "ob", 100, 5 * scale, 30 * scale, 5 * scale)),
            ("outage_gateway", lambda: outage_loss("gateway", work / "og", 100, 5 * scale, 30 * scale, 5 * scale)),
            ("flaky_uplink", lambda: flaky_uplink(work / "fu", scale)),
            # Issue 12: storage and CPU at city load (one frame a node a minute), broker up, then down.
            ("city_1000", lambda: load(work / "c1", 4, 250, 1000 / 60, 60 * scale, 60 * scale, 20 * scale, outage=True)),
            ("city_10000", lambda: load(work / "c10", 4, 2500, 10_000 / 60, 60 * scale, 60 * scale, 20 * scale, outage=True)),
            # CPU per reading at 1,000 and 8,000 readings/s (each node a frame a second), broker up.
            ("cpu_1000", lambda: load(work / "k1", 4, 25, 100, 5, 30 * scale, 10 * scale, outage=False)),
            ("cpu_8000", lambda: load(work / "k8", 4, 200, 800, 5, 30 * scale, 10 * scale, outage=False)),
        ]
        unknown = (only or set()) - {name for name, _step in steps}
        if unknown:
            raise SystemExit("bench: no step %s; the steps are %s" % (", ".join(sorted(unknown)), ", ".join(name for name, _ in steps)))
        for name, step in steps:
            if only and name not in only:
                continue
            started = time.monotonic()
            log("bench: %s ..." % name)
            try:
                results[name] = step()
            except Exception as error:  # a benchmark that breaks is reported, the others still run
                results[name] = {"error": "%s: %s" % (type(error).__name__, error)}
            results[name]["wall_s"] = round(time.monotonic() - started, 1)
            log("bench: %s %s" % (name, json.dumps(results[name])))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a quarter of the sizes and durations (a smoke run)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results.jsonl"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "PERFORMANCE.md"))
    parser.add_argument(
        "--only",
        help="comma-separated steps to run: a partial run, recorded as such; the report shows each step's newest run",
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    results = run_all(args.quick, lambda line: print(line, flush=True), only)
    command = ["python -m bench.run" if args.quick or only else "make bench"] + (["--quick"] if args.quick else [])
    results["command"] = " ".join(command + (["--only", args.only] if only else []))
    with open(args.results, "a") as handle:
        handle.write(json.dumps(results) + "\n")
    from .report import write_report

    write_report(Path(args.results), Path(args.doc))
    print("bench: results appended to %s; %s regenerated" % (args.results, args.doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
