"""The forwarder's bookkeeping with a real buffer: reconnect races and refused publishes.

The uplink here is a recording stand-in: these tests are about which rows the
forwarder hands out and when, which the end-to-end tests cannot time precisely.
"""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import pytest

from gateway import forwarder as forwarder_module
from gateway.forwarder import Forwarder
from gateway.store import Batch, Store
from gateway.store_worker import StoreWorker


class RecordingUplink:
    def __init__(self) -> None:
        self.connected = True
        self.published: list[tuple[int, bytes]] = []
        self._mid = 0

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False, content_type: str | None = None) -> int | None:
        if not self.connected:
            return None
        self._mid += 1
        self.published.append((self._mid, payload))
        return self._mid


class GatedWorker(StoreWorker):
    """A store thread that can be held up, like one stuck in a slow fsync."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.gate = asyncio.Event()
        self.gate.set()

    async def call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        result = await super().call(function, *args, **kwargs)
        await self.gate.wait()  # the answer is ready but arrives late
        return result


def rows(store: Store, count: int, start: int = 0) -> None:
    store.commit([Batch("t", bytes([n]), 1, 0.0) for n in range(start, start + count)], {})


def connected_forwarder(
    tmp_path: pathlib.Path, count: int, worker_type: type[StoreWorker] = StoreWorker
) -> tuple[Store, StoreWorker, RecordingUplink, Forwarder]:
    """A store holding `count` rows and a forwarder over it, told the broker is connected."""
    store = Store(tmp_path, 10**9)
    rows(store, count)
    worker = worker_type(store)
    uplink = RecordingUplink()
    forwarder = Forwarder(worker, uplink, qos=1, window=64)  # type: ignore[arg-type]
    forwarder.connected()
    return store, worker, uplink, forwarder


async def settle(forwarder: Forwarder, rounds: int = 20) -> None:
    for _ in range(rounds):
        await forwarder._fill()
        await asyncio.sleep(0)


async def test_a_slow_read_from_before_a_reconnect_does_not_hide_the_backlog(tmp_path: pathlib.Path) -> None:
    store, worker, uplink, forwarder = connected_forwarder(tmp_path, 5, GatedWorker)
    assert isinstance(worker, GatedWorker)
    worker.gate.clear()
    stale = asyncio.create_task(forwarder._fill())  # stuck on the store
    await asyncio.sleep(0.05)
    forwarder.disconnected()
    rows(store, 2, start=5)  # committed while offline
    forwarder.connected()  # a quick reconnect while the old answer is still on its way
    worker.gate.set()
    await stale
    await settle(forwarder)
    assert {payload for _mid, payload in uplink.published} == {bytes([n]) for n in range(7)}
    assert len({mid for mid, _ in uplink.published}) == len(uplink.published)
    assert store.max_id() == 7 and forwarder._backlog_end == 7
    worker.close()


async def test_a_refused_publish_is_tried_again_on_the_same_connection(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forwarder_module, "REFUSED_RETRY_S", 0.05)
    store, worker, uplink, forwarder = connected_forwarder(tmp_path, 1)
    await settle(forwarder)
    (mid, _payload) = uplink.published[0]
    forwarder.puback(mid, False, "Quota exceeded")
    await asyncio.sleep(0.1)
    await settle(forwarder)
    assert len(uplink.published) == 2 and uplink.published[1][1] == b"\x00"
    forwarder.puback(uplink.published[1][0], True, "Success")
    await forwarder.settle(timeout=1)
    assert store.pending_batches == 0
    worker.close()
