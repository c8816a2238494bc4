"""Per-node downlink counters (gateway/counters.py, SPEC.md §4.1): reserved on a real store ahead of use,
coalesced, never used twice whatever fails, and moved ahead when a node says they are stale.

A "restart" here is what the agent does at a start: the gateway-wide counter reserved from its stored
limit (Store.reserve), the nodes' limits loaded (Store.load_downlink), every known node opened. A crash
is a restart without anything written at a stop (the counters write nothing at a stop anyway).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import Callable

import pytest

from gateway import counters as ctr
from gateway.counters import BLOCK, FRESH, STALE_STEP, DownlinkCounters
from gateway.downlink import Downlink
from gateway.store import Store, StoreError
from gateway.store_worker import StoreWorker
from protocols import StreamDecoder, messages

A = bytes.fromhex("0000a4cf12b3c4d5")
B = bytes.fromhex("0000a4cf12b3c4d6")
UNKNOWN = bytes.fromhex("00000000000000ee")


class Gateway:
    """The counters of one gateway run on a real store, as the agent builds them."""

    def __init__(self, data_dir: pathlib.Path) -> None:
        self.store = Store(data_dir, 10**9)
        self.worker = StoreWorker(self.store)
        self.writes: list[tuple[dict[str, int], int]] = []
        self.failing = False
        self.ready: list[set[bytes]] = []
        start = self.store.reserve("downlink_counter", BLOCK, FRESH)
        self.counters = DownlinkCounters(start, start + BLOCK, self._write, self.store.load_downlink(), self.ready.append)

    async def _write(self, limits: dict[str, int], gateway: int) -> None:
        self.writes.append((limits, gateway))
        if self.failing:
            raise StoreError("cannot reserve downlink counters in %s: disk I/O error" % self.store.path)
        await self.worker.call(self.store.save_downlink, limits, gateway)

    def take(self, node: bytes, count: int) -> list[int | None]:
        return [self.counters.take(node) for _ in range(count)]

    async def crash(self) -> None:
        """The process ends: a write under way finishes or not (here: it does), none starts after."""
        await self.counters.close()
        self.worker.close()


async def settled(condition: Callable[[], bool] = lambda: True) -> None:
    """Until the writes asked for have run (a few loop turns and the store's thread)."""
    for _ in range(500):
        await asyncio.sleep(0.005)
        if condition():
            return
    raise AssertionError("not settled")


async def test_a_nodes_counters_keep_growing_across_restarts(tmp_path: pathlib.Path) -> None:
    gateway = Gateway(tmp_path)
    gateway.counters.open(A)
    first = gateway.take(A, 3)
    assert first == [0, 1, 2], "a fresh gateway: the node starts at the gateway-wide counter"
    used = gateway.take(A, BLOCK // 2)  # half the gateway-wide block: the node's own block is asked for
    await settled(lambda: bool(gateway.ready))
    used += gateway.take(A, BLOCK)  # past the gateway-wide limit, on its own
    await settled(lambda: len(gateway.ready) == 2)
    assert None not in used and used == list(range(3, BLOCK // 2 + BLOCK + 3)), "reserved ahead: nothing waited"
    assert [limits for limits, _gateway in gateway.writes] == [{A.hex(): 2 * BLOCK}, {A.hex(): 3 * BLOCK}]
    await gateway.crash()
    again = Gateway(tmp_path)
    again.counters.open(A)
    assert again.take(A, 1) == [None], "its own limit is above the gateway-wide one: it continues there once reserved"
    await settled(lambda: bool(again.ready))
    (next_one,) = again.take(A, 1)
    assert next_one == 3 * BLOCK > max(used), "never below a counter the node was sent"
    again.counters.open(B)
    assert again.take(B, 1) == [BLOCK], "a node with no limit of its own starts at the gateway-wide counter (reserved from its limit)"
    await again.crash()


async def test_a_new_session_starts_above_every_gateway_wide_counter(tmp_path: pathlib.Path) -> None:
    gateway = Gateway(tmp_path)
    to_unknown = gateway.take(UNKNOWN, 5)  # REJECT unknown_node to an id with no session
    gateway.counters.open(UNKNOWN)  # ... which then says HELLO
    (first,) = gateway.take(UNKNOWN, 1)
    assert first is not None and first > max(c for c in to_unknown if c is not None)
    assert gateway.take(B, 1) == [first], "the gateway-wide counter stays for ids with no session (another id: no clash)"
    await gateway.crash()


async def test_a_thousand_nodes_needing_counters_cost_one_write(tmp_path: pathlib.Path) -> None:
    """A power cut: every node says HELLO at once, after a jump put them all at their limit."""
    gateway = Gateway(tmp_path)
    nodes = [bytes.fromhex("0000000001%06x" % index) for index in range(1000)]
    for node in nodes:
        gateway.counters.open(node)
        gateway.counters.jump(node, 0)  # all at STALE_STEP, far above anything reserved
    assert {gateway.counters.take(node) for node in nodes} == {None}, "none used before its reservation is on disk"
    await settled(lambda: bool(gateway.ready))
    assert len(gateway.writes) == 1 and len(gateway.writes[0][0]) == 1000
    assert gateway.ready == [set(nodes)]
    assert {gateway.counters.take(node) for node in nodes} == {STALE_STEP}
    await gateway.crash()
    assert Store(tmp_path, 10**9).load_downlink() == {node.hex(): STALE_STEP + BLOCK for node in nodes}


async def test_a_failed_reservation_never_lets_a_counter_be_used_twice(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old gateway fell back to `limit - BLOCK` on a failed write: after a restart those counters came again."""
    monkeypatch.setattr(ctr, "RETRY_MIN_S", 0.01)
    caplog.set_level(logging.INFO, logger="gateway.counters")
    gateway = Gateway(tmp_path)
    gateway.counters.open(A)
    gateway.failing = True
    taken = gateway.take(A, BLOCK + 100)
    used = [c for c in taken if c is not None]
    assert used == list(range(BLOCK)) and taken[BLOCK:] == [None] * 100, "at the persisted limit: wait, never beyond"
    await settled(lambda: len(gateway.writes) >= 4)  # tried again, and again
    errors = [r.getMessage() for r in caplog.records if r.name == "gateway.counters" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "disk I/O error; downlink counters not reserved" in errors[0], "logged once"
    assert gateway.take(A, 1) == [None]
    await gateway.crash()  # the disk never took the reservation
    again = Gateway(tmp_path)
    again.counters.open(A)
    (first,) = again.take(A, 1)
    assert first is not None and first >= BLOCK, "a restart continues above every counter used"

    again.failing = True
    again.counters.jump(A, first)
    assert again.take(A, 1) == [None]
    await settled(lambda: len(again.writes) >= 2)
    again.failing = False
    await settled(lambda: bool(again.ready))
    assert again.take(A, 1) == [STALE_STEP], "the write went through at a retry: counters again"
    assert "downlink counters reserved again" in caplog.text
    await again.crash()


async def test_a_stale_jump_is_on_disk_before_it_is_used(tmp_path: pathlib.Path) -> None:
    gateway = Gateway(tmp_path)
    gateway.counters.open(A)
    gateway.take(A, 10)
    assert gateway.counters.jump(A, 9) == STALE_STEP
    assert gateway.counters.jump(A, 9) is None, "once: a node repeating itself moves nothing"
    assert gateway.take(A, 1) == [None]
    await settled(lambda: bool(gateway.ready))
    assert gateway.take(A, 2) == [STALE_STEP, STALE_STEP + 1]
    assert gateway.counters.jump(A, 3 * STALE_STEP + 5) == 4 * STALE_STEP
    await gateway.crash()  # before that jump's reservation: the first one's is on disk
    again = Gateway(tmp_path)
    again.counters.open(A)
    assert again.take(A, 1) == [None]
    await settled(lambda: bool(again.ready))
    assert again.take(A, 1) == [STALE_STEP + BLOCK], "where the first jump's reservation ends"
    await again.crash()


def test_counters_used_up_are_never_wrapped() -> None:
    counters = DownlinkCounters(2**32 - 2, 2**40)
    counters.open(A)
    assert [counters.take(A) for _ in range(3)] == [2**32 - 2, 2**32 - 1, 2**32]  # the last: none (above MAX_COUNTER)
    assert counters.jump(A, 2**32 - 1) is None and counters.take(A) == 2**32, "used up stays used up"


def test_frames_to_a_node_without_counters_wait_in_the_queue_unbuilt() -> None:
    """Not dropped, not built: the other nodes' frames go out meanwhile, and these once counters are there."""
    counters = DownlinkCounters(0, BLOCK)  # no writer: no reservation ever lands by itself here
    counters.open(A)
    counters.open(B)
    counters.jump(A, 0)  # A waits for a reservation
    queue = Downlink(counters.take)
    queue.ack(A, [1])
    queue.time(A)
    queue.frame(A, messages.COMMAND, {"id": 1, "action": "reboot"}, counter=7)
    queue.ack(B, [1])
    queue.time(B)
    decoder = StreamDecoder()
    decoder.feed(queue.take(4096))
    out = decoder.drain()
    assert [(m.type, m.node_id, m.counter) for m in out] == [  # type: ignore[union-attr]
        (messages.ACK, B, 0),
        (messages.TIME, B, 1),
        (messages.COMMAND, A, 7),  # its own counter: nothing to wait for
    ]
    assert len(queue) == 2 and queue.dropped == {}
    counters._nodes[A].limit = STALE_STEP + BLOCK  # as a reservation that landed does
    decoder.feed(queue.take(4096))
    assert [(m.type, m.counter) for m in decoder.drain()] == [(messages.ACK, STALE_STEP), (messages.TIME, STALE_STEP + 1)]  # type: ignore[union-attr]
    assert not queue


async def test_a_bug_under_a_reservation_does_not_stop_the_next_ones(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctr, "RETRY_MIN_S", 0.01)
    gateway = Gateway(tmp_path)
    real = gateway.counters._write
    calls: list[int] = []

    async def once_broken(limits: dict[str, int], limit: int) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        assert real is not None
        await real(limits, limit)

    gateway.counters._write = once_broken
    gateway.counters.open(A)
    gateway.counters.jump(A, 0)
    assert gateway.take(A, 1) == [None]
    await settled(lambda: bool(gateway.ready))
    assert gateway.take(A, 1) == [STALE_STEP] and len(calls) == 2
    await gateway.crash()
