"""The gateway as a process: pty in, real mosquitto out."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator

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
def broker(tmp_path: pathlib.Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def capture(broker: Mosquitto) -> Iterator[MqttCapture]:
    cap = MqttCapture(broker.host, broker.port, ["edgegw/#"])
    yield cap
    cap.close()


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

    capture.wait_for(lambda msgs: len([m for m in msgs if m.topic.endswith("/readings")]) >= 5)
    readings = [m for m in capture.snapshot() if m.topic.endswith("/readings")]
    assert {m.topic for m in readings} == {"edgegw/gw-test/nodes/0000a4cf12b3c4d5/readings"}
    assert readings[0].properties.ContentType == "application/senml+cbor"
    first = decode_senml(readings[0].payload)
    assert first == [
        {"name": "urn:dev:edgegw:0000a4cf12b3c4d5:temperature", "unit": "Cel", "value": 21.37, "time": 1795000000},
        {"name": "urn:dev:edgegw:0000a4cf12b3c4d5:counter", "unit": None, "value": 1, "time": 1795000000},
    ]
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
