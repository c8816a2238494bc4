"""The MQTT side under the conditions a city broker brings: refusals, TLS, credentials, client certs, 3.1.1."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from hil.broker import Mosquitto
from hil.capture import MqttCapture
from hil.certs import Pki, make_pki
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
