"""Per-node downlink counters end to end: the real `edgegw run` over real ptys, killed with SIGKILL.

Each node records the counter of every frame the gateway sends it; after each kill -9 and start, every
new one is above every one before (SPEC.md §4.1: a node's window takes a lower one as a repeat), and a
counter that comes again belongs to the same request resent (the command life cycle keeps a request's
counter across kill -9). One node also says our counters are stale (as after a lost database): its counters
move to the next 2^24 boundary, the request is sent again above it, and they stay above it across the kills.
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


def downlink_counters(node: ScriptedNode, sent: dict[int, tuple[int, object]], frames: int = 3) -> list[int]:
    """Send STATUS frames and return the counters of the new frames the gateway sent the node meanwhile. A request
    (COMMAND, CONFIG set) is resent with its own counter (the command life cycle keeps it across kill -9): such a
    counter may come again, with the very same frame only. sent: counter -> the frame that had it, this node's."""
    node.inbox.clear()
    node.wait_acked([node.send(messages.STATUS, {"uptime": index}) for index in range(frames)])
    node.poll(0.2)  # a TIME or REJECT still on its way
    new = []
    for message in node.inbox:
        frame = (message.type, message.fields)
        if sent.setdefault(message.counter, frame) != frame:
            raise AssertionError("node %s: counter %d used for two frames" % (node.node_id.hex(), message.counter))
        if message.type not in (messages.COMMAND, messages.CONFIG):
            new.append(message.counter)
    return sorted(new)


def test_each_nodes_downlink_counters_grow_across_kill_9(gateway: GatewayProcess, capture: MqttCapture, cables: list[PtyCable]) -> None:
    gateway.wait_for_log("ttyNODE1: open")
    gateway.wait_for_log("connected to")
    a, b = ScriptedNode(cables[0], A), ScriptedNode(cables[1], B)
    a.wait_acked([a.hello()])
    b.wait_acked([b.hello()])
    sent: dict[bytes, dict[int, tuple[int, object]]] = {A: {}, B: {}}
    seen = {A: downlink_counters(a, sent[A]), B: downlink_counters(b, sent[B])}
    assert max(seen[A]) < BLOCK and max(seen[B]) < BLOCK, "a fresh gateway: both start at the gateway-wide counter, 0"

    capture.client.publish("edgegw/gw-test/nodes/%s/config/set" % A.hex(), json.dumps({"interval": 30}), qos=1)
    config = a.wait_for(messages.CONFIG)
    stale = {"reason": perr.E_STALE, "detail": "counter behind", "counter": config.counter, "type": messages.CONFIG}
    a.send(messages.REJECT, stale, flags=0)
    gateway.wait_for_log("its downlink counters continue from %d" % STALE_STEP)
    again = a.wait_for(messages.CONFIG)  # the same request renumbered (gateway/commands.py)
    assert again.counter >= STALE_STEP and again.fields == config.fields
    after_jump = downlink_counters(a, sent[A])
    assert min(after_jump) >= STALE_STEP, "never below the boundary, once its reservation is on disk"
    seen[A] += after_jump

    restarted = []
    for _round in range(2):
        gateway.kill()
        gateway.start()
        gateway.wait_for_log("ttyNODE1: open", after=gateway.log_mark)
        for node in (a, b):  # no HELLO: the sessions are restored from the database
            now = downlink_counters(node, sent[node.node_id])
            assert now and min(now) > max(seen[node.node_id]), "node %s: %s after %s" % (node.node_id.hex(), now, seen[node.node_id])
            seen[node.node_id] += now
            restarted += now if node is a else []
    assert min(restarted) >= STALE_STEP + BLOCK, "the jump's block was on disk: the restarts continue above it"
    assert "Traceback" not in gateway.log()
