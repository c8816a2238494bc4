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


def _commit(store: Store, group: list[Pending], when_full: str) -> tuple[list[int] | None, tuple[int, int], str]:
    """Runs on the store thread: make room as configured, then one transaction."""
    batches = [p.batch for p in group]
    dropped = (0, 0)
    if not store.room_for(batches):
        if when_full == "stop_acking":
            return None, dropped, "full"
        need = sum(len(b.payload) + ROW_OVERHEAD for b in batches)
        dropped = store.evict_oldest(need)
        if not store.room_for(batches):
            return None, dropped, "full"
    windows: dict[str, CounterWindow] = {}
    for pending in group:
        window = windows.get(pending.node)
        if window is None:
            window = windows[pending.node] = CounterWindow(pending.window.highest, pending.window.seen)
        window.accept(pending.counter)
    states = {node: WindowState(w.highest, w.seen) for node, w in windows.items()}
    try:
        return store.commit(batches, states), dropped, ""
    except StoreError as error:
        return None, dropped, str(error)


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

    def submit(self, pending: Pending) -> None:
        self._queue.append(pending)
        self._idle.clear()
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
                ids, dropped, problem = await self._worker.call(_commit, self._worker.store, group, self._when_full)
                self._report(problem, dropped, len(group))
                if ids is None:
                    self._on_done(CommitResult([], group))
                    continue
                self.committed_frames += len(group)
                rows = [StoredBatch(row_id, p.batch.topic, p.batch.payload, p.batch.readings) for row_id, p in zip(ids, group, strict=True)]
                self._on_done(CommitResult(list(zip(group, rows, strict=True)), []))
            self._idle.set()
            if self._stopping:
                return

    def _report(self, problem: str, dropped: tuple[int, int], frames: int) -> None:
        """Log buffer-full episodes once at their start and once at their end, never silently."""
        if problem == "full" or dropped[1]:
            self.dropped_in_episode += dropped[1]
            if not self.full_episode:
                self.full_episode = True
                if self._when_full == "stop_acking":
                    log.error("buffer full (max_bytes reached): not acknowledging new readings; nodes keep them")
                else:
                    log.error("buffer full (max_bytes reached): dropping the oldest buffered readings to take new ones")
        elif self.full_episode:
            self.full_episode = False
            log.warning("buffer has room again; %d readings were dropped while it was full", self.dropped_in_episode)
            self.dropped_in_episode = 0
        if problem and problem != "full":
            if problem != self.last_error:
                log.error("%s; %d frames not acknowledged, nodes will resend them", problem, frames)
            self.last_error = problem
        elif not problem:
            self.last_error = ""

    async def drain(self) -> None:
        """Commit what is queued, then return; used at shutdown."""
        self._stopping = True
        self._wake.set()
        await self._idle.wait()
