"""Pseudo-terminals standing in for serial cables.

The node side holds the pty master; the gateway opens the slave through a
stable symlink, as it would open /dev/serial/by-id/... on a Raspberry Pi.
"Unplugging" closes the master and removes the symlink; "replugging" makes a
new pty behind the same symlink.
"""

from __future__ import annotations

import os
import select
import tty
from pathlib import Path


class PtyCable:
    def __init__(self, link_path: Path | str) -> None:
        self.link_path = Path(link_path)
        self.master = -1
        self.slave = -1
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        tmp = self.link_path.with_name(self.link_path.name + ".new")
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(os.ttyname(self.slave), tmp)
        os.replace(tmp, self.link_path)

    def unplug(self) -> None:
        if self.link_path.is_symlink():
            self.link_path.unlink()
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1

    @property
    def plugged(self) -> bool:
        return self.master >= 0

    def write(self, data: bytes, timeout: float = 5.0) -> None:
        view = memoryview(data)
        while view:
            _, ready, _ = select.select([], [self.master], [], timeout)
            if not ready:
                raise TimeoutError("the pty did not drain within %.1f s" % timeout)
            written = os.write(self.master, view)
            view = view[written:]

    def read(self, timeout: float) -> bytes:
        """Whatever the gateway wrote, waiting up to timeout for the first byte."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self.master, 65536)
        except (BlockingIOError, OSError):
            return b""

    def close(self) -> None:
        self.unplug()
