"""The MQTT side under the conditions a city broker brings: refusals, TLS, credentials, client certs, 3.1.1."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from gateway.config import MqttConfig
from gateway.uplink import Uplink, UplinkEvents
from hil.broker import Mosquitto
from hil.capture import MqttCapture, Received
from hil.certs import Pki, make_pki
from hil.flaky_link import FlakyProxy
from hil.gateway import GatewayProcess
from hil.scripted_node import ScriptedNode
from hil.serial_pair import PtyCable

pytestmark = pytest.mark.processes

NODE = bytes.fromhex("0000a4cf12b3c4d5")


@pytest.fixture
def cable(tmp_path: pathlib.Path) -> Iterator[PtyCable]:
    made = PtyCable(tmp_path / "ttyNODE0")
    yield made
    made.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def run_flow(
    tmp_path: pathlib.Path, broker: Mosquitto, cable: PtyCable, capture: MqttCapture, mqtt_extra: list[str], **settings: object
) -> GatewayProcess:
    gateway = GatewayProcess(tmp_path / "gw", broker.port, [str(cable.link_path)], mqtt_extra=mqtt_extra, **settings)
    gateway.start()
    try:
        gateway.wait_for_log("ttyNODE0: open")
        node = ScriptedNode(cable, NODE)
        node.wait_acked([node.hello()])
        node.wait_acked([node.readings([1, value, 0]) for value in (1, 2, 3)])
        capture.wait_for(lambda msgs: len(capture.readings()) == 3)
        gateway.wait_for_log("connected to")
    except BaseException:
        gateway.close()
        raise
    return gateway


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_both_mqtt_versions(tmp_path: pathlib.Path, cable: PtyCable, protocol: str) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        capture = MqttCapture(broker.host, broker.port, ["edgegw/#"])
        gateway = run_flow(tmp_path, broker, cable, capture, [], protocol=protocol)
        assert "(MQTT %s)" % protocol in gateway.log()
        assert gateway.stop() == 0
        capture.close()


def test_tls_with_username_and_password_file(tmp_path: pathlib.Path, cable: PtyCable, pki: Pki) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("correct horse\n")
    tls = (pki.ca, pki.server_cert, pki.server_key)
    with Mosquitto(tmp_path / "broker", users={"gw-test": "correct horse", "reader": "r"}, anonymous=False, tls=tls) as broker:
        capture = MqttCapture(broker.host, broker.port, ["edgegw/#"], username="reader", password="r", ca_file=str(pki.ca))
        extra = ['username = "gw-test"', 'password_file = "%s"' % secret, "[mqtt.tls]", 'ca_file = "%s"' % pki.ca]
        gateway = run_flow(tmp_path, broker, cable, capture, extra)
        assert "correct horse" not in gateway.log()
        assert gateway.stop() == 0
        capture.close()


def test_tls_client_certificate(tmp_path: pathlib.Path, cable: PtyCable, pki: Pki) -> None:
    tls = (pki.ca, pki.server_cert, pki.server_key)
    with Mosquitto(tmp_path / "broker", tls=tls, require_client_cert=True) as broker:
        capture = MqttCapture(
            broker.host, broker.port, ["edgegw/#"], ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key)
        )
        extra = ["[mqtt.tls]", 'ca_file = "%s"' % pki.ca, 'cert_file = "%s"' % pki.client_cert, 'key_file = "%s"' % pki.client_key]
        gateway = run_flow(tmp_path, broker, cable, capture, extra)
        assert gateway.stop() == 0
        capture.close()


def test_a_broker_that_refuses_us_is_logged_and_readings_stay_buffered(tmp_path: pathlib.Path, cable: PtyCable) -> None:
    with Mosquitto(tmp_path / "broker", anonymous=False, users={"someone": "else"}) as broker:
        gateway = GatewayProcess(tmp_path / "gw", broker.port, [str(cable.link_path)])
        gateway.start()
        try:
            gateway.wait_for_log("ttyNODE0: open")
            node = ScriptedNode(cable, NODE)
            node.wait_acked([node.hello()])
            node.wait_acked([node.readings([1, value, 0]) for value in (1, 2, 3)])  # on disk while refused
            gateway.wait_for_log("refused the connection: Not authorized")
            assert gateway.process is not None and gateway.process.poll() is None
            assert gateway.stop() == 0
        finally:
            gateway.close()
        assert "Traceback" not in gateway.log()
        restarted = GatewayProcess(tmp_path / "gw", broker.port, [])
        restarted.start()
        try:
            restarted.wait_for_log("3 buffered readings")
        finally:
            restarted.close()


# ------------------------------------------------------------------ the uplink on its own, in this process


def uplink_for(port: int, events: UplinkEvents, keepalive: int = 30) -> Uplink:
    config = MqttConfig(host="127.0.0.1", port=port, keepalive=keepalive, reconnect_max=1)
    return Uplink(config, "gw-uplink-test", "edgegw/gw-uplink-test/status", b'{"state": "offline"}', events, asyncio.get_running_loop(), 1)


def recording_events(log: list[str], arrived: asyncio.Event) -> UplinkEvents:
    def connected() -> None:
        log.append("connected")
        arrived.set()

    def disconnected() -> None:
        log.append("disconnected")

    return UplinkEvents(connected=connected, disconnected=disconnected, published=lambda *_: None, message=lambda *_: None)


async def test_the_uplink_runs_on_the_event_loop_and_publishes_only_on_a_connection_it_was_told_of(tmp_path: pathlib.Path) -> None:
    """No thread of paho's: the connection, its PUBACKs and its end all come through the event loop, and nothing
    is published before the forwarder hears of the connection (it would resend what it holds on it and wipe it)."""
    with Mosquitto(tmp_path / "broker") as broker:
        arrived = asyncio.Event()
        calls: list[str] = []
        acked: list[tuple[int, bool]] = []
        events = recording_events(calls, arrived)
        events.published = lambda mid, accepted, _reason: acked.append((mid, accepted))
        uplink = uplink_for(broker.port, events)
        threads_before = {thread.ident for thread in threading.enumerate()}
        uplink.start()
        try:
            assert uplink.publish("edgegw/t", b"x", qos=1) is None, "not connected yet"
            await asyncio.wait_for(arrived.wait(), 10)
            assert calls == ["connected"] and uplink.connected
            mids = [uplink.publish("edgegw/t", b"%d" % n, qos=1) for n in range(50)]
            assert None not in mids
            deadline = time.monotonic() + 10
            while len(acked) < 50 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert sorted(acked) == sorted((mid, True) for mid in mids)
            lasting = [t for t in threading.enumerate() if t.ident not in threads_before and not t.name.startswith("asyncio")]
            assert lasting == [], "the connection needs no thread of its own: %s" % lasting
        finally:
            await uplink.stop()
        assert calls == ["connected", "disconnected"] and not uplink.connected, "told of the end by the time stop() returns"


def arrived_on(topic: str) -> Callable[[list[Received]], bool]:
    return lambda msgs: topic in {m.topic for m in msgs}


async def test_paho_does_not_resend_on_its_own_after_a_reconnect(tmp_path: pathlib.Path) -> None:
    """Only the forwarder resends (it knows what was acknowledged); a message paho had in flight is dropped."""
    with Mosquitto(tmp_path / "broker") as broker, FlakyProxy(broker.port) as proxy:
        capture = MqttCapture(broker.host, broker.port, ["edgegw/t/#"])
        arrived = asyncio.Event()
        calls: list[str] = []
        uplink = uplink_for(proxy.port, recording_events(calls, arrived))
        uplink.start()
        try:
            await asyncio.wait_for(arrived.wait(), 10)
            proxy.set_link(rate=0, rate_down=None)  # nothing gets to the broker any more
            assert uplink.publish("edgegw/t/lost", b"1", qos=1) is not None
            arrived.clear()
            proxy.cut()
            proxy.set_good()
            await asyncio.wait_for(arrived.wait(), 20)  # connected again
            for topic in ("edgegw/t/after", "edgegw/t/later"):  # paho resends at CONNACK: before "later", on the same TCP stream
                assert uplink.publish(topic, b"2", qos=1) is not None
                await asyncio.get_running_loop().run_in_executor(None, capture.wait_for, arrived_on(topic))
            assert [m.topic for m in capture.snapshot()] == ["edgegw/t/after", "edgegw/t/later"]
            assert calls == ["connected", "disconnected", "connected"]
        finally:
            await uplink.stop()
            capture.close()


async def test_a_broker_that_never_answers_connack_is_named_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel completes the handshake; nobody ever answers
    arrived = asyncio.Event()
    uplink = uplink_for(silent.getsockname()[1], recording_events([], arrived), keepalive=5)
    uplink.start()
    try:
        deadline = time.monotonic() + 30
        while "sent no CONNACK" not in caplog.text and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert "took the connection but sent no CONNACK within 5 s" in caplog.text
        assert not arrived.is_set()
    finally:
        await uplink.stop()
        silent.close()


async def test_publishes_the_socket_cannot_take_wait_for_the_writer_and_all_arrive(tmp_path: pathlib.Path) -> None:
    """A broker that stops reading: paho's socket fills, the rest waits for writability (no spinning, nothing
    dropped), and once the broker reads again every message is PUBACKed."""
    with Mosquitto(tmp_path / "broker") as broker:
        assert broker.process is not None
        arrived = asyncio.Event()
        acked: list[int] = []
        events = recording_events([], arrived)
        events.published = lambda mid, accepted, _reason: acked.append(mid) if accepted else None
        config = MqttConfig(host="127.0.0.1", port=broker.port, keepalive=30, reconnect_max=1, inflight=200)
        uplink = Uplink(config, "gw-backed-up", "edgegw/gw-backed-up/status", b"{}", events, asyncio.get_running_loop(), 1)
        uplink.start()
        try:
            await asyncio.wait_for(arrived.wait(), 10)
            os.kill(broker.process.pid, signal.SIGSTOP)
            try:
                mids = [uplink.publish("edgegw/t/big", bytes(100_000), qos=1) for _ in range(150)]  # 15 MB
                assert None not in mids
                await asyncio.sleep(0.5)
                assert uplink._writing, "the socket did not take 15 MB: the rest waits for the writer"
                cpu_before = time.process_time()
                await asyncio.sleep(1.0)
                assert time.process_time() - cpu_before < 0.5, "waiting for writability does not spin"
            finally:
                os.kill(broker.process.pid, signal.SIGCONT)
            deadline = time.monotonic() + 30
            while len(acked) < len(mids) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert sorted(acked) == sorted(mid for mid in mids if mid is not None)
            assert not uplink._writing, "the writer is removed once everything is written"
        finally:
            await uplink.stop()


async def test_an_unexpected_error_in_paho_drops_the_connection_once_and_reconnects(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug under the socket's reader must not leave it registered to fail on every turn of the loop."""
    with Mosquitto(tmp_path / "broker") as broker:
        arrived = asyncio.Event()
        calls: list[str] = []
        uplink = uplink_for(broker.port, recording_events(calls, arrived))
        uplink.start()
        try:
            await asyncio.wait_for(arrived.wait(), 10)
            arrived.clear()
            real_read = uplink._client.loop_read
            failures = []

            def failing_read(max_packets: int = 1) -> int:
                failures.append(1)
                uplink._client.loop_read = real_read  # type: ignore[method-assign]
                raise RuntimeError("a bug")

            uplink._client.loop_read = failing_read  # type: ignore[method-assign,assignment]
            assert uplink.publish("edgegw/t", b"x", qos=1) is not None  # its PUBACK is read by the failing reader
            await asyncio.wait_for(arrived.wait(), 20)  # connected again
            assert failures == [1]
            assert calls == ["connected", "disconnected", "connected"]
            assert caplog.text.count("unexpected error reading from the broker's connection") == 1
        finally:
            await uplink.stop()
