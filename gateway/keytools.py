"""`edgegw keys add | list | rotate | revoke`: the technician's side of the node keys (docs/SECURITY.md).

`add` makes a 32-byte key with `secrets`, writes it into the gateway's keys file and onto the node's flash:
a board over its USB serial port with mpremote (`--port`, as `edgegw fw flash` does), or an emulated node's
flash folder (`--node-dir`, the unix port's DATA_DIR). If the node cannot be written, the keys file is put
back as it was: a key in one place only would lock the node out. No command prints a key; `list` names
each by its key id (gateway/keystore.key_id).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from . import config
from .keystore import Keystore, KeystoreError, key_id, new_key, node_name

KEY_RECORD = "key"  # the node's flash record (firmware/node.py reads it): 64 hex digits
OLD_KEY_RECORD = "key.old"  # the node's previous key during a rotation: removed whenever a key is provisioned
MPREMOTE_TIMEOUT_S = 60


def add_arguments(command: argparse.ArgumentParser) -> None:
    actions = command.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    for name, text in (
        ("add", "provision a node: a new key into the keys file and onto the node's flash"),
        ("list", "the nodes with a key, their key ids and states (never a key)"),
        ("rotate", "send a node a new key under its current one; both are accepted for a grace period"),
        ("revoke", "refuse every later frame of a node (auth)"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        where = action.add_mutually_exclusive_group(required=True)
        where.add_argument("--config", metavar="PATH", help="the gateway's configuration (its keys file: [gateway] keys_file)")
        where.add_argument("--keys", metavar="FILE", help="the keys file itself")
        if name != "list":
            action.add_argument("node", metavar="NODE", help="the node id, 16 hex digits as the gateway logs it")
        if name == "add":
            target = action.add_mutually_exclusive_group(required=True)
            target.add_argument("--port", help="the board's serial port: the key goes to /data/key with mpremote")
            target.add_argument("--node-dir", metavar="DIR", help="an emulated node's flash folder (edgegw fw emulate --state)")
            action.add_argument("--replace", action="store_true", help="the node has a key already: replace it (its flash was erased)")
        if name == "list":
            action.add_argument("--json", action="store_true", help="one JSON document")


def keystore_for(args: argparse.Namespace) -> Keystore:
    if args.keys:
        return Keystore(Path(args.keys))
    try:
        return Keystore(config.load(args.config).keys_path)
    except config.ConfigError as error:
        raise KeystoreError(error.report()) from None


def run(args: argparse.Namespace, say: Callable[[str], None] = print) -> int:
    keys = keystore_for(args)
    if args.keys_command == "list":
        rows = keys.load().rows()
        if args.json:
            say(json.dumps({"keys_file": str(keys.path), "nodes": rows}, indent=1))
        elif not rows:
            say("%s: no node has a key" % keys.path)
        else:
            for row in rows:
                say(_line(row))
        return 0
    node = node_name(args.node)
    if args.keys_command == "add":
        return add(keys, node, args.port, Path(args.node_dir) if args.node_dir else None, args.replace, say)
    if args.keys_command == "rotate":
        entry = keys.rotate(node)
        assert entry.next is not None
        say(
            "node %s: new key %s chosen; a running gateway sends it under key %s within a second"
            % (node, key_id(entry.next), key_id(entry.key))
        )
        say("  `edgegw keys list` shows `active` with the new key id once the node has it")
        return 0
    keys.revoke(node)
    say("node %s: revoked; a running gateway refuses its frames (auth) within a second" % node)
    return 0


def add(keys: Keystore, node: str, port: str | None, node_dir: Path | None, replace: bool, say: Callable[[str], None]) -> int:
    with provisioning(keys, node, replace) as (key, replaced):
        if node_dir is not None:
            write_node_dir(node_dir, key)
        else:
            assert port is not None
            write_board(port, key)
    say("node %s: key %s in %s and on the node%s" % (node, key_id(key), keys.path, " (replaced)" if replaced else ""))
    say("  the node signs its frames from its next boot; the gateway requires them signed from now on")
    return 0


@contextlib.contextmanager
def provisioning(keys: Keystore, node: str, replace: bool) -> Iterator[tuple[bytes, bool]]:
    """A new key for the node, in the keys file for the block (which puts it on the node): (key, whether one was
    replaced). If the block fails in any way (a failed copy, a timeout, Ctrl-C, a full disk), the keys file is put
    back as it was: a key in the keys file only would lock the node out."""
    before = keys.load().entries.get(node)
    key = new_key()
    keys.add(node, key, replace)
    try:
        yield key, before is not None
    except BaseException:
        with keys.editing() as entries:
            if before is None:
                entries.pop(node, None)
            else:
                entries[node] = before
        raise


def write_key_file(path: Path, key: bytes) -> None:
    """The node's key record as firmware/node.py reads it (64 hex digits), mode 0600, on disk before it is used."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.hex().encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_node_dir(folder: Path, key: bytes) -> None:
    """The key record in an emulated node's flash folder (the unix port's Storage): by rename, mode 0600."""
    if not folder.is_dir():
        raise KeystoreError("%s: no such folder (an emulated node's flash folder, as given to edgegw fw emulate --state)" % folder)
    temporary = folder / (KEY_RECORD + ".tmp")
    write_key_file(temporary, key)
    os.replace(temporary, folder / KEY_RECORD)
    with contextlib.suppress(FileNotFoundError):  # a rotation's previous key: it must not outlive a new provisioning
        (folder / OLD_KEY_RECORD).unlink()


def board_command(port: str, key_file: Path) -> list[str]:
    """The mpremote invocation that puts the key on a board (and resets it: it signs from its next boot)."""
    from .fwtools.flash import mpremote

    make_dirs = "import os\ntry: os.mkdir('/data')\nexcept OSError: pass\ntry: os.remove('/data/%s')\nexcept OSError: pass" % OLD_KEY_RECORD
    return [mpremote(), "connect", port, "exec", make_dirs, "+", "fs", "cp", str(key_file), ":/data/" + KEY_RECORD, "+", "reset"]


def write_board(port: str, key: bytes) -> None:
    from .fwtools.flash import FlashError, explain

    if not os.path.exists(port):
        raise KeystoreError("%s: no such serial port (is the board plugged in? `ls /dev/serial/by-id/`)" % port)
    with tempfile.TemporaryDirectory(prefix="edgegw-key-") as work:
        key_file = Path(work) / KEY_RECORD
        write_key_file(key_file, key)
        try:
            done = subprocess.run(board_command(port, key_file), capture_output=True, text=True, timeout=MPREMOTE_TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError, FlashError) as error:
            raise KeystoreError("%s: the key could not be written to the board: %s" % (port, error)) from None
        if done.returncode != 0:
            raise KeystoreError("%s: the key could not be written to the board: %s" % (port, explain(done.stdout + done.stderr)))


def _line(row: dict[str, object]) -> str:
    def when(value: object) -> str:
        return datetime.datetime.fromtimestamp(float(value), datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")  # type: ignore[arg-type]

    text = "%s  %-8s  key %s  added %s" % (row["node"], row["state"], row["key_id"], when(row["added"]))
    if "next_key_id" in row:
        text += "  next %s (being sent)" % row["next_key_id"]
    if "previous_key_id" in row:
        text += "  previous %s accepted until %s" % (row["previous_key_id"], when(row["previous_until"]))
    if "revoked" in row:
        text += "  revoked %s" % when(row["revoked"])
    return text
