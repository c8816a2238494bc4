"""flood-warning-radio, shortened, end to end
(tests/test_hil_radio_e2e.py says how; a file of its own so that make test's workers run the three radio
scenarios side by side: each is minutes of duty cycle)."""

from __future__ import annotations

import pytest

from tests.test_hil_radio_e2e import RunScenario, the_air_was_kept, untimed_checks_pass

pytestmark = [pytest.mark.hil, pytest.mark.micropython, pytest.mark.processes]


def test_flood_warning_over_the_air_every_alarm_arrives_in_order_through_a_broker_outage(hil_scenario: RunScenario) -> None:
    report = hil_scenario("flood-warning-radio", shortened=True)
    untimed_checks_pass(report)
    events = report.events
    assert events is not None
    gauges = report.roles["gauge"]
    assert (events.occurred, events.delivered, events.lost) == (2 * gauges, 2 * gauges, 0), "a flood began and ended at each"
    assert events.out_of_order == 0 and events.duplicated == 0 and events.unexpected == 0
    assert events.held > 0, "some crossings came while the broker was away"
    the_air_was_kept(report, {7})
