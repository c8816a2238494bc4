"""Buffer -> broker: an inflight window of QoS 1 publishes, live data first, backlog behind it.

A row leaves the buffer only when the broker's PUBACK for it arrives. On every
(re)connect the rows already buffered form the backlog, read oldest first in
chunks; rows committed while connected go to the live queue, which is served
before the backlog whenever a slot in the window frees up. Latest-value retained
messages (status topics) are not buffered: the newest one per topic is sent when
connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from .senml import CONTENT_TYPE
from .store import StoredBatch, StoreError
from .store_worker import StoreWorker
from .uplink import Uplink

log = logging.getLogger(__name__)

BACKLOG_CHUNK = 2000
DELETE_EVERY = 500  # acknowledged rows collected before one delete transaction
DELETE_AFTER_S = 0.2  # ... or after this long
REFUSED_RETRY_S = 5.0  # a publish the broker refused (quota, authorisation) is tried again after this


class Forwarder:
    def __init__(self, worker: StoreWorker, uplink: Uplink, qos: int, window: int) -> None:
        self._worker = worker
        self._uplink = uplink
        self._qos = qos
        self._window = window
        self._inflight: dict[int, StoredBatch | None] = {}  # mid -> row (None for a retained status)
        self._live: deque[StoredBatch] = deque()
        self._backlog: deque[StoredBatch] = deque()
        self._backlog_cursor = 0
        self._backlog_end = 0
        self._backlog_done = True
        self._retained: dict[str, bytes] = {}
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self._epoch = 0

    # ------------------------------------------------------------ events (event loop)

    def connected(self) -> None:
        self._epoch += 1  # reads still in flight from an earlier connection are ignored
        self._inflight.clear()
        self._live.clear()
        self._backlog.clear()
        self._backlog_cursor = 0
        self._backlog_end = -1  # set by the pump once it has asked the store
        self._backlog_done = False
        self._wake.set()

    def disconnected(self) -> None:
        self._epoch += 1
        self._inflight.clear()
        self._live.clear()
        self._backlog.clear()
        self._backlog_done = True

    def live(self, rows: list[StoredBatch]) -> None:
        if self._uplink.connected:
            self._live.extend(rows)
            self._wake.set()

    def retained(self, topic: str, payload: bytes) -> None:
        self._retained[topic] = payload
        self._wake.set()

    def puback(self, mid: int, accepted: bool, reason: str) -> None:
        if mid not in self._inflight:
            return
        row = self._inflight.pop(mid)
        if row is not None:
            if accepted:
                self._acked.append(row.id)
            else:
                log.error("the broker refused a readings publish (%s); the batch stays buffered and is retried", reason)
                loop = asyncio.get_running_loop()
                loop.call_later(REFUSED_RETRY_S, self._retry, row, self._epoch)
        self._wake.set()

    def _retry(self, row: StoredBatch, epoch: int) -> None:
        if epoch == self._epoch:  # a reconnect re-reads the whole buffer anyway
            self._backlog.appendleft(row)
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
            row = self._next_row()
            if row is None:
                if self._backlog_done:
                    return
                if not await self._read_backlog(epoch):
                    return
                continue
            mid = self._uplink.publish(row.topic, row.payload, self._qos, content_type=CONTENT_TYPE)
            if mid is None:
                return
            self._inflight[mid] = row

    def _next_row(self) -> StoredBatch | None:
        while self._live:
            row = self._live.popleft()
            if row.id > self._backlog_end:  # older rows were on disk at connect: the backlog has them
                return row
        if self._backlog:
            return self._backlog.popleft()
        return None

    async def _read_backlog(self, epoch: int) -> bool:
        """Next chunk of the backlog; False when the connection changed meanwhile (nothing applied)."""
        rows = await self._worker.call(self._worker.store.oldest, BACKLOG_CHUNK, self._backlog_cursor)
        if epoch != self._epoch:
            return False
        rows = [row for row in rows if row.id <= self._backlog_end]
        if not rows:
            self._backlog_done = True
            return True
        self._backlog_cursor = rows[-1].id
        self._backlog.extend(rows)
        return True

    async def settle(self, timeout: float) -> None:
        """Stop handing out rows, wait (bounded) for the PUBACKs in flight, delete what was acknowledged."""
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
        except StoreError as error:  # the rows stay; they may be published again, never lost
            log.error("%s; will try again", error)
            self._acked = acked + self._acked
