"""Issue 16: the agent under systemd. The notify protocol against a datagram socket standing in for systemd's
(READY, STATUS, WATCHDOG from the event loop, STOPPING), and the unit checked by systemd's own verifier."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from gateway.systemd import Notifier
from hil.broker import Mosquitto
from hil.gateway import GatewayProcess


@pytest.fixture
def systemd_socket(tmp_path: pathlib.Path) -> Iterator[socket.socket]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(0.2)
    yield listener
    listener.close()


def _received(listener: socket.socket, seconds: float) -> list[tuple[float, str]]:
    """(when, datagram) for every datagram within `seconds`."""
    got: list[tuple[float, str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got.append((time.monotonic(), listener.recv(4096).decode()))
        except TimeoutError:
            continue
    return got


def test_ready_status_and_stopping_reach_the_socket_and_an_abstract_one(systemd_socket: socket.socket, tmp_path: pathlib.Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    notifier.ready("uplink connected; 1 port(s) open")
    notifier.status("two\nlines")
    notifier.stopping("stopping")
    assert [text for _, text in _received(systemd_socket, 0.5)] == [
        "READY=1\nSTATUS=uplink connected; 1 port(s) open",
        "STATUS=two lines",  # a newline would start another assignment
        "STOPPING=1\nSTATUS=stopping",
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        name = "edgegw-test-%d" % os.getpid()
        abstract.bind("\0" + name)
        abstract.settimeout(2)
        Notifier({"NOTIFY_SOCKET": "@" + name}).status("abstract")
        assert abstract.recv(100) == b"STATUS=abstract"
    Notifier({}).ready("nothing")  # outside systemd: nothing, no error
    Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).ready("no such socket")  # said once, never raised
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_s is None  # meant for another process


async def test_the_watchdog_is_pinged_from_the_event_loop_so_a_hung_loop_misses_it(
    systemd_socket: socket.socket, tmp_path: pathlib.Path
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"})
    assert notifier.watchdog_s == 0.2
    task = asyncio.get_running_loop().create_task(notifier.watchdog())
    await asyncio.sleep(0.5)
    time.sleep(1.0)  # the loop hangs: no ping can go out meanwhile
    await asyncio.sleep(0.5)
    task.cancel()
    systemd_socket.settimeout(0)
    stamps = []
    while True:
        try:
            systemd_socket.recv(100)
        except BlockingIOError:
            break
        stamps.append(1)
    # at 0.1 s a ping: about 5 before the hang, none during its second, about 5 after (one lands at its end); a
    # thread pinging would have sent about 20
    assert 2 <= len(stamps) <= 14


def test_the_agent_says_ready_status_watchdog_and_stopping(
    systemd_socket: socket.socket, tmp_path: pathlib.Path, hil_broker: Mosquitto
) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
    gateway = GatewayProcess(tmp_path / "gw", hil_broker.port, [str(tmp_path / "ttyNONE*")], env=env)
    gateway.start()
    try:
        got = _received(systemd_socket, 4.0)
        gateway.stop()
        got += _received(systemd_socket, 0.5)
    finally:
        gateway.close()
    texts = [text for _, text in got]
    ready = [text for text in texts if text.startswith("READY=1")]
    assert len(ready) == 1 and "STATUS=uplink " in ready[0] and "readings buffered" in ready[0]
    pings = [at for at, text in got if text == "WATCHDOG=1"]
    assert len(pings) >= 4  # every 0.5 s
    assert texts.index(ready[0]) < len(texts) - 1 and any(text.startswith("STOPPING=1") for text in texts)


def test_the_unit_passes_systemds_verifier_and_install_says_its_steps(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "edgegw.toml"
    config.write_text('[gateway]\nid = "gw"\ndata_dir = "/var/lib/edgegw"\n[mqtt]\nhost = "localhost"\n')
    unit = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "service", "unit", "--config", str(config)], capture_output=True, text=True, check=True
    ).stdout
    for line in (
        "Type=notify",
        "WatchdogSec=30",
        "Restart=on-failure",
        "User=edgegw",
        "StateDirectory=edgegw",
        "SupplementaryGroups=dialout",
    ):
        assert line in unit.splitlines()
    assert "ReadWritePaths" not in unit  # the default data_dir is the StateDirectory
    (tmp_path / "edgegw.service").write_text(unit)
    verifier = shutil.which("systemd-analyze")
    assert verifier, "systemd-analyze (Debian's systemd) checks the unit"
    verified = subprocess.run([verifier, "verify", str(tmp_path / "edgegw.service")], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    units = tmp_path / "units"
    units.mkdir()
    command = [sys.executable, "-m", "gateway.cli", "service", "install", "--config", str(config), "--dry-run"]
    dry = subprocess.run([*command, "--user", "edgegw-nobody", "--unit-dir", str(units)], capture_output=True, text=True, check=True).stdout
    assert "would create the system user edgegw-nobody" in dry and "useradd --system" in dry
    assert "would write %s/edgegw.service" % units in dry and "systemctl daemon-reload" in dry
    assert list(units.iterdir()) == []  # a dry run writes nothing

    # its secrets become the service user's; a data_dir elsewhere is writable; a path a unit cannot hold is refused
    secret = tmp_path / "password"
    secret.write_text("pw\n")
    config.write_text(
        '[gateway]\nid = "gw"\ndata_dir = "%s"\n[mqtt]\nhost = "localhost"\nusername = "gw"\npassword_file = "%s"\n'
        % (tmp_path / "d", secret)
    )
    dry = subprocess.run([*command, "--user", "edgegw-nobody", "--unit-dir", str(units)], capture_output=True, text=True, check=True).stdout
    assert "chown edgegw-nobody:edgegw-nobody %s" % secret in dry and "chmod 600 %s" % secret in dry
    assert "ReadWritePaths=%s" % (tmp_path / "d") in dry
    spaced = tmp_path / "a b.toml"
    spaced.write_text(config.read_text())
    refused = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "service", "unit", "--config", str(spaced)], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "without spaces" in refused.stderr and "Traceback" not in refused.stderr
