"""Reconnect backoff: exponential, capped, and spread out so a city's gateways do not return at once."""

from __future__ import annotations

import random
import statistics

from gateway.uplink import backoff_delay


def test_backoff_grows_exponentially_and_is_capped() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(0, 1), (1, 2), (3, 8), (6, 60), (40, 60)]:
        delays = [backoff_delay(attempt, 60, rng) for _ in range(500)]
        assert 0.1 * ceiling <= min(delays) and max(delays) <= ceiling


def test_a_thousand_gateways_spread_their_reconnects() -> None:
    """After a broker restart, 1,000 gateways at attempt 6 land over most of a minute, not in one second."""
    rng = random.Random(7)
    delays = sorted(backoff_delay(6, 60, rng) for _ in range(1000))
    busiest_second = max(sum(1 for d in delays if s <= d < s + 1) for s in range(60))
    assert busiest_second < 40  # uniform over ~54 s would be ~19 per second
    assert statistics.pstdev(delays) > 10
