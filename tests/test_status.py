"""Issue 16: one metrics registry (gateway/metrics.py), the status built from it (gateway/status.py), the agent's
control socket (gateway/control.py) and `edgegw status` against a running gateway."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.control import ControlError, ControlServer, ask
from gateway.metrics import BufferTrend, Metrics, buffer_reader, node_reader, port_reader, uplink_reader
from gateway.status import document, mqtt_document, table
from hil.broker import Mosquitto
from hil.gateway import GatewayProcess
from hil.scripted_node import ScriptedNode
from hil.serial_pair import PtyCable

NODE_A = bytes.fromhex("0000a4cf12b3c4d5")


class _Link:
    def __init__(self, path: str) -> None:
        self.path = path
        self.frames, self.bytes_in, self.duplicates = 10, 420, 1
        self.errors: Counter[str] = Counter({"crc": 2, "cobs": 1})
        self.downlink = type("Downlink", (), {"dropped": Counter({"queue_full": 3})})()


class _Node:
    def __init__(self, hex_id: str, radio: dict[str, Any]) -> None:
        self.hex, self.last_seen, self.last_port = hex_id, 1_800_000_000.5, "/dev/ttyUSB0"
        self.readings, self.missing = 30, 2
        self.status: dict[str, Any] = {"battery_mv": 3710}
        self.radio = radio


class _Store:
    pending_readings, pending_events, used_bytes = 1200, 3, 81920


class _Uplink:
    connected, connections, connected_since = False, 4, None


def _registry() -> tuple[Metrics, BufferTrend]:
    metrics = Metrics("gw-1", "9.9.9", clock=lambda: 1_800_000_000.0)
    trend = BufferTrend()
    metrics.reader(port_reader(lambda: [_Link("/dev/ttyUSB0")]))
    metrics.reader(
        node_reader(lambda: [_Node("0000a4cf12b3c4d5", {}), _Node("e100000000001b6d", {"rssi": -117, "snr": -4.5, "sf": 10, "pdr": 0.97})])
    )
    metrics.reader(buffer_reader(lambda: _Store(), trend))  # type: ignore[arg-type,return-value]
    metrics.reader(uplink_reader(_Uplink(), "broker.example", 8883))  # type: ignore[arg-type]
    return metrics, trend


def test_the_status_is_built_from_the_registry_alone() -> None:
    metrics, trend = _registry()
    trend.add(0.0, 1500)
    trend.add(30.0, 1200)  # 300 readings left in 30 s: 10/s, empty in 120 s
    trend.oldest(1_799_999_100.0, 1_800_000_030.0)
    for seconds in (0.004, 0.004, 0.3):
        metrics.puback.observe(seconds)
    metrics.publishes.labels("readings").inc(3)
    metrics.commands_ended.labels("succeeded").inc()
    doc = document(metrics.snapshot(), now=1_800_000_060.0)
    assert (doc["gateway_id"], doc["version"], doc["uptime_s"]) == ("gw-1", "9.9.9", 60)
    assert doc["ports"] == {
        "/dev/ttyUSB0": {"frames": 10, "bytes": 420, "duplicates": 1, "errors": {"cobs": 1, "crc": 2}, "replies_dropped": {"queue_full": 3}}
    }
    wired = doc["nodes"]["0000a4cf12b3c4d5"]
    assert wired == {"port": "/dev/ttyUSB0", "last_seen": 1_800_000_000.5, "readings": 30, "missing_frames": 2, "battery_v": 3.71}
    radio = doc["nodes"]["e100000000001b6d"]
    assert (radio["rssi_dbm"], radio["snr_db"], radio["sf"], radio["delivery_ratio"]) == (-117, -4.5, 10, 0.97)
    assert doc["buffer"] == {"readings": 1200, "events": 3, "bytes": 81920, "oldest_age_s": 930.0, "drain_per_s": 10.0, "empty_in_s": 120}
    assert doc["uplink"]["connected"] is False and doc["uplink"]["broker"] == "broker.example:8883" and doc["uplink"]["connections"] == 4
    assert doc["uplink"]["publishes"] == {"readings": 3}
    assert doc["uplink"]["puback_mean_ms"] == pytest.approx(102.7, abs=0.1)
    assert doc["uplink"]["puback_p99_ms_at_most"] == 500.0  # the bucket the 3rd of 3 falls in: (250, 500] ms
    assert doc["commands_ended"] == {"succeeded": 1}
    assert doc["buffered_readings"] == 1200  # the MQTT topic's flat keys, the same numbers
    assert mqtt_document(metrics.snapshot(), "online")["nodes"] == 2
    json.dumps(doc, allow_nan=False)  # valid JSON, no NaN for what a node did not say

    text = table(doc, now=1_800_000_060.0)
    assert "NOT CONNECTED to broker.example:8883" in text
    assert "1200 readings (3 events), 81.9 KB, oldest 15m30s; draining 10.0/s, empty in about 2m00s" in text
    assert "e100000000001b6d" in text and "SF10 -117 dBm -4.5 dB" in text and "3.71 V" in text


def test_the_prometheus_exposition_is_the_same_registry() -> None:
    metrics, _ = _registry()
    text = metrics.exposition().decode()
    assert 'edgegw_port_bad_frames_total{port="/dev/ttyUSB0",reason="crc"} 2.0' in text
    assert 'edgegw_node_rssi_dbm{node="e100000000001b6d"} -117.0' in text
    assert "edgegw_buffer_readings 1200.0" in text
    assert 'edgegw_info{gateway_id="gw-1",version="9.9.9"} 1.0' in text


def test_the_drain_rate_looks_back_one_minute_and_is_zero_while_the_buffer_grows() -> None:
    trend = BufferTrend(window_s=60.0)
    for second in range(0, 121, 5):  # 100/s out until 60 s, then growing
        trend.add(float(second), 10_000 - 100 * min(second, 60) + 50 * max(0, second - 60))
    assert trend.drain_per_s() == 0.0
    trend = BufferTrend(window_s=60.0)
    for second in range(0, 121, 5):
        trend.add(float(second), 20_000 - 100 * second)
    assert trend.drain_per_s() == pytest.approx(100.0)


# ------------------------------------------------------------ the control socket


async def test_the_socket_is_the_services_and_a_dead_agents_is_replaced(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "edgegw.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: left by a killed agent
    server = ControlServer(path, lambda: {"state": "online", "n": 1})
    await server.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        second = ControlServer(path, lambda: {})
        with pytest.raises(ControlError, match="another agent is running"):
            await second.start()
        answer = await _ask_in_thread(path, "status")
        assert answer == {"state": "online", "n": 1}
        with pytest.raises(ControlError, match="unknown request 'reboot'"):
            await _ask_in_thread(path, "reboot")
    finally:
        await server.stop()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        await ControlServer(path, lambda: {}).start()
    with pytest.raises(ControlError, match="longer than the 107 bytes"):
        await ControlServer(tmp_path / ("x" * 120), lambda: {}).start()


async def _ask_in_thread(path: pathlib.Path, request: str) -> dict[str, Any]:
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, ask, path, request)


def test_asking_with_no_agent_says_what_to_do(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ControlError, match=r"no agent is running for this config \(no socket .*\): start it"):
        ask(tmp_path / "missing.sock")
    left = tmp_path / "left.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(left))
    with pytest.raises(ControlError, match="the agent is not running"):
        ask(left)


# ------------------------------------------------------------ against a running gateway


@pytest.fixture
def running(tmp_path: pathlib.Path, hil_broker: Mosquitto) -> Iterator[tuple[GatewayProcess, PtyCable]]:
    cable = PtyCable(tmp_path / "ttyNODE0")
    process = GatewayProcess(tmp_path / "gw", hil_broker.port, [str(tmp_path / "ttyNODE*")])
    process.start()
    yield process, cable
    process.close()
    cable.close()


def _status(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_edgegw_status_shows_the_running_agents_ports_nodes_and_buffer(running: tuple[GatewayProcess, PtyCable]) -> None:
    gateway, cable = running
    gateway.wait_for_log("ttyNODE0: open")
    node = ScriptedNode(cable, NODE_A)
    node.wait_acked([node.hello()])
    sent = [node.readings([0, 2100 + i, 0, 1, i, 0], base_time=1795000000 + i) for i in range(4)]
    node.wait_acked(sent)

    done = _status("--config", str(gateway.config_path), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["state"] == "online" and doc["gateway_id"] == "gw-test"
    (port,) = doc["ports"]
    assert port.endswith("ttyNODE0") and doc["ports"][port]["frames"] >= 5 and doc["ports"][port]["bytes"] > 0
    entry = doc["nodes"]["0000a4cf12b3c4d5"]
    assert entry["port"] == port and entry["readings"] == 8 and entry["missing_frames"] == 0  # 4 frames of 2 readings
    assert doc["uplink"]["connected"] is True and doc["uplink"]["publishes"].get("readings", 0) >= 1
    assert doc["storage"]["written_bytes"] > 0

    done = _status("--config", str(gateway.config_path))
    assert done.returncode == 0, done.stderr
    assert "uplink    connected to 127.0.0.1:" in done.stdout and "0000a4cf12b3c4d5" in done.stdout

    watching = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "status", "--config", str(gateway.config_path), "--watch", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    watching.terminate()
    out, _ = watching.communicate(timeout=10)
    assert out.count("edgegw gw-test") >= 2  # followed: screen after screen

    # the doctor asks the running agent rather than opening its ports, and logs in beside it
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "doctor", "--config", str(gateway.config_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    checks = {check["check"]: check for check in json.loads(done.stdout)["checks"]}
    assert checks["agent"]["result"] == "PASS" and "uplink connected" in checks["agent"]["detail"]
    assert checks["node on %s" % port]["result"] == "PASS" and "the agent has read" in checks["node on %s" % port]["detail"]
    assert checks["broker login"]["result"] == "PASS"
    after = json.loads(_status("--config", str(gateway.config_path), "--json").stdout)["uplink"]
    assert after["connected"] and after["connections"] == 1  # the doctor's CONNECT did not take the agent's session over

    assert gateway.stop() == 0
    done = _status("--config", str(gateway.config_path))
    assert done.returncode == 2 and "no agent is running for this config" in done.stderr and "Traceback" not in done.stderr


def test_edgegw_status_with_a_bad_config_names_the_key(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "edgegw.toml"
    bad.write_text('[gateway]\nid = "gw"\ndata_dir = "%s"\n[mqtt]\nhost = "localhost"\n[status]\nsockett = "x"\n' % tmp_path)
    done = _status("--config", str(bad))
    assert done.returncode == 2 and "[status] sockett: unknown key (did you mean 'socket'?)" in done.stderr


def test_missing_frames_are_counter_gaps_of_frames_that_never_arrived() -> None:
    """Not what a reboot's HELLO skips, not a counter that jumped, not a frame that arrived and was refused; a gap
    filled by a late frame is taken back."""
    from protocols import Message, encode, messages
    from protocols import frame as fr
    from tests.test_hostile import NODE, Bench

    bench = Bench()

    def readings(counter: int, samples: list[Any] | None = None) -> None:
        bench.feed(encode(Message(messages.READINGS, NODE, counter, {"samples": samples or [0, 1, 0]}, fr.F_ACK_REQ)))

    bench.hello(1)
    node = bench.sessions.nodes[NODE.hex()]
    for counter in (2, 3, 5, 6):  # 4 never came
        readings(counter)
    assert node.missing == 1
    readings(4)  # resent late: not missing after all
    assert node.missing == 0
    readings(9, [7, 1, 0])  # 7 and 8 never came; 9 arrived and was refused (channel 7 is not in its HELLO)
    readings(10)
    assert node.missing == 2
    bench.hello(64)  # a reboot: the node's counter moved to its next flash block, nothing lost
    readings(65)
    assert node.missing == 2
    readings(65 + 300)  # a counter that jumped far (moved, not 300 frames lost)
    assert node.missing == 2


async def test_a_client_that_never_reads_cannot_hold_the_agents_stop(tmp_path: pathlib.Path) -> None:
    import asyncio

    path = tmp_path / "edgegw.sock"
    server = ControlServer(path, lambda: {"nodes": {"%016x" % i: {"x": "y" * 64} for i in range(50_000)}})  # megabytes
    await server.start()
    sluggard = socket.socket(socket.AF_UNIX)
    sluggard.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sluggard, str(path))
    await asyncio.get_running_loop().sock_sendall(sluggard, b"status\n")
    silent = socket.socket(socket.AF_UNIX)  # and one that says nothing at all
    silent.setblocking(False)
    await asyncio.get_running_loop().sock_connect(silent, str(path))
    await asyncio.sleep(0.5)  # the answer is under way, its client reads nothing
    began = time.monotonic()
    await server.stop()
    assert time.monotonic() - began < 3.0 and not path.exists()
    sluggard.close()
    silent.close()
