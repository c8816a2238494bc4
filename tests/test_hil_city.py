"""The city scenarios' harness without the whole chain: schema, the command client, the world's files, the
judgement of commands and events from synthetic observations, the reports. End to end: tests/test_hil_city_e2e.py."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hil.broker import Mosquitto
from hil.city_report import CityReport
from hil.commander import Commander, CommandTrack, Issued, StateSeen, parse_state
from hil.outcomes import EventSeen, analyse_commands, analyse_events, judge, split_latency, state_changes
from hil.scenario import ScenarioError, load_scenario, parse_scenario
from hil.timeline import PassCriteria, WorldStep
from hil.world import World, car_plan, water_profile

SCENARIOS = Path(__file__).resolve().parent.parent / "hil" / "scenarios"
CITY = ("street-lights", "flood-warning", "parking-rush")


def test_the_city_scenarios_keep_the_issues_numbers_and_have_a_shortened_version() -> None:
    lights, flood, parking = (load_scenario(SCENARIOS / ("%s.toml" % name)) for name in CITY)
    assert lights.node_roles == ["streetlight"] * 50
    assert (lights.commands[0].name, lights.commands[0].args, len(lights.commands[0].nodes)) == ("dim", {"level": 40}, 50)
    assert lights.commands[0].within_s == 30
    assert {f.kind for f in lights.faults} == {"gateway_kill", "broker_restart"}
    (kill,) = [f for f in lights.faults if f.kind == "gateway_kill"]
    assert any(c.at < kill.at < c.at + 5 for c in lights.commands), "the gateway dies in the middle of a round of commands"
    assert lights.criteria.changes_per_command == "level"
    (outage,) = flood.faults
    assert outage.kind == "broker_down" and outage.duration == 600
    assert flood.criteria.event_p99_s == 2.0 and flood.criteria.buffer_full and flood.gateway.when_full == "drop_oldest"
    assert any(outage.at < w.at and w.end < outage.end for w in flood.world), "a wave while the broker is away"
    assert any(outage.end <= w.at + w.duration / 2 for w in flood.world), "a wave crossing the mark after it is back"
    assert parking.node_roles.count("parking") == 200
    (cars,) = parking.world
    assert cars.fraction == 0.8 and cars.duration == 60 and parking.criteria.events_in_order
    for name in CITY:
        full, short = load_scenario(SCENARIOS / ("%s.toml" % name)), load_scenario(SCENARIOS / ("%s.toml" % name), shortened=True)
        assert short.variant == "shortened" and full.variant == "full" and short.name == full.name == name
        assert short.nodes < full.nodes and short.duration + short.settle < full.duration + full.settle
        assert short.criteria == full.criteria, "make test judges by the same criteria"


BASE: dict[str, Any] = {"duration": 30, "roles": [{"role": "streetlight", "count": 2}, {"role": "gauge", "count": 1}]}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"roles": [{"role": "lamp", "count": 2}]},
            "roles #1: 'role' must be one of sensor, streetlight, gauge, parking, lora_sensor, not 'lamp'",
        ),
        ({"roles": [{"role": "gauge"}]}, "roles #1: needs 'role' and 'count'"),
        ({"roles": [{"role": "gauge", "count": 0}]}, "roles #1: 'count' must be at least 1"),
        ({"roles": [{"role": "gauge", "count": 2, "colour": 1}]}, "roles #1: unknown key 'colour'"),
        ({"nodes": 5}, "scenario: 'nodes' is 5 but the [[roles]] count 3 nodes"),
        ({"commands": [{"at": 1, "id": "a", "name": "dim", "nodes": "parking"}]}, "commands #1: 'nodes' names the role 'parking', but no"),
        ({"commands": [{"at": 1, "id": "a b", "name": "dim"}]}, "commands #1: 'id' must be 1-56 of"),
        ({"commands": [{"at": 1, "name": "dim"}]}, "commands #1: needs 'id'"),
        ({"commands": [{"at": 40, "id": "a", "name": "dim"}]}, "commands #1: 'at' must be within the timeline, 0..30 s"),
        ({"commands": [{"at": 1, "id": "a", "name": "dim", "args": 4}]}, "commands #1: 'args' must be table, not 4"),
        ({"commands": [{"at": 1, "id": "a", "name": "x"}, {"at": 2, "id": "a", "name": "y"}]}, "commands #2: 'id' 'a' is used by"),
        ({"commands": [{"at": 1, "id": "a", "name": "x", "nodes": [0, 7]}]}, "commands #1: 'nodes' must list node indexes 0..2"),
        ({"commands": [{"at": 1, "id": "a", "name": "x", "within_s": 0}]}, "commands #1: 'within_s' must be above 0"),
        ({"world": [{"kind": "tsunami", "at": 1}]}, "world #1: 'kind' must be one of water_wave, cars, lamp_failure"),
        ({"world": [{"kind": "cars", "at": 1}]}, "world #1: 'nodes' names the role 'parking', but no [[roles]] entry has it"),
        ({"world": [{"kind": "water_wave", "at": 1, "nodes": [0], "duration": 5}]}, "world #1: water_wave acts on gauge nodes; nodes [0]"),
        ({"world": [{"kind": "water_wave", "at": 1, "duration": 5, "fraction": 0.5}]}, "world #1: 'fraction' is not a key of water_wave"),
        ({"world": [{"kind": "water_wave", "at": 1}]}, "world #1: a water_wave needs 'duration' above 0"),
        ({"world": [{"kind": "water_wave", "at": 20, "duration": 20}]}, "world #1: ends at 40 s, after the timeline"),
        ({"pass": {"event_p99_s": "2"}}, "pass: 'event_p99_s' must be int or float"),
        ({"pass": {"events_in_order": 1}}, "pass: 'events_in_order' must be bool"),
        ({"pass": {"latency": 1}}, "pass: unknown key 'latency'"),
        ({"gateway": {"when_full": "panic"}}, "gateway: 'when_full' must be drop_oldest or stop_acking"),
        ({"gateway": {"max_bytes": 1000}}, "gateway: 'max_bytes' must be at least 524288"),
        ({"faults": [{"kind": "broker_restart", "at": 3}, {"kind": "broker_restart", "at": 3}]}, "faults #2: overlaps an earlier"),
    ],
)
def test_a_bad_city_scenario_names_the_key(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario({**BASE, **extra})
    assert message in str(caught.value)


def test_commands_need_roles_and_the_shortened_table_is_checked_too(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"\[\[commands\]\] and \[\[world\]\] need \[\[roles\]\]"):
        parse_scenario({"duration": 10, "commands": [{"at": 1, "id": "a", "name": "x"}]})
    with pytest.raises(ScenarioError, match="no \\[shortened\\] table"):
        parse_scenario(BASE, shortened=True)
    with pytest.raises(ScenarioError, match="roles #1: 'count' must be at least 1"):
        parse_scenario({**BASE, "shortened": {"roles": [{"role": "gauge", "count": 0}]}}, shortened=True)
    short = parse_scenario({**BASE, "shortened": {"duration": 12, "roles": [{"role": "gauge", "count": 1}]}}, shortened=True)
    assert (short.duration, short.node_roles, short.variant) == (12, ["gauge"], "shortened")
    path = tmp_path / "city.toml"
    path.write_text('duration = 10\n[[roles]]\nrole = "parking"\ncount = 3\n[[world]]\nkind = "cars"\nat = 1\nduration = 5\n')
    (cars,) = load_scenario(path).world
    assert cars.nodes == (0, 1, 2) and cars.fraction == 0.8, "a world step acts on its role's nodes unless told"


def issued(node: str, command: str, at: float, **args: Any) -> Issued:
    return Issued(node, command, "dim", args, at)


def states(track: CommandTrack, *seen: tuple[str, float]) -> CommandTrack:
    for state, at in seen:
        track.states.append(
            StateSeen(
                track.issued.node, track.issued.id, state, at, False, {"state": state, "error": "boom" if state == "failed" else None}
            )
        )
    return track


def test_commands_succeeded_late_lost_and_executed_from_the_lamps_own_record() -> None:
    tracks = [
        states(CommandTrack(issued("a", "dim40-0", 10.0, level=40)), ("queued", 10.1), ("sent", 10.2), ("succeeded", 12.0)),
        states(CommandTrack(issued("b", "dim40-1", 10.0, level=40)), ("queued", 10.1), ("succeeded", 45.0)),  # late
        states(CommandTrack(issued("c", "dim40-2", 10.0, level=40)), ("queued", 10.1), ("failed", 11.0)),
        states(CommandTrack(issued("d", "dim40-3", 10.0, level=40)), ("queued", 10.1)),  # never final
        states(CommandTrack(issued("a", "dim70-0", 50.0, level=70)), ("succeeded", 53.0), ("succeeded", 60.0)),  # retained again
    ]
    records = {
        "a": [(11.9, 40), (52.0, 70)],  # once each
        "b": [(40.0, 40), (41.0, 40)],  # executed twice
        "c": [],  # never ran
        "d": [(5.0, 100), (30.0, 40)],  # a change before the first command (5 s < 10 s - slack) no command explains
    }
    within: dict[str, float | None] = {"dim40-%d" % i: 30.0 for i in range(4)} | {"dim70-0": None}
    outcome = analyse_commands(tracks, within, records, "level")
    assert (outcome.commanded, outcome.succeeded, outcome.late, outcome.lost) == (5, 3, 1, 2)
    assert outcome.finals == {"succeeded": 3, "failed": 1, "queued": 1}
    assert sorted(outcome.latencies) == [2.0, 3.0, 35.0], "the first `succeeded` counts, not a retained copy"
    assert outcome.executed == 4 and outcome.executed_twice == 1 and outcome.unexplained == 1
    problems: dict[tuple[str, str], list[str]] = {}
    for p in outcome.problems:
        problems.setdefault((p.node, p.id), []).append(p.problem)
    assert problems[("b", "dim40-1")] == ["late (limit 30 s)", "executed 2 times (level = 40 in the node's record)"]
    assert problems[("c", "dim40-2")] == ["not succeeded", "executed 0 times (level = 40 in the node's record)"]
    assert problems[("d", "dim40-3")] == ["not succeeded"] and not outcome.ok
    assert [p.error for p in outcome.problems if p.id == "dim40-2"] == ["boom", ""], "the failed state's error is kept"
    clean = analyse_commands(tracks[:1] + tracks[-1:], within, {"a": records["a"]}, "level")
    assert clean.ok and clean.executed == 2


def test_events_lost_late_out_of_order_duplicated_unexpected_and_held() -> None:
    changes = {
        "bay1": [(10.0, 1), (20.0, 0), (22.0, 1)],
        "bay2": [(10.0, 1), (20.0, 0)],
        "bay3": [(100.0, 1)],  # during an outage: counted for loss only
    }
    seen = [
        EventSeen("bay1", 1, 1010.0, 10.5),
        EventSeen("bay1", 1, 1010.0, 11.0),  # a copy (at least once)
        EventSeen("bay1", 0, 1020.0, 25.0),  # late (5 s)
        EventSeen("bay1", 1, 1030.0, 24.0),  # arrived before the earlier 0: out of order
        EventSeen("bay2", 1, 2010.0, 10.2),  # bay2's 0 never came
        EventSeen("bay3", 1, 3100.0, 160.0),
        EventSeen("bay4", 1, 4000.0, 5.0),  # nothing in the world explains it
    ]
    outcome = analyse_events(changes, seen, late_after_s=2.0, held=[(90.0, 150.0)])
    assert (outcome.occurred, outcome.delivered, outcome.lost, outcome.duplicated) == (6, 5, 1, 1)
    assert (outcome.late, outcome.out_of_order, outcome.unexpected, outcome.held) == (1, 1, 1, 1)
    assert sorted(outcome.latencies) == pytest.approx([0.2, 0.5, 2.0, 5.0])
    assert 160.0 - 100.0 not in outcome.latencies, "a change while the broker was away is not judged by its latency"
    assert {(p.node, p.problem) for p in outcome.problems} >= {
        ("bay2", "lost"),
        ("bay1", "late"),
        ("bay1", "out of order"),
        ("bay4", "unexpected"),
    }
    assert analyse_events({"x": [(1.0, 1)]}, [EventSeen("x", 1, 5.0, 1.5)], 2.0).p99() == 0.5


def test_only_changes_of_the_channel_count_as_its_events() -> None:
    """A gauge's event carries flood and rise: a rise event repeats flood's value and is not a flood event."""
    seen = [
        EventSeen("g", 0, 5.0, 5.1),  # rise started, flood still 0: no change from the initial 0
        EventSeen("g", 1, 9.0, 9.2),  # flood
        EventSeen("g", 1, 9.0, 9.9),  # its copy
        EventSeen("g", 1, 12.0, 12.1),  # rise ended, flood still 1
        EventSeen("g", 0, 20.0, 20.3),  # flood over
    ]
    kept = state_changes(seen)
    assert [(e.value, e.time) for e in kept] == [(1, 9.0), (1, 9.0), (0, 20.0)]
    outcome = analyse_events({"g": [(8.9, 1), (19.9, 0)]}, kept, 2.0)
    assert (outcome.delivered, outcome.lost, outcome.duplicated, outcome.unexpected) == (2, 0, 1, 0)


def test_the_world_files_the_nodes_read_and_what_is_read_back(tmp_path: Path) -> None:
    dirs = [tmp_path / ("node%d" % i) for i in range(5)]
    for folder in dirs:
        folder.mkdir()
    steps = [
        WorldStep("water_wave", 10.0, (0, 1), duration=20.0, base_m=0.3, peak_m=2.0, stagger_s=3.0),
        WorldStep("cars", 5.0, (2, 3), duration=30.0, fraction=1.0, changes=2),
        WorldStep("lamp_failure", 7.0, (4,)),
    ]
    world = World(steps, dirs, ["gauge", "gauge", "parking", "parking", "streetlight"], seed=3)
    start = time.monotonic()
    actions = world.begin(start)
    assert (dirs[1] / "water.txt").read_text().split() == [
        "%.3f" % (world.clock.wall(start) + 13),
        "300.0",
        "%.3f" % (world.clock.wall(start) + 23),
        "2000.0",
        "%.3f" % (world.clock.wall(start) + 33),
        "300.0",
    ]
    flood = world.flood_changes(1)
    assert [state for _at, state in flood] == [1, 0]
    assert flood[0][0] - start == pytest.approx(13 + 10 * 1200 / 1700, abs=1e-3), "the mark (1500 mm) on the straight rise"
    assert flood[1][0] - start == pytest.approx(23 + 10 * 550 / 1700, abs=1e-3), "under mark - hysteresis (1450 mm) on the fall"
    bay = world.bay_changes(2)
    assert [state for _at, state in bay] == [1, 0] and bay[1][0] - bay[0][0] >= 6.0
    assert not (dirs[4] / "lamp.fault").exists() and [at for at, _action in actions] == [7.0]
    actions[0][1]()
    assert (dirs[4] / "lamp.fault").exists() and [state for _at, state in world.lamp_failures(4)] == [0]
    (dirs[4] / "lamp.log").write_text("%d 100\n%d 40\n" % (world.clock.wall(start) * 1000, (world.clock.wall(start) + 2) * 1000))
    assert [(round(at - start, 2), level) for at, level in world.lamp_levels(4)] == [(0.0, 100), (2.0, 40)]


def test_cars_arrive_on_the_share_of_bays_asked_within_the_window_seeded() -> None:
    step = WorldStep("cars", 10.0, tuple(range(200)), duration=60.0, fraction=0.8)
    plan = car_plan(step, step.nodes, 1000.0, seed=1)
    assert len(plan) == 160 and plan == car_plan(step, step.nodes, 1000.0, seed=1)
    arrivals = [cars[0][0] for cars in plan.values()]
    assert all(1010.0 <= at <= 1070.0 for at in arrivals) and max(arrivals) - min(arrivals) > 50
    assert all(len(cars) == 1 and cars[0][1] is None for cars in plan.values()), "one change each: the car stays"
    assert car_plan(step, step.nodes, 1000.0, seed=2) != plan
    assert water_profile(WorldStep("water_wave", 5.0, (0,), duration=10.0), 2, 100.0) == [(105.0, 300.0), (110.0, 2000.0), (115.0, 300.0)]


def test_judge_and_the_city_report_json_and_junit(tmp_path: Path) -> None:
    tracks = [states(CommandTrack(issued("a", "dim40-0", 0.0, level=40)), ("succeeded", 40.0))]
    commands = analyse_commands(tracks, {"dim40-0": 30.0}, {"a": [(1.0, 40)]}, "level")
    events = analyse_events({"g": [(1.0, 1)]}, [EventSeen("g", 1, 1.0, 4.0)], 2.0)
    criteria = PassCriteria(changes_per_command="level", event_p99_s=2.0, events_from="flood", buffer_full=True)
    checks = judge(criteria, commands, {"dim40-0": 30.0}, events, {"sent": 3, "delivered": 2}, None, buffer_full=False)
    failed = {c.name: c.failure for c in checks if c.failure}
    assert failed == {
        "every command succeeded within 30 s": "1 of 1 did not",
        "events reach the subscriber within 2 s of the change (p99)": "p99 3.00 s (1 late)",
        "every event the nodes sent was published": "1 missing",
        "the gateway's buffer was full (drop_oldest evicted readings)": "the gateway never said its buffer was full",
    }
    assert {c.name for c in checks if c.timed} == {
        "every command succeeded within 30 s",
        "events reach the subscriber within 2 s of the change (p99)",
    }, "the limits on time are marked: make test reports them without asserting them"
    report = CityReport(
        "flood", "d", "shortened", "emulated", {"gauge": 1}, 10.0, commands, events, "flood", {"sent": 3, "delivered": 2}, checks=checks
    )
    assert not report.passed
    text = report.summary()
    assert "commanded 1  succeeded 1  executed 1  late 1  lost 0" in text and "FAILED     every command succeeded within 30 s" in text
    assert "node a command dim40-0: late (limit 30 s)" in text and "node g: late event flood=1 after 3.00 s" in text
    report.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["commands"]["late"] == 1 and data["events"]["late"] == 1 and data["variant"] == "shortened" and data["passed"] is False
    assert data["commands"]["seconds_to_succeeded"] == {"p50": 40.0, "p99": 40.0, "max": 40.0}
    report.write_junit(tmp_path / "r.xml")
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert suite.get("name") == "hil.flood" and suite.get("failures") == "4" and suite.get("tests") == str(len(checks))
    fine = judge(PassCriteria(), analyse_commands(tracks, {"dim40-0": None}), {"dim40-0": None}, None, {}, None)
    drain = PassCriteria(during_drain=True)
    assert [c.failure is None for c in judge(drain, None, {}, None, {}, None, during_drain=0)] == [False]
    assert [c.failure is None for c in judge(drain, None, {}, None, {}, None, during_drain=3)] == [True]
    assert events.judged == [("g", 1.0, 3.0)]
    assert split_latency([*events.judged, ("h", 5.0, 1.0)], {"g": [0.5, 1.4, 2.0]}) == ([pytest.approx(0.4)], [pytest.approx(2.6)])
    lost = analyse_commands([CommandTrack(issued("a", "x-0", 0.0))], {"x-0": 30.0})
    assert [c.failure for c in judge(PassCriteria(), lost, {"x-0": 30.0}, None, {}, None)] == [
        "1 of 1 did not ({'none': 1})",
        "1 of 1 did not",
    ]
    assert [c.failure for c in fine] == [None] and CityReport("x", "", "full", "emulated", {}, 1.0, checks=fine).passed
    assert not CityReport("x", "", "full", "emulated", {}, 1.0).passed, "no check at all is no pass"


def test_state_topics_parse_and_malformed_documents_are_kept() -> None:
    assert parse_state("edgegw/gw/nodes/00ab/command/dim-1", b'{"id": "dim-1", "state": "queued"}') == (
        "00ab",
        "dim-1",
        {"id": "dim-1", "state": "queued"},
    )
    assert parse_state("edgegw/gw/nodes/00ab/command", b"{}") is None, "the request topic is not a state"
    assert parse_state("edgegw/gw/nodes/00ab/readings", b"") is None
    assert parse_state("edgegw/gw/nodes/00ab/command/x", b"\xff")[2] == {"state": "", "raw": "\ufffd"}


def test_the_command_client_publishes_with_qos1_and_follows_retained_states_across_a_broker_restart(tmp_path: Path) -> None:
    """A stand-in for the gateway answers each request with retained states; the broker restarts in between."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    gateway = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-gateway")
    requests: list[tuple[str, dict[str, Any]]] = []
    gateway.on_message = lambda _c, _u, message: requests.append((message.topic, json.loads(message.payload)))
    gateway.connect(broker.host, broker.port)
    gateway.subscribe("edgegw/gw/nodes/+/command", qos=1)
    gateway.loop_start()
    commander = None
    try:
        time.sleep(0.3)
        commander = Commander(broker.host, broker.port, "gw")
        commander.send("00aa", "dim-0", "dim", {"level": 40}, ttl_s=60)
        deadline = time.monotonic() + 10
        while not requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert requests == [("edgegw/gw/nodes/00aa/command", {"id": "dim-0", "name": "dim", "args": {"level": 40}, "ttl_s": 60})]
        base = "edgegw/gw/nodes/00aa/command/dim-0"
        gateway.publish(base, json.dumps({"id": "dim-0", "state": "queued"}), qos=1, retain=True).wait_for_publish(5)
        broker.restart()  # the client comes back by itself; the retained state waits for it
        gateway.reconnect()
        gateway.publish(base, json.dumps({"id": "dim-0", "state": "succeeded", "result": None}), qos=1, retain=True).wait_for_publish(5)
        assert commander.wait_final(15) == []
        (track,) = commander.tracks()
        assert track.final is not None and track.final.state == "succeeded" and "queued" in [s.state for s in track.states]
        assert track.issued.acked_at is not None, "the broker PUBACKed the request"
        gateway.publish("edgegw/gw/nodes/00bb/command/other", b"not json", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while not commander.unknown_states() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(s.node, s.id, s.state) for s in commander.unknown_states()] == [("00bb", "other", "")]
    finally:
        if commander is not None:
            commander.close()
        gateway.loop_stop()
        gateway.disconnect()
        broker.stop()


class _Booting:
    """A rig whose second node is switched on `late` s after the warm-up began (RadioRig's boot_spread_s)."""

    def __init__(self, late: float) -> None:
        self.boot_spread_s = late
        self.began = time.monotonic()
        self.late = late

    @property
    def nodes(self) -> list[Any]:
        second = "e1b" if time.monotonic() - self.began >= self.late else None
        return [type("Node", (), {"node_id": "e1a"}), type("Node", (), {"node_id": second})]


class _Heard:
    """A capture that has a message of the first node at once and of the second `after` s on."""

    def __init__(self, after: float | None) -> None:
        self.began = time.monotonic()
        self.after = after

    def snapshot(self) -> list[Any]:
        topics = ["edgegw/gw/nodes/e1a/status"]
        if self.after is not None and time.monotonic() - self.began >= self.after:
            topics.append("edgegw/gw/nodes/e1b/status")
        return [type("Message", (), {"topic": topic}) for topic in topics]


def test_each_node_has_the_warm_up_from_its_own_switching_on() -> None:
    from hil.city import _warm_up

    # switched on at 1.5 s, heard at 2.5 s: past a 2 s warm-up counted from the start, within it counted from its own
    assert _warm_up(_Booting(1.5), _Heard(2.5), 2.0) == ["e1a", "e1b"]  # type: ignore[arg-type]
    began = time.monotonic()
    with pytest.raises(RuntimeError, match=r"1 of 2 nodes not heard through the gateway within 1 s of switching on.*e1b"):
        _warm_up(_Booting(0.5), _Heard(None), 1.0)  # type: ignore[arg-type]
    assert time.monotonic() - began >= 1.5  # it waited the late node's own second, not the first node's
