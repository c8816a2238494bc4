"""A real mosquitto on a free loopback port that a test can stop, kill and restart (outages)."""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

from gateway.fwtools.tools import stop_process

from .processes import track


class BrokerError(RuntimeError):
    pass


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)
    if found is None:
        raise BrokerError("mosquitto is not installed: `make test` installs it (apt-get install mosquitto)")
    return found


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range. One inside it can be taken while the broker is
    down: a client retrying 127.0.0.1:PORT may be given PORT as its own source port and connect to itself (TCP
    simultaneous open), and the restarted broker then finds its address in use (a full flood-warning-radio run
    ended so)."""
    low = 32768
    with contextlib.suppress(OSError, ValueError, IndexError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    draw = random.Random()
    for _ in range(200):
        port = draw.randrange(10000, max(10001, low))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:  # nothing free below the range: any port the kernel gives
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Mosquitto:
    """One broker process; the port stays the same across restarts, so clients can come back."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        users: dict[str, str] | None = None,
        anonymous: bool = True,
        tls: tuple[Path, Path, Path] | None = None,
        require_client_cert: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.process: subprocess.Popen[bytes] | None = None
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        lines = [
            "listener %d %s" % (self.port, self.host),
            "allow_anonymous %s" % ("true" if anonymous else "false"),
        ]
        if users:
            password_file = self.workdir / "passwords"
            password_file.write_text("")
            for user, password in users.items():
                subprocess.run(
                    [shutil.which("mosquitto_passwd") or "mosquitto_passwd", "-b", str(password_file), user, password], check=True
                )
            lines.append("password_file %s" % password_file)
        if tls:
            ca, cert, key = tls
            lines += ["cafile %s" % ca, "certfile %s" % cert, "keyfile %s" % key]
            if require_client_cert:
                lines += ["require_certificate true", "use_identity_as_username true"]
        self.config_path.write_text(
            "\n".join(
                [
                    *lines,
                    "persistence true",
                    "persistence_location %s/" % self.workdir,
                    "user %s" % getpass.getuser(),
                    "max_queued_messages 0",
                    "max_queued_bytes 0",
                    "log_dest file %s" % self.log_path,
                    "",
                ]
            )
        )

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self.process = subprocess.Popen([find_mosquitto(), "-c", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        track(self.process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise BrokerError("mosquitto exited at start: %s" % err.strip())
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError("mosquitto did not listen on %s:%d within %.0f s" % (self.host, self.port, timeout))

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Graceful stop: sessions and queued messages are saved for the restart."""
        if self.process is None:
            return
        stop_process(self.process, 10)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
