"""Events (READINGS with PRIORITY, SPEC.md §3.3; issue 13): acknowledged like readings (durable first), in chunks of
their own, published on .../events ahead of any backlog and in the order the gateway took them.

The router rig (tests/test_router.py) runs Sessions, the router, a real committer on a real buffer and the
forwarder in this process, with a recording uplink whose PUBACKs the tests give. The end-to-end checks with
the real gateway, mosquitto and ptys are in tests/test_events_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.committer import LIVE, NOT_HELD, CommitResult, Committer, Pending
from gateway.disk import MIN_BUDGET
from gateway.fast_decode import readings_fields
from gateway.forwarder import PACK_READINGS, Forwarder, keep_undelivered
from gateway.router import EVENTS_PER_MINUTE, EventBudget
from gateway.senml import unpack
from gateway.store import Store, StoredFrame
from gateway.store_worker import StoreWorker
from protocols import Message, messages
from protocols import frame as fr
from tests.test_committer import NODE as COMMITTER_NODE
from tests.test_committer import Nodes
from tests.test_forwarder import NODE_A, GatedWorker, RecordingUplink, connected_forwarder, frame, layouts, rows, settle
from tests.test_hostile import HELLO_FIELDS, NODE
from tests.test_router import Rig, until

EVENT = fr.F_ACK_REQ | fr.F_PRIORITY


def sent(uplink: RecordingUplink, first: int = 0) -> list[tuple[str, int]]:
    """(topic kind, counter) of every frame published, in order: kind is "readings" or "events"."""
    return [
        (topic.rsplit("/", 1)[1], int(record["value"]))
        for _mid, topic, payload in uplink.published[first:]
        if topic.endswith(("/readings", "/events"))
        for record in unpack(payload)
        if record["name"].endswith(":counter")
    ]


def events(uplink: RecordingUplink) -> list[int]:
    return [counter for kind, counter in sent(uplink) if kind == "events"]


def event(rig: Rig, counter: int) -> None:
    rig.feed(Message(messages.READINGS, NODE, counter, {"samples": [1, counter, 0]}, EVENT))


@contextlib.asynccontextmanager
async def running_rig(tmp_path: pathlib.Path, **options: Any) -> AsyncIterator[Rig]:
    """tests/test_router.py's rig, broker connected, the node's HELLO acknowledged (options: Rig's)."""
    made = Rig(tmp_path, **options)
    tasks = [asyncio.create_task(made.committer.run()), asyncio.create_task(made.forwarder.run())]
    made.forwarder.connected()
    made.feed(Message(messages.HELLO, NODE, 1, HELLO_FIELDS, fr.F_ACK_REQ))
    assert made.acked() == [1]
    try:
        yield made
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        made.worker.close()


@pytest.fixture
async def rig(tmp_path: pathlib.Path) -> AsyncIterator[Rig]:
    async with running_rig(tmp_path) as made:
        yield made


def pubacks(rig: Rig) -> None:
    for mid in list(rig.forwarder._inflight):
        rig.forwarder.puback(mid, True, "Success")


async def stored(rig: Rig) -> list[tuple[bool, list[int]]]:
    """(priority, counters) of each chunk on disk, oldest first."""
    return [
        (chunk.priority, [messages.decode_payload(messages.READINGS, f.payload)["samples"][1] for f in chunk.frames])
        for chunk in await rig.worker.call(rig.store.oldest, 10**6)
    ]


def offline(rig: Rig) -> None:
    rig.uplink.connected = False
    rig.forwarder.disconnected()


def online(rig: Rig) -> None:
    rig.uplink.connected = True
    rig.forwarder.connected()


async def test_an_event_held_for_the_broker_goes_out_ahead_of_held_readings_and_is_acked_on_puback(rig: Rig) -> None:
    for counter in (2, 3):
        rig.readings(counter)
    event(rig, 4)  # in the same turn: the readings wait for the pump too
    await until(lambda: len(sent(rig.uplink)) == 3)
    assert sent(rig.uplink) == [("events", 4), ("readings", 2), ("readings", 3)]
    assert rig.uplink.published[0][1] == "edgegw/gw-test/nodes/%s/events" % NODE.hex()
    await asyncio.sleep(0.05)
    assert rig.acked() == [1], "no ACK before the PUBACK"
    pubacks(rig)
    assert sorted(rig.acked()) == [1, 2, 3, 4]
    assert await rig.chunks_written() == 0, "PUBACKed: nothing written, as for readings"
    assert rig.forwarder.events_published == 1


async def test_with_the_broker_away_an_event_is_committed_in_a_chunk_of_its_own_and_acked_only_then(rig: Rig) -> None:
    offline(rig)
    rig.readings(2)
    event(rig, 3)
    rig.readings(4)
    await until(lambda: 3 in rig.acked())
    assert (True, [3]) in await stored(rig), "the event is on disk, alone in its chunk, by its ACK"
    await until(lambda: {2, 4} <= set(rig.acked()))
    assert sorted(await stored(rig)) == [(False, [2, 4]), (True, [3])]


async def test_events_committed_during_an_outage_go_out_first_when_the_broker_returns(rig: Rig) -> None:
    offline(rig)
    for counter in range(2, 40):
        (event if counter in (20, 30) else Rig.readings)(rig, counter)  # type: ignore[operator]
    await until(lambda: set(range(2, 40)) <= set(rig.acked()))
    rig.forwarder._window = 1  # one publish at a time: the order on the wire is the order handed out
    online(rig)
    await until(lambda: len(sent(rig.uplink)) >= 2)
    assert sent(rig.uplink)[:2] == [("events", 20), ("events", 30)], "ahead of the older backlog"
    while len(sent(rig.uplink)) < 38:
        pubacks(rig)
        await asyncio.sleep(0.01)
    assert [c for kind, c in sent(rig.uplink) if kind == "readings"] == [c for c in range(2, 40) if c not in (20, 30)]


async def test_a_new_event_while_older_ones_are_on_disk_goes_to_disk_behind_them(rig: Rig) -> None:
    offline(rig)
    event(rig, 2)
    await until(lambda: 2 in rig.acked())
    online(rig)
    event(rig, 3)  # the broker answers, but event 2 is still buffered: 3 must not overtake it from memory
    await until(lambda: 3 in rig.acked() or len(events(rig.uplink)) >= 2)
    for _ in range(100):  # a node's event packs go one at a time: 3 after 2's PUBACK
        pubacks(rig)
        if len(events(rig.uplink)) >= 2:
            break
        await asyncio.sleep(0.02)
    assert events(rig.uplink) == [2, 3]
    assert await rig.chunks_written() == 2, "3 was written (behind 2), not held in memory"


async def test_held_events_lost_with_the_connection_go_to_disk_in_order_and_out_first_again(rig: Rig) -> None:
    for counter in range(2, 6):
        rig.readings(counter)
    event(rig, 6)
    event(rig, 7)
    await until(lambda: len(sent(rig.uplink)) == 6)
    offline(rig)
    await until(lambda: set(range(2, 8)) <= set(rig.acked()))
    chunks = await stored(rig)
    assert [counters for priority, counters in chunks if priority] == [[6, 7]]
    first = len(rig.uplink.published)
    rig.forwarder._window = 1
    online(rig)
    await until(lambda: len(rig.uplink.published) > first)
    assert sent(rig.uplink, first) == [("events", 6), ("events", 7)]


async def test_a_live_event_overtakes_the_backlog_being_drained(tmp_path: pathlib.Path) -> None:
    store, worker, uplink, forwarder = connected_forwarder(tmp_path, 1500, window=1)  # 3,000 readings: 6 packs
    await settle(forwarder, 5)
    assert sent(uplink) and all(kind == "readings" for kind, _c in sent(uplink))
    chunk_id, _ = store.commit([frame(1000)], 2, {}, priority=True)
    (chunk,) = store.oldest(1, chunk_id - 1, chunk_id)
    assert chunk.priority
    forwarder.live(chunk)
    before = len(uplink.published)
    forwarder.puback(uplink.published[-1][0], True, "Success")
    await settle(forwarder, 2)
    assert sent(uplink, before)[0] == ("events", 1000), "next after the pack in flight, ahead of the rest of the backlog"
    assert len(sent(uplink, before)) < 1500 - PACK_READINGS // 2, "the rest of the backlog came after it"
    worker.close()


async def test_an_event_held_in_memory_overtakes_the_backlog_being_drained(tmp_path: pathlib.Path) -> None:
    _store, worker, uplink, forwarder = connected_forwarder(tmp_path, 1500, window=1)
    await settle(forwarder, 5)
    stored_frame = frame(2000)
    fields = readings_fields(stored_frame.payload)
    assert fields is not None
    samples = (fields["samples"], fields["base_time"])
    held = Pending(NODE_A, 2000, stored_frame, 2, layouts().by_id[1], None, None, samples, state=LIVE, priority=True)  # type: ignore[arg-type]
    forwarder.hold(held)
    before = len(uplink.published)
    forwarder.puback(uplink.published[-1][0], True, "Success")
    await settle(forwarder, 2)
    assert sent(uplink, before)[0] == ("events", 2000), "next after the pack in flight, ahead of the rest of the backlog"
    worker.close()


async def test_a_live_event_waits_for_the_older_events_still_being_read_from_disk(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, 10**9)
    rows(store, 5)
    store.commit([frame(100)], 2, {}, priority=True)  # an event from before the connect
    worker = GatedWorker(store)
    uplink = RecordingUplink()
    forwarder = Forwarder(worker, uplink, qos=1, window=8, layouts=layouts(), topic_base="edgegw/gw")  # type: ignore[arg-type]
    forwarder.connected()
    await forwarder._fill()  # learns the backlog's end
    worker.gate.clear()
    await forwarder._fill()  # starts the read of the events on disk, held up on the store thread
    await asyncio.wait_for(worker.held.wait(), 30)
    chunk_id, _ = store.commit([frame(101)], 2, {}, priority=True)  # a newer event, committed while connected
    forwarder.live(store.oldest(1, chunk_id - 1, chunk_id)[0])
    await forwarder._fill()
    assert events(uplink) == [], "not ahead of the older event on disk"
    worker.gate.set()
    await settle(forwarder)
    assert events(uplink) == [100], "one pack of a node's events in flight at a time (a refusal must not reorder them)"
    assert [kind for kind, _c in sent(uplink)][:1] == ["events"]
    before = len(sent(uplink))
    for mid in list(forwarder._inflight):
        forwarder.puback(mid, True, "Success")
    await settle(forwarder)
    assert events(uplink) == [100, 101]
    assert [kind for kind, _c in sent(uplink)][before : before + 1] == ["events"], "101 next, ahead of the backlog"
    worker.close()


async def test_a_stop_keeps_an_event_chunk_an_event_chunk(tmp_path: pathlib.Path) -> None:
    """keep_undelivered rewrites a partly delivered chunk: a chunk of events stays one."""
    store = Store(tmp_path, 10**9)
    chunk_id, _ = store.commit([frame(1), frame(2)], 4, {}, priority=True)
    worker = StoreWorker(store)
    assert await worker.call(keep_undelivered, store, {chunk_id: {0}}) == 2
    (chunk,) = store.oldest(10)
    assert chunk.priority and len(chunk.frames) == 1 and store.pending_event_chunks == 1
    worker.close()


class EventNodes(Nodes):
    """tests/test_committer.py's committer on a real store; frames submitted as events or not, each commit's (priority, size) kept."""

    def __init__(self, tmp_path: pathlib.Path, commit_wait: float, max_bytes: int = 10**8) -> None:
        super().__init__(tmp_path, commit_wait)
        if max_bytes != 10**8:
            self.worker.store.close()
            self.worker = StoreWorker(Store(tmp_path / "small", max_bytes))
            self.committer = Committer(self.worker, self.layouts, "drop_oldest", self._on_done, commit_wait=commit_wait)
        self.chunks: list[tuple[bool, int]] = []

    def _on_done(self, result: CommitResult) -> None:
        if result.chunk is not None:
            self.chunks.append((result.chunk.priority, len(result.committed)))
        super()._on_done(result)

    def submit_event(self, payload: bytes) -> None:
        self.counter += 1
        frame = StoredFrame(self.layout.id, time.time(), payload)
        pending = Pending(COMMITTER_NODE, self.counter, frame, 10, self.layout, self.node, self.node.window, NOT_HELD, priority=True)
        self.committer.submit(pending)


async def test_an_event_is_committed_at_once_alone_while_ordinary_frames_go_on_gathering(tmp_path: pathlib.Path) -> None:
    nodes = EventNodes(tmp_path, commit_wait=60.0)  # far beyond the test's patience: ordinary frames wait for a stop
    task = asyncio.create_task(nodes.committer.run())
    nodes.submit()
    nodes.submit()
    nodes.submit_event(b"alarm")
    await nodes.until(1)
    assert nodes.chunks == [(True, 1)], "the event alone, at once; the two ordinary frames still gathering"
    await nodes.committer.drain()
    assert nodes.chunks == [(True, 1), (False, 2)]
    task.cancel()
    nodes.worker.close()


async def test_events_dropped_when_nothing_else_is_left_are_logged_once_and_counted_at_the_end(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    nodes = EventNodes(tmp_path, commit_wait=0.0, max_bytes=MIN_BUDGET)
    task = asyncio.create_task(nodes.committer.run())
    store = nodes.worker.store
    while not store.total("dropped_events"):  # only events: once the budget is reached, events are all there is to drop
        nodes.submit_event(os.urandom(200))
        await nodes.until(nodes.counter)
    nodes.submit_event(os.urandom(200))
    await nodes.until(nodes.counter)
    assert caplog.text.count("no ordinary readings are left to drop: dropping the oldest buffered events") == 1, "once an episode"
    await nodes.worker.call(store.delete, [chunk.id for chunk in store.oldest(10**6)][:-1])  # the broker took them
    nodes.submit_event(b"alarm")
    await nodes.until(nodes.counter)
    dropped = store.total("dropped_events")
    assert "readings were dropped while it was full (%d event frames among them)" % dropped in caplog.text
    await nodes.committer.drain()
    task.cancel()
    nodes.worker.close()


# ------------------------------------------------------------ evfix: the per-node bound, empty frames


def test_the_event_budget_is_a_token_bucket_per_node() -> None:
    budget = EventBudget(per_minute=3)
    assert [budget.take("a", 0.0) for _ in range(4)] == [True, True, True, False], "a burst of 3, then none"
    assert budget.take("b", 0.0), "another node has its own bucket"
    assert not budget.take("a", 10.0), "0.5 of a token back after 10 s"
    assert budget.take("a", 20.0), "one token back after 20 s"


async def test_a_node_past_its_event_budget_has_its_events_handled_as_readings_logged_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    count = EVENTS_PER_MINUTE + 5
    for counter in range(2, 2 + count):
        event(rig, counter)
    for _ in range(200):
        pubacks(rig)
        if set(range(2, 2 + count)) <= set(rig.acked()):
            break
        await asyncio.sleep(0.02)
    assert set(range(2, 2 + count)) <= set(rig.acked()), "every frame acknowledged, urgent or not"
    for _ in range(50):
        pubacks(rig)
        if len(sent(rig.uplink)) >= count:
            break
        await asyncio.sleep(0.02)
    assert events(rig.uplink) == list(range(2, 2 + EVENTS_PER_MINUTE)), "the budget's worth as events, in order"
    assert [c for kind, c in sent(rig.uplink) if kind == "readings"] == list(range(2 + EVENTS_PER_MINUTE, 2 + count)), (
        "the rest published as ordinary readings"
    )
    assert rig.router.events_demoted == 5
    lines = [r for r in caplog.records if "events a minute" in r.getMessage()]
    assert len(lines) == 1, "one line for the episode"


def test_a_frame_of_no_samples_makes_no_pack_event_or_not(tmp_path: pathlib.Path) -> None:
    """SenML `[]` on the wire says nothing: neither readings nor events publish one."""
    from gateway.forwarder import EVENTS, READINGS, publishable
    from gateway.store import Chunk

    empty = StoredFrame(1, time.time(), messages.encode_payload(messages.READINGS, {"samples": []}))
    for kind in (READINGS, EVENTS):
        packs, damaged = publishable([Chunk(1, [empty], 0)], layouts(), "edgegw/gw", kind)
        assert packs == [] and damaged == []
        packs, damaged = publishable([Chunk(1, [empty, frame(7)], 2)], layouts(), "edgegw/gw", kind)
        assert len(packs) == 1 and unpack(packs[0].payload) and damaged == []


async def test_an_ordinary_group_is_refused_not_stored_over_events_and_logged_once(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """drop_oldest with a buffer of events only: ordinary frames are not acknowledged (their nodes keep them, as
    under stop_acking), no event is evicted for them, one line for the episode."""
    nodes = EventNodes(tmp_path, commit_wait=0.0, max_bytes=MIN_BUDGET)
    task = asyncio.create_task(nodes.committer.run())
    store = nodes.worker.store
    try:
        while not store.total("dropped_events"):  # full of events: the next event evicts the oldest one
            nodes.submit_event(os.urandom(200))
            await nodes.until(nodes.counter)
        dropped, events_before = store.total("dropped_events"), store.pending_events
        refused = 0
        for _ in range(200):  # what room the last eviction left takes a few; then every one is refused
            nodes.submit(size=200)
            while len(nodes.groups) < nodes.counter:  # one result a frame here (committed or refused)
                nodes.done.clear()
                await asyncio.wait_for(nodes.done.wait(), 30)
            refused += nodes.groups[-1] == 0
            if refused == 3:
                break
        assert refused == 3, "ordinary frames refused once only events were left to evict"
        assert store.total("dropped_events") == dropped and store.pending_events == events_before, "no event evicted for it"
        assert caplog.text.count("only events are left to drop: ordinary readings are not acknowledged") == 1
    finally:
        await nodes.committer.drain()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        nodes.worker.close()
