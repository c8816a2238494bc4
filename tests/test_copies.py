"""gateway/copies.py: which bridge's copy of a radio node's frame is its transmission's best, and which
transmissions describe the node's link (issue 15). Sessions' use of it: tests/test_bridged.py."""

from __future__ import annotations

from gateway.copies import COPY_SPAN_S, KEPT, Copy, Transmissions
from protocols.airtime import airtime_us

SF9 = (9, 868_100_000)


def test_copies_that_ended_together_are_one_transmission_and_the_strongest_is_best() -> None:
    now = [100.0]
    seen = Transmissions(clock=lambda: now[0])
    assert seen.copy(5, -110, True, SF9, late_s=None) == Copy(best=True, first=True, again=False, answered=False)
    now[0] += 0.4
    # stronger, not yet committed; the first copy's bridge gave no time, so nothing answers it yet
    assert seen.copy(5, -100, True, SF9, late_s=0.0) == Copy(best=True, first=True, again=True, answered=False)
    now[0] += 0.4
    assert seen.copy(5, -105, False, SF9, late_s=0.0) == Copy(best=False, first=True, again=True, answered=True)
    assert seen.copy(5, -100, False, SF9, late_s=0.0).best is False  # as strong is not better: the link stays
    # A report that came 10 s late (a serial line that resent it, a busy gateway) ended with the others
    now[0] += 10
    assert seen.copy(5, -90, False, SF9, late_s=10.5) == Copy(best=True, first=True, again=True, answered=True)


def test_a_copy_on_another_sf_or_channel_is_not_the_nodes() -> None:
    seen = Transmissions(clock=lambda: 0.0)
    seen.copy(5, -110, True, SF9, late_s=0.0)
    assert seen.copy(5, -40, True, (7, 868_100_000), late_s=0.0) == Copy(best=False, first=False, again=True, answered=True)
    assert seen.copy(5, -40, True, (9, 868_300_000), late_s=0.0).best is False


def test_the_same_counter_later_is_another_transmission_first_only_if_the_counter_was_new() -> None:
    now = [0.0]
    seen = Transmissions(clock=lambda: now[0])
    seen.copy(7, -90, True, SF9, late_s=0.0)
    now[0] += COPY_SPAN_S + 0.1  # the node's retransmission (its ACK was lost), or a replay: the gateway has it
    assert seen.copy(7, -120, False, SF9, late_s=0.0) == Copy(best=True, first=False, again=False, answered=False)
    assert seen.copy(7, -60, False, SF9, late_s=0.0) == Copy(best=True, first=False, again=True, answered=True)
    now[0] += COPY_SPAN_S + 0.1  # lost the first time, heard now: the counter's first transmission heard
    assert seen.copy(8, -95, True, SF9, late_s=0.0) == Copy(best=True, first=True, again=False, answered=False)


def test_it_remembers_the_latest_counters_only() -> None:
    seen = Transmissions(clock=lambda: 0.0)
    for counter in range(KEPT + 10):
        seen.copy(counter, -100, True, SF9, late_s=0.0)
    assert len(seen._seen) == KEPT and 9 not in seen._seen and KEPT + 9 in seen._seen
    assert seen.copy(0, -130, False, SF9, late_s=0.0) == Copy(best=True, first=False, again=False, answered=False)


def test_a_copy_whose_bridge_opened_a_window_is_better_than_a_stronger_one_without() -> None:
    seen = Transmissions(clock=lambda: 0.0)
    seen.copy(5, -90, True, SF9, late_s=None)  # a bridge that says not when it heard it cannot answer in a window
    assert seen.copy(5, -110, True, SF9, late_s=0.0).best is True
    assert seen.copy(5, -80, False, SF9, late_s=None).best is False


def test_a_node_keeping_its_duty_cycle_is_never_over_and_one_past_twice_it_is_until_its_hour_clears() -> None:
    """SPEC.md §5.11: a node heard on air for more than twice its 1 % over the last hour: its transmissions past that
    are `over` (not answered), and its copies with them; under it again once its hour holds less."""
    airtime = airtime_us(40, 12)  # a 40-byte frame at SF12: 1.8 s on air
    spacing = airtime * 100 / 1e6  # the node's time-off at 1 %: start to start, 100 airtimes
    now = [10.0]
    keeping = Transmissions(clock=lambda: now[0])
    for counter in range(int(2 * 3600 / spacing)):  # two hours at the full 1 %, every transmission heard
        assert keeping.copy(counter, -120, True, SF9, late_s=None, airtime_us=airtime).over is False
        now[0] += spacing
    now[0] = 10.0
    broken = Transmissions(clock=lambda: now[0])
    verdicts = []
    for counter in range(200):  # one every 2 s: a node that keeps no time-off
        verdicts.append(broken.copy(counter, -120, True, SF9, late_s=None, airtime_us=airtime).over)
        assert broken.copy(counter, -110, True, SF9, late_s=0.5, airtime_us=airtime).over is verdicts[-1]  # its copy, alike
        now[0] += 2
    allowed = 36_000 // -(-(airtime // 2) // 1000)  # each at half its airtime (whole ms) against 1 % of an hour, 36 s
    assert verdicts == [False] * allowed + [True] * (200 - allowed)
    now[0] += 3600 + 60  # silent for the hour (and the minute its ring counts by)
    assert broken.copy(500, -120, True, SF9, late_s=None, airtime_us=airtime).over is False


def test_a_copy_near_an_earlier_copy_of_its_transmission_is_of_it_when_another_bridge_was_estimated_far_off() -> None:
    """Three bridges heard one transmission; the second's clock is estimated 4 s off, so its copy starts a
    transmission of its own. The third copy, as the first ended, belongs to the first: one airtime more, not two."""
    now = [100.0]
    seen = Transmissions(clock=lambda: now[0])
    assert seen.copy(5, -110, True, SF9, late_s=0.0, airtime_us=400_000).again is False
    assert seen.copy(5, -105, True, SF9, late_s=4.0, airtime_us=400_000).again is False  # as if it ended 4 s before
    assert seen.copy(5, -100, True, SF9, late_s=0.0, airtime_us=400_000) == Copy(best=True, first=True, again=True, answered=True)


def test_a_transmission_reported_over_an_hour_after_the_latest_is_in_no_hour() -> None:
    """A report held up for over an hour (a bridge's backlog after an outage): its minute is gone from the hour, so it
    is neither judged nor counted; counted in the minute its ring slot now holds, it would take the latest minute's
    room (gateway/copies.py)."""
    now = [10_000.0]
    seen = Transmissions(clock=lambda: now[0])
    assert seen.copy(1, -110, True, SF9, late_s=0.0, airtime_us=60_000_000).over is False  # 30 s of the hour's 36
    assert seen.copy(2, -110, True, SF9, late_s=3661.0, airtime_us=60_000_000).over is False  # ended 61 minutes before
    assert seen.copy(3, -110, True, SF9, late_s=0.0, airtime_us=10_000_000).over is False  # 5 s more: 35 of 36


def test_a_counter_the_window_never_takes_is_new_once_however_often_it_is_played_back() -> None:
    """An uplink ACK's counter never enters the node's window: each copy of it comes as new. Played back, it must not
    fill the hour that decides the node's new frames (SPEC.md §5.11), nor be taken for a measure of its link."""
    now = [100.0]
    seen = Transmissions(clock=lambda: now[0])
    assert seen.copy(2, -110, True, SF9, late_s=0.0, airtime_us=1_000_000).first is True
    for index in range(1000):
        now[0] += 4
        assert seen.copy(2, -60, True, SF9, late_s=0.0, airtime_us=1_000_000).first is False
        if index % 100 == 0:  # between them, recordings of 70 other frames (the window has them): KEPT pushed over
            for other in range(100, 170):
                seen.copy(other, -60, False, SF9, late_s=0.0, airtime_us=100_000)
    # None of the replays is in the hour of new frames: one of 70 s (35 s counted) fits
    assert seen.copy(3, -110, True, SF9, late_s=0.0, airtime_us=70_000_000).over is False
