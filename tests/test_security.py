"""Issue 14: node keys at the gateway, attacked (SPEC.md §3.4, docs/SECURITY.md).

The real Sessions behind real Links (bytes in, bytes out) with a real keys file: a wrong key, no key,
the AUTH flag cleared to fall back to a CRC, flipped bits, a recorded session played again (before and
after a restart), a HELLO spoofing a provisioned node from another port, revocation, rotation, the
port policy, and a fuzz run with bounded memory. The real `edgegw run` and the real firmware are
attacked in tests/test_security_e2e.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import stat
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from gateway import keystore as ks
from gateway.command_book import FAILED, SUCCEEDED, Command
from gateway.layouts import Layouts
from gateway.rekey import Rekeys
from gateway.replay_journal import ReplayJournal
from gateway.serial_link import Link
from gateway.sessions import Sessions
from hil.scripted_node import CHANNELS
from protocols import Message, ProtocolError, StreamDecoder, auth, cbor, cobs, encode, messages
from protocols import errors as perr
from protocols import frame as fr
from tests.test_hostile import _Committer, _Transport

NODE = bytes.fromhex("0000a4cf12b3c4d5")
OTHER = bytes.fromhex("0000a4cf12b3c4d6")
KEY = bytes(range(32))
HELLO_FIELDS: dict[str, Any] = {"proto": [1, 1], "fw_version": "t", "hw_model": "pty", "caps": 0x2B, "channels": CHANNELS}


def keyfile(tmp_path: Path, nodes: dict[bytes, bytes]) -> ks.Keystore:
    keys = ks.Keystore(tmp_path / "keys.json")
    for node, key in nodes.items():
        keys.add(node.hex(), key)
    return keys


def frame(mtype: int, counter: int, fields: dict[str, Any], key: bytes | None = KEY, node: bytes = NODE) -> bytes:
    flags = fr.F_ACK_REQ
    if key is not None:
        flags |= fr.F_AUTH
    return encode(Message(mtype, node, counter, fields, flags), key)


def hello(counter: int, key: bytes | None = KEY, node: bytes = NODE) -> bytes:
    return frame(messages.HELLO, counter, HELLO_FIELDS, key, node)


def readings(counter: int, key: bytes | None = KEY, node: bytes = NODE) -> bytes:
    return frame(messages.READINGS, counter, {"samples": [0, 2150, 0, 1, counter, 0]}, key, node)


class KeyBench:
    """Sessions with a keys file behind two real Links (two ports): frames in as bytes, replies out as messages."""

    def __init__(self, keys: ks.Keystore, require_auth: bool | None = None) -> None:
        self.keys = keys
        self.committer = _Committer()
        self.saved: dict[str, str] = {}
        self.sessions = Sessions("gw-test", "edgegw", self.committer, Layouts(), lambda t, p: None, self.saved.__setitem__, keys=keys)  # type: ignore[arg-type]
        counters = itertools.count(100)
        self.links = {}
        self.transports = {}
        for path in ("/dev/ttyA", "/dev/ttyB"):
            link = Link(path, self.sessions, lambda link, exc: None, lambda node: next(counters), keys, require_auth)
            self.transports[path] = _Transport(link)
            link.connection_made(self.transports[path])  # type: ignore[arg-type]
            self.links[path] = link
        self.transports["/dev/ttyA"].written.clear()

    def feed(self, wire: bytes, port: str = "/dev/ttyA") -> list[Message]:
        self.transports[port].written.clear()
        self.links[port].data_received(b"\x00" + wire)
        return self.replies(port)

    def replies(self, port: str = "/dev/ttyA", key: bytes | None = None) -> list[Message]:
        """What the gateway wrote on the port, checked with the node's key as the node would."""
        keys = key or (self.keys.downlink_key(NODE))
        decoder = StreamDecoder(lambda node: keys)
        decoder.feed(bytes(self.transports[port].written))
        self.transports[port].written.clear()
        return [event for event in decoder.drain() if isinstance(event, Message)]

    def safe_all(self) -> None:
        """What was submitted became durable: counters enter the window, ACKs go out."""
        self.sessions.safe(self.committer.pending)
        self.committer.pending.clear()

    def stored(self) -> list[int]:
        return [pending.counter for pending in self.committer.pending]


def acked(replies: list[Message]) -> list[int]:
    return [counter for reply in replies if reply.type == messages.ACK for counter in reply.fields["counters"]]


def rejects(replies: list[Message]) -> list[int]:
    return [reply.fields["reason"] for reply in replies if reply.type == messages.REJECT]


@pytest.fixture
def bench(tmp_path: Path) -> KeyBench:
    return KeyBench(keyfile(tmp_path, {NODE: KEY}))


# ------------------------------------------------------------ frames a node with a key must send


def test_a_provisioned_node_is_answered_with_tagged_frames_only(bench: KeyBench) -> None:
    bench.transports["/dev/ttyA"].written.clear()
    bench.links["/dev/ttyA"].data_received(b"\x00" + hello(1))
    wire = bytes(bench.transports["/dev/ttyA"].written)
    frames = [fr.unpack(cobs.decode(part), lambda node: KEY) for part in wire.split(b"\x00") if part]
    assert [f.type for f in frames] == [messages.ACK, messages.TIME]
    assert all(f.flags & fr.F_AUTH and f.key_index == 0 for f in frames)
    for part in wire.split(b"\x00"):
        if part:
            with pytest.raises(ProtocolError) as error:  # under another key, or read as a CRC frame: refused
                fr.unpack(cobs.decode(part), lambda node: bytes(32))
            assert error.value.code == perr.E_AUTH


def test_no_key_wrong_key_cleared_flag_and_flipped_bits_are_refused(bench: KeyBench) -> None:
    assert acked(bench.feed(hello(1))) == [1]
    attacks = {
        "no key (a CRC frame)": readings(2, key=None),
        "a wrong key": readings(3, key=bytes(32)),
    }
    good = bytearray(fr.pack(fr.Frame(messages.READINGS, NODE, 4, b"\xa1\x01\x83\x00\x01\x00", fr.F_ACK_REQ | fr.F_AUTH), KEY))
    cleared = bytearray(good[:-8])  # AUTH cleared, a valid CRC in place of the tag: the fall back to a CRC
    cleared[2] &= ~fr.F_AUTH & 0xFF
    cleared += fr.pack(fr.Frame(messages.READINGS, NODE, 4, bytes(cleared[15:]), cleared[2]))[-4:]
    attacks["the AUTH flag cleared"] = cobs.encode(bytes(cleared), True)
    for index in (0, 2, 11, 14, 15, len(good) - 9, len(good) - 8, len(good) - 1):  # header, counter, payload, tag
        flipped = bytearray(good)
        flipped[index] ^= 0x01 if index != 2 else 0x40
        attacks["bit flipped at byte %d" % index] = cobs.encode(bytes(flipped), True)
    for what, wire in attacks.items():
        assert bench.feed(wire) == [], what  # no ACK, no REJECT: the sender is not the node
    assert bench.stored() == [], "nothing of them stored"
    errors = bench.links["/dev/ttyA"].errors
    assert errors["auth"] == len(attacks)
    assert bench.sessions.nodes[NODE.hex()].unauthenticated == 2  # the two frames whose tag was absent
    assert acked(bench.feed(cobs.encode(bytes(good), True))) == [] and bench.stored() == [4]  # the true frame: taken


def test_a_node_without_a_key_is_unchanged_and_its_tagged_frames_are_auth(bench: KeyBench) -> None:
    assert acked(bench.feed(hello(1, key=None, node=OTHER))) == [1]
    bench.feed(readings(2, key=None, node=OTHER))
    assert bench.stored() == [2]
    # Tagged, and the gateway has no key for it: `auth`, told to a node that announced the capability (SPEC.md §5.12)
    assert rejects(bench.feed(readings(3, key=KEY, node=OTHER))) == [perr.E_AUTH]
    assert bench.stored() == [2] and bench.links["/dev/ttyA"].errors["auth"] == 1


# ------------------------------------------------------------ replay


def test_a_recorded_session_played_again_stores_nothing_before_and_after_a_restart(tmp_path: Path) -> None:
    keys = keyfile(tmp_path, {NODE: KEY})
    bench = KeyBench(keys)
    recorded = [hello(1)] + [readings(counter) for counter in range(2, 12)]
    for wire in recorded:
        bench.feed(wire)
    bench.safe_all()
    assert bench.committer.pending == []
    for wire in recorded:  # the replay: acknowledged as duplicates (the node may have missed the ACK), never stored
        bench.feed(wire)
    assert bench.stored() == [] and bench.links["/dev/ttyA"].duplicates == len(recorded)
    # A restart: the windows as a stop writes them, the node info as saved
    node = bench.sessions.nodes[NODE.hex()]
    windows = {NODE.hex(): (node.window.highest, node.window.seen)}
    again = KeyBench(ks.Keystore(keys.path).load())
    again.sessions.restore(windows, bench.saved)
    for wire in recorded:
        again.feed(wire)
    assert again.stored() == []
    # The node went on past the window: the recording is now behind it, `stale`, counted, and still not stored
    for counter in range(12, 300):
        again.feed(readings(counter))
    again.safe_all()
    replies = [reply for wire in recorded[1:] for reply in again.feed(wire)]
    assert again.stored() == [] and set(rejects(replies)) == {perr.E_STALE}
    assert again.links["/dev/ttyA"].errors["stale"] == len(recorded) - 1


def test_a_replayed_hello_cannot_reset_a_provisioned_nodes_window(bench: KeyBench, caplog: pytest.LogCaptureFixture) -> None:
    recorded_hello, recorded_reading = hello(1), readings(2)
    bench.feed(recorded_hello)
    bench.feed(recorded_reading)
    bench.safe_all()
    for counter in range(3, 400):
        bench.feed(readings(counter))
    bench.safe_all()
    highest = bench.sessions.nodes[NODE.hex()].window.highest
    with caplog.at_level(logging.WARNING, logger="gateway.sessions"):
        assert rejects(bench.feed(recorded_hello)) == [perr.E_STALE]  # an unkeyed node's HELLO would reset the window
    assert bench.sessions.nodes[NODE.hex()].window.highest == highest
    assert bench.links["/dev/ttyA"].errors["replayed"] == 1
    assert "a replay?" in caplog.text
    bench.feed(recorded_reading)
    assert bench.stored() == []  # and the readings recorded after it stay stale


def provisioned_anew(tmp_path: Path, frames: int) -> tuple[KeyBench, bytes]:
    """A node that sent frames under KEY, then `edgegw keys add --replace` (its flash was erased): the new key."""
    keys = keyfile(tmp_path, {NODE: KEY})
    bench = KeyBench(keys)
    for counter in range(1, frames + 1):
        bench.feed(hello(counter) if counter == 1 else readings(counter))
    bench.safe_all()
    new = os.urandom(32)
    keys.add(NODE.hex(), new, replace=True)
    return bench, new


def test_a_board_provisioned_anew_may_start_its_counter_again(tmp_path: Path) -> None:
    bench, new = provisioned_anew(tmp_path, 299)
    assert acked(bench.feed(hello(1, key=new))) == [1]  # under a key no frame was accepted with yet: the reset is allowed
    assert bench.sessions.nodes[NODE.hex()].window.highest == 1
    bench.feed(readings(2, key=new))
    assert bench.stored() == [2]
    assert rejects(bench.feed(hello(1, key=new))) == []  # the same HELLO again is a duplicate, not a second reset
    assert bench.feed(hello(1)) == []  # the old key is not accepted any more
    bench.sessions.reset_saved(bench.sessions.moved_windows())  # the reset window is on disk: the key is recorded
    assert json.loads(bench.saved[NODE.hex()])["key_id"] == ks.key_id(new)


# ------------------------------------------------------------ spoofing from another port


def test_a_hello_spoofing_a_provisioned_node_from_another_port_changes_nothing(bench: KeyBench, caplog: pytest.LogCaptureFixture) -> None:
    bench.feed(hello(1))
    node = bench.sessions.nodes[NODE.hex()]
    layout = node.layout
    spoof = dict(HELLO_FIELDS, channels=[{"name": "stolen", "unit": "", "scale": 0}], caps=0x0B)
    for counter in (2, 10_000):
        assert bench.feed(frame(messages.HELLO, counter, spoof, key=None), "/dev/ttyB") == []
        assert bench.feed(frame(messages.HELLO, counter + 1, spoof, key=bytes(32)), "/dev/ttyB") == []
    # A HELLO the schema refuses, with a good CRC: its REJECT path once made the gateway forget the node's channels
    bad_hello = fr.to_wire(fr.Frame(messages.HELLO, NODE, 20_000, cbor.dumps({0: 1}), fr.F_ACK_REQ))
    assert bench.feed(bad_hello, "/dev/ttyB") == []
    assert node.layout is layout and node.port == "/dev/ttyA"
    assert bench.links["/dev/ttyB"].errors["auth"] == 5
    bench.feed(readings(2))  # the real node is not `stale`: nothing of the spoofer's reached its window
    assert bench.stored() == [2]


def test_a_node_heard_on_another_port_is_a_warning_naming_both(bench: KeyBench, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.sessions"):
        bench.feed(hello(1, key=None, node=OTHER))
        bench.feed(readings(2, key=None, node=OTHER), "/dev/ttyB")
    moved = [r.getMessage() for r in caplog.records if "before on" in r.getMessage()]
    assert moved == ["node %s: heard on /dev/ttyB, before on /dev/ttyA (moved, or two nodes with one id)" % OTHER.hex()]


# ------------------------------------------------------------ policy, revocation


def test_require_auth_on_a_port_refuses_every_unauthenticated_node(tmp_path: Path) -> None:
    bench = KeyBench(keyfile(tmp_path, {NODE: KEY}), require_auth=True)
    assert bench.feed(hello(1, key=None, node=OTHER)) == []
    assert OTHER.hex() not in bench.sessions.nodes
    assert bench.links["/dev/ttyA"].errors["auth"] == 1


def test_require_auth_false_takes_a_keyed_nodes_crc_frames(tmp_path: Path) -> None:
    bench = KeyBench(keyfile(tmp_path, {NODE: KEY}), require_auth=False)
    assert acked(bench.feed(hello(1, key=None))) == [1]
    assert bench.sessions.auth_required(bench.links["/dev/ttyA"], NODE, bridged=True)  # a radio bridge's: always


def test_a_revoked_node_is_refused_with_auth(bench: KeyBench) -> None:
    bench.feed(hello(1))
    bench.keys.revoke(NODE.hex())
    replies = bench.feed(readings(2))
    assert bench.stored() == []
    assert bench.links["/dev/ttyA"].errors["auth"] == 1
    assert rejects(bench.replies()) == [] and all(reply.type != messages.ACK for reply in replies)
    assert bench.feed(readings(3, key=None)) == [] and bench.stored() == []  # nor without a tag
    assert bench.keys.downlink_key(NODE) is None


# ------------------------------------------------------------ rotation


def test_rotation_sends_the_new_key_wrapped_and_ends_at_the_first_frame_under_it(bench: KeyBench) -> None:
    submitted: list[tuple[str, str, str, dict[str, Any], float]] = []
    rekeys = Rekeys(bench.keys, lambda *args: submitted.append(args))
    bench.sessions.next_key_used = rekeys.next_key_used
    bench.feed(hello(1))
    bench.keys.rotate(NODE.hex())
    new = bench.keys.entries[NODE.hex()].next
    assert new is not None
    rekeys.poll(file_changed=True)
    rekeys.poll()
    assert len(submitted) == 1  # one command under way, not one per poll
    _node, command_id, name, args, _ttl = submitted[0]
    assert name == "rekey" and command_id.startswith("rekey:%s:%s:" % (ks.key_id(new), ks.key_id(KEY)))
    assert new.hex() not in json.dumps(args) and KEY.hex() not in json.dumps(args)
    assert auth.wrap(KEY, bytes.fromhex(args["nonce"]), bytes.fromhex(args["key"])) == new  # the node unwraps it
    bench.feed(readings(2))  # under the old key: still taken
    assert acked(bench.replies()) == [] and bench.stored() == [2]
    bench.feed(readings(3, key=new))  # the node has the new key: the rotation ends
    entry = bench.keys.entries[NODE.hex()]
    assert entry.key == new and entry.next is None and entry.previous == KEY
    assert bench.stored() == [2, 3]
    bench.safe_all()
    bench.feed(readings(4))  # a frame built before the rotation, resent: accepted for the grace period
    assert bench.stored() == [4]
    assert all(reply.flags & fr.F_AUTH for reply in bench.replies(key=new))
    rekeys.finished(Command(NODE.hex(), command_id, "rekey", {}, 0, SUCCEEDED, 0))  # its result, late: nothing more
    assert bench.keys.entries[NODE.hex()].key == new


def test_after_the_grace_period_the_previous_key_is_refused(tmp_path: Path) -> None:
    now = [1_000_000.0]
    keys = ks.Keystore(tmp_path / "keys.json", clock=lambda: now[0])
    keys.add(NODE.hex(), KEY)
    bench = KeyBench(keys)
    bench.feed(hello(1))
    keys.rotate(NODE.hex())
    new = keys.entries[NODE.hex()].next
    assert new is not None and keys.promote(NODE.hex(), grace_s=60)
    bench.feed(readings(2))
    assert bench.stored() == [2]
    now[0] += 61
    bench.feed(readings(3))
    assert bench.stored() == [2]
    assert bench.links["/dev/ttyA"].errors["auth"] == 1


def test_a_failed_rotation_is_said_and_waits_for_rotate_again(bench: KeyBench, caplog: pytest.LogCaptureFixture) -> None:
    submitted: list[Any] = []
    rekeys = Rekeys(bench.keys, lambda *args: submitted.append(args))
    bench.keys.rotate(NODE.hex())
    rekeys.poll()
    failed = Command(NODE.hex(), submitted[0][1], "rekey", {}, 0, FAILED, 0, error="interrupted by reset")
    with caplog.at_level(logging.ERROR, logger="gateway.rekey"):
        rekeys.finished(failed)
    assert "key rotation not done" in caplog.text and KEY.hex() not in caplog.text
    rekeys.poll()
    assert len(submitted) == 1
    bench.keys.rotate(NODE.hex())  # again: the same new key, the next attempt
    rekeys.poll(file_changed=True)
    assert len(submitted) == 2 and submitted[1][1] != submitted[0][1]  # a new command, not the failed one again
    assert bench.keys.entries[NODE.hex()].key == KEY  # not changed until the node has the new key


# ------------------------------------------------------------ the keys file


def test_the_keys_file_is_private_and_never_shows_a_key(tmp_path: Path) -> None:
    keys = keyfile(tmp_path, {NODE: KEY})
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600
    assert KEY.hex() not in repr(keys.entries) and KEY.hex() not in json.dumps(keys.rows())
    keys.path.chmod(0o640)
    with pytest.raises(ks.KeystoreError, match=r"readable or writable by group or others .*chmod 600"):
        ks.Keystore(keys.path).load()
    keys.path.chmod(0o600)
    text = keys.path.read_text()
    keys.path.write_text(text.replace(KEY.hex()[:10], "zz"))
    with pytest.raises(ks.KeystoreError) as error:
        ks.Keystore(keys.path).load()
    assert "expected 64 lowercase hex digits" in str(error.value) and KEY.hex()[10:] not in str(error.value)
    keys.path.write_text(text[:-5])
    with pytest.raises(ks.KeystoreError, match="not valid JSON") as error:
        ks.Keystore(keys.path).load()
    assert KEY.hex()[:16] not in str(error.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_a_keys_file_of_another_user_is_refused(tmp_path: Path) -> None:
    keys = keyfile(tmp_path, {NODE: KEY})
    os.chown(keys.path, 12345, 12345)
    with pytest.raises(ks.KeystoreError, match="belongs to uid 12345"):
        ks.Keystore(keys.path).load()


def test_an_edited_keys_file_is_seen_as_changed(tmp_path: Path) -> None:
    keys = keyfile(tmp_path, {NODE: KEY})
    assert not keys.changed()
    other = ks.Keystore(keys.path)
    other.revoke(NODE.hex())
    assert keys.changed()
    keys.load()
    assert keys.uplink_keys(NODE) == ()


# ------------------------------------------------------------ fuzz


def test_random_authenticated_frames_never_crash_and_memory_stays_bounded(bench: KeyBench) -> None:
    bench.feed(hello(1))
    rng = random.Random(14)
    link = bench.links["/dev/ttyA"]
    transport = bench.transports["/dev/ttyA"]

    def burst(count: int) -> None:
        for _ in range(count):
            body = bytearray(rng.randbytes(rng.randint(0, 60)))
            mtype = rng.choice((2, 5, 7, 9, rng.randint(0, 255)))
            header = bytearray(fr.pack(fr.Frame(mtype, NODE, rng.getrandbits(32), bytes(body))))
            header[2] = rng.getrandbits(8) | fr.F_AUTH
            raw = bytes(header[:-4]) + rng.randbytes(8)
            link.data_received(b"\x00" + cobs.encode(raw, True))
        transport.written.clear()

    burst(2000)  # warm-up: the port's counters and the log's digests have all their keys
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    burst(10_000)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 256 * 1024, "%d bytes more after 10,000 forged frames" % grown
    assert bench.stored() == [] and link.errors["auth"] >= 12_000
    bench.feed(readings(2))
    assert bench.stored() == [2]  # the node is not stuck


# ------------------------------------------------------------ edgegw keys


def test_edgegw_keys_provisions_lists_rotates_and_revokes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    keys_file, node_dir = tmp_path / "keys.json", tmp_path / "node0"
    node_dir.mkdir()
    assert main(["keys", "add", "--keys", str(keys_file), "--node-dir", str(node_dir), NODE.hex().upper()]) == 0
    key = bytes.fromhex((node_dir / "key").read_text().strip())
    assert ks.Keystore(keys_file).load().entries[NODE.hex()].key == key  # the same key in both places
    assert stat.S_IMODE((node_dir / "key").stat().st_mode) == 0o600 and stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert main(["keys", "add", "--keys", str(keys_file), "--node-dir", str(node_dir), NODE.hex()]) == 2  # has one already
    assert main(["keys", "rotate", "--keys", str(keys_file), NODE.hex()]) == 0
    assert main(["keys", "list", "--keys", str(keys_file), "--json"]) == 0
    out = capsys.readouterr()
    listed = json.loads(out.out[out.out.index('{\n "keys_file"') :])
    assert [(row["node"], row["state"], row["key_id"]) for row in listed["nodes"]] == [(NODE.hex(), "rotating", ks.key_id(key))]
    assert "has a key already" in out.err and "--replace" in out.err
    assert main(["keys", "revoke", "--keys", str(keys_file), NODE.hex()]) == 0
    assert main(["keys", "list", "--keys", str(keys_file)]) == 0
    out = capsys.readouterr()
    assert "revoked" in out.out
    entry = ks.Keystore(keys_file).load().entries[NODE.hex()]
    assert entry.next is not None
    for secret in (key, entry.next):
        assert secret.hex() not in out.out + out.err
    assert main(["keys", "add", "--keys", str(keys_file), "--node-dir", str(tmp_path / "absent"), OTHER.hex()]) == 2
    assert OTHER.hex() not in ks.Keystore(keys_file).load().entries  # the node could not be written: the file as before
    assert main(["keys", "rotate", "--keys", str(keys_file), "12345"]) == 2
    assert "expected 16 hex digits" in capsys.readouterr().err


# ------------------------------------------------------------ edgegw fw flash --provision

# No board is attached here: mpremote's part is played by a script that keeps the board's files in a folder
# (named as the emulation it is). Everything else is the real flash: the bundle, the keys file, the rollback.
BOARD_MPREMOTE = """#!/bin/sh
board="$EDGEGW_TEST_BOARD"
[ -n "$EDGEGW_TEST_BOARD_FAIL" ] && case "$*" in *":/data/key"*) echo "OSError: [Errno 28] ENOSPC" >&2; exit 1;; esac
case "$*" in *unique_id*) echo e66038b7134f2a21; exit 0;; esac
while [ $# -gt 0 ]; do
  if [ "$1" = cp ] && [ "$2" != -r ]; then mkdir -p "$board/data"; cp "$2" "$board${3#:}"; fi
  shift
done
"""


@pytest.fixture(scope="module")
def built_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """One firmware bundle for the module's flashes (mpy-cross over every module takes seconds)."""
    from gateway.fwtools.build import build

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    return out, build(out)


@pytest.fixture
def emulated_board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built_bundle: tuple[Path, dict[str, object]]) -> Path:
    import shutil

    from gateway.fwtools import flash

    def copy_built(out: Path) -> dict[str, object]:
        shutil.copytree(built_bundle[0], out)
        return built_bundle[1]

    monkeypatch.setattr(flash, "build", copy_built)

    script = tmp_path / "mpremote-emulated-board"
    script.write_text(BOARD_MPREMOTE)
    script.chmod(0o755)
    board = tmp_path / "board"
    board.mkdir()
    monkeypatch.setenv("EDGEGW_TEST_BOARD", str(board))
    monkeypatch.setattr(flash, "mpremote", lambda: str(script))
    monkeypatch.setattr(flash, "REBOOT_WAIT_S", 0)
    port = tmp_path / "ttyACM0"
    port.touch()
    return board


def test_flash_provision_puts_one_key_on_the_board_and_into_the_keys_file(tmp_path: Path, emulated_board: Path) -> None:
    from gateway.fwtools import flash

    keys = ks.Keystore(tmp_path / "keys.json")
    lines: list[str] = []
    assert flash.flash(str(tmp_path / "ttyACM0"), "streetlight", [], lines.append, provision=keys) == 0
    node = fr.node_id_from_unique_id(bytes.fromhex("e66038b7134f2a21")).hex()  # read from the board
    on_board = bytes.fromhex((emulated_board / "data" / "key").read_text().strip())
    assert keys.load().entries[node].key == on_board
    assert on_board.hex() not in "\n".join(lines) and ks.key_id(on_board) in "\n".join(lines)
    dry: list[str] = []
    flash.flash("/dev/ttyACM9", "sensor", [], dry.append, dry_run=True, provision=keys, node=OTHER.hex())
    assert ":/data/key" in dry[-1] and dry[-1].index(":/data/key") < dry[-1].index(":main.py")
    assert OTHER.hex() not in keys.load().entries  # a dry run makes no key


def test_flash_provision_that_fails_on_the_board_leaves_the_keys_file_as_it_was(
    tmp_path: Path, emulated_board: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.fwtools import flash

    keys = keyfile(tmp_path, {NODE: KEY})
    monkeypatch.setenv("EDGEGW_TEST_BOARD_FAIL", "1")
    with pytest.raises(flash.FlashError, match="filesystem is full"):
        flash.flash(str(tmp_path / "ttyACM0"), "sensor", [], lambda line: None, provision=keys, node=NODE.hex(), replace=True)
    assert keys.load().entries[NODE.hex()].key == KEY
    with pytest.raises(ks.KeystoreError, match="has a key already"):
        flash.flash(str(tmp_path / "ttyACM0"), "sensor", [], lambda line: None, provision=keys, node=NODE.hex())


def test_a_broker_without_tls_elsewhere_and_a_readable_password_file_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway import config
    from gateway.agent import _warn_exposed

    secret = tmp_path / "password"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    document = {
        "gateway": {"id": "gw", "data_dir": str(tmp_path)},
        "mqtt": {"host": "broker.city.example", "username": "gw", "password_file": str(secret)},
    }
    with caplog.at_level(logging.WARNING, logger="gateway.agent"):
        _warn_exposed(config.parse(document))
        assert "no tls" in caplog.text and "readable by group or others" in caplog.text and "hunter2" not in caplog.text
        caplog.clear()
        secret.chmod(0o600)
        document["mqtt"] = {"host": "127.0.0.1", "password_file": str(secret)}
        _warn_exposed(config.parse(document))
    assert caplog.text == ""


# ------------------------------------------------------------ found by an attack review


def test_a_short_tagged_hello_names_nobody_and_changes_nothing(bench: KeyBench) -> None:
    bench.feed(hello(1))
    node = bench.sessions.nodes[NODE.hex()]
    layout = node.layout
    short = cobs.encode(struct.pack(">BBB8sI", 0x11, messages.HELLO, fr.F_AUTH, NODE, 0xFFFFFFFF) + bytes(4), True)
    assert bench.feed(short, "/dev/ttyB") == []  # no REJECT on the attacker's port either
    assert node.layout is layout and node.hello_counter == 1
    bench.feed(readings(2))
    assert bench.stored() == [2]


def test_an_unusable_keys_file_never_stops_the_gateway_and_keeps_the_keys(tmp_path: Path) -> None:
    keys = keyfile(tmp_path, {NODE: KEY})
    good = keys.path.read_text()
    bad_texts = [
        good.replace('"added": ', '"added": 1' + "0" * 400 + ', "x": ', 1),
        '{"format": 1, "nodes": {"%s": {"key": "%s", "added": %s}}}' % (NODE.hex(), KEY.hex(), "9" * 5000),
        good.replace('"added": ', '"added": -', 1),
    ]
    for text in bad_texts:
        keys.path.write_text(text)
        with pytest.raises(ks.KeystoreError):
            keys.load()
        assert keys.uplink_keys(NODE) == (KEY, None, None)  # the keys read before stay
    keys.path.unlink()
    keys.path.mkdir(mode=0o700)
    with pytest.raises(ks.KeystoreError, match=r"a directory|not a regular file"):
        keys.load()
    keys.path.rmdir()
    assert keys.changed()
    with pytest.raises(ks.KeystoreError, match="gone"):  # moved away to be edited: not "no node has a key"
        keys.load()
    assert keys.keyed(NODE)


def test_a_rekey_is_never_sent_under_a_key_it_is_not_wrapped_under(bench: KeyBench) -> None:
    submitted: list[Any] = []
    rekeys = Rekeys(bench.keys, lambda *args: submitted.append(args))
    bench.keys.rotate(NODE.hex())
    rekeys.poll()
    command = Command(NODE.hex(), submitted[0][1], "rekey", submitted[0][3], 0, "sent", 0)
    assert rekeys.veto(command) is None
    bench.keys.add(NODE.hex(), os.urandom(32), replace=True)  # the board was provisioned anew meanwhile
    assert rekeys.veto(command) == "its rotation is over (the node has the key, or another rotation replaced it)"
    bench.keys.rotate(NODE.hex())
    assert rekeys.veto(command) is not None  # another next key, and the key it was wrapped under is gone
    assert rekeys.veto(Command(NODE.hex(), "dim-1", "dim", {}, 0, "sent", 0)) is None
    from gateway import command_request as req

    taken = req.parse(NODE.hex(), "command", json.dumps({"id": submitted[0][1], "name": "dim"}).encode())
    assert isinstance(taken, req.Rejected)  # a client cannot take the gateway's id first


def test_a_rekey_that_ended_by_a_frame_under_the_new_key_is_not_reported_failed(bench: KeyBench, caplog: pytest.LogCaptureFixture) -> None:
    submitted: list[Any] = []
    rekeys = Rekeys(bench.keys, lambda *args: submitted.append(args))
    bench.sessions.next_key_used = rekeys.next_key_used
    bench.feed(hello(1))
    new = bench.keys.rotate(NODE.hex()).next
    assert new is not None
    rekeys.poll()
    bench.feed(readings(2, key=new))  # the rotation ends here
    command = Command(NODE.hex(), submitted[0][1], "rekey", submitted[0][3], 0, "delivered", 0)
    reason = rekeys.veto(command)  # its answer was lost: resending it now would be tagged with the new key
    assert reason is not None
    with caplog.at_level(logging.ERROR, logger="gateway.rekey"):
        rekeys.finished(Command(NODE.hex(), command.id, "rekey", {}, 0, FAILED, 0, error=reason))
    assert caplog.text == ""


def test_an_ack_behind_the_window_does_not_use_up_a_new_keys_reset(tmp_path: Path) -> None:
    bench, new = provisioned_anew(tmp_path, 399)
    bench.feed(frame(messages.ACK, 2, {"counters": [100]}, key=new))  # the fresh board's ACK, before its HELLO got through
    assert acked(bench.feed(hello(1, key=new))) == [1]
    assert bench.sessions.nodes[NODE.hex()].window.highest == 1


def test_a_tagged_hello_takes_back_a_window_moved_by_untagged_frames(tmp_path: Path) -> None:
    bench = KeyBench(keyfile(tmp_path, {NODE: KEY}), require_auth=False)
    bench.feed(hello(1))
    bench.feed(frame(messages.STATUS, 0xFFFFFFF0, {"uptime": 1}, key=None))  # somebody on the open bench port
    assert rejects(bench.feed(readings(2))) == [perr.E_STALE]
    assert acked(bench.feed(hello(3))) == [3]  # the node's own tagged HELLO: the window is its again
    bench.feed(readings(4))
    assert bench.stored() == [4]


def test_the_journal_keeps_a_reset(tmp_path: Path) -> None:
    journal = ReplayJournal(tmp_path)
    journal.append((NODE, counter) for counter in range(1, 400))
    journal.reset(NODE, 1)
    journal.append((NODE, counter) for counter in range(2, 6))
    journal.rotate()  # a fold began, and the process died before it was done
    journal.append([(NODE, 6)])
    journal.close()
    windows: dict[str, tuple[int, int]] = {NODE.hex(): (399, 1)}  # what the store had
    assert ReplayJournal(tmp_path).replay(windows) == {NODE.hex(): True}  # a reset among them: it replaces the stored one
    assert windows[NODE.hex()] == (6, 0b111111)


def test_keys_written_with_sudo_stay_the_service_users(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (sudo edgegw keys)")
    folder = tmp_path / "data"
    folder.mkdir()
    os.chown(folder, 12345, 12345)
    keys = ks.Keystore(folder / "keys.json")
    keys.add(NODE.hex(), KEY)
    assert keys.path.stat().st_uid == 12345 and (folder / "keys.json.lock").stat().st_uid == 12345
    keys.revoke(NODE.hex())  # root may go on using the service user's file
    assert ks.Keystore(keys.path).load().entries[NODE.hex()].revoked is not None


def test_an_interrupted_keys_add_leaves_the_keys_file_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import keytools

    keys = ks.Keystore(tmp_path / "keys.json")

    def interrupted(folder: Path, key: bytes) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(keytools, "write_node_dir", interrupted)
    with pytest.raises(KeyboardInterrupt):
        keytools.add(keys, NODE.hex(), None, tmp_path, False, print)
    assert NODE.hex() not in keys.load().entries


def test_a_new_key_on_a_node_folder_removes_a_rotations_previous_key(tmp_path: Path) -> None:
    from gateway.keytools import board_command, write_node_dir

    (tmp_path / "key.old").write_text(KEY.hex() + "\n")  # revoked mid-rotation: the stolen key is the previous one
    write_node_dir(tmp_path, os.urandom(32))
    assert not (tmp_path / "key.old").exists()
    assert "os.remove('/data/key.old')" in " ".join(board_command("/dev/ttyACM0", tmp_path / "key"))


def test_a_rekey_queued_before_the_key_changed_is_dropped_when_it_would_be_written(bench: KeyBench) -> None:
    bench.feed(hello(1))
    link = bench.links["/dev/ttyA"]
    transport = bench.transports["/dev/ttyA"]
    transport.output_ready = lambda: None  # type: ignore[method-assign]  # the port is busy: nothing written yet
    fields = {"id": 7, "action": "rekey", "args": {"nonce": "00" * 16, "key": "11" * 32}}
    assert bench.sessions.send_request(NODE.hex(), 500, messages.COMMAND, fields, only_under=KEY)
    bench.keys.add(NODE.hex(), os.urandom(32), replace=True)  # provisioned anew while it waited
    transport.written += link.pull(1 << 20)
    assert [reply.type for reply in bench.replies(key=bench.keys.downlink_key(NODE))] == []
    assert link.downlink.dropped["key changed"] == 1


def test_a_key_is_recorded_only_once_a_reset_is_on_disk(tmp_path: Path) -> None:
    bench, new = provisioned_anew(tmp_path, 299)
    bench.feed(hello(1, key=new))  # the reset
    bench.feed(frame(messages.STATUS, 2, {"uptime": 5}, key=new))  # new to the reset window, before it is on disk
    assert "key_id" not in json.loads(bench.saved[NODE.hex()]) or json.loads(bench.saved[NODE.hex()])["key_id"] != ks.key_id(new)
    moved = bench.sessions.moved_windows()
    bench.sessions.reset_saved(moved)  # the durable fold is done
    assert json.loads(bench.saved[NODE.hex()])["key_id"] == ks.key_id(new)


def test_rekeys_under_way_at_a_start_go_on_and_no_second_one_is_sent(bench: KeyBench) -> None:
    submitted: list[Any] = []
    bench.keys.rotate(NODE.hex())
    rekeys = Rekeys(bench.keys, lambda *args: submitted.append(args))
    resumed = Command(NODE.hex(), "rekey:a:b:1", "rekey", {}, 0, "sent", 0)
    rekeys.adopt([resumed])
    rekeys.poll()
    assert submitted == []
