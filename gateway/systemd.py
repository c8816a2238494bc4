"""sd_notify(3) without libsystemd: READY, STATUS, STOPPING and the watchdog, as datagrams to $NOTIFY_SOCKET.

Under `Type=notify` systemd waits for READY=1 (sent once the ports and the buffer are up), shows the latest
STATUS= line in `systemctl status`, and with `WatchdogSec=` restarts the service when WATCHDOG=1 stops
coming. The pings are sent by a task on the agent's event loop, not a thread: a loop that hangs (a blocking
call, a busy loop) stops them, and that is exactly what the watchdog is for. Outside systemd (no
NOTIFY_SOCKET) everything here does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        # An abstract socket is named with a leading '@' in the variable, a NUL on the wire
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._failed = False
        self.watchdog_s: float | None = None  # the interval systemd expects pings within, if it watches us
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000

    @property
    def active(self) -> bool:
        return bool(self._address)

    def send(self, *lines: str) -> None:
        """One datagram of KEY=VALUE lines; a failure is said once and never raised (systemd may be restarting)."""
        if not self._address:
            return
        message = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as error:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self._address.replace("\0", "@"), error.strerror or error)
            self._failed = True
            return
        self._failed = False

    def ready(self, status: str) -> None:
        self.send("READY=1", "STATUS=%s" % status)

    def status(self, status: str) -> None:
        self.send("STATUS=%s" % status)

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", "STATUS=%s" % status)

    async def watchdog(self) -> None:
        """WATCHDOG=1 at half the interval systemd expects (sd_watchdog_enabled(3) advises that); run only when
        watchdog_s is set (the agent's tasks must not end)."""
        assert self.watchdog_s is not None
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s / 2)
