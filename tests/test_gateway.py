"""The gateway as a process: pty in, real mosquitto out."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sqlite3
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hil.broker import Mosquitto
from hil.capture import MqttCapture, decode_senml
from hil.gateway import GatewayProcess
from hil.scripted_node import ScriptedNode
from hil.serial_pair import PtyCable
from protocols import messages

NODE_A = bytes.fromhex("0000a4cf12b3c4d5")
NODE_B = bytes.fromhex("e66038b7134f2a21")


@pytest.fixture
def broker(hil_broker: Mosquitto) -> Mosquitto:
    return hil_broker  # the HIL plugin's: a real mosquitto on a free loopback port


@pytest.fixture
def capture(hil_capture: MqttCapture) -> MqttCapture:
    return hil_capture


@pytest.fixture
def cables(tmp_path: pathlib.Path) -> Iterator[list[PtyCable]]:
    made = [PtyCable(tmp_path / ("ttyNODE%d" % i)) for i in range(2)]
    yield made
    for cable in made:
        cable.close()


@pytest.fixture
def gateway(tmp_path: pathlib.Path, broker: Mosquitto) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path / "gw", broker.port, [str(tmp_path / "ttyNODE*")])
    process.start()
    yield process
    process.close()


def counters_received(capture: MqttCapture, node_hex: str) -> list[int]:
    return [int(r["value"]) for topic, r in capture.readings() if node_hex in topic and r["name"].endswith(":counter")]


def test_frames_become_senml_on_the_right_topics(gateway: GatewayProcess, capture: MqttCapture, cables: list[PtyCable]) -> None:
    gateway.wait_for_log("ttyNODE1: open")
    node = ScriptedNode(cables[0], NODE_A)
    hello = node.hello()
    node.wait_acked([hello])
    time_message = node.wait_for(messages.TIME)
    assert abs(time_message.fields["unix"] - time.time()) < 5
    sent = [node.readings([0, 2137 + i, 0, 1, i + 1, 0], base_time=1795000000 + 10 * i) for i in range(5)]
    node.wait_acked(sent)

    capture.wait_for(lambda msgs: len(counters_received(capture, "0000a4cf12b3c4d5")) >= 5)
    readings = [m for m in capture.snapshot() if m.topic.endswith("/readings")]
    assert {m.topic for m in readings} == {"edgegw/gw-test/nodes/0000a4cf12b3c4d5/readings"}
    assert readings[0].properties.ContentType == "application/senml+cbor"
    first = decode_senml(readings[0].payload)
    # Grouped by channel, channels without a unit first (a base unit applies to every later record);
    # a decimal travels as the single-precision float that rounds back to it.
    assert first[0] == {"name": "urn:dev:edgegw:0000a4cf12b3c4d5:counter", "unit": None, "value": 1, "time": 1795000000}
    temperature = next(r for r in first if r["name"].endswith(":temperature"))
    assert (temperature["unit"], round(temperature["value"], 2), temperature["time"]) == ("Cel", 21.37, 1795000000)
    assert temperature["value"] == struct.unpack(">f", struct.pack(">f", 21.37))[0]
    assert counters_received(capture, "0000a4cf12b3c4d5") == [1, 2, 3, 4, 5]

    status = capture.wait_for(lambda msgs: any(m.topic.endswith("/nodes/0000a4cf12b3c4d5/status") for m in msgs))
    node_status = json.loads(next(m for m in status if m.topic.endswith("/nodes/0000a4cf12b3c4d5/status")).payload)
    assert node_status["fw_version"] == "test-1" and node_status["node_id"] == "0000a4cf12b3c4d5"
    gateway_status = [json.loads(m.payload) for m in capture.snapshot() if m.topic == "edgegw/gw-test/status"]
    assert gateway_status[-1]["state"] == "online" and gateway_status[-1]["version"]

    assert gateway.stop() == 0
    offline = capture.wait_for(
        lambda msgs: json.loads(msgs[-1].payload).get("state") == "offline" if msgs[-1].topic.endswith("gw-test/status") else False
    )
    assert offline


def send_flow(node: ScriptedNode, values: range, poll_every: int = 25) -> list[int]:
    """One READINGS frame per value (temperature + counter), polling ACKs as we go."""
    counters = []
    for index, value in enumerate(values):
        counters.append(node.readings([0, 2000 + value % 500, 0, 1, value, 0]))
        if index % poll_every == 0:
            node.poll(0)
    return counters


def test_broker_outage_loses_nothing(gateway: GatewayProcess, broker: Mosquitto, capture: MqttCapture, cables: list[PtyCable]) -> None:
    gateway.wait_for_log("ttyNODE0: open")
    node = ScriptedNode(cables[0], NODE_A)
    node.wait_acked([node.hello()])
    gateway.wait_for_log("connected to")
    broker.stop()
    gateway.wait_for_log("disconnected from the broker")
    backlog = 3000
    node.wait_acked(send_flow(node, range(1, backlog + 1)), timeout=60)  # acknowledged = on disk
    assert counters_received(capture, "0000a4cf12b3c4d5") == []
    gateway.wait_for_log("cannot reach the broker")  # it keeps trying while down
    broker.start()
    capture.wait_for(lambda msgs: any(m.topic.endswith("/readings") for m in msgs), timeout=30)
    live = node.readings([0, 1, 0, 1, 999_999, 0])
    node.wait_acked([live])
    capture.wait_for(lambda msgs: set(range(1, backlog + 1)) | {999_999} <= set(counters_received(capture, "0000a4cf12b3c4d5")), timeout=60)
    # 3,000 frames leave in a dozen packs at once; that live data overtakes a long backlog is
    # tests/test_forwarder.py's to show, where the backlog can be held up.
    assert len(counters_received(capture, "0000a4cf12b3c4d5")) == backlog + 1, "published once each"


def test_sigkill_during_a_flow_loses_no_acknowledged_reading(
    tmp_path: pathlib.Path, broker: Mosquitto, capture: MqttCapture, cables: list[PtyCable]
) -> None:
    gateway = GatewayProcess(tmp_path / "gw", broker.port, [str(tmp_path / "ttyNODE*")])
    node = ScriptedNode(cables[0], NODE_A)
    value = 1
    try:
        for _round in range(3):
            gateway.start()
            gateway.wait_for_log("ttyNODE0: open", after=gateway.log_mark)
            node.hello()
            node.resend_unacked()
            for _ in range(40):
                send_flow(node, range(value, value + 20))
                value += 20
                node.poll(0.01)
            gateway.kill()  # mid-flow: some frames PUBACKed, some held for the broker or on their way to disk, some unread
        gateway.start()
        deadline = time.monotonic() + 60
        while node.unacked and time.monotonic() < deadline:
            node.resend_unacked()
            node.poll(0.5)
        assert not node.unacked, "frames never acknowledged: %d" % len(node.unacked)
        capture.wait_for(lambda msgs: set(range(1, value)) <= set(counters_received(capture, "0000a4cf12b3c4d5")), timeout=60)
    finally:
        gateway.close()


def test_malformed_input_is_counted_and_the_port_keeps_working(
    gateway: GatewayProcess, capture: MqttCapture, cables: list[PtyCable]
) -> None:
    gateway.wait_for_log("ttyNODE0: open")
    cable = cables[0]
    node = ScriptedNode(cable, NODE_A)
    unknown = node.readings([0, 1, 0])
    assert node.wait_for(messages.REJECT).fields["reason"] == 12  # unknown_node: HELLO first
    assert unknown not in node.acked
    node.wait_acked([node.hello()])
    cable.write(b"\x00" + bytes(range(1, 200)) * 4)  # oversize run of non-zero bytes
    cable.write(b"\x00\x13\x37garbage\x00")
    good = node.readings([0, 2100, 0, 1, 1, 0])
    wire = bytearray(node.unacked[good])
    wire[20] ^= 0x10  # corrupt a copy on the line
    cable.write(b"\x00" + bytes(wire))
    node.wait_acked([good])
    bad_channel = node.readings([5, 1, 0])
    reject = node.wait_for(messages.REJECT)
    assert reject.fields["counter"] == bad_channel and reject.fields["reason"] == 9
    gateway.wait_for_log("bad frame")
    capture.wait_for(lambda msgs: counters_received(capture, "0000a4cf12b3c4d5") == [1])
    assert gateway.process is not None and gateway.process.poll() is None


def test_duplicates_are_suppressed_across_restarts_and_counter_resets_need_hello(
    gateway: GatewayProcess, capture: MqttCapture, cables: list[PtyCable]
) -> None:
    gateway.wait_for_log("ttyNODE0: open")
    node = ScriptedNode(cables[0], NODE_A, counter=1000)
    node.wait_acked([node.hello()])
    first = node.readings([1, 1, 0])
    node.wait_acked([first])
    duplicate_wire = encode_again(node, first)
    capture.wait_for(lambda msgs: counters_received(capture, "0000a4cf12b3c4d5") == [1])
    assert gateway.stop() == 0
    gateway.start()
    gateway.wait_for_log("ttyNODE0: open", after=gateway.log_mark)
    node.acked.clear()
    node.cable.write(b"\x00" + duplicate_wire)
    node.wait_acked([first])  # acknowledged again: the first ACK may have been lost
    second = node.readings([1, 2, 0])
    node.wait_acked([second])
    capture.wait_for(lambda msgs: 2 in counters_received(capture, "0000a4cf12b3c4d5"))
    assert counters_received(capture, "0000a4cf12b3c4d5") == [1, 2]

    reset = ScriptedNode(node.cable, NODE_A, counter=3)  # the node lost its counter file
    behind = reset.readings([1, 3, 0])
    assert reset.wait_for(messages.REJECT).fields["reason"] == 11  # stale
    assert behind not in reset.acked
    reset.wait_acked([reset.hello()])
    reset.wait_acked([reset.readings([1, 4, 0])])
    capture.wait_for(lambda msgs: 4 in counters_received(capture, "0000a4cf12b3c4d5"))
    assert "counter went backwards" in gateway.log() and "counter reset" in gateway.log()


def encode_again(node: ScriptedNode, counter: int) -> bytes:
    from protocols import Message, encode
    from protocols import frame as fr

    return encode(Message(messages.READINGS, node.node_id, counter, {"samples": [1, 1, 0]}, fr.F_ACK_REQ | fr.F_RETRY))


def test_port_vanishing_and_a_new_device_appearing(
    gateway: GatewayProcess, capture: MqttCapture, cables: list[PtyCable], tmp_path: pathlib.Path
) -> None:
    gateway.wait_for_log("ttyNODE0: open")
    node = ScriptedNode(cables[0], NODE_A)
    node.wait_acked([node.hello()])
    cables[0].unplug()
    gateway.wait_for_log("ttyNODE0: port lost")
    late = PtyCable(tmp_path / "ttyNODE7")  # hotplug: matches the glob, appears while running
    try:
        gateway.wait_for_log("ttyNODE7: open")
        other = ScriptedNode(late, NODE_B)
        other.wait_acked([other.hello()])
        other.wait_acked([other.readings([1, 1, 0])])
        cables[0].plug()
        gateway.wait_for_log("ttyNODE0: open", after=gateway.log().index("ttyNODE0: port lost"))
        node.decoder = type(node.decoder)()
        node.wait_acked([node.readings([1, 1, 0])])
        capture.wait_for(
            lambda msgs: counters_received(capture, "0000a4cf12b3c4d5") == [1] and counters_received(capture, "e66038b7134f2a21") == [1]
        )
    finally:
        late.close()


def test_status_config_and_last_will(gateway: GatewayProcess, broker: Mosquitto, capture: MqttCapture, cables: list[PtyCable]) -> None:
    gateway.wait_for_log("ttyNODE0: open")
    gateway.wait_for_log("connected to")
    node = ScriptedNode(cables[0], NODE_A)
    node.wait_acked([node.hello()])
    node.send(messages.STATUS, {"uptime": 3600, "battery_mv": 3712, "rssi": -71, "reset_cause": 3})

    def node_status(msgs: list) -> dict | None:
        found = [json.loads(m.payload) for m in msgs if m.topic == "edgegw/gw-test/nodes/0000a4cf12b3c4d5/status"]
        return found[-1] if found and "battery_mv" in found[-1] else None

    capture.wait_for(lambda msgs: node_status(msgs) is not None)
    status = node_status(capture.snapshot())
    assert status is not None
    assert (status["battery_mv"], status["rssi"], status["reset_cause"], status["fw_version"]) == (3712, -71, 3, "test-1")

    capture.client.publish("edgegw/gw-test/nodes/0000a4cf12b3c4d5/config/set", json.dumps({"interval": 30}), qos=1)
    config = node.wait_for(messages.CONFIG)
    # SPEC 1.1: a tracked CONFIG set carries its request id (key 4), which the node's report echoes
    assert {k: v for k, v in config.fields.items() if k != "id"} == {"op": messages.CONFIG_SET, "values": {"interval": 30}}
    assert isinstance(config.fields["id"], int) and config.fields["id"] >= 1
    node.send(messages.CONFIG, {"op": messages.CONFIG_REPORT, "values": {"interval": 30}})
    capture.wait_for(
        lambda msgs: any(
            json.loads(m.payload).get("config") == {"interval": 30} for m in msgs if m.topic.endswith("0000a4cf12b3c4d5/status")
        )
    )

    gateway.kill()  # no clean goodbye: the broker publishes the last will
    capture.wait_for(lambda msgs: [json.loads(m.payload)["state"] for m in msgs if m.topic == "edgegw/gw-test/status"][-1:] == ["offline"])


# ------------------------------------------------------------ ACK on PUBACK (issue 12)
# With the broker answering, readings are acknowledged once the broker has them and the buffer
# never holds a chunk; with the broker frozen (SIGSTOP: connected, silent), they are committed
# after [buffer] broker_ack_wait and acknowledged from disk.


def chunks_buffered(gateway: GatewayProcess) -> int:
    db = sqlite3.connect("file:%s?mode=ro" % (gateway.data_dir / "buffer.sqlite3"), uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])
    finally:
        db.close()


def acknowledged_counts(broker: Mosquitto, capture: MqttCapture, by_broker: int, total: int = 0) -> tuple[int, int, int]:
    """(acked_by_broker, acked_on_disk, missed_broker_ack_wait) from the status document the gateway sends on
    connecting, once it counts `by_broker` (with `total`: once both count `total` frames together); the broker is
    restarted for it: the document is refreshed each minute."""
    broker.restart()

    def documents(msgs: list[Any]) -> list[Any]:
        return [json.loads(m.payload) for m in msgs if m.topic == "edgegw/gw-test/status"]

    def counted(document: dict[str, Any]) -> bool:
        if total:
            return bool(document.get("acked_by_broker", 0) + document.get("acked_on_disk", 0) == total)
        return bool(document.get("acked_by_broker") == by_broker)

    capture.wait_for(lambda msgs: any(counted(d) for d in documents(msgs)), timeout=30)
    status = [d for d in documents(capture.snapshot()) if counted(d)][-1]
    return status["acked_by_broker"], status["acked_on_disk"], status["missed_broker_ack_wait"]


def test_with_the_broker_answering_readings_are_acked_on_puback_and_never_written(
    gateway: GatewayProcess, broker: Mosquitto, capture: MqttCapture, cables: list[PtyCable]
) -> None:
    gateway.wait_for_log("ttyNODE0: open")
    node = ScriptedNode(cables[0], NODE_A, counter=100)
    node.wait_acked([node.hello()])
    gateway.wait_for_log("connected to")
    node.wait_acked(send_flow(node, range(1, 300)), timeout=60)
    last = node.readings([1, 300, 0])
    resend = bytes(node.unacked[last])  # the wire bytes, as the node would send them again
    node.wait_acked([last])
    capture.wait_for(lambda msgs: set(range(1, 301)) <= set(counters_received(capture, "0000a4cf12b3c4d5")), timeout=30)
    assert sorted(counters_received(capture, "0000a4cf12b3c4d5")) == list(range(1, 301)), "each published once"
    assert "did not acknowledge readings within" not in gateway.log()
    assert acknowledged_counts(broker, capture, 300) == (300, 0, 0), "no reading went through the disk"
    assert chunks_buffered(gateway) == 0

    # The broker's restart above may deliver 300 to the subscriber once more (QoS 1 is at least once to the
    # subscriber too: a PUBACK of the capture's the broker had not read when it stopped); what counts here is
    # that the gateway publishes no new copy of it.
    published_300 = counters_received(capture, "0000a4cf12b3c4d5").count(300)
    assert gateway.stop() == 0  # the windows the PUBACKs moved are written at the stop
    gateway.start()
    gateway.wait_for_log("ttyNODE0: open", after=gateway.log_mark)
    node.acked.clear()
    node.cable.write(b"\x00" + resend)  # the first ACK was lost on the line: a duplicate, after the restart too
    node.wait_acked([last])
    node.wait_acked([node.readings([1, 301, 0])])
    capture.wait_for(lambda msgs: 301 in counters_received(capture, "0000a4cf12b3c4d5"))
    assert counters_received(capture, "0000a4cf12b3c4d5").count(300) == published_300, "the duplicate was not published again"


def test_with_the_broker_frozen_readings_go_to_disk_after_the_deadline_and_are_acked(
    gateway: GatewayProcess, broker: Mosquitto, capture: MqttCapture, cables: list[PtyCable]
) -> None:
    gateway.wait_for_log("ttyNODE0: open")
    node = ScriptedNode(cables[0], NODE_A)
    node.wait_acked([node.hello()])
    gateway.wait_for_log("connected to")
    node.wait_acked([node.readings([1, 1, 0])])
    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGSTOP)  # connected, answering nothing (keepalive 30 s: not noticed yet)
    try:
        node.wait_acked(send_flow(node, range(2, 52)), timeout=15)  # acknowledged = committed
        assert chunks_buffered(gateway) >= 1
        gateway.wait_for_log("did not acknowledge readings within 1 s")
        assert gateway.log().count("did not acknowledge readings within") == 1, "one line an episode, not one a frame"
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
    thawed = time.monotonic()
    capture.wait_for(lambda msgs: set(range(1, 52)) <= set(counters_received(capture, "0000a4cf12b3c4d5")), timeout=30)
    # Broker first again only once it has answered well within broker_ack_wait for 10 s (router.RECOVER_S): the
    # frames sent until then go to disk, and their packs are what it is timed on.
    value, deadline = 52, time.monotonic() + 60
    while "the broker answers in time again" not in gateway.log():
        assert time.monotonic() < deadline, "the gateway did not go back to the broker path"
        node.wait_acked([node.readings([1, value, 0])])
        value += 1
        time.sleep(0.5)
    assert time.monotonic() - thawed >= 10, "back on the broker path before it answered quickly for 10 s"
    node.wait_acked([node.readings([1, value, 0])])  # back on the broker path
    capture.wait_for(lambda msgs: value in counters_received(capture, "0000a4cf12b3c4d5"))
    by_broker, on_disk, missed = acknowledged_counts(broker, capture, 0, total=value)
    # 1 and the last on PUBACK; the others on disk, but for the one sent as the episode ended (the line comes at a PUBACK).
    assert 2 <= by_broker <= 3 and on_disk == value - by_broker, (by_broker, on_disk)
    assert 1 <= missed <= 50
