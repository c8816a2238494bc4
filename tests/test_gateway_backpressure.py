"""A port that backs up: 1,000 nodes say HELLO at once on one 115200-baud line (power back on a street).

The HELLOs go in as fast as the pty takes them (what a bridge or a USB adapter hands
over at once after a power cut); the gateway's replies are read no faster than a UART
at 115200 baud carries them (11,520 bytes a second, 8N1), so its output fills the pty
and its writes would block, as on a real UART. Every node must get its ACK and its
TIME, the gateway must not spin (its CPU time stays well below the wall time: a spin
detector, not a timing test) and its log stays small and free of tracebacks.
With pyserial-asyncio-fast 0.16 this failed: once the output had drained, the writer
it left registered raised an AssertionError on every loop iteration (1.6 s of CPU in
3 s of quiet, 18 MB of tracebacks in 8 s).
"""

from __future__ import annotations

import os
import pathlib
import select
import time
from collections.abc import Callable, Iterator

import pytest

from hil.broker import Mosquitto
from hil.gateway import GatewayProcess
from hil.processes import cpu_seconds
from hil.scripted_node import CHANNELS
from hil.serial_pair import PtyCable
from protocols import Message, ProtocolError, StreamDecoder, encode, messages
from protocols import frame as fr

NODES = 1000
BAUD = 115_200
BYTES_PER_S = BAUD / 10  # 8N1: ten bits a byte


def hello_wire(node_id: bytes) -> bytes:
    fields = {"proto": [1, 0], "fw_version": "test-1", "hw_model": "pty", "caps": 0x0B, "channels": CHANNELS}
    return b"\x00" + encode(Message(messages.HELLO, node_id, 1, fields, fr.F_ACK_REQ))


class ThrottledNodeSide:
    """The node end of a pty, moving bytes no faster than a UART at `baud` would (upstream too, unless told not to).

    Bytes the gateway writes stay in the pty until the line has had the time to carry
    them, so its output backs up exactly as it would on a real UART. Each direction is
    busy for len/rate seconds after a transfer (hil/faults.py's throttle arithmetic), and
    a transfer is at most CHUNK bytes, so an idle line never saves up a burst.
    """

    CHUNK = 64  # bytes: 5.6 ms of line at 115200 baud

    def __init__(self, cable: PtyCable, baud: int, *, throttle_up: bool = True) -> None:
        self.fd = cable.master
        self.throttle_up = throttle_up
        self.rate = baud / 10
        self.sent = 0
        self.received = 0
        self.outbox = bytearray()
        self.up_free_at = self.down_free_at = time.monotonic()
        self.decoder = StreamDecoder()
        self.messages: list[Message] = []

    def run_until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return True
            self.step()
        return done()

    def step(self) -> None:
        now = time.monotonic()
        writable = [self.fd] if self.outbox and now >= self.up_free_at else []
        readable = [self.fd] if now >= self.down_free_at else []
        if not readable and not writable:
            waits = [self.down_free_at] + ([self.up_free_at] if self.outbox else [])
            time.sleep(max(0.0, min(waits) - now))  # the line is still carrying the last bytes
            return
        # Wait for the gateway no longer than until the other direction may move again.
        timeout = 0.05 if writable or not self.outbox else min(0.05, self.up_free_at - now)
        ready_r, ready_w, _ = select.select(readable, writable, [], timeout)
        if ready_w:
            try:
                written = os.write(self.fd, self.outbox[: self.CHUNK if self.throttle_up else 65536])
            except BlockingIOError:
                written = 0
            del self.outbox[:written]
            self.sent += written
            if self.throttle_up:
                self.up_free_at = max(self.up_free_at, now) + written / self.rate
        if ready_r:
            try:
                data = os.read(self.fd, self.CHUNK)
            except BlockingIOError:
                data = b""
            self.received += len(data)
            self.down_free_at = max(self.down_free_at, now) + len(data) / self.rate
            self.decoder.feed(data)
            self.messages += [m for m in self.decoder.drain() if not isinstance(m, ProtocolError)]


@pytest.fixture
def cable(tmp_path: pathlib.Path) -> Iterator[PtyCable]:
    made = PtyCable(tmp_path / "ttyNODE0")
    yield made
    made.close()


def test_a_thousand_hellos_at_once_on_a_115200_baud_port(tmp_path: pathlib.Path, hil_broker: Mosquitto, cable: PtyCable) -> None:
    gateway = GatewayProcess(tmp_path / "gw", hil_broker.port, [str(cable.link_path)])
    gateway.start()
    try:
        gateway.wait_for_log("ttyNODE0: open")
        assert gateway.process is not None
        pid = gateway.process.pid
        ids = [bytes([0xBA, 0xC4]) + index.to_bytes(6, "big") for index in range(NODES)]
        line = ThrottledNodeSide(cable, BAUD, throttle_up=False)
        for node_id in ids:
            line.outbox += hello_wire(node_id)

        acked: set[bytes] = set()
        timed: set[bytes] = set()

        def everyone_answered() -> bool:
            for message in line.messages:
                if message.type == messages.ACK and 1 in message.fields["counters"]:
                    acked.add(message.node_id)
                elif message.type == messages.TIME:
                    timed.add(message.node_id)
            line.messages.clear()
            return len(acked) == len(timed) == NODES

        cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
        answered = line.run_until(everyone_answered, timeout=180)
        cpu_burst, wall_burst = cpu_seconds(pid) - cpu_before, time.monotonic() - wall_before
        assert answered, "after 180 s: %d of %d nodes got an ACK, %d a TIME" % (len(acked), NODES, len(timed))
        assert acked == timed == set(ids)
        # The replies alone need this long on the line; a gateway that spins burns a core all along.
        line_time = line.received / BYTES_PER_S
        assert wall_burst >= line_time * 0.9, "faster than the line: the test's throttle does not hold"
        assert cpu_burst < 0.5 * wall_burst, "the gateway used %.1f s of CPU in %.1f s: spinning" % (cpu_burst, wall_burst)

        # Quiet again: nothing left to send, nothing may spin.
        cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
        line.run_until(lambda: time.monotonic() - wall_before >= 3.0, timeout=10)
        cpu_idle, wall_idle = cpu_seconds(pid) - cpu_before, time.monotonic() - wall_before
        assert cpu_idle < 0.2 * wall_idle, "the gateway used %.2f s of CPU in %.1f s of quiet: spinning" % (cpu_idle, wall_idle)

        log = gateway.log()
        assert "Traceback" not in log and "Exception in callback" not in log, log[-3000:]
        assert len(log) < 400 * NODES, "%d bytes of log for %d HELLOs" % (len(log), NODES)
        assert gateway.stop() == 0
    finally:
        gateway.close()
