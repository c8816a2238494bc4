"""Buffer -> broker: SenML packs built from stored chunks, an inflight window of QoS 1 publishes, live data first.

Frames the router (gateway/router.py) sends broker-first are held in memory,
never written: built into packs per node the same way as live chunks, served
first, and reported back on PUBACK (their nodes are acknowledged then), or
when they can no longer be delivered from memory (the connection dropped, the
broker refused one, the gateway stops): they go to disk then. They are never
resent from memory, and a held frame the router took back (its deadline
passed) before its pack went out is not published at all. Every readings
PUBACK, from memory or from disk, tells the router its round trip: after a
missed deadline it waits for quick ones before holding frames again.

A held frame whose deadline passed while its pack was in flight is committed
too, and may still be PUBACKed. The chunk it was committed in waits ("parked")
until the packs from memory holding its frames are answered: frames the
broker acknowledged that way are not published from disk again (the PUBACK
covered exactly those frames, built from the same bytes), and a chunk whose
every frame the broker has is deleted without being published. If the
connection drops first, the parked chunk is read as backlog like any other.

Chunks committed while connected are live: they are turned into packs (one
per node, every frame the waiting chunks hold) and served before the backlog
whenever a slot in the window frees up; on a link slower than the live load,
chunks past LIVE_FRAMES waiting frames are left on disk for the backlog read.
A publish the broker refuses pauses the readings for REFUSED_RETRY_S, its
pack kept for resending. The chunks already on disk at the first connect
(and those committed while the broker was away) form the backlog, read
oldest first, many chunks at a time, so that one node's frames
from many group commits travel in one pack; a read ends once one node's
frames fill a pack, so a read is as small as full packs allow.

Every pack remembers the chunks its frames came from, and every chunk counts
the packs (and node groups not yet made into packs) still outstanding for it:
a chunk leaves the buffer as soon as the last of them is acknowledged, not
when a whole read is. What was built is kept across reconnects: packs that
were in flight when the connection dropped are published again, acknowledged
ones never are, and the backlog read goes on from where it was. The uplink
makes paho forget its own unacknowledged messages on each new connection
(gateway/uplink.py), so the forwarder is the only one that resends.

Events (READINGS with PRIORITY, SPEC.md §3.3; chunks of their own, committer.py)
go on `{prefix}/{gw}/nodes/{node}/events` ahead of everything else: held ones
from memory, live chunks of events, and the events on disk, which a read of
their own (Store's index of events) fetches at each connect before any of the
ordinary backlog. They wait in one queue ordered by when they came (their
first frame's place in the buffer; held ones after every stored one), resent
ones included, so a node's events go out in the order the gateway took them: a
live event waits until the events on disk before it are read. The ordinary
backlog read passes over chunks of events.

Latest-value retained messages (status topics) are not buffered: the newest
one per topic is sent when connected, and sent again after a reconnect if the
broker had not acknowledged it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from array import array
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import cbor2

from . import senml
from .committer import LIVE, Pending
from .layouts import Layout, Layouts
from .metrics import Metrics
from .senml import CONTENT_TYPE
from .store import Chunk, Store, StoreError
from .store_worker import StoreWorker
from .uplink import Uplink

log = logging.getLogger(__name__)

PACK_READINGS = 500  # readings in one MQTT message at most
BUILD_GROUPS = 256  # node groups made into packs at a time
BACKLOG_FRAMES = 40_960  # frames read from disk at a time at most (many nodes: each still gets a large pack)
# Acknowledged chunks are deleted in batches (Store.delete: DELETE_SLICE chunks a transaction, no fsync): a
# delete rewrites the pages it touches (a leaf, its parent, the freelist), so one every 0.2 s for a chunk or
# two would cost about as many pages as the commits themselves; a drain after an outage frees hundreds a time.
# Until deleted, acknowledged chunks are the first a full buffer evicts (Store.commit's `published`).
DELETE_EVERY = 512  # acknowledged chunks collected before a delete
DELETE_AFTER_S = 5.0  # ... or after this long
PUMP_TICK_S = 0.2  # the pump looks at its work at least this often
REFUSED_RETRY_S = 5.0  # after the broker refused a publish (quota, authorisation), no readings go out for this long
# Frames of live chunks waiting in RAM to be made into packs. Past it the uplink is slower than the
# live load: the waiting chunks are left to the backlog read (they are on disk already), so RAM stays
# bounded however long that lasts, and one build on the event loop handles at most this many frames.
# 4,096 is about 40 s of the field load (400 readings/s in frames of 4), a few MB (a held frame keeps its
# samples as decoded on arrival, about 600 B for 10 samples: 2.5 MB at most).
LIVE_FRAMES = 4_096
# A node's events on disk are read this many frames at a time at most, and only while fewer than the window's
# packs of them wait to go out (like the ordinary backlog): a buffer full of events is not built into RAM at once.
EVENT_READ_FRAMES = 1_024
READ_RETRY_S = 5.0  # a backlog read the store could not do (StoreError) is tried again after this
FRAME_BITS = 20  # a frame is named by its chunk id << FRAME_BITS | its position in the chunk
POSITION = (1 << FRAME_BITS) - 1
READINGS, EVENTS = "readings", "events"  # the topics' last level: ordinary frames, and those with PRIORITY
HELD_RANK = 1 << 62  # the rank of event packs held in memory: after every stored event (ranks of those are frame refs)


@dataclass(slots=True)
class Pack:
    topic: str
    payload: bytes
    chunks: tuple[int, ...]  # the chunks whose frames it carries
    frames: array[int]  # those frames (FRAME_BITS)
    held: tuple[Pending, ...] = ()  # or the frames held in memory it carries (then no chunks)
    sent: float = 0.0  # when it was last published (the forwarder's clock)
    rank: int = 0  # events: the order they go out in (their first frame's ref, or HELD_RANK + n); 0: ordinary readings


@dataclass(slots=True)
class Retained:
    topic: str
    payload: bytes


@dataclass(slots=True)
class NodeFrames:
    """One node's frames of a read, kept lean: the payloads end to end in one buffer, their
    lengths, arrival times and chunk ids in arrays, no object per frame. A backlog read holds
    thousands of frames until its packs are built; lean frames let it hold more of them, so
    each node's pack is larger and the broker sees fewer messages."""

    layout: Layout
    payloads: bytearray = field(default_factory=bytearray)
    lengths: array[int] = field(default_factory=lambda: array("H"))
    received: array[float] = field(default_factory=lambda: array("d"))
    frames: array[int] = field(default_factory=lambda: array("q"))  # each frame's chunk and position (FRAME_BITS)
    readings: float = 0.0  # estimated from the chunks' averages: where a read may end

    def chunk_ids(self) -> set[int]:
        return {ref >> FRAME_BITS for ref in self.frames}


@dataclass
class Built:
    """One node group made into packs. A frame that does not decode (it passed the protocol's checks on
    arrival, so the disk damaged it) costs itself only: it is left out, the rest is published."""

    packs: list[Pack] = field(default_factory=list)
    damaged: array[int] = field(default_factory=lambda: array("q"))  # refs of the frames left out (FRAME_BITS)
    why: list[str] = field(default_factory=list)  # what is wrong with each


@dataclass
class Grouped:
    groups: list[NodeFrames]
    damaged: list[tuple[int, str]]  # (chunk id, why): chunks that cannot be read, left on disk and reported
    last_id: int  # the newest chunk looked at, skipped ones included (0: none)
    delivered: list[int] = field(default_factory=list)  # frames passed over as delivered already (FRAME_BITS)


def group_frames(
    chunks: Iterable[Chunk],
    layouts: Layouts,
    skip: frozenset[int] = frozenset(),
    fill: bool = False,
    delivered: dict[int, set[int]] | None = None,
) -> Grouped:
    """The frames of these chunks by node layout, in arrival order.

    skip: chunks already in hand (their packs built or acknowledged), passed over.
    fill: stop after the chunk that fills one node's pack (a backlog read).
    delivered: chunk id -> positions of its frames the broker has already (from memory), passed over.
    """
    groups: dict[int, NodeFrames] = {}
    damaged: list[tuple[int, str]] = []
    passed: list[int] = []
    last_id = 0
    for chunk in chunks:
        last_id = chunk.id
        if chunk.id in skip:
            continue
        if chunk.damaged:
            damaged.append((chunk.id, chunk.damaged))
            continue
        unknown = [frame.layout for frame in chunk.frames if frame.layout not in layouts.by_id]
        if unknown:
            damaged.append((chunk.id, "channel layout %d is not in the database" % unknown[0]))
            continue
        per_frame = chunk.readings / max(1, len(chunk.frames))
        full = False
        known = delivered.get(chunk.id) if delivered else None
        for position, (layout_id, received, payload) in enumerate(chunk.frames):
            if known and position in known:
                passed.append(chunk.id << FRAME_BITS | position)
                continue
            group = groups.get(layout_id)
            if group is None:
                group = groups[layout_id] = NodeFrames(layouts.by_id[layout_id])
            group.payloads += payload
            group.lengths.append(len(payload))
            group.received.append(received)
            group.frames.append(chunk.id << FRAME_BITS | position)
            group.readings += per_frame
            full = full or group.readings >= PACK_READINGS
        if fill and full:
            break
    return Grouped(list(groups.values()), damaged, last_id, passed)


def _frames(group: NodeFrames, built: Built) -> Iterator[tuple[senml.Frame, int, int]]:
    """((samples, time), readings, frame ref) of each frame, decoded one at a time; one that does not decode goes into built.damaged."""
    view = memoryview(group.payloads)
    start = 0
    for length, received, ref in zip(group.lengths, group.received, group.frames, strict=True):
        payload = view[start : start + length]
        start += length
        try:
            fields = cbor2.loads(payload)
            samples = fields[1]
            base_time = fields.get(0)
            if not isinstance(samples, list) or len(samples) % 3:
                raise TypeError("samples are not a list of triples")
        except Exception as error:  # checked on arrival: whatever fails here, the disk damaged it
            built.damaged.append(ref)
            built.why.append("%s: %s" % (type(error).__name__, error))
            continue
        yield (samples, round(received, 3) if base_time is None else base_time), len(samples) // 3, ref


def build_packs(group: NodeFrames, topic_base: str, kind: str = READINGS) -> Built:
    """One node's frames as SenML packs of at most PACK_READINGS readings, each naming its chunks.

    Decoded a pack's worth at a time, so one node with a long backlog costs one pack of memory.
    """
    built = Built()
    _pack(group.layout, topic_base, _frames(group, built), built, kind)
    return built


def _pack(layout: Layout, topic_base: str, items: Iterable[tuple[senml.Frame, int, int]], built: Built, kind: str = READINGS) -> None:
    """One node's (frame, readings, ref) as SenML packs of at most PACK_READINGS readings into built, on the
    node's `kind` topic (READINGS or EVENTS); a frame SenML cannot carry goes into built.damaged."""
    topic = "%s/nodes/%s/%s" % (topic_base, layout.node, kind)
    frames: list[senml.Frame] = []
    refs = array("q")
    count = 0

    def pack() -> None:
        try:
            payload = senml.pack(layout.node, layout.channels, frames)
            kept = refs
        except Exception:  # a value SenML cannot carry: find the frames that hold one, each costs itself
            good: list[senml.Frame] = []
            kept = array("q")
            for frame, ref in zip(frames, refs, strict=True):
                try:
                    senml.pack(layout.node, layout.channels, [frame])
                except Exception as error:
                    built.damaged.append(ref)
                    built.why.append("%s: %s" % (type(error).__name__, error))
                    continue
                good.append(frame)
                kept.append(ref)
            if not good:
                return
            payload = senml.pack(layout.node, layout.channels, good)
        chunks = dict.fromkeys(ref >> FRAME_BITS for ref in kept)  # an ordered set
        built.packs.append(Pack(topic, payload, tuple(chunks), kept, rank=kept[0] if kind == EVENTS else 0))

    for frame, readings, ref in items:
        if not readings:  # a frame of no samples (allowed on the wire) has nothing to publish: no empty pack `[]`
            continue
        if count and count + readings > PACK_READINGS:
            pack()
            frames, refs, count = [], array("q"), 0
        frames.append(frame)
        refs.append(ref)
        count += readings
    if frames:
        pack()


def build_groups(groups: list[NodeFrames], topic_base: str, kind: str = READINGS) -> list[Built]:
    """Each group's packs and left-out frames. Touches no tally: this runs on the store thread, and
    chunks are counted on the event loop only (Tally)."""
    return [build_packs(group, topic_base, kind) for group in groups]


def damaged_frames(group: NodeFrames, built: Built) -> list[tuple[int, str]]:
    """(chunk id, what was lost) for each chunk with frames left out of the group's packs."""
    by_chunk: dict[int, list[str]] = {}
    for ref, why in zip(built.damaged, built.why, strict=True):
        by_chunk.setdefault(ref >> FRAME_BITS, []).append(why)
    per_frame = group.readings / max(1, len(group.frames))
    return [
        (
            chunk_id,
            "node %s: %d of its frames do not decode (%s): left out, about %d readings lost; the rest is published"
            % (group.layout.node, len(whys), whys[0], round(per_frame * len(whys))),
        )
        for chunk_id, whys in sorted(by_chunk.items())
    ]


class Tally:
    """Per chunk in hand, the packs carrying its frames, and the node groups not yet made into
    packs, that are still outstanding; a chunk is done (may be deleted) when none is left."""

    def __init__(self) -> None:
        self._open: dict[int, int] = {}
        self._delivered: dict[int, set[int]] = {}  # open chunk -> positions of its frames acknowledged already
        self.done: list[int] = []  # acknowledged chunks, not yet handed to a delete

    def __contains__(self, chunk_id: int) -> bool:
        return chunk_id in self._open

    def __len__(self) -> int:
        return len(self._open)

    def add(self, chunk_ids: Iterable[int]) -> None:
        for chunk_id in chunk_ids:
            self._open[chunk_id] = self._open.get(chunk_id, 0) + 1

    def release(self, chunk_ids: Iterable[int]) -> None:
        for chunk_id in chunk_ids:
            left = self._open[chunk_id] - 1
            if left:
                self._open[chunk_id] = left
                continue
            del self._open[chunk_id]
            self._delivered.pop(chunk_id, None)
            self.done.append(chunk_id)

    def acknowledged(self, pack: Pack) -> None:
        self.done_with(pack.frames)
        self.release(pack.chunks)

    def done_with(self, frames: Iterable[int]) -> None:
        """Frames the broker acknowledged, or that do not decode: a stop keeps neither (keep_undelivered)."""
        for ref in frames:
            self._delivered.setdefault(ref >> FRAME_BITS, set()).add(ref & POSITION)

    def partly_delivered(self) -> dict[int, set[int]]:
        """Open chunks with frames the broker acknowledged: chunk id -> those frames' positions."""
        return {chunk_id: set(positions) for chunk_id, positions in self._delivered.items()}

    def after(self, cursor: int) -> list[int]:
        """Chunks newer than cursor that are outstanding or done."""
        return [chunk_id for chunk_id in [*self._open, *self.done] if chunk_id > cursor]


def publishable(
    chunks: Iterable[Chunk], layouts: Layouts, topic_base: str, kind: str = READINGS
) -> tuple[list[Pack], list[tuple[int, str]]]:
    """Every frame of these chunks in SenML packs; (packs, chunks that cannot be read)."""
    grouped = group_frames(chunks, layouts)
    packs: list[Pack] = []
    damaged = list(grouped.damaged)
    for group, built in zip(grouped.groups, build_groups(grouped.groups, topic_base, kind), strict=True):
        damaged += damaged_frames(group, built)
        packs += built.packs
    return packs, damaged


def keep_undelivered(store: Store, delivered: dict[int, set[int]]) -> int:
    """Runs on the store thread when the gateway stops: each partly delivered chunk is rewritten in place
    (Store.keep_only: same id, same place in the buffer's order, so a node's events after a restart still
    go out in the order it sent them) with only the frames the broker has not acknowledged, so a restart
    does not publish the others again. One transaction: a crash leaves it whole (duplicates) or rewritten,
    never readings lost. Returns the readings deleted."""
    deleted = 0
    for chunk_id, positions in sorted(delivered.items()):
        try:
            found = store.oldest(1, chunk_id - 1, chunk_id)
        except StoreError as error:  # a stop must finish: the chunk stays, published again after a restart
            log.warning("%s; chunk %d stays as it is", error, chunk_id)
            continue
        if not found or found[0].damaged:
            continue
        chunk = found[0]
        keep = [frame for position, frame in enumerate(chunk.frames) if position not in positions]
        try:
            readings = sum(len(cbor2.loads(frame.payload)[1]) // 3 for frame in keep)
            if keep:
                store.keep_only(chunk_id, keep, readings)
            else:
                store.delete([chunk_id])
        except StoreError as error:  # the whole chunk stays: published again after a restart, never lost
            log.warning("%s; chunk %d stays as it is", error, chunk_id)
            continue
        except Exception as error:  # a frame that does not decode: damage, for the next start to report
            log.warning("chunk %d stays as it is: %s", chunk_id, error)
            continue
        deleted += chunk.readings - readings
    return deleted


def _read_backlog(store: Store, layouts: Layouts, after_id: int, up_to_id: int, skip: frozenset[int]) -> Grouped:
    """Runs on the store thread: the next chunks of the backlog (ordinary ones: events have their own read), their frames by node."""
    chunks = store.each_oldest(BACKLOG_FRAMES, after_id, up_to_id, events=False)
    try:
        return group_frames(chunks, layouts, skip, fill=True)
    finally:
        getattr(chunks, "close", lambda: None)()  # a read that ended early ends the store's cursor here, on its thread


def _read_events(
    store: Store, layouts: Layouts, after_id: int, up_to_id: int, skip: frozenset[int], topic_base: str
) -> tuple[Grouped, list[Built]]:
    """Runs on the store thread: the next chunks of events on disk (by their index), grouped and built at once (they are few)."""
    chunks = store.each_oldest(EVENT_READ_FRAMES, after_id, up_to_id, events=True)
    try:
        grouped = group_frames(chunks, layouts, skip, fill=True)
    finally:
        getattr(chunks, "close", lambda: None)()
    return grouped, build_groups(grouped.groups, topic_base, EVENTS)


def _backlog_end(store: Store) -> tuple[int, bool]:
    """Runs on the store thread: the newest chunk, and whether no chunk of events is on disk (then none needs reading)."""
    return store.max_id(), store.pending_event_chunks == 0


class HeldSink(Protocol):
    """Where held frames are reported (gateway/router.py)."""

    def acked(self, frames: Sequence[Pending]) -> None: ...  # the broker acknowledged them

    def lost(self, frames: Sequence[Pending]) -> None: ...  # they will not go out from memory

    def all_lost(self) -> None: ...  # none of the held frames not acknowledged yet will

    def round_trip(self, seconds: float) -> None: ...  # a readings pack was PUBACKed this long after its publish


class _NoSink:
    def acked(self, frames: Sequence[Pending]) -> None:
        pass

    def round_trip(self, seconds: float) -> None:
        pass

    def lost(self, frames: Sequence[Pending]) -> None:
        pass

    def all_lost(self) -> None:
        pass


def held_packs(held: list[Pending], topic_base: str, kind: str = READINGS) -> tuple[list[Pack], list[Pending]]:
    """Frames held in memory as packs, per node in arrival order like live chunks (_pack), from the
    samples decoded on arrival: nothing is copied or decoded again; (packs, frames that cannot go out
    as SenML). Held frames are named by their position."""
    by_layout: dict[int, list[int]] = {}
    for position, pending in enumerate(held):
        by_layout.setdefault(pending.layout.id, []).append(position)
    built = Built()
    for positions in by_layout.values():
        _pack(held[positions[0]].layout, topic_base, ((held[i].samples, held[i].readings, i) for i in positions), built, kind)
    packs = [Pack(pack.topic, pack.payload, (), array("q"), tuple(held[ref] for ref in pack.frames)) for pack in built.packs]
    return packs, [held[ref] for ref in built.damaged]


@dataclass
class _Parked:
    """A live chunk holding frames whose pack from memory is still in flight (they missed their deadline)."""

    chunk: Chunk
    delivered: set[int]  # positions of its frames the broker acknowledged from memory
    flying: dict[int, int]  # id() of each frame still in flight from memory -> its position


class Forwarder:
    def __init__(
        self,
        worker: StoreWorker,
        uplink: Uplink,
        qos: int,
        window: int,
        layouts: Layouts,
        topic_base: str,
        sink: HeldSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._worker = worker
        self._uplink = uplink
        counted = metrics or Metrics("-", "-")  # the agent's registry; a forwarder of its own counts into a private one
        self._counted = {kind: counted.publishes.labels(kind) for kind in ("readings", "events", "retained")}
        self._puback = counted.puback
        self._qos = qos
        self._window = window
        self._layouts = layouts
        self._topic_base = topic_base
        self._inflight: dict[int, Pack | Retained] = {}  # mid -> what it carries, on the current connection
        self._live_chunks: list[Chunk] = []
        self._live_frames = 0  # frames in _live_chunks (LIVE_FRAMES)
        self._parked: list[_Parked] = []
        # Chunk id -> positions of its frames the broker has from memory, for every chunk on disk not deleted yet:
        # a disconnect forgets the live and parked chunks, but a stop (which disconnects first) must not keep those
        # frames for a restart to publish again (finish).
        self._from_memory: dict[int, set[int]] = {}
        self._clock = clock  # stamps publishes (Pack.sent): the PUBACK round trips the router times
        self._live_overflows = 0  # times live chunks were left to the backlog read on this connection
        self._left_to_backlog = 0  # the newest of them (the backlog's end is at least this)
        self._live: deque[Pack] = deque()
        self._held: list[Pending] = []  # frames held in memory, not yet made into packs
        # Events: every pack of them to publish (held, live, read from disk, to resend), by rank; served first.
        self._urgent: deque[Pack] = deque()
        self._urgent_next = 0  # the pack of _urgent to publish next (_next_events)
        self._held_events: list[Pending] = []  # events held in memory, not yet made into packs
        self._held_rank = HELD_RANK  # the next held event pack's rank
        self._live_events: list[Chunk] = []  # chunks of events committed while connected, not yet made into packs
        self._event_cursor = 0  # every chunk of events up to here is in hand (Tally) or done
        # The newest chunk the read of events covers: the backlog's end at the connect (-1: to be asked), raised
        # when live events are left to disk (_leave_events_to_disk), never when ordinary live chunks are.
        self._events_end = -1
        self._events_left = 0  # the newest live chunk of events left to disk on this connection
        self._live_event_frames = 0  # frames in _live_events
        self._events_overflows = 0  # times live events were left to disk on this connection
        self._events_done = True  # every chunk of events up to _events_end is read (ordinary ones: _backlog_done)
        self._event_task: asyncio.Task[None] | None = None  # the store thread's read of events under way
        self.events_published = 0  # events the broker acknowledged (status)
        # Held frames this forwarder still has, waiting, in packs or in flight (LIVE_FRAMES bounds them with
        # the live chunks' frames): one leaves when its pack is answered or it is given up on.
        self._held_frames = 0
        self.sink: HeldSink = sink or _NoSink()
        self._again: deque[Pack] = deque()  # in flight on a lost connection, or refused: published again
        self._paused_until = 0.0  # loop time before which no readings are published (the broker refused some)
        self._refused = 0  # publishes refused since the broker last accepted one (0: not refusing)
        self._backlog: deque[Pack] = deque()
        self._groups: deque[NodeFrames] = deque()  # backlog read from disk, not yet made into packs
        self._task: asyncio.Task[None] | None = None  # the store thread's read or build under way
        self._failure: Exception | None = None
        self._read_again_at = 0.0  # loop time before which no backlog read is tried (after a StoreError)
        self._read_failing = ""  # the store's error while backlog reads fail
        self._backlog_cursor = 0  # every chunk up to here is in hand (Tally) or done
        self._backlog_end = -1  # the newest chunk on disk at the last connect (-1: to be asked)
        self._backlog_done = True
        self._retained: dict[str, bytes] = {}
        self._tally = Tally()
        self._deleting: list[int] = []  # handed to the delete under way
        self._delete_lock = asyncio.Lock()
        self._reported: set[int] = set()  # damaged chunks already logged
        self._wake = asyncio.Event()
        self._ticker: asyncio.TimerHandle | None = None  # wakes the pump every PUMP_TICK_S while it runs
        self._epoch = 0

    # ------------------------------------------------------------ events (event loop)

    def connected(self) -> None:
        self._epoch += 1  # an answer about the backlog's end from an earlier connection is asked again
        self._backlog_end = -1  # chunks committed meanwhile join the backlog; the cursor stays where it was
        self._backlog_done = False
        self._events_done = False  # the events committed meanwhile are read first
        self._events_end = -1
        self._events_left = 0
        self._events_overflows = 0
        self._live_overflows = 0
        self._left_to_backlog = 0
        self._wake.set()

    def disconnected(self) -> None:
        """What was in flight is published again on the next connection; nothing acknowledged is."""
        self._epoch += 1
        packs = [item for item in self._inflight.values() if isinstance(item, Pack) and not item.held and not item.rank]
        self._again.extendleft(reversed(packs))  # ahead of older retries, in the order first sent
        for item in self._inflight.values():
            if isinstance(item, Pack) and item.rank and not item.held:
                self._queue_event(item)  # events from disk: again, in their place
        self._held_frames -= sum(len(item.held) for item in self._inflight.values() if isinstance(item, Pack))
        for item in self._inflight.values():
            if isinstance(item, Retained):
                self._retained.setdefault(item.topic, item.payload)  # unless a newer one is waiting
        self._inflight.clear()
        self._drop_live()  # not built yet: read from disk as backlog after the reconnect
        self._parked.clear()  # likewise (a frame the broker had from memory may go out again: a duplicate)
        self.release_held()

    # ------------------------------------------------------------ frames held in memory

    def takes_held(self) -> bool:
        """Whether a frame may be held in memory now: connected with QoS 1, publishing (not stopping,
        not paused after a refusal), and fewer than LIVE_FRAMES frames in memory: live chunks' frames waiting, and
        held ones not answered yet (waiting, in packs, in flight)."""
        return (
            self._qos == 1
            and self._window > 0
            and self._uplink.connected
            and not self._refused
            and asyncio.get_running_loop().time() >= self._paused_until
            and self._held_frames + self._live_frames < LIVE_FRAMES
        )

    def hold(self, pending: Pending) -> None:
        (self._held_events if pending.priority else self._held).append(pending)
        self._held_frames += 1
        self._wake.set()

    def holds(self) -> bool:
        """Whether held frames wait here or are in flight (answered or given up on: no longer)."""
        return self._held_frames > 0

    def oldest_unanswered(self) -> float | None:
        """When the oldest readings pack in flight was published (None: none is); the window is in publish order."""
        for item in self._inflight.values():
            if isinstance(item, Pack):
                return item.sent
        return None

    def release_held(self) -> None:
        """Held frames not acknowledged yet go to disk (the sink), in flight or not; none goes out from memory
        after this. A PUBACK that still comes for one in flight is reported as usual."""
        self._held_frames -= len(self._held) + sum(len(pack.held) for pack in self._live)
        self._held_frames -= len(self._held_events) + sum(len(pack.held) for pack in self._urgent)
        self._held = []
        self._held_events = []
        if any(pack.held for pack in self._live):
            self._live = deque(pack for pack in self._live if not pack.held)
        if any(pack.held for pack in self._urgent):
            self._urgent = deque(pack for pack in self._urgent if not pack.held)
        self.sink.all_lost()

    def events_waiting(self, node: str) -> bool:
        """Whether an event of this node committed to disk is not acknowledged by the broker yet: a new event of it
        then goes to disk too (Router.submit), behind it, not from memory ahead of it. Until the events on disk are
        all read (at a connect, or after live events were left to disk) any node may have one. Other nodes' events,
        and events the broker has (their chunks awaiting the batched delete), do not count: nothing can overtake them."""
        if not self._events_done:
            return self._worker.store.pending_event_chunks > 0  # read on the event loop: an int
        topic = "%s/nodes/%s/%s" % (self._topic_base, node, EVENTS)
        flying = (item for item in self._inflight.values() if isinstance(item, Pack))
        if any(pack.topic == topic and not pack.held for pack in (*self._urgent, *flying)):
            return True
        chunks = [*self._live_events, *(waiting.chunk for waiting in self._parked if waiting.chunk.priority)]
        by_id = self._layouts.by_id
        return any(frame.layout in by_id and by_id[frame.layout].node == node for chunk in chunks for frame in chunk.frames)

    def _event_frames(self) -> int:
        """Event frames waiting in RAM: live chunks not built yet, and packs not published yet."""
        return self._live_event_frames + sum(len(pack.held) or len(pack.frames) for pack in self._urgent)

    def _bound_live_events(self) -> None:
        """Live events, like live chunks, are bounded in RAM (LIVE_FRAMES): past it, the waiting live chunks of
        events are left to disk, read by the read of events in their place (a node's order holds: nothing newer
        of it goes out before the read has passed them)."""
        if self._live_events and self._event_frames() > LIVE_FRAMES:
            self._leave_events_to_disk(max(chunk.id for chunk in self._live_events))

    def _leave_events_to_disk(self, newest: int) -> None:
        self._events_left = max(self._events_left, newest)
        if self._events_end >= 0:  # else the end is being asked (_fill)
            self._events_end = max(self._events_end, newest)
        self._events_done = False
        self._live_events.clear()
        self._live_event_frames = 0
        if not self._events_overflows:
            log.warning("the uplink is slower than the live events; what it cannot take yet stays on disk and goes out in order")
        self._events_overflows += 1

    def _queue_event(self, pack: Pack) -> None:
        bisect.insort(self._urgent, pack, key=lambda item: item.rank)

    def live(self, chunk: Chunk, delivered: Collection[int] = ()) -> None:
        """A chunk just committed. delivered: positions of its frames the broker acknowledged from memory
        while the commit was under way (Router.committed); they are not published again. A chunk with
        frames still in flight from memory is parked until those are answered."""
        if not self._uplink.connected:
            return
        flying = self._flying(chunk)
        if delivered:
            self._from_memory.setdefault(chunk.id, set()).update(delivered)
        if flying:
            self._parked.append(_Parked(chunk, set(delivered), flying))
        else:
            self._take_live(chunk, delivered)

    def _flying(self, chunk: Chunk) -> dict[int, int]:
        """id() -> position of the chunk's frames that are in a pack in flight from memory (a missed deadline)."""
        if not self._held_frames:  # none waits or is in flight: the usual case, and the cheap one
            return {}
        in_flight = {id(pending.frame) for item in self._inflight.values() if isinstance(item, Pack) for pending in item.held}
        return {id(frame): position for position, frame in enumerate(chunk.frames) if id(frame) in in_flight}

    def _answered_held(self, pack: Pack, accepted: bool) -> None:
        """A pack from memory was answered: the parked chunks holding its frames learn which the broker has,
        and a chunk with none in flight any more goes on: deleted if the broker has all of it, else published."""
        ids = {id(pending.frame) for pending in pack.held}
        parked, self._parked = self._parked, []
        for waiting in parked:
            for key in ids & waiting.flying.keys():
                position = waiting.flying.pop(key)
                if accepted:
                    waiting.delivered.add(position)
                    self._from_memory.setdefault(waiting.chunk.id, set()).add(position)
            if waiting.flying:
                self._parked.append(waiting)
            else:
                self._take_live(waiting.chunk, waiting.delivered)

    def _take_live(self, chunk: Chunk, delivered: Collection[int]) -> None:
        if delivered and len(delivered) == len(chunk.frames) and chunk.id not in self._tally:
            # Every frame PUBACKed already, from memory: delete-after-PUBACK holds, nothing to publish.
            self._tally.done.append(chunk.id)
            self._wake.set()
            return
        if chunk.priority:  # bounded apart from the ordinary live chunks: an overflow of those leaves these be
            self._live_events.append(chunk)
            self._live_event_frames += len(chunk.frames)
            self._bound_live_events()
        elif self._live_frames + len(chunk.frames) > LIVE_FRAMES:
            self._leave_live_to_backlog(chunk.id)
        else:
            self._live_chunks.append(chunk)
            self._live_frames += len(chunk.frames)
        self._wake.set()

    def _leave_live_to_backlog(self, newest: int) -> None:
        """The uplink does not keep up with the live load: the waiting live chunks, up to `newest`,
        join the backlog, read from disk as the window allows, instead of piling up in RAM. Each
        still goes out once on this connection: the backlog covers them, live builds skip them."""
        self._left_to_backlog = newest
        if self._backlog_end >= 0:  # else the end is being asked; the answer may predate these commits (_fill)
            self._backlog_end = max(self._backlog_end, newest)
        self._backlog_done = False
        self._drop_live(events=False)  # the live events are bounded on their own; the backlog read passes over events
        if not self._live_overflows:
            log.warning("the uplink is slower than the live data; what it cannot take yet stays on disk and goes out with the backlog")
        self._live_overflows += 1

    def _drop_live(self, events: bool = True) -> None:
        self._live_chunks.clear()
        self._live_frames = 0
        if events:  # a disconnect: read from disk after the reconnect (connected: _events_done)
            self._live_events.clear()
            self._live_event_frames = 0

    def acknowledged(self) -> list[int]:
        """Chunks the broker acknowledged that are not deleted yet (deletes are batched)."""
        return [*self._tally.done, *self._deleting]

    def retained(self, topic: str, payload: bytes) -> None:
        self._retained[topic] = payload
        self._wake.set()

    def puback(self, mid: int, accepted: bool, reason: str) -> None:
        item = self._inflight.pop(mid, None)
        if isinstance(item, Pack):
            self._held_frames -= len(item.held)
            if item.held and self._parked:
                self._answered_held(item, accepted)
            if accepted:
                if item.rank:
                    self.events_published += len(item.held) or len(item.frames)
                if item.held:
                    self.sink.acked(item.held)
                else:
                    self._tally.acknowledged(item)
                if self._refused:
                    log.warning("the broker accepts readings again, after refusing %d publishes", self._refused)
                    self._refused = 0
                round_trip = self._clock() - item.sent
                self.sink.round_trip(round_trip)
                self._puback.observe(round_trip)
            else:
                self._refused_pack(item, reason)
        self._wake.set()

    def _refused_pack(self, pack: Pack, reason: str) -> None:
        """A refused pack waits in the resend queue, and no readings go out for REFUSED_RETRY_S: the
        window does not refill with more refusals, so the backlog read stops at the window, not at
        the end of the disk. Nothing is deleted while refused. One line per episode, not per pack."""
        if not self._refused:
            log.error(
                "the broker refused a readings publish (%s); the readings stay buffered and publishing is tried again every %.0f s",
                reason,
                REFUSED_RETRY_S,
            )
        self._refused += 1
        if pack.held:  # from memory: its frames, and every other held one, go to disk
            self.release_held()
        elif pack.rank:
            self._queue_event(pack)
        else:
            self._again.append(pack)
        loop = asyncio.get_running_loop()
        if loop.time() >= self._paused_until:
            self._paused_until = loop.time() + REFUSED_RETRY_S
            loop.call_later(REFUSED_RETRY_S, self._wake.set)

    # ------------------------------------------------------------ pump

    async def run(self) -> None:
        # One repeating tick wakes the pump every PUMP_TICK_S, not a timeout around each wait: the pump
        # wakes about once a frame while the broker answers (hold, puback), and a timer made and
        # cancelled on every wake-up was a measurable part of the gateway's CPU per reading. A plain
        # wait also takes the stop's cancel as it comes (no wait_for, which can swallow it on 3.11).
        loop = asyncio.get_running_loop()
        last_delete = loop.time()
        self._tick()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                now = loop.time()
                if self._tally.done and (len(self._tally.done) >= DELETE_EVERY or now - last_delete >= DELETE_AFTER_S):
                    await self._delete()
                    last_delete = now
                if self._uplink.connected:
                    await self._fill()
        finally:
            if self._ticker is not None:
                self._ticker.cancel()
                self._ticker = None

    def _tick(self) -> None:
        self._wake.set()
        self._ticker = asyncio.get_running_loop().call_later(PUMP_TICK_S, self._tick)

    async def _fill(self) -> None:
        epoch = self._epoch
        if self._failure is not None:
            raise self._failure  # a read or build on the store thread failed: a bug, reported by the agent
        if self._backlog_end < 0:
            end, no_events = await self._worker.call(_backlog_end, self._worker.store)
            if epoch != self._epoch:
                return
            if no_events and not self._events_left:  # asked on the store thread, between commits: no event up to `end`
                self._events_done = True
                self._event_cursor = max(self._event_cursor, end)
            self._events_end = max(end, self._events_left)  # live events left to disk meanwhile may be newer
            self._backlog_end = max(end, self._left_to_backlog)  # live chunks left to the backlog meanwhile may be newer
        while self._retained and self._uplink.connected:
            topic, payload = self._retained.popitem()
            mid = self._uplink.publish(topic, payload, qos=1, retain=True)
            if mid is None:
                self._retained.setdefault(topic, payload)
                return  # not connected after all: sent when the uplink says it is
            self._inflight[mid] = Retained(topic, payload)
            self._counted["retained"].inc()
        sent = self._clock()
        while len(self._inflight) < self._window and self._uplink.connected:
            if asyncio.get_running_loop().time() < self._paused_until:
                break  # the broker refused readings just now
            queue = self._next_queue()
            if queue is None:
                break
            if queue is self._urgent:
                pack = self._urgent[self._urgent_next]
                del self._urgent[self._urgent_next]
            else:
                pack = queue.popleft()
            if pack.held and any(pending.state != LIVE for pending in pack.held):
                # The router took some back (their deadline passed): the rest go to disk with them.
                self._held_frames -= len(pack.held)
                self.sink.lost([pending for pending in pack.held if pending.state == LIVE])
                continue
            mid = self._uplink.publish(pack.topic, pack.payload, self._qos, content_type=CONTENT_TYPE)
            if mid is None:
                if queue is self._urgent:
                    self._queue_event(pack)
                else:
                    queue.appendleft(pack)
                return  # not connected after all: sent when the uplink says it is
            pack.sent = sent
            self._inflight[mid] = pack
            self._counted["events" if pack.rank else "readings"].inc()
        self._prefetch()

    def _next_queue(self) -> deque[Pack] | None:
        urgent = self._next_events()
        if urgent is not None:
            return urgent
        if self._held and not self._live:
            # Held frames, like live chunks, are built once the last live packs are out.
            held = [pending for pending in self._held if pending.state == LIVE]  # the rest the router took back
            self._held_frames -= len(self._held) - len(held)
            self._held = []
            if held:
                packs, left = held_packs(held, self._topic_base)
                self._live.extend(packs)
                if left:
                    self._held_frames -= len(left)
                    self.sink.lost(left)  # SenML cannot carry them: from disk, they are reported as damaged
        if self._live_chunks and not self._live:
            # Chunks on disk at connect time are the backlog's; the rest are published together. Built
            # only once the last live packs are out: on a slow link they gather into larger packs.
            chunks = [chunk for chunk in self._live_chunks if chunk.id > self._backlog_end]
            self._drop_live()
            if chunks:
                # A live chunk's frames the broker has from memory are exactly its _from_memory positions: they
                # are all known when it is taken live (Router.committed, or the answers it was parked for).
                grouped = group_frames(chunks, self._layouts, delivered=self._from_memory)
                self._take_groups(grouped)
                self._live.extend(self._take_outcomes(grouped.groups, build_groups(grouped.groups, self._topic_base)))
        # While the broker refuses, the refused packs go first: live packs sent ahead of them would be
        # refused too and join them, and the resend queue would grow with every pause.
        queues = (self._again, self._live) if self._refused else (self._live, self._again)
        for queue in (*queues, self._backlog):
            if queue:
                return queue
        return None

    def _next_events(self) -> deque[Pack] | None:
        """The queue of events when one may go now: built from what waits (held, live chunks) at once, not once
        other packs are out; served by rank, and only up to the events read from disk so far: a newer
        event never overtakes an older one of the same node still on disk."""
        if self._held_events:
            held = [pending for pending in self._held_events if pending.state == LIVE]  # the rest the router took back
            self._held_frames -= len(self._held_events) - len(held)
            self._held_events = []
            if held:
                packs, left = held_packs(held, self._topic_base, EVENTS)
                for pack in packs:
                    pack.rank = self._held_rank
                    self._held_rank += 1
                    self._queue_event(pack)
                if left:
                    self._held_frames -= len(left)
                    self.sink.lost(left)
        if self._live_events:
            chunks = [chunk for chunk in self._live_events if chunk.id > self._events_end]  # the others: read from disk
            self._live_events = []
            self._live_event_frames = 0
            if chunks:
                grouped = group_frames(chunks, self._layouts, delivered=self._from_memory)
                self._take_groups(grouped)
                for pack in self._take_outcomes(grouped.groups, build_groups(grouped.groups, self._topic_base, EVENTS)):
                    self._queue_event(pack)
        # One pack of a node's events in flight at a time: one the broker refuses (or a lost connection) is resent
        # before any later one of the node goes out, so a refusal cannot reorder them.
        flying = {item.topic for item in self._inflight.values() if isinstance(item, Pack) and item.rank}
        read = self._event_cursor << FRAME_BITS | POSITION
        for index, pack in enumerate(self._urgent):
            if not self._events_done and pack.rank > read:
                break  # newer than an event on disk not read yet
            if pack.topic not in flying:
                self._urgent_next = index
                return self._urgent
        return None

    def _take_groups(self, grouped: Grouped) -> None:
        """Count a read's groups into its chunks, before any of its packs exist."""
        self._report(grouped.damaged)
        for group in grouped.groups:
            self._tally.add(group.chunk_ids())
        self._tally.done_with(grouped.delivered)  # their chunks are open now: a stop keeps only the rest

    def _take_outcomes(self, groups: list[NodeFrames], outcomes: list[Built]) -> list[Pack]:
        """Count built packs into their chunks; a group's own count is released after its packs'
        went up, so no chunk reads zero too early. A chunk with frames that do not decode is
        deleted like the others once its packs are acknowledged: those frames are lost, logged here."""
        packs: list[Pack] = []
        for group, built in zip(groups, outcomes, strict=True):
            for pack in built.packs:
                self._tally.add(pack.chunks)
            packs += built.packs
            if built.damaged:
                self._tally.done_with(built.damaged)
                for chunk_id, what in damaged_frames(group, built):
                    log.error("buffered chunk %d: %s", chunk_id, what)
            self._tally.release(group.chunk_ids())
        return packs

    def _prefetch(self) -> None:
        """Keep the store thread a step ahead of the publishing: build the next groups' packs,
        or read the next part of the backlog, while the packs already built go out. Events on
        disk are read first, by a task of their own, whatever the ordinary backlog does."""
        if not self._events_done:  # the ordinary backlog waits until the events on disk are in hand
            read = self._event_cursor << FRAME_BITS | POSITION
            ready = bisect.bisect_right(self._urgent, read, key=lambda item: item.rank)  # read, waiting to go out
            if (
                self._event_task is None
                and self._events_end >= 0
                and ready < self._window
                and asyncio.get_running_loop().time() >= self._read_again_at
            ):
                self._event_task = asyncio.get_running_loop().create_task(self._read_events())
            return
        if self._task is not None or self._backlog_end < 0 or len(self._backlog) >= self._window:
            return
        if self._groups:
            batch = [self._groups.popleft() for _ in range(min(BUILD_GROUPS, len(self._groups)))]
            self._task = asyncio.get_running_loop().create_task(self._build(batch))
        elif not self._backlog_done and asyncio.get_running_loop().time() >= self._read_again_at:
            self._task = asyncio.get_running_loop().create_task(self._read())

    def _in_hand(self, cursor: int | None = None) -> frozenset[int]:
        """Chunks after the cursor (the backlog's, or the one given) that a read must pass over: live ones built
        on an earlier connection (outstanding, done or being deleted), and damaged ones already reported."""
        cursor = self._backlog_cursor if cursor is None else cursor
        others = [chunk_id for chunk_id in [*self._deleting, *self._reported] if chunk_id > cursor]
        return frozenset(self._tally.after(cursor) + others)

    async def _read(self) -> None:
        # What a read returns stays valid across reconnects: it covers (cursor, end], and the cursor
        # moves only here, so nothing is read twice and nothing is skipped.
        try:
            after, end = self._backlog_cursor, self._backlog_end
            try:
                grouped = await self._worker.call(_read_backlog, self._worker.store, self._layouts, after, end, self._in_hand())
            except StoreError as error:  # the disk, not a bug: the backlog waits, live data still goes out
                self._read_trouble(str(error))
                return
            if self._read_failing:
                log.warning("the buffered backlog can be read again")
                self._read_failing = ""
            if not grouped.last_id:  # nothing after the cursor: the backlog is out, up to this end
                self._backlog_done = end == self._backlog_end
                return
            self._backlog_cursor = grouped.last_id
            self._take_groups(grouped)
            self._groups.extend(grouped.groups)
        except Exception as error:
            self._failure = error
        finally:
            self._task = None
            self._wake.set()

    async def _read_events(self) -> None:
        """The next part of the events on disk, up to the backlog's end (its cursor moves only here, as _read's)."""
        try:
            after, end = self._event_cursor, self._events_end
            try:
                grouped, outcomes = await self._worker.call(
                    _read_events, self._worker.store, self._layouts, after, end, self._in_hand(after), self._topic_base
                )
            except StoreError as error:  # the disk: tried again as the backlog read is
                self._read_trouble(str(error))
                return
            if self._read_failing:
                log.warning("the buffered backlog can be read again")
                self._read_failing = ""
            if not grouped.last_id:
                self._events_done = end == self._events_end
                return
            self._event_cursor = grouped.last_id
            self._take_groups(grouped)
            for pack in self._take_outcomes(grouped.groups, outcomes):
                self._queue_event(pack)
            self._bound_live_events()
        except Exception as error:
            self._failure = error
        finally:
            self._event_task = None
            self._wake.set()

    def _read_trouble(self, error: str) -> None:
        if error != self._read_failing:
            log.error("%s; the backlog stays buffered and its read is tried again every %.0f s", error, READ_RETRY_S)
        self._read_failing = error
        loop = asyncio.get_running_loop()
        self._read_again_at = loop.time() + READ_RETRY_S
        loop.call_later(READ_RETRY_S, self._wake.set)

    async def _build(self, batch: list[NodeFrames]) -> None:
        try:
            outcomes = await self._worker.call(build_groups, batch, self._topic_base)
            self._backlog.extend(self._take_outcomes(batch, outcomes))
        except Exception as error:
            self._failure = error
        finally:
            self._task = None
            self._wake.set()

    def _report(self, damaged: list[tuple[int, str]]) -> None:
        for chunk_id, problem in damaged:
            if chunk_id not in self._reported:
                self._reported.add(chunk_id)
                log.error("buffered chunk %d cannot be read (%s); it is not published", chunk_id, problem)

    async def settle(self, timeout: float) -> None:
        """Stop handing out packs, wait (bounded) for the PUBACKs in flight, delete what was acknowledged."""
        self._window = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._inflight and self._uplink.connected and loop.time() < deadline:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - loop.time()))
        await self._delete()

    async def finish(self) -> None:
        """The last step of a stop: delete every chunk acknowledged so far, and from the chunks
        acknowledged in part, the frames the broker has."""
        await self._delete()
        partly = self._tally.partly_delivered()
        # Committed chunks with frames the broker has from memory (Forwarder.live), whether still live, parked,
        # or forgotten at a disconnect (the uplink's stop is one) and read as backlog: the same.
        for chunk_id, positions in self._from_memory.items():
            partly.setdefault(chunk_id, set()).update(positions)
        if partly:
            deleted = await self._worker.call(keep_undelivered, self._worker.store, partly)
            log.info("%d delivered readings deleted from %d partly delivered chunks", deleted, len(partly))

    async def _delete(self) -> None:
        async with self._delete_lock:  # one at a time: a stop's last delete waits for one under way
            if not self._tally.done:
                return
            self._deleting, self._tally.done = self._tally.done, []
            try:
                await self._worker.call(self._worker.store.delete, self._deleting)
                for chunk_id in self._deleting:
                    self._from_memory.pop(chunk_id, None)
            except StoreError as error:  # the chunks stay; they may be published again, never lost
                log.error("%s; will try again", error)
                self._tally.done = self._deleting + self._tally.done
            finally:
                self._deleting = []
