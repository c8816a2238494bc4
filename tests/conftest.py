"""Shared test helpers: paths and the real MicroPython interpreter."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest
from hypothesis import settings

from gateway.fwtools.tools import find_tool

pytest_plugins = ["pytester"]  # tests/test_hil.py runs the HIL plugin in a pytest of its own

# No per-example deadline: a busy 2-core CI machine must not turn slowness into failures.
settings.register_profile("edgegw", deadline=None)
settings.load_profile("edgegw")

ROOT = pathlib.Path(__file__).resolve().parent.parent


# Fixtures that start real processes (the HIL plugin's, and the helpers below that wrap them).
_PROCESS_FIXTURES = ("hil_broker", "hil_gateway", "hil_nodes", "hil_capture", "hil_scenario", "pytester")


# The files that take longest, longest first (`pytest --durations`, summed per file; a fresh clone on this
# machine, 2026-12-03). `make test` hands whole files to its workers in collection order
# (--dist loadfile --no-loadscope-reorder): these go first, so that no worker starts a four-minute file
# while the others run out of work (longest-processing-time-first scheduling). xdist's own reorder puts
# the files with the most tests first: the many quick unit tests, and the long end-to-end files last.
SLOW_FILES = (
    "test_hil_radio_tree_e2e.py",
    "test_hil_radio_flood_e2e.py",
    "test_hil_radio_e2e.py",
    "test_hil_radio_parking_e2e.py",
    "test_hil_e2e.py",
    "test_hil_city_e2e.py",
    "test_powercut.py",
    "test_swarm_e2e.py",
    "test_logs.py",
    "test_firmware.py",
    "test_security_e2e.py",
    "test_commands_e2e.py",
    "test_events_e2e.py",
    "test_swarm.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by what they use: `micropython` runs the VM, `processes` starts brokers, gateways or nodes.
    Tests that start processes without a fixture (the hil-marked ones, subprocess calls) mark themselves.
    The slowest files go first (SLOW_FILES); the rest keep their order."""
    rank = {name: index for index, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: order within a file kept
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "micropython" in names:
            item.add_marker(pytest.mark.micropython)
        if any(name in names for name in _PROCESS_FIXTURES) or item.get_closest_marker("hil"):
            item.add_marker(pytest.mark.processes)


def _tool(name: str) -> str:
    found = find_tool(name)
    if found is None:
        pytest.fail("%s is not installed: run `make test`, which installs the test extras" % name)
    return found


@pytest.fixture(scope="session")
def micropython() -> str:
    return _tool("micropython")


@pytest.fixture(scope="session")
def mpy_cross() -> str:
    return _tool("mpy-cross")


def run_micropython(micropython: str, *args: str, heap: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [micropython]
    if heap:
        command += ["-X", "heapsize=%s" % heap]
    command += list(args)
    env = dict(os.environ, MICROPYPATH=".frozen:%s" % ROOT)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env, check=False)
