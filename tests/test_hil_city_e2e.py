"""The city scenarios of issue 13 end to end, in their [shortened] versions (hil/scenarios/*.toml say how each is
shortened): real role firmware on MicroPython -> serial -> `edgegw run` -> mosquitto, commands over MQTT, events.

The full versions (the issue's numbers: 50 lamps, a 10-minute outage, 200 bays) run with
`edgegw hil run street-lights` (flood-warning, parking-rush); docs/HIL.md says what they cost. Every criterion is
computed from observations by hil/outcomes.py; these tests read the report. The criteria that are limits on time
(commands within 30 s, events within 2 s at p99) are printed here but not asserted: a loaded CI machine may miss
them without anything being wrong (`edgegw hil run` judges them); everything else is asserted.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hil.city_report import CityReport
from tests.conftest import ROOT

pytestmark = pytest.mark.hil

RunScenario = Callable[..., CityReport]


def needs(*pieces: str) -> None:
    """Fail at once, naming what is missing, when a piece of issue 13 these scenarios exercise is not here yet."""
    node = (ROOT / "firmware" / "node.py").read_text()
    present = {
        "events": "def event(" in node,
        "gateway commands": (ROOT / "gateway" / "commands.py").exists(),
        "node commands": '"COMMANDS"' in node,
    }
    what = {
        "events": "the node's events: node.event() in firmware/node.py (helper proto, NODE-API.md)",
        "gateway commands": "the command life cycle: gateway/commands.py (helper gwcmd)",
        "node commands": "the roles' COMMANDS answered by the node: firmware/node.py (helper proto, NODE-API.md)",
    }
    missing = [what[piece] for piece in pieces if not present[piece]]
    if missing:
        pytest.fail("waiting for %s" % "; ".join(missing), pytrace=False)


def untimed_checks_pass(report: CityReport) -> None:
    print(report.summary())
    failed = [check for check in report.checks if check.failure and not check.timed]
    assert not failed, report.summary()
    assert any(check.timed for check in report.checks) or report.scenario == "parking-rush"


def test_street_lights_every_dim_succeeds_and_each_lamp_changes_once_per_command_through_a_gateway_kill_and_a_broker_restart(
    hil_scenario: RunScenario,
) -> None:
    needs("gateway commands", "node commands")
    report = hil_scenario("street-lights", shortened=True)
    untimed_checks_pass(report)
    commands = report.commands
    assert commands is not None
    lamps = report.roles["streetlight"]
    assert commands.commanded == commands.succeeded == commands.executed == 3 * lamps, report.summary()
    assert commands.executed_twice == 0 and commands.unexplained == 0 and commands.lost == 0
    assert {"gateway_kill", "broker_restart"} <= {fault.split()[0] for fault in report.faults}


def test_flood_warning_alarms_overtake_the_backlog_and_none_is_lost_with_the_buffer_full(hil_scenario: RunScenario) -> None:
    needs("events")
    report = hil_scenario("flood-warning", shortened=True)
    untimed_checks_pass(report)
    events = report.events
    assert events is not None and report.buffer_full
    gauges = report.roles["gauge"]
    assert (events.occurred, events.delivered, events.lost) == (4 * gauges, 4 * gauges, 0), "two waves: flood on and off at every gauge"
    assert events.held == 2 * gauges, "the first wave's events waited out the outage (judged for loss, not latency)"
    assert len(events.judged) == 2 * gauges, "the second wave's: judged by latency"


def test_parking_rush_every_occupancy_change_is_delivered_in_order_per_bay(hil_scenario: RunScenario) -> None:
    needs("events")
    report = hil_scenario("parking-rush", shortened=True)
    untimed_checks_pass(report)
    events = report.events
    assert events is not None
    bays = report.roles["parking"]
    assert events.occurred == events.delivered == 2 * round(bays * 0.8), "80 % of the bays: a car arrives and leaves"
    assert events.out_of_order == 0 and events.lost == 0 and events.unexpected == 0
