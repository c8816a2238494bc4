"""The uplink on the event loop's selector against brokers that misbehave: hostile raw sockets, a stopped
mosquitto, TLS; each test checks what the gateway relies on (told of every end, reconnects, no socket left)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.config import MqttConfig, TlsConfig
from gateway.uplink import Inbound, Uplink, UplinkEvents
from hil.broker import Mosquitto
from hil.certs import Pki, make_pki

pytestmark = pytest.mark.processes

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONNACK_5 = b"\x20\x03\x00\x00\x00"
SERVER_SHUTTING_DOWN_5 = b"\xe0\x02\x8b\x00"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, object]]]:
    """Whatever reaches asyncio's exception handler: nothing may."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(None)


def open_sockets() -> set[str]:
    """This process's socket fds, as fd:inode."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with_target = "/proc/self/fd/" + fd
        try:
            target = os.readlink(with_target)
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add("%s:%s" % (fd, target))
    return found


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.acked: list[int] = []
        self.messages: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()
        self.left = asyncio.Event()

    def events(self) -> UplinkEvents:
        def connected() -> None:
            self.calls.append("connected")
            self.arrived.set()

        def disconnected() -> None:
            self.calls.append("disconnected")
            self.left.set()

        def published(mid: int, accepted: bool, _reason: str) -> None:
            if accepted:
                self.acked.append(mid)

        def message(inbound: Inbound) -> None:
            self.messages.append((inbound.topic, inbound.payload))

        return UplinkEvents(connected=connected, disconnected=disconnected, published=published, message=message)


def make_uplink(port: int, recorder: Recorder, keepalive: int, tls: TlsConfig | None) -> Uplink:
    config = MqttConfig(host="127.0.0.1", port=port, keepalive=keepalive, reconnect_max=1, inflight=200, tls=tls)
    return Uplink(config, "gw-attack", "edgegw/gw-attack/status", b"{}", recorder.events(), asyncio.get_running_loop(), 1)


def read_packet(conn: socket.socket) -> bytes:
    """One MQTT packet (fixed header included), or b"" at EOF."""
    head = conn.recv(1)
    if not head:
        return b""
    length, shift, raw = 0, 0, b""
    while True:
        byte = conn.recv(1)
        if not byte:
            return b""
        raw += byte
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            return b""
        body += chunk
    return head + raw + body


def tls_server(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    return context


def publish_qos0(topic: bytes, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + b"\x00" + payload  # MQTT 5: no properties
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


class RawBroker:
    """A listening socket whose every accepted connection is handed to `serve` on a thread of its own."""

    def __init__(self, serve: Callable[[socket.socket, int], None]) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.serve = serve
        self.accepted = 0
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn, self.accepted), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        with contextlib.suppress(OSError):
            self.serve(conn, number)

    def close(self) -> None:
        self.server.close()
        for conn in self.conns:
            conn.close()


@contextlib.asynccontextmanager
async def running(port: int, recorder: Recorder, keepalive: int = 30, tls: TlsConfig | None = None) -> AsyncIterator[Uplink]:
    """An uplink started, and stopped at the end however it ends."""
    uplink = make_uplink(port, recorder, keepalive, tls)
    uplink.start()
    try:
        yield uplink
    finally:
        await uplink.stop()


async def no_socket_left(before: set[str]) -> None:
    assert await wait_until(lambda: not open_sockets() - before, 10), open_sockets() - before


async def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return condition()


# ------------------------------------------------------------------ stop()


async def test_a_stop_during_a_connect_leaves_no_socket_open(pki: Pki, loop_errors: list[dict[str, object]]) -> None:
    """stop() while paho's connect() still runs on its thread (a slow TLS handshake): once that connect
    returns, its socket must be closed, not left open with a CONNECT nobody will ever write."""
    context = tls_server(pki)
    outcome: list[bytes | str] = []

    def slow_handshake(conn: socket.socket, _number: int) -> None:
        time.sleep(1.0)  # the handshake answers only after stop() has returned
        tls = context.wrap_socket(conn, server_side=True)
        tls.settimeout(5)
        try:
            outcome.append(tls.recv(100))  # b"": the client closed it
        except TimeoutError:
            outcome.append("still open")

    broker = RawBroker(slow_handshake)
    before = open_sockets()
    recorder = Recorder()
    try:
        async with running(broker.port, recorder, tls=TlsConfig(ca_file=str(pki.ca))):
            assert await wait_until(lambda: broker.accepted == 1, 5)
            await asyncio.sleep(0.2)
        assert await wait_until(lambda: bool(outcome), 10)
        assert outcome == [b""], "the socket of a connect() that finished after stop() is closed"
        assert recorder.calls == []
    finally:
        broker.close()
    await no_socket_left(before)
    assert loop_errors == []


async def test_a_stop_during_a_tls_handshake_with_a_silent_server_returns_at_once(pki: Pki, loop_errors: list[dict[str, object]]) -> None:
    """The handshake waits paho's 5 s connect timeout on its thread; stop() does not wait for it, and the
    failure that comes after it reaches nobody's exception handler."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel completes TCP; no TLS answer ever comes
    before = open_sockets()
    recorder = Recorder()
    try:
        async with running(silent.getsockname()[1], recorder, tls=TlsConfig(ca_file=str(pki.ca))):
            await asyncio.sleep(0.5)
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 2
        await no_socket_left(before)  # once the handshake times out on its thread
        await asyncio.sleep(0.2)
    finally:
        silent.close()
    assert recorder.calls == []
    assert loop_errors == []


async def test_a_stop_while_the_socket_is_backed_up_closes_it(tmp_path: pathlib.Path, loop_errors: list[dict[str, object]]) -> None:
    """A broker that stopped reading: DISCONNECT cannot be written, and the socket must be closed all the same
    (its fd is not left to the end of the process, and the broker sees the connection end)."""
    with Mosquitto(tmp_path / "broker") as broker:
        assert broker.process is not None
        before = open_sockets()
        recorder = Recorder()
        async with running(broker.port, recorder) as uplink:
            await asyncio.wait_for(recorder.arrived.wait(), 10)
            os.kill(broker.process.pid, signal.SIGSTOP)
            try:
                mids = [uplink.publish("edgegw/t/big", bytes(100_000), qos=1) for _ in range(150)]  # 15 MB
                assert None not in mids
                await asyncio.sleep(0.3)
                await uplink.stop(timeout=0.2)
                assert recorder.calls == ["connected", "disconnected"]
                leaked = open_sockets() - before
                assert not leaked, "the backed-up socket is closed by stop(): %s" % leaked
            finally:
                os.kill(broker.process.pid, signal.SIGCONT)
    assert loop_errors == []


EXIT_DURING_CONNECT = """
import asyncio, socket, sys, time
from gateway.config import MqttConfig
from gateway.uplink import Uplink, UplinkEvents

server = socket.create_server(("127.0.0.1", 0), backlog=0)
port = server.getsockname()[1]
queued = [socket.socket() for _ in range(3)]
for sock in queued:  # the accept queue is full: the kernel drops the uplink's SYN, and its connect() hangs
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1", port))
time.sleep(0.2)

async def main():
    events = UplinkEvents(lambda: None, lambda: None, lambda *_: None, lambda *_: None)
    uplink = Uplink(MqttConfig(host="127.0.0.1", port=port), "gw-exit", "t", b"", events, asyncio.get_running_loop(), 1)
    uplink.start()
    await asyncio.sleep(0.5)
    await uplink.stop()

asyncio.run(main())
print("returned", flush=True)
"""


def test_a_process_that_stops_the_uplink_during_a_connect_exits_without_waiting_for_it() -> None:
    """paho's connect() waits up to its 5 s timeout for a SYN nobody answers (longer for a name lookup);
    the process that stopped the uplink meanwhile exits at once: the old thread of paho's was a daemon,
    and the default executor's threads are joined at asyncio.run's end and at exit."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", EXIT_DURING_CONNECT], capture_output=True, timeout=30, cwd=ROOT)
    took = time.monotonic() - started
    assert done.returncode == 0 and done.stdout == b"returned\n", done.stderr.decode()[-2000:]
    assert took < 3.5, "exited %.1f s after start: it waited for the connect's 5 s timeout" % took


# ------------------------------------------------------------------ hostile brokers


async def test_a_server_disconnect_without_closing_tcp_ends_the_connection_and_reconnects(
    loop_errors: list[dict[str, object]],
) -> None:
    """MQTT 5: a broker says DISCONNECT (server shutting down) and leaves the TCP connection open. The uplink
    closes it, tells the forwarder, and connects again."""
    eofs: list[int] = []

    def disconnecting(conn: socket.socket, number: int) -> None:
        assert read_packet(conn)[0] == 0x10  # CONNECT
        conn.sendall(CONNACK_5)
        if number == 1:
            time.sleep(0.3)
            conn.sendall(SERVER_SHUTTING_DOWN_5)
        conn.settimeout(10)
        while True:
            packet = read_packet(conn)
            if not packet:
                eofs.append(number)
                return
            if packet[0] == 0xC0:  # PINGREQ
                conn.sendall(b"\xd0\x00")

    broker = RawBroker(disconnecting)
    before = open_sockets()
    recorder = Recorder()
    try:
        async with running(broker.port, recorder):
            await asyncio.wait_for(recorder.arrived.wait(), 10)
            recorder.arrived.clear()
            await asyncio.wait_for(recorder.left.wait(), 5)
            await asyncio.wait_for(recorder.arrived.wait(), 10)
            assert recorder.calls == ["connected", "disconnected", "connected"]
            assert await wait_until(lambda: eofs == [1], 5), "the first connection was closed by the client: %s" % eofs
    finally:
        broker.close()
    await no_socket_left(before)
    assert loop_errors == []


async def test_a_broker_that_closes_right_after_connack_many_times_leaks_nothing(loop_errors: list[dict[str, object]]) -> None:
    """A broker that accepts and hangs up at once, again and again: each end is told, in order, no socket is
    left behind and nothing reaches asyncio's exception handler."""

    def hang_up(conn: socket.socket, _number: int) -> None:
        read_packet(conn)
        conn.sendall(CONNACK_5)
        conn.close()

    broker = RawBroker(hang_up)
    before = open_sockets()
    recorder = Recorder()
    try:
        async with running(broker.port, recorder):
            assert await wait_until(lambda: broker.accepted >= 8, 30)
    finally:
        broker.close()
    told = recorder.calls
    assert told.count("connected") >= 6
    assert told == ["connected", "disconnected"] * (len(told) // 2), told
    await no_socket_left(before)
    assert loop_errors == []


async def test_tls_packets_left_decrypted_in_the_ssl_object_are_read_without_a_new_event(
    pki: Pki, loop_errors: list[dict[str, object]]
) -> None:
    """CONNACK and five messages in one TLS record: paho reads one packet at the first event (nothing of ours
    in flight yet), the rest stays decrypted in the SSL object and the socket has nothing new to say; all
    five are read all the same."""
    context = tls_server(pki)

    def one_record(conn: socket.socket, _number: int) -> None:
        tls = context.wrap_socket(conn, server_side=True)
        assert read_packet(tls)[0] == 0x10
        tls.sendall(CONNACK_5 + b"".join(publish_qos0(b"t", b"%d" % n) for n in range(5)))
        tls.settimeout(20)
        read_packet(tls)

    broker = RawBroker(one_record)
    recorder = Recorder()
    try:
        async with running(broker.port, recorder, tls=TlsConfig(ca_file=str(pki.ca))):
            await asyncio.wait_for(recorder.arrived.wait(), 10)
            assert await wait_until(lambda: len(recorder.messages) == 5, 5), recorder.messages
            assert recorder.messages == [("t", b"%d" % n) for n in range(5)]
    finally:
        broker.close()
    assert loop_errors == []


# ------------------------------------------------------------------ keepalive


async def test_a_stopped_broker_is_noticed_through_the_keepalive_and_left(
    tmp_path: pathlib.Path, loop_errors: list[dict[str, object]]
) -> None:
    """SIGSTOP: the TCP connection stays up and nothing answers. The uplink gives it up about 1.5 keepalives
    after the last thing it heard (the server's own rule; paho alone takes 2), and connects again once the
    broker runs; waiting costs no CPU."""
    keepalive = 6
    with Mosquitto(tmp_path / "broker") as broker:
        assert broker.process is not None
        recorder = Recorder()
        async with running(broker.port, recorder, keepalive=keepalive):
            await asyncio.wait_for(recorder.arrived.wait(), 10)
            recorder.arrived.clear()
            os.kill(broker.process.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                await asyncio.wait_for(recorder.left.wait(), 4 * keepalive)
                noticed = time.monotonic() - stopped
                cpu_before = time.process_time()
                await asyncio.sleep(1)
                idle_cpu = time.process_time() - cpu_before
            finally:
                os.kill(broker.process.pid, signal.SIGCONT)
            await asyncio.wait_for(recorder.arrived.wait(), 15)
            assert recorder.calls == ["connected", "disconnected", "connected"]
            assert noticed <= 1.5 * keepalive + 1.5, "a silent broker noticed after %.1f s (keepalive %d s)" % (noticed, keepalive)
            assert idle_cpu < 0.5
    assert loop_errors == []


# ------------------------------------------------------------------ bugs under paho


async def test_an_unexpected_error_writing_drops_the_connection_and_reconnects(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, loop_errors: list[dict[str, object]]
) -> None:
    """Almost every write is the end-of-turn flush, not the writer: a bug under it (at CONNECT, at a publish)
    is logged, drops the connection and connects again, like one under the reader; it must neither end the
    run task (no connection ever again) nor leave paho counting itself registered (nothing written again)."""
    with Mosquitto(tmp_path / "broker") as broker:
        recorder = Recorder()
        async with running(broker.port, recorder) as uplink:
            real_write = uplink._client.loop_write
            failures: list[int] = []

            def failing_write() -> int:
                failures.append(1)
                uplink._client.loop_write = real_write  # type: ignore[method-assign]
                raise RuntimeError("a bug")

            uplink._client.loop_write = failing_write  # type: ignore[method-assign,assignment]  # CONNECT's
            await asyncio.wait_for(recorder.arrived.wait(), 15)
            recorder.arrived.clear()
            uplink._client.loop_write = failing_write  # type: ignore[method-assign,assignment]  # a publish's
            assert uplink.publish("edgegw/t", b"x", qos=1) is not None
            await asyncio.wait_for(recorder.arrived.wait(), 15)  # connected again
            mid = uplink.publish("edgegw/t", b"y", qos=1)
            assert await wait_until(lambda: mid in recorder.acked, 5)
            assert failures == [1, 1]
            assert recorder.calls == ["connected", "disconnected", "connected"]
            assert caplog.text.count("unexpected error writing to the broker's connection") == 2
    assert loop_errors == []


async def test_an_unexpected_error_in_connect_is_logged_and_the_uplink_tries_again(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, loop_errors: list[dict[str, object]]
) -> None:
    """A bug under paho's connect() (an exception no network failure raises) must not end the run task:
    that would leave a gateway that never connects again, and says nothing (stop() gathers the task)."""
    with Mosquitto(tmp_path / "broker") as broker:
        recorder = Recorder()
        uplink = make_uplink(broker.port, recorder, 30, None)
        real_connect = uplink._connect
        failures: list[int] = []

        def failing_connect() -> None:
            failures.append(1)
            uplink._connect = real_connect  # type: ignore[method-assign]
            raise RuntimeError("a bug")

        uplink._connect = failing_connect  # type: ignore[method-assign]
        uplink.start()
        try:
            await asyncio.wait_for(recorder.arrived.wait(), 15)
        finally:
            await uplink.stop()
        assert failures == [1]
        assert caplog.text.count("unexpected error connecting to the broker") == 1
    assert loop_errors == []
