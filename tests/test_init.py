"""Issue 16: `edgegw init` writes a commented config from flags or questions, checked before it is written, then
runs the doctor on it (a real mosquitto, a pseudo-terminal as the serial port)."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys
import tomllib

from gateway import config as configuration
from hil.broker import Mosquitto
from hil.serial_pair import PtyCable


def _init(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "init", "--listen", "0.5", *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_from_flags_a_valid_commented_config_then_the_doctor(tmp_path: pathlib.Path, hil_broker: Mosquitto) -> None:
    cable = PtyCable(tmp_path / "ttyNODE0")
    try:
        target = tmp_path / "etc" / "edgegw.toml"
        done = _init(
            "--config", str(target), "--yes", "--id", "gw-cabinet-7", "--data-dir", str(tmp_path / "data"),
            "--broker", "127.0.0.1:%d" % hil_broker.port, "--no-tls", "--serial", str(tmp_path / "ttyNODE0"),
        )  # fmt: skip
    finally:
        cable.close()
    assert done.returncode == 0, done.stdout + done.stderr  # WARNs only: no agent yet, a silent port, maybe the clock
    assert "wrote %s" % target in done.stdout and "PASS  broker login" in done.stdout
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    text = target.read_text()
    assert text.count("#") > 10  # commented
    cfg = configuration.parse(tomllib.loads(text))
    assert (cfg.gateway_id, cfg.mqtt.port, cfg.mqtt.tls, [s.port for s in cfg.serial]) == (
        "gw-cabinet-7",
        hil_broker.port,
        None,
        [str(tmp_path / "ttyNODE0")],
    )
    again = _init("--config", str(target), "--yes", "--broker", "x")
    assert again.returncode == 2 and "exists; --force to replace it" in again.stderr


def test_questions_offer_the_devices_found_by_id(tmp_path: pathlib.Path) -> None:
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    for name in ("usb-Espressif_node_A-if00", "usb-Raspberry_Pi_Pico_B-if00"):
        (by_id / name).symlink_to("/dev/null")
    target = tmp_path / "edgegw.toml"
    answers = "gw-park-3\n%s\nbroker.city.example\nyes\n/etc/ssl/city-ca.pem\ngw-park-3\n/etc/edgegw/pw\n2\n" % (tmp_path / "d")
    done = _init("--config", str(target), "--ask", "--no-doctor", "--scan", str(by_id), stdin=answers)
    assert done.returncode == 0, done.stderr
    assert "1. %s/usb-Espressif_node_A-if00" % by_id in done.stdout
    document = tomllib.loads(target.read_text())
    assert document["mqtt"] == {
        "host": "broker.city.example",
        "username": "gw-park-3",
        "password_file": "/etc/edgegw/pw",
        "tls": {"ca_file": "/etc/ssl/city-ca.pem"},
    }
    assert [entry["port"] for entry in document["serial"]] == ["%s/usb-Raspberry_Pi_Pico_B-if00" % by_id]


def test_what_is_missing_or_wrong_is_said_and_nothing_is_written(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "edgegw.toml"
    done = _init("--config", str(target), "--yes")
    assert done.returncode == 2 and "--broker is needed (no terminal to ask on)" in done.stderr
    done = _init("--config", str(target), "--yes", "--broker", "b", "--id", "gw 1/#")
    assert done.returncode == 2 and "[gateway] id: expected letters, digits" in done.stderr and "Traceback" not in done.stderr
    assert not target.exists()


def test_odd_answers_ipv6_and_a_replaced_file_keeping_its_group(tmp_path: pathlib.Path) -> None:
    import grp

    target = tmp_path / "edgegw.toml"
    done = _init("--config", str(target), "--yes", "--no-doctor", "--broker", "[::1]:8883", "--data-dir", "/tmp/a\x7fb")
    assert done.returncode == 0, done.stderr
    document = tomllib.loads(target.read_text())
    assert (document["mqtt"]["host"], document["mqtt"]["port"], document["gateway"]["data_dir"]) == ("::1", 8883, "/tmp/a\x7fb")
    assert _init("--config", str(target), "--yes", "--broker", "h:").returncode == 2
    group = grp.getgrnam("nogroup").gr_gid
    os.chown(target, -1, group)  # as `edgegw service install` leaves it: the service's group
    assert _init("--config", str(target), "--yes", "--no-doctor", "--force", "--broker", "h:1884").returncode == 0
    assert os.stat(target).st_gid == group and tomllib.loads(target.read_text())["mqtt"]["port"] == 1884
