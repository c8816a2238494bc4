"""Events end to end (issue 13, bullet 4): the real `edgegw run`, a real mosquitto, a scripted node on a real pty
sending READINGS with PRIORITY (what firmware node.event() sends), and a subscriber with a persistent session
that sees what the gateway published in the order it published it."""

from __future__ import annotations

import json
import pathlib

import pytest

from hil.capture import MqttCapture
from hil.scripted_node import ScriptedNode
from hil.serial_pair import PtyCable
from protocols import frame as fr
from protocols import messages
from tests.test_gateway import counters_received
from tests.test_gateway_buffer import NODE, PER_FRAME, Started, bulky, cable, send_flow, start_with_broker_down, started

__all__ = ["cable", "started"]  # fixtures, used by name
pytestmark = pytest.mark.processes

EVENT_BASE = 100_000  # events carry counter values from here: told apart from the readings' at a glance


def send_event(node: ScriptedNode, number: int) -> int:
    """An alarm, as firmware node.event() sends it: READINGS with PRIORITY, sent at once."""
    return node.send(messages.READINGS, {"samples": [1, EVENT_BASE + number, 0]}, flags=fr.F_ACK_REQ | fr.F_PRIORITY)


def events_received(capture: MqttCapture) -> list[int]:
    return [
        int(r["value"]) - EVENT_BASE for topic, r in capture.readings("/events") if NODE.hex() in topic and r["name"].endswith(":counter")
    ]


def senml_topics(capture: MqttCapture) -> list[str]:
    """The last level (readings or events) of every SenML message, in the order they arrived."""
    return [m.topic.rsplit("/", 1)[1] for m in capture.snapshot() if m.topic.endswith(("/readings", "/events"))]


def test_events_buffered_in_an_outage_reach_the_subscriber_ahead_of_the_older_backlog(
    tmp_path: pathlib.Path, cable: PtyCable, started: list[Started]
) -> None:
    broker, gateway, node, capture = start_with_broker_down(tmp_path, cable, "drop_oldest", started, max_bytes=10**8)
    send_flow(node, range(1, 1501))  # 45,000 readings buffered while the broker is away
    first = send_event(node, 1)
    send_flow(node, range(1501, 1601))
    last = [send_event(node, number) for number in (2, 3)][-1]
    node.wait_acked(set(range(2, last + 1)), timeout=60)  # ACKed once committed: durable before the broker is back
    broker.start()
    capture.wait_for(lambda msgs: 1600 in counters_received(capture, NODE.hex()), timeout=90)
    assert events_received(capture) == [1, 2, 3], "every event, once, in the node's order"
    topics = senml_topics(capture)
    assert topics[:1] == ["events"] and topics.index("readings") > max(i for i, kind in enumerate(topics) if kind == "events"), (
        "the events went out before any of the backlog, the older readings included: %s" % topics[:8]
    )
    assert set(range(1, 1601)) <= set(counters_received(capture, NODE.hex())), "the backlog drained behind them, whole"
    statuses = [json.loads(m.payload) for m in capture.snapshot() if m.topic == "edgegw/gw-test/status"]
    assert any(status.get("buffered_events") == 3 for status in statuses), "the status at the reconnect counts the events buffered"
    assert first < last
    capture.close()
    assert gateway.stop() == 0


def test_with_the_buffer_full_under_drop_oldest_every_event_is_delivered(
    tmp_path: pathlib.Path, cable: PtyCable, started: list[Started]
) -> None:
    broker, gateway, node, capture = start_with_broker_down(tmp_path, cable, "drop_oldest", started)
    for number in range(1, 21):  # an event among every 200 bulky frames: 4,000 frames, far past the budget
        send_flow(node, range(200 * (number - 1) + 1, 200 * number + 1))
        send_event(node, number)
    node.wait_acked(set(range(2, node.counter)), timeout=90)
    gateway.wait_for_log("dropping the oldest buffered readings")
    broker.start()
    capture.wait_for(lambda msgs: 4000 in counters_received(capture, NODE.hex()), timeout=90)
    gateway.wait_for_log("buffer has room again")
    received = set(counters_received(capture, NODE.hex()))
    assert 1 not in received, "ordinary readings were dropped to make room"
    assert events_received(capture) == list(range(1, 21)), "not one event dropped, and in order"
    dropped = int(gateway.log().split("buffer has room again; ")[1].split(" readings")[0])
    assert dropped == PER_FRAME * (min(received) - 1), "counted as before: the oldest readings, no event among them"
    assert "dropping the oldest buffered events" not in gateway.log() and "event frames among them" not in gateway.log()
    capture.close()
    assert gateway.stop() == 0


def test_events_acknowledged_before_a_kill_9_are_published_after_the_restart(
    tmp_path: pathlib.Path, cable: PtyCable, started: list[Started]
) -> None:
    broker, gateway, node, capture = start_with_broker_down(tmp_path, cable, "drop_oldest", started)
    send_flow(node, range(1, 101))
    last = [send_event(node, number) for number in range(1, 6)][-1]
    node.wait_acked(set(range(2, last + 1)), timeout=30)
    gateway.kill()  # SIGKILL: no stop, no fold, no checkpoint
    gateway.start()
    gateway.wait_for_log("ttyNODE0: open", after=gateway.log_mark)
    broker.start()
    capture.wait_for(lambda msgs: len(events_received(capture)) >= 5 and 100 in counters_received(capture, NODE.hex()), timeout=60)
    assert events_received(capture) == [1, 2, 3, 4, 5]
    assert senml_topics(capture)[0] == "events"
    samples: list[int | float] = [*bulky(101)]
    node.readings(samples)  # the restarted gateway goes on taking readings: the node's window survived
    event = send_event(node, 6)
    node.wait_acked([event], timeout=30)
    capture.wait_for(lambda msgs: events_received(capture)[-1:] == [6], timeout=30)
    assert events_received(capture) == [1, 2, 3, 4, 5, 6]
    capture.close()
    assert gateway.stop() == 0
