"""The `edgegw` command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

VECTORS = json.loads((ROOT / "protocols" / "vectors" / "vectors.json").read_text())["frames"]


def edgegw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


def test_decode_prints_a_readable_message() -> None:
    hello = next(v for v in VECTORS if v["name"] == "hello")
    done = edgegw("decode", hello["hex"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("HELLO node=0000a4cf12b3c4d5 #1 [ack-req] v1.0")
    assert "'fw_version': '0.1.0'" in done.stdout


def test_decode_reports_a_bad_frame_without_a_traceback() -> None:
    bad = next(v for v in VECTORS if v["name"] == "error_crc")
    done = edgegw("decode", bad["hex"])
    assert done.returncode == 1
    assert done.stdout.startswith("BAD FRAME crc:")
    assert "Traceback" not in done.stderr


def test_decode_rejects_text_that_is_not_hex() -> None:
    done = edgegw("decode", "hello")
    assert done.returncode == 2
    assert done.stderr.strip() == "edgegw: not hex: 'hello'"


def test_version() -> None:
    done = edgegw("--version")
    assert done.returncode == 0 and done.stdout.startswith("edgegw 0.1.0")
