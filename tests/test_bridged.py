"""Issue 15, the gateway's first part: nodes heard through a LoRa bridge (RADIO_RX) are nodes of their own.

The real Sessions behind real Links: two bridges on two ports relay a keyed battery node's frames. Its frames
are checked with its own key (a tag is required over radio, whatever the port says), handled as its own on
the bridge's radio link, stored once when two bridges hear the same frame, and its status names the bridge
that heard it best. Nothing goes back over the air yet (RADIO_TX is the next part).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.serial_link import RadioLink
from hil.scripted_node import CHANNELS
from protocols import Message, encode, messages
from protocols import frame as fr
from tests.test_security import KEY, KeyBench, keyfile

BATTERY = bytes.fromhex("0000b0b0b0b0b0b1")
BRIDGES = {"/dev/ttyA": bytes.fromhex("00000000000b0001"), "/dev/ttyB": bytes.fromhex("00000000000b0002")}
BRIDGE_HELLO: dict[str, Any] = {"proto": [1, 1], "fw_version": "b", "hw_model": "bridge", "caps": 0x10 | 0x09, "channels": []}
NODE_HELLO: dict[str, Any] = {"proto": [1, 1], "fw_version": "t", "hw_model": "probe", "caps": 0x21, "channels": CHANNELS}


class Radio:
    def __init__(self, tmp_path: Path) -> None:
        self.bench = KeyBench(keyfile(tmp_path, {BATTERY: KEY}))
        self.counters = {port: 1 for port in BRIDGES}
        for port, bridge in BRIDGES.items():
            self.bench.feed(encode(Message(messages.HELLO, bridge, 1, BRIDGE_HELLO, fr.F_ACK_REQ)), port)

    def relay(self, port: str, inner: bytes, rssi: int = -110, snr: float = 2.5) -> None:
        """The bridge on `port` passes up a radio frame it heard (RADIO_RX, acknowledged to it by the gateway)."""
        self.counters[port] += 1
        fields = {"frame": inner, "rssi": rssi, "snr": snr, "freq": 868_100_000, "sf": 9}
        replies = self.bench.feed(encode(Message(messages.RADIO_RX, BRIDGES[port], self.counters[port], fields, fr.F_ACK_REQ)), port)
        assert any(r.type == messages.ACK and self.counters[port] in r.fields["counters"] for r in replies)  # the bridge's own ACK


def on_air(mtype: int, counter: int, fields: dict[str, Any], key: bytes | None = KEY) -> bytes:
    """A battery node's frame as sent on air: no COBS, tagged."""
    flags = fr.F_ACK_REQ | (fr.F_AUTH if key else 0)
    return bytes(fr.pack(fr.Frame(mtype, BATTERY, counter, messages.encode_payload(mtype, fields), flags), key))


@pytest.fixture
def radio(tmp_path: Path) -> Radio:
    return Radio(tmp_path)


def test_a_battery_node_heard_through_a_bridge_is_a_node_of_its_own(radio: Radio) -> None:
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO))
    node = radio.bench.sessions.nodes[BATTERY.hex()]
    assert node.layout is not None and isinstance(node.link, RadioLink) and node.port == "radio:" + BRIDGES["/dev/ttyA"].hex()
    readings = on_air(messages.READINGS, 2, {"samples": [0, 2150, 0, 1, 7, 0]})
    radio.relay("/dev/ttyA", readings, rssi=-118)
    radio.relay("/dev/ttyB", readings, rssi=-104)  # the same frame, heard better by the other bridge
    assert radio.bench.stored() == [2]  # once
    assert node.radio == {"rssi": -104, "snr": 2.5, "sf": 9, "freq": 868_100_000, "bridge": BRIDGES["/dev/ttyB"].hex(), "counter": 2}
    assert node.port == "radio:" + BRIDGES["/dev/ttyB"].hex()
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 3, {"samples": [0, 2151, 0, 1, 8, 0]}), rssi=-120)
    radio.relay("/dev/ttyB", on_air(messages.READINGS, 3, {"samples": [0, 2151, 0, 1, 8, 0]}), rssi=-125)
    assert radio.bench.stored() == [2, 3] and node.radio["bridge"] == BRIDGES["/dev/ttyA"].hex()
    assert node.port == "radio:" + BRIDGES["/dev/ttyA"].hex()  # the weaker copy did not move it
    published: list[tuple[str, bytes]] = []
    radio.bench.sessions.presenter._publish_retained = lambda topic, payload: published.append((topic, payload))
    radio.bench.sessions.presenter.status(node, force=True)
    ((topic, payload),) = published
    assert topic.endswith(BATTERY.hex() + "/status") and json.loads(payload)["radio"]["bridge"] == BRIDGES["/dev/ttyA"].hex()


def test_over_radio_a_tag_is_required_and_a_damaged_frame_is_counted(radio: Radio) -> None:
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO, key=None))  # untagged: anyone in range could send it
    assert BATTERY.hex() not in radio.bench.sessions.nodes
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO, key=bytes(32)))  # under another key
    radio.relay("/dev/ttyA", b"\x11\x02\x80" + bytes(17))  # 20 bytes: too short for a tag
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO))
    links = radio.bench.sessions._radio_links
    errors = links[BRIDGES["/dev/ttyA"].hex()].errors
    assert errors["auth"] == 3 and errors["too_short"] == 0
    assert radio.bench.sessions.nodes[BATTERY.hex()].layout is not None  # the real one is taken
    stranger = bytes.fromhex("0000c0c0c0c0c0c1")  # a node without a key in the file: over radio it is refused too
    plain = bytes(fr.pack(fr.Frame(messages.HELLO, stranger, 1, messages.encode_payload(messages.HELLO, NODE_HELLO), fr.F_ACK_REQ)))
    radio.relay("/dev/ttyB", plain)
    assert stranger.hex() not in radio.bench.sessions.nodes
    assert links[BRIDGES["/dev/ttyB"].hex()].errors["auth"] == 1
