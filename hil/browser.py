"""A real browser for the gateway's status page: Debian's headless Chromium loads it, gives its DOM as rendered
and a screenshot, and the screenshot's pixels are counted by colour (a sparkline drawn is pixels of its
stroke, not only an element in the DOM).

    python -m hil.browser URL OUT.png      # a screenshot of a running gateway's page (docs/status-page.png)
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

WINDOW = "1280,1000"


class BrowserError(Exception):
    pass


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise BrowserError("Debian's chromium is not installed (make test installs it: apt-get install chromium)")
    return found


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="edgegw-chromium-") as profile:
        # root in a container: no sandbox; a throwaway profile, so no run sees another's cache or cookies
        command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--user-data-dir=%s" % profile]
        command += ["--no-first-run", "--window-size=%s" % WINDOW, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def dom(url: str) -> str:
    """The page's DOM after it loaded, as Chromium serialises it."""
    done = _run("--dump-dom", url)
    if done.returncode != 0 or "<html" not in done.stdout:
        raise BrowserError("chromium --dump-dom %s failed (%d): %s" % (url, done.returncode, done.stderr[-500:]))
    return done.stdout


def screenshot(url: str, out: Path) -> Path:
    out = Path(out).resolve()
    done = _run("--screenshot=%s" % out, url)
    if done.returncode != 0 or not out.exists():
        raise BrowserError("chromium --screenshot %s failed (%d): %s" % (url, done.returncode, done.stderr[-500:]))
    return out


def count_colour(png: Path, rgb: tuple[int, int, int], tolerance: int = 40) -> int:
    """Pixels within `tolerance` (per channel) of rgb in an 8-bit RGB or RGBA, non-interlaced PNG (Chromium's)."""
    data = Path(png).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise BrowserError("%s is not a PNG" % png)
    at, chunks, header = 8, [], b""
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        at += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in (2, 6) or interlace:
        raise BrowserError("%s: only 8-bit RGB/RGBA non-interlaced PNGs are read here" % png)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    previous = bytearray(stride)
    found = 0
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):  # undo the row's filter (PNG spec, section 9)
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        for x in range(0, stride, channels):
            if all(abs(line[x + c] - rgb[c]) <= tolerance for c in range(3)):
                found += 1
        previous = line
    return found


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m hil.browser URL OUT.png")
    print(screenshot(sys.argv[1], Path(sys.argv[2])))
