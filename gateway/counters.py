"""Downlink frame counters: one sequence per node, reserved on disk ahead of use, never used twice (SPEC.md §4.1).

Every frame the gateway sends a node (ACK, TIME, REJECT, COMMAND, CONFIG) takes that node's next
counter, and a node's window (§4.3) takes a counter it has seen, or one below it by more than the
window, as a repeat: so a counter, once used for a node, is never used for it again, across
restarts, crashes and failed writes.

How, without a write per frame (issue 12's disk budget):

- Each node's counters are reserved in blocks of BLOCK: its limit is written to the store
  (`nodes.downlink`, Store.save_downlink, fsync'd) before any counter at or beyond the old limit is
  used, half a block ahead, so in steady state nothing waits. Limits due in the same turn of the
  event loop go in one transaction: 1,000 nodes after a power cut cost one fsync, not 1,000.
- The gateway-wide counter (`totals.downlink_counter`, reserved the same way) serves ids with no
  session (their REJECT unknown_node), and every node's sequence starts at its value: a new
  session's, and at a start every known node's unless its own limit is higher. A start reserves
  the gateway-wide counter from its stored limit, so it begins at or above every counter used before
  a crash, by any node that had no limit of its own above it. Hence a node may also use counters
  below the gateway-wide limit without a write of its own: after a fresh start or a new session,
  up to a block of frames cost no write at all.
- A reservation that fails (disk full, read-only) is logged once and tried again with backoff;
  meanwhile `take` says None for a node at its limit, and its frames wait in the port's queue
  (gateway/downlink.py), unbuilt. Nothing ever falls back to counters that may have been used.
- A node that REJECTs a request as `stale` has a window above our counters (the gateway lost its
  database, or a node row was evicted): its sequence moves to the next multiple of STALE_STEP above
  the rejected counter, reserved like any other, so it can never stay stuck.
- Past 2^32 - 1 there is none: `take` gives a value above MAX_COUNTER and gateway/downlink.py sends
  nothing to that node (one error line), rather than wrap into what every window calls STALE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from protocols.frame import MAX_COUNTER, node_hex

from .store import StoreError

log = logging.getLogger(__name__)

BLOCK = 65536  # counters reserved on disk at a time, per node and gateway-wide (SPEC.md §4.1)
FRESH = 2**31  # where the gateway-wide counter continues when its stored value is damaged: never a guess below it
STALE_STEP = 2**24  # a node that says our counters are stale is moved to the next multiple of this (256 such moves in 2^32)
RETRY_MIN_S = 1.0  # a failed reservation is tried again after this, doubling
RETRY_MAX_S = 30.0

# Writes limits: node id (16 hex digits) -> its new limit, and the gateway-wide limit (0: unchanged); raises StoreError.
Writer = Callable[[dict[str, int], int], Awaitable[None]]


class _Sequence:
    __slots__ = ("limit", "next", "spent", "wanted")

    def __init__(self, start: int, limit: int) -> None:
        self.next = start  # the counter the next frame gets
        self.limit = limit  # its own limit on disk: counters below it are reserved (0: none of its own)
        self.wanted = 0  # the limit asked for and not on disk yet (0: none)
        self.spent = False  # past MAX_COUNTER, said once


class DownlinkCounters:
    """The counter source of every port (gateway/downlink.py's CounterSource is `take`)."""

    def __init__(
        self,
        start: int,
        limit: int,
        write: Writer | None = None,
        stored: dict[str, int] | None = None,
        ready: Callable[[set[bytes]], None] = lambda nodes: None,
    ) -> None:
        """start, limit: the gateway-wide counter as reserved at start (Store.reserve); stored: node -> its
        limit on disk (Store.load_downlink). write: None only where nothing is ever written (tests, tools):
        then `limit` must cover everything. ready(nodes): limits were written (these nodes' ones among
        them): what waited for counters may go out."""
        self._next = start
        self._limit = limit
        self._wanted = 0  # the gateway-wide limit asked for and not on disk yet
        self._spent = False
        self._write = write
        self._stored = dict(stored or {})  # limits on disk of nodes with no sequence yet (no session)
        self._ready = ready
        self._nodes: dict[bytes, _Sequence] = {}
        self._due: set[bytes] = set()  # nodes whose wanted limit waits for the next write
        self._scheduled = False
        self._task: asyncio.Task[None] | None = None  # the write under way
        self._failing = False
        self._retry_s = RETRY_MIN_S
        self._closed = False

    # ------------------------------------------------------------ sessions

    def open(self, node_id: bytes) -> None:
        """The node has a session now (or restored at start): its sequence continues from its own limit on
        disk or from the gateway-wide counter, whichever is higher. Nothing happens for one already open."""
        if node_id in self._nodes:
            return
        limit = self._stored.pop(node_hex(node_id), 0)
        self._nodes[node_id] = _Sequence(max(limit, self._next), limit)

    def take(self, node_id: bytes) -> int | None:
        """The next counter of a frame to this node; None when it must wait for a reservation (asked for
        here); above MAX_COUNTER when there are none left."""
        sequence = self._nodes.get(node_id)
        if sequence is None:
            return self._take_gateway()
        counter = sequence.next
        if counter > MAX_COUNTER:
            if not sequence.spent:
                sequence.spent = True
                log.error("node %s: downlink counters used up (2^32): no more frames go to it", node_hex(node_id))
            return counter
        allowed = max(sequence.limit, self._limit)
        if counter >= allowed:
            self._want(node_id, sequence)
            return None
        sequence.next = counter + 1
        if sequence.next >= allowed - BLOCK // 2:
            self._want(node_id, sequence)
        return counter

    def peek(self, node_id: bytes) -> int | None:
        """The counter `take` would give now, without taking it (None: it would wait)."""
        sequence = self._nodes.get(node_id)
        if sequence is None:
            return None
        return sequence.next if sequence.next < max(sequence.limit, self._limit) or sequence.next > MAX_COUNTER else None

    def jump(self, node_id: bytes, rejected: int) -> int | None:
        """The node said our counter `rejected` is stale: its sequence moves to the next multiple of
        STALE_STEP above it (reserved before use). The new next counter, or None when it was there already."""
        sequence = self._nodes.get(node_id)
        if sequence is None:
            return None
        boundary = (rejected // STALE_STEP + 1) * STALE_STEP
        if boundary <= sequence.next:
            return None
        sequence.next = boundary
        if boundary >= max(sequence.limit, self._limit) - BLOCK // 2:
            self._want(node_id, sequence)
        return boundary

    def _take_gateway(self) -> int | None:
        counter = self._next
        if counter > MAX_COUNTER:
            if not self._spent:
                self._spent = True
                log.error("downlink counters used up (2^32 frames): no more frames go to ids with no session")
            return counter
        if counter >= self._limit:
            self._want_gateway()
            return None
        self._next = counter + 1
        if self._next >= self._limit - BLOCK // 2:
            self._want_gateway()
        return counter

    # ------------------------------------------------------------ reservations

    def _want(self, node_id: bytes, sequence: _Sequence) -> None:
        target = max(sequence.limit, self._limit, sequence.next) + BLOCK
        if sequence.wanted >= sequence.next + BLOCK // 2:
            return  # asked for already, far enough ahead
        sequence.wanted = target
        self._due.add(node_id)
        self._schedule(0.0)

    def _want_gateway(self) -> None:
        if self._wanted >= self._next + BLOCK // 2:
            return
        self._wanted = max(self._limit, self._next) + BLOCK
        self._schedule(0.0)

    def _schedule(self, delay: float) -> None:
        """One write for everything asked in this turn of the loop (and while a write is under way: the next one)."""
        if self._scheduled or self._task is not None or self._closed or self._write is None:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_later(delay, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._closed or self._write is None or not (self._due or self._wanted > self._limit):
            return
        nodes = {node_id: self._nodes[node_id].wanted for node_id in self._due}
        self._due = set()
        self._task = asyncio.get_running_loop().create_task(self._reserve(nodes, self._wanted if self._wanted > self._limit else 0))

    async def _reserve(self, nodes: dict[bytes, int], gateway: int) -> None:
        assert self._write is not None
        try:
            await self._write({node_hex(node_id): limit for node_id, limit in nodes.items()}, gateway)
        except Exception as error:  # StoreError; anything else is a bug, but must not stop every later reservation
            self._task = None
            self._due.update(nodes)  # asked again (with what was asked meanwhile) at the next try
            if not self._failing:
                log.error(
                    "%s; downlink counters not reserved: frames to the nodes that need them wait, trying again",
                    error,
                    exc_info=None if isinstance(error, StoreError) else error,
                )
                self._failing = True
            self._schedule(self._retry_s)
            self._retry_s = min(RETRY_MAX_S, self._retry_s * 2)
            return
        self._task = None
        if self._failing:
            log.info("downlink counters reserved again")
            self._failing = False
        self._retry_s = RETRY_MIN_S
        for node_id, limit in nodes.items():
            sequence = self._nodes[node_id]
            sequence.limit = max(sequence.limit, limit)
            if sequence.wanted <= sequence.limit:
                sequence.wanted = 0
        self._limit = max(self._limit, gateway)
        if self._due or self._wanted > self._limit:
            self._schedule(0.0)
        try:
            self._ready(set(nodes))
        except Exception:  # a bug in what waited for them: the counters stay usable
            log.exception("handing out reserved downlink counters failed")

    async def close(self) -> None:
        """At a stop: the write under way finishes (the store closes after); none starts after it."""
        self._closed = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
