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
from gateway.committer import Pending
from gateway.fast_decode import readings_fields
from gateway.forwarder import PACK_READINGS, Forwarder, Pack, held_packs, publishable
from gateway.layouts import Layouts
from gateway.senml import Channel, unpack
from gateway.store import Chunk, Store, StoredFrame, StoreError
from gateway.store_worker import StoreWorker
from protocols import messages

NODE_A, NODE_B = "0000a4cf12b3c4d5", "0000a4cf12b3c4d6"


class RecordingUplink:
    def __init__(self) -> None:
        self.connected = True
        self.published: list[tuple[int, str, bytes]] = []
        self._mid = 0

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False, content_type: str | None = None) -> int | None:
        if not self.connected:
            return None
        self._mid += 1
        self.published.append((self._mid, topic, payload))
        return self._mid

    def counters(self, first: int = 0) -> list[int]:
        """The `counter` values of every pack published (from the first-th on), in order."""
        return [
            int(record["value"])
            for _mid, topic, payload in self.published[first:]
            if topic.endswith("/readings")
            for record in unpack(payload)
            if record["name"].endswith(":counter")
        ]


class GatedWorker(StoreWorker):
    """A store thread that can be held up, like one stuck in a slow fsync."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = asyncio.Event()  # set once an answer is waiting at the closed gate

    async def call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        result = await super().call(function, *args, **kwargs)
        if not self.gate.is_set():
            self.held.set()
        await self.gate.wait()  # the answer is ready but arrives late
        return result


def layouts() -> Layouts:
    known = Layouts()
    known.announce(NODE_A, [Channel("counter", ""), Channel("temperature", "Cel", -2)])  # id 1
    known.announce(NODE_B, [Channel("counter", "")])  # id 2
    return known


def frame(counter: int, layout: int = 1, base_time: int | None = 1795000000) -> StoredFrame:
    fields: dict[str, Any] = {"samples": [0, counter, 0] + ([1, 2137, 0] if layout == 1 else [])}
    if base_time is not None:
        fields["base_time"] = base_time + counter
    return StoredFrame(layout, 1795000000.5 + counter, messages.encode_payload(messages.READINGS, fields))


def rows(store: Store, count: int, start: int = 0) -> None:
    """`count` chunks of one frame each, counters start..start+count-1."""
    for n in range(start, start + count):
        store.commit([frame(n)], 2, {})


def connected_forwarder(
    tmp_path: pathlib.Path, count: int, worker_type: type[StoreWorker] = StoreWorker, window: int = 64
) -> tuple[Store, StoreWorker, RecordingUplink, Forwarder]:
    """A store holding `count` chunks and a forwarder over it, told the broker is connected."""
    store = Store(tmp_path, 10**9)
    rows(store, count)
    worker = worker_type(store)
    uplink = RecordingUplink()
    forwarder = Forwarder(worker, uplink, qos=1, window=window, layouts=layouts(), topic_base="edgegw/gw")  # type: ignore[arg-type]
    forwarder.connected()
    return store, worker, uplink, forwarder


async def settle(forwarder: Forwarder, rounds: int = 20) -> None:
    """Let the pump run: reads and pack builds happen on the store thread, a round apart."""
    for _ in range(rounds):
        await forwarder._fill()
        await asyncio.sleep(0.01)


def packs_of(chunks: list[Chunk]) -> list[Pack]:
    packs, _damaged = publishable(chunks, layouts(), "edgegw/gw")
    return packs


def test_packs_hold_each_node_s_frames_with_their_own_times_and_channels() -> None:
    packs = packs_of([Chunk(1, [frame(1), frame(2, layout=2), frame(3, base_time=None)], 5), Chunk(2, [frame(4)], 2)])
    assert [pack.chunks for pack in packs] == [(1, 2), (1,)], "each pack names the chunks its frames came from"
    by_topic = {pack.topic: unpack(pack.payload) for pack in packs}
    a = by_topic["edgegw/gw/nodes/%s/readings" % NODE_A]
    assert [(r["value"], r["time"]) for r in a if r["name"].endswith(":counter")] == [
        (1, 1795000001),
        (3, 1795000003.5),  # no base_time: the arrival time, to the millisecond
        (4, 1795000004),
    ]
    assert {r["unit"] for r in a if r["name"].endswith(":temperature")} == {"Cel"}
    b = by_topic["edgegw/gw/nodes/%s/readings" % NODE_B]
    assert [(r["name"], r["value"]) for r in b] == [("urn:dev:edgegw:%s:counter" % NODE_B, 2)]


def test_a_pack_holds_at_most_pack_readings() -> None:
    packs = packs_of([Chunk(1, [frame(n) for n in range(PACK_READINGS)], 2 * PACK_READINGS)])  # two readings a frame
    assert [len(unpack(pack.payload)) for pack in packs] == [PACK_READINGS, PACK_READINGS]


def test_frames_held_in_memory_make_the_packs_their_chunk_would() -> None:
    """A held frame's pack is built from the samples decoded on arrival, not from its payload: the same SenML."""
    frames = [frame(1), frame(2, layout=2), frame(3, base_time=None)] + [frame(n) for n in range(4, 4 + PACK_READINGS // 2)]
    known = layouts()
    held = []
    for counter, stored in enumerate(frames):
        fields = readings_fields(stored.payload)
        assert fields is not None
        samples = (fields["samples"], fields.get("base_time", stored.received))
        held.append(Pending("n", counter, stored, len(fields["samples"]) // 3, known.by_id[stored.layout], None, None, samples))  # type: ignore[arg-type]
    packs, left = held_packs(held, "edgegw/gw")
    assert not left
    from_disk = packs_of([Chunk(1, frames, sum(p.readings for p in held))])
    assert len(from_disk) == 3, "node A's frames fill a pack and start another"
    assert [(p.topic, p.payload) for p in packs] == [(p.topic, p.payload) for p in from_disk]
    assert [[frames.index(p.frame) for p in pack.held] for pack in packs] == [
        [frames.index(f) for f in frames if f.layout == 1][: PACK_READINGS // 2],
        [frames.index(f) for f in frames if f.layout == 1][PACK_READINGS // 2 :],
        [1],
    ], "each pack carries its own frames, in arrival order"


def test_a_damaged_chunk_is_reported_and_kept() -> None:
    unknown_layout = Chunk(2, [frame(1, layout=99)], 2)
    unreadable = Chunk(3, [], 2, damaged="error: incorrect header check")
    rotten = Chunk(4, [frame(5), StoredFrame(2, 0.0, b"\xa1\x01")], 3)  # a payload damaged on disk
    packs, damaged = publishable([Chunk(1, [frame(0)], 2), unknown_layout, unreadable, rotten], layouts(), "edgegw/gw")
    assert [chunk_id for chunk_id, _why in damaged] == [2, 3, 4]
    assert "layout 99" in damaged[0][1] and "header" in damaged[1][1] and "premature end" in damaged[2][1]
    assert [pack.topic.split("/")[3] for pack in packs] == [NODE_A], "the other node's frames still go out"
    assert sorted(int(r["value"]) for r in unpack(packs[0].payload) if r["name"].endswith(":counter")) == [0, 5]


async def test_a_damaged_payload_costs_itself_only(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """One stored payload damaged on disk (the chunk body still parses): the rest of its chunk and
    of its node's backlog is published, and the chunk leaves the disk, its loss logged."""
    store = Store(tmp_path, 10**9)
    rows(store, 3)
    store.commit([frame(3), StoredFrame(1, 0.0, b"\xff" + frame(4).payload[1:]), frame(5)], 6, {})  # chunk 4
    rows(store, 3, start=6)
    worker = StoreWorker(store)
    uplink = RecordingUplink()
    forwarder = Forwarder(worker, uplink, qos=1, window=64, layouts=layouts(), topic_base="edgegw/gw")  # type: ignore[arg-type]
    forwarder.connected()
    await settle(forwarder)
    assert sorted(uplink.counters()) == [0, 1, 2, 3, 5, 6, 7, 8], "all but the damaged frame"
    for mid, _topic, _payload in list(uplink.published):
        forwarder.puback(mid, True, "Success")
    await forwarder._delete()
    assert store.oldest(10) == [], "every chunk left the disk, the damaged one too"
    assert "buffered chunk 4: node %s: 1 of its frames do not decode" % NODE_A in caplog.text
    assert "about 2 readings lost; the rest is published" in caplog.text
    worker.close()


async def test_a_backlog_read_the_store_cannot_do_is_tried_again(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A StoreError while reading the backlog (the disk, not a bug) waits and tries again; the forwarder goes on."""
    monkeypatch.setattr(forwarder_module, "READ_RETRY_S", 0.05)
    store, worker, uplink, forwarder = connected_forwarder(tmp_path, 5)
    failures = [StoreError("cannot read the buffer: disk I/O error")]
    each_oldest = store.each_oldest

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return each_oldest(*args, **kwargs)

    monkeypatch.setattr(store, "each_oldest", failing_once)
    deadline = asyncio.get_running_loop().time() + 10
    while sorted(uplink.counters()) != list(range(5)) and asyncio.get_running_loop().time() < deadline:
        await forwarder._fill()
        await asyncio.sleep(0.01)
    assert sorted(uplink.counters()) == list(range(5))
    assert "disk I/O error; the backlog stays buffered and its read is tried again every" in caplog.text
    assert "the buffered backlog can be read again" in caplog.text
    worker.close()


async def test_a_slow_read_from_before_a_reconnect_does_not_hide_the_backlog(tmp_path: pathlib.Path) -> None:
    store, worker, uplink, forwarder = connected_forwarder(tmp_path, 5, GatedWorker)
    assert isinstance(worker, GatedWorker)
    worker.gate.clear()
    stale = asyncio.create_task(forwarder._fill())  # stuck on the store
    await asyncio.wait_for(worker.held.wait(), 30)
    forwarder.disconnected()
    rows(store, 2, start=5)  # committed while offline
    forwarder.connected()  # a quick reconnect while the old answer is still on its way
    worker.gate.set()
    await stale
    await settle(forwarder)
    assert sorted(uplink.counters()) == list(range(7))  # each once
    assert store.max_id() == 7 and forwarder._backlog_end == 7
    worker.close()


async def test_live_data_overtakes_the_backlog(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forwarder_module, "BACKLOG_FRAMES", 1)  # one chunk, one pack per read
    store, worker, uplink, forwarder = connected_forwarder(tmp_path, 10, window=2)
    await settle(forwarder)
    assert uplink.counters() == [0, 1]  # the window is full
    forwarder.live(Chunk(11, [frame(999)], 2))
    forwarder.puback(uplink.published[0][0], True, "Success")
    await settle(forwarder)
    assert uplink.counters(2) == [999], "the first free slot goes to live data"
    for mid in range(2, 30):
        forwarder.puback(mid, True, "Success")
        await settle(forwarder, 2)
    assert sorted(uplink.counters()) == sorted([*range(10), 999])
    await forwarder.settle(timeout=1)
    assert store.pending_chunks == 0, "every chunk deleted once its packs were acknowledged"
    worker.close()


async def test_a_chunk_stays_until_every_pack_from_it_is_acknowledged(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, 10**9)
    store.commit([frame(1), frame(2, layout=2)], 3, {})  # two nodes: two packs from one chunk
    worker = StoreWorker(store)
    uplink = RecordingUplink()
    forwarder = Forwarder(worker, uplink, qos=1, window=64, layouts=layouts(), topic_base="edgegw/gw")  # type: ignore[arg-type]
    forwarder.connected()
    await settle(forwarder)
    assert len(uplink.published) == 2
    forwarder.puback(1, True, "Success")
    await forwarder._delete()
    assert store.pending_chunks == 1
    forwarder.puback(2, True, "Success")
    await forwarder._delete()
    assert store.pending_chunks == 0
    worker.close()


async def test_a_refused_publish_is_tried_again_on_the_same_connection(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forwarder_module, "REFUSED_RETRY_S", 0.05)
    store, worker, uplink, forwarder = connected_forwarder(tmp_path, 1)
    await settle(forwarder)
    (mid, _topic, payload) = uplink.published[0]
    forwarder.puback(mid, False, "Quota exceeded")
    await asyncio.sleep(0.1)
    await settle(forwarder)
    assert len(uplink.published) == 2 and uplink.published[1][2] == payload
    forwarder.puback(uplink.published[1][0], True, "Success")
    await forwarder.settle(timeout=1)
    assert store.pending_chunks == 0
    worker.close()


async def test_a_delivery_built_in_several_batches_is_deleted_only_when_all_its_packs_are_acknowledged(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forwarder_module, "BUILD_GROUPS", 1)  # one node's packs at a time
    store = Store(tmp_path, 10**9)
    store.commit([frame(1), frame(2, layout=2)], 3, {})  # one chunk, two nodes: two groups, two batches
    worker = StoreWorker(store)
    uplink = RecordingUplink()
    forwarder = Forwarder(worker, uplink, qos=1, window=1, layouts=layouts(), topic_base="edgegw/gw")  # type: ignore[arg-type]
    forwarder.connected()
    await settle(forwarder)
    assert len(uplink.published) == 1  # the window holds one
    forwarder.puback(1, True, "Success")
    await settle(forwarder)
    await forwarder._delete()
    assert store.pending_chunks == 1, "the other node's pack is not acknowledged yet"
    assert len(uplink.published) == 2
    forwarder.puback(2, True, "Success")
    await forwarder._delete()
    assert store.pending_chunks == 0
    worker.close()


async def test_what_the_broker_acknowledged_is_not_published_again_after_a_reconnect(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forwarder_module, "PACK_READINGS", 2)  # one frame a pack: ten packs from ten chunks
    store, worker, uplink, forwarder = connected_forwarder(tmp_path, 10, window=4)
    await settle(forwarder)
    assert uplink.counters() == [0, 1, 2, 3]  # the window is full
    forwarder.puback(1, True, "Success")
    forwarder.puback(2, True, "Success")
    forwarder.disconnected()  # the PUBACKs of 2 and 3 were lost with the link
    forwarder.connected()
    sent_before = len(uplink.published)
    for _ in range(40):  # acknowledge as they come
        await settle(forwarder, 2)
        for mid, _topic, _payload in uplink.published[sent_before:]:
            forwarder.puback(mid, True, "Success")
    assert sorted(uplink.counters(sent_before)) == list(range(2, 10)), "0 and 1 were acknowledged: never sent again"
    await forwarder.settle(timeout=1)
    assert store.pending_chunks == 0
    worker.close()


async def test_a_chunk_leaves_the_disk_as_soon_as_the_packs_holding_its_frames_are_acknowledged(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forwarder_module, "PACK_READINGS", 2)
    store, worker, uplink, forwarder = connected_forwarder(tmp_path, 10, window=10)
    await settle(forwarder, 60)  # a read per chunk now: a pack is full with one frame
    assert len(uplink.published) == 10
    forwarder.puback(1, True, "Success")
    forwarder.puback(2, True, "Success")
    await forwarder._delete()
    assert store.pending_chunks == 8, "the rest of the read is not acknowledged yet, but these two chunks are"
    forwarder.disconnected()  # and a reconnect does not bring them back
    forwarder.connected()
    await settle(forwarder)
    assert sorted(uplink.counters(10)) == list(range(2, 10))
    assert sorted(chunk.id for chunk in store.oldest(100)) == list(range(3, 11))
    worker.close()


async def test_a_backlog_read_ends_once_a_node_s_pack_is_full(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forwarder_module, "PACK_READINGS", 6)  # three frames of two readings
    store = Store(tmp_path, 10**9)
    rows(store, 7)
    grouped = forwarder_module._read_backlog(store, layouts(), 0, 7, frozenset())
    assert grouped.last_id == 3 and [sorted(group.chunk_ids()) for group in grouped.groups] == [[1, 2, 3]]
    store.close()


async def test_a_retained_status_in_flight_when_the_link_dropped_is_sent_again(tmp_path: pathlib.Path) -> None:
    _store, worker, uplink, forwarder = connected_forwarder(tmp_path, 0)
    forwarder.retained("edgegw/gw/status", b'{"state": "online"}')
    await settle(forwarder)
    assert [topic for _mid, topic, _payload in uplink.published] == ["edgegw/gw/status"]
    forwarder.disconnected()  # before its PUBACK
    forwarder.connected()
    await settle(forwarder)
    assert [topic for _mid, topic, _payload in uplink.published] == ["edgegw/gw/status"] * 2
    worker.close()


async def test_a_publish_the_uplink_could_not_take_is_kept(tmp_path: pathlib.Path) -> None:
    _store, worker, uplink, forwarder = connected_forwarder(tmp_path, 3)
    forwarder.retained("edgegw/gw/status", b'{"state": "online"}')
    real_publish = uplink.publish
    uplink.publish = lambda *args, **kwargs: None  # type: ignore[method-assign]  # the link went just now
    await settle(forwarder)
    uplink.publish = real_publish  # type: ignore[method-assign]
    forwarder.disconnected()
    forwarder.connected()
    await settle(forwarder)
    assert sorted(uplink.counters()) == [0, 1, 2] and any(topic.endswith("/status") for _mid, topic, _payload in uplink.published)
    worker.close()


async def test_a_stop_deletes_the_delivered_frames_of_a_chunk_delivered_in_part(tmp_path: pathlib.Path) -> None:
    store, worker, uplink, forwarder = connected_forwarder(tmp_path, 0)
    store.commit([frame(1), frame(2, layout=2), frame(3)], 5, {})  # two nodes: two packs from one chunk
    store.commit([frame(4)], 2, {})
    await settle(forwarder)
    node_a = next(mid for mid, topic, _payload in uplink.published if NODE_A in topic)
    forwarder.puback(node_a, True, "Success")  # node A's frames 1, 3 and 4; node B's frame 2 is still out
    await forwarder.settle(timeout=0)
    await forwarder.finish()
    (left,) = store.oldest(10)
    assert [f.layout for f in left.frames] == [2] and left.readings == 1, "only what the broker does not have is kept"
    assert store.pending_readings == 1
    worker.close()


async def test_live_frames_gather_into_larger_packs_while_the_link_is_busy(tmp_path: pathlib.Path) -> None:
    _store, worker, uplink, forwarder = connected_forwarder(tmp_path, 0, window=1)
    await settle(forwarder)  # the backlog is known (empty): what is committed from now on is live
    forwarder.live(Chunk(1, [frame(1), frame(1, layout=2)], 3))
    await settle(forwarder)
    forwarder.live(Chunk(2, [frame(2), frame(2, layout=2)], 3))  # while node B's pack of chunk 1 waits its turn
    forwarder.puback(1, True, "Success")
    await settle(forwarder)
    forwarder.live(Chunk(3, [frame(3), frame(3, layout=2)], 3))
    forwarder.puback(2, True, "Success")
    await settle(forwarder)
    assert len(uplink.published) == 3
    assert uplink.counters(2) == [2, 3], "node A's frames of chunks 2 and 3 in one pack, not one pack a chunk"
    worker.close()


async def test_a_broker_that_refuses_publishes_does_not_draw_the_backlog_into_memory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused packs count against the window until they are tried again: what is read from disk
    stays a window or two, however long the broker refuses, and nothing leaves the disk meanwhile."""
    monkeypatch.setattr(forwarder_module, "PACK_READINGS", 2)  # one frame a pack
    monkeypatch.setattr(forwarder_module, "BACKLOG_FRAMES", 4)
    store, worker, uplink, forwarder = connected_forwarder(tmp_path, 200, window=4)
    for _ in range(60):
        await settle(forwarder, 1)
        for mid in list(forwarder._inflight):
            forwarder.puback(mid, False, "Quota exceeded")
    refused = len(uplink.published)
    assert 1 <= refused <= 4, "what was in the window is refused, then a pause: not a refusal per pack"
    assert len(forwarder._tally) <= 3 * 4, "chunks in hand: the refused window, a window built and one read"
    await forwarder._delete()
    assert store.pending_chunks == 200, "nothing leaves the disk while refused"
    assert caplog.text.count("refused a readings publish") == 1
    monkeypatch.setattr(forwarder, "_paused_until", 0.0)  # the pause is over
    await settle(forwarder)
    assert uplink.counters(refused)[:refused] == list(range(refused)), "the refused packs go first"
    forwarder.puback(uplink.published[refused][0], True, "Success")
    assert "the broker accepts readings again, after refusing %d publishes" % refused in caplog.text
    worker.close()


async def test_live_chunks_past_live_frames_wait_on_disk_and_each_goes_out_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An uplink slower than the live load: at most LIVE_FRAMES frames wait in RAM; the rest are
    read from disk as backlog, and every chunk is still published exactly once."""
    monkeypatch.setattr(forwarder_module, "LIVE_FRAMES", 8, raising=False)
    monkeypatch.setattr(forwarder_module, "PACK_READINGS", 2)  # one frame a pack
    store, worker, uplink, forwarder = connected_forwarder(tmp_path, 0, window=1)
    await settle(forwarder)  # the backlog is known (empty): what is committed from now on is live
    waiting = []
    for n in range(100):  # the broker acknowledges nothing meanwhile: the link does not keep up
        chunk_id, _evicted = store.commit([frame(n)], 2, {})
        forwarder.live(Chunk(chunk_id, [frame(n)], 2))
        waiting.append(sum(len(chunk.frames) for chunk in forwarder._live_chunks))
        if n % 10 == 0:
            await settle(forwarder, 1)
    assert max(waiting) <= 8, "frames waiting live in RAM are capped"
    for _ in range(400):  # now the broker acknowledges as they come
        await settle(forwarder, 1)
        acked = [mid for mid, _topic, _payload in uplink.published if mid in forwarder._inflight]
        for mid in acked:
            forwarder.puback(mid, True, "Success")
        if len(uplink.counters()) == 100 and not forwarder._inflight:
            break
    assert sorted(uplink.counters()) == list(range(100)), "each chunk once"
    await forwarder.settle(timeout=1)
    assert store.pending_chunks == 0
    worker.close()


async def test_live_data_while_the_broker_refuses_does_not_grow_the_resend_queue(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pause after pause, the refused packs go out first: live packs sent ahead of them would be
    refused as well, and what waits to be resent would grow with every pause."""
    monkeypatch.setattr(forwarder_module, "LIVE_FRAMES", 8)
    store, worker, _uplink, forwarder = connected_forwarder(tmp_path, 0, window=2)
    await settle(forwarder)  # the backlog is known (empty): what is committed from now on is live
    held = []
    for n in range(40):
        for layout in (1, 2):  # two nodes: two live packs a round
            chunk_id, _evicted = store.commit([frame(n, layout=layout)], 1, {})
            forwarder.live(Chunk(chunk_id, [frame(n, layout=layout)], 1))
        monkeypatch.setattr(forwarder, "_paused_until", 0.0)  # the pause is over
        await settle(forwarder, 2)
        for mid in list(forwarder._inflight):
            forwarder.puback(mid, False, "Quota exceeded")
        held.append(len(forwarder._again) + len(forwarder._live))
    assert max(held) <= 2 + 2, "a window refused and one live build waiting, however many pauses"
    worker.close()


async def test_the_pump_looks_at_its_work_every_tick_and_a_cancel_ends_it(tmp_path: pathlib.Path) -> None:
    _store, worker, uplink, forwarder = connected_forwarder(tmp_path, 0)
    task = asyncio.create_task(forwarder.run())
    uplink.connected = False
    forwarder.retained("edgegw/gw/status", b'{"state": "online"}')  # wakes the pump, which finds no link
    await asyncio.sleep(0.05)
    assert uplink.published == []
    uplink.connected = True  # nothing wakes the pump for this: only its tick (PUMP_TICK_S) finds it
    for _ in range(100):
        if uplink.published:
            break
        await asyncio.sleep(0.02)
    assert [topic for _mid, topic, _payload in uplink.published] == ["edgegw/gw/status"]
    forwarder.retained("edgegw/gw/status", b'{"state": "offline"}')  # the event set as the cancel comes
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert forwarder._ticker is None  # no tick left behind
    worker.close()
