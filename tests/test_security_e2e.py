"""Issue 14 against the real `edgegw run` (a real mosquitto, real ptys): replays across a kill -9, 100,000
random forgeries, a keys file others can read. The real firmware is attacked in tests/test_firmware_auth.py
and, behind the real gateway, in test_a_forged_dim_never_reaches_a_street_light below."""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.fwtools.emulate import Emulator
from gateway.fwtools.relay import DOWN, Line, LineHook
from gateway.keystore import Keystore
from gateway.keytools import write_node_dir
from hil.broker import Mosquitto
from hil.capture import MqttCapture
from hil.gateway import GatewayProcess
from hil.scripted_node import ScriptedNode
from hil.serial_pair import PtyCable
from protocols import Message, StreamDecoder, cbor, cobs, encode, messages
from protocols import frame as fr
from tests import test_gateway

NODE = bytes.fromhex("0000a4cf12b3c4d5")
KEY = bytes(range(32))
broker, capture, cables = test_gateway.broker, test_gateway.capture, test_gateway.cables


@pytest.fixture
def gateway(tmp_path: pathlib.Path, broker: Mosquitto) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path / "gw", broker.port, [str(tmp_path / "ttyNODE*")])
    Keystore(process.data_dir / "keys.json").add(NODE.hex(), KEY)
    process.start()
    yield process
    process.close()


def counters_received(capture: MqttCapture) -> list[int]:
    return test_gateway.counters_received(capture, NODE.hex())


def rss_kb(pid: int) -> int:
    for line in pathlib.Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_recorded_session_replayed_after_a_kill_is_never_published_again(
    gateway: GatewayProcess, capture: MqttCapture, cables: list[PtyCable]
) -> None:
    gateway.wait_for_log("ttyNODE0: open")
    capture.wait_for(lambda received: any(m.topic.endswith("/status") and b'"online"' in m.payload for m in received))
    node = ScriptedNode(cables[0], NODE, key=KEY)
    recorded: list[bytes] = []
    node.wait_acked([node.hello()])
    for value in range(20):
        counter = node.readings([0, 2100, 0, 1, 5000 + value, 0])
        recorded.append(node.unacked[counter])
        node.wait_acked([counter])
    capture.wait_for(lambda _: sorted(counters_received(capture)) == list(range(5000, 5020)))
    journal = gateway.data_dir / "replay.journal"
    assert journal.stat().st_size >= 21 * 13  # every counter acknowledged, written before its ACK

    gateway.kill()  # no stop, no fold: the windows in the store are older than these frames
    gateway.start()
    gateway.wait_for_log("ttyNODE0: open", after=gateway.log_mark)
    assert gateway.stop() == 0  # a clean stop while the node is silent: its fold must not lose what the journal held
    assert not journal.exists()
    gateway.start()
    gateway.wait_for_log("ttyNODE0: open", after=gateway.log_mark)
    replayer = ScriptedNode(cables[0], NODE, key=KEY)
    for wire in recorded:  # the attacker's recording, played again
        cables[0].write(b"\x00" + wire)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(replayer.acked) < len(recorded):
        replayer.poll(0.1)  # duplicates are acknowledged again (a node may have missed the ACK), never stored
    assert len(replayer.acked) == len(recorded)
    node.counter = 200
    fresh = node.readings([0, 2100, 0, 1, 6000, 0])
    node.wait_acked([fresh])
    capture.wait_for(lambda _: 6000 in counters_received(capture))
    assert sorted(counters_received(capture)) == [*range(5000, 5020), 6000]  # each reading once


def test_100000_random_forgeries_are_all_refused(gateway: GatewayProcess, capture: MqttCapture, cables: list[PtyCable]) -> None:
    gateway.wait_for_log("ttyNODE0: open")
    node = ScriptedNode(cables[0], NODE, key=KEY)
    node.wait_acked([node.hello()])
    first = node.readings([0, 2100, 0, 1, 7000, 0])
    node.wait_acked([first])
    assert gateway.process is not None
    rss_before = rss_kb(gateway.process.pid)
    rng = random.Random(100_000)
    forged_counters: set[int] = set()
    sent = 0
    while sent < 100_000:
        batch = bytearray()
        for _ in range(1000):
            counter = rng.randrange(1000, 2**32)
            forged_counters.add(counter)
            mtype = rng.choice((messages.READINGS, messages.READINGS, messages.HELLO, messages.STATUS, messages.COMMAND_RESULT))
            payload = cbor.dumps({1: [0, rng.randrange(10_000), 0, 1, 99_999, 0]} if mtype == messages.READINGS else {0: rng.randrange(99)})
            if sent % 2:  # a random tag
                raw = struct.pack(">BBB8sI", 0x11, mtype, fr.F_ACK_REQ | fr.F_AUTH, NODE, counter) + payload + rng.randbytes(8)
            else:  # AUTH cleared: a correct CRC, the fall back an attacker hopes for
                raw = bytes(fr.pack(fr.Frame(mtype, NODE, counter, payload, fr.F_ACK_REQ)))
            batch += b"\x00" + cobs.encode(raw, True)
            sent += 1
        cables[0].write(bytes(batch))
        node.poll(0.01)
    last = node.readings([0, 2100, 0, 1, 7001, 0])  # after every forgery on the line: its ACK says they were read
    node.wait_acked([last], timeout=120)
    capture.wait_for(lambda _: 7001 in counters_received(capture))
    grown = rss_kb(gateway.process.pid) - rss_before
    assert gateway.stop() == 0
    found = re.findall(r"ttyNODE0: closed after \d+ frames; bad frames and refusals \{'auth': (\d+)", gateway.log())
    totals = int(found[-1]) if found else None
    assert totals == 100_000, "every forgery counted as auth: %s" % totals
    assert not (node.acked & forged_counters), "0 forgeries acknowledged"
    assert sorted(counters_received(capture)) == [7000, 7001]  # 0 forgeries published
    assert 99_999 not in counters_received(capture)
    assert grown < 20_000, "the gateway grew %d KB over 100,000 forgeries" % grown
    assert "Traceback" not in gateway.log()


def test_the_gateway_refuses_to_start_with_a_keys_file_others_can_read(tmp_path: pathlib.Path, broker: Mosquitto) -> None:
    process = GatewayProcess(tmp_path / "gw", broker.port, [])
    keys = Keystore(process.data_dir / "keys.json")
    keys.add(NODE.hex(), KEY)
    keys.path.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(process.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=pathlib.Path(__file__).resolve().parent.parent,
        env=dict(os.environ),
    )
    assert done.returncode == 2
    assert "keys.json is readable or writable by group or others (mode 0644)" in done.stderr and "chmod 600" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout and KEY.hex() not in done.stderr + done.stdout


# ------------------------------------------------------------ the real firmware behind the real gateway


class Attacker(LineHook):
    """On the street light's cable: records what the gateway sends it, and slips frames of its own in."""

    def __init__(self) -> None:
        self.down = bytearray()  # everything the gateway sent towards the node
        self.inject: list[bytes] = []
        self.lock = threading.Lock()

    def tick(self, line: Line, now: float) -> None:
        with self.lock:
            for wire in self.inject:
                line.push(DOWN, b"\x00" + wire, now)  # queued whole, between the gateway's chunks
            self.inject.clear()

    def carry(self, line: Line, direction: str, data: bytes, now: float) -> tuple[bytes, float]:
        if direction == DOWN:
            with self.lock:
                self.down += data
        return data, now

    def recorded_commands(self, key: bytes) -> list[tuple[bytes, dict[str, Any]]]:
        """Each COMMAND the gateway sent, as wire bytes and fields."""
        with self.lock:
            parts = bytes(self.down).split(b"\x00")
        found = []
        for part in parts:
            decoder = StreamDecoder(lambda node: key)
            decoder.feed(part + b"\x00")
            for event in decoder.drain():
                if isinstance(event, Message) and event.type == messages.COMMAND:
                    found.append((part + b"\x00", event.fields))
        return found


def levels(capture: MqttCapture, node: str) -> list[float]:
    return [r["value"] for topic, r in capture.readings() if node in topic and r["name"].endswith(":level")]


def command_state(capture: MqttCapture, base: str, command_id: str) -> str | None:
    found = [json.loads(m.payload)["state"] for m in capture.snapshot() if m.topic == "%s/command/%s" % (base, command_id) and m.payload]
    return found[-1] if found else None


def edgegw(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a technician runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=pathlib.Path(__file__).resolve().parent.parent,
    )


def test_a_real_street_light_forged_replayed_rotated_and_revoked(tmp_path: pathlib.Path, broker: Mosquitto, capture: MqttCapture) -> None:
    """One real street-light node (the firmware on the MicroPython VM) behind the real gateway, an attacker on its
    cable: a forged dim (no tag, another key), a forged ACK and a recorded dim played again are not acted on; then
    the technician rotates its key and revokes it with edgegw keys."""
    key = os.urandom(32)
    attacker = Attacker()
    emulator = Emulator(1, 0.3, "64k", 7, tmp_path / "nodes", status_interval=30, role="streetlight", hook=attacker)
    node_hex = "e100%012x" % 7  # the unix HAL's unique id: e1 00 and the seed
    flash = emulator.nodes[0].data_dir
    flash.mkdir(parents=True)
    write_node_dir(flash, key)
    emulator.start()
    gateway = GatewayProcess(tmp_path / "gw", broker.port, [emulator.nodes[0].port])
    keys_file = str(gateway.data_dir / "keys.json")
    Keystore(gateway.data_dir / "keys.json").add(node_hex, key)
    base = "edgegw/gw-test/nodes/%s" % node_hex
    try:
        gateway.start()
        gateway.wait_for_log("node %s: HELLO on" % node_hex, timeout=30)

        def dim(command_id: str, level: int) -> None:
            document = {"id": command_id, "name": "dim", "args": {"level": level}}
            capture.client.publish("%s/command" % base, json.dumps(document), qos=1).wait_for_publish(5)
            capture.wait_for(lambda _: command_state(capture, base, command_id) == "succeeded", timeout=30)
            capture.wait_for(lambda _: levels(capture, node_hex)[-3:] == [level] * 3, timeout=30)

        # 1. Forgeries and a replay on the cable
        dim("first", 40)  # through the gateway, tagged: runs
        recorded = attacker.recorded_commands(key)
        assert [fields["args"] for _, fields in recorded][:1] == [{"level": 40}]
        forged = {"id": 999, "action": "dim", "args": {"level": 3}}
        node_id = bytes.fromhex(node_hex)
        flags = fr.F_DOWNLINK | fr.F_ACK_REQ
        with attacker.lock:
            attacker.inject += [
                encode(Message(messages.COMMAND, node_id, 2**31, forged, flags)),  # no tag: a CRC frame
                encode(Message(messages.COMMAND, node_id, 2**31 + 1, forged, flags | fr.F_AUTH), os.urandom(32)),  # another key
                encode(Message(messages.ACK, node_id, 2**31 + 2, {"counters": list(range(1, 33))}, fr.F_DOWNLINK)),  # a forged ACK
            ]
        dim("second", 70)
        with attacker.lock:
            attacker.inject.append(recorded[0][0])  # the recorded `dim 40`, played again
        time.sleep(3)  # the node reads a level every 300 ms
        assert levels(capture, node_hex)[-5:] == [70] * 5
        assert 3 not in levels(capture, node_hex)  # the forged dim never ran
        assert command_state(capture, base, "first") == "succeeded"

        # 2. Rotation through the CLI
        done = edgegw("keys", "rotate", "--keys", keys_file, node_hex)
        assert done.returncode == 0, done.stderr
        gateway.wait_for_log("node %s: key rotated" % node_hex, timeout=30)
        entry = Keystore(gateway.data_dir / "keys.json").load().entries[node_hex]
        assert entry.previous == key and entry.key != key
        assert bytes.fromhex((flash / "key").read_text().strip()) == entry.key  # the node has the same new key
        dim("after", 55)  # tagged with the new key
        listed = edgegw("keys", "list", "--keys", keys_file, "--json")
        assert json.loads(listed.stdout)["nodes"][0]["state"] == "active"
        assert key.hex() not in listed.stdout and entry.key.hex() not in listed.stdout

        # 3. Revocation through the CLI
        done = edgegw("keys", "revoke", "--keys", keys_file, node_hex)
        assert done.returncode == 0, done.stderr
        gateway.wait_for_log("keys file read again", timeout=15, after=len(gateway.log()) - 2000)
        time.sleep(1.5)
        stopped_at = len(levels(capture, node_hex))
        time.sleep(3)  # the node goes on sending: nothing of it is acknowledged or published now
        assert len(levels(capture, node_hex)) == stopped_at
        assert emulator.nodes[0].exited() is None
        for secret in (key, entry.key):
            assert secret.hex() not in gateway.log() and secret.hex() not in "\n".join(emulator.nodes[0].log)
    finally:
        gateway.close()
        emulator.stop()
