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
from dataclasses import dataclass

import cbor2

from . import senml
from .layouts import Layouts
from .senml import CONTENT_TYPE
from .store import Chunk, Store, StoredFrame, StoreError
from .store_worker import StoreWorker
from .uplink import Uplink

log = logging.getLogger(__name__)

PACK_READINGS = 500  # readings in one MQTT message at most
BACKLOG_FRAMES = 20_000  # frames read from disk at a time: many per node, so packs are large
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


@dataclass
class Built:
    packs: list[Pack]
    delivery: Delivery
    damaged: list[tuple[Chunk, str]]  # chunks that cannot be read: left on disk, reported


def _readings(frame: StoredFrame) -> senml.Frame:
    """(samples, time) of a stored frame; the payload passed the protocol's checks when it arrived."""
    fields = cbor2.loads(frame.payload)
    base_time = fields.get(0)
    return fields[1], round(frame.received, 3) if base_time is None else base_time


def build_packs(chunks: list[Chunk], layouts: Layouts, topic_base: str) -> Built:
    """Every frame of these chunks in SenML packs: per node layout, at most PACK_READINGS readings each."""
    per_layout: dict[int, list[senml.Frame]] = {}
    used: list[int] = []
    damaged: list[tuple[Chunk, str]] = []
    for chunk in chunks:
        if chunk.damaged:
            damaged.append((chunk, chunk.damaged))
            continue
        try:
            decoded = [(frame.layout, _readings(frame)) for frame in chunk.frames]
            unknown = [layout for layout, _frame in decoded if layout not in layouts.by_id]
            if unknown:
                raise ValueError("channel layout %d is not in the database" % unknown[0])
        except (ValueError, KeyError, TypeError, IndexError, cbor2.CBORDecodeError) as error:
            damaged.append((chunk, "%s: %s" % (type(error).__name__, error)))
            continue
        used.append(chunk.id)
        for layout_id, readings in decoded:
            per_layout.setdefault(layout_id, []).append(readings)
    delivery = Delivery(used)
    packs: list[Pack] = []
    for layout_id, frames in per_layout.items():
        layout = layouts.by_id[layout_id]
        topic = "%s/nodes/%s/readings" % (topic_base, layout.node)
        start = count = 0
        for index, (samples, _time) in enumerate(frames):
            if count and count + len(samples) // 3 > PACK_READINGS:
                packs.append(Pack(topic, senml.pack(layout.node, layout.channels, frames[start:index]), delivery))
                start, count = index, 0
            count += len(samples) // 3
        packs.append(Pack(topic, senml.pack(layout.node, layout.channels, frames[start:]), delivery))
    delivery.unacked = len(packs)
    return Built(packs, delivery, damaged)


def _read_backlog(store: Store, layouts: Layouts, topic_base: str, after_id: int, up_to_id: int) -> tuple[int, Built]:
    """Runs on the store thread, so building packs does not hold up the event loop: (last chunk id read, packs)."""
    chunks = store.oldest(BACKLOG_FRAMES, after_id, up_to_id)
    return (chunks[-1].id if chunks else after_id), build_packs(chunks, layouts, topic_base)


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
        if delivery.unacked <= 0:
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
            # Chunks on disk at connect time are the backlog's; the rest are built into packs together.
            chunks = [chunk for chunk in self._live_chunks if chunk.id > self._backlog_end]
            self._live_chunks.clear()
            if chunks:
                self._add(self._live, build_packs(chunks, self._layouts, self._topic_base))
        if self._live:
            return self._live.popleft()
        if self._backlog:
            return self._backlog.popleft()
        return None

    def _add(self, queue: deque[Pack], built: Built) -> None:
        for chunk, problem in built.damaged:
            if chunk.id not in self._reported:
                self._reported.add(chunk.id)
                log.error(
                    "buffered chunk %d (%d readings) cannot be read (%s); it stays on disk, unpublished", chunk.id, chunk.readings, problem
                )
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
