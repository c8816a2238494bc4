"""Configuration: good files load, every mistake is named with the key, the expectation and the finding."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from gateway import config
from tests.conftest import ROOT

GOOD = """
[gateway]
id = "gw-dortmund-0042"
data_dir = "{data}"

[buffer]
max_bytes = 2_000_000_000
when_full = "stop_acking"

[mqtt]
host = "broker.example"
port = 8883
topic_prefix = "edgegw"
qos = 1

[[serial]]
port = "/dev/serial/by-id/usb-*"
baud = 115200

[[serial]]
port = "/dev/ttyAMA0"
"""


def write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "edgegw.toml"
    path.write_text(text.replace("{data}", str(tmp_path / "data")))
    return path


def edgegw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


def test_the_example_from_the_issue_loads(tmp_path: pathlib.Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.gateway_id == "gw-dortmund-0042"
    assert cfg.when_full == "stop_acking" and cfg.max_bytes == 2_000_000_000
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.qos, cfg.mqtt.protocol) == ("broker.example", 8883, 1, "5")
    assert [(s.port, s.baud) for s in cfg.serial] == [("/dev/serial/by-id/usb-*", 115200), ("/dev/ttyAMA0", 115200)]


def test_defaults(tmp_path: pathlib.Path) -> None:
    cfg = config.load(write(tmp_path, '[gateway]\nid = "gw"\ndata_dir = "/tmp/x"\n[mqtt]\nhost = "localhost"\n'))
    assert (cfg.mqtt.port, cfg.mqtt.topic_prefix, cfg.when_full, cfg.serial) == (1883, "edgegw", "drop_oldest", ())
    assert cfg.broker_ack_wait == 1.0
    quick = config.load(write(tmp_path, '[gateway]\nid = "gw"\ndata_dir = "/tmp/x"\n[buffer]\nbroker_ack_wait = 0\n[mqtt]\nhost = "h"\n'))
    assert quick.broker_ack_wait == 0.0
    tls = config.load(write(tmp_path, '[gateway]\nid = "gw"\ndata_dir = "/tmp/x"\n[mqtt]\nhost = "h"\ntls = {}\n'))
    assert tls.mqtt.port == 8883


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("port = 8883", 'port = "8883"'), "[mqtt] port: expected an integer from 1 to 65535, found '8883'"),
        (("host =", "hots ="), "[mqtt] hots: unknown key (did you mean 'host'?)"),
        (("host =", "hots ="), "[mqtt] host: missing; expected a non-empty string"),
        (
            ('when_full = "stop_acking"', 'when_full = "drop"'),
            "[buffer] when_full: expected one of 'drop_oldest', 'stop_acking', found 'drop'",
        ),
        (('id = "gw-dortmund-0042"', 'id = "gw dortmund/42"'), "[gateway] id: expected letters, digits"),
        (("qos = 1", "qos = true"), "[mqtt] qos: expected one of 0, 1, found True"),
        (("baud = 115200", "baud = 0"), "[[serial]] #1 baud: expected an integer from 300 to 4000000, found 0"),
        (("[buffer]", "[bufer]"), "[bufer]: unknown section (did you mean [buffer]?)"),
        (
            ('when_full = "stop_acking"', 'when_full = "stop_acking"\nbroker_ack_wait = 2'),
            "[buffer] broker_ack_wait: expected a number of seconds from 0 to 1.5, found 2",
        ),
        (('when_full = "stop_acking"', 'when_full = "stop_acking"\nbroker_ack_wait = "1"'), "[buffer] broker_ack_wait: expected a number"),
    ],
)
def test_mistakes_are_named(tmp_path: pathlib.Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    with pytest.raises(config.ConfigError) as caught:
        config.load(write(tmp_path, text))
    assert any(problem.startswith(message) for problem in caught.value.problems), caught.value.problems


def test_all_problems_are_reported_at_once(tmp_path: pathlib.Path) -> None:
    text = GOOD.replace("port = 8883", "port = 0").replace("qos = 1", "qos = 2").replace('when_full = "stop_acking"', "when_full = 3")
    with pytest.raises(config.ConfigError) as caught:
        config.load(write(tmp_path, text))
    assert len(caught.value.problems) == 3


def test_unreadable_secret_and_broken_toml(tmp_path: pathlib.Path) -> None:
    with pytest.raises(config.ConfigError, match=r"password_file: .* is missing or not readable"):
        config.load(write(tmp_path, GOOD.replace("qos = 1", 'qos = 1\npassword_file = "/nonexistent/pw"')))
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[gateway\n"))
    with pytest.raises(config.ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")


def test_password_comes_from_file_or_environment_and_is_not_in_repr(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    cfg = config.load(write(tmp_path, GOOD.replace("qos = 1", 'qos = 1\nusername = "gw"\npassword_file = "%s"' % secret)))
    assert cfg.mqtt.password() == "s3cret"
    assert "s3cret" not in repr(cfg)
    monkeypatch.setenv("EDGEGW_MQTT_PASSWORD", "from-env")
    cfg = config.load(write(tmp_path, GOOD.replace("qos = 1", 'qos = 1\npassword_env = "EDGEGW_MQTT_PASSWORD"')))
    assert cfg.mqtt.password() == "from-env"


def test_config_check_command(tmp_path: pathlib.Path) -> None:
    done = edgegw("config", "check", "--config", str(write(tmp_path, GOOD)))
    assert done.returncode == 0, done.stderr
    assert "broker broker.example:8883" in done.stdout and "serial /dev/ttyAMA0 at 115200 baud" in done.stdout
    bad = edgegw("config", "check", "--config", str(write(tmp_path, GOOD.replace("host =", "hots ="))))
    assert bad.returncode == 2
    assert "[mqtt] hots: unknown key (did you mean 'host'?)" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_documented_example_config_is_valid(tmp_path: pathlib.Path) -> None:
    text = (ROOT / "docs" / "edgegw.toml").read_text()
    secret = tmp_path / "pw"
    secret.write_text("x")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    text = text.replace("/etc/edgegw/mqtt-password", str(secret)).replace("/etc/edgegw/city-ca.pem", str(ca))
    cfg = config.load(write(tmp_path, text))
    assert cfg.gateway_id == "gw-dortmund-0042" and cfg.mqtt.tls is not None and cfg.mqtt.tls.ca_file == str(ca)
    assert len(cfg.serial) == 2
    documented = set(re.findall(r"^#?\s*(\w+) = ", text, re.M))
    for section in ("gateway", "buffer", "mqtt", "mqtt.tls", "serial"):
        assert set(config.SCHEMA[section]) - {"tls", "password_env"} <= documented, section
