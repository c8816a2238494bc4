"""tree-health, shortened, end to end
(tests/test_hil_radio_e2e.py says how; a file of its own so that make test's workers run the three radio
scenarios side by side: each is minutes of duty cycle)."""

from __future__ import annotations

import pytest

from tests.test_hil_radio_e2e import RunScenario, every_reading_once, the_air_was_kept, untimed_checks_pass

pytestmark = [pytest.mark.hil, pytest.mark.micropython, pytest.mark.processes]


def test_tree_health_probes_lose_nothing_and_get_a_battery_life_from_what_they_measured(hil_scenario: RunScenario) -> None:
    report = hil_scenario("tree-health", shortened=True)
    untimed_checks_pass(report)
    every_reading_once(report)
    the_air_was_kept(report, {7, 8}, bridges=4)  # SF7 and SF8 on each of two channels
    air = report.air
    assert air is not None
    # Estimated for a probe with two uplinks or more between its first and last STATUS (two minutes are short
    # for that; the full version requires it of every probe). A round a minute and a STATUS every 40 s, each frame
    # waiting for its duty cycle: weeks to months of an AA cell
    assert air.years and all(0.005 < years < 5 for years in air.years.values()), air.years
