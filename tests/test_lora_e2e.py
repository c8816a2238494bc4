"""Issue 15 end to end: battery nodes on the air, a bridge on the gateway's serial line, the real gateway and a
real mosquitto. Every node and bridge is the real firmware on the MicroPython VM, its SX1276 driver talking to an
emulated chip whose antenna is the emulated medium (hil/air.py); the only fake is the air."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import pytest

from gateway.keystore import Keystore
from hil.broker import Mosquitto
from hil.capture import MqttCapture
from hil.gateway import GatewayProcess
from hil.radio_rig import RadioRig
from protocols.dutycycle import BANDS, band
from tests import test_gateway
from tests.test_security_e2e import command_state

pytestmark = [pytest.mark.micropython, pytest.mark.processes]
broker, capture = test_gateway.broker, test_gateway.capture


@pytest.fixture
def rig(tmp_path: pathlib.Path) -> Iterator[RadioRig]:
    # A sample round every 15 s: at SF7 and 1 % a node sends a frame every 10-25 s (its time-off), each
    # carrying up to 9 samples; faster rounds would pile up samples no duty cycle lets out.
    made = RadioRig(tmp_path / "nodes", interval=15, status_interval=40)
    yield made
    made.stop()


def status_of(capture: MqttCapture, node_hex: str) -> dict:
    found = [json.loads(m.payload) for m in capture.snapshot() if m.topic.endswith("/nodes/%s/status" % node_hex) and m.payload]
    return found[-1] if found else {}


def kept_duty_cycle(rig: RadioRig) -> list[str]:
    """Every transmission that started before its sub-band's time-off after the sender's previous one ended."""
    broken = []
    last: dict[tuple[str, int], tuple[float, float]] = {}
    for t in sorted(rig.air.transmissions, key=lambda t: t.start):
        index = band(t.channel)
        previous = last.get((t.sender, index))
        # The air stamps a start when it reads the line: 50 ms of slack for two processes' scheduling
        if previous is not None and t.start < previous[0] + previous[1] * 100000 / BANDS[index][2] - 0.05:
            broken.append("%s at %.2f, %.2f s after a frame of %.3f s" % (t.sender, t.start, t.start - previous[0], previous[1]))
        last[(t.sender, index)] = (t.start, t.airtime)
    return broken


def test_battery_nodes_behind_a_bridge_are_answered_over_the_air(
    rig: RadioRig, tmp_path: pathlib.Path, broker: Mosquitto, capture: MqttCapture
) -> None:
    bridge = rig.bridge(0, 0)
    sensors = [rig.radio(200 + 150 * i, 50 * i) for i in range(2)]
    light = rig.radio(-400, 100, role="streetlight")
    rig.start()
    gateway = GatewayProcess(tmp_path / "gw", broker.port, rig.bridge_ports)
    for node_hex, key in rig.keys().items():
        Keystore(gateway.data_dir / "keys.json").add(node_hex, key)
    gateway.start()
    try:
        for placed in [*sensors, light]:  # heard through the bridge, their HELLO taken
            capture.wait_for(lambda _, hex=placed.node_hex: status_of(capture, hex), timeout=60)

        # A command to a street light over the air: it goes in one of the light's receive windows
        base = "edgegw/gw-test/nodes/%s" % light.node_hex
        document = {"id": "dim-1", "name": "dim", "args": {"level": 30}}
        capture.client.publish("%s/command" % base, json.dumps(document), qos=1).wait_for_publish(5)

        # Readings of every sensor, each sample once and none missing (the `counter` channel numbers them)
        for placed in sensors:
            try:
                capture.wait_for(lambda _, hex=placed.node_hex: len(test_gateway.counters_received(capture, hex)) >= 3, timeout=150)
            except AssertionError:
                print(placed.name, test_gateway.counters_received(capture, placed.node_hex), placed.node.log)
                print([(round(t.start, 1), t.sender, t.length) for t in rig.air.transmissions])
                print(rig.air.received)
                raise
            numbers = test_gateway.counters_received(capture, placed.node_hex)
            assert len(numbers) == len(set(numbers)), "a sample published twice"
            assert sorted(numbers) == list(range(min(numbers), max(numbers) + 1)), "a sample lost"
            capture.wait_for(lambda _, hex=placed.node_hex: "radio" in status_of(capture, hex), timeout=40)
            status = status_of(capture, placed.node_hex)
            assert status["radio"]["bridge"] == bridge.node_hex and status["radio"]["sf"] == 7
            assert status["radio"]["rssi"] < -60 and 0 < status["radio"]["pdr"] <= 1

        capture.wait_for(lambda _: command_state(capture, base, "dim-1") == "succeeded", timeout=120)

        # Answered over the air: each node received downlink frames from the bridge, within the duty cycle
        received = rig.air.received
        for placed in [*sensors, light]:
            assert received[(bridge.name, placed.name)] >= 2, received
        assert kept_duty_cycle(rig) == []
        capture.wait_for(lambda _: "air" in status_of(capture, bridge.node_hex), timeout=40)
        air = status_of(capture, bridge.node_hex)["air"]
        assert air["tx"] >= 4 and air["relayed"] >= 4 and 0 < air["budget_ms"] <= 360000
        assert status_of(capture, bridge.node_hex)["downlink"]["sent"] >= 4
        assert rig.air.malformed == 0
    finally:
        gateway.close()
