"""Buffer -> broker: SenML packs built from stored chunks, an inflight window of QoS 1 publishes, live data first.

Chunks committed while connected are live: they are turned into packs (one
per node, every frame the waiting chunks hold) and served before the backlog
whenever a slot in the window frees up. On every (re)connect the chunks
already on disk form the backlog, read oldest first, many chunks at a time,
so that one node's frames from many group commits travel in one pack. A
chunk leaves the buffer only when the broker acknowledged every pack built
from it. Latest-value retained messages (status topics) are not buffered:
the newest one per topic is sent when connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import cbor2

from . import senml
from .layouts import Layout, Layouts
from .senml import CONTENT_TYPE
from .store import Chunk, Store, StoreError
from .store_worker import StoreWorker
from .uplink import Uplink

log = logging.getLogger(__name__)

PACK_READINGS = 500  # readings in one MQTT message at most
BUILD_GROUPS = 256  # node groups made into packs at a time
BACKLOG_FRAMES = 40_960  # frames read from disk at a time: many per node, so packs are large
DELETE_EVERY = 64  # acknowledged chunks collected before one delete transaction
DELETE_AFTER_S = 0.2  # ... or after this long
REFUSED_RETRY_S = 5.0  # a publish the broker refused (quota, authorisation) is tried again after this


class Delivery:
    """Chunks published together; they leave the disk when every pack built from them is acknowledged."""

    __slots__ = ("chunk_ids", "finished", "unacked", "unbuilt")

    def __init__(self, chunk_ids: list[int]) -> None:
        self.chunk_ids = chunk_ids
        self.unacked = 0  # packs built and not yet acknowledged
        self.unbuilt = 0  # node groups not yet made into packs
        self.finished = False

    def finish(self) -> list[int]:
        """The chunk ids to delete, once, when every pack was built and acknowledged."""
        if self.unacked or self.unbuilt or self.finished:
            return []
        self.finished = True
        return self.chunk_ids


@dataclass(slots=True)
class Pack:
    topic: str
    payload: bytes
    delivery: Delivery


@dataclass(slots=True)
class NodeFrames:
    """One node's frames of a delivery, kept lean: the payloads end to end in one buffer, their
    lengths and arrival times in arrays, no object per frame. A backlog read holds tens of
    thousands of frames until its packs are built; lean frames let it hold more of them, so
    each node's pack is larger and the broker sees fewer messages."""

    layout: Layout
    delivery: Delivery
    payloads: bytearray = field(default_factory=bytearray)
    lengths: array[int] = field(default_factory=lambda: array("H"))
    received: array[float] = field(default_factory=lambda: array("d"))
    chunk_ids: set[int] = field(default_factory=set)


@dataclass
class Built:
    packs: list[Pack]
    delivery: Delivery
    damaged: list[tuple[int, str]]  # (chunk id, why): chunks that cannot be read, left on disk and reported


class DamagedFrames(Exception):
    """A stored payload that does not decode: it passed the protocol's checks on arrival, so the disk damaged it."""


@dataclass
class Grouped:
    groups: list[NodeFrames]
    delivery: Delivery
    damaged: list[tuple[int, str]]
    last_id: int  # the newest chunk read (0: none)


def group_frames(chunks: Iterable[Chunk], layouts: Layouts) -> Grouped:
    """The frames of these chunks by node layout, in arrival order, as one delivery."""
    groups: dict[int, NodeFrames] = {}
    used: list[int] = []
    damaged: list[tuple[int, str]] = []
    delivery = Delivery(used)
    last_id = 0
    for chunk in chunks:
        last_id = chunk.id
        if chunk.damaged:
            damaged.append((chunk.id, chunk.damaged))
            continue
        unknown = [frame.layout for frame in chunk.frames if frame.layout not in layouts.by_id]
        if unknown:
            damaged.append((chunk.id, "channel layout %d is not in the database" % unknown[0]))
            continue
        used.append(chunk.id)
        for layout_id, received, payload in chunk.frames:
            group = groups.get(layout_id)
            if group is None:
                group = groups[layout_id] = NodeFrames(layouts.by_id[layout_id], delivery)
            group.payloads += payload
            group.lengths.append(len(payload))
            group.received.append(received)
            group.chunk_ids.add(chunk.id)
    delivery.unbuilt = len(groups)
    return Grouped(list(groups.values()), delivery, damaged, last_id)


def _frames(group: NodeFrames) -> Iterator[tuple[senml.Frame, int]]:
    """((samples, time), readings) of each frame, decoded one at a time; DamagedFrames if one does not decode."""
    view = memoryview(group.payloads)
    start = 0
    for length, received in zip(group.lengths, group.received, strict=True):
        try:
            fields = cbor2.loads(view[start : start + length])
            samples = fields[1]
            base_time = fields.get(0)
            if not isinstance(samples, list) or len(samples) % 3:
                raise TypeError("samples are not a list of triples")
        except Exception as error:  # checked on arrival: whatever fails here, the disk damaged it
            raise DamagedFrames("%s: %s" % (type(error).__name__, error)) from None
        start += length
        yield (samples, round(received, 3) if base_time is None else base_time), len(samples) // 3


def build_packs(group: NodeFrames, topic_base: str) -> list[tuple[str, bytes]]:
    """One node's frames as SenML packs of at most PACK_READINGS readings: (topic, payload) each.

    Decoded a pack's worth at a time, so one node with a long backlog costs one pack of memory.
    """
    layout = group.layout
    topic = "%s/nodes/%s/readings" % (topic_base, layout.node)
    packs: list[tuple[str, bytes]] = []
    frames: list[senml.Frame] = []
    count = 0
    try:
        for frame, readings in _frames(group):
            if count and count + readings > PACK_READINGS:
                packs.append((topic, senml.pack(layout.node, layout.channels, frames)))
                frames, count = [], 0
            frames.append(frame)
            count += readings
        packs.append((topic, senml.pack(layout.node, layout.channels, frames)))
    except DamagedFrames:
        raise
    except Exception as error:  # a value SenML cannot carry: this group's damage, not the forwarder's end
        raise DamagedFrames("%s: %s" % (type(error).__name__, error)) from None
    return packs


Outcome = list[tuple[str, bytes]] | DamagedFrames


def build_groups(groups: list[NodeFrames], topic_base: str) -> list[Outcome]:
    """Each group's packs, or why they cannot be built. Touches no delivery: this runs on the store
    thread, and deliveries are counted on the event loop only (apply_outcomes)."""
    outcomes: list[Outcome] = []
    for group in groups:
        try:
            outcomes.append(build_packs(group, topic_base))
        except DamagedFrames as error:
            outcomes.append(error)
    return outcomes


def apply_outcomes(groups: list[NodeFrames], outcomes: list[Outcome]) -> tuple[list[Pack], list[tuple[int, str]], list[Delivery]]:
    """Count built groups into their deliveries: (packs, damaged chunks, deliveries touched)."""
    packs: list[Pack] = []
    damaged: list[tuple[int, str]] = []
    touched: dict[int, Delivery] = {}
    for group, outcome in zip(groups, outcomes, strict=True):
        delivery = touched.setdefault(id(group.delivery), group.delivery)
        if isinstance(outcome, DamagedFrames):
            delivery.chunk_ids = [chunk_id for chunk_id in delivery.chunk_ids if chunk_id not in group.chunk_ids]
            damaged += [(chunk_id, "node %s: %s" % (group.layout.node, outcome)) for chunk_id in sorted(group.chunk_ids)]
        else:
            delivery.unacked += len(outcome)
            packs += [Pack(topic, payload, delivery) for topic, payload in outcome]
        delivery.unbuilt -= 1  # after unacked went up: never a moment where both read zero too early
    return packs, damaged, list(touched.values())


def publishable(chunks: Iterable[Chunk], layouts: Layouts, topic_base: str) -> Built:
    """Every frame of these chunks in SenML packs, as one delivery; what cannot be read stays out of it."""
    grouped = group_frames(chunks, layouts)
    packs, damaged, _touched = apply_outcomes(grouped.groups, build_groups(grouped.groups, topic_base))
    return Built(packs, grouped.delivery, grouped.damaged + damaged)


def _read_backlog(store: Store, layouts: Layouts, after_id: int, up_to_id: int) -> Grouped:
    """Runs on the store thread: the next chunks of the backlog, their frames by node."""
    return group_frames(store.each_oldest(BACKLOG_FRAMES, after_id, up_to_id), layouts)


class Forwarder:
    def __init__(self, worker: StoreWorker, uplink: Uplink, qos: int, window: int, layouts: Layouts, topic_base: str) -> None:
        self._worker = worker
        self._uplink = uplink
        self._qos = qos
        self._window = window
        self._layouts = layouts
        self._topic_base = topic_base
        self._inflight: dict[int, Pack | None] = {}  # mid -> pack (None for a retained status)
        self._live_chunks: list[Chunk] = []
        self._live: deque[Pack] = deque()
        self._backlog: deque[Pack] = deque()
        self._groups: deque[NodeFrames] = deque()  # backlog read from disk, not yet made into packs
        self._task: asyncio.Task[None] | None = None  # the store thread's read or build under way
        self._failure: Exception | None = None
        self._backlog_cursor = 0
        self._backlog_end = 0
        self._backlog_done = True
        self._retained: dict[str, bytes] = {}
        self._acked: list[int] = []
        self._reported: set[int] = set()  # damaged chunks already logged
        self._wake = asyncio.Event()
        self._epoch = 0

    # ------------------------------------------------------------ events (event loop)

    def connected(self) -> None:
        self._epoch += 1  # reads still in flight from an earlier connection are ignored
        self._reset()
        self._backlog_end = -1  # set by the pump once it has asked the store
        self._backlog_done = False
        self._wake.set()

    def disconnected(self) -> None:
        self._epoch += 1
        self._reset()
        self._backlog_done = True

    def _reset(self) -> None:
        self._inflight.clear()
        self._live_chunks.clear()
        self._live.clear()
        self._backlog.clear()
        self._groups.clear()
        self._backlog_cursor = 0

    def live(self, chunk: Chunk) -> None:
        if self._uplink.connected:
            self._live_chunks.append(chunk)
            self._wake.set()

    def retained(self, topic: str, payload: bytes) -> None:
        self._retained[topic] = payload
        self._wake.set()

    def puback(self, mid: int, accepted: bool, reason: str) -> None:
        if mid not in self._inflight:
            return
        pack = self._inflight.pop(mid)
        if pack is not None:
            if accepted:
                self._acknowledged(pack.delivery)
            else:
                log.error("the broker refused a readings publish (%s); the readings stay buffered and are retried", reason)
                loop = asyncio.get_running_loop()
                loop.call_later(REFUSED_RETRY_S, self._retry, pack, self._epoch)
        self._wake.set()

    def _acknowledged(self, delivery: Delivery) -> None:
        delivery.unacked -= 1
        self._acked += delivery.finish()

    def _retry(self, pack: Pack, epoch: int) -> None:
        if epoch == self._epoch:  # a reconnect re-reads the whole buffer anyway
            self._backlog.appendleft(pack)
            self._wake.set()

    # ------------------------------------------------------------ pump

    async def run(self) -> None:
        last_delete = asyncio.get_running_loop().time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), DELETE_AFTER_S)
            self._wake.clear()
            now = asyncio.get_running_loop().time()
            if self._acked and (len(self._acked) >= DELETE_EVERY or now - last_delete >= DELETE_AFTER_S):
                await self._delete()
                last_delete = now
            if self._uplink.connected:
                await self._fill()

    async def _fill(self) -> None:
        epoch = self._epoch
        if self._failure is not None:
            raise self._failure  # a read or build on the store thread failed: a bug, reported by the agent
        if self._backlog_end < 0:
            end = await self._worker.call(self._worker.store.max_id)
            if epoch != self._epoch:
                return
            self._backlog_end = end
        while self._retained and self._uplink.connected:
            topic, payload = self._retained.popitem()
            mid = self._uplink.publish(topic, payload, qos=1, retain=True)
            if mid is not None:
                self._inflight[mid] = None
        while len(self._inflight) < self._window and self._uplink.connected:
            pack = self._next_pack()
            if pack is None:
                break
            mid = self._uplink.publish(pack.topic, pack.payload, self._qos, content_type=CONTENT_TYPE)
            if mid is None:
                return  # not connected after all: a reconnect reads the buffer again
            self._inflight[mid] = pack
        self._prefetch()

    def _next_pack(self) -> Pack | None:
        if self._live_chunks:
            # Chunks on disk at connect time are the backlog's; the rest are published together.
            chunks = [chunk for chunk in self._live_chunks if chunk.id > self._backlog_end]
            self._live_chunks.clear()
            if chunks:
                built = publishable(chunks, self._layouts, self._topic_base)
                self._report(built.damaged)
                self._live.extend(built.packs)
                self._acked += built.delivery.finish()  # not a single frame came out: nothing to wait for
        if self._live:
            return self._live.popleft()
        if self._backlog:
            return self._backlog.popleft()
        return None

    def _prefetch(self) -> None:
        """Keep the store thread a step ahead of the publishing: build the next groups' packs,
        or read the next part of the backlog, while the packs already built go out."""
        if self._task is not None or self._backlog_end < 0 or len(self._backlog) >= self._window:
            return
        if self._groups:
            batch = [self._groups.popleft() for _ in range(min(BUILD_GROUPS, len(self._groups)))]
            self._task = asyncio.get_running_loop().create_task(self._build(batch, self._epoch))
        elif not self._backlog_done:
            self._task = asyncio.get_running_loop().create_task(self._read(self._epoch))

    async def _read(self, epoch: int) -> None:
        try:
            grouped = await self._worker.call(_read_backlog, self._worker.store, self._layouts, self._backlog_cursor, self._backlog_end)
            if epoch != self._epoch:
                return
            if not grouped.last_id:  # nothing after the cursor: the backlog is out
                self._backlog_done = True
                return
            self._backlog_cursor = grouped.last_id
            self._report(grouped.damaged)
            self._groups.extend(grouped.groups)
            self._acked += grouped.delivery.finish()  # not a single frame came out: nothing to wait for
        except Exception as error:
            self._failure = error
        finally:
            self._task = None
            self._wake.set()

    async def _build(self, batch: list[NodeFrames], epoch: int) -> None:
        try:
            outcomes = await self._worker.call(build_groups, batch, self._topic_base)
            if epoch != self._epoch:
                return
            packs, damaged, touched = apply_outcomes(batch, outcomes)
            self._report(damaged)
            self._backlog.extend(packs)
            for delivery in touched:
                self._acked += delivery.finish()  # whose every group failed to decode
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
        deadline = asyncio.get_running_loop().time() + timeout
        while self._inflight and self._uplink.connected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        if self._acked:
            await self._delete()

    async def _delete(self) -> None:
        acked, self._acked = self._acked, []
        try:
            await self._worker.call(self._worker.store.delete, acked)
        except StoreError as error:  # the chunks stay; they may be published again, never lost
            log.error("%s; will try again", error)
            self._acked = acked + self._acked
