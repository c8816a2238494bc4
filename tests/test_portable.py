"""The portable code on the real MicroPython toolchain: mpy-cross, the unix port, small heaps."""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest

from tests.conftest import ROOT, run_micropython
from tests.portable import stream_check

PORTABLE_FILES = sorted(p for folder in ("protocols", "firmware") for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.micropython
@pytest.mark.parametrize("source", PORTABLE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_mpy_cross_compiles(source: pathlib.Path, mpy_cross: str, tmp_path: pathlib.Path) -> None:
    output = tmp_path / (source.stem + ".mpy")
    done = subprocess.run([mpy_cross, "-o", str(output), str(source)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert output.read_bytes()[:1] == b"M"  # .mpy magic


@pytest.fixture(scope="module")
def compiled(mpy_cross: str, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """protocols/ and the stream check as .mpy, the way they go onto a board."""
    out = tmp_path_factory.mktemp("mpy")
    sources = [(p, out / "protocols" / (p.stem + ".mpy")) for p in (ROOT / "protocols").glob("*.py")]
    sources.append((ROOT / "tests" / "portable" / "stream_check.py", out / "stream_check.mpy"))
    (out / "protocols").mkdir()
    for source, target in sources:
        subprocess.run([mpy_cross, "-o", str(target), str(source)], check=True)
    return out


@pytest.mark.micropython
def test_noisy_stream_on_micropython_matches_cpython(micropython: str) -> None:
    expected = stream_check.run(7, 120)
    assert expected["received"] == expected["sent"]
    assert expected["errors"] > 0  # the noise really did hit the decoder
    done = run_micropython(micropython, "tests/portable/stream_check.py", str(ROOT), "7", "120")
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout) == expected


@pytest.mark.micropython
def test_compiled_protocol_runs_in_a_node_heap(micropython: str, compiled: pathlib.Path) -> None:
    """Precompiled as on a board, the decoder and its 40-frame test stream fit the 64 KB node heap."""
    expected = stream_check.run(11, 40)
    done = subprocess.run(
        [micropython, "-X", "heapsize=64k", "-m", "stream_check", str(compiled), "11", "40"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"MICROPYPATH": str(compiled)},
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout) == expected


@pytest.mark.micropython
def test_micropython_is_a_real_micropython(micropython: str) -> None:
    done = run_micropython(micropython, "-c", "import sys; print(sys.implementation.name, sys.implementation.version[:2])")
    name, major, minor = done.stdout.replace("(", " ").replace(")", " ").replace(",", " ").split()
    assert name == "micropython" and (int(major), int(minor)) >= (1, 22)
