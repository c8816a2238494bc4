"""Issue 14 against the real `edgegw run` (a real mosquitto, real ptys): replays across a kill -9, 100,000
random forgeries, a keys file others can read. The real firmware is attacked in tests/test_firmware_auth.py
and, behind the real gateway, in test_a_forged_dim_never_reaches_a_street_light below."""

from __future__ import annotations

import os
import pathlib
import random
import re
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from gateway.keystore import Keystore
from hil.broker import Mosquitto
from hil.capture import MqttCapture
from hil.gateway import GatewayProcess
from hil.scripted_node import ScriptedNode
from hil.serial_pair import PtyCable
from protocols import cbor, cobs, messages
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
    assert journal.stat().st_size >= 21 * 12  # every counter acknowledged, written before its ACK

    gateway.kill()  # no stop, no fold: the windows in the store are older than these frames
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
    time.sleep(10.5)  # the port's error line is written at most every 10 s; one more frame writes the totals
    cables[0].write(b"\x00" + cobs.encode(struct.pack(">BBB8sI", 0x11, 2, 0x82, NODE, 1) + b"\xa0" + bytes(8), True))
    gateway.wait_for_log("totals {", after=gateway.log_mark)
    deadline = time.monotonic() + 15
    totals = None
    while time.monotonic() < deadline:
        found = re.findall(r"totals \{'auth': (\d+)", gateway.log())
        if found and int(found[-1]) >= 100_001:
            totals = int(found[-1])
            break
        time.sleep(0.2)
    assert totals == 100_001, "every forgery counted as auth: %s" % totals
    assert not (node.acked & forged_counters), "0 forgeries acknowledged"
    assert sorted(counters_received(capture)) == [7000, 7001]  # 0 forgeries published
    assert 99_999 not in counters_received(capture)
    grown = rss_kb(gateway.process.pid) - rss_before
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
