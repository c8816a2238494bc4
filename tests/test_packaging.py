"""The installed package carries what the tools need at run time, firmware included."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import zipfile

from tests.conftest import ROOT


def test_wheel_carries_firmware_protocol_spec_and_vectors(tmp_path: pathlib.Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("edgegw-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected_sources = {str(p.relative_to(ROOT)) for folder in ("firmware", "protocols", "gateway") for p in (ROOT / folder).rglob("*.py")}
    assert expected_sources <= names
    assert {"protocols/SPEC.md", "protocols/vectors/vectors.json"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "edgegw = gateway.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
