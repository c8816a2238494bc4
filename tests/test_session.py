"""protocols/session.py: the sender (Outbox), the receiver tables (Inbox), tracked requests; on both interpreters."""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import errors as perr
from protocols import messages
from protocols import session as ss
from protocols import window as win
from protocols.frame import F_ACK_REQ, WINDOW
from tests.conftest import ROOT, run_micropython
from tests.portable import session_check


class Counter:
    def __init__(self, start: int = 1) -> None:
        self.value = start

    def take(self) -> int:
        self.value += 1
        return self.value - 1

    def peek(self) -> int:
        return self.value


def no_jitter(span: int) -> int:
    return span // 2  # the middle: the delay exactly as scheduled


def sent(events: list[tuple]) -> list[int]:
    return [event[1] for event in events if event[0] == ss.SEND]


# ------------------------------------------------------------------ the sender


def test_a_frame_is_resent_after_2_s_then_doubling_to_60_s() -> None:
    out = ss.Outbox(Counter(), 8)
    out.add(out.counter.take(), b"one", 0)
    times = []
    now = 0
    while now < 400_000:
        now += 100
        if sent(out.due(now, no_jitter)):
            times.append(now)
    gaps = [b - a for a, b in zip([0, *times], times, strict=False)]
    assert gaps[:6] == [2000, 4000, 8000, 16000, 32000, 60000] and set(gaps[6:]) == {60000}
    assert out.retransmits == len(times)


def test_a_frame_on_the_air_whose_windows_closed_unanswered_is_due_again_at_once() -> None:
    """SPEC.md §5.11: the doubling delay grew while the frame waited for its duty cycle; once it was on air and its
    windows brought no ACK it is due at once. Unknown counters are ignored; an acknowledged frame is gone."""
    out = ss.Outbox(Counter(), 8)
    first, second = out.counter.take(), out.counter.take()
    out.add(first, b"one", 0)
    out.add(second, b"two", 0)
    for now in (2000, 6000, 14_000):  # waiting for the duty cycle: retried at 2, 6, 14 s, next at 30 s
        assert sent(out.due(now, no_jitter)) == [first, second]
    out.aired(first, 20_000)
    out.aired(99, 20_000)  # not kept: nothing happens
    assert out.next_due() == 20_000 and sent(out.due(20_000, no_jitter)) == [first]
    assert out.next_due() == 24_000  # the doubling starts again from its airing: 4 s
    out.aired(first, 25_000)  # aired again, unanswered again: no longer at once (the oldest would take every uplink)
    assert out.next_due() == 24_000
    out.acked([second], 21_000)
    out.aired(second, 22_000)
    assert out.counters == [first]


def test_jitter_stays_within_25_percent() -> None:
    out = ss.Outbox(Counter(), 8)
    out.add(out.counter.take(), b"one", 0)
    assert sent(out.due(2000, lambda span: 0)) == [1]  # the next in 4 s - 25 %: at 5 s
    assert sent(out.due(4999, no_jitter)) == [] and sent(out.due(5000, lambda span: span)) == [1]  # 8 s + 25 %: at 15 s
    assert sent(out.due(14_999, no_jitter)) == [] and sent(out.due(15_000, no_jitter)) == [1]
    assert out.retransmits == 3


def test_the_span_rule_holds_new_frames_back_and_the_ring_drops_its_oldest_counted() -> None:
    out = ss.Outbox(Counter(), 3)
    for _ in range(4):
        out.add(out.counter.take(), b"x", 0)
    assert out.dropped == 1 and out.counters[0] == 2 and len(out.counters) == 3 and 1 not in out.counters
    counter = Counter(10)
    out = ss.Outbox(counter, 300)
    out.add(out.counter.take(), b"x", 0)
    counter.value = 10 + WINDOW - 2
    assert out.may_send()
    counter.value = 10 + WINDOW - 1
    assert not out.may_send()
    out.acked([10], 0)
    assert out.may_send() and len(out.counters) == 0


def test_acked_forgets_frames_and_ignores_unknown_counters() -> None:
    out = ss.Outbox(Counter(), 8)
    for _ in range(3):
        out.add(out.counter.take(), b"x", 0)
    assert out.acked([2, 99], 0) == [] and len(out.counters) == 2 and 2 not in out.counters
    assert sent(out.due(2000, no_jitter)) == [1, 3]


@pytest.mark.parametrize(
    ("table", "reason", "kind", "kept"),
    [
        (ss.NODE_ON_REJECT, perr.E_STALE, ss.NEED_HELLO, True),
        (ss.NODE_ON_REJECT, perr.E_UNKNOWN_NODE, ss.NEED_HELLO, True),
        (ss.NODE_ON_REJECT, perr.E_AUTH, None, True),
        (ss.NODE_ON_REJECT, perr.E_SCHEMA, ss.GAVE_UP, False),
        (ss.NODE_ON_REJECT, perr.E_VERSION, ss.GAVE_UP, False),
        (ss.GATEWAY_ON_REJECT, perr.E_STALE, ss.RENUMBER, False),
        (ss.GATEWAY_ON_REJECT, perr.E_AUTH, None, True),
        (ss.GATEWAY_ON_REJECT, perr.E_CBOR, ss.GAVE_UP, False),
    ],
)
def test_the_reject_table(table: dict, reason: int, kind: int | None, kept: bool) -> None:
    out = ss.Outbox(Counter(), 8, table)
    out.add(out.counter.take(), b"x", 0, key=("c", 7), wait=1000)
    event = out.rejected(reason, 1)
    assert (event[0] if event else None) == kind
    assert (1 in out.counters) == kept
    assert out.dropped == (1 if kind == ss.GAVE_UP else 0)
    if kind in (ss.GAVE_UP, ss.RENUMBER):
        assert event is not None and event[2] == ("c", 7)
    other = out.rejected(reason, 555)  # not one of ours (any more): nothing to do, but a peer that lost us hears HELLO
    assert (other[0] if other else None) == (ss.NEED_HELLO if kind == ss.NEED_HELLO else None)


# ------------------------------------------------------------------ tracked requests


def test_a_tracked_request_delivered_then_answered() -> None:
    out = ss.Outbox(Counter(50), 8, ss.GATEWAY_ON_REJECT)
    counter = out.counter.take()
    out.add(counter, b"cmd", 0, key=("c", 1), deadline=100_000, wait=10_000)  # registered before the write
    assert sent(out.due(2000, no_jitter)) == [50]  # not ACKed: resent, same counter
    assert out.acked([50], 3000) == [(ss.DELIVERED, 50, ("c", 1), None)]
    assert out.acked([50], 3500) == []  # a second ACK (the resend's) adds nothing
    assert sent(out.due(12_999, no_jitter)) == []
    resend = out.due(13_000, no_jitter)  # the result did not come within `wait`: resent so the node re-sends it
    assert resend == [(ss.SEND, 50, ("c", 1), b"cmd")]
    assert out.answered(("c", 2)) is None
    assert out.answered(("c", 1)) == (ss.RESULT, 50, ("c", 1), None)
    assert len(out.counters) == 0 and out.answered(("c", 1)) is None  # a repeated result: nothing waits for it


def test_a_request_without_a_response_is_done_when_acked() -> None:
    out = ss.Outbox(Counter(5), 8, ss.GATEWAY_ON_REJECT)
    out.add(out.counter.take(), b"cfg", 0, key=("k", 1))
    assert out.acked([5], 10) == [(ss.DELIVERED, 5, ("k", 1), None), (ss.DONE, 5, ("k", 1), None)]
    assert len(out.counters) == 0


def test_every_wait_ends_at_the_deadline() -> None:
    out = ss.Outbox(Counter(5), 8, ss.GATEWAY_ON_REJECT)
    out.add(out.counter.take(), b"a", 0, key="never-acked", deadline=9000)
    out.add(out.counter.take(), b"b", 0, key="never-answered", deadline=9000, wait=2000)
    out.acked([6], 100)
    events = []
    for now in range(0, 20_000, 500):
        events += out.due(now, no_jitter, link=now < 3000)  # the port vanished at 3 s: deadlines still run
    expired = [event for event in events if event[0] == ss.EXPIRED]
    assert expired == [(ss.EXPIRED, 5, "never-acked", 0), (ss.EXPIRED, 6, "never-answered", 1)]
    assert all(event[0] == ss.SEND for event in events if event not in expired)
    assert max(e[1] for e in events if e[0] == ss.SEND) <= 6 and len(out.counters) == 0


def test_next_due_is_when_due_has_something_next() -> None:
    out = ss.Outbox(Counter(5), 8, ss.GATEWAY_ON_REJECT)
    assert out.next_due() is None
    out.add(out.counter.take(), b"a", 0, key="short", deadline=1500)
    out.add(out.counter.take(), b"b", 100)
    assert out.next_due() == 1500, "a deadline before the first retry"
    assert out.due(1499, no_jitter) == [] and out.due(1500, no_jitter) == [(ss.EXPIRED, 5, "short", 0)]
    for _ in range(3):
        when = out.next_due()
        assert when is not None and out.due(when - 1, no_jitter) == []
        assert out.due(when, no_jitter) == [(ss.SEND, 6, None, b"b")]
    assert out.next_due(link=False) is None, "without a link nothing is resent: only deadlines are due"
    out.add(out.counter.take(), b"c", 0, key="k", deadline=99_000)
    assert out.next_due(link=False) == 99_000
    out.acked([6, 7], 0)
    assert out.next_due() is None


def test_a_result_before_the_ack_resolves_the_request() -> None:
    out = ss.Outbox(Counter(5), 8, ss.GATEWAY_ON_REJECT)
    out.add(out.counter.take(), b"a", 0, key=1, wait=5000)
    assert out.answered(1) == (ss.RESULT, 5, 1, None)
    assert out.acked([5], 10) == []


# ------------------------------------------------------------------ the receiver tables


def test_node_table_commands_once_and_idempotent_frames_always() -> None:
    inbox = ss.Inbox(ss.NODE_RX)
    new = inbox.decide(messages.COMMAND, 7, F_ACK_REQ)
    assert new == ss.A_ACCEPT | ss.A_PERSIST | ss.A_APPLY | ss.A_ACK
    assert inbox.decide(messages.COMMAND, 7, F_ACK_REQ) == ss.A_ACK | ss.A_REPLAY
    assert inbox.decide(messages.CONFIG, 8, F_ACK_REQ) & ss.A_APPLY
    inbox.decide(messages.COMMAND, 7 + 300, F_ACK_REQ)
    assert inbox.decide(messages.COMMAND, 7, F_ACK_REQ) == ss.A_REJECT_STALE
    for mtype in (messages.ACK, messages.TIME, messages.REJECT):  # stale or repeated: applied all the same, window untouched
        assert inbox.decide(mtype, 1, 0) == ss.A_APPLY and inbox.decide(mtype, 1, 0) == ss.A_APPLY
    assert inbox.window.highest == 307
    assert inbox.decide(messages.READINGS, 400, 0) == 0  # an upstream type sent down: ignored


def test_gateway_table() -> None:
    inbox = ss.Inbox(ss.GATEWAY_RX)
    assert inbox.decide(messages.HELLO, 500, F_ACK_REQ) == ss.A_ACCEPT | ss.A_APPLY | ss.A_ACK
    assert inbox.decide(messages.READINGS, 501, F_ACK_REQ) == ss.A_LATER | ss.A_APPLY  # ACK once durable
    assert inbox.window.check(501) == win.NEW
    inbox.window.accept(501)
    assert inbox.decide(messages.READINGS, 501, F_ACK_REQ) == ss.A_ACK
    assert inbox.decide(messages.STATUS, 502, 0) == ss.A_ACCEPT | ss.A_APPLY  # no ACK_REQ: no ACK
    assert inbox.decide(messages.STATUS, 3, 0) == ss.A_REJECT_STALE
    assert inbox.decide(messages.HELLO, 3, F_ACK_REQ) == ss.A_RESET | ss.A_APPLY | ss.A_ACK
    assert inbox.window.highest == 3 and inbox.window.check(3) == win.DUPLICATE and inbox.window.check(502) == win.NEW
    assert inbox.decide(messages.ACK, 0, 0) == ss.A_APPLY


def test_every_table_row_is_complete() -> None:
    for table in (ss.NODE_RX, ss.GATEWAY_RX):
        assert isinstance(table, bytes) and len(table) == 3 * 16
        for mtype in range(16):
            row = tuple(table[3 * mtype : 3 * mtype + 3])
            assert not row[win.STALE] & ss.A_ACCEPT, "a stale counter never enters the window"
            if row[win.STALE] & ss.A_REJECT_STALE:
                assert row[win.STALE] == ss.A_REJECT_STALE  # nothing else happens with it
            idempotent = row == (ss.A_APPLY, ss.A_APPLY, ss.A_APPLY)
            assert not row[win.DUPLICATE] & (ss.A_APPLY | ss.A_ACCEPT) or idempotent, "a duplicate is never applied twice"


def test_the_numbers_spelled_out_in_session_match_their_modules() -> None:
    from protocols import frame

    assert (ss._ACK_REQ, ss._HELLO, ss._READINGS, ss._ACK, ss._TIME, ss._CONFIG, ss._COMMAND, ss._REJECT) == (
        frame.F_ACK_REQ, messages.HELLO, messages.READINGS, messages.ACK, messages.TIME, messages.CONFIG, messages.COMMAND, messages.REJECT,
    )  # fmt: skip
    assert (ss._E_AUTH, ss._E_STALE, ss._E_UNKNOWN_NODE) == (perr.E_AUTH, perr.E_STALE, perr.E_UNKNOWN_NODE)
    assert ss._HANDLE == ss.A_ACCEPT | ss.A_APPLY and ss._REQUEST == ss._HANDLE | ss.A_PERSIST | ss.A_ACK


# ------------------------------------------------------------------ properties

counters = st.integers(min_value=0, max_value=2000)


@settings(max_examples=300, deadline=None)
@given(st.lists(counters, min_size=1, max_size=60), st.lists(st.booleans(), min_size=1, max_size=60))
def test_a_command_is_applied_at_most_once_whatever_arrives(arrivals: list[int], ack_req: list[bool]) -> None:
    """Any order of (re)deliveries: each counter applied at most once, every repeat within the window answered."""
    inbox = ss.Inbox(ss.NODE_RX)
    applied: list[int] = []
    for index, counter in enumerate(arrivals):
        flags = F_ACK_REQ if ack_req[index % len(ack_req)] else 0
        before = inbox.window.check(counter)
        actions = inbox.decide(messages.COMMAND, counter, flags)
        if actions & ss.A_APPLY:
            assert actions & ss.A_PERSIST and before == win.NEW
            applied.append(counter)
        elif before == win.DUPLICATE:
            assert actions & ss.A_REPLAY and bool(actions & ss.A_ACK) == bool(flags)
        else:
            assert actions == ss.A_REJECT_STALE
    assert len(applied) == len(set(applied))
    assert applied[0] == arrivals[0]  # the first arrival is always new


ops = st.lists(
    st.tuples(st.sampled_from(["send", "track", "ack", "answer", "reject", "tick", "off"]), st.integers(0, 40), st.integers(0, 12)),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 12), st.randoms(use_true_random=False))
def test_outbox_invariants(script: list[tuple[str, int, int]], capacity: int, rng: object) -> None:
    """Aligned columns, at most one end per request and nothing after it, resend delays within 2..60 s +-25 %."""
    out = ss.Outbox(Counter(1), capacity, ss.GATEWAY_ON_REJECT)
    now = 0
    ended: set[object] = set()
    keys = 0

    def jitter(span: int) -> int:
        return rng.randint(0, span)  # type: ignore[attr-defined]

    def check(events: list[tuple]) -> None:
        for kind, counter, key, _data in events:
            assert key not in ended, "an event after the request ended"
            if kind in (ss.RESULT, ss.EXPIRED, ss.GAVE_UP, ss.RENUMBER, ss.DONE) and key is not None:
                ended.add(key)
            if kind == ss.SEND:  # rescheduled within +-25 % of a delay that doubled, at most 60 s
                index = out.counters.index(counter)
                delay, after = out._delays[index], out._due[index] - now
                assert delay <= 60_000 and delay - delay // 4 <= after <= delay + delay // 4, (delay, after)

    for op, a, b in script:
        if op in ("send", "track"):
            counter = out.counter.take()
            if op == "track":
                keys += 1
                out.add(counter, b"w", now, key=keys, deadline=now + a * 1000 if a % 2 else None, wait=b * 1000 or None)
            else:
                out.add(counter, b"w", now)
        elif op == "ack":
            check(out.acked([a, b], now))
        elif op == "answer":
            event = out.answered(a)
            if event:
                check([event])
        elif op == "reject":
            event = out.rejected((perr.E_STALE, perr.E_AUTH, perr.E_SCHEMA)[b % 3], a)
            if event:
                check([event])
        else:
            now += a * 997
            check(out.due(now, jitter, op == "tick"))
        columns = (out.counters, out._wires, out._due, out._delays)
        assert len({len(column) for column in columns}) == 1 and len(out.counters) <= capacity
        assert len(set(out.counters)) == len(out.counters) and set(out._tracked) <= set(out.counters)
        assert all(2000 <= delay <= 60_000 or delay % 1000 == 0 for delay in out._delays)  # a result wait: whole seconds here


# ------------------------------------------------------------------ MicroPython


@pytest.mark.micropython
def test_the_same_decisions_on_micropython(micropython: str) -> None:
    expected = json.loads(json.dumps(session_check.run(7, 400)))
    assert {line[0] for line in expected} >= {"g-due", "n-due", "rejected", "g-acked", "n-acked", "rx"}  # the run reaches every part
    assert any(line[0] == "g-acked" and line[2] for line in expected)
    assert any(line[0] == "g-due" and line[2] == ss.EXPIRED for line in expected)
    done = run_micropython(micropython, "tests/portable/session_check.py", "7", "400")
    assert done.returncode == 0, done.stderr + done.stdout
    assert [json.loads(line) for line in done.stdout.splitlines()] == expected


@pytest.mark.micropython
def test_session_compiled_runs_in_a_node_heap(micropython: str, mpy_cross: str, tmp_path: pathlib.Path) -> None:
    """As on a board: precompiled, in 64 KB, with room to spare."""
    (tmp_path / "protocols").mkdir()
    (tmp_path / "tests" / "portable").mkdir(parents=True)
    for source in (ROOT / "protocols").glob("*.py"):
        subprocess.run([mpy_cross, "-o", str(tmp_path / "protocols" / (source.stem + ".mpy")), str(source)], check=True)
    subprocess.run([mpy_cross, "-o", str(tmp_path / "session_check.mpy"), str(ROOT / "tests/portable/session_check.py")], check=True)
    done = subprocess.run(
        [micropython, "-X", "heapsize=64k", "-c", "import sys; sys.argv[1:] = ['3', '200']; import session_check as s; s.__name__"],
        capture_output=True, text=True, timeout=60, env={"MICROPYPATH": str(tmp_path)}, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    heap = subprocess.run(
        [micropython, "-X", "heapsize=64k", "-c",
         "import gc; gc.collect(); a = gc.mem_alloc(); import protocols.session; gc.collect(); print(gc.mem_alloc() - a)"],
        capture_output=True, text=True, timeout=60, env={"MICROPYPATH": str(tmp_path)}, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert heap.returncode == 0, heap.stderr
    print("protocols.session and what it imports: %s bytes of heap" % heap.stdout.strip())
