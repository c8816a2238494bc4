"""Group commit: frames wait while the previous transaction is on its way to disk, then go in together.

Throughput comes from the batching, durability from the rule that a frame's
ACK is sent only by the callback that runs after its transaction committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocols import CounterWindow

from .layouts import Layout, Layouts
from .store import FRAME_OVERHEAD, ROW_OVERHEAD, Chunk, Store, StoredFrame, StoreError, WindowState, encode_body
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
    frame: StoredFrame
    readings: int
    layout: Layout
    owner: Any  # the node's session state; `owner.window` is its live CounterWindow
    window: CounterWindow  # owner.window when the frame was accepted; replaced on a counter reset


@dataclass
class CommitResult:
    committed: list[Pending]
    refused: list[Pending]  # not stored (buffer full with stop_acking, or a disk error): not acknowledged
    chunk: Chunk | None  # what was stored, as the forwarder reads it back


@dataclass
class _Outcome:
    stored: int = 0  # the first `stored` frames of the group are in chunk `chunk_id`; the rest were not stored
    chunk_id: int = 0
    dropped_readings: int = 0  # evicted to make room (drop_oldest)
    full: bool = False  # the budget was hit by this group
    fill: float = 0.0  # used / max_bytes after the transaction
    problem: str = ""  # a disk error, already phrased for the log


@dataclass
class _WindowPlan:
    """Taken on the event loop: each node's window before the group, and the counter each frame adds.

    Frames accepted before a counter reset (their window is no longer the node's) are
    stored and acknowledged, but their counters no longer belong in the window (None).
    """

    bases: dict[str, tuple[int, int]]
    counters: list[tuple[str, int] | None]

    def after(self, stored: int) -> dict[str, WindowState]:
        """The windows once the first `stored` frames of the group are on disk, and no others."""
        windows: dict[str, CounterWindow] = {}
        for mark in self.counters[:stored]:
            if mark is None:
                continue
            node, counter = mark
            window = windows.get(node)
            if window is None:
                window = windows[node] = CounterWindow(*self.bases[node])
            window.accept(counter)
        return {node: WindowState(w.highest, w.seen) for node, w in windows.items()}


def _window_plan(group: list[Pending]) -> _WindowPlan:
    bases: dict[str, tuple[int, int]] = {}
    counters: list[tuple[str, int] | None] = []
    for pending in group:
        live = pending.owner.window
        if pending.window is not live:
            counters.append(None)
            continue
        bases.setdefault(pending.node, (live.highest, live.seen))
        counters.append((pending.node, pending.counter))
    return _WindowPlan(bases, counters)


def _frame_cost(pending: Pending) -> int:
    return len(pending.frame.payload) + FRAME_OVERHEAD


def _commit(store: Store, group: list[Pending], plan: _WindowPlan, layouts: list[Layout], when_full: str, holding: bool) -> _Outcome:
    """Runs on the store thread: one transaction, making room first as configured.

    holding: a stop_acking episode is on; nothing is taken until the buffer is below ROOM_AGAIN,
    so that the frames a node keeps are one run, not every other one.
    """
    outcome = _Outcome()
    if holding and store.fill() >= ROOM_AGAIN:
        outcome.full = True
        outcome.fill = store.fill()
        return outcome
    make_room = False
    room = store.max_bytes - store.used_bytes - ROW_OVERHEAD
    body = encode_body([p.frame for p in group])
    if len(body) > room:
        outcome.full = True
        if when_full == "drop_oldest":
            make_room = True
        else:  # stop_acking: store the longest prefix that fits; the rest waits with its nodes
            fits, too_many, body = 0, len(group), b""  # what fits, by the encoded (compressed) size
            while too_many - fits > 1:
                middle = (fits + too_many) // 2
                candidate = encode_body([p.frame for p in group[:middle]])
                if len(candidate) <= room:
                    fits, body = middle, candidate
                else:
                    too_many = middle
            group = group[:fits]
    try:
        if group:
            readings = sum(p.readings for p in group)
            windows = plan.after(len(group))  # a refused tail must not be marked seen: its nodes resend it
            outcome.chunk_id, outcome.dropped_readings = store.commit(
                [p.frame for p in group], readings, windows, layouts, make_room=make_room, body=body
            )
            outcome.stored = len(group)
    except StoreError as error:
        outcome.problem = str(error)
    except Exception as error:  # a bug here must cost these frames their ACK, not the committer
        log.exception("commit failed")
        outcome.problem = "commit failed: %s" % error
    outcome.fill = store.fill()
    return outcome


class Committer:
    def __init__(self, worker: StoreWorker, layouts: Layouts, when_full: str, on_done: Callable[[CommitResult], None]) -> None:
        self._worker = worker
        self._layouts = layouts
        self._when_full = when_full
        self._on_done = on_done
        self._queue: list[Pending] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self.full_episode = False
        self.dropped_in_episode = 0
        self.last_error = ""

    def _group_size(self) -> int:
        """Frames for the next transaction: at most MAX_GROUP, and at most a quarter of the budget,
        so that with drop_oldest a group always fits once old rows are evicted."""
        limit = self._worker.store.max_bytes // 4 - ROW_OVERHEAD
        size = 0
        for count, pending in enumerate(self._queue[:MAX_GROUP]):
            size += _frame_cost(pending)
            if size > limit:
                return max(1, count)
        return min(len(self._queue), MAX_GROUP)

    def submit(self, pending: Pending) -> None:
        self._queue.append(pending)
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._idle.set()  # whatever happened, a drain must not wait for this task

    async def _run(self) -> None:
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
                plan = _window_plan(group)
                layouts = list({p.layout.id: p.layout for p in group if p.layout.id in self._layouts.unsaved}.values())
                holding = self.full_episode and self._when_full == "stop_acking"
                outcome = await self._worker.call(_commit, self._worker.store, group, plan, layouts, self._when_full, holding)
                self._report(outcome, len(group))
                stored = group[: outcome.stored]
                log.debug("group of %d: stored %d, fill %.2f", len(group), len(stored), outcome.fill)
                chunk = None
                if stored:
                    self._layouts.saved(layout.id for layout in layouts)
                    chunk = Chunk(outcome.chunk_id, [p.frame for p in stored], sum(p.readings for p in stored))
                self._on_done(CommitResult(stored, group[len(stored) :], chunk))
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
        elif outcome.stored and not outcome.full:
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
