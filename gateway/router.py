"""Broker first or disk first: where an accepted READINGS frame goes, and when it is safe.

A frame is acknowledged to its node once it is durable somewhere (SPEC.md §4.2):
committed to the buffer on disk, or acknowledged by the broker (PUBACK). While
the broker answers, frames are held in the forwarder's memory and published
ahead of the backlog, and nothing is written for them. A frame goes to the
committer instead

- at once, when the broker cannot take it now: not connected, QoS 0 (no
  PUBACK), refusing or paused, the stop begun, `broker_ack_wait` = 0, the
  memory bound reached (forwarder.LIVE_FRAMES), a deadline missed recently, or
  the node's counter reset and none of its new frames committed yet (only a
  chunk on disk makes the reset window survive a crash: Sessions.safe);
- when its PUBACK has not come within `broker_ack_wait` seconds (a frame not yet
  on the wire is taken back and not published; one in flight is published
  again from disk only if that publish is not acknowledged after all: a
  duplicate then, never a loss);
- when the connection drops, the broker refuses a pack or the gateway stops:
  every held frame not acknowledged yet, in arrival order.

Events (READINGS with PRIORITY) take the same two paths under the same rules,
and one more: an event goes to disk first while an earlier event of the same
node went to disk and the broker does not have it yet (on its way to the
committer, or buffered and not PUBACKed: Forwarder.events_waiting): held in
memory it would be published ahead of that one. And when an event goes to
disk, the node's events still held in memory go first, in the order they
came: a chunk committed now would otherwise be published ahead of them. So a
node's events go out in the order the gateway took them.

A node may send at most EVENTS_PER_MINUTE events a minute (a token bucket of
that many, refilled over the minute): past it, its PRIORITY frames are handled
as ordinary readings (acknowledged and published on `readings`, just not
urgent), one log line when such an episode starts, counted in the status
(`events_demoted`). Each event costs a commit of its own (an fsync: SD card
wear, README "Durability"), and a flooding node must not take the disk and
the front of the queue from every other node.

A frame of no samples (allowed on the wire) is never held: nothing of it is
published, it goes to disk (its counter must be kept) and its chunk is deleted
once read.

A frame's states (committer.LIVE, DISK, SAFE), each changed on the event loop only:

    submit --(broker answers)--> LIVE --PUBACK--> SAFE (node ACKed)
    submit --(otherwise)-------> DISK --commit--> SAFE (node ACKed)
    LIVE --deadline / connection lost / refused / stop--> DISK
    DISK --late PUBACK--> SAFE (node ACKed; a commit not begun passes over it)

A frame committed after its deadline whose publish from memory is PUBACKed
after all (its commit under way or done) is on disk and at the broker: the
forwarder deletes that copy rather than publish it again (Forwarder.live:
a chunk holding frames still in flight from memory waits for their answer).

After a missed deadline, new frames go disk first until the broker has shown
that it answers well within the deadline again (Recovery): no held frame
waiting or in flight, and every readings PUBACK for RECOVER_S seconds within
RECOVER_FRACTION of `broker_ack_wait`. The log says so once when it starts and
once when it ends, not per frame.

Why a measured recovery, not "the held frames are answered" (as before) or a
backoff: on a link whose round trip sits near the deadline (a congested
cellular uplink, 1.1 s against 1 s), the held frames were answered a moment
after each miss, the next frames went broker first, missed again, and so on:
every frame in flight at a miss is published twice (from memory, and from
disk), about 28 % of the readings in the review's measurement. A backoff
would still probe the broker now and then and pay those duplicates at each
probe. The packs that go out from disk meanwhile are published anyway, so
timing their PUBACKs costs nothing and probes nothing: the router returns to
the broker first only when a frame held now would very likely be answered in
time, and stays on disk as long as the link is slow. The cost is disk writes
for RECOVER_S after the broker is quick again, never a reading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

from .committer import DISK, LIVE, NOT_HELD, SAFE, CommitResult, Committer, Pending
from .forwarder import Forwarder

log = logging.getLogger(__name__)

RECOVER_FRACTION = 0.5  # after a miss, a PUBACK this fraction of broker_ack_wait after its publish is "well within" ...
RECOVER_S = 10.0  # ... and the broker first again once every one for this long was


EVENTS_PER_MINUTE = 30  # events per node a minute (a burst of as many); past it PRIORITY frames are ordinary readings


class EventBudget:
    """Per node, a token bucket of EVENTS_PER_MINUTE events a minute; sans-I/O (the caller passes the clock)."""

    def __init__(self, per_minute: int = EVENTS_PER_MINUTE) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # node -> (tokens, when counted); absent: a full bucket
        self.over: set[str] = set()  # nodes in an episode past the budget (ends once their bucket is full again)

    def take(self, node: str, now: float) -> bool:
        """Whether this node may send one more event now (and if so it is counted)."""
        tokens, then = self._buckets.get(node, (self.per_minute, now))
        tokens = min(self.per_minute, tokens + (now - then) * self.per_minute / 60.0)
        if tokens >= self.per_minute:
            self.over.discard(node)
        allowed = tokens >= 1
        self._buckets[node] = (tokens - allowed, now)
        return allowed


class Recovery:
    """Whether a broker that missed a deadline answers well within it again; sans-I/O (the caller passes the clock).

    A run of quick answers starts with a readings PUBACK that came within `quick_s` of its publish;
    a slower one, or a pack still unanswered after `quick_s`, ends it. The broker has recovered
    once a run holds quick answers RECOVER_S apart: a run of one answer, however old, is not enough.
    """

    def __init__(self, wait_s: float) -> None:
        self.quick_s = wait_s * RECOVER_FRACTION
        self._since: float | None = None  # when the current run of quick answers began (None: no run)
        self._last = 0.0  # its latest answer

    def reset(self) -> None:
        self._since = None

    def answered(self, round_trip: float, now: float) -> None:
        if round_trip > self.quick_s:
            self._since = None
            return
        if self._since is None:
            self._since = now
        self._last = now

    def recovered(self, now: float, oldest_unanswered: float | None) -> bool:
        """oldest_unanswered: when the oldest readings pack still in flight was published (None: none is)."""
        if oldest_unanswered is not None and now - oldest_unanswered > self.quick_s:
            self._since = None  # it is slow already, whenever its PUBACK comes
        return self._since is not None and self._last - self._since >= RECOVER_S


class Router:
    def __init__(
        self,
        committer: Committer,
        forwarder: Forwarder,
        wait_s: float,
        safe: Callable[[Sequence[Pending]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._committer = committer
        self._forwarder = forwarder
        self._wait_s = wait_s
        self._safe = safe  # acknowledge frames the broker has (Sessions.safe)
        self._clock = clock  # the forwarder's (its PUBACK round trips), for Recovery
        self._recovery = Recovery(wait_s)
        self._held: deque[tuple[float, Pending]] = deque()  # (deadline, frame) held in memory, in arrival order
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._late = 0  # frames that missed the deadline in the current episode (0: none)
        self._disk_events: dict[int, Pending] = {}  # id() -> event handed to the committer, until committed or refused
        self._budget = EventBudget()
        self.events_demoted = 0  # PRIORITY frames handled as ordinary readings: their node was past its budget
        self.acked_by_broker = 0  # frames acknowledged to their nodes on PUBACK
        self.acked_on_disk = 0  # ... once committed
        self.missed_deadline = 0  # frames handed to disk because their PUBACK did not come in time
        forwarder.sink = self

    def submit(self, pending: Pending) -> None:
        if pending.priority and not self._budget.take(pending.node, self._clock()):
            self._demote(pending)
        if pending.priority and self._events_behind(pending.node):
            self._earlier_events_to_disk(pending)
            self._to_disk(pending)
        elif (
            self._wait_s
            and pending.readings
            and not self._closed
            and not pending.owner.reset_unsaved
            and self._forwarder.takes_held()
            and self._answering()
        ):
            pending.state = LIVE
            loop = asyncio.get_running_loop()
            self._held.append((loop.time() + self._wait_s, pending))
            if self._timer is None:
                self._timer = loop.call_at(self._held[0][0], self._expire)
            self._forwarder.hold(pending)
        else:
            if pending.priority:
                self._earlier_events_to_disk(pending)
            self._to_disk(pending)

    def _earlier_events_to_disk(self, pending: Pending) -> None:
        """An event goes to disk: its node's events held before it (waiting, or in flight: then a duplicate at
        worst) go first, in the order they came; this one's chunk would otherwise be published ahead of them
        (a held pack goes out after every stored one). Later ones stay held, behind it anyway."""
        for _deadline, held in self._held:
            if held is pending:
                break
            if held.priority and held.state == LIVE and held.node == pending.node:
                self._to_disk(held)

    def close(self) -> None:
        """The gateway stops: new frames go to disk (the forwarder publishes no more)."""
        self._closed = True

    def _answering(self) -> bool:
        """False after a missed deadline until every held frame is answered (or given up on) and the broker
        answers well within the deadline again (Recovery)."""
        if self._late and not self._forwarder.holds() and self._recovery.recovered(self._clock(), self._forwarder.oldest_unanswered()):
            log.info(
                "the broker answers in time again (within %g s for %g s); readings go to it first (%d frames went to disk meanwhile)",
                self._recovery.quick_s,
                RECOVER_S,
                self._late,
            )
            self._late = 0
        return not self._late

    def _demote(self, pending: Pending) -> None:
        pending.priority = False
        self.events_demoted += 1
        if pending.node not in self._budget.over:
            self._budget.over.add(pending.node)
            log.warning(
                "node %s sends more than %d events a minute: its events are handled as ordinary readings until it sends fewer"
                " (status events_demoted)",
                pending.node,
                self._budget.per_minute,
            )

    def _events_behind(self, node: str) -> bool:
        """Whether an earlier event of this node is on its way to disk, or buffered and not PUBACKed yet."""
        if self._disk_events:
            self._disk_events = {key: pending for key, pending in self._disk_events.items() if pending.state != SAFE}
        return any(pending.node == node for pending in self._disk_events.values()) or self._forwarder.events_waiting(node)

    def _to_disk(self, pending: Pending) -> None:
        if pending.priority:
            self._disk_events[id(pending)] = pending
        pending.state = DISK
        pending.samples = NOT_HELD  # the payload goes to disk; the decoded copy would only cost memory while it waits
        self._committer.submit(pending)

    def _expire(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        missed = 0
        while self._held and (self._held[0][1].state != LIVE or self._held[0][0] <= now):
            _deadline, pending = self._held.popleft()
            if pending.state == LIVE:
                self._to_disk(pending)  # not yet in a pack on the wire: the forwarder passes over it
                missed += 1
        if missed:
            self.missed_deadline += missed
            if not self._late:
                log.warning(
                    "the broker did not acknowledge readings within %g s (broker_ack_wait): they are committed to disk, and new"
                    " readings go to disk first until it answers within %g s again for %g s",
                    self._wait_s,
                    self._recovery.quick_s,
                    RECOVER_S,
                )
            self._late += missed
            self._recovery.reset()
        if self._held:
            self._timer = asyncio.get_running_loop().call_at(self._held[0][0], self._expire)

    # ------------------------------------------------------------ HeldSink (the forwarder's reports)

    def acked(self, frames: Sequence[Pending]) -> None:
        fresh = [pending for pending in frames if pending.state != SAFE]
        for pending in fresh:
            pending.state = SAFE
        self.acked_by_broker += len(fresh)
        self._safe(fresh)

    def round_trip(self, seconds: float) -> None:
        """A readings pack (from memory or from disk) was PUBACKed this long after its publish."""
        if self._late:
            self._recovery.answered(seconds, self._clock())
            self._answering()  # the answer that completes the run ends the episode (else the next frame does)

    def lost(self, frames: Sequence[Pending]) -> None:
        for pending in frames:
            if pending.state == LIVE:
                if pending.priority:
                    self._earlier_events_to_disk(pending)
                self._to_disk(pending)

    def all_lost(self) -> None:
        """Every held frame not acknowledged yet to disk, in the order the frames came."""
        held, self._held = self._held, deque()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.lost([pending for _deadline, pending in held])

    # ------------------------------------------------------------ the committer's reports

    def committed(self, result: CommitResult) -> list[int]:
        """The positions in result.chunk of frames the broker acknowledged while their commit was under way
        (a late PUBACK): the forwarder does not publish them again (Forwarder.live)."""
        for pending in result.refused:  # not stored: its node sends it again
            self._disk_events.pop(id(pending), None)
        delivered = []
        for position, pending in enumerate(result.committed):
            if pending.state == SAFE:
                delivered.append(position)
            else:
                pending.state = SAFE
                self.acked_on_disk += 1
        return delivered
