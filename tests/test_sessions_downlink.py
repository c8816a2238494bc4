"""The sessions' side of the downlink: what they tell the command life cycle (DownlinkListener), what they
offer it (take_counter, send_request, view), and a lost serial link travelling up to them.

The real Sessions behind a real Link (bytes in, bytes out), as tests/test_hostile.py drives them; the link
loss over a real pty with the real PortManager.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from gateway.config import SerialConfig
from gateway.counters import STALE_STEP, DownlinkCounters
from gateway.serial_link import PortManager
from gateway.sessions import Sessions
from hil.serial_pair import PtyCable
from protocols import Message, encode, messages
from protocols import errors as perr
from protocols import frame as fr
from tests.test_hostile import HELLO_FIELDS, NODE, Bench, acked, raw_frame

COMMANDS = {"dim": "level u0-100! fade_s u0-600", "reboot": ""}


class Recorder:
    """A DownlinkListener that writes down what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def hello(self, node: str, commands: dict[str, str] | None) -> None:
        self.calls.append(("hello", node, commands))

    def link_changed(self, node: str, port: str | None) -> None:
        self.calls.append(("link_changed", node, port))

    def acked(self, node: str, counters: list[int]) -> None:
        self.calls.append(("acked", node, counters))

    def command_result(self, node: str, result: dict[str, Any]) -> None:
        self.calls.append(("command_result", node, result))

    def config_report(self, node: str, report: dict[str, Any]) -> None:
        self.calls.append(("config_report", node, report))

    def rejected(self, node: str, counter: int, reason: int, detail: str) -> None:
        self.calls.append(("rejected", node, counter, reason, detail))

    def downlink_ready(self, node: str) -> None:
        self.calls.append(("downlink_ready", node))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [call[1:] for call in self.calls if call[0] == kind]


@pytest.fixture
def bench() -> Bench:
    made = Bench()
    counters = DownlinkCounters(1000, 2**40)  # everything reserved: these tests are not about the disk
    made.sessions.counters = counters
    made.link.downlink._next_counter = counters.take
    return made


@pytest.fixture
def recorder(bench: Bench) -> Recorder:
    made = Recorder()
    bench.sessions.listener = made
    return made


def test_hello_says_the_commands_a_node_offers_once_per_new_hello(bench: Bench, recorder: Recorder) -> None:
    assert bench.sessions.view(NODE.hex()) is None, "no session: an unknown node"
    bench.hello(commands=COMMANDS)
    bench.hello(commands=COMMANDS)  # resent (same counter): not a new HELLO
    assert recorder.of("hello") == [(NODE.hex(), COMMANDS)]
    assert recorder.of("link_changed") == [(NODE.hex(), "/dev/ttyTEST")]
    view = bench.sessions.view(NODE.hex())
    assert view is not None and (view.commands, view.port) == (COMMANDS, "/dev/ttyTEST")
    assert "commands" in bench.saved[NODE.hex()], "kept in the node info: known after a restart before any HELLO"
    bench.hello(counter=2)  # a 1.0 node's HELLO: no key 6
    assert recorder.of("hello")[-1] == (NODE.hex(), None)
    assert bench.sessions.view(NODE.hex()).commands is None  # type: ignore[union-attr]


def test_acks_results_reports_and_rejects_of_downlink_frames_reach_the_listener(bench: Bench, recorder: Recorder) -> None:
    bench.hello()
    assert bench.feed(raw_frame(messages.ACK, 2, {0: [1005, 1007]}, flags=0)) == []  # an ACK is not answered
    assert recorder.of("acked") == [(NODE.hex(), [1005, 1007])]
    result = {0: 9, 1: messages.OUTCOME_OK, 2: "dimmed"}
    assert acked(bench.feed(raw_frame(messages.COMMAND_RESULT, 3, result))) == [3]
    assert acked(bench.feed(raw_frame(messages.COMMAND_RESULT, 3, result))) == [3], "a duplicate is acknowledged again"
    assert recorder.of("command_result") == [(NODE.hex(), {"id": 9, "outcome": 0, "detail": "dimmed"})], "and not reported again"
    report = {0: messages.CONFIG_REPORT, 1: {"interval": 30}, 4: 12}
    assert acked(bench.feed(raw_frame(messages.CONFIG, 4, report))) == [4]
    assert recorder.of("config_report") == [(NODE.hex(), {"op": messages.CONFIG_REPORT, "values": {"interval": 30}, "id": 12})]
    assert bench.status_documents()[-1]["config"] == {"interval": 30}, "the status document is the presenter's, as before"
    bench.feed(raw_frame(messages.REJECT, 5, {0: perr.E_SCHEMA, 1: "no such key", 2: 1001, 3: messages.CONFIG}, flags=0))
    bench.feed(raw_frame(messages.REJECT, 6, {0: perr.E_SCHEMA}, flags=0))  # names no counter: logged only
    assert recorder.of("rejected") == [(NODE.hex(), 1001, perr.E_SCHEMA, "no such key")]
    assert bench.published[-1][0].endswith("/status") and not any(t.endswith("/command_result") for t, _p in bench.published)


def test_without_a_command_life_cycle_results_are_published_raw_as_before(bench: Bench) -> None:
    bench.hello()
    bench.feed(raw_frame(messages.COMMAND_RESULT, 2, {0: 7, 1: messages.OUTCOME_FAILED, 2: "lamp out"}))
    topic, payload = bench.published[-1]
    assert topic == "edgegw/gw-test/nodes/%s/command_result" % NODE.hex()
    assert payload == b'{"id": 7, "outcome": 3, "detail": "lamp out"}'


def test_a_request_keeps_the_counter_it_was_given(bench: Bench, recorder: Recorder) -> None:
    ack, time_ = bench.hello()
    assert (ack.counter, time_.counter) == (1000, 1001), "a new session starts at the gateway-wide counter"
    counter = bench.sessions.take_counter(NODE.hex())
    assert counter == 1002
    command = {"id": 1, "action": "dim", "args": {"level": 40}}
    assert bench.sessions.send_request(NODE.hex(), counter, messages.COMMAND, command)
    (first,) = bench.replies()
    status_ack = bench.feed(raw_frame(messages.STATUS, 3, {0: 1}))  # an ACK in between takes a counter of its own
    assert bench.sessions.send_request(NODE.hex(), counter, messages.COMMAND, command)  # the retransmission
    (again,) = bench.replies()
    assert [(m.type, m.counter, m.flags) for m in (first, again)] == [(messages.COMMAND, 1002, fr.F_DOWNLINK | fr.F_ACK_REQ)] * 2
    assert [m.counter for m in status_ack] == [1003]
    assert bench.sessions.take_counter(NODE.hex()) == 1004
    assert bench.sessions.take_counter("00000000000000ff") is None, "no session"
    assert not bench.sessions.send_request("00000000000000ff", 1, messages.COMMAND, command)


def test_a_stale_reject_of_a_request_moves_the_nodes_counters_once(bench: Bench, recorder: Recorder) -> None:
    """The gateway lost its database: the node's window is far above the counters it is sent now (SPEC.md §4.1)."""
    bench.hello()
    counter = bench.sessions.take_counter(NODE.hex())
    assert counter is not None
    bench.sessions.send_request(NODE.hex(), counter, messages.COMMAND, {"id": 1, "action": "reboot"})
    stale = {0: perr.E_STALE, 1: "counter behind", 2: counter, 3: messages.COMMAND}
    bench.feed(raw_frame(messages.REJECT, 2, stale, flags=0))
    assert recorder.of("rejected") == [(NODE.hex(), counter, perr.E_STALE, "counter behind")]
    assert bench.sessions.take_counter(NODE.hex()) == STALE_STEP, "the next 2^24 boundary above the rejected counter"
    bench.feed(raw_frame(messages.REJECT, 3, stale, flags=0))  # the same again: no second move
    assert bench.sessions.take_counter(NODE.hex()) == STALE_STEP + 1
    bench.feed(raw_frame(messages.REJECT, 4, {**stale, 2: STALE_STEP + 1}, flags=0))  # not a request's counter: no move
    assert bench.sessions.take_counter(NODE.hex()) == STALE_STEP + 2


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met within %.0f s" % timeout
        await asyncio.sleep(0.01)


async def test_peeking_at_a_counter_that_must_wait_asks_for_its_reservation(bench: Bench, recorder: Recorder) -> None:
    """The command scheduler peeks (the span rule) before it takes: a peek that would wait must ask for the
    reservation as a take would, or the command waits for a downlink_ready that never comes."""
    written: list[dict[str, int]] = []

    async def write(nodes: dict[str, int], gateway: int) -> None:
        written.append(nodes)

    counters = DownlinkCounters(1000, 1003, write, ready=bench.sessions.counters_ready)
    bench.sessions.counters = counters
    bench.link.downlink._next_counter = counters.take
    bench.hello()  # its ACK and TIME take 1000 and 1001
    assert bench.sessions.peek_counter(NODE.hex()) == 1002 == bench.sessions.take_counter(NODE.hex())
    assert bench.sessions.peek_counter(NODE.hex()) is None, "1003 is not reserved on disk yet"
    assert bench.sessions.peek_counter("00000000000000ff") is None, "no session"
    await until(lambda: ("downlink_ready", NODE.hex()) in recorder.calls)
    assert [list(nodes) for nodes in written] == [[NODE.hex()]]
    assert bench.sessions.peek_counter(NODE.hex()) == 1003 == bench.sessions.take_counter(NODE.hex())


async def test_a_node_whose_port_vanished_has_no_link_and_cannot_be_sent_to(tmp_path: pathlib.Path) -> None:
    """The loss of a serial link travels up: PortManager -> Link -> Sessions -> the listener."""
    cable = PtyCable(tmp_path / "ttyNODE0")
    bench = Bench()
    sessions: Sessions = bench.sessions
    recorder = Recorder()
    sessions.listener = recorder
    manager = PortManager((SerialConfig(str(cable.link_path), 115200),), sessions, sessions.counters.take)
    manager.start()
    try:
        await until(lambda: bool(manager.links()))
        cable.write(b"\x00" + encode(Message(messages.HELLO, NODE, 1, HELLO_FIELDS, fr.F_ACK_REQ)))
        await until(lambda: sessions.view(NODE.hex()) is not None and sessions.view(NODE.hex()).port is not None)  # type: ignore[union-attr]
        command = {"id": 1, "action": "reboot"}
        counter = sessions.take_counter(NODE.hex())
        assert counter is not None and sessions.send_request(NODE.hex(), counter, messages.COMMAND, command)
        cable.unplug()
        await until(lambda: not manager.links())
        assert sessions.view(NODE.hex()).port is None  # type: ignore[union-attr]
        assert recorder.of("link_changed") == [(NODE.hex(), str(cable.link_path)), (NODE.hex(), None)]
        assert not sessions.send_request(NODE.hex(), counter, messages.COMMAND, command), "not sent: it has no link"
        cable.plug()
        await until(lambda: bool(manager.links()))
        assert not sessions.send_request(NODE.hex(), counter, messages.COMMAND, command), "a port reopened is no link until heard"
        cable.write(b"\x00" + encode(Message(messages.STATUS, NODE, 2, {"uptime": 5}, fr.F_ACK_REQ)))
        await until(lambda: sessions.view(NODE.hex()).port is not None)  # type: ignore[union-attr]
        assert recorder.of("link_changed")[-1] == (NODE.hex(), str(cable.link_path))
        assert sessions.send_request(NODE.hex(), counter, messages.COMMAND, command)
    finally:
        await manager.stop()
        cable.close()
