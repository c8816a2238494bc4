"""Group commit: frames wait while the previous transaction is on its way to disk, then go in together.

Throughput comes from the batching, durability from the rule that a frame's
ACK is sent only by the callback that runs after its transaction committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from protocols import CounterWindow

from .store import ROW_OVERHEAD, Batch, Store, StoredBatch, StoreError, WindowState
from .store_worker import StoreWorker

log = logging.getLogger(__name__)

MAX_GROUP = 4096  # frames per transaction
EPISODE_CHECK_S = 1.0  # while full and idle, how often the fill level is looked at
ROOM_AGAIN = 0.9  # a full episode ends once the buffer is below this fraction of max_bytes


@dataclass
class Pending:
    """One accepted-but-not-yet-durable frame."""

    node: str
    counter: int
    batch: Batch
    window: CounterWindow  # the node's live window; the commit persists it with this counter accepted


@dataclass
class CommitResult:
    committed: list[tuple[Pending, StoredBatch]]
    refused: list[Pending]  # not stored (buffer full with stop_acking, or a disk error): not acknowledged


@dataclass
class _Outcome:
    ids: list[int]  # row ids of the first len(ids) frames of the group; the rest were not stored
    dropped_readings: int = 0  # evicted to make room (drop_oldest)
    full: bool = False  # the budget was hit by this group
    fill: float = 0.0  # used / max_bytes after the transaction
    problem: str = ""  # a disk error, already phrased for the log


def _commit(store: Store, group: list[Pending], when_full: str) -> _Outcome:
    """Runs on the store thread: make room as configured, then one transaction."""
    batches = [p.batch for p in group]
    outcome = _Outcome([])
    if not store.room_for(batches):
        outcome.full = True
        if when_full == "drop_oldest":
            outcome.dropped_readings = store.evict_oldest(sum(len(b.payload) + ROW_OVERHEAD for b in batches))[1]
        # Store the longest prefix that fits: the rest waits with its nodes (a group larger than
        # the whole budget, or stop_acking).
        room = store.max_bytes - store.used_bytes
        fits = 0
        for batch in batches:
            room -= len(batch.payload) + ROW_OVERHEAD
            if room < 0:
                break
            fits += 1
        group, batches = group[:fits], batches[:fits]
    windows: dict[str, CounterWindow] = {}
    for pending in group:
        window = windows.get(pending.node)
        if window is None:
            window = windows[pending.node] = CounterWindow(pending.window.highest, pending.window.seen)
        window.accept(pending.counter)
    states = {node: WindowState(w.highest, w.seen) for node, w in windows.items()}
    try:
        outcome.ids = store.commit(batches, states) if batches else []
    except StoreError as error:
        outcome.problem = str(error)
    outcome.fill = store.fill()
    return outcome


class Committer:
    def __init__(self, worker: StoreWorker, when_full: str, on_done: Callable[[CommitResult], None]) -> None:
        self._worker = worker
        self._when_full = when_full
        self._on_done = on_done
        self._queue: list[Pending] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self.full_episode = False
        self.dropped_in_episode = 0
        self.committed_frames = 0
        self.last_error = ""
        # stop_acking: per node, the lowest counter refused so far. Later frames of that node
        # are refused too until it is stored, so a node's frames are stored in counter order
        # and none falls out of the duplicate window (SPEC.md §4.3).
        self._refused_from: dict[str, int] = {}

    def _in_order(self, group: list[Pending]) -> tuple[list[Pending], list[Pending]]:
        allowed: list[Pending] = []
        held: list[Pending] = []
        for pending in group:
            limit = self._refused_from.get(pending.node)
            (held if limit is not None and pending.counter > limit else allowed).append(pending)
        return allowed, held

    def _group_size(self) -> int:
        """Frames for the next transaction: at most MAX_GROUP, and at most a quarter of the budget,
        so that with drop_oldest a group always fits once old rows are evicted."""
        limit = self._worker.store.max_bytes // 4
        size = 0
        for count, pending in enumerate(self._queue[:MAX_GROUP]):
            size += len(pending.batch.payload) + ROW_OVERHEAD
            if size > limit:
                return max(1, count)
        return min(len(self._queue), MAX_GROUP)

    def submit(self, pending: Pending) -> None:
        self._queue.append(pending)
        self._idle.clear()
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), EPISODE_CHECK_S if self.full_episode else None)
            except TimeoutError:  # full, and no frames coming: has the forwarder made room?
                fill = await self._worker.call(self._worker.store.fill)
                self._end_episode_below(fill)
                continue
            self._wake.clear()
            while self._queue:
                take = self._group_size()
                group, self._queue = self._queue[:take], self._queue[take:]
                group, held = self._in_order(group)
                outcome = await self._worker.call(_commit, self._worker.store, group, self._when_full)
                self._report(outcome, len(group))
                stored = group[: len(outcome.ids)]
                refused = group[len(stored) :] + held
                for pending in stored:
                    if self._refused_from.get(pending.node) == pending.counter:
                        del self._refused_from[pending.node]
                for pending in refused:
                    self._refused_from[pending.node] = min(pending.counter, self._refused_from.get(pending.node, pending.counter))
                self.committed_frames += len(stored)
                log.debug(
                    "group of %d: stored %d, refused %d (%d held back), fill %.2f",
                    len(group) + len(held),
                    len(stored),
                    len(refused),
                    len(held),
                    outcome.fill,
                )
                rows = [
                    StoredBatch(row_id, p.batch.topic, p.batch.payload, p.batch.readings)
                    for row_id, p in zip(outcome.ids, stored, strict=True)
                ]
                self._on_done(CommitResult(list(zip(stored, rows, strict=True)), refused))
            self._idle.set()
            if self._stopping:
                return

    def _report(self, outcome: _Outcome, frames: int) -> None:
        """Log a buffer-full episode once when it starts and once when it ends, never silently."""
        self.dropped_in_episode += outcome.dropped_readings
        if outcome.full and not self.full_episode:
            self.full_episode = True
            if self._when_full == "stop_acking":
                log.error("buffer full (max_bytes reached): not acknowledging new readings; nodes keep them")
            else:
                log.error("buffer full (max_bytes reached): dropping the oldest buffered readings to take new ones")
        elif outcome.ids and not outcome.full:
            self._end_episode_below(outcome.fill)
        if outcome.problem:
            if outcome.problem != self.last_error:
                log.error("%s; %d frames not acknowledged, nodes will resend them", outcome.problem, frames)
            self.last_error = outcome.problem
        else:
            self.last_error = ""

    def _end_episode_below(self, fill: float) -> None:
        if self.full_episode and fill < ROOM_AGAIN:
            self.full_episode = False
            log.warning("buffer has room again; %d readings were dropped while it was full", self.dropped_in_episode)
            self.dropped_in_episode = 0

    async def drain(self) -> None:
        """Commit what is queued, then return; used at shutdown."""
        self._stopping = True
        self._wake.set()
        await self._idle.wait()
