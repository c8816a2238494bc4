"""Group commit: frames wait while the previous transaction is on its way to disk, then go in together.

Throughput comes from the batching, durability from the rule that a frame's
ACK is sent only by the callback that runs after its transaction committed.

A group is bounded by time as well as by size: while frames trickle in, the
committer gathers them for up to `commit_wait` seconds after the first one
arrived (a `[buffer]` key), or less for a frame that says so (`commit_within`:
a radio node's, whose ACK must make its receive windows, RADIO_COMMIT_S in
gateway/sessions.py), and commits at once when the group reaches
GROUP_READY_BYTES, or at a stop. Each commit rewrites at least the page its
chunk ends on and syncs it: at city load, one commit a frame would write a
4 KiB page and an fsync for every frame of 10 readings, while the gathered
group writes each page about once. At full speed the queue is past the size
bound whenever a commit ends, so nothing waits.

Events (READINGS with PRIORITY, SPEC.md §3.3) are committed on their own, in
chunks of events only, as soon as the transaction before is done: they do not
wait for a group to gather, and a chunk is evicted or published as a whole, so
an event must not share one with ordinary readings (Store.commit: a full
buffer evicts events last; the forwarder publishes them ahead of the backlog).
Their own commit costs an fsync each (bounded: at most EVENTS_PER_MINUTE a
node, gateway/router.py), ordinary frames nothing. Events do not starve the
ordinary frames: after a commit of events, the ordinary frames queued are
committed next, gathered or not (a node sending events as fast as the disk
takes them would otherwise keep every other node's readings unacknowledged).

Under drop_oldest an ordinary group never evicts an event: when only events
are left to evict, the group is not stored and its nodes keep it (they resend,
as under stop_acking), logged once per full episode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from protocols import CounterWindow

from .layouts import Layout, Layouts
from .metrics import Metrics
from .senml import Frame
from .store import FRAME_OVERHEAD, Chunk, Store, StoredFrame, StoreError, StoreFull, WindowState, encode_body
from .store_worker import StoreWorker

log = logging.getLogger(__name__)

MAX_GROUP = 4096  # frames per transaction
COMMIT_WAIT_S = 1.0  # the default of [buffer] commit_wait: an ACK still comes well before a node's retransmission at 2 s
GROUP_READY_BYTES = 8192  # a group this big (payload bytes) is committed at once: two pages of frames, one once compressed
LATE_S = 0.05  # a frame submitted this long after it arrived waited elsewhere first (the broker path)
# Where a frame is (gateway/router.py): on the broker-first path only (in the forwarder's memory, its node
# acknowledged on PUBACK), handed to the committer (maybe still in flight to the broker too), or safe
# (PUBACKed or committed, its node acknowledged): a commit passes over a frame that is safe already.
LIVE, DISK, SAFE = 0, 1, 2
NOT_HELD: Frame = ((), 0)  # Pending.samples of a frame on the disk path
EPISODE_CHECK_S = 1.0  # while full and idle, how often the fill level is looked at
ROOM_AGAIN = 0.9  # a full episode ends once the buffer is below this fraction of its budget


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
    # (samples, time) as decoded on arrival: a pack built from memory (forwarder.held_packs) needs no second
    # decode of the payload; dropped when the frame goes to disk (NOT_HELD), where the payload is what counts
    samples: Frame
    state: int = DISK  # LIVE, DISK or SAFE
    priority: bool = False  # an event (READINGS with PRIORITY): its own chunks, published ahead of the backlog
    # seconds after its arrival by which its group is committed, if sooner than commit_wait: a radio node's ACK
    # must be there before its receive windows close (gateway/air.py), a second or two after its uplink
    commit_within: float | None = None


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
    dropped_events: int = 0  # event frames among them (only once no ordinary readings were left)
    full: bool = False  # the budget was hit by this group
    why_full: str = ""  # which budget: max_bytes, or the disk when it is smaller
    fill: float = 0.0  # used / budget after the transaction
    problem: str = ""  # a disk error, already phrased for the log
    group_bytes: int = 0  # the largest chunk body the next commit should take
    evicted_layouts: set[int] = field(default_factory=set)  # layouts no longer on disk (their nodes idle)


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


def _commit(
    store: Store,
    group: list[Pending],
    plan: _WindowPlan,
    layouts: list[Layout],
    when_full: str,
    holding: bool,
    published: Collection[int] = (),
    priority: bool = False,
) -> _Outcome:
    """Runs on the store thread: one transaction, making room first as configured.

    holding: a stop_acking episode is on; nothing is taken until the buffer is below ROOM_AGAIN,
    so that the frames a node keeps are one run, not every other one.
    published: chunks the broker acknowledged, not yet deleted: evicted first, not counted as dropped.
    priority: the group is events (a chunk of their own).
    """
    outcome = _Outcome(group_bytes=store.max_group_bytes())
    # Layouts the store evicted with their idle node (Store._evict_idle) are written again by the
    # first commit that needs them, this one included.
    outcome.evicted_layouts = store.take_evicted_layouts()
    if outcome.evicted_layouts:
        layouts = list(
            {layout.id: layout for layout in [*layouts, *(p.layout for p in group if p.layout.id in outcome.evicted_layouts)]}.values()
        )
    if holding and store.fill() >= ROOM_AGAIN:
        outcome.full = True
        outcome.fill = store.fill()
        return outcome
    make_room = False
    room = store.room()
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
                [p.frame for p in group], readings, windows, layouts, make_room=make_room, body=body, published=published, priority=priority
            )
            outcome.stored = len(group)
            outcome.dropped_events = store.dropped_events
    except StoreFull:  # the estimate of room() was short: nothing stored, the nodes keep these frames
        outcome.full = True
    except StoreError as error:
        outcome.problem = str(error)
    except Exception as error:  # a bug here must cost these frames their ACK, not the committer
        log.exception("commit failed")
        outcome.problem = "commit failed: %s" % error
    outcome.evicted_layouts |= store.take_evicted_layouts()
    outcome.fill = store.fill()
    if outcome.full:
        outcome.why_full = store.budget().describe()
    return outcome


def _dropped_since(before: dict[str, int], now: dict[str, int]) -> int:
    """Frames the nodes say they dropped between two readings of their STATUS `dropped` (a node that rebooted counts from 0)."""
    return sum(count - before.get(node, 0) if count >= before.get(node, 0) else count for node, count in now.items())


def _waited(refused: set[tuple[str, int]], drops_before: dict[str, int], drops_now: dict[str, int]) -> str:
    """What an episode of not acknowledging cost, as the nodes tell it."""
    return (
        "%d frames from %d nodes were not acknowledged (the nodes kept them), and the nodes report %d frames dropped from their full rings"
        % (
            len(refused),
            len({node for node, _counter in refused}),
            _dropped_since(drops_before, drops_now),
        )
    )


class Committer:
    def __init__(
        self,
        worker: StoreWorker,
        layouts: Layouts,
        when_full: str,
        on_done: Callable[[CommitResult], None],
        node_drops: Callable[[], dict[str, int]] = dict,
        published: Callable[[], Collection[int]] = frozenset,
        commit_wait: float = COMMIT_WAIT_S,
        metrics: Metrics | None = None,
    ) -> None:
        self._worker = worker
        counted = metrics or Metrics("-", "-")  # the agent's registry; a committer of its own counts into a private one
        self._latency, self._failures = counted.commit, counted.commit_failures
        self._commit_wait = commit_wait
        self._queued_bytes = 0  # payload bytes in the queue
        self._queued_events = 0  # events in the queue: each is committed without waiting for a group
        self._events_last = False  # the last group taken was events: ordinary frames queued go next
        self._refusing_for_events = False  # in this full episode ordinary groups were refused: only events were left
        self._ready = asyncio.Event()  # the queue reached GROUP_READY_BYTES, or a stop began
        self.commits = 0  # transactions tried (tests count them)
        self._layouts = layouts
        self._when_full = when_full
        self._on_done = on_done
        self._queue: list[Pending] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._node_drops = node_drops  # node -> frames it says it dropped (its STATUS), to report episodes with
        self._published = published  # chunks acknowledged by the broker and not yet deleted
        self._group_bytes = worker.store.max_group_bytes()
        self.full_episode = False
        self.dropped_in_episode = 0
        self.dropped_events_in_episode = 0  # event frames among them
        self._drops_at_full: dict[str, int] = {}
        self._refused_full: set[tuple[str, int]] = set()  # (node, counter) not acknowledged in the full episode, each once
        self.problem = ""  # the disk error of the current episode, while frames cannot be written
        self._refused: set[tuple[str, int]] = set()  # (node, counter) not acknowledged during it, each once
        self._drops_at_problem: dict[str, int] = {}

    def _group_size(self) -> int:
        """Frames for the next transaction: at most MAX_GROUP, and at most a quarter of the data budget and
        of the WAL allowance, so that with drop_oldest a group always fits once old rows are evicted."""
        limit = self._group_bytes
        size = 0
        for count, pending in enumerate(self._queue[:MAX_GROUP]):
            size += _frame_cost(pending)
            if size > limit:
                return max(1, count)
        return min(len(self._queue), MAX_GROUP)

    def submit(self, pending: Pending) -> None:
        self._queue.append(pending)
        self._queued_bytes += _frame_cost(pending)
        self._queued_events += pending.priority
        # A frame that waited elsewhere first (held for the broker until broker_ack_wait) may be older
        # than the group being gathered: _gather counts the wait again from the oldest frame.
        if pending.priority or self._queued_bytes >= GROUP_READY_BYTES or time.time() - pending.frame.received > LATE_S:
            self._ready.set()
        elif pending.commit_within is not None:
            self._ready.set()  # _gather counts its wait again, to this frame's sooner deadline
        self._idle.clear()
        self._wake.set()

    async def _gather(self) -> None:
        """Wait until the queue is worth a transaction: GROUP_READY_BYTES of frames, its oldest frame
        commit_wait old (counted from its arrival, so a frame that waited elsewhere first does not wait
        twice), or a frame's own commit_within (a radio node's) is up."""
        while self._queue and not self._stopping and not self._queued_events and self._queued_bytes < GROUP_READY_BYTES:
            deadline = min(  # a short queue: below GROUP_READY_BYTES
                p.frame.received + (self._commit_wait if p.commit_within is None else min(p.commit_within, self._commit_wait))
                for p in self._queue
            )
            left = min(self._commit_wait, deadline - time.time())
            if left <= 0:
                return
            self._ready.clear()
            try:
                async with asyncio.timeout(left):  # not wait_for (forwarder.run)
                    await self._ready.wait()
            except TimeoutError:
                return

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._idle.set()  # whatever happened, a drain must not wait for this task

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(EPISODE_CHECK_S if self.full_episode else None):  # not wait_for (forwarder.run)
                    await self._wake.wait()
            except TimeoutError:  # full, and no frames coming: has the forwarder made room?
                fill = await self._worker.call(self._worker.store.fill)
                self._end_episode_below(fill)
                continue
            self._wake.clear()
            while self._queue:
                await self._gather()
                group, priority = self._take()
                group = [p for p in group if p.state != SAFE]  # the broker acknowledged these meanwhile
                if not group:
                    continue
                self.commits += 1
                plan = _window_plan(group)
                layouts = list({p.layout.id: p.layout for p in group if p.layout.id in self._layouts.unsaved}.values())
                holding = self.full_episode and self._when_full == "stop_acking"
                published = frozenset(self._published()) if self._when_full == "drop_oldest" or self.full_episode else frozenset()
                began = time.monotonic()
                outcome = await self._worker.call(
                    _commit, self._worker.store, group, plan, layouts, self._when_full, holding, published, priority
                )
                self._latency.observe(time.monotonic() - began)  # the store thread's queue included: what a node waits
                if outcome.problem:
                    self._failures.inc()
                self._group_bytes = outcome.group_bytes
                self._layouts.evicted(outcome.evicted_layouts)
                self._report(outcome, group, priority)
                stored = group[: outcome.stored]
                log.debug("group of %d: stored %d, fill %.2f", len(group), len(stored), outcome.fill)
                chunk = None
                if stored:
                    self._layouts.saved(layout.id for layout in layouts)
                    chunk = Chunk(outcome.chunk_id, [p.frame for p in stored], sum(p.readings for p in stored), priority=priority)
                self._on_done(CommitResult(stored, group[len(stored) :], chunk))
            self._idle.set()
            if self._stopping:
                return

    def _take(self) -> tuple[list[Pending], bool]:
        """The next group off the queue and whether it is events: the events queued (in the order they came,
        so each node's stay in order), or else the ordinary frames that make a group."""
        if self._queued_events:
            # Events first, but not twice in a row while ordinary frames wait (fairness: see the module's docstring).
            events = not self._events_last or len(self._queue) == self._queued_events
            self._events_last = events
            group: list[Pending] = []
            size = 0
            for pending in self._queue:  # bounded like an ordinary group (_group_size), so it fits once room is made
                if pending.priority == events:
                    size += _frame_cost(pending)
                    if group and (size > self._group_bytes or len(group) == MAX_GROUP):
                        break
                    group.append(pending)
            taken = {id(p) for p in group}
            self._queue = [p for p in self._queue if id(p) not in taken]
            if events:
                self._queued_events -= len(group)
            self._queued_bytes -= sum(_frame_cost(p) for p in group)
            return group, events
        self._events_last = False
        take = self._group_size()
        group, self._queue = self._queue[:take], self._queue[take:]
        self._queued_bytes -= sum(_frame_cost(p) for p in group)
        return group, False

    def _report(self, outcome: _Outcome, group: list[Pending], priority: bool = False) -> None:
        """Log a buffer-full episode and a disk-error episode once when it starts and once when it ends, never silently."""
        self.dropped_in_episode += outcome.dropped_readings
        if outcome.full and not outcome.stored and not outcome.problem and self._when_full == "drop_oldest" and not priority:
            if not self._refusing_for_events:
                log.error(
                    "buffer full, and only events are left to drop: ordinary readings are not acknowledged (their nodes keep them)"
                    " until there is room"
                )
            self._refusing_for_events = True
        if outcome.dropped_events and not self.dropped_events_in_episode:
            log.error("buffer full, and no ordinary readings are left to drop: dropping the oldest buffered events")
        self.dropped_events_in_episode += outcome.dropped_events
        refused = [(pending.node, pending.counter) for pending in group[outcome.stored :]]
        if outcome.full or self.full_episode:
            self._refused_full.update(refused)
        if outcome.full and not self.full_episode:
            self.full_episode = True
            self._drops_at_full = self._node_drops()
            if self._when_full == "stop_acking":
                log.error("buffer full (%s): not acknowledging new readings; nodes keep them", outcome.why_full)
            elif outcome.problem and not outcome.stored:  # dropping made no room: the disk itself is full
                log.error(
                    "buffer full (%s), and dropping the oldest buffered readings makes no room on the disk: not acknowledging new"
                    " readings; nodes keep them",
                    outcome.why_full,
                )
            else:
                log.error("buffer full (%s): dropping the oldest buffered readings to take new ones", outcome.why_full)
        elif outcome.stored and not outcome.full:
            self._end_episode_below(outcome.fill)
        if outcome.problem:
            if not self.problem:
                self._drops_at_problem = self._node_drops()
                log.error("%s; not acknowledging new readings until it can be written again (the nodes keep them)", outcome.problem)
            self.problem = outcome.problem
            self._refused.update(refused)
        elif outcome.stored and self.problem:
            log.warning(
                "the buffer can be written again; %s meanwhile (STATUS `dropped`)",
                _waited(self._refused, self._drops_at_problem, self._node_drops()),
            )
            self.problem = ""
            self._refused.clear()

    def _end_episode_below(self, fill: float) -> None:
        if self.full_episode and fill < ROOM_AGAIN:
            self.full_episode = False
            if self._when_full == "stop_acking":
                log.warning(
                    "buffer has room again; the gateway dropped no readings: %s while it was full (STATUS `dropped`)",
                    _waited(self._refused_full, self._drops_at_full, self._node_drops()),
                )
            else:
                log.warning(
                    "buffer has room again; %d readings were dropped while it was full%s",
                    self.dropped_in_episode,
                    " (%d event frames among them)" % self.dropped_events_in_episode if self.dropped_events_in_episode else "",
                )
            self.dropped_in_episode = 0
            self.dropped_events_in_episode = 0
            self._refusing_for_events = False
            self._refused_full.clear()

    async def drain(self) -> None:
        """Commit what is queued, then return; used at shutdown."""
        self._stopping = True
        self._ready.set()
        self._wake.set()
        await self._idle.wait()
