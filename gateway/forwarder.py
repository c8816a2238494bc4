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
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cbor2

from . import senml
from .layouts import Layout, Layouts
from .senml import CONTENT_TYPE
from .store import Chunk, Store, StoreError
from .store_worker import StoreWorker
from .uplink import Uplink

log = logging.getLogger(__name__)

PACK_READINGS = 500  # readings in one MQTT message at most
BACKLOG_FRAMES = 20_480  # frames read from disk at a time: many per node, so packs are large
DELETE_EVERY = 64  # acknowledged chunks collected before one delete transaction
DELETE_AFTER_S = 0.2  # ... or after this long
REFUSED_RETRY_S = 5.0  # a publish the broker refused (quota, authorisation) is tried again after this


class Delivery:
    """Chunks published together; they leave the disk when every pack built from them is acknowledged."""

    __slots__ = ("chunk_ids", "unacked")

    def __init__(self, chunk_ids: list[int]) -> None:
        self.chunk_ids = chunk_ids
        self.unacked = 0


@dataclass(slots=True)
class Pack:
    topic: str
    payload: bytes
    delivery: Delivery


@dataclass(slots=True)
class NodeFrames:
    """One node's frames of a delivery, kept lean (payload bytes and arrival times, no per-frame
    objects): a backlog read holds thousands of them until its packs are built."""

    layout: Layout
    payloads: list[bytes]
    received: list[float]
    chunk_ids: set[int]


@dataclass
class Built:
    packs: list[Pack]
    delivery: Delivery
    damaged: list[tuple[int, str]]  # (chunk id, why): chunks that cannot be read, left on disk and reported


class DamagedFrames(Exception):
    """A stored payload that does not decode: it passed the protocol's checks on arrival, so the disk damaged it."""


def group_frames(chunks: Iterable[Chunk], layouts: Layouts) -> tuple[list[NodeFrames], list[int], list[tuple[int, str]]]:
    """The frames of these chunks by node layout, in arrival order: (groups, chunk ids read, damaged chunks)."""
    groups: dict[int, NodeFrames] = {}
    used: list[int] = []
    damaged: list[tuple[int, str]] = []
    for chunk in chunks:
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
                group = groups[layout_id] = NodeFrames(layouts.by_id[layout_id], [], [], set())
            group.payloads.append(payload)
            group.received.append(received)
            group.chunk_ids.add(chunk.id)
    return list(groups.values()), used, damaged


def _frames(group: NodeFrames) -> list[senml.Frame]:
    """(samples, time) of each frame; DamagedFrames if one does not decode."""
    frames: list[senml.Frame] = []
    try:
        for payload, received in zip(group.payloads, group.received, strict=True):
            fields = cbor2.loads(payload)
            base_time = fields.get(0)
            frames.append((fields[1], round(received, 3) if base_time is None else base_time))
    except (ValueError, KeyError, TypeError, IndexError, cbor2.CBORDecodeError) as error:
        raise DamagedFrames("%s: %s" % (type(error).__name__, error)) from None
    return frames


def build_packs(group: NodeFrames, topic_base: str, delivery: Delivery) -> list[Pack]:
    """One node's frames as SenML packs of at most PACK_READINGS readings."""
    layout = group.layout
    topic = "%s/nodes/%s/readings" % (topic_base, layout.node)
    frames = _frames(group)
    packs: list[Pack] = []
    start = count = 0
    for index, (samples, _time) in enumerate(frames):
        if count and count + len(samples) // 3 > PACK_READINGS:
            packs.append(Pack(topic, senml.pack(layout.node, layout.channels, frames[start:index]), delivery))
            start, count = index, 0
        count += len(samples) // 3
    packs.append(Pack(topic, senml.pack(layout.node, layout.channels, frames[start:]), delivery))
    return packs


def publishable(chunks: Iterable[Chunk], layouts: Layouts, topic_base: str) -> Built:
    """Every frame of these chunks in SenML packs, as one delivery; what cannot be read stays out of it."""
    groups, used, damaged = group_frames(chunks, layouts)
    delivery = Delivery(used)
    packs: list[Pack] = []
    while groups:
        group = groups.pop()  # its frames are freed as soon as its packs exist
        try:
            packs += build_packs(group, topic_base, delivery)
        except DamagedFrames as error:
            delivery.chunk_ids = [chunk_id for chunk_id in delivery.chunk_ids if chunk_id not in group.chunk_ids]
            damaged += [(chunk_id, "node %s: %s" % (group.layout.node, error)) for chunk_id in sorted(group.chunk_ids)]
    delivery.unacked = len(packs)
    return Built(packs, delivery, damaged)


def _read_backlog(store: Store, layouts: Layouts, topic_base: str, after_id: int, up_to_id: int) -> tuple[int, Built]:
    """Runs on the store thread, so building packs does not hold up the event loop: (last chunk id read, packs)."""
    last = [after_id]

    def chunks() -> Iterator[Chunk]:
        for chunk in store.each_oldest(BACKLOG_FRAMES, after_id, up_to_id):
            last[0] = chunk.id
            yield chunk

    built = publishable(chunks(), layouts, topic_base)
    return last[0], built


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
        if delivery.unacked == 0:
            self._acked += delivery.chunk_ids

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
                if self._backlog_done:
                    return
                if not await self._read_backlog(epoch):
                    return
                continue
            mid = self._uplink.publish(pack.topic, pack.payload, self._qos, content_type=CONTENT_TYPE)
            if mid is None:
                return  # not connected after all: a reconnect reads the buffer again
            self._inflight[mid] = pack

    def _next_pack(self) -> Pack | None:
        if self._live_chunks:
            # Chunks on disk at connect time are the backlog's; the rest are published together.
            chunks = [chunk for chunk in self._live_chunks if chunk.id > self._backlog_end]
            self._live_chunks.clear()
            if chunks:
                self._add(self._live, publishable(chunks, self._layouts, self._topic_base))
        if self._live:
            return self._live.popleft()
        if self._backlog:
            return self._backlog.popleft()
        return None

    def _add(self, queue: deque[Pack], built: Built) -> None:
        for chunk_id, problem in built.damaged:
            if chunk_id not in self._reported:
                self._reported.add(chunk_id)
                log.error("buffered chunk %d cannot be read (%s); it stays on disk, unpublished", chunk_id, problem)
        if not built.packs:
            self._acked += built.delivery.chunk_ids  # chunks without a single frame: nothing to wait for
        queue.extend(built.packs)

    async def _read_backlog(self, epoch: int) -> bool:
        """Next part of the backlog; False when the connection changed meanwhile (nothing applied)."""
        last, built = await self._worker.call(
            _read_backlog, self._worker.store, self._layouts, self._topic_base, self._backlog_cursor, self._backlog_end
        )
        if epoch != self._epoch:
            return False
        if last == self._backlog_cursor:
            self._backlog_done = True
            return True
        self._backlog_cursor = last
        self._add(self._backlog, built)
        return True

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
