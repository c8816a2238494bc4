"""Issue 14 on the node: a node with a key (SPEC.md §3.4) on the real MicroPython VM behind a pty.

It tags every frame it sends, takes only downlink frames tagged under its keys (an untagged,
forged or damaged COMMAND never runs, a forged ACK drops nothing), runs a replayed COMMAND
never twice (its downlink window is on flash), and changes its key with `rekey`: the old key
is taken until the gateway's first frame under the new one. The test plays the gateway with
the node's keys (KeyedPeer).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import select
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.fwtools import build, emulate
from protocols import Message, ProtocolError, StreamDecoder, auth, cobs, encode, messages
from protocols import frame as fr
from protocols.errors import E_STALE
from tests.test_firmware import HEAP, Peer, ack_new, acks_of, results, start_node, stop, wait_for
from tests.test_roles import bundle_check, role_check

pytestmark = pytest.mark.micropython

K0 = hashlib.sha256(b"edgegw test key 0").digest()  # the node's provisioned key
K1 = hashlib.sha256(b"edgegw test key 1").digest()  # the key `rekey` gives it
OTHER = hashlib.sha256(b"another node's key").digest()
NONCE = bytes(range(16))
SPEC = "nonce t! key t!"  # SPEC.md §3.6: lowercase hex text
BOARD = "Raspberry Pi Pico W with RP2040"  # the longest board name (os.uname().machine) the tests know
KEYED_CHECK = pathlib.Path(__file__).resolve().parent / "portable" / "keyed_node_check.py"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("bundle")
    build.build(out, emulator=True)
    return out


def provision(flash: pathlib.Path, key: bytes, name: str = "key") -> None:
    """A key record as `edgegw keys add` writes it: 64 hex digits and a newline."""
    flash.mkdir(exist_ok=True)
    (flash / name).write_text(key.hex() + "\n")


def key_on_flash(flash: pathlib.Path, name: str = "key") -> bytes | None:
    path = flash / name
    return bytes.fromhex(path.read_text().strip()) if path.exists() else None


class KeyedPeer(Peer):
    """The gateway's side holding the node's keys. `accepted`: the keys the node's frames are checked
    with (a decoded message's key_index says which matched); `key`: the one its own frames are
    tagged under (None: CRC frames). Every byte the node wrote is kept, to check each frame's tag."""

    def __init__(self, key: bytes | None, *accepted: bytes) -> None:
        super().__init__()
        self.key = key
        self.accepted: tuple[bytes, ...] = accepted or ((key,) if key else ())
        self.decoder = StreamDecoder(lambda node_id: self.accepted)
        self.stream = bytearray()
        self.refused: list[ProtocolError] = []

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.05)[0]:
                data = os.read(self.master, 4096)
                self.stream += data
                self.decoder.feed(data)
                for event in self.decoder.drain():
                    if isinstance(event, ProtocolError):
                        self.refused.append(event)
                    else:
                        self.received.append(event)

    def send(self, message_type: int, node_id: bytes, fields: dict[str, object], flags: int = 0) -> None:
        self.frame(message_type, node_id, fields, flags)

    def frame(
        self, mtype: int, node_id: bytes, fields: dict[str, object], flags: int = 0, key: object = "peer", counter: int | None = None
    ) -> tuple[int, bytes]:
        """A downlink frame tagged under `key` (the peer's by default; None: with a CRC): its counter and wire bytes."""
        tag_key = self.key if key == "peer" else key
        assert tag_key is None or isinstance(tag_key, bytes)
        if counter is None:
            self.counter += 1
            counter = self.counter
        flags |= fr.F_DOWNLINK | (fr.F_AUTH if tag_key else 0)
        wire = encode(Message(mtype, node_id, counter, fields, flags), tag_key)
        os.write(self.master, wire)
        return counter, wire

    def command(self, node_id: bytes, ident: int, action: str, args: dict[str, object] | None = None, **how: Any) -> tuple[int, bytes]:
        fields: dict[str, object] = {"id": ident, "action": action}
        if args is not None:
            fields["args"] = args
        return self.frame(messages.COMMAND, node_id, fields, fr.F_ACK_REQ, **how)

    def frames(self) -> list[bytes]:
        """Every whole frame the node wrote, COBS removed, tag or CRC still on."""
        return [cobs.decode(piece) for piece in bytes(self.stream).split(b"\x00")[:-1] if piece]


@pytest.fixture
def peer() -> Iterator[KeyedPeer]:
    made = KeyedPeer(K0)
    yield made
    made.close()


def verifies(raw: bytes, key: bytes | None) -> bool:
    try:
        fr.unpack(raw, (lambda node_id: key) if key else None)
        return True
    except ProtocolError:
        return False


def after(peer: Peer, mark: int, mtype: int) -> list[Message]:
    return [m for m in peer.received[mark:] if m.type == mtype]


def no_key_in(output: str, *keys: bytes) -> bool:
    return not any(key.hex() in output.lower() or key.hex()[:16] in output.lower() for key in keys)


# ------------------------------------------------------------------ what a keyed node sends


def test_a_keyed_node_tags_every_frame_it_sends_and_offers_rekey(bundle: pathlib.Path, peer: KeyedPeer, tmp_path: pathlib.Path) -> None:
    """HELLO, READINGS (and their retransmissions), STATUS, ACK, COMMAND_RESULT, a CONFIG report and a REJECT: each
    flagged AUTH, its tag right under the node's key and wrong under any other; a resent frame is the same bytes."""
    flash = tmp_path / "flash"
    provision(flash, K0)
    (flash / "downlink.json").write_text(json.dumps({"h": 500, "s": "1", "n": 0}))  # so a COMMAND at counter 100 is stale
    node = start_node(bundle, peer, flash, interval=0.3, status=1.0)
    try:
        hello = peer.wait(messages.HELLO)
        assert hello.flags & fr.F_AUTH and hello.key_index == 0
        assert hello.fields["caps"] & messages.CAP_AUTH
        assert hello.fields["commands"]["rekey"] == SPEC
        peer.ack(hello)
        nid = hello.node_id
        peer.counter = 600
        mark = len(peer.received)
        peer.command(nid, 1, "identify")
        peer.frame(messages.CONFIG, nid, {"op": messages.CONFIG_SET, "values": {"interval": 0.5}, "id": 2}, fr.F_ACK_REQ)
        peer.command(nid, 3, "identify", counter=100)  # 400 behind the window: REJECT stale
        wait_for(peer, lambda: bool(results(peer, 1, mark) and after(peer, mark, messages.CONFIG) and after(peer, mark, messages.REJECT)))
        peer.wait(messages.STATUS, after=mark)
        peer.pump(2.5)  # READINGS not acknowledged: retransmitted
    finally:
        output = stop(node)
    assert "Traceback" not in output, output
    assert no_key_in(output, K0), output
    frames = peer.frames()
    sent = {raw[1] for raw in frames}
    wanted = {messages.HELLO, messages.READINGS, messages.STATUS, messages.ACK, messages.COMMAND_RESULT, messages.CONFIG, messages.REJECT}
    assert wanted <= sent, sent
    for raw in frames:
        name = messages.NAMES[raw[1]]
        assert raw[2] & fr.F_AUTH, "%s without AUTH" % name
        assert verifies(raw, K0), "%s: the tag is not the node key's" % name
        assert not verifies(raw, OTHER) and not verifies(raw, None), name
    assert peer.refused == []
    by_counter: dict[int, set[bytes]] = {}
    for raw in frames:
        by_counter.setdefault(int.from_bytes(raw[11:15], "big"), set()).add(raw)
    resent = [c for c in by_counter if sum(1 for raw in frames if int.from_bytes(raw[11:15], "big") == c) > 1]
    assert resent, "no frame was retransmitted"
    assert all(len(by_counter[c]) == 1 for c in resent), "a retransmission is the kept bytes, tag and all"


@pytest.mark.parametrize(
    ("records", "keyed", "reported"),
    [
        pytest.param({}, False, None, id="no-key"),
        pytest.param({"key": "zz" * 32 + "\n"}, False, "key", id="key-not-hex"),
        pytest.param({"key": K0.hex()[:63]}, False, "key", id="key-cut-short"),
        pytest.param({"key": K0.hex() + "00\n"}, False, "key", id="key-too-long"),
        pytest.param({"key": ""}, False, "key", id="key-empty"),
        pytest.param({"key": K0.hex()}, True, None, id="key-without-newline"),
        pytest.param({"key": K0.hex().upper() + "\n", "key.old": K1.hex()[:40]}, True, "key.old", id="key-old-damaged"),
    ],
)
def test_a_node_without_a_good_key_sends_crc_frames_and_says_a_damaged_record(
    bundle: pathlib.Path, tmp_path: pathlib.Path, records: dict[str, str], keyed: bool, reported: str | None
) -> None:
    """No key or a damaged one: a 1.0 node (CRC frames, no auth capability, no rekey), the record named on the
    console and not its content. A damaged key.old beside a good key: keyed, key.old said and ignored."""
    flash = tmp_path / "flash"
    flash.mkdir()
    for name, content in records.items():
        (flash / name).write_text(content)
    peer = KeyedPeer(K0 if keyed else None, K0)
    node = start_node(bundle, peer, flash, interval=30, status=60)
    try:
        hello = peer.wait(messages.HELLO)
        peer.ack(hello)
        peer.pump(0.5)
    finally:
        output = stop(node)
        peer.close()
    assert "Traceback" not in output, output
    assert bool(hello.flags & fr.F_AUTH) == keyed and bool(hello.fields["caps"] & messages.CAP_AUTH) == keyed
    assert ("rekey" in hello.fields["commands"]) == keyed
    assert all(bool(raw[2] & fr.F_AUTH) == keyed and verifies(raw, K0 if keyed else None) for raw in peer.frames())
    if reported:
        assert "bad flash record %s " % reported in output, output
    else:
        assert "bad flash record" not in output, output
    for content in records.values():
        assert len(content.strip()) < 16 or content.strip()[:16].lower() not in output.lower(), "a key record's content on the console"


def node_check(micropython: str, bundle: pathlib.Path, folder: pathlib.Path, wire: bytes = b"") -> dict[str, Any]:
    """tests/portable/keyed_node_check.py on the compiled bundle (code on the heap, as .mpy files on a board's flash)."""
    return bundle_check(micropython, bundle, KEYED_CHECK, "256k", str(folder), wire.hex())


def test_only_a_keyed_node_loads_the_tag_code(micropython: str, bundle: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """protocols/auth.py stays off an unkeyed node's heap, even when AUTH frames arrive for it; a keyed node
    takes a tagged TIME and counts an untagged one. Prints what the key costs the heap (code loaded as .mpy)."""
    node_id = bytes.fromhex("e100000000000003")
    time_of = {"unix": 1795000000}
    tagged = encode(Message(messages.TIME, node_id, 7, time_of, fr.F_DOWNLINK | fr.F_AUTH), K0)
    plain = encode(Message(messages.TIME, node_id, 8, time_of, fr.F_DOWNLINK))
    unkeyed = node_check(micropython, bundle, tmp_path / "plain", tagged)
    assert unkeyed["auth_loaded"] is False and unkeyed["rx_errors"] == 1 and unkeyed["time_set"] is False
    provision(tmp_path / "keyed", K0)
    keyed = node_check(micropython, bundle, tmp_path / "keyed", plain)
    assert keyed["auth_loaded"] is True and keyed["rx_errors"] == 1 and keyed["time_set"] is False
    again = node_check(micropython, bundle, tmp_path / "keyed", tagged)
    assert again["rx_errors"] == 0 and again["time_set"] is True
    print("heap held after boot, HELLO and a frame: %d bytes without a key, %d with one" % (unkeyed["heap"], keyed["heap"]))


def test_every_roles_keyed_hello_fits_a_tagged_frame(micropython: str, bundle: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """The tag takes 4 bytes more than a CRC (232 payload bytes) and rekey adds its spec: each role's HELLO, with the
    longest board name the tests know, still fits. The sensor node's (six channels) did not: its board name, which
    only informs, is cut to fit; the others keep theirs whole."""
    sizes = {}
    models = {}
    for role in ("sensor", "streetlight", "gauge", "parking"):
        provision(tmp_path / role, K0)
        wire = bytes.fromhex(role_check(micropython, bundle, tmp_path / role, "hello:" + role, BOARD)["wire"])
        raw = cobs.decode(wire.strip(b"\x00"))
        hello = messages.decode_frame(fr.unpack(raw, lambda node_id: K0))
        assert hello.fields["commands"]["rekey"] == SPEC and hello.fields["caps"] & messages.CAP_AUTH
        sizes[role] = len(raw) - fr.HEADER_LEN - fr.AUTH_TAG_LEN
        models[role] = hello.fields["hw_model"]
    print("keyed HELLO payload bytes: %s (limit %d)" % (sizes, fr.MAX_FRAME - fr.HEADER_LEN - fr.AUTH_TAG_LEN))
    assert sizes["sensor"] == fr.MAX_FRAME - fr.HEADER_LEN - fr.AUTH_TAG_LEN and BOARD.startswith(models["sensor"]), models
    assert [models[role] for role in ("streetlight", "gauge", "parking")] == [BOARD] * 3, "a name cut that fitted"


# ------------------------------------------------------------------ what a keyed node takes


def test_a_command_without_a_good_tag_is_not_run(bundle: pathlib.Path, peer: KeyedPeer, tmp_path: pathlib.Path) -> None:
    """set_interval and identify sent with a CRC, under another node's key, with a flipped tag bit or payload bit: none
    acknowledged, answered or run, each counted in rx_errors; a CRC TIME and REJECT change nothing either. Then the same
    set_interval, tagged right, with the counter of the CRC copy (no forgery took it): run once."""
    flash = tmp_path / "flash"
    provision(flash, K0)
    node = start_node(bundle, peer, flash, interval=0.5, status=1.0)
    try:
        hello = peer.wait(messages.HELLO)
        peer.ack(hello)
        nid = hello.node_id
        mark = len(peer.received)
        set5 = {"s": 5}
        forged = [peer.command(nid, 1, "set_interval", set5, key=None)[0]]  # a CRC frame
        forged.append(peer.command(nid, 2, "identify", key=None)[0])
        forged.append(peer.command(nid, 3, "set_interval", set5, key=OTHER)[0])
        for flip in (-1, fr.HEADER_LEN + 3):  # the tag's last byte; a payload byte
            peer.counter += 1
            fields = {"id": 4, "action": "set_interval", "args": set5}
            raw = fr.pack(fr.Frame(messages.COMMAND, nid, peer.counter, messages.encode_payload(messages.COMMAND, fields), 0x83), K0)
            raw[flip] ^= 0x01
            os.write(peer.master, cobs.encode(raw, True))
            forged.append(peer.counter)
        peer.frame(messages.TIME, nid, {"unix": 1795000000}, key=None)
        peer.frame(messages.REJECT, nid, {"reason": 12, "counter": hello.counter}, key=None)  # unknown_node: would make it say HELLO
        peer.pump(1.5)
        status = peer.wait(messages.STATUS, after=len(peer.received))
        assert status.fields["rx_errors"] >= 7, status.fields
        assert not [m for m in peer.received[mark:] if m.type in (messages.ACK, messages.COMMAND_RESULT)]
        assert not [m for m in after(peer, mark, messages.HELLO) if m.counter != hello.counter], "a forged REJECT made it say HELLO"
        assert [m for m in after(peer, mark, messages.READINGS) if "base_time" in m.fields] == [], "a forged TIME set the clock"
        assert not (flash / "config.json").exists(), "a forged set_interval ran"

        mark = len(peer.received)
        counter, _ = peer.command(nid, 1, "set_interval", set5, counter=forged[0])
        wait_for(peer, lambda: len(results(peer, 1, mark)) == 1 and acks_of(peer, counter, mark) == 1)
        peer.pump(0.5)
    finally:
        output = stop(node)
    assert "Traceback" not in output, output
    assert results(peer, 1, mark)[0].fields == {"id": 1, "outcome": messages.OUTCOME_OK, "value": 5}
    assert json.loads((flash / "config.json").read_text())["interval"] == 5


def test_a_forged_ack_does_not_drop_an_unacknowledged_frame(bundle: pathlib.Path, peer: KeyedPeer, tmp_path: pathlib.Path) -> None:
    """ACKs for the node's READINGS with a CRC and under another key: it keeps retransmitting the frame; the tagged
    ACK ends that."""
    flash = tmp_path / "flash"
    provision(flash, K0)
    node = start_node(bundle, peer, flash, interval=60, status=60)
    try:
        hello = peer.wait(messages.HELLO)
        peer.ack(hello)
        reading = peer.wait(messages.READINGS)
        peer.frame(messages.ACK, hello.node_id, {"counters": [reading.counter]}, key=None)
        peer.frame(messages.ACK, hello.node_id, {"counters": [reading.counter]}, key=OTHER)
        peer.pump(0.5)  # taken in well before the first retry, 2 s after the frame
        mark = len(peer.received)
        wait_for(peer, lambda: any(m.counter == reading.counter for m in after(peer, mark, messages.READINGS)), timeout=10)
        peer.ack(reading)
        mark = len(peer.received)
        peer.pump(6.0)  # its next retry was due 4 s (+-25 %) after the last
    finally:
        output = stop(node)
    assert "Traceback" not in output, output
    assert [m for m in after(peer, mark, messages.READINGS) if m.counter == reading.counter] == [], "the tagged ACK was not taken"


def test_a_replayed_command_is_not_run_again_before_or_after_a_restart(
    bundle: pathlib.Path, peer: KeyedPeer, tmp_path: pathlib.Path
) -> None:
    """A recorded tagged `set_interval 5`, replayed after a `set_interval 9`: answered from the kept answer, the
    interval stays 9; the same after the node restarts (its window is on flash); once the window has moved 300
    counters on, the replay is stale: REJECT, not run."""
    flash = tmp_path / "flash"
    provision(flash, K0)
    node = start_node(bundle, peer, flash, interval=30, status=60)
    try:
        hello = peer.wait(messages.HELLO)
        peer.ack(hello)
        nid = hello.node_id
        first, recorded = peer.command(nid, 1, "set_interval", {"s": 5})
        wait_for(peer, lambda: len(results(peer, 1)) == 1)
        peer.command(nid, 2, "set_interval", {"s": 9})
        wait_for(peer, lambda: len(results(peer, 2)) == 1)
        mark = len(peer.received)
        os.write(peer.master, recorded)
        wait_for(peer, lambda: len(results(peer, 1, mark)) == 1 and acks_of(peer, first, mark) == 1)
        assert results(peer, 1, mark)[0].fields == {"id": 1, "outcome": messages.OUTCOME_OK, "value": 5}, "the kept answer"
        assert json.loads((flash / "config.json").read_text())["interval"] == 9, "the replay ran"
        stop(node)

        peer.received.clear()
        node = start_node(bundle, peer, flash, interval=30, status=60)
        hello = peer.wait(messages.HELLO)
        assert hello.fields["interval"] == 9
        peer.ack(hello)
        os.write(peer.master, recorded)
        wait_for(peer, lambda: len(results(peer, 1)) == 1 and acks_of(peer, first) == 1)
        assert results(peer, 1)[0].fields["value"] == 5 and json.loads((flash / "config.json").read_text())["interval"] == 9

        peer.command(nid, 3, "identify", counter=first + 300)
        wait_for(peer, lambda: len(results(peer, 3)) == 1)
        mark = len(peer.received)
        os.write(peer.master, recorded)
        wait_for(peer, lambda: bool(after(peer, mark, messages.REJECT)))
        peer.pump(0.5)
    finally:
        output = stop(node)
    assert "Traceback" not in output, output
    assert after(peer, mark, messages.REJECT)[0].fields == {"reason": 11, "counter": first, "type": messages.COMMAND}
    assert results(peer, 1, mark) == [] and json.loads((flash / "config.json").read_text())["interval"] == 9


# ------------------------------------------------------------------ rekey


def test_rekey_moves_the_node_to_the_new_key_and_the_old_one_ends_with_the_gateways_switch(
    bundle: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """rekey with a short nonce, a key that is not hex, bytes for text: bad arguments, nothing changes. rekey right:
    key.old = K0, key = K1 on flash, the ACK and the answer (ok, nothing else) under K1, and every frame after. Its
    repeat under K0 is answered from the kept answer (not run again); other K0 frames are still taken until a K1 frame
    arrives, then never; after a restart the node is on K1."""
    flash = tmp_path / "flash"
    provision(flash, K0)
    peer = KeyedPeer(K0, K1, K0)  # the gateway made K1: it takes both from the node, and tags under K0 until it switches
    wrapped = auth.wrap(K0, NONCE, K1)
    output = ""
    node = start_node(bundle, peer, flash, interval=0.5, status=60)
    try:
        hello = peer.wait(messages.HELLO)
        assert hello.key_index == 1  # K0
        peer.ack(hello)
        nid = hello.node_id
        peer.command(nid, 1, "rekey", {"nonce": NONCE.hex()[:30], "key": wrapped.hex()})
        peer.command(nid, 11, "rekey", {"nonce": NONCE.hex(), "key": "zz" + wrapped.hex()[2:]})
        peer.command(nid, 12, "rekey", {"nonce": NONCE, "key": wrapped})  # bytes: not the spec's kind
        wait_for(peer, lambda: all(len(results(peer, ident)) == 1 for ident in (1, 11, 12)))
        refused = [results(peer, ident)[0] for ident in (1, 11, 12)]
        assert [m.fields["outcome"] for m in refused] == [messages.OUTCOME_BAD_ARGS] * 3
        assert ["nonce" in refused[0].fields["detail"], "key" in refused[1].fields["detail"]] == [True, True]
        assert refused[0].key_index == 1 and key_on_flash(flash) == K0 and key_on_flash(flash, "key.old") is None

        rekeyed = len(peer.received)
        counter, recorded = peer.command(nid, 2, "rekey", {"nonce": NONCE.hex(), "key": wrapped.hex()})
        wait_for(peer, lambda: len(results(peer, 2, rekeyed)) == 1 and acks_of(peer, counter, rekeyed) == 1)
        answer = results(peer, 2, rekeyed)[0]
        ack = next(m for m in peer.received[rekeyed:] if m.type == messages.ACK)
        assert answer.fields == {"id": 2, "outcome": messages.OUTCOME_OK}, "no value, no detail: nothing of a key"
        assert (answer.key_index, ack.key_index) == (0, 0), "the ACK and the answer go under the new key"
        assert (key_on_flash(flash), key_on_flash(flash, "key.old")) == (K1, K0)
        later = len(peer.received)
        wait_for(peer, lambda: bool(after(peer, later, messages.READINGS)))

        mark = len(peer.received)
        written = [(flash / name).stat().st_ino for name in ("key", "key.old")]  # each put is a new file, renamed
        os.write(peer.master, recorded)  # its ACK lost: the gateway sends the same frame again, under K0
        wait_for(peer, lambda: len(results(peer, 2, mark)) == 1 and acks_of(peer, counter, mark) == 1)
        assert results(peer, 2, mark)[0].fields == answer.fields
        assert (key_on_flash(flash), key_on_flash(flash, "key.old")) == (K1, K0)
        assert [(flash / name).stat().st_ino for name in ("key", "key.old")] == written, "the repeat was run again"
        peer.command(nid, 3, "identify")  # under K0: still taken
        wait_for(peer, lambda: len(results(peer, 3)) == 1)

        peer.key = K1  # the gateway switches: its first frame under K1 ends the rotation
        peer.ack(results(peer, 3)[0])
        wait_for(peer, lambda: not (flash / "key.old").exists())
        switched = len(peer.received)
        peer.command(nid, 4, "identify", key=K0)
        peer.pump(1.5)
        assert results(peer, 4) == [] and not after(peer, switched, messages.ACK), "a K0 frame taken after the switch"
        peer.command(nid, 5, "identify")
        wait_for(peer, lambda: len(results(peer, 5)) == 1)
        for message in peer.received[rekeyed:]:  # a frame kept from before the rekey is resent as it was, under K0
            assert message.key_index == (0 if message.counter >= ack.counter else 1), (message.name, message.counter, ack.counter)
        output = stop(node)

        peer.received.clear()
        peer.accepted = (K1,)
        peer.stream.clear()
        node = start_node(bundle, peer, flash, interval=30, status=60)
        hello = peer.wait(messages.HELLO)
        peer.ack(hello)
        peer.command(nid, 6, "identify", key=K0)
        peer.command(nid, 7, "identify")
        wait_for(peer, lambda: len(results(peer, 7)) == 1)
        peer.pump(0.5)
    finally:
        output += stop(node)
        peer.close()
    assert "Traceback" not in output and no_key_in(output, K0, K1, wrapped), output
    assert results(peer, 6) == [], "the old key after a restart"
    assert peer.frames() and all(verifies(raw, K1) and not verifies(raw, K0) for raw in peer.frames())
    assert key_on_flash(flash) == K1 and key_on_flash(flash, "key.old") is None


def test_a_rekey_under_the_previous_key_is_unwrapped_with_that_key(bundle: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """A rotation the gateway never heard of (a reset lost the answer: key = K1, key.old = K0 on flash; the gateway
    still on K0) and a new rekey to K2 under K0: the node unwraps it with K0, the key the gateway used, not K1
    (that would give a key nobody has); K0 stays the previous key, K1 is gone."""
    flash = tmp_path / "flash"
    provision(flash, K1)
    provision(flash, K0, "key.old")
    k2 = hashlib.sha256(b"edgegw test key 2").digest()
    peer = KeyedPeer(K0, k2, K1)
    node = start_node(bundle, peer, flash, interval=30, status=60)
    try:
        hello = peer.wait(messages.HELLO)
        assert hello.key_index == 1  # K1
        peer.ack(hello)  # under K0: taken, the rotation goes on
        peer.command(hello.node_id, 1, "rekey", {"nonce": NONCE.hex(), "key": auth.wrap(K0, NONCE, k2).hex()})
        wait_for(peer, lambda: len(results(peer, 1)) == 1)
        answer = results(peer, 1)[0]
        assert answer.fields["outcome"] == messages.OUTCOME_OK and answer.key_index == 0  # under K2
        assert (key_on_flash(flash), key_on_flash(flash, "key.old")) == (k2, K0)
        peer.key = k2
        peer.ack(answer)
        wait_for(peer, lambda: not (flash / "key.old").exists())
    finally:
        output = stop(node)
        peer.close()
    assert "Traceback" not in output and no_key_in(output, K0, K1, k2), output


# ------------------------------------------------------------------ the heap


def test_a_keyed_node_runs_sustained_within_its_heap(bundle: pathlib.Path, peer: KeyedPeer, tmp_path: pathlib.Path) -> None:
    """As tests/test_firmware.py's sustained run, keyed, with a COMMAND every half second: every frame tagged and
    checked, no MemoryError, nothing dropped, the heap peak under the limit."""
    flash = tmp_path / "flash"
    provision(flash, K0)
    node = start_node(bundle, peer, flash, interval=0.05, status=1.0, heap=HEAP)
    try:
        nid = peer.wait(messages.HELLO).node_id
        deadline = time.monotonic() + 5
        acked = 0
        ident = 0
        next_command = time.monotonic()
        while time.monotonic() < deadline and node.poll() is None:
            peer.pump(0.2)
            acked = ack_new(peer, acked)
            if time.monotonic() >= next_command:
                ident += 1
                peer.command(nid, ident, "identify" if ident % 2 else "sample_now")
                next_command += 0.5
    finally:
        output = stop(node)
    assert "MemoryError" not in output and "Traceback" not in output and "out of memory" not in output, output
    statuses = after(peer, 0, messages.STATUS)
    assert len(after(peer, 0, messages.READINGS)) > 50 and statuses
    assert len({m.fields["id"] for m in after(peer, 0, messages.COMMAND_RESULT)}) >= ident - 3  # the last may be on their way
    assert statuses[-1].fields["dropped"] == 0 and peer.refused == []
    peak = statuses[-1].fields["heap_peak"]
    assert 0 < peak < emulate.heap_bytes(HEAP)
    print("keyed firmware heap high-water mark: %d bytes of %s" % (peak, HEAP))


def test_a_replayed_time_or_reject_changes_nothing(bundle: pathlib.Path, peer: KeyedPeer, tmp_path: pathlib.Path) -> None:
    """No window guards TIME and REJECT: a recorded TIME played again would set the clock back (the readings'
    times), a recorded REJECT make the node say HELLO again. Taken only with a counter above every frame taken
    before, and a REJECT only for a frame the node still holds."""
    flash = tmp_path / "flash"
    provision(flash, K0)
    node = start_node(bundle, peer, flash, interval=0.5, status=60)
    try:
        hello = peer.wait(messages.HELLO)
        nid = hello.node_id
        _counter, old_time = peer.frame(messages.TIME, nid, {"unix": 1_700_000_000, "ms": 0})  # recorded long ago
        now = int(time.time())
        peer.frame(messages.TIME, nid, {"unix": now, "ms": 0})
        peer.ack(hello)
        os.write(peer.master, old_time)  # the recording, played again
        peer.pump(1.0)
        mark = len(peer.received)
        reading = peer.wait(messages.READINGS, after=mark)
        assert abs(reading.fields["base_time"] - now) < 30, "the clock was set back by a replayed TIME"
        _counter, reject = peer.frame(messages.REJECT, nid, {"reason": E_STALE, "counter": reading.counter, "type": 2})
        again = peer.wait(messages.HELLO, after=mark)  # a fresh REJECT for a frame it holds: it says HELLO
        peer.ack(again)
        peer.ack(reading)
        peer.pump(0.5)
        mark = len(peer.received)
        os.write(peer.master, reject)  # played again
        peer.frame(messages.REJECT, nid, {"reason": E_STALE, "counter": 999_999, "type": 2})  # names no frame it holds
        peer.pump(3.0)
    finally:
        output = stop(node)
    assert "Traceback" not in output, output
    assert after(peer, mark, messages.HELLO) == [], "a replayed or stray REJECT made the node say HELLO"
