"""End to end through the HIL plugin: real firmware on MicroPython -> faulty serial -> `edgegw run` -> disk -> mosquitto.

Each test runs a scenario of hil/scenarios (the same files `edgegw hil run`
takes) and reads its report. With `--hil-target=bench --hil-config FILE` the
same tests run against real boards; faults a bench cannot apply are skipped
with the reason.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from hil.report import Report
from tests.conftest import ROOT

pytestmark = pytest.mark.hil

RunScenario = Callable[..., Report]
CHANNELS = ("temperature", "water_level", "counter")  # rows of the demo's live view, each with a value


def assert_continuous(report: Report) -> None:
    flow = report.flow
    assert report.passed, report.summary()
    assert flow.lost == 0 and flow.unexpected == 0, report.summary()
    for node in flow.nodes:
        assert node.delivered == node.produced > 0, report.summary()


def test_ten_nodes_steady_flow_every_counter_value_arrives(hil_scenario: RunScenario) -> None:
    report = hil_scenario("steady", duration=20)
    assert_continuous(report)
    assert len(report.flow.nodes) == 10
    assert report.flow.produced >= 10 * 15  # ten nodes, one reading a second, 20 s
    assert report.flow.duplicated == 0, "no fault, so no reading is published twice"
    assert report.latency_ms(0.99) is not None


def test_broker_down_for_30_s_loses_nothing_and_the_backlog_drains(hil_scenario: RunScenario) -> None:
    report = hil_scenario("broker-outage")
    assert_continuous(report)
    (outage,) = report.faults
    assert "broker_down" in outage.description and outage.recovery_s is not None
    assert report.flow.peak_backlog >= 3 * 25, "30 s without a broker: the gateway held at least 25 s of three nodes' readings"


def test_gateway_sigkilled_three_times_loses_nothing(hil_scenario: RunScenario) -> None:
    report = hil_scenario("gateway-kill")
    assert_continuous(report)
    assert len(report.faults) == 3 and all(f.recovery_s is not None for f in report.faults)


def test_line_noise_and_garbage_no_corrupted_reading_and_nothing_lost(hil_scenario: RunScenario) -> None:
    report = hil_scenario("line-noise")
    assert_continuous(report)
    assert report.line_damage["bits_flipped"] > 0 and report.line_damage["garbage_bytes"] > 0, "the noise really hit the line"
    assert report.flow.unexpected == 0


def test_cable_unplugged_and_replugged_the_gateway_recovers_the_port(hil_scenario: RunScenario) -> None:
    report = hil_scenario("unplug")
    assert_continuous(report)
    (unplug,) = report.faults
    assert unplug.recovery_s is not None


def test_node_reboot_counters_continue_and_no_frame_is_stored_twice(hil_scenario: RunScenario) -> None:
    report = hil_scenario("node-reboot")
    assert_continuous(report)
    assert report.counter_reuse == {}, "a rebooted node's HELLO counter is above everything it sent before"
    assert report.flow.duplicated == 0, "the gateway did not crash: every frame is stored and published once"


def hil_run(scenario: Path, reports: Path, workdir: str) -> subprocess.CompletedProcess[str]:
    """`edgegw hil run` as a technician runs it, from the project's folder."""
    where = ["--report-dir", str(reports), "--workdir", workdir]
    command = [sys.executable, "-m", "gateway.cli", "hil", "run", str(scenario), *where]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)


def test_hil_run_reports_a_loss_and_exits_non_zero(tmp_path: Path) -> None:
    """The harness must see a loss when there is one: a 64 KB node's small ring cannot outlast a 15 s unplug."""
    scenario = tmp_path / "too-long-unplug.toml"
    scenario.write_text(
        'name = "too-long-unplug"\ndescription = "Longer than the ring of a 64 KB node can hold."\n'
        'nodes = 1\nduration = 18\ninterval = 0.5\nheap = "64k"\nsettle = 5\n'
        '[[faults]]\nkind = "unplug"\nat = 2\nduration = 15\n'
    )
    reports = tmp_path / "reports"
    # Not a directory of its own in /tmp; relative, as a technician types it: the nodes' VMs run in another folder
    done = hil_run(scenario, reports, os.path.relpath(tmp_path / "work", ROOT))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED" in done.stdout and "LOST" in done.stdout and "NOT recovered" in done.stdout
    data = json.loads((reports / "too-long-unplug.json").read_text())
    assert data["passed"] is False and data["readings"]["lost"] > 0
    assert "<failure" in (reports / "too-long-unplug.junit.xml").read_text()


def test_hil_run_says_why_a_node_did_not_start_without_a_traceback(tmp_path: Path) -> None:
    """A heap too small for the firmware: the harness failed, not the scenario (exit 2), and the node's own last words say why."""
    scenario = tmp_path / "tiny-heap.toml"
    scenario.write_text('name = "tiny-heap"\ndescription = "No node boots in it."\nnodes = 1\nduration = 5\ninterval = 0.5\nheap = "2k"\n')
    done = hil_run(scenario, tmp_path / "reports", str(tmp_path / "work"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "could not be run: node 0 did not start" in done.stderr and "MemoryError" in done.stderr, done.stderr
    assert "Traceback (most recent call last):\n" not in done.stderr, "a Python traceback of the harness itself"


def test_demo_shows_live_readings_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    expected = ("node", "channel", "latest value", "readings/min", "buffered on disk", *CHANNELS)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    shown = threading.Event()

    def read() -> None:  # until a snapshot shows every channel of a node with its value: then Ctrl-C
        assert process.stdout is not None
        for raw in process.stdout:
            lines.append(raw.decode(errors="replace"))
            if all(re.search(r"^[0-9a-f]{16} +%s +\S" % channel, "".join(lines[-40:]), re.M) for channel in CHANNELS):
                shown.set()
        shown.set()  # the demo ended by itself: the assertions below say why

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert shown.wait(180), "no snapshot with live readings within 180 s:\n%s" % "".join(lines)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        reader.join(10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = "".join(lines)
    assert process.returncode == 0, text
    for word in expected:
        assert word in text, text
    assert "edgegw demo: stopped." in text
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False).stdout.split()
    assert leftovers == [], "processes left behind: %s" % leftovers
