"""Per-node downlink counters end to end: the real `edgegw run` over real ptys, killed with SIGKILL.

Each node records the counter of every frame the gateway sends it; after each kill -9 and start, every
new one is above every one before (SPEC.md §4.1: a node's window takes a lower one as a repeat). One node
also says our counters are stale (as after a lost database): its counters move to the next 2^24 boundary,
and stay above it across the kills.
"""

from __future__ import annotations

import json

from gateway.counters import BLOCK, STALE_STEP
from hil.capture import MqttCapture
from hil.gateway import GatewayProcess
from hil.scripted_node import ScriptedNode
from hil.serial_pair import PtyCable
from protocols import errors as perr
from protocols import messages
from tests import test_gateway

# The gateway, its broker, its capture and its two ptys, as tests/test_gateway.py makes them.
broker, capture, cables, gateway = test_gateway.broker, test_gateway.capture, test_gateway.cables, test_gateway.gateway

A, B = test_gateway.NODE_A, test_gateway.NODE_B


def downlink_counters(node: ScriptedNode, frames: int = 3) -> list[int]:
    """Send STATUS frames and return the counters of everything the gateway sent the node meanwhile."""
    node.inbox.clear()
    node.wait_acked([node.send(messages.STATUS, {"uptime": index}) for index in range(frames)])
    node.poll(0.2)  # a TIME or REJECT still on its way
    return sorted(message.counter for message in node.inbox)


def test_each_nodes_downlink_counters_grow_across_kill_9(gateway: GatewayProcess, capture: MqttCapture, cables: list[PtyCable]) -> None:
    gateway.wait_for_log("ttyNODE1: open")
    gateway.wait_for_log("connected to")
    a, b = ScriptedNode(cables[0], A), ScriptedNode(cables[1], B)
    a.wait_acked([a.hello()])
    b.wait_acked([b.hello()])
    seen = {A: downlink_counters(a), B: downlink_counters(b)}
    assert max(seen[A]) < BLOCK and max(seen[B]) < BLOCK, "a fresh gateway: both start at the gateway-wide counter, 0"

    capture.client.publish("edgegw/gw-test/nodes/%s/config/set" % A.hex(), json.dumps({"interval": 30}), qos=1)
    config = a.wait_for(messages.CONFIG)
    stale = {"reason": perr.E_STALE, "detail": "counter behind", "counter": config.counter, "type": messages.CONFIG}
    a.send(messages.REJECT, stale, flags=0)
    gateway.wait_for_log("its downlink counters continue from %d" % STALE_STEP)
    after_jump = downlink_counters(a)
    assert min(after_jump) >= STALE_STEP, "never below the boundary, once its reservation is on disk"
    seen[A] += after_jump

    restarted = []
    for _round in range(2):
        gateway.kill()
        gateway.start()
        gateway.wait_for_log("ttyNODE1: open", after=gateway.log_mark)
        for node in (a, b):  # no HELLO: the sessions are restored from the database
            now = downlink_counters(node)
            assert now and min(now) > max(seen[node.node_id]), "node %s: %s after %s" % (node.node_id.hex(), now, seen[node.node_id])
            seen[node.node_id] += now
            restarted += now if node is a else []
    assert min(restarted) >= STALE_STEP + BLOCK, "the jump's block was on disk: the restarts continue above it"
    assert "Traceback" not in gateway.log()
