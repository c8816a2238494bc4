"""Broker first, disk when the broker does not answer in time: frames in over a real Link, through Sessions,
the router, a real committer on a real buffer and the forwarder, out to a recording uplink whose PUBACKs
the tests give (or withhold). The PUBACK round trips the router times are on a clock the tests move
(Rig.clock); the deadlines are the event loop's."""

from __future__ import annotations

import asyncio
import itertools
import logging
import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway import forwarder
from gateway.committer import LIVE, CommitResult, Committer
from gateway.forwarder import LIVE_FRAMES, Forwarder
from gateway.layouts import Layouts
from gateway.router import RECOVER_S, Recovery, Router
from gateway.serial_link import Link
from gateway.sessions import Sessions
from gateway.store import Store, WindowState
from gateway.store_worker import StoreWorker
from protocols import Message, StreamDecoder, encode, messages
from protocols import frame as fr
from tests.test_forwarder import RecordingUplink
from tests.test_hostile import HELLO_FIELDS, NODE, _Transport, acked

WAIT_S = 0.3  # broker_ack_wait here


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """One gateway's READINGS path in this process; the uplink's PUBACKs are given by the test."""

    def __init__(self, tmp_path: pathlib.Path, qos: int = 1, window: int = 64, wait_s: float = WAIT_S) -> None:
        self.store = Store(tmp_path, 10**9)
        self.worker = StoreWorker(self.store)
        self.uplink = RecordingUplink()
        self.clock = Clock()
        layouts = Layouts()
        self.forwarder = Forwarder(self.worker, self.uplink, qos, window, layouts, "edgegw/gw-test", clock=self.clock)  # type: ignore[arg-type]
        self.committer = Committer(self.worker, layouts, "drop_oldest", self._committed)
        self.router = Router(self.committer, self.forwarder, wait_s, lambda frames: self.sessions.safe(frames), clock=self.clock)
        self.during_commit: Callable[[CommitResult], None] = lambda result: None  # runs as if while the commit was under way
        self.sessions = Sessions(
            "gw-test", "edgegw", self.router, layouts, lambda topic, payload: None, lambda node, info: None, self._save_reset
        )
        counters = itertools.count(100)
        self.link = Link("/dev/ttyTEST", self.sessions, lambda link, exc: None, lambda node: next(counters))
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
        self.during_commit(result)
        delivered = self.router.committed(result)
        self.sessions.committed(result)
        if result.chunk is not None:
            self.forwarder.live(result.chunk, delivered)

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


async def test_after_a_late_puback_frames_go_to_disk_first_until_the_broker_answers_well_in_time_for_a_while(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the router went broker first again as soon as the late pack was answered: on a link whose round
    trip sits just past broker_ack_wait it flapped, and every frame in flight at each miss went out twice. Now
    only answers within half of broker_ack_wait, RECOVER_S apart with none slower between, bring it back."""
    caplog.set_level(logging.INFO, "gateway.router")
    rig.readings(2)
    await until(lambda: rig.published() == [2])
    await until(lambda: 2 in rig.acked())  # the broker is silent: acknowledged once committed
    assert await rig.stored_counters() == [2] and rig.router.missed_deadline == 1
    rig.readings(3)  # disk first while the late pack is unanswered
    await until(lambda: 3 in rig.published())  # from disk
    rig.clock.now += WAIT_S * 1.1  # the answers come just past the deadline
    rig.puback_all()
    rig.readings(4)
    await until(lambda: 4 in rig.published())
    assert 4 in await rig.stored_counters(), "answered late: still disk first"
    rig.puback_all()  # answered at once: a run of quick answers begins
    rig.clock.now += RECOVER_S - 0.1
    rig.readings(5)
    await until(lambda: 5 in rig.published())
    rig.puback_all()  # quick, but less than RECOVER_S after the first
    rig.readings(6)
    await until(lambda: 6 in rig.published())
    assert 6 in await rig.stored_counters(), "the run is not RECOVER_S long yet"
    rig.clock.now += 0.1
    rig.puback_all()  # quick, RECOVER_S after the first: broker first again
    rig.readings(7)
    await until(lambda: 7 in rig.published())
    rig.puback_all()
    assert 7 in rig.acked() and 7 not in await rig.stored_counters(), "held for the broker, never written"
    assert rig.router.missed_deadline == 1, "3 to 6 were never held for the broker"
    assert (rig.router.acked_on_disk, rig.router.acked_by_broker) == (5, 1)
    assert rig.published().count(2) == 1, "2's late PUBACK came: its copy on disk is not published"
    misses = [r for r in caplog.records if "did not acknowledge readings within" in r.getMessage()]
    assert len(misses) == 1, "one line per episode"
    assert [r.getMessage() for r in caplog.records if "answers in time again" in r.getMessage()] == [
        "the broker answers in time again (within 0.15 s for 10 s); readings go to it first (1 frames went to disk meanwhile)"
    ]


async def test_a_slow_answer_or_a_slow_pack_in_flight_starts_the_run_of_quick_answers_again(rig: Rig) -> None:
    rig.readings(2)
    await until(lambda: 2 in rig.acked())  # missed
    rig.puback_all()
    for step, counter in enumerate(range(3, 7)):  # quick, quick, slow, quick: RECOVER_S in all, but the run is broken
        rig.clock.now += RECOVER_S / 3 if step else 0
        rig.readings(counter)
        await until(lambda: counter in rig.published())  # noqa: B023 (awaited at once)
        rig.clock.now += WAIT_S if counter == 5 else 0
        rig.puback_all()
    rig.readings(7)
    await until(lambda: 7 in rig.published())
    assert 7 in await rig.stored_counters(), "the slow answer broke the run: still disk first"
    rig.clock.now += RECOVER_S
    rig.readings(8)
    await until(lambda: 8 in rig.published())
    assert 8 in await rig.stored_counters(), "7's pack is still unanswered, RECOVER_S after its publish: slow"
    rig.puback_all()  # 7 (slow) and 8 (quick): a run starts at 8
    rig.clock.now += RECOVER_S
    rig.readings(9)
    await until(lambda: 9 in rig.published())
    rig.puback_all()
    rig.readings(10)
    await until(lambda: 10 in rig.published())
    assert 10 not in await rig.stored_counters(), "quick answers RECOVER_S apart: broker first again"


def test_recovery_needs_quick_answers_recover_s_apart_with_none_slow_between() -> None:
    recovery = Recovery(1.0)  # quick: within 0.5 s
    assert not recovery.recovered(0.0, None)
    recovery.answered(0.4, now=100.0)
    assert not recovery.recovered(100.0 + RECOVER_S * 5, None), "one answer, however long ago, is no run"
    recovery.answered(0.5, now=100.0 + RECOVER_S)
    assert recovery.recovered(100.0 + RECOVER_S, None)
    assert not recovery.recovered(100.0 + RECOVER_S + 1, oldest_unanswered=100.0 + RECOVER_S), "a pack out 1 s: slow"
    recovery.answered(0.1, now=200.0)
    recovery.answered(0.1, now=200.0 + RECOVER_S)
    assert recovery.recovered(200.0 + RECOVER_S, oldest_unanswered=200.0 + RECOVER_S - 0.5)
    recovery.reset()  # a miss
    assert not recovery.recovered(200.0 + RECOVER_S, None)
    recovery.answered(0.1, now=300.0)
    recovery.answered(0.51, now=305.0)
    recovery.answered(0.1, now=300.0 + RECOVER_S)
    assert not recovery.recovered(300.0 + RECOVER_S, None), "the slow answer ended the run"


async def test_a_frame_committed_after_its_deadline_and_puback_ed_after_all_is_not_published_from_disk(rig: Rig) -> None:
    """A frame in flight at its deadline is committed and acknowledged; its chunk waits for the publish from memory to
    be answered, and since it is, that chunk is deleted, never published (before: published again from disk)."""
    rig.readings(2)
    await until(lambda: rig.published() == [2])
    await until(lambda: 2 in rig.acked())  # missed: committed
    assert await rig.stored_counters() == [2]
    await asyncio.sleep(0.2)
    assert rig.published() == [2], "the chunk waits: 2 is still in flight from memory"
    rig.puback_all()
    await asyncio.sleep(0.2)
    assert rig.published() == [2] and not rig.in_flight()
    assert (rig.router.acked_on_disk, rig.router.acked_by_broker) == (1, 0)
    await rig.forwarder.finish()  # a stop's last delete
    assert await rig.stored_counters() == [], "delivered from memory: deleted"


async def test_a_frame_puback_ed_while_its_commit_was_under_way_is_not_published_from_disk(rig: Rig) -> None:
    rig.router.close()  # disk first: the committer gets the next frames
    rig.readings(2)
    rig.readings(3)

    def puback_meanwhile(result: CommitResult) -> None:
        rig.router.acked([pending for pending in result.committed if pending.counter == 2])  # as a late PUBACK reports it

    rig.during_commit = puback_meanwhile
    await until(lambda: {2, 3} <= set(rig.acked()))
    assert await rig.stored_counters() == [2, 3]
    assert (rig.router.acked_by_broker, rig.router.acked_on_disk) == (1, 1)
    await until(lambda: rig.published() == [3])
    rig.puback_all()
    await asyncio.sleep(0.1)
    assert rig.published() == [3], "2 is at the broker already"
    await rig.forwarder.finish()
    assert await rig.stored_counters() == [], "every frame of the chunk acknowledged: deleted"


async def test_a_committed_frame_whose_publish_from_memory_is_lost_is_published_from_disk(rig: Rig) -> None:
    rig.readings(2)
    await until(lambda: rig.published() == [2])
    await until(lambda: 2 in rig.acked())  # missed: committed, its chunk waiting for 2's answer
    rig.uplink.connected = False
    rig.forwarder.disconnected()  # no answer will come
    rig.uplink.connected = True
    rig.forwarder.connected()
    await until(lambda: rig.published() == [2, 2])  # the backlog: from disk
    rig.puback_all()
    await rig.forwarder.finish()
    assert await rig.stored_counters() == []


async def test_a_committed_frame_whose_publish_from_memory_is_refused_is_published_from_disk(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forwarder, "REFUSED_RETRY_S", 0.2)
    rig.readings(2)
    rig.readings(3)  # one pack from memory
    await until(lambda: rig.published() == [2, 3])
    await until(lambda: {2, 3} <= set(rig.acked()))  # missed: committed
    rig.puback_all(accepted=False, reason="Quota exceeded")
    await until(lambda: rig.published() == [2, 3, 2, 3])  # after the pause, from disk
    rig.puback_all()
    await rig.forwarder.finish()
    assert await rig.stored_counters() == []


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
    assert rig.published().count(2) == 1, "2 was in flight at its deadline and PUBACKed after all: not published from disk"


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
async def test_at_most_live_frames_wait_in_memory_for_the_broker_built_and_in_flight_too(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: at most 4,096 frames wait in memory for the broker. Frames already built into packs (waiting for a
    slot of the window) or in flight count until answered: the next frame goes to disk first (once, only frames
    not built yet counted, and a reviewer held 18,000); once the broker answers, frames go to it first again."""
    # The chunk that went to disk is published and PUBACKed below too: on a busy machine this test outlasts the
    # deleter's 5 s and that chunk was gone before it was looked for (stored_counters() == []).
    monkeypatch.setattr(forwarder, "DELETE_AFTER_S", 3600.0)
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


@pytest.mark.parametrize("rig", [{"window": 1}], indirect=True)
async def test_a_stop_keeps_on_disk_only_the_frames_of_a_waiting_chunk_the_broker_has_not_acknowledged(rig: Rig) -> None:
    """The agent's stop order (settle, release_held, the uplink's stop: disconnected, then finish): a committed chunk not
    built yet, one of whose frames the broker PUBACKed from memory, is rewritten without that frame (before: the
    disconnect forgot which frames the broker had, and a restart published 2 again)."""
    rig.router.close()  # disk first
    rig.readings(5)
    await until(lambda: rig.published() == [5])  # in flight: the window (1) is full
    rig.during_commit = lambda result: rig.router.acked([p for p in result.committed if p.counter == 2])
    rig.readings(2)
    rig.readings(3)  # one commit: 2 and 3 in one chunk, 2 PUBACKed (as from memory) while it was under way
    await until(lambda: {2, 3} <= set(rig.acked()))
    assert await rig.stored_counters() == [5, 2, 3] and await rig.chunks_written() == 2
    await rig.forwarder.settle(timeout=0.1)  # 5 is not answered
    rig.forwarder.release_held()
    rig.uplink.connected = False
    rig.forwarder.disconnected()
    await rig.forwarder.finish()
    assert rig.published() == [5]
    assert await rig.stored_counters() == [5, 3], "2 is at the broker: not kept for a restart to publish again"
