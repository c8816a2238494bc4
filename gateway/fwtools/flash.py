"""`edgegw fw flash`: copy the bundle and the node's settings to a board with mpremote, then reset it."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from protocols.frame import node_id_from_unique_id

from ..keystore import Keystore, key_id
from ..keytools import provisioning, write_key_file
from .build import build
from .tools import ROLES, find_tool

SETTING_TYPES = {
    "interval": float,
    "status_interval": float,
    "uart_id": int,
    "baud": int,
    "tx": int,
    "rx": int,
    "adc": int,
    "pulse_pin": int,
    "lamp_pin": int,  # streetlight: firmware/pwm_lamp.py
    "fault_pin": int,
    "save_s": int,  # streetlight: burning seconds between flash writes
    # a LoRa chip on SPI (firmware/hal_board.py) and its link (firmware/radio_link.py)
    "cs": int,
    "reset": int,
    "busy": int,  # SX1262 only
    "sf": int,
    "power": int,
    "freq": int,  # lora_bridge: the channel it listens on
    "sleep": int,  # a radio node: 0 keeps it awake between its radio's moments (firmware/hal_board.py)
}
# Keys whose value is a comma-separated list of integers: how many (None: one or more), and an example
LIST_SETTINGS = {
    "i2c": (2, "SCL,SDA pin numbers, e.g. i2c=22,21"),
    "spi": (4, "the SPI bus's ID,SCK,MOSI,MISO, e.g. spi=1,5,27,19"),
    "channels": (None, "uplink channels in Hz, e.g. channels=868100000,868300000"),
}
RADIOS = ("sx1276", "sx1262")


REBOOT_WAIT_S = 2.0  # after the first reset, for the board's USB serial to come back


class FlashError(Exception):
    pass


def parse_settings(pairs: list[str]) -> dict[str, object]:
    settings: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise FlashError("--set %s: expected KEY=VALUE" % pair)
        if key in LIST_SETTINGS:
            count, expected = LIST_SETTINGS[key]
            parts = value.split(",")
            if (count is not None and len(parts) != count) or not all(p.strip().isdigit() for p in parts):
                raise FlashError("--set %s=%s: expected %s" % (key, value, expected))
            settings[key] = [int(p) for p in parts]
            continue
        if key == "radio":
            if value not in RADIOS:
                raise FlashError("--set radio=%s: expected one of: %s" % (value, ", ".join(RADIOS)))
            settings[key] = value
            continue
        kind = SETTING_TYPES.get(key)
        if kind is None:
            known = sorted([*SETTING_TYPES, *LIST_SETTINGS, "radio"])
            raise FlashError("--set %s: unknown key; expected one of: %s" % (key, ", ".join(known)))
        try:
            settings[key] = kind(value)
        except ValueError:
            raise FlashError("--set %s=%s: expected %s" % (key, value, "a number" if kind is float else "an integer")) from None
    return settings


def mpremote() -> str:
    found = find_tool("mpremote")
    if found is None:
        raise FlashError("mpremote is not installed (pip install mpremote)")
    return found


def command_lines(port: str, bundle: Path, settings_file: Path, forget_config: bool, key_file: Path | None = None) -> list[list[str]]:
    """The mpremote invocations that install a node.

    First the running firmware is stopped from coming back (main.py removed, board
    reset): its watchdog cannot be disabled and would reset the board mid-copy.
    Then folders, bundle, settings and (--provision) the node's key are copied, main.py
    last, and the board reset.
    """
    # /data/key.old: a rotation's previous key must not outlive a new provisioning (it would still command the node)
    stale = ["/main.py"] + (["/data/config.json"] if forget_config else []) + (["/data/key.old"] if key_file is not None else [])
    stop = "import os\nfor f in %r:\n try: os.remove(f)\n except OSError: pass" % (stale,)
    make_dirs = "import os\ntry: os.mkdir('/data')\nexcept OSError: pass"
    tool = mpremote()
    return [
        [tool, "connect", port, "exec", stop, "+", "reset"],
        [
            tool, "connect", port,
            "exec", make_dirs, "+",
            "fs", "cp", "-r", str(bundle / "protocols"), str(bundle / "firmware"), ":", "+",
            "fs", "cp", str(settings_file), ":/data/node.json", "+",
            *(["fs", "cp", str(key_file), ":/data/key", "+"] if key_file is not None else []),
            "fs", "cp", str(bundle / "main.py"), ":main.py", "+",
            "reset",
        ],
    ]  # fmt: skip


def explain(output: str) -> str:
    """mpremote's failure as a technician-readable sentence."""
    if "could not enter raw repl" in output or "failed to access" in output:
        return "the board did not answer as a MicroPython REPL (is MicroPython flashed, and no other program using the port?)"
    if "ENOSPC" in output or "Errno 28" in output or "OSError: 28" in output:
        return "the board's filesystem is full; erase old files (mpremote fs rm) or reflash MicroPython"
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "mpremote failed"


UNIQUE_ID = "import machine, binascii\nprint(binascii.hexlify(machine.unique_id()).decode())"


def board_node_id(port: str) -> str:
    """The node id the board will have (SPEC.md §3.2), from its MCU unique id, asked over the REPL."""
    done = subprocess.run([mpremote(), "connect", port, "exec", UNIQUE_ID], capture_output=True, text=True, timeout=60, check=False)
    text = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
    try:
        return node_id_from_unique_id(bytes.fromhex(text[0])).hex()
    except (IndexError, ValueError):
        raise FlashError("%s: could not read the board's unique id: %s" % (port, explain(done.stdout + done.stderr))) from None


def flash(
    port: str,
    role: str,
    pairs: list[str],
    say: Callable[[str], None],
    dry_run: bool = False,
    provision: Keystore | None = None,
    node: str | None = None,
    replace: bool = False,
) -> int:
    """provision: make the node a key and put it into this keys file and onto the board (node: its id, else
    read from the board; replace: it has a key already)."""
    if role not in ROLES:
        raise FlashError("--role %s: expected one of: %s" % (role, ", ".join(ROLES)))
    settings = parse_settings(pairs)
    if not dry_run and not os.path.exists(port):
        raise FlashError("%s: no such serial port (is the board plugged in? `ls /dev/serial/by-id/`)" % port)
    with tempfile.TemporaryDirectory(prefix="edgegw-flash-") as work:
        bundle = Path(work) / "bundle"
        say("building the firmware bundle")
        manifest = build(bundle)
        settings_file = Path(work) / "node.json"
        settings_file.write_text(json.dumps({"role": role, **settings}))
        key_file = Path(work) / "key" if provision is not None else None
        # Settings given now replace those a gateway set over CONFIG earlier.
        forget = bool({"interval", "status_interval"} & set(settings))
        commands = command_lines(port, bundle, settings_file, forget, key_file)
        if dry_run:
            if provision is not None:
                say("a new key for node %s would go into %s and to /data/key" % (node or "(its id read from the board)", provision.path))
            for command in commands:
                say(" ".join(command))
            return 0
        if provision is None or key_file is None:
            _run_steps(port, manifest, commands, say)
        else:
            node = node or board_node_id(port)
            with provisioning(provision, node, replace) as (key, _replaced):
                write_key_file(key_file, key)
                say("node %s: new key %s in %s" % (node, key_id(key), provision.path))
                _run_steps(port, manifest, commands, say)
        say("flashed and reset; the node says HELLO on its UART when it boots")
    return 0


def _run_steps(port: str, manifest: dict[str, object], commands: list[list[str]], say: Callable[[str], None]) -> None:
    steps = ("stopping the running firmware", "copying %d files (firmware %s)" % (len(manifest["files"]), manifest["firmware_version"]))  # type: ignore[arg-type]
    for step, command in zip(steps, commands, strict=True):
        say("%s: %s" % (port, step))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        except subprocess.TimeoutExpired:
            raise FlashError("%s: %s took more than 300 s (is the board still connected?)" % (port, step)) from None
        if done.returncode != 0:
            raise FlashError("%s: %s" % (port, explain(done.stdout + done.stderr)))
        time.sleep(REBOOT_WAIT_S if step == steps[0] else 0)
