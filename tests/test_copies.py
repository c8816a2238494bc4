"""gateway/copies.py: which bridge's copy of a radio node's frame is its transmission's best, and which
transmissions describe the node's link (issue 15). Sessions' use of it: tests/test_bridged.py."""

from __future__ import annotations

from gateway.copies import COPY_SPAN_S, KEPT, Copy, Transmissions


def test_copies_within_the_span_are_one_transmission_and_the_strongest_is_best() -> None:
    now = [100.0]
    seen = Transmissions(clock=lambda: now[0])
    assert seen.copy(5, -110, new=True) == Copy(best=True, first=True, again=False)
    now[0] += 0.4
    assert seen.copy(5, -100, new=True) == Copy(best=True, first=True, again=True)  # stronger, not yet committed
    now[0] += 0.4
    assert seen.copy(5, -105, new=False) == Copy(best=False, first=True, again=True)  # weaker than -100
    assert seen.copy(5, -100, new=False).best is False  # as strong is not better: the link stays


def test_the_same_counter_later_is_another_transmission_first_only_if_the_counter_was_new() -> None:
    now = [0.0]
    seen = Transmissions(clock=lambda: now[0])
    seen.copy(7, -90, new=True)
    now[0] += COPY_SPAN_S + 0.1  # the node's retransmission (its ACK was lost), or a replay: the gateway has it
    assert seen.copy(7, -120, new=False) == Copy(best=True, first=False, again=False)  # weaker, but the only copy of it
    assert seen.copy(7, -60, new=False) == Copy(best=True, first=False, again=True)
    now[0] += COPY_SPAN_S + 0.1  # lost the first time, heard now: the counter's first transmission heard
    assert seen.copy(8, -95, new=True) == Copy(best=True, first=True, again=False)


def test_it_remembers_the_latest_counters_only() -> None:
    seen = Transmissions(clock=lambda: 0.0)
    for counter in range(KEPT + 10):
        seen.copy(counter, -100, new=True)
    assert len(seen._seen) == KEPT and 9 not in seen._seen and KEPT + 9 in seen._seen
    assert seen.copy(0, -130, new=False) == Copy(best=True, first=False, again=False)  # forgotten: its own transmission
