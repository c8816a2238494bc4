"""The gateway's TOML configuration: loaded once, checked completely, frozen.

Every problem is reported at once, each naming the key, what was expected and
what was found, so a technician in a cabinet fixes the file in one pass.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .disk import MIN_BUDGET

# A frame the broker has not acknowledged within [buffer] broker_ack_wait goes to disk, and that commit
# must be done before the node's first retransmission, 2 s after it sent the frame (SPEC.md §4.2).
MAX_BROKER_ACK_WAIT = 1.5
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__("%s: %s" % (path, "; ".join(problems)))
        self.path = path
        self.problems = problems

    def report(self) -> str:
        lines = ["%s: %d problem%s" % (self.path, len(self.problems), "" if len(self.problems) == 1 else "s")]
        lines += ["  - %s" % problem for problem in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int
    topic_prefix: str = "edgegw"
    qos: int = 1
    protocol: str = "5"
    keepalive: int = 30
    inflight: int = 64
    reconnect_max: int = 60
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    tls: TlsConfig | None = None

    def password(self) -> str | None:
        """The secret, read when needed and never kept in the config object's repr."""
        if self.password_file:
            return Path(self.password_file).read_text().strip()
        if self.password_env:
            return os.environ.get(self.password_env)
        return None


@dataclass(frozen=True)
class SerialConfig:
    port: str
    baud: int = 115200
    # Unauthenticated frames (SPEC.md §3.4) on this port: None (the default) refuses them from a node that
    # has a key and takes them from the others; True refuses them from every node; False takes them from
    # every node, keyed or not (a bench port while a node is being provisioned). Frames through a radio
    # bridge are refused without a key whatever this says (docs/SECURITY.md).
    require_auth: bool | None = None


@dataclass(frozen=True)
class Config:
    gateway_id: str
    data_dir: Path
    max_bytes: int
    when_full: str
    mqtt: MqttConfig
    commit_wait: float = 1.0
    serial: tuple[SerialConfig, ...] = field(default_factory=tuple)
    log_level: str = "info"
    broker_ack_wait: float = 1.0  # s a frame held for the broker waits for its PUBACK before it goes to disk (0: disk first)
    commands_in_flight: int = 4  # [commands] in_flight: a node's commands sent and not yet answered at once
    keys_file: Path | None = None  # [gateway] keys_file; None: data_dir / "keys.json"
    status_socket: Path | None = None  # [status] socket; None: data_dir / "edgegw.sock"
    status_http: tuple[str, int] | None = ("127.0.0.1", 9120)  # [status] http: the status page and /metrics; None: off
    homeassistant_prefix: str | None = None  # [homeassistant] discovery_prefix when discovery = true; None: off

    @property
    def keys_path(self) -> Path:
        return self.keys_file if self.keys_file is not None else self.data_dir / "keys.json"

    @property
    def socket_path(self) -> Path:
        """Where `edgegw status` reaches the running agent (gateway/control.py)."""
        return self.status_socket if self.status_socket is not None else self.data_dir / "edgegw.sock"


# ---------------------------------------------------------------- checkers
# Each returns (ok, value) or raises nothing; the message says what was expected.

Checker = tuple[str, Callable[[Any], bool]]

_TEXT: Checker = ("a non-empty string", lambda v: isinstance(v, str) and v != "")
_BOOL: Checker = ("true or false", lambda v: isinstance(v, bool))


def _int_range(low: int, high: int) -> Checker:
    return ("an integer from %d to %d" % (low, high), lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high)


def _seconds(low: float, high: float) -> Checker:
    return (
        "a number of seconds from %g to %g" % (low, high),
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high,
    )


def _choice(*options: Any) -> Checker:
    return ("one of %s" % ", ".join(repr(o) for o in options), lambda v: v in options and not isinstance(v, bool))


_GATEWAY_ID: Checker = (
    "letters, digits, '.', '_' or '-' (at most 64, no spaces or MQTT wildcards)",
    lambda v: isinstance(v, str) and bool(_ID_PATTERN.match(v)),
)
_TOPIC_PREFIX: Checker = (
    "a topic prefix without '+', '#' or a leading/trailing '/'",
    lambda v: isinstance(v, str) and v != "" and not re.search(r"[+#]|^/|/$", v),
)
_PATH: Checker = _TEXT


def _host_port(value: object) -> tuple[str, int] | None:
    """'host:port' ('[::1]:9120' for IPv6) as (host, port), or None when it is not one."""
    if not isinstance(value, str) or ":" not in value:
        return None
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return None
    return host, int(port)


_LISTEN: Checker = (
    "'host:port' (e.g. '127.0.0.1:9120'; port 0: any free one), or '' for none",
    lambda v: v == "" or _host_port(v) is not None,
)

# section -> key -> (checker, default or _REQUIRED)
_REQUIRED = object()
SCHEMA: dict[str, dict[str, tuple[Checker, Any]]] = {
    "gateway": {
        "id": (_GATEWAY_ID, _REQUIRED),
        "data_dir": (_PATH, _REQUIRED),
        "log_level": (_choice("debug", "info", "warning", "error"), "info"),
        "keys_file": (_PATH, None),
    },
    "buffer": {
        "max_bytes": (_int_range(MIN_BUDGET, 2**50), 2_000_000_000),
        "when_full": (_choice("drop_oldest", "stop_acking"), "drop_oldest"),
        # At most 1 s: a frame is acknowledged within it (plus the commit), far before the node's retransmission at 2 s.
        "commit_wait": (_seconds(0, 1), 1.0),
        "broker_ack_wait": (_seconds(0, MAX_BROKER_ACK_WAIT), 1.0),
    },
    "mqtt": {
        "host": (_TEXT, _REQUIRED),
        "port": (_int_range(1, 65535), None),
        "topic_prefix": (_TOPIC_PREFIX, "edgegw"),
        "qos": (_choice(0, 1), 1),
        "protocol": (_choice("5", "3.1.1"), "5"),
        "keepalive": (_int_range(5, 3600), 30),
        "inflight": (_int_range(1, 1000), 64),
        "reconnect_max": (_int_range(1, 3600), 60),
        "username": (_TEXT, None),
        "password_file": (_PATH, None),
        "password_env": (_TEXT, None),
        "tls": (("a table", lambda v: isinstance(v, dict)), None),
    },
    "mqtt.tls": {
        "ca_file": (_PATH, None),
        "cert_file": (_PATH, None),
        "key_file": (_PATH, None),
    },
    "commands": {
        "in_flight": (_int_range(1, 64), 4),
    },
    "homeassistant": {
        "discovery": (_BOOL, False),
        "discovery_prefix": (_TOPIC_PREFIX, "homeassistant"),
    },
    "status": {
        "socket": (_PATH, None),
        "http": (_LISTEN, "127.0.0.1:9120"),
    },
    "serial": {
        "port": (_TEXT, _REQUIRED),
        "baud": (_int_range(300, 4_000_000), 115200),
        "require_auth": (_BOOL, None),
    },
}


_SECTIONS = ("gateway", "buffer", "mqtt", "commands", "status", "homeassistant", "serial")


def _unknown_key(section: str, key: str) -> str:
    known = sorted(SCHEMA[section])
    close = difflib.get_close_matches(key, known, n=1)
    hint = " (did you mean '%s'?)" % close[0] if close else ""
    return "[%s] %s: unknown key%s; expected one of: %s" % (section, key, hint, ", ".join(known))


def _check_table(section: str, table: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in table:
        if key not in SCHEMA[section]:
            problems.append(_unknown_key(section, key))
    for key, ((expected, ok), default) in SCHEMA[section].items():
        if key in table:
            if ok(table[key]):
                values[key] = table[key]
            else:
                problems.append("[%s] %s: expected %s, found %r" % (section, key, expected, table[key]))
        elif default is _REQUIRED:
            problems.append("[%s] %s: missing; expected %s" % (section, key, expected))
        else:
            values[key] = default
    return values


def parse(document: dict[str, Any], path: str = "<config>") -> Config:
    """Check a parsed TOML document and build the Config, or raise ConfigError listing every problem."""
    problems: list[str] = []
    for section in document:
        if section not in _SECTIONS:
            close = difflib.get_close_matches(section, list(_SECTIONS), n=1)
            hint = " (did you mean [%s]?)" % close[0] if close else ""
            problems.append(
                "[%s]: unknown section%s; expected gateway, buffer, mqtt, commands, status, homeassistant and [[serial]]" % (section, hint)
            )

    def table(name: str) -> dict[str, Any]:
        value = document.get(name, {})
        if not isinstance(value, dict):
            problems.append("[%s]: expected a table, found %r" % (name, value))
            return {}
        return value

    gateway = _check_table("gateway", table("gateway"), problems) if "gateway" in document else None
    if gateway is None:
        problems.append("[gateway]: missing; it needs at least id and data_dir")
    buffer = _check_table("buffer", table("buffer"), problems)
    commands = _check_table("commands", table("commands"), problems)
    status = _check_table("status", table("status"), problems)
    homeassistant = _check_table("homeassistant", table("homeassistant"), problems)
    mqtt = _check_table("mqtt", table("mqtt"), problems) if "mqtt" in document else None
    if mqtt is None:
        problems.append("[mqtt]: missing; it needs at least host")

    tls = None
    if mqtt is not None and isinstance(mqtt.get("tls"), dict):
        tls_values = _check_table("mqtt.tls", mqtt["tls"], problems)
        tls = TlsConfig(**tls_values)
        if tls.cert_file and not tls.key_file:
            problems.append("[mqtt.tls] key_file: missing; a client certificate (cert_file) needs its key")
    if mqtt is not None and mqtt.get("password_file") and mqtt.get("password_env"):
        problems.append("[mqtt] password_file, password_env: give one of them, not both")

    serial_tables = document.get("serial", [])
    if isinstance(serial_tables, dict):
        problems.append("[serial]: write it as [[serial]] (an array of tables, one per port)")
        serial_tables = []
    serial: list[SerialConfig] = []
    for index, entry in enumerate(serial_tables):
        if not isinstance(entry, dict):
            problems.append("[[serial]] #%d: expected a table, found %r" % (index + 1, entry))
            continue
        sub_problems: list[str] = []
        values = _check_table("serial", entry, sub_problems)
        problems += [p.replace("[serial]", "[[serial]] #%d" % (index + 1), 1) for p in sub_problems]
        if not sub_problems:
            serial.append(SerialConfig(**values))

    if problems or gateway is None or mqtt is None:
        raise ConfigError(path, problems)
    port = mqtt.pop("port")
    mqtt.pop("tls")
    if port is None:
        port = 8883 if tls is not None else 1883
    return Config(
        gateway_id=gateway["id"],
        data_dir=Path(gateway["data_dir"]),
        log_level=gateway["log_level"],
        keys_file=Path(gateway["keys_file"]) if gateway["keys_file"] else None,
        max_bytes=buffer["max_bytes"],
        when_full=buffer["when_full"],
        commit_wait=float(buffer["commit_wait"]),
        broker_ack_wait=float(buffer["broker_ack_wait"]),
        commands_in_flight=commands["in_flight"],
        status_socket=Path(status["socket"]) if status["socket"] else None,
        status_http=_host_port(status["http"]),
        homeassistant_prefix=homeassistant["discovery_prefix"] if homeassistant["discovery"] else None,
        mqtt=MqttConfig(port=port, tls=tls, **mqtt),
        serial=tuple(serial),
    )


def load(path: str | Path, secrets: bool = True) -> Config:
    """Read and check a config file; every failure is a ConfigError naming the file. secrets=False: the secret
    files (password, TLS key) are not checked for being readable (`edgegw status` as a technician, who may not
    read them, only needs the socket's path)."""
    name = str(path)
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(name, ["file not found"]) from None
    except PermissionError:
        raise ConfigError(name, ["not readable (permission denied)"]) from None
    except IsADirectoryError:
        raise ConfigError(name, ["is a directory, not a file"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(name, ["not valid TOML: %s" % error]) from None
    except UnicodeDecodeError:
        raise ConfigError(name, ["not UTF-8 text"]) from None
    config = parse(document, name)
    if not secrets:
        return config
    secret_problems = []
    password_file = config.mqtt.password_file
    if password_file and not os.access(password_file, os.R_OK):
        secret_problems.append("[mqtt] password_file: %s is missing or not readable" % password_file)
    if config.mqtt.tls:
        for key in ("ca_file", "cert_file", "key_file"):
            value = getattr(config.mqtt.tls, key)
            if value and not os.access(value, os.R_OK):
                secret_problems.append("[mqtt.tls] %s: %s is missing or not readable" % (key, value))
    if secret_problems:
        raise ConfigError(name, secret_problems)
    return config
