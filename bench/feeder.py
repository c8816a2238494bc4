"""A fast node emulator for benchmarks: one process per serial port, many node ids, pre-encoded frames.

Each frame is a READINGS of 10 samples: channel 0 (`seq`) carries a number
unique across the whole run (so a subscriber can date a reading), channels 1
carry 9 temperature samples. The feeder keeps the protocol's span rule per
node (SPEC.md §4.2), reads the gateway's ACKs, and records when each frame
was written and when its ACK came back. Frames are encoded before the clock
starts; the timed loop only writes, reads and bookkeeps.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import select
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols import messages
from protocols.frame import F_ACK_REQ, WINDOW
from protocols.messages import Message, encode
from protocols.stream import StreamDecoder

SAMPLES_PER_FRAME = 10
CHANNELS = [{"name": "seq", "unit": "", "scale": 0}, {"name": "temperature", "unit": "Cel", "scale": -2}]
BASE_TIME = 1_795_000_000
MAX_UNACKED = WINDOW - 56  # per node, inside the span rule with room to spare


def node_id(port: int, index: int) -> bytes:
    return bytes([0xBE, port]) + index.to_bytes(6, "big")


def readings_frame(node: bytes, counter: int, seq: int) -> bytes:
    samples: list[int] = [0, seq, 0]
    for position in range(1, SAMPLES_PER_FRAME):
        samples += [1, 1500 + (seq + position) % 700, position]
    return encode(Message(messages.READINGS, node, counter, {"base_time": BASE_TIME, "samples": samples}, F_ACK_REQ))


def hello_frame(node: bytes) -> bytes:
    fields = {"proto": [1, 0], "fw_version": "bench", "hw_model": "bench-feeder", "caps": 1, "channels": CHANNELS}
    return encode(Message(messages.HELLO, node, 1, fields, F_ACK_REQ))


@dataclass
class FeedResult:
    port: int
    sent: int  # READINGS frames written
    acked: int  # of those, acknowledged
    started: float  # monotonic, first READINGS written
    finished: float  # monotonic, last ACK read (or the end)
    latencies: list[float]  # frame written -> its ACK read, seconds (frames written after the warm-up)
    written_at: dict[int, float]  # seq -> monotonic write time (only when asked: steady-load runs)
    acks: list[tuple[float, float]]  # (written, ACK read) per acknowledged frame, monotonic (only when asked)


def _feed(
    port: int,
    link: Path,
    nodes: int,
    frames_per_node: int,
    rate: float | None,
    seconds: float,
    keep_times: bool,
    warmup: float,
    ready: Any,  # multiprocessing queues and event of the "fork" context
    go: Any,
    out: Any,
) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    tmp = link.with_name(link.name + ".new")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(os.ttyname(slave), tmp)
    os.replace(tmp, link)
    ids = [node_id(port, index) for index in range(nodes)]
    frames = [[readings_frame(ids[n], 2 + k, (port << 40) | (n << 20) | k) for k in range(frames_per_node)] for n in range(nodes)]
    ready.put(port)
    go.wait()
    decoder = StreamDecoder()
    # HELLO first: the gateway refuses READINGS from a node it has not met.
    # Thousands of nodes: HELLOs are sent again only once the gateway has stopped answering for a second,
    # so a slow first contact is not buried under repeats.
    pending_hello = set(ids)
    hello_wire = {node: hello_frame(node) for node in ids}
    deadline = time.monotonic() + 60 + nodes / 20
    while pending_hello and time.monotonic() < deadline:
        for node in list(pending_hello):
            _write_all(master, hello_wire[node])
        end = time.monotonic() + 1.0
        while pending_hello and time.monotonic() < end:
            for message in _read_messages(master, decoder, 0.05):
                if message.type == messages.ACK and message.node_id in pending_hello and 1 in message.fields["counters"]:
                    pending_hello.discard(message.node_id)
                    end = time.monotonic() + 1.0
    ready.put((port, time.monotonic(), len(pending_hello)))  # HELLOs done: the READINGS start now
    next_k = [0] * nodes
    low_k = [0] * nodes  # per node: the oldest frame not yet acknowledged (the span rule counts from it)
    acked_k: list[set[int]] = [set() for _ in range(nodes)]
    written: dict[tuple[int, int], float] = {}
    latencies: list[float] = []
    written_at: dict[int, float] = {}
    acks: list[tuple[float, float]] = []
    sent = acked = 0
    start = time.monotonic()
    stop_at = start + seconds
    interval = 1.0 / rate if rate else 0.0
    due = start
    node_index = {node: n for n, node in enumerate(ids)}
    while time.monotonic() < stop_at:
        now = time.monotonic()
        batch = []
        budget = 64 if not rate else max(0, min(64, int((now - due) / interval) + 1))
        for _ in range(budget):
            n = sent % nodes
            k = next_k[n]
            if k >= frames_per_node or k - low_k[n] >= MAX_UNACKED:
                break
            batch.append(frames[n][k])
            written[(n, k)] = now
            if keep_times:
                written_at[(port << 40) | (n << 20) | k] = now
            next_k[n] = k + 1
            sent += 1
            due += interval
        if batch:
            _write_all(master, b"".join(batch))
        for message in _read_messages(master, decoder, 0.0 if batch else 0.002):
            if message.type != messages.ACK or message.node_id not in node_index:
                continue
            n = node_index[message.node_id]
            got = time.monotonic()
            for counter in message.fields["counters"]:
                k = counter - 2
                if (n, k) in written:
                    sent_at = written.pop((n, k))
                    if sent_at >= start + warmup:
                        latencies.append(got - sent_at)
                    if keep_times:
                        acks.append((sent_at, got))
                    acked_k[n].add(k)
                    acked += 1
            while low_k[n] in acked_k[n]:
                acked_k[n].discard(low_k[n])
                low_k[n] += 1
        if rate and not batch:
            time.sleep(max(0.0, min(0.002, due - time.monotonic())))
    end = time.monotonic() + 5  # late ACKs of what was written
    while written and time.monotonic() < end:
        for message in _read_messages(master, decoder, 0.05):
            if message.type == messages.ACK and message.node_id in node_index:
                n = node_index[message.node_id]
                for counter in message.fields["counters"]:
                    if (n, counter - 2) in written:
                        sent_at = written.pop((n, counter - 2))
                        latencies.append(time.monotonic() - sent_at)
                        if keep_times:
                            acks.append((sent_at, time.monotonic()))
                        acked += 1
    out.put(FeedResult(port, sent, acked, start, time.monotonic(), latencies, written_at, acks))
    time.sleep(5)  # the port stays while the benchmark reads the system's meters (a baseline exits when it closes)
    os.close(master)
    os.close(slave)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 0.01)
            continue
        view = view[written:]


def _read_messages(fd: int, decoder: StreamDecoder, timeout: float) -> list[Message]:
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return []
    try:
        decoder.feed(os.read(fd, 65536))
    except (BlockingIOError, OSError):
        return []
    return [event for event in decoder.drain() if isinstance(event, Message)]


class Feeders:
    """K feeder processes, each behind its own pty symlink in `folder`."""

    def __init__(
        self,
        folder: Path,
        ports: int,
        nodes_per_port: int,
        frames_per_node: int,
        seconds: float,
        rate_per_port: float | None = None,
        keep_times: bool = False,
        warmup: float = 0.0,
    ) -> None:
        self.links = [Path(folder) / ("tty-bench%d" % port) for port in range(ports)]
        context = mp.get_context("fork")
        self._ready = context.Queue()
        self._out = context.Queue()
        self._go = context.Event()
        self._processes = [
            context.Process(
                target=_feed,
                args=(port, self.links[port], nodes_per_port, frames_per_node, rate_per_port, seconds, keep_times, warmup),
                kwargs={"ready": self._ready, "go": self._go, "out": self._out},
                daemon=True,
            )
            for port in range(ports)
        ]

    def start(self) -> None:
        for process in self._processes:
            process.start()
        for _ in self._processes:
            self._ready.get(timeout=600)

    def go(self) -> None:
        self._go.set()

    def helloed(self, timeout: float) -> tuple[float, int]:
        """After go(): wait until every port has said HELLO for its nodes; (when the last one finished, monotonic;
        nodes whose HELLO was never acknowledged)."""
        done = [self._ready.get(timeout=timeout) for _ in self._processes]
        return max(at for _port, at, _left in done), sum(left for _port, _at, left in done)

    def results(self, timeout: float) -> list[FeedResult]:
        out = [self._out.get(timeout=timeout) for _ in self._processes]
        for process in self._processes:
            process.join(5)
        return out

    def stop(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.kill()
