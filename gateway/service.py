"""`edgegw service`: the systemd unit that runs the agent, and its installation.

The unit: `Type=notify` (gateway/systemd.py sends READY=1 once the ports and the buffer are up), a watchdog
the event loop pings, `Restart=on-failure`, its own system user in the `dialout` group (serial ports), the
buffer in `StateDirectory` (/var/lib/edgegw, mode 0750: the technicians in the service's group reach the
status socket there), and the file system read-only but for it. Logs go to the journal, which the agent
detects (JOURNAL_STREAM): syslog priorities, no second timestamp (gateway/logs.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

UNIT_NAME = "edgegw.service"
UNIT_DIR = "/etc/systemd/system"
STATE_DIR = "/var/lib/edgegw"
WATCHDOG_S = 30  # a loop that does not turn for this long is restarted; the agent pings every 15 s
STOP_S = 90  # a stop waits for the last commits (SHUTDOWN_DRAIN_S, 30 s) and the broker's acknowledgements


class ServiceError(Exception):
    """Not installed: the message says why."""


def executable() -> str:
    """How systemd starts `edgegw`: the installed script next to this interpreter, else the interpreter itself."""
    beside = Path(sys.executable).with_name("edgegw")
    if beside.exists():
        return str(beside)
    found = shutil.which("edgegw")
    return found or "%s -m gateway.cli" % sys.executable


def _plain(path: str) -> str:
    """A path as a unit file takes it unquoted: absolute, without spaces, quotes, backslashes or '%'."""
    if not os.path.isabs(path) or any(char in path for char in " \t\n\"'\\%;"):
        raise ServiceError("%r: the unit needs an absolute path without spaces, quotes, backslashes, ';' or '%%'" % path)
    return path


def render_unit(
    config: str, user: str = "edgegw", data_dir: str = STATE_DIR, command: str | None = None, writable: Sequence[str] = ()
) -> str:
    """writable: folders the agent writes beside data_dir (the status socket's, the keys file's)."""
    folders = sorted({os.path.normpath(path) for path in (data_dir, *writable)} - {STATE_DIR})
    writable_line = "ReadWritePaths=%s\n" % " ".join(_plain(folder) for folder in folders) if folders else ""
    for part in (command or executable()).split(" "):
        _plain(part)
    _plain(config)
    return (
        "# Written by `edgegw service install`. docs/OPERATIONS.md says what each line is for.\n"
        "[Unit]\n"
        "Description=edgegw: serial sensor nodes to MQTT, buffered on disk\n"
        "After=network-online.target time-sync.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=notify\n"
        "NotifyAccess=main\n"
        "ExecStart=%(command)s run --config %(config)s\n"
        "User=%(user)s\n"
        "Group=%(user)s\n"
        "SupplementaryGroups=dialout\n"
        "StateDirectory=edgegw\n"
        "StateDirectoryMode=0750\n"
        "UMask=0027\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "WatchdogSec=%(watchdog)d\n"
        "TimeoutStartSec=300\n"
        "TimeoutStopSec=%(stop)d\n"
        "NoNewPrivileges=yes\n"
        "ProtectSystem=strict\n"
        "ProtectHome=read-only\n"  # a checkout's .venv under /home/pi runs; nothing there is written
        "PrivateTmp=yes\n"
        "%(writable)s"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    ) % {
        "command": command or executable(),
        "config": config,
        "user": user,
        "watchdog": WATCHDOG_S,
        "stop": STOP_S,
        "writable": writable_line,
    }


def install_steps(config: str, user: str, unit_dir: str, secrets: Sequence[str] = ()) -> list[tuple[str, Sequence[str] | None]]:
    """What install does, in order: (what it is, the command, or None for the unit file written here). secrets:
    the files only the agent may read (the MQTT password, the TLS key, the node keys): made its own, mode 0600."""
    steps: list[tuple[str, Sequence[str] | None]] = []
    try:
        import pwd

        pwd.getpwnam(user)
    except KeyError:
        steps.append(
            (
                "create the system user %s (in the dialout group, for the serial ports)" % user,
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--groups",
                    "dialout",
                    "--home-dir",
                    STATE_DIR,
                    "--shell",
                    "/usr/sbin/nologin",
                    user,
                ],
            )
        )
    steps.append(("let the service's group read %s" % config, ["chgrp", user, config]))
    for secret in secrets:
        steps.append(("make %s the service's own" % secret, ["chown", "%s:%s" % (user, user), secret]))
        steps.append(("keep %s private" % secret, ["chmod", "600", secret]))
    steps.append(("write %s" % os.path.join(unit_dir, UNIT_NAME), None))
    steps.append(("reload systemd's units", ["systemctl", "daemon-reload"]))
    return steps


def install(
    config: str,
    user: str,
    unit_dir: str,
    data_dir: str,
    dry_run: bool,
    secrets: Sequence[str] = (),
    writable: Sequence[str] = (),
    say: Callable[[str], None] = print,
    run: Callable[[Sequence[str]], int] = lambda argv: subprocess.run(list(argv), check=False).returncode,
) -> int:
    unit = render_unit(os.path.abspath(config), user, data_dir, writable=writable)
    steps = install_steps(os.path.abspath(config), user, unit_dir, [os.path.abspath(path) for path in secrets if os.path.exists(path)])
    if dry_run:
        for what, argv in steps:
            say("would %s%s" % (what, ": " + " ".join(argv) if argv else ""))
        say("the unit:")
        say(unit.rstrip("\n"))
        return 0
    if os.geteuid() != 0:
        raise ServiceError("installing a system service needs root: sudo edgegw service install --config %s" % config)
    for what, argv in steps:
        say(what)
        if argv is None:
            target = Path(unit_dir) / UNIT_NAME
            target.write_text(unit)
            target.chmod(0o644)
        elif run(argv) != 0:
            raise ServiceError("%s failed: %s" % (what, " ".join(argv)))
    say("installed. Start it now and at every boot: systemctl enable --now edgegw")
    say("then: systemctl status edgegw; journalctl -u edgegw -f; edgegw status --config %s" % config)
    return 0
