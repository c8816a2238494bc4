"""`edgegw init`: a commented configuration from a few questions (or from flags, for scripts), checked by the
same rules as `edgegw run` before it is written, then `edgegw doctor` on it.

Questions are asked only for what no flag gave and only on a terminal (or with --ask); without a terminal a
missing required answer is an error that names the flag. The serial devices offered are those under
/dev/serial/by-id (stable names: the same node keeps its name across reboots and USB ports).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import config as configuration

BY_ID = "/dev/serial/by-id"


class InitError(Exception):
    """Not written: the message says why and what to give."""


@dataclass
class Answers:
    gateway_id: str = ""
    data_dir: str = "/var/lib/edgegw"
    host: str = ""
    port: int | None = None
    tls: bool = True
    ca_file: str = ""
    username: str = ""
    password_file: str = ""
    serial: list[str] = field(default_factory=list)
    max_bytes: int = 2_000_000_000


def found_serial(folder: str = BY_ID) -> list[str]:
    """The serial devices by stable name, or nothing (no folder: no USB serial device is plugged in)."""
    try:
        return sorted(str(Path(folder) / name) for name in os.listdir(folder))
    except OSError:
        return []


def gather(args: argparse.Namespace, ask: Callable[[str], str] | None) -> Answers:
    """Flags first; a question for each thing still missing when `ask` is given, else an InitError naming the flag."""
    answers = Answers()

    def value(flag: str | None, question: str, default: str = "", required: bool = False, option: str = "") -> str:
        if flag is not None:
            return flag
        if ask is None:
            if required:
                raise InitError("%s is needed (no terminal to ask on)" % option)
            return default
        shown = " [%s]" % default if default else ""
        while True:
            reply = ask("%s%s: " % (question, shown)).strip() or default
            if reply or not required:
                return reply

    answers.gateway_id = value(args.id, "Gateway id (letters, digits, . _ -)", _default_id(), option="--id")
    answers.data_dir = value(args.data_dir, "Buffer folder (data_dir)", answers.data_dir, option="--data-dir")
    broker = value(args.broker, "MQTT broker host[:port] ([::1]:8883 for IPv6)", required=True, option="--broker")
    answers.host, answers.port = _broker(broker)
    if args.tls is not None:
        answers.tls = args.tls
    elif ask is not None:
        answers.tls = value(None, "TLS to the broker (yes/no)", "yes" if answers.port != 1883 else "no").lower().startswith("y")
    else:
        answers.tls = answers.port != 1883
    if answers.tls:
        answers.ca_file = value(args.ca_file, "CA file of the broker's certificate (empty: the system's CAs)", option="--ca-file")
    answers.username = value(args.username, "MQTT user name (empty: none)", option="--username")
    if answers.username:
        answers.password_file = value(
            args.password_file, "File holding the MQTT password", "/etc/edgegw/mqtt-password", option="--password-file"
        )
    if args.serial:
        answers.serial = list(args.serial)
    else:
        devices = found_serial(args.scan)
        if ask is None:
            answers.serial = devices
        else:
            if devices:
                print("Serial devices found under %s:" % args.scan)
                for number, device in enumerate(devices, 1):
                    print("  %d. %s" % (number, device))
            reply = value(None, "Serial ports (numbers or paths, comma-separated; 'all')", "all" if devices else "")
            answers.serial = _chosen(reply, devices)
    if args.max_bytes is not None:
        answers.max_bytes = args.max_bytes
    return answers


def _broker(text: str) -> tuple[str, int | None]:
    """'host', 'host:port', '[v6]' or '[v6]:port' (a bare IPv6 address has no port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host or (port and not (port.isdigit() and 1 <= int(port) <= 65535)) or text.endswith(":"):
        raise InitError("--broker: %r is not host, host:port or [IPv6]:port" % text)
    return host, int(port) if port else None


def _default_id() -> str:
    name = socket.gethostname().split(".")[0]
    return "".join(char if char.isalnum() or char in "._-" else "-" for char in name).strip("-") or "gw-1"


def _chosen(reply: str, devices: list[str]) -> list[str]:
    if reply.strip().lower() == "all":
        return devices
    chosen = []
    for item in (part.strip() for part in reply.split(",")):
        if item.isdigit() and 1 <= int(item) <= len(devices):
            chosen.append(devices[int(item) - 1])
        elif item:
            chosen.append(item)
    return chosen


def _q(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, and every control character (DEL too) is escaped."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def render(answers: Answers) -> str:
    lines = [
        "# edgegw configuration, written by `edgegw init`. Every key: README, Configuration.",
        "# Check it with: edgegw config check --config THIS_FILE; then: edgegw doctor --config THIS_FILE",
        "",
        "[gateway]",
        "id = %s          # stable: topics and the MQTT client id use it" % _q(answers.gateway_id),
        "data_dir = %s    # the buffer (readings kept while the broker is unreachable) and the state" % _q(answers.data_dir),
        'log_level = "info"              # debug, info, warning, error',
        "",
        "[buffer]",
        "max_bytes = %d          # disk budget of the buffer, WAL included (edgegw doctor checks the room)" % answers.max_bytes,
        'when_full = "drop_oldest"       # or "stop_acking": nodes keep their data when the buffer is full',
        "",
        "[mqtt]",
        "host = %s" % _q(answers.host),
    ]
    if answers.port is not None:
        lines.append("port = %d" % answers.port)
    else:
        lines.append(
            "# port = %d                    # the default with%s TLS" % (8883 if answers.tls else 1883, "" if answers.tls else "out")
        )
    if answers.username:
        lines.append("username = %s" % _q(answers.username))
        lines.append(
            "password_file = %s   # the password alone; the service user's, mode 0600 (service install does it)" % _q(answers.password_file)
        )
    else:
        lines.append('# username = "..."             # and password_file = "/etc/edgegw/mqtt-password"')
    lines += ["", "[status]", '# socket = "..."               # where `edgegw status` asks the agent; default: edgegw.sock in data_dir']
    if answers.tls:
        lines += ["", "[mqtt.tls]"]
        if answers.ca_file:
            lines.append("ca_file = %s   # the CA that signed the broker's certificate" % _q(answers.ca_file))
        else:
            lines.append('# ca_file = "..."              # empty table: the system\'s CAs verify the broker')
    for device in answers.serial:
        lines += ["", "[[serial]]", "port = %s" % _q(device), "baud = 115200"]
    if not answers.serial:
        lines += ["", "# [[serial]]", '# port = "/dev/serial/by-id/usb-..."   # no serial device was found or chosen']
    return "\n".join(lines) + "\n"


def write(path: Path, text: str, force: bool) -> None:
    """Checked by the rules `edgegw run` uses before anything is written; not over a file unless force."""
    import tomllib

    try:
        data = text.encode("utf-8")
        configuration.parse(tomllib.loads(text), str(path))
    except configuration.ConfigError as error:
        raise InitError("the answers do not make a valid config:\n%s" % error.report()) from None
    except (UnicodeError, tomllib.TOMLDecodeError) as error:
        raise InitError("an answer holds what a config file cannot: %s" % error) from None
    existing = path.stat() if path.exists() else None
    if existing is not None and not force:
        raise InitError("%s exists; --force to replace it" % path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    # 0640: the service's group reads it (`service install` gives it that group); it names the password file,
    # not the password
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if existing is not None:  # a replaced config keeps its owner and group (the service's)
                os.fchown(handle.fileno(), existing.st_uid, existing.st_gid)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def interactive(args: argparse.Namespace) -> Callable[[str], str] | None:
    if args.ask or (args.ask is None and sys.stdin.isatty()):
        return input
    return None
