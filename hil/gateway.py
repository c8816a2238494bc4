"""The real `edgegw run` as a subprocess with its own config and data dir; stop, SIGKILL, restart."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from .processes import track


class GatewayProcess:
    def __init__(
        self,
        workdir: Path,
        broker_port: int,
        serial_ports: list[str],
        mqtt_extra: list[str] | None = None,
        *,
        gateway_id: str = "gw-test",
        max_bytes: int = 200_000_000,
        when_full: str = "drop_oldest",
        reconnect_max: int = 2,
        inflight: int = 64,
        protocol: str = "5",
        debug: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        # EDGEGW_HIL_GATEWAY_DEBUG=1: the gateway logs at DEBUG in any run (each radio window's decision among it)
        debug = debug or os.environ.get("EDGEGW_HIL_GATEWAY_DEBUG") == "1"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "edgegw.toml"
        self.log_path = self.workdir / "gateway.log"
        self.gateway_id = gateway_id
        self.env = env or {}  # more environment for the process (systemd's NOTIFY_SOCKET in a test)
        lines = [
            "[gateway]",
            'id = "%s"' % gateway_id,
            'data_dir = "%s"' % self.data_dir,
            'log_level = "%s"' % ("debug" if debug else "info"),
            "[buffer]",
            "max_bytes = %d" % max_bytes,
            'when_full = "%s"' % when_full,
            "[mqtt]",
            'host = "127.0.0.1"',
            "port = %d" % broker_port,
            'protocol = "%s"' % protocol,
            "reconnect_max = %d" % reconnect_max,
            "inflight = %d" % inflight,
            *(mqtt_extra or []),
        ]
        # Many gateways run at once in the tests and HIL runs: each page on a port of its own (the log says which)
        lines += ["[status]", 'http = "127.0.0.1:0"']
        for port in serial_ports:
            lines += ["[[serial]]", 'port = "%s"' % port]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: object = None
        # Where this run's output starts in the log (the log is appended to across restarts): a restarted gateway's
        # "open" line must not be matched by the previous run's, or a test writes to a port not yet open.
        self.log_mark = 0

    def start(self) -> None:
        self.log_mark = len(self.log())  # in characters, as wait_for_log counts
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self._log_handle = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **self.env),
        )
        track(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def page_url(self) -> str | None:
        """The status page's address this run's log gave (`[status] http` is port 0 here: the system chose it)."""
        found = re.findall(r"status page on (http://\S+/),", self.log()[self.log_mark :])
        return found[-1] if found else None

    def wait_for_log(self, text: str, timeout: float = 15.0, after: int = 0) -> None:
        """Wait for `text` in the log past character `after` (pass `log_mark` for this run's lines only)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log()[after:]:
                return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError("gateway exited (%s) while waiting for %r:\n%s" % (self.process.returncode, text, self.log()[-3000:]))
            time.sleep(0.05)
        raise AssertionError("gateway log has no %r after %.0f s:\n%s" % (text, timeout, self.log()[-3000:]))

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the return code of a clean stop is 0."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
