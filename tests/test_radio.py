"""Issue 15, the air: LoRa airtime, the EU868 duty cycle (protocols/, both interpreters) and the emulated
medium (hil/radio.py), each held to published values or to theory."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from hil.radio import COLLISION, DELIVERED, HALF_DUPLEX, TOO_WEAK, Medium, PathLoss, Transmission
from protocols import Message, messages, upstream
from protocols import frame as fr
from protocols.airtime import airtime_us, payload_symbols, symbol_us
from protocols.dutycycle import DutyCycle, band
from tests.conftest import run_micropython
from tests.portable import radio_check

CH = 868_100_000  # LoRaWAN EU868's first channel, in the 1 % sub-band
RX2 = 869_525_000  # in the 10 % sub-band

# ------------------------------------------------------------ airtime


@pytest.mark.parametrize(
    ("length", "sf", "ms"),
    [
        (13, 9, 164.864),  # the LoRa Modem Designer's Guide (AN1200.13) formula's worked case: 28 payload symbols
        (25, 7, 61.696),  # LoRaWAN, 12 bytes of application payload + 13 of header: The Things Network's 61.7 ms
        (25, 12, 1482.752),  # the same at SF12 (low data rate optimisation on): 1,482.8 ms
    ],
)
def test_airtime_matches_worked_values(length: int, sf: int, ms: float) -> None:
    assert airtime_us(length, sf) / 1000 == pytest.approx(ms, abs=0.001)


def test_airtime_pieces() -> None:
    assert symbol_us(7) == 1024 and symbol_us(12) == 32768 and symbol_us(12, 500_000) == 8192
    assert payload_symbols(13, 9) == 28
    # SF11 and SF12 at 125 kHz use the low data rate optimisation (4 * (SF - 2) in the denominator), SF10 not
    assert payload_symbols(50, 12) == 8 + math.ceil((400 - 48 + 44) / 40) * 5
    assert payload_symbols(50, 10) == 8 + math.ceil((400 - 40 + 44) / 40) * 5
    assert payload_symbols(0, 12) == 8  # 8*0 - 48 + 44 < 0: max(.., 0)
    with pytest.raises(ValueError):
        symbol_us(13)


# ------------------------------------------------------------ duty cycle


def test_a_one_percent_band_closes_for_99_times_the_airtime() -> None:
    duty = DutyCycle()
    on_air = airtime_us(25, 7)  # 61.696 ms: 62 ms accounted
    assert duty.spend(CH, on_air, 1000)
    assert duty.wait_ms(CH, 1000) == 6200 and duty.wait_ms(868_500_000, 1000) == 6200  # the whole sub-band
    assert duty.wait_ms(RX2, 1000) == 0  # another sub-band is open
    assert not duty.spend(CH, on_air, 7199) and duty.refused == 1
    assert duty.spend(CH, on_air, 7200)
    assert duty.spend(RX2, on_air, 7200) and duty.wait_ms(RX2, 7200) == 620  # 10 %
    assert duty.budget_ms(CH, 7200) == 36_000 - 2 * 62  # 1 % of the hour, less what it holds
    with pytest.raises(ValueError, match="no EU868 sub-band"):
        band(868_650_000)  # between h1.4 and h1.5: no transmitter here may use it
    with pytest.raises(ValueError):
        duty.spend(915_000_000, on_air, 0)


def test_a_bridge_keeps_the_hourly_limit_alone() -> None:
    duty = DutyCycle(time_off=False)  # firmware/roles/bridge.py, gateway/air.py's mirror of it
    on_air = airtime_us(25, 7)  # 62 ms accounted
    assert duty.spend(CH, on_air, 1000) and duty.wait_ms(CH, 1000) == 0
    assert duty.spend(CH, on_air, 1100)  # back to back: no time-off closes the sub-band
    room = duty.budget_ms(CH, 1200)
    assert room == 36_000 - 2 * 62 and duty.spend(CH, (room - 30) * 1000, 1200)
    assert not duty.spend(CH, on_air, 1300) and duty.refused == 1  # the hour's 1 % is spent
    assert duty.spend(CH, on_air, 1000 + 3_660_000)  # an hour (and the minute it is kept by) later: room again


@pytest.mark.parametrize("time_off", [True, False])
def test_whatever_is_asked_no_hour_holds_more_than_the_limit(time_off: bool) -> None:
    rng = random.Random(15)
    duty = DutyCycle(time_off)
    sent: list[tuple[int, int]] = []  # (start ms, on air ms)
    now = 0
    while now < 4 * 3_600_000:
        now += rng.randint(1, 3000)  # a node (or a bridge) that wants to transmit far more often than it may
        on_air = airtime_us(rng.randint(10, 200), rng.choice((7, 9, 12)))
        if duty.spend(CH, on_air, now):
            sent.append((now, (on_air + 999) // 1000))
    assert duty.refused > len(sent)
    for index, (start, _on_air) in enumerate(sent):  # every hour that starts with a transmission
        in_hour = sum(ms for begin, ms in sent[index:] if begin < start + 3_600_000)
        assert in_hour <= 36_000  # 1 % of the hour, whatever frame lengths came


def _const_copies(module: str, names: str) -> dict[str, int]:
    """The `NAME = const(N)` lines of firmware/<module>.py whose name (its group in `names`, a regex) is copied from
    protocols/ (the firmware keeps such copies off its heap; it imports `micropython`, so it is read, not imported)."""
    import re

    source = (Path(__file__).parent.parent / "firmware" / (module + ".py")).read_text()
    return {name: int(value) for name, value in re.findall(r"^%s = const\((\d+)\)" % names, source, re.M)}


def test_the_firmwares_copies_of_the_radio_constants_are_protocols() -> None:
    """firmware/node.py keeps its own const() copies of two of protocols/lora.py's (no import of lora on the heap)."""
    from protocols import lora

    copies = _const_copies("node", "(_RADIO_FRAME|_SHORT_HELLO_SF)")
    assert copies == {"_RADIO_FRAME": lora.MAX_RADIO_FRAME, "_SHORT_HELLO_SF": lora.SHORT_HELLO_SF}


def test_the_firmwares_numbers_of_status_air_keys_are_protocols() -> None:
    """firmware/radio_port.py numbers its STATUS `air` keys with const() copies of their positions in
    protocols/upstream.py AIR_KEYS (SPEC.md 5.7): two swapped would pass every test that only looks for the names,
    and the gateway would read one figure as another (listening time as time on air, in every battery estimate)."""
    copies = _const_copies("radio_port", r"_AIR_(\w+)")
    assert len(copies) == 9 and copies == {name: upstream.AIR_KEYS.index(name.lower()) for name in copies}


def test_airtime_and_duty_cycle_are_the_same_on_micropython(micropython: str) -> None:
    done = run_micropython(micropython, "tests/portable/radio_check.py")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(json.dumps(radio_check.run()))


# ------------------------------------------------------------ the medium against theory


@pytest.mark.parametrize("load", [0.1, 0.25, 0.5, 0.75, 1.0])
def test_without_capture_one_channel_is_pure_aloha(load: float) -> None:
    """Poisson traffic of G frames per airtime on one channel and SF, capture off: delivery e^(-2G)."""
    medium = Medium(seed=7, capture=False)
    medium.place("bridge", 0, 0, {(CH, 7)})
    senders = ["n%d" % i for i in range(500)]
    for index, name in enumerate(senders):
        medium.place(name, 100 + index % 50, 100 + index // 50)  # close: never too weak (7.8 dB shadowing or not)
    airtime = airtime_us(20, 7) / 1e6
    rng = random.Random(int(load * 1000))
    now, frames = 0.0, 8000
    for _ in range(frames):
        now += rng.expovariate(load / airtime)
        medium.transmit(Transmission(rng.choice(senders), now, CH, 7, 20))
    got = medium.outcomes(now + 10)
    assert len(got) == frames
    delivered = sum(r.outcome == DELIVERED for r in got) / frames
    assert delivered == pytest.approx(math.exp(-2 * load), abs=0.02)


def bench_pair(distance_a: float, distance_b: float, **options: bool) -> Medium:
    medium = Medium(seed=3, path_loss=PathLoss(sigma_db=0.0), **options)
    medium.place("bridge", 0, 0, {(CH, 7), (CH, 12)})
    medium.place("a", distance_a, 0)
    medium.place("b", -distance_b, 0)
    return medium


def outcome(got: list, sender: str) -> str:
    return next(r.outcome for r in got if r.transmission.sender == sender)


def test_capture_the_stronger_frame_survives_an_overlap() -> None:
    medium = bench_pair(100, 1000)  # a is 23 dB stronger at the bridge
    medium.transmit(Transmission("a", 0.00, CH, 7, 20))
    medium.transmit(Transmission("b", 0.02, CH, 7, 20))
    got = medium.outcomes(1)
    assert (outcome(got, "a"), outcome(got, "b")) == (DELIVERED, COLLISION)
    equal = bench_pair(500, 500)
    equal.transmit(Transmission("a", 0.00, CH, 7, 20))
    equal.transmit(Transmission("b", 0.02, CH, 7, 20))
    got = equal.outcomes(1)
    assert (outcome(got, "a"), outcome(got, "b")) == (COLLISION, COLLISION)
    plain = bench_pair(100, 1000, capture=False)
    plain.transmit(Transmission("a", 0.00, CH, 7, 20))
    plain.transmit(Transmission("b", 0.02, CH, 7, 20))
    assert {r.outcome for r in plain.outcomes(1)} == {COLLISION}


def test_a_frame_whose_preamble_is_hit_only_early_is_still_heard() -> None:
    medium = bench_pair(1000, 100)  # b is stronger, and a starts just as b ends
    b = Transmission("b", 0.0, CH, 7, 20)
    medium.transmit(b)
    medium.transmit(Transmission("a", b.end - 2 * symbol_us(7) / 1e6, CH, 7, 20))  # 2 of 8 preamble symbols hit
    got = medium.outcomes(1)
    assert outcome(got, "a") == DELIVERED
    late = bench_pair(1000, 100)
    late.transmit(b)
    late.transmit(Transmission("a", b.end - 4 * symbol_us(7) / 1e6, CH, 7, 20))  # into the last 5: lost
    assert outcome(late.outcomes(1), "a") == COLLISION


def test_other_spreading_factors_interfere_past_their_threshold() -> None:
    # SF7 wanted under an SF12 interferer: it needs SIR >= -20 dB (Goursaud): 16 dB weaker survives, 25 dB weaker not
    for distance_m, survives in ((500, True), (1200, False)):
        medium = bench_pair(distance_m, 100)  # a farther: 23.2 log10(5) = 16.2 dB weaker, 23.2 log10(12) = 25 dB
        medium.transmit(Transmission("a", 0.0, CH, 7, 20))
        medium.transmit(Transmission("b", 0.0, CH, 12, 20))
        got = medium.outcomes(5)
        assert (outcome(got, "a") == DELIVERED) is survives, (distance_m, got)
    ideal = bench_pair(1200, 100, orthogonal=True)
    ideal.transmit(Transmission("a", 0.0, CH, 7, 20))
    ideal.transmit(Transmission("b", 0.0, CH, 12, 20))
    assert outcome(ideal.outcomes(5), "a") == DELIVERED


def test_a_node_far_away_needs_a_higher_spreading_factor() -> None:
    medium = Medium(seed=1, path_loss=PathLoss(sigma_db=0.0))
    medium.place("bridge", 0, 0, {(CH, 7), (CH, 12)})
    medium.place("far", 12_000, 0)  # 14 dBm - 128.95 - 23.2 log10(12) = -140 dBm: under every SF
    medium.place("mid", 5_000, 0)  # -131.2 dBm
    rssi = medium.rssi_dbm(Transmission("mid", 0, CH, 7, 10), medium.radios["bridge"])
    assert -137 < rssi < -123  # between SF12's sensitivity and SF7's
    medium.transmit(Transmission("mid", 0.0, CH, 7, 10))
    medium.transmit(Transmission("mid", 1.0, CH, 12, 10))
    medium.transmit(Transmission("far", 3.0, CH, 12, 10))
    got = medium.outcomes(10)
    assert [r.outcome for r in got] == [TOO_WEAK, DELIVERED, TOO_WEAK]
    assert got[1].snr_db == pytest.approx(rssi - (-174 + 10 * math.log10(125_000) + 6), abs=0.1)


def test_a_bridge_that_transmits_hears_nothing_meanwhile_and_a_node_only_its_window() -> None:
    medium = Medium(seed=1)
    medium.place("bridge", 0, 0, {(CH, 7)})
    medium.place("node", 50, 0, {(CH, 7)}, always=False)
    medium.place("other", 0, 50)
    medium.transmit(Transmission("other", 0.0, CH, 7, 30))
    medium.transmit(Transmission("bridge", 0.01, RX2, 7, 10))  # an ACK to somebody, on another channel
    assert [(r.receiver, r.outcome) for r in medium.outcomes(1)] == [("bridge", HALF_DUPLEX)]
    medium.window("node", 2.0, 2.05, CH, 7)  # class A: a window at a fixed delay after its uplink
    medium.transmit(Transmission("bridge", 2.03, CH, 7, 12))  # starts inside it: heard
    medium.transmit(Transmission("bridge", 3.00, CH, 7, 12))  # after it closed: not
    got = medium.outcomes(5)
    assert [(r.receiver, r.outcome, r.transmission.start) for r in got] == [("node", DELIVERED, 2.03)]


def test_shadowing_is_seeded_and_the_same_both_ways() -> None:
    one, two, other = Medium(seed=5), Medium(seed=5), Medium(seed=6)
    assert one.shadowing_db("a", "b") == one.shadowing_db("b", "a") == two.shadowing_db("a", "b")
    assert one.shadowing_db("a", "b") != other.shadowing_db("a", "b")
    spread = [Medium(seed=s).shadowing_db("x", "y") for s in range(2000)]
    assert sum(spread) / len(spread) == pytest.approx(0, abs=0.6)
    assert (sum(v * v for v in spread) / len(spread)) ** 0.5 == pytest.approx(7.8, abs=0.4)


def test_radios_at_one_spot_share_their_shadowing() -> None:
    """A cabinet's bridges see a probe through the same trees: an advice worked out at one holds at the others."""
    medium = Medium(seed=5)
    for name in ("sf9", "sf10", "sf11", "sf12"):
        medium.place(name, 0, 0, {(CH, 7)})
    medium.place("across", 0, 3)  # a radio 3 m away: a spot of its own
    probes = ["probe%d" % n for n in range(20)]
    for n, name in enumerate(probes):
        medium.place(name, 1000 + n, 500)
    for name in probes:
        seen = {medium.shadowing_db(name, bridge) for bridge in ("sf9", "sf10", "sf11", "sf12")}
        assert len(seen) == 1
        assert medium.shadowing_db(name, "across") != medium.shadowing_db(name, "sf10")
    assert medium.shadowing_db("sf9", "sf12") == 0.0
    # the first radio at a spot draws as it always did: other scenarios' layouts keep their draws
    assert medium.shadowing_db("probe3", "sf9") == Medium(seed=5).shadowing_db("probe3", "sf9")
    with pytest.raises(ValueError, match="placed already"):  # moved, it would leave the others sharing its draws
        medium.place("sf9", 1500, 1500)


def test_a_nodes_windows_and_a_lost_txdone_on_micropython(micropython: str) -> None:
    """firmware/radio_port.py and the bridge role on a scripted radio (tests/portable/radio_port_check.py)."""
    done = run_micropython(micropython, "tests/portable/radio_port_check.py")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    tx, wait_rx = 1, 2  # RadioPort's states
    assert out["waiting"] == [tx, 0]  # the airtime is over: TxDone may still come
    assert out["after_timeout"] == [wait_rx, 1, True]  # 500 ms later: the radio started again, counted, windows next
    # RX1 on the uplink's channel, RX2 on 869.525 MHz, both for inverted I/Q (downlinks), asleep between and after
    assert out["windows"][-6:] == [
        ["configure", 868_100_000, 9, True],
        ["receive"],
        ["sleep"],
        ["configure", 869_525_000, 9, True],
        ["receive"],
        ["sleep"],
    ]
    ((counter, at),), tx_end = out["aired"]  # the node's outbox is told once the second window closed unanswered
    # a reading round on an idle port: 0 .. chance_ms (4096 ms at SF9 for this frame) later, never at once each
    # time; an event goes on air at once
    *periodic, (event_state, _event_wait) = out["chance"]
    assert all(state == 0 and 0 <= wait < 4096 for state, wait in periodic), periodic
    assert len({wait for _state, wait in periodic}) > 10, periodic
    assert event_state == tx
    # an event written while a STATUS waits out that chance goes at once, ahead of it (the STATUS still waits)
    assert out["event_first"] == [0, tx, 10, 1]
    # Held open while the radio says a frame is coming, at most RX_WINDOW_MS and a 204-byte frame at SF9 (1.03 s),
    # and the last 50 ms hold (_HEARD_MS) given before that
    longest = 500 + (airtime_us(204, 9) + 999) // 1000
    assert longest <= out["held"] <= longest + 50 + 10, out["held"]
    # Of the node's own frames the one the air lost goes after the next waiting (a STATUS is not held back for
    # good behind a READINGS a weak node keeps losing); events go in their order all the same
    assert out["again"] == [20, 21, 20, 30, 30]
    # A full queue leaves out the last in sending order (counted); a TIME request goes with the answers to the
    # gateway, before the node's READINGS and STATUS, after a HELLO and events
    assert out["full"] == [
        [45, 41, 42, 43, 1],  # the request first; 44 left out (kept in the node's ring, it comes again when due)
        [44, 41, 42, 43, 1],  # 45 refused, for the same reason: the request would have been lost, and its counter
        [41, 42, 43, 44, 1],  # events go first: the request (40) is left out
        [41, 42, 43, 45, 1],  # and so it is for a newer event
        [40, 41, 42, 43, 1],  # among answers and requests, by counter: the newest left out
        [41, 42, 43, 44, 1],  # whether kept (a COMMAND_RESULT) or not (an ACK)
    ]
    assert counter == 7 and tx_end + 2000 + 500 <= at <= tx_end + 2000 + 600
    assert out["queued"] == [True, False]  # a RADIO_TX 20 s ahead is refused: no window is that far
    assert out["bridge_sent"] == [1, [["configure", 869_525_000, 9, True], ["send", 20]]]  # a downlink: inverted I/Q
    dropped, sending, log = out["bridge_after_timeout"]  # dropped: the RADIO_TX 20 s ahead, and the lost TxDone
    assert dropped == 2 and sending is None and log[-3:] == [["begin"], ["configure", 868_100_000, 9, False], ["receive"]]


def test_a_radio_node_takes_the_link_the_gateway_advises_and_falls_back_on_micropython(micropython: str, tmp_path: Path) -> None:
    """Link adaptation on the node (tests/portable/link_check.py): firmware/node.py over a RadioPort, scripted radio."""
    done = run_micropython(micropython, "tests/portable/link_check.py", str(tmp_path / "flash"))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)

    def sent(log: list[list[Any]]) -> list[tuple[int, int, Message]]:
        """(sf, dBm, the frame) of each uplink."""
        uplinks = [entry for entry in log if entry[0] == "tx"]
        return [(sf, dbm, messages.decode_frame(fr.unpack(bytes.fromhex(wire)))) for _, _, sf, dbm, wire in uplinks]

    # SPEC.md 5.11: at SF11 and up a HELLO offers no commands (seconds on air); below, all of them
    hellos = [(sf, messages.decode_frame(fr.unpack(bytes.fromhex(wire)))) for sf, _, wire in out["hello"]]
    assert [(sf, m.type) for sf, m in hellos] == [(9, messages.HELLO), (12, messages.HELLO)]
    assert {"reboot", "identify", "rekey"} & set(hellos[0][1].fields["commands"]) and "commands" not in hellos[1][1].fields
    assert hellos[1][1].fields["channels"] == hellos[0][1].fields["channels"]
    uplinks = sent(out["advised"])
    # The CONFIG set came in the first uplink's RX1; its RX2 still listens at that uplink's SF9. From the next
    # uplink on, SF7 at 8 dBm: the ACK of the set, then the report with the values kept
    assert [entry for entry in out["advised"] if entry[0] == "rx"][:2] == [["rx", 868_100_000, 9], ["rx", 869_525_000, 9]]
    assert [(sf, dbm, m.type) for sf, dbm, m in uplinks] == [(9, 14, messages.READINGS), (7, 8, messages.ACK), (7, 8, messages.CONFIG)]
    assert uplinks[1][2].fields["counters"] == [1000]
    report = uplinks[2][2].fields
    assert report["id"] == 5 and "errors" not in report
    assert report["values"] == {"interval": 3600, "status_interval": 86400, "sf": 7, "tx_power": 8, "margin_db": 11}
    assert out["config_json"] == report["values"]  # on flash: a reset keeps it
    assert out["air"]["sf"] == 7 and out["air"]["power"] == 8 and out["air"]["margin"] == 11 and out["air"]["fallback"] == 0
    assert out["air_numbered"] and {"tx", "tx_ms", "rx", "rx_ms", "dropped"} <= set(out["air"])
    assert out["rebooted"] == [7, 8, {"sf": 7, "tx_power": 8, "margin_db": 11}]

    refused = sent(out["refused"])[-1][2].fields  # out of range, not integers, unknown: each said, nothing changed
    assert refused["id"] == 6 and refused["errors"] == {
        "sf": "want int 7..12",
        "tx_power": "want int 2..14",
        "margin_db": "want int -128..127",
        "sf_": "rejected",
    }
    assert out["refused_air"] == [7, 8]

    # 32 uplinks since a frame was last heard in a window (the ACK and report after it among them): the 33rd at
    # the node's own SF and full power, the gateway's setting forgotten on flash, the fallback counted
    assert out["since_heard"] == 2
    assert out["silent"] == [868_100_000, 7, 8] and out["fell_back"] == [868_100_000, 9, 14]
    assert out["fell_back_air"]["fallback"] == 1 and "margin" not in out["fell_back_air"]
    assert out["fell_back_json"] == {"interval": 3600, "status_interval": 86400}
    assert out["wired"] == {"sf": "rejected", "tx_power": "rejected"}  # a node on a cable has no link to adapt


def decoded(wires: list[str]) -> list[Message]:
    """A portable check's uplinks (frame hex, as its scripted radio logged them), decoded."""
    return [messages.decode_frame(fr.unpack(bytes.fromhex(wire))) for wire in wires]


def test_a_radio_node_holds_an_event_until_its_clock_comes_on_micropython(micropython: str, tmp_path: Path) -> None:
    """SPEC.md §5.4: on the air an event before the first TIME is held, then dated by the uptime it happened at;
    without a TIME it goes undated after 60 s (tests/portable/held_event_check.py)."""
    done = run_micropython(micropython, "tests/portable/held_event_check.py", str(tmp_path / "flash"))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["held_return"] == 0  # told to the role as sent: it does not try again

    def events(wires: list[str]) -> list[Message]:
        """The event frames among the uplinks, each counter once (nothing acknowledges them here: resent)."""
        found = {}
        for message in decoded(wires):
            if message.type == messages.READINGS and message.flags & fr.F_PRIORITY:
                found.setdefault(message.counter, message)
        return list(found.values())

    assert events(out["before_time"]) == []  # the node's readings went; its event waited for the clock
    dated = events(out["after_time"])
    assert len(dated) == 1
    # dated when it happened (uptime 5 s), not when the TIME came (20 s) or when it went on air
    assert dated[0].fields["base_time"] == (5000 + out["offset_ms"]) // 1000 == 1700000000 + (5000 - 20000 + 250) // 1000
    assert dated[0].fields["samples"] == [0, 1, 0]
    assert events(out["at_59s"]) == []
    undated = events(out["at_99s"])
    assert len(undated) == 1 and "base_time" not in undated[0].fields

    def time_requests(wires: list[str]) -> list[int]:
        return [m.counter for m in decoded(wires) if m.type == messages.TIME and "unix" not in m.fields]

    # A node with no clock asks for one every 60 s (the gateway owes it no TIME until asked); one with it, not
    asked, most_waiting = out["asked"]
    assert time_requests(asked) and most_waiting == 1 and time_requests(out["at_59s"]) == []
    # A request waiting to go stands for the next: none is made and dropped unsent, whose counter the gateway would
    # count as a frame lost (its delivery ratio, MISSING)
    idle, wires, following = out["spent"]
    on_air = {message.counter for message in decoded(wires)}
    assert idle and on_air == set(range(min(on_air), following)), (sorted(on_air), following)
    # On a queue kept full by frames nothing acknowledges, one of those gives way to the request (it comes again when
    # due), and the request goes before them; one given way would be lost, with its counter
    dropped, wires, waiting, kept, following = out["crowded"]
    on_air = {message.counter for message in decoded(wires)}
    assert dropped and time_requests(wires) and on_air | set(waiting) | set(kept) == set(range(1, following)), (on_air, waiting, kept)
    assert time_requests(out["after_time"] + out["later"]) == []


def test_a_radio_nodes_status_goes_once_it_has_the_time_and_until_acknowledged_on_micropython(micropython: str, tmp_path: Path) -> None:
    """SPEC.md §5.11: a radio node's first STATUS follows its first TIME, not a status_interval after its boot, asks
    for an ACK and goes again until it has one (tests/portable/radio_status_check.py)."""
    done = run_micropython(micropython, "tests/portable/radio_status_check.py", str(tmp_path / "flash"))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)

    def statuses(wires: list[str]) -> list[Message]:
        return [message for message in decoded(wires) if message.type == messages.STATUS]

    assert statuses(out["before_time"]) == []  # its interval is a day: none before the TIME
    sent = statuses(out["unanswered"])
    assert len(sent) >= 2 and len({message.counter for message in sent}) == 1, sent  # one STATUS, sent again
    assert sent[0].flags & fr.F_ACK_REQ and upstream.air_names(sent[0].fields["air"])["tx"] >= 1  # its radio's figures after the HELLO
    assert all(isinstance(key, int) for key in sent[0].fields["air"])  # numbered: on the air bytes are airtime
    # A STATUS due while the last still waits to go, never on air: that one goes for it. A counter spent on a frame
    # dropped unsent would count as a frame lost in the gateway's delivery ratio and MISSING
    (first, following, waiting), after = out["unsent"]
    assert first is not None and waiting and after == [first, following]
    assert out["superseded"] == [False, True]  # one that went on air unacknowledged: forgotten, not sent after the newer
    on_air, first, newer = out["on_air"]
    assert on_air and newer > first  # so is one on air for the first time, its windows still to close
    newer = statuses(out["next"])
    assert newer and len({message.counter for message in newer}) == 1 and newer[0].counter > sent[0].counter, newer
    assert statuses(out["after_ack"]) == []  # acknowledged: not sent again, and the next is a day away
    # A node with no clock does not ask while an uplink's windows may still bring the TIME; once they closed, it does
    late = out["late_asks"]
    assert all(not asked for answering, asked in late if answering) and late[0][0] and late[-1] == [False, True], late
