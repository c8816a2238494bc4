"""The serial path below the sessions: the downlink queue, the transport on real ptys, the port manager.

The end-to-end version (1,000 HELLOs at once on a 115200-baud line against the
real `edgegw run`) is tests/test_gateway_backpressure.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pathlib
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import serial

from gateway.config import SerialConfig
from gateway.downlink import MAX_COUNTERS_PER_NODE, Downlink
from gateway.fast_decode import ReceivedMessage
from gateway.serial_link import Link, PortManager
from gateway.serial_transport import PortClosed, SerialTransport
from hil.scripted_node import ScriptedNode
from hil.serial_pair import PtyCable
from protocols import Message, ProtocolError, StreamDecoder, messages
from protocols import frame as fr

A = bytes.fromhex("0000a4cf12b3c4d5")
B = bytes.fromhex("e66038b7134f2a21")


def node(index: int) -> bytes:
    return bytes([0xBA, 0xC4]) + index.to_bytes(6, "big")


def decode_all(data: bytes) -> list[Message]:
    decoder = StreamDecoder()
    decoder.feed(data)
    decoded = decoder.drain()
    assert not [e for e in decoded if isinstance(e, ProtocolError)]
    return decoded


class Counters:
    """The downlink counter source, counting how many frames were built."""

    def __init__(self) -> None:
        self.next = 100

    def __call__(self, node_id: bytes) -> int:
        self.next += 1
        return self.next - 1


def drain(queue: Downlink, room: int = 512) -> list[Message]:
    out = b""
    while queue:
        chunk = queue.take(room)
        assert chunk and len(chunk) <= room + fr.MAX_ENCODED + 1, "take() gives about `room` bytes, at most one frame more"
        out += chunk
    assert queue.take(room) == b""
    return decode_all(out)


# ------------------------------------------------------------ the downlink queue


def test_one_ack_per_node_carries_every_counter_due() -> None:
    queue = Downlink(Counters())
    queue.ack(A, [5, 6])
    queue.ack(B, [1])
    queue.ack(A, [7, 5])  # 5 again: a retransmission acknowledged once
    sent = drain(queue)
    assert [(m.type, m.node_id, m.fields["counters"]) for m in sent] == [(messages.ACK, A, [5, 6, 7]), (messages.ACK, B, [1])]
    assert all(m.flags & fr.F_DOWNLINK for m in sent)
    assert [m.counter for m in sent] == [100, 101], "downlink counters are spent only on frames built"


def test_an_ack_is_split_at_max_acks_counters_a_frame() -> None:
    queue = Downlink(Counters())
    queue.ack(A, range(70))
    sent = drain(queue)
    assert [m.fields["counters"] for m in sent] == [list(range(32)), list(range(32, 64)), list(range(64, 70))]
    assert messages.MAX_ACKS == 32


def test_a_newer_time_replaces_an_older_unsent_one_and_reads_the_clock_when_written(monkeypatch: pytest.MonkeyPatch) -> None:
    queue = Downlink(Counters())
    queue.ack(A, [1])
    queue.time(A)
    queue.time(B)
    queue.time(A)
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.25)
    sent = drain(queue)
    assert [(m.type, m.node_id) for m in sent] == [(messages.ACK, A), (messages.TIME, A), (messages.TIME, B)]
    assert sent[1].fields == {"unix": 2_000_000_000, "ms": 250}


def test_other_frames_keep_their_order_among_what_is_due() -> None:
    queue = Downlink(Counters())
    queue.ack(A, [1])
    queue.frame(B, messages.REJECT, {"reason": 5, "detail": "x", "counter": 9})
    queue.frame(A, messages.CONFIG, {"op": messages.CONFIG_SET, "values": {"interval": 10}}, fr.F_ACK_REQ)
    queue.ack(A, [2])  # joins the ACK already waiting, ahead of the REJECT
    sent = drain(queue)
    assert [m.type for m in sent] == [messages.ACK, messages.REJECT, messages.CONFIG]
    assert sent[0].fields["counters"] == [1, 2]
    assert sent[2].flags & fr.F_ACK_REQ and sent[2].fields["values"] == {"interval": 10}


def test_acks_and_times_go_out_before_other_frames() -> None:
    """A node flooding bad frames earns REJECTs; its neighbour's ACK must not wait behind them while its retry timer runs."""
    queue = Downlink(Counters())
    for counter in range(200):
        queue.frame(A, messages.REJECT, {"reason": 5, "detail": "LOG severity out of range", "counter": counter})
    queue.ack(B, [1])
    queue.time(B)
    sent = drain(queue, room=64)
    assert [(m.type, m.node_id) for m in sent[:2]] == [(messages.ACK, B), (messages.TIME, B)]
    assert [m.fields["counter"] for m in sent[2:]] == list(range(200)), "the REJECTs follow, in order"


def test_a_frame_that_cannot_be_built_raises_at_once_and_queues_nothing() -> None:
    queue = Downlink(Counters())
    with pytest.raises(ProtocolError):
        queue.frame(A, messages.CONFIG, {"op": messages.CONFIG_SET, "values": {"name": "x" * 300}})  # longer than a frame
    with pytest.raises(ProtocolError):
        queue.frame(A, messages.CONFIG, {"op": messages.CONFIG_SET, "bogus": 1})  # a field the schema does not know
    assert not queue


def test_every_bound_drops_and_counts_what_does_not_fit() -> None:
    queue = Downlink(Counters(), max_nodes=3, max_counters=5, max_frames=2)
    assert queue.ack(node(0), [1, 2]) and queue.ack(node(1), [1]) and queue.ack(node(2), [1])
    assert not queue.ack(node(3), [1]), "a fourth node: over max_nodes"
    assert not queue.ack(node(0), [3, 4]), "the fifth counter fits, the sixth does not"
    assert queue.counters == 5
    assert [queue.time(node(i)) for i in range(5)] == [True, True, True, False, False]
    assert queue.time(node(0)), "the one already waiting serves"
    reject = {"reason": 5, "detail": "x", "counter": 1}
    assert [queue.frame(node(i), messages.REJECT, reject) for i in range(3)] == [True, True, False]
    assert queue.dropped == {"ACK": 2, "TIME": 2, "REJECT": 1}
    sent = drain(queue)
    assert sum(len(m.fields["counters"]) for m in sent if m.type == messages.ACK) == 5
    assert len(sent) == 3 + 3 + 2
    assert queue.ack(node(3), [1]), "room again once written"


def test_one_node_cannot_take_every_counter_slot() -> None:
    queue = Downlink(Counters())
    assert not queue.ack(A, range(10 * MAX_COUNTERS_PER_NODE))
    assert queue.counters == MAX_COUNTERS_PER_NODE
    assert queue.ack(B, [1])


def test_a_backed_up_queue_holds_what_is_due_not_bytes() -> None:
    """However much comes due, the queue stays within its bounds and builds nothing until asked."""
    counters = Counters()
    queue = Downlink(counters)
    tracemalloc.start()
    try:
        for round_ in range(50):
            for index in range(5000):  # more nodes than MAX_NODES, more counters than MAX_COUNTERS
                queue.ack(node(index), [round_])
                queue.time(node(index))
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counters.next == 100, "no frame built while nothing was taken"
    assert len(queue) <= 2 * 4096 and queue.counters <= 16384
    assert queue.dropped["ACK"] > 0 and queue.dropped["TIME"] > 0
    assert held < 8_000_000, "%d bytes held" % held


# ------------------------------------------------------------ the transport on a real pty


class Handler:
    """The sessions' side of a link: records what arrived."""

    def __init__(self) -> None:
        self.received: list[ReceivedMessage] = []

    def message(self, link: Link, message: ReceivedMessage) -> None:
        self.received.append(message)

    def bad_frame(self, link: Link, error: ProtocolError) -> None:
        pass

    def lost(self, link: Link) -> None:
        pass


class Peer:
    """The node side of the pty, read on the test's loop when asked to."""

    def __init__(self, cable: PtyCable) -> None:
        self.cable = cable
        self.decoder = StreamDecoder()
        self.messages: list[Message] = []
        self.bytes = 0

    def start_reading(self) -> None:
        asyncio.get_running_loop().add_reader(self.cable.master, self._read)

    def stop_reading(self) -> None:
        asyncio.get_running_loop().remove_reader(self.cable.master)

    def _read(self) -> None:
        try:
            data = os.read(self.cable.master, 65536)
        except BlockingIOError:
            return
        self.bytes += len(data)
        self.decoder.feed(data)
        self.messages += [m for m in self.decoder.drain() if not isinstance(m, ProtocolError)]


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met within %.0f s" % timeout
        await asyncio.sleep(0.01)


@pytest.fixture
def cable(tmp_path: pathlib.Path) -> Iterator[PtyCable]:
    made = PtyCable(tmp_path / "ttyNODE0")
    yield made
    if made.plugged:
        made.close()


class Lost:
    def __init__(self) -> None:
        self.calls: list[Exception | None] = []

    def __call__(self, link: Link, exc: Exception | None) -> None:
        self.calls.append(exc)


def open_link(cable: PtyCable, handler: Handler, lost: Lost) -> tuple[Link, SerialTransport, int]:
    port = serial.Serial(str(cable.link_path), baudrate=115200)
    link = Link(str(cable.link_path), handler, lost, Counters())
    transport = SerialTransport(asyncio.get_running_loop(), port, link)
    return link, transport, port.fileno()


async def test_frames_in_replies_out_and_no_writer_left_registered(cable: PtyCable) -> None:
    handler, lost = Handler(), Lost()
    link, _transport, fd = open_link(cable, handler, lost)
    peer = Peer(cable)
    peer.start_reading()
    sender = ScriptedNode(cable, A)
    sender.hello()
    await until(lambda: len(handler.received) == 1)
    assert handler.received[0].type == messages.HELLO and handler.received[0].node_id == A
    link.ack(A, [1])
    link.time(A)
    await until(lambda: len(peer.messages) == 2)
    assert [m.type for m in peer.messages] == [messages.ACK, messages.TIME]
    await asyncio.sleep(0)
    assert not asyncio.get_running_loop().remove_writer(fd), "the writer is removed as soon as nothing is pending"
    link.close()
    await until(lambda: lost.calls == [None])
    peer.stop_reading()


async def test_a_peer_that_stops_reading_costs_bounded_memory_and_no_cpu(cable: PtyCable) -> None:
    """The node side stops reading for seconds while replies keep coming due: the pty fills, the
    transport waits for writability (no spin: the process's CPU time stays far below the wall time),
    the queue stays within its bounds; once the peer reads again, what fit arrives and the writer goes."""
    handler, lost = Handler(), Lost()
    link, transport, fd = open_link(cable, handler, lost)
    peer = Peer(cable)  # not reading
    loop = asyncio.get_running_loop()
    offered = 0
    cpu_start, wall_start = time.process_time(), time.monotonic()
    tracemalloc.start()
    try:
        while time.monotonic() - wall_start < 3.0:
            for _ in range(500):  # 500 replies every 50 ms for 20,000 nodes: far more than fits
                link.ack(node(offered % 20_000), [offered])
                link.time(node(offered % 20_000))
                offered += 1
            await asyncio.sleep(0.05)
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
    assert link.transport is not None and not lost.calls
    assert cpu < 0.5 * wall, "%.2f s of CPU in %.1f s of a stalled peer: spinning" % (cpu, wall)
    assert len(link.downlink) <= 2 * 4096 and link.downlink.counters <= 16384
    assert link.downlink.dropped["ACK"] > 0
    assert held < 10_000_000, "%d bytes held for a stalled port" % held

    peer.start_reading()
    fitted = offered - link.downlink.dropped["ACK"]
    await until(lambda: sum(len(m.fields["counters"]) for m in peer.messages if m.type == messages.ACK) == fitted, timeout=60)
    cpu_start, wall_start = time.process_time(), time.monotonic()
    await asyncio.sleep(1.0)
    cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
    assert cpu < 0.2 * wall, "%.2f s of CPU in %.1f s after the drain: something spins" % (cpu, wall)
    assert not link.downlink and not transport.blocked
    assert not loop.remove_writer(fd), "the writer is removed as soon as nothing is pending"
    peer.stop_reading()
    link.close()


@pytest.mark.parametrize("pending", [False, True], ids=["idle", "while-writing"])
async def test_a_closed_pty_becomes_connection_lost_once(cable: PtyCable, pending: bool) -> None:
    handler, lost = Handler(), Lost()
    link, transport, _fd = open_link(cable, handler, lost)
    if pending:  # the pty full and the writer registered when the other side goes
        for index in range(4000):
            link.time(node(index))
        await until(lambda: transport.blocked)
    cable.unplug()
    await until(lambda: lost.calls)
    await asyncio.sleep(0.05)
    assert len(lost.calls) == 1, lost.calls
    # Linux says EIO, or end of file when the pty was hung up while we wrote
    assert isinstance(lost.calls[0], PortClosed) or (isinstance(lost.calls[0], OSError) and lost.calls[0].errno == errno.EIO)
    assert link.transport is None and transport.closed
    assert not link.time(A), "nothing is queued on a closed link"


async def test_close_writes_what_is_due_first_and_abort_does_not(cable: PtyCable) -> None:
    handler, lost = Handler(), Lost()
    link, transport, _fd = open_link(cable, handler, lost)
    for index in range(3000):  # more than the pty holds
        link.time(node(index))
    await until(lambda: transport.blocked)
    link.close()
    link.ack(A, [7])  # what comes due while closing goes out too (the last commit's ACKs)
    peer = Peer(cable)
    peer.start_reading()
    await until(lambda: lost.calls == [None], timeout=30)
    await until(lambda: len(peer.messages) == 3001)
    assert {m.node_id for m in peer.messages if m.type == messages.TIME} == {node(i) for i in range(3000)}
    assert peer.messages[-1].type == messages.ACK
    peer.stop_reading()


async def test_a_stop_does_not_wait_for_a_stalled_reader(cable: PtyCable) -> None:
    manager = PortManager((SerialConfig(str(cable.link_path), 115200),), Handler(), Counters())
    manager.start()
    await until(lambda: manager.links())
    link = manager.links()[0]
    for index in range(3000):
        link.time(node(index))
    await until(lambda: link.transport is not None and link.transport.blocked)
    await asyncio.wait_for(manager.stop(), timeout=10)  # replies that cannot go out are dropped
    assert not manager.links() and link.transport is None


async def test_the_port_manager_reopens_a_port_that_was_lost(cable: PtyCable) -> None:
    manager = PortManager((SerialConfig(str(cable.link_path), 115200),), Handler(), Counters())
    manager.start()
    try:
        await until(lambda: manager.links())
        first = manager.links()[0]
        cable.unplug()
        await until(lambda: not manager.links())
        cable.plug()
        await until(lambda: manager.links(), timeout=15)
        assert manager.links()[0] is not first
        peer = Peer(cable)
        peer.start_reading()
        manager.links()[0].time(A)
        await until(lambda: peer.messages)
        assert peer.messages[0].type == messages.TIME and peer.messages[0].node_id == A
        peer.stop_reading()
    finally:
        await manager.stop()
