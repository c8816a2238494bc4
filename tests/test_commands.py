"""The command life cycle in parts: request parsing and checks, the stored book, the scheduler (fake clock), and
gateway/commands.py driven with a real store and fake nodes, broker and uplink. End to end: tests/test_commands_e2e.py."""

from __future__ import annotations

import asyncio
import itertools
import json
import pathlib
import random
import time
from typing import Any

import pytest

from gateway import command_request as req
from gateway.command_book import DELIVERED, EXPIRED, FAILED, QUEUED, REJECTED, SENT, SUCCEEDED, Command, CommandBook, Full
from gateway.command_scheduler import EXPIRE, RESEND, RESULT_WAIT_S, SEND, Scheduler
from gateway.commands import Commands
from gateway.config import ConfigError, parse
from gateway.sessions import NodeView
from gateway.store import Store
from gateway.store_worker import StoreWorker
from gateway.uplink import Inbound
from protocols import errors as perr
from protocols import messages

NODE = "0000a4cf12b3c4d5"
OFFERS = {"dim": "level u0-100! fade_s u0-600", "reboot": "", "sample_now": "", "set_interval": "s n1-86400!"}


# ------------------------------------------------------------ parsing and checks


def checked(payload: Any, known: bool = True, offers: dict[str, str] | None = OFFERS, kind: str = "command", node: str = NODE) -> Any:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    parsed = req.parse(node, kind, raw)
    if isinstance(parsed, req.Request):
        error = req.check(parsed, known, offers)
        if error is not None:
            return req.Rejected(node, parsed.id, parsed.name, error)
    return parsed


def test_a_good_request_is_taken_as_it_came() -> None:
    request = checked({"id": "dim-1.a_b", "name": "dim", "args": {"level": 40, "fade_s": 5}, "ttl_s": 60})
    assert isinstance(request, req.Request)
    assert (request.id, request.name, request.args, request.ttl_s, request.made_id) == (
        "dim-1.a_b",
        "dim",
        {"level": 40, "fade_s": 5},
        60,
        False,
    )
    bare = checked({"name": "reboot"})
    assert isinstance(bare, req.Request) and bare.made_id and bare.id.startswith("gw.") and bare.ttl_s == req.DEFAULT_TTL_S
    assert req.ID_PATTERN.fullmatch(bare.id)
    assert isinstance(checked({"name": "anything", "args": {"x": [1]}}, offers=None), req.Request), "a 1.0 node: not checked"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"dim"', "not a JSON object"),
        ({"id": "", "name": "dim"}, "id must be 1-64 of"),
        ({"id": "a/b", "name": "dim"}, "id must be 1-64 of"),
        ({"id": "a+#", "name": "dim"}, "id must be 1-64 of"),
        ({"id": "x" * 65, "name": "dim"}, "id must be 1-64 of"),
        ({"id": 7, "name": "dim"}, "id must be 1-64 of"),
        ({"id": "1", "name": "dim", "argz": {}}, "unknown key 'argz'"),
        ({"id": "1"}, "name must be a string of 1-16"),
        ({"id": "1", "name": "x" * 17}, "name must be a string of 1-16"),
        ({"id": "1", "name": "config"}, "config/set's"),
        ({"id": "1", "name": "dim", "args": [40]}, "args must be a JSON object"),
        ({"id": "1", "name": "reboot", "ttl_s": 0}, "ttl_s must be an integer from 1 to 604800"),
        ({"id": "1", "name": "reboot", "ttl_s": 604801}, "ttl_s must be"),
        ({"id": "1", "name": "reboot", "ttl_s": 1.5}, "ttl_s must be"),
        ({"id": "1", "name": "reboot", "ttl_s": True}, "ttl_s must be"),
        ({"id": "1", "name": "blink"}, "does not offer 'blink' (it offers: dim, reboot, sample_now, set_interval)"),
        ({"id": "1", "name": "dim", "args": {}}, "dim.level is missing"),
        ({"id": "1", "name": "dim", "args": {"level": 40, "speed": 1}}, "dim has no argument 'speed'"),
        ({"id": "1", "name": "dim", "args": {"level": "40"}}, "dim.level has the wrong type"),
        ({"id": "1", "name": "dim", "args": {"level": 140}}, "dim.level 140 is outside 0-100"),
        ({"id": "1", "name": "reboot", "args": {"now": 1}}, "reboot has no argument 'now'"),
    ],
)
def test_every_bad_request_is_rejected_with_an_error_that_says_which(payload: Any, error: str) -> None:
    rejected = checked(payload)
    assert isinstance(rejected, req.Rejected), rejected
    assert error in rejected.error
    assert req.ID_PATTERN.fullmatch(rejected.id), "published under an id usable as a topic level"


def test_unknown_nodes_and_frames_too_big_are_rejected() -> None:
    assert "unknown node 'nope'" in checked({"name": "reboot"}, node="nope").error
    assert "has not said HELLO" in checked({"name": "reboot"}, known=False).error
    big = checked({"name": "anything", "args": {"text": "x" * 300}}, offers=None)
    assert "args does not fit one frame: too_long" in big.error
    for settings in ({"name": "x" * 300}, {"deep": 2**70}, {"a": [[[[[[[[[1]]]]]]]]]}):
        assert "the settings does not fit one frame" in checked(settings, kind="config/set").error
    surrogate = checked(b'{"name": "\\ud800"}', kind="config/set")
    assert "the settings cannot be sent" in surrogate.error and "surrogate" in surrogate.error
    fits = checked({"name": "x" * 150}, kind="config/set")
    assert isinstance(fits, req.Request) and fits.name == "config" and fits.args == {"name": "x" * 150}


def test_config_set_is_a_command_named_config_sent_as_config_set_with_its_id() -> None:
    assert req.fields_for("config", {"interval": 30}, 9) == (
        messages.CONFIG,
        {"op": messages.CONFIG_SET, "values": {"interval": 30}, "id": 9},
    )
    assert req.fields_for("dim", {"level": 4}, 9) == (messages.COMMAND, {"id": 9, "action": "dim", "args": {"level": 4}})
    assert req.fields_for("reboot", {}, 9) == (messages.COMMAND, {"id": 9, "action": "reboot"})


# ------------------------------------------------------------ the book


def command(command_id: str, state: str = QUEUED, node: str = NODE, expires: float = 2e9, at: float = 1e9) -> Command:
    return Command(node, command_id, "dim", {"level": 1}, expires, state, at)


def test_book_round_trip_duplicates_and_wire_ids(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, 10_000_000)
    book = CommandBook(store)
    first, new, _ = book.add(command("a"))
    assert new and first.wire_id == 1
    again, new, _ = book.add(command("a"))
    assert not new and again.wire_id == 1 and again.state == QUEUED, "the same id is the same request"
    second, _, _ = book.add(command("b"))
    rejected, _, _ = book.add(command("c", REJECTED))
    assert second.wire_id == 2 and rejected.wire_id is None
    first.state, first.counter, first.attempts, first.result, first.at = SUCCEEDED, 77, 2, {"power_w": 31.5}, 1e9 + 5
    book.save(first)
    store.close()

    store = Store(tmp_path, 10_000_000)
    book = CommandBook(store)
    loaded = {c.id: c for c in book.load()}
    assert [c.id for c in book.load()] == ["a", "b", "c"], "in the order they came"
    assert (loaded["a"].state, loaded["a"].counter, loaded["a"].attempts, loaded["a"].result) == (SUCCEEDED, 77, 2, {"power_w": 31.5})
    assert loaded["a"].document() == {
        "id": "a",
        "name": "dim",
        "state": SUCCEEDED,
        "at": 1e9 + 5,
        "attempts": 2,
        "result": {"power_w": 31.5},
        "error": None,
    }
    assert book.prune(now=1e9 + 5 + 10, keep_s=5) == [(NODE, "a"), (NODE, "c")]
    assert [c.id for c in book.load()] == ["b"]
    third, _, _ = book.add(command("d"))
    assert third.wire_id == 3, "a pruned row's wire id is never given again (the node may hold its result)"
    store.close()


def test_book_is_bounded(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, 10_000_000)
    book = CommandBook(store, max_rows=5, max_active=3)
    for index in range(3):
        book.add(command("q%d" % index))
    with pytest.raises(Full, match="3 commands not final"):
        book.add(command("q3"))
    assert book.add(command("other", node="e66038b7134f2a21"))[1]
    book.add(command("r1", REJECTED, at=1))
    _, new, evicted = book.add(command("r2", REJECTED, at=2))  # full: the oldest final row gives way
    assert new and evicted == [(NODE, "r1")]
    assert [c.id for c in book.load()] == ["q0", "q1", "q2", "other", "r2"]
    store.close()
    store = Store(tmp_path, 10_000_000)
    book = CommandBook(store, max_rows=4, max_active=3)
    with pytest.raises(Full, match="command table is full"):  # five rows, one final: not room enough
        book.add(command("x", node="e66038b7134f2a21"))
    store.close()


# ------------------------------------------------------------ the scheduler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_800_000_000.0

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


def scheduled(count: int, node: str = NODE, ttl: float = 3600, clock: Clock | None = None) -> list[Command]:
    wall = clock.wall if clock else 1_800_000_000.0
    made = []
    for index in range(count):
        made.append(Command(node, "c%d" % index, "dim", {}, wall + ttl, QUEUED, wall, wire_id=index + 1))
    return made


class Counters:
    """A node's downlink counters (the sessions' take_counter / peek_counter)."""

    def __init__(self, first: int = 501) -> None:
        self.next = first

    def take(self) -> int | None:
        self.next += 1
        return self.next - 1

    def peek(self) -> int | None:
        return self.next


def make_scheduler(in_flight: int, seed: int, counters: Counters | None = None) -> Scheduler:
    source = counters or Counters()
    return Scheduler(in_flight, lambda _node: source, rng=random.Random(seed))


def added(count: int, in_flight: int, seed: int, ttl: float = 3600) -> tuple[Clock, Counters, Scheduler, list[Command]]:
    """`count` commands (c0, c1, ...; wire ids 1, 2, ...) added to a new scheduler; counters from 501."""
    clock, counters = Clock(), Counters()
    scheduler = make_scheduler(in_flight, seed, counters)
    commands = scheduled(count, ttl=ttl, clock=clock)
    for cmd in commands:
        scheduler.add(cmd, clock.now, clock.wall)
    return clock, counters, scheduler, commands


def three_started(seed: int) -> tuple[Clock, Counters, Scheduler, list[Command]]:
    """Three commands added and sent, counters 501-503."""
    clock, counters, scheduler, commands = added(3, 4, seed)
    assert start(scheduler, clock) == [(SEND, "c0"), (SEND, "c1"), (SEND, "c2")]
    return clock, counters, scheduler, commands


def linked(_node: str) -> bool:
    return True


def start(scheduler: Scheduler, clock: Clock, link: bool = True) -> list[tuple[str, str]]:
    return [(action, cmd.id) for action, cmd in scheduler.step(clock.now, clock.wall, lambda _node: link)]


def test_scheduler_in_order_bounded_in_flight() -> None:
    clock, _counters, scheduler, commands = added(5, 2, 1)
    assert start(scheduler, clock) == [(SEND, "c0"), (SEND, "c1")]
    assert start(scheduler, clock) == [], "two in flight: the rest wait"
    assert [c.state for c in commands] == [SENT, SENT, QUEUED, QUEUED, QUEUED]
    assert [c.counter for c in commands[:2]] == [501, 502], "counters taken as they start"
    assert [c.id for c in scheduler.acked(NODE, [501], clock.now, clock.wall)] == ["c0"]
    assert commands[0].state == DELIVERED
    assert scheduler.acked(NODE, [501], clock.now, clock.wall) == [], "an ACK again moves nothing"
    assert start(scheduler, clock) == [], "delivered is not answered yet: still in flight"
    assert scheduler.answered(NODE, 1, config=False) is commands[0]
    commands[0].state = SUCCEEDED
    scheduler.finish(commands[0])
    assert start(scheduler, clock) == [(SEND, "c2")]
    assert scheduler.answered(NODE, 1, config=False) is None, "a result resent later is not taken twice"
    assert scheduler.answered(NODE, 2, config=True) is None, "a CONFIG report does not answer a COMMAND"
    assert scheduler.answered(NODE, 2, config=False) is commands[1], "a result whose ACK was lost answers too"


def test_scheduler_resends_with_backoff_until_acked_then_waits_for_the_result() -> None:
    clock, _counters, scheduler, (cmd,) = added(1, 4, 7)
    assert start(scheduler, clock) == [(SEND, "c0")]
    sent_at = [clock.now]
    while clock.now - sent_at[0] < 400:
        assert scheduler.next_due(linked) is not None and scheduler.next_due(linked) > clock.now - 0.05  # type: ignore[operator]
        clock.tick(0.05)
        if start(scheduler, clock) == [(RESEND, "c0")]:
            sent_at.append(clock.now)
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    nominal = [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    for gap, expected in zip(gaps, nominal, strict=False):
        assert expected * 0.75 - 0.05 <= gap <= expected * 1.25 + 0.05, (gaps, nominal)
    assert len(gaps) >= 8 and max(gaps) <= 60 * 1.25 + 0.05
    assert cmd.attempts == len(sent_at) and cmd.counter == 501, "every resend: the same counter"
    scheduler.acked(NODE, [501], clock.now, clock.wall)
    clock.tick(RESULT_WAIT_S - 0.1)
    assert start(scheduler, clock) == []
    clock.tick(0.2)
    assert start(scheduler, clock) == [(RESEND, "c0")], "no result: the COMMAND again (the node resends its stored result)"
    clock.tick(2 * RESULT_WAIT_S * 0.75 - 0.2)
    assert start(scheduler, clock) == [], "the next wait for the result is twice as long (SPEC.md §6.7)"
    clock.tick(2 * RESULT_WAIT_S * 0.5 + 0.2)
    assert start(scheduler, clock) == [(RESEND, "c0")] and cmd.counter == 501


def test_scheduler_expires_at_the_ttl_and_a_node_without_a_link_waits() -> None:
    clock, _counters, scheduler, commands = added(3, 4, 3, ttl=30)
    assert start(scheduler, clock, link=False) == []
    assert [c.state for c in commands] == [QUEUED] * 3, "no port: not sent"
    clock.tick(10)
    assert start(scheduler, clock, link=False) == []
    assert start(scheduler, clock) == [(SEND, "c0"), (SEND, "c1"), (SEND, "c2")]
    scheduler.acked(NODE, [503], clock.now, clock.wall)
    clock.tick(5)
    assert start(scheduler, clock, link=False) == [], "the port vanished: no resends"
    clock.wall += 3600  # the wall clock set at boot: a ttl in flight runs on the monotonic clock
    assert start(scheduler, clock, link=False) == []
    clock.tick(15)
    assert start(scheduler, clock, link=False) == [(EXPIRE, "c0"), (EXPIRE, "c1"), (EXPIRE, "c2")], "ttls run without a link"
    assert [c.state for c in commands] == [EXPIRED] * 3 and scheduler.commands(NODE) == []
    assert scheduler.next_due(linked) is None


def test_scheduler_queued_commands_expire_by_the_wall_clock() -> None:
    clock, _counters, scheduler, commands = added(2, 1, 3, ttl=30)
    assert start(scheduler, clock) == [(SEND, "c0")]
    clock.tick(31)
    assert start(scheduler, clock) == [(EXPIRE, "c1"), (EXPIRE, "c0")], "the one waiting, then the one in flight"
    assert [c.state for c in commands] == [EXPIRED, EXPIRED] and scheduler.next_due(linked) is None


def test_scheduler_span_rule_and_a_counter_not_reserved_yet() -> None:
    """SPEC §4.2 (6): a new request starts only while its counter is less than a window above the oldest kept."""
    clock, counters, scheduler, commands = three_started(2)
    scheduler.answered(NODE, 2, config=False)
    scheduler.finish(commands[1])
    late = scheduled(1)[0]
    late.id, late.wire_id = "late", 9
    scheduler.add(late, clock.now, clock.wall)
    counters.next += 300  # ACKs and TIMEs to the node took counters since
    assert start(scheduler, clock) == [], "c0 (501) is not ACKed: a counter 800 above would make its repeat STALE"
    scheduler.acked(NODE, [501, 503], clock.now, clock.wall)
    assert start(scheduler, clock) == [], "ACKed, still kept while its result is awaited"
    for cmd in (commands[0], commands[2]):
        scheduler.answered(NODE, cmd.wire_id, config=False)  # type: ignore[arg-type]
        scheduler.finish(cmd)
    peek = counters.peek
    counters.peek = lambda: None  # type: ignore[method-assign]  # its reservation is not on disk yet
    assert start(scheduler, clock) == [] and late.state == QUEUED
    counters.peek = peek  # type: ignore[method-assign]
    assert start(scheduler, clock) == [(SEND, "late")] and late.counter == 804


def test_scheduler_rejects_and_a_restart() -> None:
    clock, counters, scheduler, commands = three_started(4)
    assert scheduler.rejected(NODE, perr.E_AUTH, 501) is None, "auth: line damage, kept and resent"
    assert scheduler.rejected(NODE, perr.E_STALE, 999) is None, "no request of ours has that counter"
    counters.next = 1 << 24  # the sessions moved the counters ahead first
    assert scheduler.rejected(NODE, perr.E_STALE, 501) == (RESEND, commands[0])
    assert start(scheduler, clock) == [], "the span rule: 502 and 503 are kept (ACKed or refused, then it goes)"
    assert scheduler.rejected(NODE, perr.E_SCHEMA, 502) == ("fail", commands[1])
    commands[1].state = FAILED
    scheduler.finish(commands[1])
    assert scheduler.rejected(NODE, perr.E_SCHEMA, 502) is None
    assert scheduler.rejected(NODE, perr.E_STALE, 503) == (RESEND, commands[2])
    assert start(scheduler, clock) == [(RESEND, "c0"), (RESEND, "c2")], "the same requests, new counters"
    assert [commands[0].counter, commands[2].counter] == [1 << 24, (1 << 24) + 1]

    # A restart: those in flight are registered again under their stored counters and written at once.
    restarted = make_scheduler(4, 5, Counters(2 << 24))
    loaded = [
        Command(NODE, c.id, "dim", {}, c.expires, c.state, c.at, wire_id=c.wire_id, counter=c.counter) for c in (commands[0], commands[2])
    ]
    assert [restarted.add(cmd, clock.now, clock.wall) for cmd in loaded] == [[(RESEND, cmd)] for cmd in loaded]
    assert [c.counter for c in loaded] == [1 << 24, (1 << 24) + 1] and [c.attempts for c in loaded] == [1, 1]
    assert [c.id for c in restarted.acked(NODE, [(1 << 24) + 1], clock.now, clock.wall)] == ["c2"]
    assert restarted.answered(NODE, 1, config=False) is loaded[0]


def test_scheduler_a_node_without_a_link_has_only_deadlines_due() -> None:
    """A resend time past, its node without a link: not due (else the commands task would wake at once, for ever)."""
    clock, _counters, scheduler, (cmd,) = added(1, 4, 1, ttl=60)
    start(scheduler, clock)
    assert cmd.state == SENT
    clock.tick(5)
    assert start(scheduler, clock, link=False) == []
    assert scheduler.next_due(linked) < clock.now, "with its link, the resend is overdue"  # type: ignore[operator]
    assert scheduler.next_due(lambda _node: False) == pytest.approx(clock.now + 55), "without: its ttl only"


def test_scheduler_a_restart_registers_what_was_in_flight_without_sending_the_expired() -> None:
    """At start: a command whose ttl passed while the gateway was down is expired, never written again; the span
    rule counts from the lowest counter kept, whatever order the commands were made in (a renumbered older one
    has a counter above a younger one's)."""
    clock = Clock()
    scheduler = make_scheduler(4, 6, Counters(1200))
    late = Command(NODE, "late", "reboot", {}, clock.wall - 60, SENT, clock.wall - 120, wire_id=7, counter=90)
    older = Command(NODE, "c0", "dim", {}, clock.wall + 600, SENT, clock.wall - 5, wire_id=8, counter=1000)
    younger = Command(NODE, "c1", "dim", {}, clock.wall + 600, DELIVERED, clock.wall - 4, wire_id=9, counter=600)
    new = Command(NODE, "c2", "dim", {}, clock.wall + 600, QUEUED, clock.wall, wire_id=10)
    assert scheduler.add(late, clock.now, clock.wall) == [], "past its ttl: not written"
    assert [scheduler.add(cmd, clock.now, clock.wall) for cmd in (older, younger, new)] == [[(RESEND, older)], [(RESEND, younger)], []]
    assert start(scheduler, clock) == [(EXPIRE, "late")] and late.state == EXPIRED
    assert new.state == QUEUED, "1200 is a window above 600 (c1's repeat would be stale at the node)"
    scheduler.answered(NODE, 9, config=False)
    scheduler.finish(younger)
    assert start(scheduler, clock) == [(SEND, "c2")] and new.counter == 1200


# ------------------------------------------------------------ gateway/commands.py with a real store


class FakeNodes:
    """The sessions' side (gateway/sessions.py: view, take_counter, send_request)."""

    def __init__(self) -> None:
        self.known: dict[str, dict[str, str] | None] = {NODE: OFFERS}
        self.link = True
        self.counter = 100
        self.sent: list[tuple[str, int, dict[str, Any], int]] = []

    def view(self, node: str) -> NodeView | None:
        if node not in self.known:
            return None
        return NodeView(node, self.known[node], "/dev/ttyX" if self.link else None)

    def take_counter(self, node: str) -> int | None:
        self.counter += 1
        return self.counter

    def peek_counter(self, node: str) -> int | None:
        return self.counter + 1

    def send_request(self, node: str, counter: int, mtype: int, fields: dict[str, Any], only_under: bytes | None = None) -> bool:
        self.sent.append((node, mtype, fields, counter))
        return True


class Rig:
    def __init__(self, path: pathlib.Path, in_flight: int = 4) -> None:
        self.store = Store(path, 10_000_000)
        self.worker = StoreWorker(self.store)
        self.nodes = FakeNodes()
        self.published: list[tuple[str, bytes]] = []
        self.acks: list[int] = []
        self.commands = Commands(self.worker, "edgegw/gw", self.nodes, self.publish, self.ack, in_flight, rng=random.Random(5))
        self.mid = 0

    def publish(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, payload))

    def ack(self, mid: int, qos: int, link: int) -> bool:
        self.acks.append(mid)
        return True

    def request(self, payload: Any, kind: str = "command", node: str = NODE, dup: bool = False, mid: int | None = None) -> int:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if mid is None:
            self.mid += 1
            mid = self.mid
        self.commands.message(Inbound("edgegw/gw/nodes/%s/%s" % (node, kind), raw, mid, 1, dup, 1))
        return mid

    def states(self, command_id: str | None = None) -> list[dict[str, Any]]:
        out = []
        for topic, payload in self.published:
            if "/command/" in topic and payload and (command_id is None or topic.endswith("/" + command_id)):
                out.append(json.loads(payload))
        return out

    async def settle(self, until: Any) -> None:
        for _ in range(400):
            if until():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("not reached; published %s" % self.states())


@pytest.fixture
async def rig(tmp_path: pathlib.Path) -> Any:
    made = Rig(tmp_path)
    await made.commands.open()
    task = asyncio.get_running_loop().create_task(made.commands.run())
    yield made
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    made.worker.close()


async def test_a_request_is_stored_then_acknowledged_then_sent_and_answered(rig: Rig) -> None:
    mid = rig.request({"id": "dim-7", "name": "dim", "args": {"level": 40}})
    await rig.settle(lambda: rig.nodes.sent)
    assert rig.acks == [mid]
    ((node, mtype, fields, counter),) = rig.nodes.sent
    assert (node, mtype, fields, counter) == (NODE, messages.COMMAND, {"id": 1, "action": "dim", "args": {"level": 40}}, 101)
    assert [s["state"] for s in rig.states("dim-7")][:2] == [QUEUED, SENT]
    stored = rig.store.db.execute("SELECT state, counter FROM commands WHERE id = 'dim-7'").fetchone()
    assert stored == (SENT, 101), "the counter is on disk before the frame went"
    rig.commands.acked(NODE, [101])
    rig.commands.answered(NODE, messages.COMMAND_RESULT, {"id": 1, "outcome": 0, "value": 40})
    await rig.settle(lambda: rig.states("dim-7")[-1]["state"] == SUCCEEDED)
    assert [s["state"] for s in rig.states("dim-7")] == [QUEUED, SENT, DELIVERED, SUCCEEDED]
    last = rig.states("dim-7")[-1]
    assert last == {"id": "dim-7", "name": "dim", "state": SUCCEEDED, "at": last["at"], "attempts": 1, "result": 40, "error": None}
    assert rig.store.db.execute("SELECT state FROM commands WHERE id = 'dim-7'").fetchone() == (SUCCEEDED,)


async def test_failures_config_and_node_rejects(rig: Rig) -> None:
    rig.request({"id": "r1", "name": "sample_now"})
    rig.request({"interval": 30}, kind="config/set")
    rig.request({"id": "r3", "name": "reboot"})
    await rig.settle(lambda: len(rig.nodes.sent) == 3)
    config_id = rig.nodes.sent[1][2]["id"]
    assert rig.nodes.sent[1][1:3] == (messages.CONFIG, {"op": messages.CONFIG_SET, "values": {"interval": 30}, "id": config_id})
    rig.commands.answered(NODE, messages.COMMAND_RESULT, {"id": 1, "outcome": messages.OUTCOME_FAILED, "detail": "sensor bus hung"})
    rig.commands.answered(NODE, messages.CONFIG, {"op": 2, "id": config_id, "values": {}, "errors": {"interval": "out of range"}})
    rig.commands.refused(NODE, {"reason": perr.E_SCHEMA, "counter": rig.nodes.sent[2][3], "detail": "COMMAND.args"})
    await rig.settle(lambda: all(s["state"] == FAILED for s in rig.states()[-3:]))
    errors = {s["id"]: s["error"] for s in rig.states() if s["state"] == FAILED}
    assert errors["r1"] == "failed: sensor bus hung"
    assert [e for i, e in errors.items() if i.startswith("gw.")] == ["interval: out of range"]
    assert errors["r3"] == "rejected by the node: schema COMMAND.args"


async def test_a_stale_reject_resends_under_a_new_counter(rig: Rig) -> None:
    rig.request({"id": "s", "name": "reboot"})
    await rig.settle(lambda: rig.nodes.sent)
    rig.commands.refused(NODE, {"reason": perr.E_STALE, "counter": rig.nodes.sent[0][3]})
    await rig.settle(lambda: len(rig.nodes.sent) == 2)
    assert [sent[3] for sent in rig.nodes.sent] == [101, 102] and rig.nodes.sent[0][2] == rig.nodes.sent[1][2], "same request, new counter"


async def test_a_stale_reject_while_a_resend_is_being_stored_renumbers_it(rig: Rig) -> None:
    """The REJECT came for an earlier copy while the next one's row was being written: the copy is not written
    under the counter just taken from it, the task goes on, the next step sends the request under a new one."""
    rig.request({"id": "x", "name": "reboot"})
    await rig.settle(lambda: rig.nodes.sent)
    first = rig.nodes.sent[0][3]
    store = rig.commands._store

    async def stored_then_refused(command: Command) -> bool:
        done = await store(command)
        if command.attempts == 2 and command.counter == first:
            rig.commands.refused(NODE, {"reason": perr.E_STALE, "counter": first})
        return done

    rig.commands._store = stored_then_refused  # type: ignore[method-assign]
    for _ in range(800):  # the resend comes 2 s after the first copy
        if len(rig.nodes.sent) >= 2:
            break
        await asyncio.sleep(0.01)
    assert [sent[3] for sent in rig.nodes.sent] == [first, first + 1], "never written again under the stale counter"


async def test_a_command_whose_ttl_passed_while_the_gateway_was_down_is_expired_not_sent(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, 10_000_000)
    book = CommandBook(store)
    now = time.time()
    late, _new, _evicted = book.add(Command(NODE, "late", "reboot", {}, now - 60, QUEUED, now - 120))
    late.state, late.counter = SENT, 101  # sent before the gateway went down, an hour ago
    book.save(late)
    store.close()
    rig = Rig(tmp_path)
    await rig.commands.open()
    task = asyncio.get_running_loop().create_task(rig.commands.run())
    await rig.settle(lambda: EXPIRED in [s["state"] for s in rig.states("late")])
    await asyncio.sleep(0.2)
    assert rig.nodes.sent == [], "a node must not run what its requester is told expired"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    rig.worker.close()


async def test_a_new_request_waits_while_the_oldest_unacked_one_is_a_window_behind(rig: Rig) -> None:
    """SPEC §4.2 (6): the node's window must still hold the oldest request not answered when a new one arrives."""
    rig.request({"id": "old", "name": "reboot"})
    await rig.settle(lambda: len(rig.nodes.sent) == 1)
    rig.nodes.counter += 300  # ACKs and TIMEs to the node took counters since
    rig.request({"id": "new", "name": "sample_now"})
    await rig.settle(lambda: len(rig.acks) == 2)
    await asyncio.sleep(0.3)
    assert [s["state"] for s in rig.states("new")] == [QUEUED] and len(rig.nodes.sent) == 1
    rig.commands.acked(NODE, [101])
    await rig.settle(lambda: [s["state"] for s in rig.states("old")][-1] == DELIVERED)
    await asyncio.sleep(0.3)
    assert len(rig.nodes.sent) == 1, "ACKed, its result awaited: its repeat must not be STALE at the node either"
    rig.commands.command_result(NODE, {"id": rig.nodes.sent[0][2]["id"], "outcome": messages.OUTCOME_OK})
    await rig.settle(lambda: len(rig.nodes.sent) == 2)
    assert rig.nodes.sent[1][2]["action"] == "sample_now"


async def test_duplicates_malformed_input_and_redeliveries(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.request({"id": "same", "name": "reboot"})
    rig.request({"id": "same", "name": "sample_now"})
    await rig.settle(lambda: len(rig.acks) == 2 and rig.nodes.sent)
    assert len(rig.nodes.sent) == 1 and [s["name"] for s in rig.states("same")][:2] == ["reboot", "reboot"], "not run twice"
    bad = [b"{", b"[1]", json.dumps({"id": "a/b", "name": "reboot"}).encode(), b'{"name": "\\ud800"}']
    for payload in bad:
        rig.request(payload)
    rig.request({"level": "x" * 300}, kind="config/set")
    rig.request({"name": "reboot"}, node="e66038b7134f2a21")
    rig.request({"name": "reboot"}, node="garbage")
    await rig.settle(lambda: len(rig.acks) == 9)
    rejected = [s for s in rig.states() if s["state"] == REJECTED]
    assert len(rejected) == 7
    assert all(req.ID_PATTERN.fullmatch(s["id"]) and s["error"] for s in rejected)
    # An id-less request stored, then redelivered by the broker (its ack lost): recognised, not a second command.
    mid = rig.request({"name": "sample_now"})
    await rig.settle(lambda: len(rig.acks) == 10)
    rig.request({"name": "sample_now"}, dup=True, mid=mid)
    await rig.settle(lambda: len(rig.acks) == 11)
    names = [fields.get("action") for _n, _t, fields, _c in rig.nodes.sent]
    assert names.count("sample_now") == 1
    assert "Traceback" not in caplog.text


async def test_state_survives_a_restart_and_in_flight_commands_resend_with_their_counter(tmp_path: pathlib.Path) -> None:
    first = Rig(tmp_path)
    await first.commands.open()
    task = asyncio.get_running_loop().create_task(first.commands.run())
    first.request({"id": "k", "name": "dim", "args": {"level": 3}})
    first.request({"id": "q", "name": "reboot"})
    first.nodes.link = True
    await first.settle(lambda: len(first.nodes.sent) == 2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    first.worker.close()  # as after a kill: the rows are what was committed

    second = Rig(tmp_path)
    second.nodes.counter = 500
    await second.commands.open()
    task = asyncio.get_running_loop().create_task(second.commands.run())
    await second.settle(lambda: len(second.nodes.sent) == 2)
    assert [(sent[2]["id"], sent[3]) for sent in second.nodes.sent] == [(1, 101), (2, 102)], "the same counters and wire ids"
    # At start every stored state is published again: one stored just before a kill never was (the broker kept
    # the session, so connected() alone would not republish it; street-lights in the HIL found that).
    await second.settle(lambda: {s["id"] for s in second.states()} >= {"k", "q"})
    second.published.clear()
    second.commands.connected(session_present=False)  # a broker that lost its retained messages: every state again
    await second.settle(lambda: {s["id"] for s in second.states()} >= {"k", "q"})
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    second.worker.close()


async def test_a_state_committed_just_before_a_kill_is_published_at_the_start(tmp_path: pathlib.Path) -> None:
    """Stored, then killed before the publish went (street-lights in the HIL found it): the next start publishes it,
    even when the broker kept the session and connected() does not ask for every state again."""
    store = Store(tmp_path, 10_000_000)
    book = CommandBook(store)
    done, _, _ = book.add(command("done-1"))
    done.state, done.result = SUCCEEDED, 40
    book.save(done)
    store.close()
    rig = Rig(tmp_path)
    await rig.commands.open()
    task = asyncio.get_running_loop().create_task(rig.commands.run())
    rig.commands.connected(session_present=True)
    await rig.settle(lambda: rig.states("done-1"))
    assert [(s["state"], s["result"]) for s in rig.states("done-1")] == [(SUCCEEDED, 40)]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    rig.worker.close()


# ------------------------------------------------------------ config


def test_commands_in_flight_is_checked_and_named() -> None:
    base: dict[str, Any] = {"gateway": {"id": "g", "data_dir": "/d"}, "mqtt": {"host": "h"}}
    assert parse(base).commands_in_flight == 4
    assert parse({**base, "commands": {"in_flight": 1}}).commands_in_flight == 1
    for bad in ({"in_flight": 0}, {"in_flight": "4"}, {"inflight": 4}):
        with pytest.raises(ConfigError) as caught:
            parse({**base, "commands": bad})
        assert "[commands] in" in str(caught.value)
