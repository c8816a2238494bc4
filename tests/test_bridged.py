"""Issue 15, the gateway's first part: nodes heard through a LoRa bridge (RADIO_RX) are nodes of their own.

The real Sessions behind real Links: two bridges on two ports relay a keyed battery node's frames. Its frames
are checked with its own key (a tag is required over radio, whatever the port says), handled as its own on
the bridge's radio link, stored once when two bridges hear the same frame, and its status names the bridge
that heard it best; what the node is owed goes back as RADIO_TX in its receive windows (gateway/air.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.air import LEAD_MS, AirTransport, Window
from gateway.commands import Commands
from gateway.copies import COPY_SPAN_S, Transmissions
from gateway.serial_link import RadioLink
from gateway.store import Store
from gateway.store_worker import StoreWorker
from hil.scripted_node import CHANNELS
from protocols import Message, encode, messages
from protocols import frame as fr
from protocols.airtime import airtime_us
from protocols.dutycycle import band
from protocols.lora import RX_DELAY_MS
from tests.test_security import KEY, KeyBench, acked, keyfile

BATTERY = bytes.fromhex("0000b0b0b0b0b0b1")
BRIDGES = {"/dev/ttyA": bytes.fromhex("00000000000b0001"), "/dev/ttyB": bytes.fromhex("00000000000b0002")}
BRIDGE_HELLO: dict[str, Any] = {"proto": [1, 1], "fw_version": "b", "hw_model": "bridge", "caps": 0x10 | 0x09, "channels": []}
NODE_HELLO: dict[str, Any] = {"proto": [1, 1], "fw_version": "t", "hw_model": "probe", "caps": 0x23, "channels": CHANNELS}


class Radio:
    def __init__(self, tmp_path: Path) -> None:
        self.bench = KeyBench(keyfile(tmp_path, {BATTERY: KEY}))
        self.counters = {port: 1 for port in BRIDGES}
        self.later: Any = None
        for port, bridge in BRIDGES.items():
            self.bench.feed(encode(Message(messages.HELLO, bridge, 1, BRIDGE_HELLO, fr.F_ACK_REQ)), port)

    def relay(
        self,
        port: str,
        inner: bytes,
        rssi: int = -110,
        snr: float = 2.5,
        at: int | None = None,
        decide: bool = True,
        sf: int = 9,
    ) -> list[Message]:
        """The bridge on `port` passes up a radio frame it heard (RADIO_RX, acknowledged to it by the gateway);
        `at`: when it heard it, on its clock. What the gateway wrote to the bridge (and, with `decide`, in its windows)."""
        self.counters[port] += 1
        fields: dict[str, Any] = {"frame": inner, "rssi": rssi, "snr": snr, "freq": 868_100_000, "sf": sf}
        if at is not None:
            fields["at"] = at
        replies = self.bench.feed(encode(Message(messages.RADIO_RX, BRIDGES[port], self.counters[port], fields, fr.F_ACK_REQ)), port)
        assert any(r.type == messages.ACK and self.counters[port] in r.fields["counters"] for r in replies)  # the bridge's own ACK
        return replies + self.decide(port) if decide else replies

    def decide(self, port: str = "/dev/ttyA") -> list[Message]:
        """DECIDE_S later: the windows' frames are chosen. What the gateway wrote to the bridge then."""
        self.later.run()
        return self.bench.replies(port)


def on_air(mtype: int, counter: int, fields: dict[str, Any], key: bytes | None = KEY) -> bytes:
    """A battery node's frame as sent on air: no COBS, tagged."""
    flags = fr.F_ACK_REQ | (fr.F_AUTH if key else 0)
    return bytes(fr.pack(fr.Frame(mtype, BATTERY, counter, messages.encode_payload(mtype, fields), flags), key))


class Later:
    """The event loop's call_later for gateway/air.py: a window's frame is chosen when the test says time has come."""

    def __init__(self) -> None:
        self.due: list[Any] = []

    def call_later(self, delay: float, callback: Any, *args: Any) -> None:
        self.due.append((callback, args))

    def call_at(self, when: float, callback: Any, *args: Any) -> None:  # a log digest's summary (gateway/logs.py)
        self.due.append((callback, args))

    def time(self) -> float:
        return 0.0

    def run(self) -> None:
        due, self.due = self.due, []
        for callback, args in due:
            callback(*args)


@pytest.fixture
def radio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Radio:
    made = Radio(tmp_path)
    made.later = Later()
    monkeypatch.setattr("gateway.air.asyncio.get_running_loop", lambda: made.later)
    return made


def test_a_battery_node_heard_through_a_bridge_is_a_node_of_its_own(radio: Radio) -> None:
    published: list[tuple[str, bytes]] = []
    radio.bench.sessions.presenter._publish_retained = lambda topic, payload: published.append((topic, payload))

    def bridges_published() -> list[str]:
        """The best bridge of each status document of the node published so far."""
        documents = [json.loads(payload) for topic, payload in published if topic.endswith(BATTERY.hex() + "/status")]
        return [document["radio"]["bridge"] for document in documents if "radio" in document]

    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO))
    node = radio.bench.sessions.nodes[BATTERY.hex()]
    assert node.layout is not None and isinstance(node.link, RadioLink) and node.port == "radio:" + BRIDGES["/dev/ttyA"].hex()
    readings = on_air(messages.READINGS, 2, {"samples": [0, 2150, 0, 1, 7, 0]})
    radio.relay("/dev/ttyA", readings, rssi=-118)
    radio.relay("/dev/ttyB", readings, rssi=-104)  # the same frame, heard better by the other bridge
    assert radio.bench.stored() == [2]  # once
    assert node.radio == {
        "rssi": -104,
        "snr": 2.5,
        "sf": 9,
        "freq": 868_100_000,
        "bridge": BRIDGES["/dev/ttyB"].hex(),
        "counter": 2,
        "pdr": 1.0,
        "margin_db": 15.0,  # 2.5 dB of SNR: 15 dB over SF9's floor, 10 over SF7's
        "advised_sf": 9,  # SF7 would do, but both bridges listen on SF9 only
        "advised_power": 11,  # 12 dB of margin left at SF9; at 8 dBm, 9
    }
    assert node.port == "radio:" + BRIDGES["/dev/ttyB"].hex()
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 3, {"samples": [0, 2151, 0, 1, 8, 0]}), rssi=-120)
    radio.relay("/dev/ttyB", on_air(messages.READINGS, 3, {"samples": [0, 2151, 0, 1, 8, 0]}), rssi=-125)
    assert radio.bench.stored() == [2, 3] and node.radio["bridge"] == BRIDGES["/dev/ttyA"].hex()
    assert node.port == "radio:" + BRIDGES["/dev/ttyA"].hex()  # the weaker copy did not move it
    # Published when first heard with a bridge; not for every copy that bettered another (two bridges would make
    # it two retained publishes a frame): the next refresh (STATUS, readings) carries the change
    assert bridges_published() == [BRIDGES["/dev/ttyA"].hex()]


def test_a_node_whose_hello_offers_no_config_is_not_advised_a_link(radio: Radio) -> None:
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, {**NODE_HELLO, "caps": NODE_HELLO["caps"] & ~messages.CAP_CONFIG}))
    node = radio.bench.sessions.nodes[BATTERY.hex()]
    for counter in range(2, 14):
        radio.relay("/dev/ttyA", on_air(messages.READINGS, counter, {"samples": [0, counter, 0]}))
    assert node.radio["pdr"] == 1.0 and "advised_sf" not in node.radio and "advised_power" not in node.radio


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
    # the bridge's air is a port of its own in the status (gateway/metrics.py): frames and bad frames by reason
    from gateway.metrics import Metrics, port_reader
    from gateway.status import document

    metrics = Metrics("gw", "1")
    metrics.reader(port_reader(radio.bench.sessions.radio_links))
    ports = document(metrics.snapshot())["ports"]
    air = ports["radio:%s" % BRIDGES["/dev/ttyA"].hex()]
    assert air["errors"]["auth"] == 3 and air["frames"] >= 1 and air["bytes"] > 0


def over_the_air(replies: list[Message]) -> list[tuple[int, Message]]:
    """The RADIO_TX among what the gateway wrote to a bridge: (at, the frame inside, checked with the node's key)."""
    out = []
    for reply in replies:
        if reply.type == messages.RADIO_TX:
            assert reply.fields["freq"] in (868_100_000, 869_525_000) and reply.fields["sf"] == 9  # RX1: the uplink's channel; RX2
            inner = fr.unpack(reply.fields["frame"], lambda node: (KEY,))
            assert inner.key_index == 0  # tagged with the node's key
            out.append((reply.fields["at"], messages.decode_frame(inner)))
    return out


def test_a_radio_node_is_answered_in_its_two_receive_windows(radio: Radio) -> None:
    sent = over_the_air(radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), at=50_000))
    # RX1: the HELLO's ACK; RX2: the TIME a node gets after its HELLO, made for that window
    assert [(at, m.type) for at, m in sent] == [(51_100, messages.ACK), (52_100, messages.TIME)]
    assert sent[0][1].fields["counters"] == [1] and sent[0][1].node_id == BATTERY
    assert abs(sent[1][1].fields["unix"] - time.time()) < 2
    readings = on_air(messages.READINGS, 2, {"samples": [0, 2150, 0, 1, 7, 0]})
    assert over_the_air(radio.relay("/dev/ttyA", readings, at=60_000)) == []  # not safe yet: no ACK, nothing owed
    radio.bench.safe_all()
    sent = over_the_air(radio.bench.replies("/dev/ttyA"))
    # ACKed once committed, in time; in RX2: the 1 % sub-band of RX1 is closed for 100 x the first ACK's airtime
    assert [(at, m.type, m.fields["counters"]) for at, m in sent] == [(62_100, messages.ACK, [2])]


def test_a_window_too_late_to_reach_is_missed_and_what_is_owed_waits_for_the_next(radio: Radio) -> None:
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), at=100_000)
    air = radio.bench.sessions._radio_links[BRIDGES["/dev/ttyA"].hex()].air
    # A frame the bridge heard 10 s ago on its clock (its report was held up): both windows have passed
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 2, {"samples": [0, 2150, 0]}), at=90_000)
    radio.bench.safe_all()
    assert over_the_air(radio.bench.replies("/dev/ttyA")) == [] and air.counts["missed"] == 2
    # The node's next uplink, 30 s later (its own duty cycle, and the bridge's time-offs after its first answers, are over)
    sent = over_the_air(radio.relay("/dev/ttyA", on_air(messages.READINGS, 3, {"samples": [0, 2151, 0]}), at=130_000))
    # The next uplink's windows carry it: in RX2, the one frame owed (the 10 % sub-band first, RX1's 1 % kept)
    assert [(at, m.type, m.fields["counters"]) for at, m in sent] == [(132_100, messages.ACK, [2])]


def test_one_frame_owed_goes_in_rx2_and_in_rx1_only_when_rx2_cannot_carry_it(radio: Radio) -> None:
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), at=100_000)  # ACK in RX1, TIME in RX2
    air = radio.bench.sessions._radio_links[BRIDGES["/dev/ttyA"].hex()].air
    channels = []
    for counter in range(2, 6):  # a readings frame every 20 s: one ACK owed after each
        at = 100_000 + 20_000 * (counter - 1)
        radio.relay("/dev/ttyA", on_air(messages.READINGS, counter, {"samples": [0, counter, 0]}), at=at)
        radio.bench.safe_all()
        channels += [(tx.fields["at"] - at, tx.fields["freq"]) for tx in radio.bench.replies("/dev/ttyA") if tx.type == messages.RADIO_TX]
    assert channels == [(2100, 869_525_000)] * 4
    # RX2's sub-band spent for the hour (a bridge keeps ETSI's hourly 10 %, no time-off): the next one goes in RX1
    duty = air.bridge_clock.duty
    assert duty.spend(869_525_000, (duty.budget_ms(869_525_000, 190_000) - 10) * 1000, 190_000)
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 6, {"samples": [0, 6, 0]}), at=200_000)
    radio.bench.safe_all()
    sent = [tx.fields for tx in radio.bench.replies("/dev/ttyA") if tx.type == messages.RADIO_TX]
    assert [(tx["at"], tx["freq"]) for tx in sent] == [(201_100, 868_100_000)]


def test_the_bridge_duty_cycle_is_kept_on_its_clock(radio: Radio) -> None:
    """A bridge keeps ETSI's hourly limit per sub-band, on its own clock (no time-off between its downlinks: they go in
    its nodes' windows): the gateway sends it nothing that would pass the hour's budget, and counts what waits."""
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), at=200_000)
    air = radio.bench.sessions._radio_links[BRIDGES["/dev/ttyA"].hex()].air
    duty = air.bridge_clock.duty
    room_ms = 600  # left of each sub-band's hour: three ACKs of 27 bytes at SF9 (185 ms each) fit, a fourth does not
    for freq in (868_100_000, 869_525_000):
        assert duty.spend(freq, (duty.budget_ms(freq, 201_000) - room_ms) * 1000, 201_000)
    sent: list[Message] = []
    for counter in range(2, 20):  # a node that sends every 5 s (no node may): more windows than the hour has room for
        sent += radio.relay("/dev/ttyA", on_air(messages.READINGS, counter, {"samples": [0, counter, 0]}), at=200_000 + 5000 * counter)
        radio.bench.safe_all()
        sent += radio.bench.replies("/dev/ttyA")
    assert air.counts["no_budget"] > 0 and air.counts["sent"] >= 4
    on_air_ms: dict[int, float] = {}
    for tx in (m for m in sent if m.type == messages.RADIO_TX and m.fields["at"] > 201_000):
        index = band(tx.fields["freq"])
        on_air_ms[index] = on_air_ms.get(index, 0) + airtime_us(len(tx.fields["frame"]), 9) / 1000
    assert on_air_ms and all(spent <= room_ms for spent in on_air_ms.values()), on_air_ms


def test_a_node_two_bridges_hear_is_answered_through_the_better_one_only(radio: Radio) -> None:
    hello = on_air(messages.HELLO, 1, NODE_HELLO)
    radio.relay("/dev/ttyA", hello, rssi=-120, at=10_000, decide=False)  # nothing decided yet: both copies come
    sent_b = over_the_air(radio.relay("/dev/ttyB", hello, rssi=-100, at=70_000))  # within DECIDE_S
    sent_a = over_the_air(radio.decide("/dev/ttyA"))
    assert [m.type for _, m in sent_b] == [messages.ACK, messages.TIME] and sent_a == []  # one answer, from B
    # A copy that comes after the answer went (a bridge's report held up): the answer is not made again
    assert over_the_air(radio.relay("/dev/ttyA", hello, rssi=-90, at=11_000)) == over_the_air(radio.decide("/dev/ttyB")) == []


def test_what_the_weaker_bridge_was_owed_is_sent_by_the_better_one(radio: Radio) -> None:
    radio.relay("/dev/ttyB", on_air(messages.HELLO, 1, NODE_HELLO), rssi=-100, at=10_000)
    readings = on_air(messages.READINGS, 2, {"samples": [0, 2150, 0]})
    radio.relay("/dev/ttyA", readings, rssi=-120, at=40_000, decide=False)  # the weaker copy is reported first ...
    radio.relay("/dev/ttyB", readings, rssi=-100, at=100_000, decide=False)  # ... the better one a moment later
    radio.bench.safe_all()  # committed: its ACK is owed on the link the first copy came in on
    sent_a, sent_b = over_the_air(radio.decide("/dev/ttyA")), over_the_air(radio.decide("/dev/ttyB"))
    assert sent_a == [] and [(at, m.type, m.fields["counters"]) for at, m in sent_b] == [(102_100, messages.ACK, [2])]
    # one ACK, made for the node's link (B), none on A to hand over or to send twice
    assert radio.bench.sessions._radio_links[BRIDGES["/dev/ttyA"].hex()].air.counts["handed_over"] == 0
    radio.relay("/dev/ttyB", on_air(messages.READINGS, 3, {"samples": [0, 2151, 0]}), rssi=-100, at=130_000, decide=False)
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 3, {"samples": [0, 2151, 0]}), rssi=-90, at=60_000, decide=False)
    radio.bench.safe_all()  # a frame whose better copy (A's) came second: B owes nothing, A the ACK
    sent_b, sent_a = over_the_air(radio.decide("/dev/ttyB")), over_the_air(radio.decide("/dev/ttyA"))
    assert sent_b == [] and [(m.type, m.fields["counters"]) for _, m in sent_a] == [(messages.ACK, [3])]


def test_the_weaker_copy_of_a_first_hello_does_not_take_the_link(radio: Radio) -> None:
    hello = on_air(messages.HELLO, 1, NODE_HELLO)
    radio.relay("/dev/ttyB", hello, rssi=-100, at=10_000, decide=False)  # the node's session starts with B's copy
    radio.relay("/dev/ttyA", hello, rssi=-120, at=70_000, decide=False)  # A's weaker copy a moment later
    sent_b, sent_a = over_the_air(radio.decide("/dev/ttyB")), over_the_air(radio.decide("/dev/ttyA"))
    assert [m.type for _, m in sent_b] == [messages.ACK, messages.TIME] and sent_a == []
    assert radio.bench.sessions.nodes[BATTERY.hex()].radio["bridge"] == BRIDGES["/dev/ttyB"].hex()


def test_a_frame_first_reported_by_a_bridge_without_a_window_is_answered_by_one_with_it(radio: Radio) -> None:
    hello = on_air(messages.HELLO, 1, NODE_HELLO)
    radio.relay("/dev/ttyA", hello, rssi=-100, decide=False)  # a bridge that says not when it heard it: no window
    sent_b = over_the_air(radio.relay("/dev/ttyB", hello, rssi=-110, at=10_000))
    assert [m.type for _, m in sent_b] == [messages.ACK, messages.TIME]
    for counter in (2, 3):  # and so on: each frame A reports first is answered through B
        readings = on_air(messages.READINGS, counter, {"samples": [0, counter, 0]})
        radio.relay("/dev/ttyA", readings, rssi=-100, decide=False)
        radio.bench.safe_all()
        sent_b = over_the_air(radio.relay("/dev/ttyB", readings, rssi=-110, at=10_000 + 60_000 * counter))
        assert [(m.type, m.fields["counters"]) for _, m in sent_b] == [(messages.ACK, [counter])]


def test_the_best_copy_coming_after_the_answer_is_the_nodes_reception(radio: Radio) -> None:
    hello = on_air(messages.HELLO, 1, NODE_HELLO)
    radio.relay("/dev/ttyA", hello, rssi=-120, snr=-5.0, at=10_000, decide=False)  # accepted with this copy
    radio.relay("/dev/ttyB", hello, rssi=-90, snr=5.0, at=40_000, decide=False)  # a duplicate, and the better copy
    sent_a, sent_b = over_the_air(radio.decide("/dev/ttyA")), over_the_air(radio.decide("/dev/ttyB"))
    assert sent_a == [] and [m.type for _, m in sent_b] == [messages.ACK, messages.TIME]  # answered once, through B
    node = radio.bench.sessions.nodes[BATTERY.hex()]
    assert (node.radio["bridge"], node.radio["rssi"]) == (BRIDGES["/dev/ttyB"].hex(), -90)
    assert dict(radio.bench.sessions.adr._node(BATTERY.hex()).snrs) == {1: 50}  # the best SNR of the frame


def heard(air: AirTransport, at: int, freq: int, sf: int, bw: int, node: bytes = BATTERY) -> None:
    """The node's uplink that ended at `at` reported to `air` (as the sessions do): its windows open."""
    assert air.late(at, freq, sf, bw) is not None
    air.open(node, at, freq, sf, bw)


def test_a_report_says_how_late_it_came_by_the_bridges_clock() -> None:
    """So that copies are grouped by when they ended on air (gateway/copies.py), not by when their reports came."""
    now = [100.0]
    air = AirTransport(lambda size: b"", BRIDGES["/dev/ttyA"], lambda bridge, tx: True, clock=lambda: now[0])
    assert air.late(50_000, 868_100_000, 9, 125_000) == 0.0
    now[0] += 20
    assert air.late(62_000, 868_100_000, 9, 125_000) == pytest.approx(8.0, abs=0.01)  # held up 8 s
    assert air.late(70_500, 868_100_000, 9, 125_000) == 0.0  # this one came at once: the clock moves on
    assert air.late(70_000, 868_000_000 - 1, 9, 125_000) is None  # no window on a channel outside EU868


def later_transmissions(radio: Radio) -> list[float]:
    """The node's copies from now on arrive at the gateway at now[0] (monotonic s), as the test moves it."""
    now = [1000.0]
    radio.bench.sessions.nodes[BATTERY.hex()].transmissions = Transmissions(clock=lambda: now[0])
    return now


def test_a_retransmission_only_the_weaker_bridge_heard_is_answered_in_its_window(radio: Radio) -> None:
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), rssi=-90, at=10_000, decide=False)
    radio.relay("/dev/ttyB", on_air(messages.HELLO, 1, NODE_HELLO), rssi=-115, at=40_000, decide=False)
    assert len(over_the_air(radio.decide("/dev/ttyA"))) == 2 and over_the_air(radio.decide("/dev/ttyB")) == []
    now = later_transmissions(radio)
    readings = on_air(messages.READINGS, 2, {"samples": [0, 2150, 0]})
    radio.relay("/dev/ttyA", readings, rssi=-90, at=30_000, decide=False)  # heard by A alone; its ACK never reached the node
    radio.bench.safe_all()
    assert [(m.type, m.fields["counters"]) for _, m in over_the_air(radio.decide("/dev/ttyA"))] == [(messages.ACK, [2])]
    now[0] += COPY_SPAN_S + 2  # after the node's windows and time-off: it sends 2 again, and only B hears it
    sent_b = over_the_air(radio.relay("/dev/ttyB", readings, rssi=-115, at=66_000))
    sent_a = over_the_air(radio.decide("/dev/ttyA"))
    # B alone has a window for it: the duplicate's ACK goes there, not to A (the better bridge, for a window it never had)
    assert [(at, m.type, m.fields["counters"]) for at, m in sent_b] == [(68_100, messages.ACK, [2])] and sent_a == []
    assert radio.bench.stored() == []  # a duplicate: not stored again
    node = radio.bench.sessions.nodes[BATTERY.hex()]
    assert node.radio["bridge"] == BRIDGES["/dev/ttyA"].hex() and node.radio["rssi"] == -90  # its link: the first transmission's


def test_a_replayed_frame_does_not_move_the_nodes_link_figures(radio: Radio) -> None:
    """Someone in range records a frame and plays it back later, louder and at another SF: the window calls it a
    duplicate (answered, never stored twice), and it is not a measurement of the node's link: its status and link
    adaptation stay as the node's own transmissions made them."""
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), rssi=-112, snr=-4.0, at=10_000)
    now = later_transmissions(radio)
    for counter in range(2, 8):
        now[0] += 60
        frame = on_air(messages.READINGS, counter, {"samples": [0, counter, 0]})
        radio.relay("/dev/ttyA", frame, rssi=-112, snr=-4.0, at=10_000 + 60_000 * counter)
        radio.bench.safe_all()
    node = radio.bench.sessions.nodes[BATTERY.hex()]
    adr = radio.bench.sessions.adr
    status, advised, kept = dict(node.radio), adr.summary(BATTERY.hex()), dict(adr._node(BATTERY.hex()).snrs)
    assert status["counter"] == 7 and len(kept) == 7
    now[0] += 600
    for port, sf in (("/dev/ttyB", 9), ("/dev/ttyB", 7), ("/dev/ttyA", 9)):
        radio.relay(port, on_air(messages.READINGS, 5, {"samples": [0, 5, 0]}), rssi=-40, snr=12.0, at=900_000, decide=False, sf=sf)
        now[0] += COPY_SPAN_S + 1
    assert node.radio == status and adr.summary(BATTERY.hex()) == advised and dict(adr._node(BATTERY.hex()).snrs) == kept
    assert adr._node(BATTERY.hex()).sf == 9 and radio.bench.stored() == []  # nothing stored again
    # A frame the gateway never had is the node's, whoever plays it: a late first transmission counts
    radio.relay("/dev/ttyB", on_air(messages.READINGS, 9, {"samples": [0, 9, 0]}), rssi=-100, snr=1.0, at=950_000, decide=False)
    assert node.radio["counter"] == 9 and node.radio["bridge"] == BRIDGES["/dev/ttyB"].hex()


def test_a_copy_at_another_sf_is_not_the_nodes_transmission(radio: Radio) -> None:
    """Played back at once, before the frame was committed, through a bridge on another SF: not a measurement of
    the node's link, and not the bridge its answers go through."""
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), rssi=-112, snr=-4.0, at=10_000)
    readings = on_air(messages.READINGS, 2, {"samples": [0, 2, 0]})
    radio.relay("/dev/ttyA", readings, rssi=-112, snr=-4.0, at=70_000, decide=False)
    radio.relay("/dev/ttyB", readings, rssi=-40, snr=12.0, at=40_000, decide=False, sf=7)
    adr = radio.bench.sessions.adr._node(BATTERY.hex())
    assert adr.sf == 9 and dict(adr.snrs) == {1: -40, 2: -40}
    node = radio.bench.sessions.nodes[BATTERY.hex()]
    assert node.link is radio.bench.sessions._radio_links[BRIDGES["/dev/ttyA"].hex()] and node.radio["rssi"] == -112
    radio.bench.safe_all()
    assert radio.bench.stored() == []  # stored once (the copies' one commit went with safe_all)


def test_a_request_resent_while_it_waits_goes_once_and_not_after_its_ack(radio: Radio) -> None:
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), at=10_000)
    air = radio.bench.sessions._radio_links[BRIDGES["/dev/ttyA"].hex()].air
    dim = {"id": 7, "action": "dim", "args": {"level": 40}}
    for _ in range(3):  # the command's retransmissions, its counter kept, while the node sends nothing
        assert radio.bench.sessions.send_request(BATTERY.hex(), 900, messages.COMMAND, dim)
        air.flush()
    assert [raw[1] for raw, _at in air.waiting[BATTERY]] == [messages.COMMAND]  # one copy waits
    assert radio.bench.sessions.send_request(BATTERY.hex(), 901, messages.COMMAND, {**dim, "id": 8})
    air.flush()
    # The node's ACK of the first (a copy of it heard in an earlier window) comes up: that copy is not sent again
    sent = over_the_air(radio.relay("/dev/ttyA", on_air(messages.ACK, 2, {"counters": [900]}), at=40_000))
    assert [(m.type, m.counter, m.fields["id"]) for _, m in sent] == [(messages.COMMAND, 901, 8)]


def test_what_the_old_link_owes_goes_in_the_window_of_the_bridge_that_alone_heard_the_node(radio: Radio) -> None:
    """A COMMAND waiting for the node's window at bridge A: the node's next uplink reaches B alone (A's copy lost).
    B's windows carry the ACK and the COMMAND; it does not wait for an uplink A hears (a street lamp's command
    was 131 s late, twice in a row)."""
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), at=10_000)
    air_a = radio.bench.sessions._radio_links[BRIDGES["/dev/ttyA"].hex()].air
    assert radio.bench.sessions.send_request(BATTERY.hex(), 900, messages.COMMAND, {"id": 7, "action": "dim", "args": {"level": 40}})
    assert not air_a.waiting.get(BATTERY)  # still in A's link queue: no window of the node is due to take it out
    radio.relay("/dev/ttyB", on_air(messages.READINGS, 2, {"samples": [0, 2150, 0]}), at=50_000, decide=False)
    radio.bench.safe_all()
    sent_b = over_the_air(radio.decide("/dev/ttyB"))
    assert [(at, m.type) for at, m in sent_b] == [(51_100, messages.ACK), (52_100, messages.COMMAND)]
    assert BATTERY not in air_a.waiting and over_the_air(radio.decide("/dev/ttyA")) == []


def test_an_older_status_that_comes_after_a_newer_one_is_acknowledged_not_taken(radio: Radio) -> None:
    """On the air a STATUS lost once may arrive after the node's next: the node's status does not go back in time,
    and link adaptation does not read the older fallback count, then the newer again, as a second fallback."""
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), at=10_000)
    radio.relay("/dev/ttyA", on_air(messages.STATUS, 5, {"uptime": 1900, "air": {"fallback": 1}}), at=40_000)
    sent = radio.relay("/dev/ttyA", on_air(messages.STATUS, 3, {"uptime": 100, "air": {"fallback": 0}}), at=70_000, decide=False)
    radio.bench.safe_all()
    sent = over_the_air(sent + radio.decide("/dev/ttyA"))
    assert [(m.type, m.fields["counters"]) for _, m in sent] == [(messages.ACK, [3])]  # answered all the same
    node = radio.bench.sessions.nodes[BATTERY.hex()]
    assert node.status["uptime"] == 1900 and node.status["air"]["fallback"] == 1
    radio.relay("/dev/ttyA", on_air(messages.STATUS, 7, {"uptime": 3700, "air": {"fallback": 1}}), at=100_000)
    assert node.status["uptime"] == 3700


def test_a_radio_nodes_numbered_air_keys_are_published_by_name(radio: Radio) -> None:
    """SPEC.md 5.7: a radio node numbers its STATUS `air` keys (bytes on air are airtime); its status document names
    them, a number wins over its name sent too, and a number past the table or a name it does not know is not kept."""
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), at=10_000)
    air = {0: 12, 1: 40_000, 3: 52_000, 5: 12, 7: 2, "fallback": 0, "power": 11, 15: 9, "volts": 4}
    radio.relay("/dev/ttyA", on_air(messages.STATUS, 5, {"uptime": 1900, "air": air}), at=40_000)
    node = radio.bench.sessions.nodes[BATTERY.hex()]
    assert node.status["air"] == {"tx": 12, "tx_ms": 40_000, "rx_ms": 52_000, "sf": 12, "fallback": 2, "power": 11}


class BareAir:
    """One bridge's AirTransport alone: what its link owes (`owe`) is what it pulls, what it sends is kept (`sent`)."""

    def __init__(self, ask_time: Any = None, node: bytes = BATTERY, **extra: Any) -> None:
        self.owed: list[bytes] = []
        self.sent: list[dict[str, Any]] = []
        self.node = node
        if ask_time is not None:
            extra["ask_time"] = ask_time
        self.air = AirTransport(self._pull, b"\x01" * 8, lambda bridge, tx: self.sent.append(tx) or True, **extra)

    def _pull(self, room: int) -> bytes:
        taken, self.owed = self.owed, []
        return b"".join(taken)

    def owe(self, mtype: int, counter: int, fields: dict[str, Any]) -> None:
        """A downlink frame to its node, as the link builds it (a request asks for an ACK; an ACK or a TIME does not)."""
        flags = fr.F_DOWNLINK | (fr.F_ACK_REQ if mtype in (messages.COMMAND, messages.CONFIG) else 0)
        self.owed.append(bytes(encode(Message(mtype, self.node, counter, fields, flags), KEY)))


def test_of_two_acks_waiting_the_older_goes_first() -> None:
    """Each ACK carries the counters due when it was made: a newer one does not say what an older one does, so
    the older is not left behind (a node whose every window brought a newer ACK never had its HELLO's)."""
    bare = BareAir()
    bare.owe(messages.ACK, 10, {"counters": [1]})  # the HELLO's, taken at a window that carried something else
    bare.air.flush()
    bare.owe(messages.ACK, 11, {"counters": [5, 6]})  # the readings' since
    for uplink_at in (100_000, 200_000):
        heard(bare.air, uplink_at, 868_100_000, 9, 125000)  # no event loop: its windows are chosen at once
    assert [messages.decode_frame(fr.unpack(tx["frame"], [KEY])).fields["counters"] for tx in bare.sent] == [[1], [5, 6]]


def test_rx1_carries_the_ack_and_rx2_the_command_before_the_gateways_own_config() -> None:
    """RX1 is on the uplinks' channel (another node's uplink may drown it at the node): the ACK goes there, whose loss
    costs a retransmission; the request goes in RX2, a COMMAND before the link advice queued earlier."""
    bare = BareAir()
    bare.owe(messages.CONFIG, 10, {"op": messages.CONFIG_SET, "id": 1, "values": {"tx_power": 11}})
    bare.owe(messages.COMMAND, 11, {"id": 2, "action": "dim", "args": {"level": 40}})
    bare.owe(messages.ACK, 12, {"counters": [5]})
    heard(bare.air, 100_000, 868_100_000, 9, 125000)  # no event loop: both windows chosen at once
    assert [(tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in bare.sent] == [
        (868_100_000, messages.ACK),
        (869_525_000, messages.COMMAND),
    ]


@pytest.mark.parametrize(
    ("sf", "counters", "two"),
    [
        (9, [5], True),
        (11, [5], True),  # a 23-byte ACK: 0.82 s on air, gone 0.08 s before the node opens RX2
        (11, [300, 301], False),  # 28 bytes: 0.91 s, still on air when RX2 should open
        (12, [5], False),  # 1.48 s
    ],
)
def test_two_frames_go_in_one_uplinks_windows_only_if_rx1s_has_left_the_air_when_rx2_opens(sf: int, counters: list[int], two: bool) -> None:
    """A node listens in RX1 until the frame it started to receive has come, and opens RX2 only if that was before
    RX2's time (firmware/radio_port.py); the bridge, half duplex, also drops RX2's frame late. Where RX1's ACK is too
    long, one frame goes, the ACK, in RX2, and the COMMAND waits for the node's next uplink."""
    bare = BareAir()
    bare.owe(messages.COMMAND, 11, {"id": 2, "action": "dim", "args": {"level": 40}})
    bare.owe(messages.ACK, 12, {"counters": counters})
    heard(bare.air, 100_000, 868_100_000, sf, 125000)  # no event loop: both windows chosen at once
    sent = [(tx["at"], tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in bare.sent]
    if two:
        assert sent == [(101_100, 868_100_000, messages.ACK), (102_100, 869_525_000, messages.COMMAND)]
        assert bare.air.counts["rx1_too_long"] == 0
        return
    assert sent == [(102_100, 869_525_000, messages.ACK)] and bare.air.counts["rx1_too_long"] == 1
    heard(bare.air, 400_000, 868_100_000, sf, 125000)
    assert [(tx["at"], tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in bare.sent[1:]] == [
        (402_100, 869_525_000, messages.COMMAND)
    ]


def test_the_node_opens_rx2_only_after_an_rx1_frame_gone_50_ms_before_it() -> None:
    """The rule's edge, on the bridge's clock: RX2 opens at the uplink's `at` + 2000 (firmware/radio_port.py)."""
    window = Window(100_000, 868_100_000, 11, 125_000)
    assert AirTransport._rx2_opens(window, 0)  # no RX1 frame
    assert AirTransport._rx2_opens(window, 101_950)
    assert not AirTransport._rx2_opens(window, 101_951)
    # a 23-byte ACK at SF11 is 823.3 ms on air: counted as 824, whole ms up
    assert AirTransport._end(window, 101_100, 23) == 101_924


@pytest.mark.parametrize(("late_ms", "two"), [(1070, True), (1090, False)])
def test_rx1_sent_later_than_aimed_is_judged_at_the_time_it_goes(late_ms: int, two: bool) -> None:
    """RX1's choice came late (a slow loop): the frame goes LEAD_MS after the bridge's time, not at its aim, and ends
    later; a 23-byte ACK at SF11 sent after +1126 is still on air 50 ms before RX2 opens."""
    now = [1000.0]
    bare = BareAir(clock=lambda: now[0])
    bare.owe(messages.COMMAND, 11, {"id": 2, "action": "dim", "args": {"level": 40}})
    bare.owe(messages.ACK, 12, {"counters": [5]})
    window = uplink(bare, 100_000, 868_100_000, sf=11)
    now[0] += late_ms / 1000
    bare.air._decide(window)
    bare.air._decide_rx2(window)
    sent = [(tx["at"], fr.unpack(tx["frame"], [KEY]).type) for tx in bare.sent]
    if two:
        assert sent == [(100_000 + late_ms + 40, messages.ACK), (102_100, messages.COMMAND)]
    else:
        assert sent == [(102_100, messages.ACK)] and bare.air.counts["rx1_too_long"] == 1


def test_owed_two_that_do_not_fit_with_no_room_in_rx2_go_one_in_rx1_not_counted_too_long() -> None:
    """RX2's 10 % spent for the hour: the one frame goes in RX1 (an ACK), and that is no room lacking in RX1."""
    bare = BareAir()
    bare.air.late(100_000, 868_100_000, 12, 125_000)
    bare.air.bridge_clock.duty.spend(869_525_000, 359_900_000, 50_000)
    bare.owe(messages.COMMAND, 11, {"id": 2, "action": "dim", "args": {"level": 40}})
    bare.owe(messages.ACK, 12, {"counters": [5]})
    heard(bare.air, 100_000, 868_100_000, 12, 125_000)
    assert [(tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in bare.sent] == [(868_100_000, messages.ACK)]
    assert bare.air.counts["rx1_too_long"] == 0


def test_rx2_room_is_judged_for_the_frame_it_would_carry_not_the_longest_owed() -> None:
    """Owed an ACK and a CONFIG at SF12 (one per uplink), with RX2's hour nearly spent: room for the ACK RX2 would
    carry, not for the 61-byte CONFIG, so the ACK goes in RX2 and RX1's 1 % is not spent (found by a review)."""
    bare = BareAir()
    bare.air.late(100_000, 868_100_000, 12, 125_000)
    values = {"interval": 900.0, "status_interval": 1800.0, "sf": 12}
    bare.owe(messages.CONFIG, 11, {"op": messages.CONFIG_SET, "id": 1, "values": values})
    bare.owe(messages.ACK, 12, {"counters": [5]})
    bare.air.flush()
    ack, config = (len(raw) for raw in sorted((raw for raw, _ in bare.air.waiting[BATTERY]), key=lambda raw: raw[1] == messages.CONFIG))
    left_ms = (airtime_us(ack, 12) + airtime_us(config, 12)) // 2000  # between the two frames' airtimes
    assert airtime_us(ack, 12) // 1000 < left_ms < airtime_us(config, 12) // 1000
    bare.air.bridge_clock.duty.spend(869_525_000, 360_000_000 - left_ms * 1000, 50_000)
    heard(bare.air, 100_000, 868_100_000, 12, 125_000)
    assert [(tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in bare.sent] == [(869_525_000, messages.ACK)]


OTHER = bytes.fromhex("e1000000000000aa")


def cabinet(now: list[float]) -> tuple[BareAir, BareAir]:
    """Two bridges' transports in one cabinet, each the other's rival in RX2: the first for BATTERY, the second for OTHER."""
    bridges: list[BareAir] = []
    for node in (BATTERY, OTHER):
        bridges.append(BareAir(node=node, clock=lambda: now[0], rivals=lambda: [bare.air for bare in bridges]))
    bridges[1].air.bridge_id = b"\x02" * 8
    return bridges[0], bridges[1]


def uplink(bare: BareAir, at: int, freq: int, sf: int = 12) -> Window:
    """The uplink of the bridge's node, reported: its windows are open, neither chosen yet."""
    assert bare.air.late(at, freq, sf, 125_000) is not None
    window = bare.air.windows[bare.node] = Window(at, freq, sf, 125_000)
    return window


@pytest.mark.parametrize(
    ("later_s", "sf", "rx1_spent", "window"),
    [
        (0.3, 12, False, "rx1"),  # its RX2 answer would be on air with the first bridge's: RX1, on its own channel
        (5.0, 12, False, "rx2"),  # long after the first bridge's
        (0.3, 11, False, "rx2"),  # at another SF: a node listening at SF12 does not hear it
        (0.3, 12, True, "none"),  # RX1's 1 % spent for the hour: nothing (in RX2 both answers would be lost); it waits
    ],
)
def test_two_bridges_do_not_answer_at_once_in_rx2_at_one_sf(later_s: float, sf: int, rx1_spent: bool, window: str) -> None:
    """Two bridges in one cabinet at SF12, one on 868.1 and one on 868.3 MHz, hear two uplinks that ended 0.3 s
    apart: both answers in RX2 (869.525 MHz, every bridge's) would be on air together, each drowning the other at
    its node (full tree-health: 22 of 204 RX2 downlinks at SF12 lost so). The second goes in RX1."""
    now = [1000.0]
    first, second = cabinet(now)
    first.owe(messages.ACK, 10, {"counters": [5]})
    heard(first.air, 100_000, 868_100_000, 12, 125_000)  # no event loop: both windows chosen at once
    assert [tx["freq"] for tx in first.sent] == [869_525_000]
    now[0] += later_s
    at = 7_000_000 + int(later_s * 1000)  # another clock: the bridges booted at other times
    if rx1_spent:
        second.air.bridge_clock.duty.spend(868_300_000, 35_990_000, at - 60_000)
    second.owe(messages.ACK, 20, {"counters": [7]})
    heard(second.air, at, 868_300_000, sf, 125_000, OTHER)
    assert [tx["freq"] for tx in second.sent] == {"rx1": [868_300_000], "rx2": [869_525_000], "none": []}[window]
    assert second.air.counts["rx2_contested"] == (window == "rx1") and second.air.counts["rx2_ceded"] == (window == "none")
    assert second.air.counts["no_budget"] == 0  # RX1 is not tried where its duty cycle has no room


def test_a_longer_rx2_frame_of_another_bridge_is_met_for_all_its_airtime_and_a_failed_rx1_is_not_counted() -> None:
    """Each answer spans its own airtime: the first bridge's CONFIG at SF12 (61 bytes, 2.8 s) began 2 s before
    the second's ACK (1.5 s) would, and still overlaps it; and an RX1 frame the bridge's link could not take is
    not counted as moved (second review of 144ce00)."""
    now = [1000.0]
    first, second = cabinet(now)
    first.owe(messages.CONFIG, 10, {"op": messages.CONFIG_SET, "id": 1, "values": {"interval": 900.0, "status_interval": 1800.0, "sf": 12}})
    heard(first.air, 100_000, 868_100_000, 12, 125_000)
    assert [tx["freq"] for tx in first.sent] == [869_525_000] and airtime_us(len(first.sent[0]["frame"]), 12) > 2_700_000
    now[0] += 2.0
    second.owe(messages.ACK, 20, {"counters": [7]})
    heard(second.air, 7_002_000, 868_300_000, 12, 125_000, OTHER)
    assert [tx["freq"] for tx in second.sent] == [868_300_000] and second.air.counts["rx2_contested"] == 1
    second.sent.clear()
    second.air.on_air.clear()  # its frame above is no concern here (this uplink would have come after it)
    second.air._send = lambda bridge, tx: False  # the bridge's serial link is gone: nothing goes, in RX1 or RX2
    second.owe(messages.ACK, 21, {"counters": [8]})
    now[0] += 0.1  # the first bridge's CONFIG report is still on air when this RX2 would be
    heard(second.air, 7_002_100, 868_300_000, 12, 125_000, OTHER)
    assert second.air.counts["rx2_contested"] == 1 and second.air.counts["dropped"] >= 1


@pytest.mark.parametrize("first_owes", [True, False])
def test_of_two_rx2_answers_at_once_the_later_goes_in_rx1_and_only_it(first_owes: bool) -> None:
    """The windows chosen in their real order (RX1 0.6 s after an uplink is heard, RX2 1.5 s after): the first
    bridge keeps RX2, the second moves to RX1, and not both (on one channel both would meet again there). A first
    bridge that owes its node nothing takes no RX2, and the second keeps it (found by the review of the first
    version, which moved both, and moved for a window with nothing to send)."""
    now = [1000.0]
    first, second = cabinet(now)
    if first_owes:
        first.owe(messages.ACK, 10, {"counters": [5]})
    second.owe(messages.ACK, 20, {"counters": [7]})
    second.air.flush()  # taken from its link already: the first bridge, choosing first, sees it owed and later
    window_a = uplink(first, 100_000, 868_100_000)
    now[0] += 0.3
    window_b = uplink(second, 7_000_300, 868_300_000)
    now[0] += 0.3
    first.air._decide(window_a)  # RX1's choice, 0.6 s after the first uplink
    now[0] += 0.3
    second.air._decide(window_b)
    now[0] += 0.6
    first.air._decide_rx2(window_a)  # RX2's, 1.5 s after
    now[0] += 0.3
    second.air._decide_rx2(window_b)
    assert [tx["freq"] for tx in first.sent] == ([869_525_000] if first_owes else [])
    assert [tx["freq"] for tx in second.sent] == [868_300_000 if first_owes else 869_525_000]
    assert second.air.counts["rx2_contested"] == first_owes and first.air.counts["rx2_contested"] == 0


def owe_ack_and_command(first: BareAir, second: BareAir) -> None:
    """The first bridge owes its node an ACK, the second its node a COMMAND and a newer ACK, taken from its link."""
    first.owe(messages.ACK, 10, {"counters": [5]})
    second.owe(messages.COMMAND, 19, {"id": 2, "action": "dim", "args": {"level": 40}})
    second.owe(messages.ACK, 20, {"counters": [7]})
    second.air.flush()


def test_a_node_owed_two_at_sf12_is_answered_in_one_window_and_rx1_when_rx2_is_contested() -> None:
    """Owed an ACK and a COMMAND at SF12, where RX1's ACK would still be on air when the node opens RX2: one goes, as for
    a node owed one, so the contest for RX2 applies too. The first bridge keeps RX2; the second sends its ACK in RX1
    and nothing in RX2 (the bridge would drop it late), and its COMMAND waits."""
    now = [1000.0]
    first, second = cabinet(now)
    owe_ack_and_command(first, second)
    window_a, window_b = rx1_chosen(now, first, second, 12, 0.3)
    assert second.air.rx2_slot(OTHER, window_b) is None  # the node opens no RX2 after that ACK: none for a third bridge
    now[0] += 0.6
    first.air._decide_rx2(window_a)
    now[0] += 0.3
    second.air._decide_rx2(window_b)
    assert [tx["freq"] for tx in first.sent] == [869_525_000]
    assert [(tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in second.sent] == [(868_300_000, messages.ACK)]
    assert second.air.counts["rx2_contested"] == 1 and second.air.counts["rx1_too_long"] == 1
    assert [raw[1] for raw, _at in second.air.waiting[OTHER]] == [messages.COMMAND]


def rx1_chosen(now: list[float], first: BareAir, second: BareAir, sf: int, apart: float) -> tuple[Window, Window]:
    """Two uplinks ending `apart` s from each other on two channels, each bridge's RX1 chosen 0.6 s after its own."""
    window_a = uplink(first, 100_000, 868_100_000, sf=sf)
    now[0] += apart
    window_b = uplink(second, 7_000_000 + round(apart * 1000), 868_300_000, sf=sf)
    now[0] += 0.6 - apart
    first.air._decide(window_a)
    now[0] += apart
    second.air._decide(window_b)
    return window_a, window_b


@pytest.mark.parametrize("case", ["owed two", "owed nothing at rx1", "rival owed nothing at rx1"])
def test_rx2_is_judged_again_at_its_choice_and_given_up_to_an_earlier_answer(case: str) -> None:
    """At SF9 two uplinks end 50 ms apart on two channels; RX2's answers would meet on 869.525 MHz. Whatever either
    bridge owed at RX1's choice, the later RX2 answer is not sent (found by a review; each of these went):
    - owed two: the ACK in RX1, the COMMAND not in RX2;
    - owed nothing at RX1's choice, an ACK committed before RX2's;
    - the first bridge owed nothing when the second chose RX1, and an ACK before its own RX2."""
    now = [1000.0]
    first, second = cabinet(now)
    if case != "rival owed nothing at rx1":
        first.owe(messages.ACK, 10, {"counters": [5]})
    if case == "owed two":
        second.owe(messages.COMMAND, 19, {"id": 2, "action": "dim", "args": {"level": 40}})
    if case != "owed nothing at rx1":
        second.owe(messages.ACK, 20, {"counters": [7]})
    second.air.flush()
    window_a, window_b = rx1_chosen(now, first, second, 9, 0.05)
    now[0] += 0.85
    # committed after RX1's time, taken at RX2's choice
    if case == "owed nothing at rx1":
        second.owe(messages.ACK, 20, {"counters": [7]})
    if case == "rival owed nothing at rx1":
        first.owe(messages.ACK, 10, {"counters": [5]})
    first.air._decide_rx2(window_a)
    now[0] += 0.05
    second.air._decide_rx2(window_b)
    assert [tx["freq"] for tx in first.sent] == [869_525_000]
    rx1 = [(868_300_000, messages.ACK)] if case == "owed two" else []
    assert [(tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in second.sent] == rx1
    assert second.air.counts["rx2_ceded"] == 1
    assert [raw[1] for raw, _at in second.air.waiting[OTHER]] == [messages.COMMAND if case == "owed two" else messages.ACK]


def contested_uplinks(now: list[float], first: BareAir, second: BareAir, cycle: int, first_acks_late: bool) -> None:
    """One of a series of uplinks 100 s apart at SF9, the second bridge's node's ending 50 ms after the first's, each
    bringing both a new ACK, and each window chosen in its real order. first_acks_late: the first bridge's ACK is
    committed after both RX1 choices (before its RX2's)."""
    second.owe(messages.ACK, 20 + cycle, {"counters": [7 + cycle]})
    second.air.flush()
    if not first_acks_late:
        first.owe(messages.ACK, 10 + cycle, {"counters": [5 + cycle]})
        first.air.flush()
    window_a = uplink(first, 100_000 + cycle * 100_000, 868_100_000, sf=9)
    now[0] += 0.05
    window_b = uplink(second, 7_000_050 + cycle * 100_000, 868_300_000, sf=9)
    now[0] += 0.55
    first.air._decide(window_a)
    now[0] += 0.05
    second.air._decide(window_b)
    if first_acks_late:
        first.owe(messages.ACK, 10 + cycle, {"counters": [5 + cycle]})
    now[0] += 0.85
    first.air._decide_rx2(window_a)
    now[0] += 0.05
    second.air._decide_rx2(window_b)
    now[0] += 100 - 1.55


def test_a_node_owed_two_whose_rx2_is_contested_at_every_uplink_still_gets_its_command() -> None:
    """At SF9 the second bridge's node, owed a COMMAND, brings a new ACK at every uplink, and each ends 50 ms after the
    first bridge's node's: RX2 is always the first bridge's. The node gets one frame in RX1, RX2's choice, which
    alternates ACK and request; with the ACK in RX1 and the COMMAND ceded in RX2 it never came (found by a review)."""
    now = [1000.0]
    first, second = cabinet(now)
    second.owe(messages.COMMAND, 19, {"id": 2, "action": "dim", "args": {"level": 40}})
    for cycle in range(4):
        contested_uplinks(now, first, second, cycle, first_acks_late=False)
    assert all(tx["freq"] == 869_525_000 for tx in first.sent) and len(first.sent) == 4
    kinds = [(tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in second.sent]
    assert all(freq == 868_300_000 for freq, _ in kinds) and (868_300_000, messages.COMMAND) in kinds[:2]


def rx2_spans(*bridges: BareAir) -> list[tuple[float, float]]:
    """The RX2 frames the bridges were asked to send, start and end on the gateway's clock."""
    spans = []
    for bare in bridges:
        offset = bare.air.bridge_clock.offset_ms or 0
        for tx in bare.sent:
            if tx["freq"] == 869_525_000:
                start = (tx["at"] - offset) / 1000
                spans.append((start, start + airtime_us(len(tx["frame"]), tx["sf"]) / 1e6))
    return sorted(spans)


def test_rx2_answers_chosen_late_do_not_meet_whichever_is_chosen_first() -> None:
    """The loop stalled 0.65 s: both RX2 choices come late, each frame goes later than its aim, and the first bridge's
    ACK was committed after both RX1 choices. Judged at their aims, both went, on air together (a review)."""
    now = [1000.0]
    first, second = cabinet(now)
    second.owe(messages.ACK, 20, {"counters": [7]})
    second.air.flush()
    window_a, window_b = rx1_chosen(now, first, second, 9, 0.05)
    first.owe(messages.ACK, 10, {"counters": [5]})
    now[0] += 0.85 + 0.65
    first.air._decide_rx2(window_a)
    now[0] += 0.05
    second.air._decide_rx2(window_b)
    spans = rx2_spans(first, second)
    assert len(spans) == 1 or all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert len(spans) == 1 and first.air.counts["rx2_ceded"] + second.air.counts["rx2_ceded"] == 1


def test_an_rx2_answer_sent_already_is_met_whichever_window_began_first() -> None:
    """The second bridge's report came first (the first's was held up on its serial line), so its RX2 was chosen and
    sent first, and the first bridge's ACK committed after: the first's window is the earlier, but its answer would
    meet one already on air, and is not sent (a review: both went)."""
    now = [1000.0]
    first, second = cabinet(now)
    second.owe(messages.ACK, 20, {"counters": [7]})
    second.air.flush()
    window_a, window_b = rx1_chosen(now, first, second, 9, 0.05)
    now[0] += 0.85
    second.air._decide_rx2(window_b)
    first.owe(messages.ACK, 10, {"counters": [5]})
    first.air._decide_rx2(window_a)
    assert len(rx2_spans(first, second)) == 1 and first.air.counts["rx2_ceded"] == 1


def test_a_request_ceded_in_rx2_goes_in_rx1_at_the_next_uplink() -> None:
    """The first bridge's ACK is committed after the second's RX1 choice at every uplink: the second, owed a COMMAND
    and a new ACK each time, sent its ACK in RX1 and had the COMMAND ceded in RX2 each time (a review: six uplinks,
    six ACKs). A request ceded goes in RX1 at the next uplink."""
    now = [1000.0]
    first, second = cabinet(now)
    second.owe(messages.COMMAND, 19, {"id": 2, "action": "dim", "args": {"level": 40}})
    for cycle in range(3):
        contested_uplinks(now, first, second, cycle, first_acks_late=True)
    kinds = [(tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in second.sent]
    assert (868_300_000, messages.COMMAND) in kinds[:3] and not any(freq == 869_525_000 for freq, _ in kinds)


@pytest.mark.parametrize("gone", ["acknowledged", "stale", "bridge rebooted"])
def test_a_node_whose_ceded_request_went_otherwise_is_answered_in_rx2_again(gone: str) -> None:
    """The COMMAND ceded in RX2 was then acknowledged (a copy in an earlier window), went stale or the bridge rebooted:
    the node's later ACKs go in RX2 again, not forced into RX1 for good (a review of 0e867a7)."""
    now = [1000.0]
    first, second = cabinet(now)
    second.owe(messages.COMMAND, 19, {"id": 2, "action": "dim", "args": {"level": 40}})
    contested_uplinks(now, first, second, 0, first_acks_late=True)
    assert OTHER in second.air.ceded
    if gone == "acknowledged":
        second.air.acked(OTHER, [19])
    elif gone == "stale":
        now[0] += 900
        second.air.flush()
    else:
        second.air.rebooted()
    second.sent.clear()
    second.owe(messages.ACK, 30, {"counters": [20]})
    second.air.flush()
    window = uplink(second, 7_900_000 if gone == "stale" else 7_200_000, 868_300_000, sf=9)
    now[0] += 0.6
    second.air._decide(window)
    now[0] += 0.9
    second.air._decide_rx2(window)
    kinds = [(tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in second.sent]
    if gone == "bridge rebooted":  # the COMMAND still owed: two frames, as at any uplink at SF9
        assert kinds == [(868_300_000, messages.ACK), (869_525_000, messages.COMMAND)]
    else:
        assert kinds == [(869_525_000, messages.ACK)]


def test_a_rebooted_bridge_forgets_the_transmissions_it_was_asked_for() -> None:
    """Its clock starts again: a frame asked for before, at a time the new clock comes to, is no busy slot."""
    bare = BareAir()
    bare.owe(messages.ACK, 10, {"counters": [5]})
    heard(bare.air, 100_000, 868_100_000, 9, 125_000)
    bare.air.rebooted()
    bare.owe(messages.COMMAND, 11, {"id": 2, "action": "dim", "args": {"level": 40}})
    bare.owe(messages.ACK, 12, {"counters": [6]})
    heard(bare.air, 100_000, 868_100_000, 9, 125_000)
    assert [fr.unpack(tx["frame"], [KEY]).type for tx in bare.sent[1:]] == [messages.ACK, messages.COMMAND]
    assert bare.air.counts["busy"] == 0


def test_a_bridge_is_not_asked_to_send_two_frames_at_once() -> None:
    """Half duplex: node X's RX2 (its uplink ended at 100 s on the bridge's clock) and node Y's RX1 (its uplink ended
    a second later) come at the same moment. Asked for both, the bridge sent one and dropped the other late."""
    other = bytes.fromhex("e1000000000000bb")
    bare = BareAir()
    bare.owe(messages.ACK, 10, {"counters": [5]})
    heard(bare.air, 100_000, 868_100_000, 9, 125_000)  # no event loop: both windows chosen at once
    bare.node = other
    bare.owe(messages.COMMAND, 11, {"id": 2, "action": "dim", "args": {"level": 40}})
    bare.owe(messages.ACK, 12, {"counters": [7]})
    heard(bare.air, 101_000, 868_100_000, 9, 125_000, other)
    spans = sorted((tx["at"], tx["at"] + airtime_us(len(tx["frame"]), 9) / 1000) for tx in bare.sent)
    assert len(spans) >= 2 and all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert bare.air.counts["busy"] >= 1


def test_a_window_with_nothing_owed_at_its_choices_is_not_missed_by_a_frame_owed_minutes_later() -> None:
    """A COMMAND written five minutes after an uplink whose windows carried nothing: no window was missed (each stays
    open to a frame committed while it can be reached; the count said 2, published in the node's status)."""
    now = [1000.0]
    bare = BareAir(clock=lambda: now[0])
    heard(bare.air, 100_000, 868_100_000, 9, 125_000)  # no event loop: both windows chosen at once, nothing owed
    now[0] += 300
    bare.owe(messages.COMMAND, 11, {"id": 2, "action": "dim", "args": {"level": 40}})
    bare.air.flush()
    assert bare.sent == [] and bare.air.counts["missed"] == 0
    assert [raw[1] for raw, _at in bare.air.waiting[BATTERY]] == [messages.COMMAND]


def test_an_answer_moved_to_rx1_is_the_frame_rx2_would_carry() -> None:
    """At SF12 (one frame per uplink) a node whose last window brought an ACK is owed a COMMAND and a new ACK, and its
    RX2 is contested: RX1 carries the COMMAND, as RX2 would have; always the ACK there, a node whose every window
    was contested would never get its COMMAND (found by a review)."""
    now = [1000.0]
    first, second = cabinet(now)
    owe_ack_and_command(first, second)
    second.air.acked_last[OTHER] = True
    rx1_chosen(now, first, second, 12, 0.3)
    assert [(tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in second.sent] == [(868_300_000, messages.COMMAND)]
    assert second.air.counts["rx2_contested"] == 1


def test_rx1_room_for_a_contested_answer_is_judged_for_the_frame_it_would_carry() -> None:
    """The answer moved to RX1 is RX2's choice, here the COMMAND (the node's last window brought an ACK): RX1's hour
    has room for the ACK but not the COMMAND, so nothing is tried there, and RX2 is given up all the same."""
    now = [1000.0]
    first, second = cabinet(now)
    owe_ack_and_command(first, second)
    second.air.acked_last[OTHER] = True
    lengths = {raw[1]: len(raw) for raw, _ in second.air.waiting[OTHER]}
    ack_ms, command_ms = (airtime_us(lengths[kind], 12) // 1000 for kind in (messages.ACK, messages.COMMAND))
    assert ack_ms + 10 < command_ms
    left_ms = (ack_ms + command_ms) // 2
    second.air.late(7_000_300, 868_300_000, 12, 125_000)  # its clock, for its RX1's hour
    second.air.bridge_clock.duty.spend(868_300_000, (36_000 - left_ms) * 1000, 6_990_000)
    window_a, window_b = rx1_chosen(now, first, second, 12, 0.3)
    now[0] += 0.6
    first.air._decide_rx2(window_a)
    now[0] += 0.3
    second.air._decide_rx2(window_b)
    assert second.sent == [] and second.air.counts["no_budget"] == 0 and second.air.counts["rx2_ceded"] == 1


def test_after_a_long_rx1_frame_nothing_goes_in_rx2_even_a_short_ack_that_fits() -> None:
    """RX2's hour has room for an ACK but not for the 61-byte CONFIG owed: the CONFIG goes in RX1 (2.8 s at SF12, on air
    long after RX2 opens). An ACK committed before RX2's choice is not sent in an RX2 the node does not open."""
    now = [1000.0]
    bare = BareAir(clock=lambda: now[0])
    values = {"interval": 900.0, "status_interval": 1800.0, "sf": 12}
    bare.owe(messages.CONFIG, 11, {"op": messages.CONFIG_SET, "id": 1, "values": values})
    window = uplink(bare, 100_000, 868_100_000)
    bare.air.bridge_clock.duty.spend(869_525_000, 360_000_000 - 2_000_000, 50_000)  # 2 s left: an ACK's 1.5 s
    now[0] += 0.6
    bare.air._decide(window)
    assert [(tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in bare.sent] == [(868_100_000, messages.CONFIG)]
    bare.owe(messages.ACK, 12, {"counters": [5]})
    now[0] += 0.9
    bare.air._decide_rx2(window)
    assert len(bare.sent) == 1 and [raw[1] for raw, _at in bare.air.waiting[BATTERY]] == [messages.ACK]


def test_a_bridge_that_gave_rx2_up_sends_nothing_in_it_even_an_ack_committed_since() -> None:
    """At SF9 the second bridge's COMMAND moves to RX1 (its RX2 answer would meet the first bridge's); an ACK committed
    before its RX2 choice waits for the node's next uplink rather than go in the RX2 it gave up (found by a review:
    it went, on air with the first bridge's ACK), and a third bridge sees no RX2 frame of it."""
    now = [1000.0]
    first, second = cabinet(now)
    first.owe(messages.ACK, 10, {"counters": [5]})
    second.owe(messages.COMMAND, 19, {"id": 2, "action": "dim", "args": {"level": 40}})
    second.air.flush()
    window_a, window_b = rx1_chosen(now, first, second, 9, 0.05)
    assert [(tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in second.sent] == [(868_300_000, messages.COMMAND)]
    second.owe(messages.ACK, 20, {"counters": [7]})  # committed between the two choices
    second.air.flush()
    assert second.air.rx2_slot(OTHER, window_b) is None
    now[0] += 0.85
    first.air._decide_rx2(window_a)
    now[0] += 0.05
    second.air._decide_rx2(window_b)
    assert [tx["freq"] for tx in first.sent] == [869_525_000]
    assert len(second.sent) == 1 and second.air.counts["rx2_ceded"] == 1
    assert [raw[1] for raw, _at in second.air.waiting[OTHER]] == [messages.ACK]


def test_a_time_is_made_only_for_a_window_that_can_carry_it() -> None:
    """RX1's 1 % spent for the hour: the TIME owed is not made for RX1 (it would wait there, saying a time long
    past when it went out), but for RX2; found by an independent review."""
    made: list[int] = []

    def ask_time(node_id: bytes) -> None:
        made.append(int(time.time()))
        bare.owe(messages.TIME, 100 + len(made), {"unix": made[-1], "ms": 0})

    bare = BareAir(ask_time)
    air = bare.air
    air.bridge_clock.duty.spend(868_100_000, 35_990_000, 50_000)  # RX1's sub-band: the hour's 1 % spent
    air.time_owed.add(BATTERY)
    bare.owe(messages.CONFIG, 50, {"op": messages.CONFIG_GET, "id": 1})
    heard(air, 51_000, 868_100_000, 9, 125000)  # no event loop: both windows chosen at once
    assert [(tx["freq"], fr.unpack(tx["frame"], [KEY]).type) for tx in bare.sent] == [(869_525_000, messages.TIME)]
    assert len(made) == 1 and air.counts["no_budget"] == 1 and BATTERY not in air.time_owed
    assert [raw[1] for raw, _at in air.waiting[BATTERY]] == [messages.CONFIG]  # the CONFIG waits; no TIME with it


def test_a_report_no_window_can_be_built_on_is_counted_not_raised(radio: Radio) -> None:
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), at=10_000)
    air = radio.bench.sessions._radio_links[BRIDGES["/dev/ttyA"].hex()].air
    for bad in ({"freq": 915_000_000}, {"bw": 62_500}, {"at": 2**60}):
        radio.counters["/dev/ttyA"] += 1
        counter = 1 + radio.counters["/dev/ttyA"]
        fields = {
            "frame": on_air(messages.READINGS, counter, {"samples": [0, counter, 0]}),
            "rssi": -100,
            "snr": 1.0,
            "freq": 868_100_000,
            "sf": 9,
            "at": 20_000,
        }
        fields.update(bad)
        radio.bench.feed(encode(Message(messages.RADIO_RX, BRIDGES["/dev/ttyA"], radio.counters["/dev/ttyA"], fields, fr.F_ACK_REQ)))
        radio.bench.safe_all()  # the commit's ACK goes through the air's code: nothing escapes into it
    assert air.counts["bad_report"] == 3
    assert radio.bench.sessions.nodes[BATTERY.hex()].window.highest >= 4  # every frame taken and acknowledged


def test_airtime_is_booked_only_for_a_frame_the_bridge_was_sent(radio: Radio) -> None:
    bridge = radio.bench.sessions.nodes[BRIDGES["/dev/ttyA"].hex()]
    fields = {"frame": on_air(messages.HELLO, 1, NODE_HELLO), "rssi": -100, "snr": 1.0, "freq": 868_100_000, "sf": 9, "at": 10_000}
    radio.bench.feed(encode(Message(messages.RADIO_RX, BRIDGES["/dev/ttyA"], 2, fields, fr.F_ACK_REQ)))
    radio.counters["/dev/ttyA"] = 2
    link, bridge.link = bridge.link, None  # the bridge's port is lost before the node's windows are decided
    radio.decide()
    air = radio.bench.sessions._radio_links[BRIDGES["/dev/ttyA"].hex()].air
    assert air.counts["sent"] == 0 and air.counts["dropped"] >= 1 and sum(air.bridge_clock.duty.on_air_ms) == 0
    bridge.link = link
    sent = over_the_air(radio.relay("/dev/ttyA", on_air(messages.READINGS, 2, {"samples": [0, 2, 0]}), at=12_000))
    assert [at for at, _ in sent][:1] == [13_100]  # RX1 open: nothing was booked for the frames never sent


def test_the_link_margin_of_a_frame() -> None:
    from gateway.sessions import link_margin

    assert link_margin({"snr": -10.0, "sf": 10}) == {"margin_db": 5.0}
    assert link_margin({"snr": 9.0, "sf": 12}) == {"margin_db": 29.0}
    assert link_margin({"snr": float("nan"), "sf": 9}) == {}


def test_the_delivery_ratio_counts_a_frame_that_came_late_as_delivered(radio: Radio) -> None:
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO))
    node = radio.bench.sessions.nodes[BATTERY.hex()]
    for counter in (2, 4):  # 3 lost on its first try
        radio.relay("/dev/ttyA", on_air(messages.READINGS, counter, {"samples": [0, counter, 0]}))
    assert node.radio["pdr"] == 0.75  # 3 of the 4 counters 1-4
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 4, {"samples": [0, 4, 0]}), rssi=-100)  # a duplicate: not counted
    assert node.radio["pdr"] == 0.75
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 3, {"samples": [0, 3, 0]}), rssi=-90)  # 3's retransmission
    assert node.radio["pdr"] == 1.0  # every counter of the span arrived at last
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 6, {"samples": [0, 6, 0]}))  # 5 lost on its first try
    # A restarted gateway leaves out the counters up to the highest of the node's window on disk: the last run's. One
    # of them now (5's retransmission; 6, whose ACK the restart lost; 2, sent again after newer frames) would stretch
    # this run's span back over counters it never heard
    radio.bench.safe_all()
    assert node.window.highest == 6
    radio.bench.sessions.restore({BATTERY.hex(): (node.window.highest, node.window.seen)}, {})
    node.transmissions, node.radio = Transmissions(), {}  # a new process: nothing heard of the node yet
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 5, {"samples": [0, 5, 0]}), rssi=-80)
    assert node.radio["rssi"] == -80 and "pdr" not in node.radio  # nothing of this run's span yet: left out, not null
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), rssi=-70)  # its ACK lost to the restart
    for counter in (2, 6, 8, 10):  # 7 (or a downlink's ACK, which enters no window) and 9 lost
        radio.relay("/dev/ttyA", on_air(messages.READINGS, counter, {"samples": [0, counter, 0]}), rssi=-70)
    # 8 and 10 of 8-10 (counting 6: 0.6; counting 5, 2 and 6: 0.556; from 7, after the window: 0.5)
    assert node.radio["pdr"] == 0.667
    radio.relay("/dev/ttyB", on_air(messages.READINGS, 7, {"samples": [0, 7, 0]}), decide=False)  # held behind newer
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 11, {"samples": [0, 11, 0]}))
    assert radio.bench.stored() == [5, 8, 10, 7, 11]  # 2 and 6, stored before, not again
    assert node.radio["pdr"] == 0.8  # 7, 8, 10 and 11 of 7-11


def test_the_delivery_ratio_after_a_restart_leaves_out_a_reboot_it_did_not_hear(radio: Radio) -> None:
    """The node rebooted while the gateway was down: its HELLO is the first counter the new run counts, and its skip
    starts after the window on disk, though the span starts at the HELLO, until a late copy from before it comes."""
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO))
    node = radio.bench.sessions.nodes[BATTERY.hex()]
    for counter in (2, 3, 4):
        radio.relay("/dev/ttyA", on_air(messages.READINGS, counter, {"samples": [0, counter, 0]}))
    radio.bench.safe_all()
    radio.bench.sessions.restore({BATTERY.hex(): (node.window.highest, node.window.seen)}, {})
    node.transmissions, node.radio = Transmissions(), {}
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 65, NODE_HELLO))  # 5-64: its next flash block (SPEC.md 4.1)
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 66, {"samples": [0, 66, 0]}))
    assert node.radio["pdr"] == 1.0
    # A late copy of 6, sent just before the reboot (5 lost), through the other bridge; then 67
    radio.relay("/dev/ttyB", on_air(messages.READINGS, 6, {"samples": [0, 6, 0]}), decide=False)
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 67, {"samples": [0, 67, 0]}))
    assert node.radio["pdr"] == 1.0  # 6 and 65-67 of 6-67, less the 58 skipped that never came (no skip: 0.065)


def test_the_delivery_ratio_leaves_out_what_a_reboot_skips_and_starts_again_at_a_counter_reset(radio: Radio) -> None:
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO))
    node = radio.bench.sessions.nodes[BATTERY.hex()]
    for counter in (2, 4):  # 3 lost
        radio.relay("/dev/ttyA", on_air(messages.READINGS, counter, {"samples": [0, counter, 0]}))
    # Rebooted: its counter moved on to its next flash block (SPEC.md 4.1); 5-64 were never sent
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 65, NODE_HELLO))
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 67, {"samples": [0, 67, 0]}))  # 66 lost
    assert node.missing == 2 and node.radio["pdr"] == 0.714  # 5 of 1-4 and 65-67, as MISSING counts 3 and 66
    # Late copies, through the other bridge, of 3 and of 5, sent just before the reboot; then 66
    for counter in (3, 5):
        radio.relay("/dev/ttyB", on_air(messages.READINGS, counter, {"samples": [0, counter, 0]}), decide=False)
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 66, {"samples": [0, 66, 0]}))
    assert node.radio["pdr"] == 1.0  # 1-5 and 65-67 all came: 5 counts once, not also as skipped
    # After a gateway restart (its window on disk ends at 367), a recording of 369, which the air lost, played back
    # far behind the window (refused): it says nothing of the link
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 367, {"samples": [0, 367, 0]}))
    radio.bench.safe_all()
    radio.bench.sessions.restore({BATTERY.hex(): (node.window.highest, node.window.seen)}, {})
    for counter in [368, *range(370, 631)]:
        radio.relay("/dev/ttyA", on_air(messages.READINGS, counter, {"samples": [0, counter, 0]}), decide=False)
    radio.bench.safe_all()  # committed: the window moved
    assert node.radio["pdr"] == 0.996  # 262 of 368-630
    radio.relay("/dev/ttyB", on_air(messages.READINGS, 369, {"samples": [0, 369, 0]}), decide=False)
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 631, {"samples": [0, 631, 0]}))
    assert node.window.highest - 256 > 369 and node.radio["pdr"] == 0.996  # 263 of 368-631 (counting 369: 1.0)
    # Later, provisioned anew (a new board under the node's id): its counter starts again, and so does the ratio
    radio.bench.safe_all()  # its readings committed: the window moved
    node.info.pop("key_id", None)  # no frame under this key accepted yet (gateway/sessions.py _may_reset)
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO))
    assert node.window.highest == 1 and node.delivery.ratio() == 1.0  # reset, and its HELLO counted
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 3, {"samples": [0, 3, 0]}))
    assert node.radio["pdr"] == 0.667  # 1 and 3 of 1-3


class _Now:
    """Radio.decide's `later` when the real event loop chooses the windows (gateway/air.py, DECIDE_S and DECIDE_RX2_S
    patched down)."""

    def run(self) -> None:
        pass


async def test_a_radio_node_is_advised_its_link_in_a_receive_window_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Link adaptation through the command life cycle (gateway/commands.py, a real store) and the air: after four
    frames the node is sent a CONFIG set of the SF and power advised, in one of its windows; while it is not
    answered no second advice goes (only the same frame again); its report ends the command."""
    monkeypatch.setattr("gateway.air.DECIDE_S", 0.02)
    monkeypatch.setattr("gateway.air.DECIDE_RX2_S", 0.05)
    radio = Radio(tmp_path)
    radio.later = _Now()
    sessions = radio.bench.sessions
    published: list[tuple[str, bytes]] = []
    worker = StoreWorker(Store(tmp_path / "gw", 10_000_000))
    commands = Commands(worker, sessions.topic_base, sessions, lambda t, p: published.append((t, p)), lambda *a: True, 4)
    await commands.open()
    sessions.listener = commands
    sessions.adr.submit = commands.submit
    commands.on_final.append(sessions.adr.finished)
    task = asyncio.get_running_loop().create_task(commands.run())
    try:

        async def uplink(counter: int, mtype: int, fields: dict[str, Any]) -> list[tuple[int, Message]]:
            """The node's frame heard by bridge A (2.5 dB of SNR), 30 s after the last; what went back over the air."""
            replies = radio.relay("/dev/ttyA", on_air(mtype, counter, fields), at=30_000 * counter)
            await asyncio.sleep(0.1)  # its windows are chosen; the commands' task has run
            radio.bench.safe_all()
            await asyncio.sleep(0.1)
            return over_the_air(replies + radio.bench.replies("/dev/ttyA"))

        sent = await uplink(1, messages.HELLO, NODE_HELLO)
        for counter in (2, 3):
            sent += await uplink(counter, messages.READINGS, {"samples": [0, counter, 0]})
        assert [m.type for _, m in sent if m.type == messages.CONFIG] == []  # three frames: too few to go on
        configs: list[Message] = []
        # The fourth frame heard: SF9 (both bridges listen there) at 11 dBm is advised, in a window of that frame.
        # The node does not answer it: no second advice follows, the same frame again at most
        for counter in range(4, 9):
            configs += [m for _, m in await uplink(counter, messages.READINGS, {"samples": [0, counter, 0]}) if m.type == messages.CONFIG]
        assert configs and {(m.counter, m.fields["id"]) for m in configs} == {(configs[0].counter, configs[0].fields["id"])}
        assert configs[0].fields["op"] == messages.CONFIG_SET
        assert configs[0].fields["values"] == {"sf": 9, "tx_power": 11, "margin_db": 12}
        values = {"interval": 10, "status_interval": 60, "sf": 9, "tx_power": 11, "margin_db": 12}
        await uplink(9, messages.CONFIG, {"op": messages.CONFIG_REPORT, "values": values, "id": configs[0].fields["id"]})
        states = [json.loads(p) for t, p in published if "/command/adr:" in t and p]
        assert states and states[-1]["state"] == "succeeded" and states[-1]["name"] == "config"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        worker.close()


def test_a_node_heard_past_twice_its_duty_cycle_is_counted_and_no_longer_answered(radio: Radio) -> None:
    """SPEC.md §5.11: a broken node sending with no time-off (or a recording played back over and over) spends no
    more of its bridge's downlink budget, which all its nodes share, than twice its own duty cycle would let it."""
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), at=10_000)
    now = later_transmissions(radio)
    answered = stored = 0
    for counter in range(2, 402):  # a frame every 1.5 s, for 10 minutes: 10 times what its 1 % lets it send
        now[0] += 1.5
        frame = on_air(messages.READINGS, counter, {"samples": [0, 1000 + counter, 0]})  # each as long
        radio.relay("/dev/ttyA", frame, at=10_000 + 1500 * counter, decide=False)
        stored += len(radio.bench.stored())
        radio.bench.safe_all()
        answered += len([m for _, m in over_the_air(radio.decide("/dev/ttyA")) if m.type == messages.ACK])
    # Each transmission counted at half its airtime (whole ms) against 1 % of an hour, 36 s (the HELLO came before
    # the test's clock: not in that hour)
    allowed = 36_000 // -(-(airtime_us(len(frame), 9) // 2) // 1000)
    errors = radio.bench.sessions._radio_links[BRIDGES["/dev/ttyA"].hex()].errors
    assert stored == allowed and errors["over_duty_cycle"] == 400 - stored
    assert 0 < answered <= stored  # the bridge's own duty cycle answers fewer still
    # Its hour clear again (it kept quiet, or its firmware was fixed): it is answered as before
    now[0] += 3660
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 500, {"samples": [0, 500, 0]}), at=10_000 + 1500 * 402 + 3_660_000, decide=False)
    assert radio.bench.stored() == [500]
    # What was over came all the same: the delivery ratio is the link's (counters 1 to 401 and 500 heard, of 500)
    assert radio.bench.sessions.nodes[BATTERY.hex()].radio["pdr"] == round(402 / 500, 3)


def played_back(radio: Radio, recorded: bytes) -> tuple[list[float], int]:
    """The node says HELLO and sends `recorded`; then someone in range plays it back 500 times, every 4 s (33 minutes:
    more than the hour at twice the node's 1 % allows). The test's clock (later_transmissions) and how many of the
    replays were acknowledged."""
    radio.relay("/dev/ttyA", on_air(messages.HELLO, 1, NODE_HELLO), at=10_000)
    now = later_transmissions(radio)
    radio.relay("/dev/ttyA", recorded, at=20_000)
    radio.bench.safe_all()
    acks = 0
    for index in range(500):
        now[0] += 4
        acks += len(acked([m for _, m in over_the_air(radio.relay("/dev/ttyA", recorded, at=30_000 + 4000 * index))]))
    return now, acks


@pytest.mark.parametrize(
    "recorded",
    [
        on_air(messages.READINGS, 2, {"samples": [0, 1002, 0]}),
        on_air(messages.ACK, 2, {"counters": [7]}),  # an ACK's counter never enters the window: NEW every time it comes
    ],
    ids=["readings", "ack"],
)
def test_a_recording_played_back_past_twice_the_duty_cycle_does_not_silence_the_nodes_own_frames(radio: Radio, recorded: bytes) -> None:
    """Someone in range plays one recorded frame back hundreds of times: past twice the node's duty cycle the copies
    are not answered again, and the node's own new frames are stored and answered all along (a counter is judged by
    what new counters took only at its first transmission: gateway/copies.py)."""
    now, replayed_acks = played_back(radio, recorded)
    errors = radio.bench.sessions._radio_links[BRIDGES["/dev/ttyA"].hex()].errors
    assert errors["over_duty_cycle"] > 0 and replayed_acks < 500  # the recording stopped being answered
    stored, answered = [], []
    for counter in range(3, 13):  # the node's own frames meanwhile, a minute apart
        now[0] += 60
        radio.relay("/dev/ttyA", on_air(messages.READINGS, counter, {"samples": [0, 1000 + counter, 0]}), at=2_100_000 + 60_000 * counter)
        stored += radio.bench.stored()
        radio.bench.safe_all()
        answered += acked([m for _, m in over_the_air(radio.bench.replies("/dev/ttyA"))])
    assert stored == answered == list(range(3, 13))


def test_a_copy_over_the_duty_cycle_does_not_take_the_window_of_the_nodes_own_frame(radio: Radio) -> None:
    """A replay judged over, heard just after the node's own frame, opens no window: the ACK owed for the node's frame
    goes in the windows of that frame, the ones the node listens in (an over copy's would come 0.8 s later)."""
    recorded = on_air(messages.READINGS, 2, {"samples": [0, 1002, 0]})
    now, _acks = played_back(radio, recorded)  # until its copies are over
    errors = radio.bench.sessions._radio_links[BRIDGES["/dev/ttyA"].hex()].errors
    over = errors["over_duty_cycle"]
    assert over > 0
    now[0] += 60
    radio.relay("/dev/ttyA", on_air(messages.READINGS, 3, {"samples": [0, 1003, 0]}), at=2_100_000, decide=False)
    now[0] += 0.8
    radio.relay("/dev/ttyA", recorded, at=2_100_800, decide=False)
    assert errors["over_duty_cycle"] == over + 1
    radio.bench.safe_all()
    sent = over_the_air(radio.bench.replies("/dev/ttyA") + radio.decide("/dev/ttyA"))
    assert [(at, m.type, m.fields["counters"]) for at, m in sent] == [(2_102_100, messages.ACK, [3])]


@pytest.mark.parametrize(("sf", "latest_ms"), [(12, 203), (9, 375), (7, 393)])
def test_a_window_is_reached_only_while_the_node_can_detect_the_preamble_in_it(sf: int, latest_ms: int) -> None:
    """A node holds its window open once it has detected a preamble, 6 symbols into it (protocols/lora.py
    DETECT_SYMBOLS; at SF12 197 ms): a frame aimed later than the window's 500 ms less that and RX_AIM_MS (room for
    the clocks) would end the window unheard on real chips, and is missed instead (counted)."""
    bare = BareAir()
    window = Window(100_000, 868_100_000, sf, 125_000)
    opens = 100_000 + RX_DELAY_MS
    assert bare.air._reach(window, RX_DELAY_MS, opens + latest_ms - LEAD_MS) == opens + latest_ms
    assert bare.air.counts["missed"] == 0
    assert bare.air._reach(window, RX_DELAY_MS, opens + latest_ms + 1 - LEAD_MS) is None
    assert bare.air.counts["missed"] == 1
