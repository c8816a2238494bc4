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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by what they use: `micropython` runs the VM, `processes` starts brokers, gateways or nodes.
    Tests that start processes without a fixture (the hil-marked ones, subprocess calls) mark themselves."""
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
