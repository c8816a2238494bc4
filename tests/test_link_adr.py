"""Link adaptation, the gateway's decision (gateway/link_adr.py, SPEC.md §5.11): the arithmetic of `advise`, and
when LinkAdaptation sends an advice (enough frames, one at a time, not again before ADR_FRAMES at its setting)
and what it learns from the node (STATUS power, CONFIG reports, a fallback). Through the air end to end:
tests/test_bridged.py; on the node: tests/test_radio.py."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.command_book import EXPIRED, FAILED, SUCCEEDED, Command
from gateway.link_adr import Advice, LinkAdaptation, advise, snr10

NODE = "0000b0b0b0b0b0b1"


# ------------------------------------------------------------ the arithmetic


@pytest.mark.parametrize(
    ("snrs", "power", "sfs", "advice"),
    [
        # 2.5 dB at SF9's floor of -12.5: 15 dB of margin at 14 dBm, 12 at 11, 9 at 8: SF9 (the only one heard), 11 dBm
        ([25], 14, {9}, Advice(9, 11, 12)),
        # -5 dB: 2.5 dB of margin at SF7, 7.5 at SF9, 15 at SF12: the lowest SF with 10 dB is SF12, then 11 dBm
        ([-50], 14, {7, 9, 12}, Advice(12, 11, 12)),
        # ... and with no bridge on SF12 the highest SF a bridge listens on, at full power, 7.5 dB short
        ([-50], 14, {7, 9}, Advice(9, 14, 7)),
        # 0 dB heard at 5 dBm is 9 dB at 14: 16.5 dB of margin at SF7, 10.5 at 8 dBm (7.5 at 5: too little)
        ([0], 5, {7}, Advice(7, 8, 10)),
        # SPEC.md §5.11's example: the best frame of those kept counts (LoRaWAN's max of the last frames)
        ([-200, 25, 0], 14, {9}, Advice(9, 11, 12)),
        # 20 dB: 15.5 dB left even at 2 dBm, the lowest power advised
        ([200], 14, {7}, Advice(7, 2, 15)),
        # a margin short of zero is rounded down: -5.3 dB is -6
        ([snr10(-25.25)], 14, {12}, Advice(12, 14, -6)),
        # SFs outside 7-12 are no SF a node may be advised
        ([25], 14, {6, 9, 13}, Advice(9, 11, 12)),
    ],
)
def test_the_setting_advised(snrs: list[int], power: int, sfs: set[int], advice: Advice) -> None:
    assert advise(snrs, power, sfs) == advice


def test_nothing_is_advised_without_frames_or_bridges() -> None:
    assert advise([], 14, {9}) is None
    assert advise([25], 14, set()) is None
    assert advise([25], 14, {13}) is None


def test_snr_in_tenths_is_rounded_down() -> None:
    assert [snr10(x) for x in (2.5, -7.25, -7.5, 0.0, 10.75)] == [25, -73, -75, 0, 107]


# ------------------------------------------------------------ when an advice goes


class Bench:
    def __init__(self, sfs: set[int] | None = None) -> None:
        self.sfs = {9} if sfs is None else sfs
        self.adr = LinkAdaptation(lambda: self.sfs)
        self.sent: list[tuple[str, str, str, dict[str, Any], float]] = []
        self.adr.submit = lambda *args: self.sent.append(args)
        self.counter = 0

    def frames(self, count: int, snr: float = 2.5, sf: int = 9) -> None:
        for _ in range(count):
            self.counter += 1
            self.adr.heard(NODE, self.counter, snr, sf)

    def finish(self, state: str, error: str | None = None) -> Command:
        node, command_id, name, args, _ttl = self.sent[-1]
        command = Command(node, command_id, name, args, 0.0, state, 0.0, error=error)
        self.adr.finished(command)
        return command


def test_an_advice_goes_after_four_frames_and_not_again_while_it_is_under_way() -> None:
    bench = Bench()
    bench.frames(3)
    assert bench.sent == []  # three frames are too few to go on
    bench.frames(1)
    ((node, command_id, name, args, ttl),) = bench.sent
    assert (node, name, args) == (NODE, "config", {"sf": 9, "tx_power": 11, "margin_db": 12})
    assert command_id.startswith("adr:") and ttl > 0
    bench.frames(30, snr=-10.0)  # the link got far worse meanwhile: still one advice at a time
    assert len(bench.sent) == 1


def test_a_link_short_of_margin_is_advised_full_power_never_a_higher_sf() -> None:
    bench = Bench({7, 9, 12})
    bench.adr.status(NODE, {"sf": 9, "power": 11, "fallback": 0})
    bench.frames(4, snr=-5.0)  # 4.5 dB of margin at SF9 and 11 dBm; SF12 would leave 15, but the link delivers
    assert [args for *_, args, _ in bench.sent] == [{"sf": 9, "tx_power": 14, "margin_db": 10}]
    bench.finish(SUCCEEDED)
    bench.frames(10, snr=-8.0, sf=9)  # 4.5 dB at full power: short, and nothing else to advise
    assert len(bench.sent) == 1 and bench.adr.summary(NODE) == {"advised_sf": 9, "advised_power": 14}
    far = Bench({9, 10, 11, 12})
    far.frames(4, snr=0.0, sf=12)  # 20 dB of margin at SF12: down it goes, to the lowest SF that leaves 10
    assert [args for *_, args, _ in far.sent] == [{"sf": 9, "tx_power": 14, "margin_db": 12}]  # 12.5 dB at SF9


def test_the_best_copy_of_a_frame_counts() -> None:
    bench = Bench()
    for counter in range(1, 5):
        bench.adr.heard(NODE, counter, -10.0, 9)  # a far bridge: 2.5 dB of margin at SF9
        bench.adr.heard(NODE, counter, 2.5, 9)  # a near one: 15 dB
    assert [args for *_, args, _ in bench.sent] == [{"sf": 9, "tx_power": 11, "margin_db": 12}]


def test_after_an_advice_the_next_waits_for_ten_frames_at_its_setting() -> None:
    bench = Bench()
    bench.frames(4)
    bench.finish(SUCCEEDED)  # the node took SF9 at 11 dBm
    bench.frames(9, snr=-3.5)  # 9 dB of margin at 11 dBm: too little, but 9 frames are not enough after an advice
    assert len(bench.sent) == 1
    bench.frames(1, snr=-3.5)
    assert bench.sent[-1][3] == {"sf": 9, "tx_power": 14, "margin_db": 12}  # full power: -0.5 dB brought to 14
    bench.finish(SUCCEEDED)
    bench.frames(20, snr=-0.5)  # what full power gives: the setting it has, nothing sent
    assert len(bench.sent) == 2


def test_the_node_power_is_learned_and_a_change_by_itself_drops_what_was_heard() -> None:
    bench = Bench()
    bench.adr.status(NODE, {"sf": 9, "power": 5, "fallback": 0})  # STATUS: it sends at 5 dBm
    bench.frames(4, snr=-4.0)  # at 5 dBm: 5 dB at 14, 17.5 dB of margin at SF9: 11.5 left at 8 dBm
    assert bench.sent[-1][3] == {"sf": 9, "tx_power": 8, "margin_db": 11}
    bench.finish(FAILED, "sf: rejected")  # a node without link adaptation: never advised again
    bench.frames(20, snr=-15.0)
    assert len(bench.sent) == 1

    other = Bench()
    other.frames(3)
    other.adr.reported(NODE, {"interval": 10, "sf": 9, "tx_power": 8})  # an operator set 8 dBm: frames before are old
    other.frames(3)
    assert other.sent == []
    other.frames(1)
    assert other.sent[-1][3] == {"sf": 9, "tx_power": 5, "margin_db": 12}  # 2.5 dB at 8 dBm is 8.5 at 14: 21 dB over SF9


def test_an_sf_the_node_fell_back_from_is_not_advised_again() -> None:
    bench = Bench({7, 9})
    bench.adr.status(NODE, {"sf": 9, "power": 14, "fallback": 0})
    bench.frames(4, snr=5.0)
    assert bench.sent[-1][3] == {"sf": 7, "tx_power": 14, "margin_db": 12}  # 12.5 dB at SF7: no power to spare
    bench.finish(SUCCEEDED)
    # No bridge in range hears it at SF7 (the SF7 bridge is elsewhere): 32 silent uplinks, back at SF9
    bench.frames(9, snr=5.0, sf=9)  # its own change: what was heard goes, and an advice waits for 10 frames
    assert len(bench.sent) == 1
    bench.adr.status(NODE, {"sf": 9, "power": 14, "fallback": 1})  # it says it fell back
    bench.frames(9, snr=5.0, sf=9)
    assert len(bench.sent) == 1  # after a fallback the next advice waits for ten frames too
    bench.frames(1, snr=5.0, sf=9)
    assert bench.sent[-1][3] == {"sf": 9, "tx_power": 8, "margin_db": 11}  # power only: SF7 is out for this node


def test_a_fallback_reported_before_the_advice_was_answered_still_excludes_its_sf() -> None:
    bench = Bench({7, 9})
    bench.adr.status(NODE, {"sf": 9, "power": 14, "fallback": 0})
    bench.frames(4, snr=5.0)
    assert bench.sent[-1][3]["sf"] == 7
    bench.adr.status(NODE, {"sf": 9, "power": 14, "fallback": 1})  # its report of the advice was lost on the way
    bench.finish(SUCCEEDED)  # ... or came after
    bench.frames(10, snr=5.0, sf=9)
    assert len(bench.sent) == 2 and bench.sent[1][3]["sf"] == 9


def test_a_power_the_node_fell_back_from_is_not_advised_again() -> None:
    """At its own SF: the advised power was too little (or its downlinks too few); the next advice stays above it."""
    bench = Bench({9})
    bench.adr.status(NODE, {"sf": 9, "power": 14, "fallback": 0})
    bench.frames(4, snr=5.0, sf=9)
    assert bench.sent[-1][3] == {"sf": 9, "tx_power": 8, "margin_db": 11}
    bench.finish(SUCCEEDED)
    bench.adr.status(NODE, {"sf": 9, "power": 14, "fallback": 1})
    bench.frames(10, snr=5.0, sf=9)
    assert bench.sent[-1][3] == {"sf": 9, "tx_power": 11, "margin_db": 14}  # 8 dBm failed: 11 at least
    bench.finish(SUCCEEDED)
    bench.adr.status(NODE, {"sf": 9, "power": 14, "fallback": 2})
    bench.frames(10, snr=5.0, sf=9)
    assert len(bench.sent) == 2  # 14 dBm is its own setting: nothing left to advise


def test_an_snr_no_radio_gives_is_ignored() -> None:
    bench = Bench()
    bench.frames(4, snr=1e300)
    bench.adr.status(NODE, {"power": -1000})
    bench.frames(4, snr=-5000.0)
    assert bench.sent == [] and bench.adr.summary(NODE) == {}


def test_an_expired_advice_leaves_the_power_unknown() -> None:
    bench = Bench()
    bench.adr.status(NODE, {"power": 5})
    bench.frames(4, snr=-4.0)
    bench.finish(EXPIRED)  # it may have taken 8 dBm and its answer was lost: full power is assumed
    bench.frames(9)
    assert len(bench.sent) == 1  # an advice was sent: ten frames before the next
    bench.frames(1)
    assert bench.sent[-1][3] == {"sf": 9, "tx_power": 11, "margin_db": 12}  # at 5 dBm it would have been 2 dBm
