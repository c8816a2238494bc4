"""hil/swarm.py's light radio nodes on the real-time air, without processes: a stand-in bridge (an antenna, in the
air's thread) answers the swarm as the gateway would, through its windows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from hil.air import Air, Antenna
from hil.air_report import duty_breaches
from hil.radio import Medium, PathLoss, Transmission
from hil.swarm import RETRIES, Swarm
from protocols import frame as fr
from protocols import messages
from protocols.lora import DOWNLINK_FREQ, RX2_DELAY_MS, RX_DELAY_MS, RX_WINDOW_MS

CHANNEL = 868100000


def duty_cycle_breaches(transmissions: list[Transmission], senders: set[str]) -> list[str]:
    # An antenna's start is the clock when it transmitted; the time-off is counted in whole ms from it
    return duty_breaches(transmissions, senders, slack_s=0.002)


@dataclass
class StandIn:
    """A bridge and gateway in one antenna: ACKs every frame it hears in the sender's RX1 (or RX2 when told),
    except the first frame of a type it is told to leave unanswered, per node."""

    air: Air
    keys: dict[bytes, bytes]
    ignore_first: dict[bytes, int]  # node id -> message type
    use_rx2: set[bytes] = field(default_factory=set)
    antenna: Antenna | None = None
    due: list[tuple[float, int, bytes]] = field(default_factory=list)  # (when, freq, frame)
    heard: list[messages.Message] = field(default_factory=list)
    counter: int = 1

    def __post_init__(self) -> None:
        self.antenna = self.air.antenna("bridge", 0, 0)
        self.antenna.on_frame = self.frame
        self.air.every_tick(self.tick)

    def frame(self, payload: bytes, rssi: float, snr: float) -> None:
        message = messages.decode_frame(fr.unpack(payload, lambda node_id: self.keys.get(node_id)))
        self.heard.append(message)
        if self.ignore_first.get(message.node_id) == message.type:
            del self.ignore_first[message.node_id]
            return
        ack = messages.Message(messages.ACK, message.node_id, self.counter, {"counters": [message.counter]}, fr.F_DOWNLINK | fr.F_AUTH)
        self.counter += 1
        raw = bytes(
            fr.pack(
                fr.Frame(ack.type, ack.node_id, ack.counter, messages.encode_payload(ack.type, ack.fields), ack.flags),
                self.keys[ack.node_id],
            )
        )
        second = message.node_id in self.use_rx2
        freq = DOWNLINK_FREQ if second else CHANNEL
        # Into the window, as the gateway aims (gateway/air.py RX_AIM_MS): 100 ms after it opens
        self.due.append((time.monotonic() + (RX2_DELAY_MS if second else RX_DELAY_MS) / 1000 + 0.1, freq, raw))

    def tick(self, now: float) -> None:
        assert self.antenna is not None
        if not self.antenna.listening:
            self.antenna.listen(CHANNEL, 7, invert_iq=False)
        for entry in [entry for entry in self.due if entry[0] <= now]:
            self.due.remove(entry)
            self.antenna.sleep()  # half duplex, as a bridge
            self.antenna.transmit(entry[1], 7, entry[2], invert_iq=True)


@pytest.fixture(scope="module")
def swarm_run() -> Iterator[tuple[Air, Swarm, StandIn]]:
    # 4 nodes booting 0.9-10.8 s in (seed 9: more than a HELLO's airtime apart), a reading every 12 s for 35 s: a
    # HELLO (118 ms at SF7) closes the 1 % sub-band for 11.8 s and 0-4 s of chance follow, so a reading due 12 ± 3 s
    # after it may wait for the duty cycle, and a HELLO resent 2 s after it does
    air = Air(Medium(3, PathLoss(sigma_db=0.0)))
    swarm = Swarm(air, 4, interval=12.0, ring_m=(100.0, 300.0), retransmit=True, seed=9)
    keys = {node.node_id: node.key for node in swarm.nodes}
    ignore = {swarm.nodes[0].node_id: messages.HELLO, swarm.nodes[2].node_id: messages.READINGS}
    stand_in = StandIn(air, keys, ignore, {swarm.nodes[1].node_id})
    swarm.start()
    air.start()
    time.sleep(35)
    air.stop()
    yield air, swarm, stand_in


def test_every_uplink_is_a_tagged_frame_of_its_node_a_hello_first(swarm_run: tuple[Air, Swarm, StandIn]) -> None:
    _air, swarm, _stand_in = swarm_run
    for node in swarm.nodes:
        mine = [s for s in swarm.sent if s.node == node.index]
        decoded = [messages.decode_frame(fr.unpack(s.transmission.payload, lambda _id, key=node.key: key)) for s in mine]
        assert (
            decoded and decoded[0].type == messages.HELLO and decoded[0].fields["channels"] == [{"name": "counter", "unit": "", "scale": 0}]
        )
        assert all(m.node_id == node.node_id and m.flags & fr.F_AUTH and m.flags & fr.F_ACK_REQ for m in decoded)
        with pytest.raises(fr.ProtocolError):
            other = swarm.nodes[(node.index + 1) % 4].key
            fr.unpack(mine[0].transmission.payload, lambda _id, key=other: key)  # another node's key: no
        samples = [m.fields["samples"][1] for m in decoded if m.type == messages.READINGS]
        assert samples and sorted(set(samples)) == list(range(1, max(samples) + 1))  # one counter sample each, numbered on


def test_a_hello_is_sent_again_until_acknowledged_then_never(swarm_run: tuple[Air, Swarm, StandIn]) -> None:
    _air, swarm, stand_in = swarm_run
    ignored = swarm.nodes[0]
    hellos = [s for s in swarm.sent if s.node == 0 and s.kind == messages.HELLO]
    assert len(hellos) == 2 and hellos[0].counter == hellos[1].counter  # the same frame, resent on the session's timer
    assert [m.counter for m in stand_in.heard if m.node_id == ignored.node_id and m.type == messages.HELLO] == [hellos[0].counter] * 2
    for node in swarm.nodes:
        assert node.hello_acked_at is not None and node.hello is None
        acked_at = node.hello_acked_at
        assert not [s for s in swarm.sent if s.node == node.index and s.kind == messages.HELLO and s.transmission.start > acked_at]
    assert swarm.received["ACK"] >= 8 and swarm.errors == []


def test_windows_open_after_each_uplink_inverted_on_the_uplinks_channel_then_rx2(swarm_run: tuple[Air, Swarm, StandIn]) -> None:
    air, swarm, _stand_in = swarm_run
    for sent in swarm.sent:
        if sent.transmission.end > air.transmissions[-1].start - 3:
            continue  # the run stopped before its windows
        opened = [w for w in swarm.windows if w[0] == sent.node and sent.transmission.end <= w[1] < sent.transmission.end + 3]
        assert [(w[2], w[3], w[4]) for w in opened] == [(CHANNEL, 7, True), (DOWNLINK_FREQ, 7, True)]
        for window, delay in zip(opened, (RX_DELAY_MS, RX2_DELAY_MS), strict=True):
            due = sent.transmission.end + delay / 1000
            # Never early, and late by less than a window: a downlink aimed into it still finds it open
            assert due <= window[1] < due + RX_WINDOW_MS / 1000


def test_acks_in_either_window_are_taken_and_an_acked_reading_is_not_sent_again(swarm_run: tuple[Air, Swarm, StandIn]) -> None:
    _air, swarm, _stand_in = swarm_run
    assert swarm.nodes[1].hello_acked_at is not None and swarm.nodes[1].acked  # its ACKs all came in RX2
    unanswered = [s for s in swarm.sent if s.node == 2 and s.kind == messages.READINGS]
    first = unanswered[0]
    again = [s for s in unanswered if s.counter == first.counter]
    assert [s.attempt for s in again] == [0, 1]  # resent once, same counter (the retry was answered)
    for sent in swarm.sent:
        acked = swarm.nodes[sent.node].acked.get(sent.counter)
        assert sent.attempt <= RETRIES and (acked is None or sent.transmission.start < acked)


def test_no_node_breaks_its_duty_cycle(swarm_run: tuple[Air, Swarm, StandIn]) -> None:
    air, swarm, _stand_in = swarm_run
    assert duty_cycle_breaches(air.transmissions, {node.name for node in swarm.nodes}) == []
