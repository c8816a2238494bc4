"""parking-radio, shortened, end to end: the parking role over the air (tests/test_hil_radio_e2e.py says how; a
file of its own so that make test's workers run the radio scenarios side by side: each is minutes of duty cycle)."""

from __future__ import annotations

import pytest

from tests.test_hil_radio_e2e import RunScenario, every_reading_once, the_air_was_kept, untimed_checks_pass

pytestmark = [pytest.mark.hil, pytest.mark.micropython, pytest.mark.processes]


def test_parking_bays_over_the_air_every_occupancy_change_arrives_in_order(hil_scenario: RunScenario) -> None:
    report = hil_scenario("parking-radio", shortened=True)
    untimed_checks_pass(report)
    events = report.events
    assert events is not None
    bays = report.roles["parking"]
    assert events.occurred == events.delivered == 2 * round(bays * 0.75), "a car comes to 3 of the 4 bays, and leaves"
    assert events.out_of_order == 0 and events.lost == 0 and events.duplicated == 0 and events.unexpected == 0
    every_reading_once(report)
    the_air_was_kept(report, {7})
