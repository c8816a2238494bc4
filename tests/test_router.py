"""Broker first, disk when the broker does not answer in time: frames in over a real Link, through Sessions,
the router, a real committer on a real buffer and the forwarder, out to a recording uplink whose PUBACKs
the tests give (or withhold)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.committer import LIVE, CommitResult, Committer
from gateway.forwarder import LIVE_FRAMES, Forwarder
from gateway.layouts import Layouts
from gateway.router import Router
from gateway.serial_link import Link
from gateway.sessions import Sessions
from gateway.store import Store, WindowState
from gateway.store_worker import StoreWorker
from protocols import Message, StreamDecoder, encode, messages
from protocols import frame as fr
from tests.test_forwarder import RecordingUplink
from tests.test_hostile import HELLO_FIELDS, NODE, _Transport, acked

WAIT_S = 0.3  # broker_ack_wait here


class Rig:
    """One gateway's READINGS path in this process; the uplink's PUBACKs are given by the test."""

    def __init__(self, tmp_path: pathlib.Path, qos: int = 1, window: int = 64, wait_s: float = WAIT_S) -> None:
        self.store = Store(tmp_path, 10**9)
        self.worker = StoreWorker(self.store)
        self.uplink = RecordingUplink()
        layouts = Layouts()
        self.forwarder = Forwarder(self.worker, self.uplink, qos, window, layouts, "edgegw/gw-test")  # type: ignore[arg-type]
        self.committer = Committer(self.worker, layouts, "drop_oldest", self._committed)
        self.router = Router(self.committer, self.forwarder, wait_s, lambda frames: self.sessions.safe(frames))
        self.sessions = Sessions(
            "gw-test", "edgegw", self.router, layouts, lambda topic, payload: None, lambda node, info: None, self._save_reset
        )
        counters = itertools.count(100)
        self.link = Link("/dev/ttyTEST", self.sessions, lambda link, exc: None, lambda: next(counters))
        self.transport = _Transport(self.link)
        self.link.connection_made(self.transport)  # type: ignore[arg-type]
        self._decoder = StreamDecoder()
        self.acks: list[int] = []

    def _save_reset(self) -> None:
        """As the agent does (Agent._fold): the windows folded durably, then the reset ones said saved."""

        async def fold() -> None:
            moved = self.sessions.moved_windows()
            await self.worker.call(self.store.save_windows, moved, True)
            self.sessions.reset_saved(moved)

        self._folding = asyncio.get_running_loop().create_task(fold())

    def _committed(self, result: CommitResult) -> None:
        self.router.committed(result)
        self.sessions.committed(result)
        if result.chunk is not None:
            self.forwarder.live(result.chunk)

    def feed(self, message: Message) -> None:
        self.link.data_received(b"\x00" + encode(message))

    def readings(self, counter: int) -> None:
        self.feed(Message(messages.READINGS, NODE, counter, {"samples": [1, counter, 0]}, fr.F_ACK_REQ))

    def acked(self) -> list[int]:
        """Every counter acknowledged so far (HELLO's included), in order."""
        self._decoder.feed(bytes(self.transport.written))
        self.transport.written.clear()
        self.acks += acked([event for event in self._decoder.drain() if isinstance(event, Message)])
        return self.acks

    def published(self) -> list[int]:
        return self.uplink.counters()

    def in_flight(self) -> list[int]:
        """The mids of readings packs published and not answered yet."""
        return [mid for mid, item in self.forwarder._inflight.items() if item.topic.endswith("/readings")]

    def puback_all(self, accepted: bool = True, reason: str = "Success") -> None:
        for mid in self.in_flight():
            self.forwarder.puback(mid, accepted, reason)

    async def chunks_written(self) -> int:
        return await self.worker.call(self.store.max_id)  # chunk ids are never reused: every commit that ever stored frames

    async def stored_counters(self) -> list[int]:
        return [
            counter
            for chunk in await self.worker.call(self.store.oldest, 10**6)
            for _layout, _received, payload in chunk.frames
            for counter in messages.decode_payload(messages.READINGS, payload)["samples"][1::3]
        ]


async def until(condition: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


@pytest.fixture
async def rig(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    made = Rig(tmp_path, **getattr(request, "param", {}))
    tasks = [asyncio.create_task(made.committer.run()), asyncio.create_task(made.forwarder.run())]
    made.forwarder.connected()
    made.feed(Message(messages.HELLO, NODE, 1, HELLO_FIELDS, fr.F_ACK_REQ))
    assert made.acked() == [1]
    yield made
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    made.worker.close()


async def test_a_frame_the_broker_acknowledges_is_acked_on_puback_and_never_written(rig: Rig) -> None:
    rig.readings(2)
    await until(lambda: rig.published() == [2])
    await asyncio.sleep(0.05)
    assert rig.acked() == [1], "no ACK before the PUBACK"
    rig.puback_all()
    assert rig.acked() == [1, 2]
    await asyncio.sleep(WAIT_S * 2)  # past the deadline: nothing goes to disk after all
    assert await rig.chunks_written() == 0
    assert (rig.router.acked_by_broker, rig.router.acked_on_disk, rig.router.missed_deadline) == (1, 0, 0)
    assert rig.sessions.moved_windows() == {NODE.hex(): WindowState(2, 0b11)}, "the moved window is to be written"
    assert rig.sessions.moved_windows() == {}


async def test_a_retransmission_while_on_the_broker_path_is_published_once_and_acked(rig: Rig) -> None:
    rig.readings(2)
    await until(lambda: rig.published() == [2])
    rig.readings(2)  # the node's retry timer fired: attached to the frame under way
    rig.puback_all()
    assert set(rig.acked()) == {1, 2}
    rig.readings(2)  # the ACK was lost on the line: a duplicate, acknowledged again, not published again
    assert rig.acked().count(2) >= 2
    await asyncio.sleep(0.05)
    assert rig.published() == [2] and await rig.chunks_written() == 0


async def test_a_frame_whose_puback_is_late_goes_to_disk_and_new_frames_go_there_first(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.router")
    rig.readings(2)
    await until(lambda: rig.published() == [2])
    await until(lambda: 2 in rig.acked())  # the broker is silent: acknowledged once committed
    assert await rig.stored_counters() == [2] and rig.router.missed_deadline == 1
    for counter in (3, 4):  # disk first while the late pack is unanswered
        rig.readings(counter)
    await until(lambda: {3, 4} <= set(rig.acked()))
    assert await rig.stored_counters() == [2, 3, 4]
    assert rig.router.missed_deadline == 1, "3 and 4 were never held for the broker"
    rig.puback_all()  # the late PUBACK: the broker answers again
    rig.readings(5)
    await until(lambda: 5 in rig.published())
    rig.puback_all()
    assert 5 in rig.acked() and 5 not in await rig.stored_counters()
    assert rig.router.acked_on_disk == 3 and rig.router.acked_by_broker == 1
    misses = [r for r in caplog.records if "did not acknowledge readings within" in r.getMessage()]
    assert len(misses) == 1, "one line per episode"
    assert any("answers in time again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("rig", [{"window": 1}], indirect=True)
async def test_a_frame_not_yet_on_the_wire_at_its_deadline_is_not_published_from_memory(rig: Rig) -> None:
    rig.readings(2)
    await until(lambda: rig.published() == [2])
    rig.readings(3)  # waits behind the one-pack window
    await until(lambda: {2, 3} <= set(rig.acked()))  # both missed the deadline: committed
    rig.puback_all()  # the window frees up: 3's pack was taken back, the committed chunk goes out instead
    await until(lambda: 3 in rig.published())
    for _ in range(5):
        rig.puback_all()
        await asyncio.sleep(0.05)
    assert rig.published().count(3) == 1, "published once, from disk"
    assert rig.published().count(2) == 2, "2 was in flight at its deadline: published from memory and from disk"


async def test_a_lost_connection_sends_every_held_frame_to_disk_in_arrival_order(rig: Rig) -> None:
    for counter in range(2, 7):
        rig.readings(counter)
    await until(lambda: rig.published() == [2, 3, 4, 5, 6])
    rig.uplink.connected = False
    rig.forwarder.disconnected()
    rig.readings(7)  # disconnected: disk first
    await until(lambda: set(range(2, 8)) <= set(rig.acked()))
    assert await rig.stored_counters() == [2, 3, 4, 5, 6, 7]
    assert rig.router.missed_deadline == 0 and rig.router.acked_on_disk == 6
    rig.uplink.connected = True
    rig.forwarder.connected()
    await until(lambda: rig.published().count(7) == 1)  # the backlog: from disk, not from memory
    await asyncio.sleep(0.1)
    assert sorted(rig.published()) == [2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7], "held frames are never resent from memory"


async def test_a_refused_pack_sends_its_frames_to_disk_and_new_ones_go_there_while_refused(rig: Rig) -> None:
    rig.readings(2)
    await until(lambda: rig.published() == [2])
    rig.puback_all(accepted=False, reason="Quota exceeded")
    await until(lambda: 2 in rig.acked())
    rig.readings(3)
    await until(lambda: 3 in rig.acked())
    assert await rig.stored_counters() == [2, 3] and rig.router.acked_by_broker == 0
    assert rig.published() == [2], "nothing goes out while paused, and nothing from memory again"


async def test_a_frame_acked_on_puback_is_a_duplicate_on_the_disk_path_too(rig: Rig) -> None:
    rig.readings(2)
    await until(lambda: rig.published() == [2])
    rig.puback_all()
    assert rig.acked() == [1, 2]
    rig.uplink.connected = False
    rig.forwarder.disconnected()
    rig.readings(2)  # the ACK was lost; the gateway is on the disk path now
    rig.readings(3)
    await until(lambda: 3 in rig.acked())
    assert rig.acked().count(2) == 2
    assert await rig.stored_counters() == [3], "the duplicate is acknowledged again, not stored"


async def test_a_commit_not_begun_passes_over_a_frame_the_broker_acknowledged_meanwhile(rig: Rig) -> None:
    """A frame in flight at its deadline goes to the committer too; its late PUBACK, coming before that commit
    began, acknowledges it, and it is not written (else it is, and published twice)."""
    rig.router.close()  # disk first: the committer gets the next frames
    rig.readings(2)
    rig.readings(3)
    two, _three = rig.committer._queue  # submitted, the committer not woken yet
    rig.router.acked([two])  # as a late PUBACK reports it
    assert 2 in rig.acked()
    await until(lambda: 3 in rig.acked())
    assert await rig.stored_counters() == [3]
    assert (rig.router.acked_by_broker, rig.router.acked_on_disk) == (1, 1)


@pytest.mark.parametrize("rig", [{"wait_s": 30.0, "window": 2}], indirect=True)
async def test_at_most_live_frames_wait_in_memory_for_the_broker_built_and_in_flight_too(rig: Rig) -> None:
    """README: at most 4,096 frames wait in memory for the broker. Frames already built into packs (waiting for a
    slot of the window) or in flight count until answered: the next frame goes to disk first (once, only frames
    not built yet counted, and a reviewer held 18,000); once the broker answers, frames go to it first again."""
    counters = range(2, 2 + LIVE_FRAMES)
    for counter in counters:
        rig.readings(counter)
    await until(lambda: len(rig.in_flight()) == 2 and not rig.forwarder._held)  # built into packs: 2 in flight, the rest waiting
    rig.readings(counters[-1] + 1)
    assert sum(1 for _deadline, pending in rig.router._held if pending.state == LIVE) == LIVE_FRAMES
    await until(lambda: counters[-1] + 1 in rig.acked())
    assert await rig.stored_counters() == [counters[-1] + 1] and rig.acked() == [1, counters[-1] + 1]
    while rig.in_flight():
        rig.puback_all()
        await asyncio.sleep(0.01)
    assert rig.acked()[2:] == list(counters) and rig.router.acked_by_broker == LIVE_FRAMES
    rig.readings(counters[-1] + 2)
    await until(lambda: rig.in_flight())
    rig.puback_all()
    assert rig.acked()[-1] == counters[-1] + 2 and await rig.stored_counters() == [counters[-1] + 1], "broker first again"


@pytest.mark.parametrize("rig", [{"qos": 0}, {"wait_s": 0}], indirect=True)
async def test_without_pubacks_or_with_no_wait_every_frame_goes_to_disk_first(rig: Rig) -> None:
    rig.readings(2)
    await until(lambda: 2 in rig.acked())
    assert await rig.stored_counters() == [2] and rig.router.acked_by_broker == 0 and rig.router.acked_on_disk == 1
    assert rig.sessions.moved_windows() == {NODE.hex(): WindowState(2, 0b11)}
