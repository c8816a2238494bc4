"""Issue 15, capacity runs' chain end to end, small: 30 light scripted radio nodes (hil/swarm.py) in the air's
thread, one real bridge (the `lora_bridge` firmware on the MicroPython VM), the real gateway with every key and a
real mosquitto (hil/swarm_run.py's chain, which the bench's radio_gateway step runs with up to 2,000 nodes)."""

from __future__ import annotations

import pathlib
from collections import Counter

import pytest

from hil.broker import Mosquitto
from hil.capture import MqttCapture
from hil.swarm_run import Settings, chain
from protocols import messages
from tests import test_gateway
from tests.test_swarm import duty_cycle_breaches

pytestmark = [pytest.mark.micropython, pytest.mark.processes]
broker, capture = test_gateway.broker, test_gateway.capture
NODES = 30
MOST = 20  # nodes whose HELLO is acknowledged, and nodes heard at the broker, before the test looks


def test_scripted_radio_nodes_are_answered_and_published_through_a_real_bridge(
    tmp_path: pathlib.Path, broker: Mosquitto, capture: MqttCapture
) -> None:
    # A reading every 20 s (each node's first 20 s after its boot, boots spread over 20 s), resent when not acknowledged.
    # Not every HELLO is answered within a minute or two: an uplink collides, the bridge misses it while it sends a
    # downlink (half duplex), a window closes on another node's downlink heard first (as a radio's single receive
    # does), and a HELLO resent waits 12 s and more for its duty cycle. Most are, in a few rounds.
    with chain(tmp_path, broker.port, Settings(NODES, interval=20.0, retransmit=True)) as c:
        swarm = c.swarm
        capture.wait_for(lambda _: swarm.snapshot()["hellos_acked"] >= MOST, timeout=120)
        ours = {node.node_hex for node in swarm.nodes}  # the bridge publishes a `counter` channel of its own
        published = lambda: {node for node, _sample, _at in capture.counter_deliveries() if node in ours}  # noqa: E731
        capture.wait_for(lambda _: len(published()) >= MOST, timeout=90)
        figures = swarm.snapshot()
    assert figures["errors"] == [] and c.rig.air.malformed == 0
    # HELLOs acknowledged over the air, in the nodes' windows, by the bridge's downlinks
    acked = [node for node in swarm.nodes if node.hello_acked_at is not None]
    assert len(acked) >= MOST and figures["received"]["ACK"] >= MOST
    assert all(c.rig.air.received[(c.bridge.name, node.name)] >= 1 for node in acked)
    # Each sample published at most once, and only samples the nodes sent
    deliveries = Counter((node, sample) for node, sample, _at in capture.counter_deliveries() if node in ours)
    assert max(deliveries.values()) == 1, [key for key, count in deliveries.items() if count > 1]
    sent = {(swarm.nodes[s.node].node_hex, s.sample) for s in swarm.sent if s.kind == messages.READINGS}
    assert set(deliveries) <= sent
    # No node broke its duty cycle, the retransmissions and repeated HELLOs included
    assert duty_cycle_breaches(c.rig.air.transmissions, {node.name for node in swarm.nodes}) == []
    assert any(s.attempt for s in swarm.sent)  # something was resent: the check above saw retransmissions
