"""The command life cycle end to end: the real `edgegw run`, a real mosquitto, real ptys, and a scripted node that
executes each COMMAND once per downlink counter (as the firmware deduplicates) and counts what it executed."""

from __future__ import annotations

import json
import pathlib
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from hil.broker import Mosquitto
from hil.capture import MqttCapture
from hil.gateway import GatewayProcess
from hil.scripted_node import CHANNELS, ScriptedNode
from hil.serial_pair import PtyCable
from protocols import frame as fr
from protocols import messages

NODE = bytes.fromhex("0000a4cf12b3c4d5")
BASE = "edgegw/gw-test/nodes/%s" % NODE.hex()
OFFERS = {"dim": "level u0-100! fade_s u0-600", "reboot": "", "sample_now": ""}


class CommandNode(ScriptedNode):
    """Executes a COMMAND or CONFIG set the first time its counter is seen; a repeat is ACKed again and its stored
    result sent again (never executed again), as the node firmware does (DESIGN-13: node side dedupe)."""

    def __init__(self, cable: PtyCable) -> None:
        super().__init__(cable, NODE)
        self.executed: Counter[int] = Counter()  # downlink counter -> executions
        self.requests: list[tuple[int, int, dict[str, Any]]] = []  # (type, counter, fields) of every request received
        self.answers: dict[int, tuple[int, dict[str, Any]]] = {}  # downlink counter -> (type, fields) of the answer
        self.mute = 0  # the next requests get neither ACK nor answer (lost on the line, after execution)

    def hello(self, channels: list[dict[str, Any]] | None = None) -> int:
        fields = {"proto": [1, 1], "fw_version": "test-1", "hw_model": "pty", "caps": 0x0F, "channels": CHANNELS, "commands": OFFERS}
        return self.send(messages.HELLO, fields)

    def serve(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self.poll(0.05):
                if message.type == messages.COMMAND or (message.type == messages.CONFIG and message.fields["op"] == messages.CONFIG_SET):
                    self._request(message.type, message.counter, message.fields)

    def _request(self, mtype: int, counter: int, fields: dict[str, Any]) -> None:
        self.requests.append((mtype, counter, fields))
        if counter not in self.answers:
            self.executed[counter] += 1
            if mtype == messages.COMMAND:
                answer = {"id": fields["id"], "outcome": messages.OUTCOME_OK, "value": fields.get("args", {}).get("level", 0)}
                self.answers[counter] = (messages.COMMAND_RESULT, answer)
            else:
                self.answers[counter] = (messages.CONFIG, {"op": messages.CONFIG_REPORT, "values": fields["values"], "id": fields["id"]})
        if self.mute:
            self.mute -= 1
            return
        self.send(messages.ACK, {"counters": [counter]}, flags=0)
        self.send(*self.answers[counter])


def states(capture: MqttCapture, command_id: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in capture.snapshot() if m.topic == "%s/command/%s" % (BASE, command_id) and m.payload]


def serve_until(node: CommandNode, capture: MqttCapture, command_id: str, state: str, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = [s["state"] for s in states(capture, command_id)]
        if state in seen:
            return seen
        node.serve(0.1)
    raise AssertionError("command %s never %s: %s" % (command_id, state, [s["state"] for s in states(capture, command_id)]))


@pytest.fixture
def cable(tmp_path: pathlib.Path) -> Iterator[PtyCable]:
    made = PtyCable(tmp_path / "ttyNODE0")
    yield made
    made.close()


@pytest.fixture
def gateway(tmp_path: pathlib.Path, hil_broker: Mosquitto) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path / "gw", hil_broker.port, [str(tmp_path / "ttyNODE*")])
    process.start()
    yield process
    process.close()


def greeted(gateway: GatewayProcess, cable: PtyCable) -> CommandNode:
    gateway.wait_for_log("ttyNODE0: open", after=gateway.log_mark)
    gateway.wait_for_log("connected to", after=gateway.log_mark)
    node = CommandNode(cable)
    node.wait_acked([node.hello()])
    return node


def info_saved(gateway: GatewayProcess, timeout: float = 10.0) -> None:
    """Wait until the node's info (its offer) is in the database: a gateway killed before knows no node after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db = sqlite3.connect("file:%s?mode=ro" % (gateway.data_dir / "buffer.sqlite3"), uri=True)
        try:
            if db.execute("SELECT COUNT(*) FROM nodes WHERE info LIKE '%commands%'").fetchone()[0]:
                return
        except sqlite3.OperationalError:
            pass  # not created yet
        finally:
            db.close()
        time.sleep(0.05)
    raise AssertionError("node info not saved within %.0f s" % timeout)


def request(capture: MqttCapture, document: dict[str, Any], kind: str = "command") -> None:
    capture.client.publish("%s/%s" % (BASE, kind), json.dumps(document), qos=1).wait_for_publish(5)


def test_a_command_goes_queued_sent_delivered_succeeded(gateway: GatewayProcess, hil_capture: MqttCapture, cable: PtyCable) -> None:
    node = greeted(gateway, cable)
    request(hil_capture, {"id": "dim-1", "name": "dim", "args": {"level": 40, "fade_s": 5}})
    assert serve_until(node, hil_capture, "dim-1", "succeeded") == ["queued", "sent", "delivered", "succeeded"]
    final = states(hil_capture, "dim-1")[-1]
    assert (final["name"], final["attempts"], final["result"], final["error"]) == ("dim", 1, 40, None)
    assert [m.retain for m in hil_capture.snapshot() if m.topic == BASE + "/command/dim-1"] == [False] * 4, "live, not replayed"
    ((mtype, _counter, fields),) = node.requests
    assert (mtype, fields) == (messages.COMMAND, {"id": 1, "action": "dim", "args": {"level": 40, "fade_s": 5}})
    assert list(node.executed.values()) == [1]
    # The same id again: not run twice; its state is published again.
    request(hil_capture, {"id": "dim-1", "name": "dim", "args": {"level": 90}})
    hil_capture.wait_for(lambda _m: len(states(hil_capture, "dim-1")) == 5)
    node.serve(1.0)
    assert states(hil_capture, "dim-1")[-1]["state"] == "succeeded" and len(node.requests) == 1
    assert "Traceback" not in gateway.log()


def test_a_lost_ack_is_resent_under_the_same_counter_and_executed_once(
    gateway: GatewayProcess, hil_capture: MqttCapture, cable: PtyCable
) -> None:
    node = greeted(gateway, cable)
    node.mute = 1  # executed, but its ACK and result are lost
    request(hil_capture, {"id": "lost-ack", "name": "sample_now"})
    seen = serve_until(node, hil_capture, "lost-ack", "succeeded")
    assert seen[:2] == ["queued", "sent"] and seen[-2:] == ["delivered", "succeeded"]
    counters = [counter for _t, counter, _f in node.requests]
    assert len(counters) == 2 and counters[0] == counters[1], "resent under the same counter"
    assert node.executed == Counter({counters[0]: 1}), "executed once"
    assert states(hil_capture, "lost-ack")[-1]["attempts"] == 2


def test_kill_9_between_stored_and_sent_and_between_sent_and_result(
    gateway: GatewayProcess, hil_capture: MqttCapture, cable: PtyCable
) -> None:
    node = greeted(gateway, cable)
    info_saved(gateway)
    # 1. Published while the gateway is dead: the broker keeps it for the gateway's session.
    gateway.kill()
    request(hil_capture, {"id": "while-down", "name": "dim", "args": {"level": 10}})
    gateway.start()
    gateway.wait_for_log("connected to", after=gateway.log_mark)
    hil_capture.wait_for(lambda _m: [s["state"] for s in states(hil_capture, "while-down")] == ["queued"])
    # Stored, not sent: the restarted gateway has not heard the node on a port yet. Killed again there.
    gateway.kill()
    gateway.start()
    gateway.wait_for_log("ttyNODE0: open", after=gateway.log_mark)
    node.mute = 1  # 2. executed, its ACK and result lost; the gateway killed before it resends
    node.send(messages.STATUS, {"uptime": 5})  # heard on its port: the command goes
    deadline = time.monotonic() + 20
    while not node.requests and time.monotonic() < deadline:
        node.serve(0.1)
    assert len(node.requests) == 1
    hil_capture.wait_for(lambda _m: "sent" in [s["state"] for s in states(hil_capture, "while-down")])
    gateway.kill()
    gateway.start()
    gateway.wait_for_log("ttyNODE0: open", after=gateway.log_mark)
    node.send(messages.STATUS, {"uptime": 9})
    serve_until(node, hil_capture, "while-down", "succeeded")
    counters = {counter for _t, counter, _f in node.requests}
    assert len(node.requests) >= 2 and len(counters) == 1, "resent after the restart under the counter stored before the first write"
    assert sum(node.executed.values()) == 1, "executed exactly once"
    assert "Traceback" not in gateway.log()


def test_config_set_round_trip(gateway: GatewayProcess, hil_capture: MqttCapture, cable: PtyCable) -> None:
    node = greeted(gateway, cable)
    request(hil_capture, {"interval": 30}, kind="config/set")
    hil_capture.wait_for(lambda msgs: any(m.topic.startswith(BASE + "/command/gw.") for m in msgs))
    command_id = next(m.topic for m in hil_capture.snapshot() if m.topic.startswith(BASE + "/command/gw.")).rsplit("/", 1)[1]
    assert serve_until(node, hil_capture, command_id, "succeeded")[-1] == "succeeded"
    ((mtype, _counter, fields),) = node.requests
    assert (mtype, fields) == (messages.CONFIG, {"op": messages.CONFIG_SET, "values": {"interval": 30}, "id": 1})
    final = states(hil_capture, command_id)[-1]
    assert (final["name"], final["result"]) == ("config", {"interval": 30})


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_malformed_requests_are_each_rejected_with_a_clear_error(
    tmp_path: pathlib.Path, hil_broker: Mosquitto, hil_capture: MqttCapture, cable: PtyCable, protocol: str
) -> None:
    gateway = GatewayProcess(tmp_path / "gw", hil_broker.port, [str(tmp_path / "ttyNODE*")], protocol=protocol)
    gateway.start()
    try:
        node = greeted(gateway, cable)
        bad: list[tuple[str, bytes, str]] = [
            ("command", b"{", "not JSON"),
            ("command", b"[1]", "not a JSON object"),
            ("command", json.dumps({"id": "a b", "name": "dim"}).encode(), "id must be 1-64"),
            ("command", json.dumps({"id": "b1", "name": "blink"}).encode(), "does not offer 'blink'"),
            ("command", json.dumps({"id": "b2", "name": "dim", "args": {"level": 140}}).encode(), "dim.level 140 is outside 0-100"),
            ("command", json.dumps({"id": "b3", "name": "dim", "args": {}}).encode(), "dim.level is missing"),
            ("command", json.dumps({"id": "b4", "name": "dim", "args": {"level": 1, "x": 2}}).encode(), "dim has no argument 'x'"),
            ("command", json.dumps({"id": "b5", "name": "reboot", "ttl_s": 10**9}).encode(), "ttl_s must be"),
            ("config/set", json.dumps({"name": "x" * 300}).encode(), "does not fit one frame: too_long"),
            ("config/set", b'{"name": "\\ud800"}', "cannot be sent"),
        ]
        for kind, payload, _why in bad:
            hil_capture.client.publish("%s/%s" % (BASE, kind), payload, qos=1).wait_for_publish(5)
        hil_capture.client.publish("edgegw/gw-test/nodes/ffffffffffffffff/command", b'{"id": "u", "name": "reboot"}', qos=1)

        def rejected(msgs: list[Any]) -> list[dict[str, Any]]:
            found = [json.loads(m.payload) for m in msgs if "/command/" in m.topic and m.payload]
            return [s for s in found if s["state"] == "rejected"]

        hil_capture.wait_for(lambda msgs: len(rejected(msgs)) == len(bad) + 1)
        errors = [s["error"] for s in rejected(hil_capture.snapshot())]
        for _kind, _payload, why in bad:
            assert sum(why in error for error in errors) == 1, (why, errors)
        assert any("unknown node ffffffffffffffff" in error for error in errors)
        node.serve(0.5)
        assert node.requests == [] and "Traceback" not in gateway.log()
        request(hil_capture, {"id": "fine", "name": "reboot"})  # and the gateway still works
        serve_until(node, hil_capture, "fine", "succeeded")
    finally:
        gateway.close()


def test_frames_are_downlink_with_ack_requested(gateway: GatewayProcess, hil_capture: MqttCapture, cable: PtyCable) -> None:
    """The node sees each request as a DOWNLINK frame asking for an ACK (it ACKs it and answers it)."""
    node = greeted(gateway, cable)
    request(hil_capture, {"id": "flags", "name": "reboot"})
    deadline = time.monotonic() + 15
    got: list[Any] = []
    while not got and time.monotonic() < deadline:
        got = [m for m in node.poll(0.1) if m.type == messages.COMMAND]
    assert got and got[0].flags & fr.F_DOWNLINK and got[0].flags & fr.F_ACK_REQ
