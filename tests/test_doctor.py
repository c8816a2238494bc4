"""Issue 16: `edgegw doctor` against real parts: a mosquitto with TLS and passwords, pseudo-terminals with and
without a node on them, the disk this runs on, and the clock rules with their inputs given."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from gateway import doctor
from gateway.doctor import FAIL, PASS, WARN, Check, ServiceUser
from hil.broker import Mosquitto
from hil.certs import Pki, make_pki
from hil.scripted_node import ScriptedNode
from hil.serial_pair import PtyCable

NODE = bytes.fromhex("0000a4cf12b3c4d5")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(tmp_path: pathlib.Path, pki: Pki) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", users={"gw": "right"}, anonymous=False, tls=(pki.ca, pki.server_cert, pki.server_key)) as broker:
        yield broker


def _config(tmp_path: pathlib.Path, mqtt: str, serial: str = "", extra: str = "") -> str:
    path = tmp_path / "edgegw.toml"
    path.write_text('[gateway]\nid = "gw-doc"\ndata_dir = "%s"\n%s\n[mqtt]\n%s\n%s' % (tmp_path / "data", extra, mqtt, serial))
    return str(path)


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.check: check for check in checks}


def test_the_broker_is_checked_step_by_step_with_a_real_connect(tmp_path: pathlib.Path, tls_broker: Mosquitto, pki: Pki) -> None:
    secret = tmp_path / "password"
    secret.write_text("right\n")
    secret.chmod(0o600)
    base = 'host = "127.0.0.1"\nport = %d\nusername = "gw"\npassword_file = "%s"\n' % (tls_broker.port, secret)
    good = doctor.check_broker(doctor.configuration.load(_config(tmp_path, base + '[mqtt.tls]\nca_file = "%s"\n' % pki.ca)))
    assert [(c.check, c.result) for c in good] == [
        ("broker name", PASS),
        ("broker reachable", PASS),
        ("broker TLS", PASS),
        ("broker login", PASS),
    ]
    assert "certificate verified" in good[2].detail and "as gw" in good[3].detail

    secret.write_text("wrong\n")
    refused = _by_name(doctor.check_broker(doctor.configuration.load(_config(tmp_path, base + '[mqtt.tls]\nca_file = "%s"\n' % pki.ca))))
    assert refused["broker login"].result == FAIL and "refused the CONNECT as gw" in refused["broker login"].detail
    assert "username and its password" in refused["broker login"].fix

    other = make_pki(tmp_path / "other")  # a CA that did not sign the broker's certificate
    untrusted = _by_name(
        doctor.check_broker(doctor.configuration.load(_config(tmp_path, base + '[mqtt.tls]\nca_file = "%s"\n' % other.ca)))
    )
    assert untrusted["broker TLS"].result == FAIL and "certificate not trusted" in untrusted["broker TLS"].detail
    assert "broker login" not in untrusted

    plain = _by_name(doctor.check_broker(doctor.configuration.load(_config(tmp_path, 'host = "127.0.0.1"\nport = %d\n' % tls_broker.port))))
    assert plain["broker login"].result == FAIL  # plain MQTT to a TLS port: no CONNACK comes


def test_an_unreachable_or_unknown_broker_says_which_step_failed(tmp_path: pathlib.Path) -> None:
    from hil.broker import free_port

    closed = _by_name(doctor.check_broker(doctor.configuration.load(_config(tmp_path, 'host = "127.0.0.1"\nport = %d\n' % free_port()))))
    assert closed["broker reachable"].result == FAIL and "Connection refused" in closed["broker reachable"].detail
    unknown = doctor.check_broker(doctor.configuration.load(_config(tmp_path, 'host = "no-such-broker.invalid"\n')))
    assert [(c.check, c.result) for c in unknown] == [("broker", FAIL)] and "cannot resolve no-such-broker.invalid" in unknown[0].detail


def test_ports_are_found_checked_for_the_service_user_and_listened_to(tmp_path: pathlib.Path) -> None:
    talking, silent = PtyCable(tmp_path / "ttyNODE0"), PtyCable(tmp_path / "ttyNODE1")
    try:
        node = ScriptedNode(talking, NODE)
        stop = threading.Event()

        def chatter() -> None:
            while not stop.is_set():
                node.hello()
                time.sleep(0.3)

        thread = threading.Thread(target=chatter, daemon=True)
        thread.start()
        serial = '[[serial]]\nport = "%s/ttyNODE*"\n[[serial]]\nport = "%s/ttyMISSING"\n' % (tmp_path, tmp_path)
        cfg = doctor.configuration.load(_config(tmp_path, 'host = "127.0.0.1"\n', serial))
        me = ServiceUser.find(None)
        checks = doctor.check_ports(cfg, me, None, listen_s=2.0)
        stop.set()
        thread.join()
    finally:
        talking.close()
        silent.close()
    found = _by_name(checks)
    assert found["serial %s/ttyNODE0" % tmp_path].result == PASS
    assert found["node on %s/ttyNODE0" % tmp_path].result == PASS and "good frame" in found["node on %s/ttyNODE0" % tmp_path].detail
    assert found["node on %s/ttyNODE1" % tmp_path].result == WARN and "silent" in found["node on %s/ttyNODE1" % tmp_path].detail
    missing = found["serial %s/ttyMISSING" % tmp_path]
    assert missing.result == FAIL and "/dev/serial/by-id" in missing.fix


def test_a_service_user_outside_the_devices_group_is_told_to_join_it(tmp_path: pathlib.Path) -> None:
    device = tmp_path / "ttyUSB9"
    cable = PtyCable(device)
    try:
        real = os.path.realpath(device)
        os.chmod(real, 0o660)
        nobody = ServiceUser("nobody", 65534, frozenset({65534}))
        check = doctor._port_access(str(device), nobody)
    finally:
        cable.close()
    assert check.result == FAIL and check.fix.startswith("sudo usermod -aG ") and check.fix.endswith(" nobody, then restart the service")


def test_disk_room_and_the_kind_of_storage(tmp_path: pathlib.Path) -> None:
    cfg = doctor.configuration.load(_config(tmp_path, 'host = "127.0.0.1"\n', extra="[buffer]\nmax_bytes = %d\n" % 2**50))
    checks = _by_name(doctor.check_disk(cfg, ServiceUser.find(None)))
    assert checks["data_dir"].result == PASS and "does not exist yet" in checks["data_dir"].detail
    assert checks["disk space"].result == FAIL and "lower [buffer] max_bytes to" in checks["disk space"].fix
    mounts = (
        "22 1 179:2 / / rw - ext4 /dev/mmcblk0p2 rw\n30 22 0:25 / /run rw - tmpfs tmpfs rw\n31 22 0:26 / /mnt/nas rw - nfs4 nas:/x rw\n"
    )
    assert doctor._storage_kind("/var/lib/edgegw", mounts).detail.startswith("SD card: ext4 on /dev/mmcblk0p2")
    ram = doctor._storage_kind("/run/edgegw", mounts)
    assert ram.result == FAIL and "lost at every power cut" in ram.detail
    assert doctor._storage_kind("/mnt/nas/gw", mounts).result == WARN


def test_the_clock_rules() -> None:
    assert doctor.check_clock(now=1_000_000_000)[0].result == FAIL  # 2001: never set
    assert doctor.check_clock(now=1_800_000_000, state=lambda: 5)[0].result == WARN  # TIME_ERROR: not synchronized
    assert doctor.check_clock(now=1_800_000_000, state=lambda: 0)[0].result == PASS
    assert doctor.check_clock(now=1_800_000_000, state=lambda: None)[0].result == WARN


def test_the_command_prints_each_check_with_its_fix_and_exits_1_on_a_fail(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, 'host = "127.0.0.1"\nport = 1\n')
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "doctor", "--config", config, "--listen", "0.5"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("PASS  config")
    refused = next(i for i, line in enumerate(lines) if line.startswith("FAIL  broker reachable"))
    assert "fix: is the broker running there" in lines[refused + 1]
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "doctor", "--config", config, "--json"], capture_output=True, text=True, timeout=60
    )
    report = json.loads(done.stdout)
    assert report["ok"] is False and report["summary"]["FAIL"] >= 1 and {"check", "result", "detail", "fix"} <= set(report["checks"][0])

    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nid = "gw"\ndata_dir = "/tmp"\n[mqtt]\nhots = "x"\n')
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "doctor", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "FAIL  config" in done.stdout and "hots: unknown key (did you mean 'host'?)" in done.stdout
    assert "Traceback" not in done.stderr


def test_secrets_and_data_dir_are_checked_as_the_service_user_and_a_held_port_is_left_alone(tmp_path: pathlib.Path) -> None:
    tmp_path.chmod(0o755)
    secret = tmp_path / "password"
    secret.write_text("pw\n")
    secret.chmod(0o600)  # root's own: the service user (nobody here) cannot read it
    keys = tmp_path / "keys.json"
    keys.write_text("{}")
    keys.chmod(0o600)
    cfg = doctor.configuration.load(
        _config(tmp_path, 'host = "127.0.0.1"\nusername = "gw"\npassword_file = "%s"\n' % secret, extra='keys_file = "%s"\n' % keys),
        secrets=False,
    )
    nobody = ServiceUser("nobody", 65534, frozenset({65534}))
    found = _by_name(doctor.check_secrets(cfg, nobody))
    assert found["[mqtt] password_file"].result == FAIL and "nobody may not read" in found["[mqtt] password_file"].detail
    assert found["keys"].result == FAIL and "must be nobody's own" in found["keys"].detail
    assert {check.result for check in doctor.check_secrets(cfg, ServiceUser.find("root"))} == {PASS}

    afile = tmp_path / "afile"
    afile.write_text("")
    for data_dir in (afile, afile / "sub"):
        bad = dataclasses.replace(doctor.configuration.load(_config(tmp_path, 'host = "127.0.0.1"\n'), secrets=False), data_dir=data_dir)
        assert doctor.check_disk(bad, nobody)[0].result == FAIL

    cable = PtyCable(tmp_path / "ttyHELD")
    try:
        with open(os.path.realpath(tmp_path / "ttyHELD"), "rb", buffering=0) as device:
            held = subprocess.Popen(["sleep", "30"], stdin=device)  # another program has it open
        try:
            serial = '[[serial]]\nport = "%s"\n' % (tmp_path / "ttyHELD")
            ports = doctor.configuration.load(_config(tmp_path, 'host = "127.0.0.1"\n', serial), secrets=False)
            checks = _by_name(doctor.check_ports(ports, ServiceUser.find(None), None, listen_s=0.5))
        finally:
            held.kill()
            held.wait()
    finally:
        cable.close()
    assert checks["node on %s" % (tmp_path / "ttyHELD")].result == WARN
    assert "not listened to" in checks["node on %s" % (tmp_path / "ttyHELD")].detail
