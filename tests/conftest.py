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
