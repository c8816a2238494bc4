"""Run a city scenario end to end: role nodes, commands, the emulated world, faults; then judge what was observed.

The chain is the continuity scenarios' (hil/chain.py: mosquitto, MQTT capture,
the rig of real firmware on MicroPython, the real `edgegw run`), plus the
command client (hil/commander.py), an alarm subscriber of events only, and the
world's files (hil/world.py). The
timeline plays faults, commands and lamp failures at their moments; water
waves and cars are written for the whole timeline at its start (wall-clock
times the nodes read). Then it waits, at most `settle` seconds, until every
command has a final state, every change in the world has arrived as an
event, every reading has arrived and (where the scenario judges them) every
radio node's STATUS give a battery estimate, and judges (hil/outcomes.py).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from gateway.fwtools.emulate import EmulatedNode

from .air_report import analyse_air, unestimated
from .capture import MqttCapture, decode_senml
from .chain import Chain, Rig
from .city_report import CityReport
from .commander import Commander
from .continuity import Flow, analyse
from .outcomes import EventOutcome, EventSeen, analyse_commands, analyse_events, judge, split_latency, state_changes
from .radio_rig import RadioRig
from .rig import EmulatedRig, WireTap
from .scenario import Progress, Scenario, make_rig, play
from .timeline import CommandStep
from .world import World

WARMUP_TIMEOUT_S = 120.0  # 200 nodes boot one after another, then each must be heard through the gateway
BUFFER_FULL = "buffer full (max_bytes reached): dropping the oldest"  # gateway/committer.py, once an episode
HELD_AFTER_S = 3.0  # after the broker or the gateway is back, reconnecting takes up to reconnect_max (2 s) and a bit
EVENT_CHANNELS = {"gauge": "flood", "parking": "occupied", "streetlight": "lamp_ok"}


class CityRig(Rig, Protocol):
    """A rig of emulated role nodes whose world this runner writes and whose frames a tap reads: the nodes on
    cables (hil/rig.py) or on the air (hil/radio_rig.py)."""

    tap: WireTap

    @property
    def nodes(self) -> list[EmulatedNode]: ...

    @property
    def relay_error(self) -> str | None: ...


def run_city(
    scenario: Scenario,
    workdir: Path | None = None,
    *,
    rig: CityRig | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> CityReport:
    """Every process started here is stopped before returning."""
    started_wall = time.monotonic()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgegw-hil-"))
    if rig is None:
        made = make_rig(scenario, workdir / "rig")
        assert isinstance(made, (EmulatedRig, RadioRig))
        rig = made
    options = scenario.gateway
    with Chain(workdir, rig, reconnect_max=2, max_bytes=options.max_bytes, when_full=options.when_full, inflight=options.inflight) as chain:
        assert chain.capture is not None and chain.gateway is not None
        capture = chain.capture
        ids = _warm_up(rig, capture, scenario.warmup or WARMUP_TIMEOUT_S)
        commander = Commander(chain.broker.host, chain.broker.port, chain.gateway.gateway_id)
        alarms: MqttCapture | None = None
        try:
            # The alarm subscriber: events only, as an operator's alarm client subscribes. A broker sends each client
            # its messages in order, so a subscriber of everything gets an event only after the backlog published
            # before it, whatever the gateway does; this one's queue holds nothing but events.
            alarms = MqttCapture(chain.broker.host, chain.broker.port, ["edgegw/%s/nodes/+/events" % chain.gateway.gateway_id])
            world = World(scenario.world, [node.data_dir for node in rig.nodes], scenario.node_roles, scenario.seed)
            channel = scenario.criteria.events_from
            rig.begin()
            start = time.monotonic()
            actions = world.begin(start)
            actions += [(step.at, partial(_publish, commander, step, ids)) for step in scenario.commands]

            def tick(elapsed: float, phase: str = "flow") -> None:
                if not progress:
                    return
                active = [f.describe() for f in scenario.faults if f.active(min(elapsed, scenario.duration))]
                if scenario.commands or not channel:
                    done = len(commander.issued) - len(commander.pending())
                    progress(Progress(elapsed, scenario.duration, len(commander.issued), done, active, phase, ("commanded", "final")))
                else:
                    seen = _events(scenario, world, ids, alarms, channel, start, capture)
                    progress(Progress(elapsed, scenario.duration, seen.occurred, seen.delivered, active, phase, ("changes", "events")))

            play(scenario, rig, chain.broker, chain.gateway, start, tick, actions)
            cutoff = time.monotonic()
            deadline = cutoff + scenario.settle
            readings_wanted = not scenario.criteria.readings_lost_allowed
            # On the air a battery estimate needs two STATUS of one boot with a round between (hil/air_report.py): the
            # probe switched on last gets its clock, which its first waits for, last; one lost at SF12 goes 11 minutes later
            probes = [placed.node_hex for placed in rig.radios] if scenario.criteria.battery_estimates and isinstance(rig, RadioRig) else []
            while time.monotonic() < deadline:
                events = _events(scenario, world, ids, alarms, channel, start, capture) if channel else None
                readings = _readings(rig, capture, start, cutoff) if readings_wanted else None
                frames = _event_frames(rig, alarms, start, cutoff) if channel else {}
                unpublished = frames.get("sent", 0) > frames.get("delivered", 0)  # on the air a frame may come minutes late
                done = (events is None or not events.lost) and (readings is None or not readings.lost)
                if done and not (commander.pending() or unpublished or (probes and unestimated(capture, probes))):
                    break
                tick(time.monotonic() - start, "settle")
                time.sleep(0.5)
            settled = time.monotonic() - cutoff
            tracks = commander.tracks()
        finally:
            commander.close()
            if alarms is not None:
                alarms.close()
    relay_error = rig.relay_error
    if relay_error:
        raise RuntimeError("the rig's relay failed during the run (%s): the measurement is not trustworthy" % relay_error)
    within = {step.request_id(index): step.within_s for step in scenario.commands for index in step.nodes}
    field_name = scenario.criteria.changes_per_command
    records = None
    if field_name == "level":  # the lamps' own record of their level changes, from the timeline's start
        records = {
            ids[i]: [(at, v) for at, v in world.lamp_levels(i) if at >= start]
            for i, role in enumerate(scenario.node_roles)
            if role == "streetlight"
        }
    commands = analyse_commands(tracks, within, records, field_name) if scenario.commands else None
    events = _events(scenario, world, ids, alarms, channel, start, capture) if channel else None
    frames = _event_frames(rig, alarms, start, cutoff)
    outages = [(start + f.at, start + f.end) for f in scenario.faults if f.kind == "broker_down"]
    readings = _readings(rig, capture, start, cutoff)  # every node has the `counter` channel (the roles' last)
    drained = [_drained(rig, capture, begin, end) for begin, end in outages]
    during_drain = None
    if events is not None and outages:
        during_drain = sum(
            1 for _n, at, _s in events.judged for (_b, end), done in zip(outages, drained, strict=True) if done and end <= at <= done
        )
    readings = readings if readings.nodes else None
    buffer_full = BUFFER_FULL in chain.gateway.log()
    report = CityReport(
        scenario.name,
        scenario.description,
        scenario.variant,
        rig.target,
        {role: scenario.node_roles.count(role) for role in dict.fromkeys(scenario.node_roles)},
        scenario.duration,
        commands=commands,
        events=events,
        event_channel=channel,
        event_frames=frames,
        readings=readings,
        faults=[fault.describe() for fault in scenario.faults],
        wall_s=time.monotonic() - started_wall,
        settle_s=settled,
    )
    report.checks = judge(
        scenario.criteria, commands, within, events, frames, readings.lost if readings else None, buffer_full, during_drain
    )
    if isinstance(rig, RadioRig):
        report.air = analyse_air(
            rig.air.transmissions,
            rig.air.received,
            rig.air.malformed,
            {placed.name: placed.node_hex for placed in rig.radios},
            {placed.name: placed.node_hex for placed in rig.bridges},
            capture,
            record=rig.record,
        )
        report.checks += report.air.checks(scenario.criteria.battery_estimates)
    report.buffer_full = buffer_full
    report.drains = [
        {"outage": "broker_down %g-%g s" % (b - start, e - start), "drained_s": None if d is None else round(d - e, 1)}
        for (b, e), d in zip(outages, drained, strict=True)
    ]
    report.during_drain = during_drain
    if events is not None:
        wire: dict[str, list[float]] = {}
        for (node, _counter), at in rig.tap.events_sent().items():
            wire.setdefault(node, []).append(at)
        report.node_part, report.gateway_part = split_latency(events.judged, wire)
    return report


def _warm_up(rig: CityRig, capture: MqttCapture, timeout: float) -> list[str]:
    """Until the gateway has published something of every node (its HELLO is known, commands can be checked); the
    nodes' ids by index. Each node has `timeout` from its switching on: a node's id is known once it has booted, and
    a rig may boot them one by one while this waits (RadioRig's boot_spread_s: a probe switched on at minute 29 is
    owed as long to be heard as the first). A node not booted within the spread is late by that much more."""
    began = time.monotonic()
    last_boot = began + getattr(rig, "boot_spread_s", 0.0)
    booted: dict[int, float] = {}  # a node's index -> when its id was first known here
    heard: set[str] = set()
    while True:
        now = time.monotonic()
        ids = [node.node_id for node in rig.nodes]
        for index, node_id in enumerate(ids):
            if node_id and index not in booted:
                booted[index] = now
        heard = {message.topic.split("/")[3] for message in capture.snapshot() if message.topic.count("/") >= 4}
        if all(ids) and heard >= set(ids):
            return ids
        late = [index for index, node_id in enumerate(ids) if node_id not in heard and booted.get(index, last_boot) + timeout < now]
        if late:
            break
        time.sleep(0.5)
    silent = [node.node_id or "node %d (not booted)" % index for index, node in enumerate(rig.nodes) if node.node_id not in heard]
    raise RuntimeError(
        "%d of %d nodes not heard through the gateway within %.0f s of switching on (%d not within %.0f s so far): %s"
        % (len(late), len(rig.nodes), timeout, len(silent), now - began, silent[:10])
    )


def _publish(commander: Commander, step: CommandStep, ids: list[str]) -> None:
    for index in step.nodes:  # all at once: the gateway gets them as fast as the broker passes them on
        commander.send(ids[index], step.request_id(index), step.name, step.args, step.ttl_s)


def event_records(capture: MqttCapture) -> list[tuple[str, str, Any, float, float]]:
    """(node, channel, value, the node's time of the event, when it arrived) for every SenML record on .../events."""
    out = []
    for message in capture.snapshot():
        if not message.topic.endswith("/events"):
            continue
        for record in decode_senml(message.payload):
            parts = str(record["name"]).split(":")
            if len(parts) == 5 and parts[:3] == ["urn", "dev", "edgegw"]:
                out.append((parts[3], parts[4], record["value"], float(record["time"]), message.at))
    return out


def _events(
    scenario: Scenario, world: World, ids: list[str], capture: MqttCapture, channel: str, start: float, readings: MqttCapture
) -> EventOutcome:
    changes: dict[str, list[tuple[float, Any]]] = {}
    now = time.monotonic()
    for index, role in enumerate(scenario.node_roles):
        if EVENT_CHANNELS.get(role) != channel:
            continue
        found = {"gauge": world.flood_changes, "parking": world.bay_changes, "streetlight": world.lamp_failures}[role](index)
        changes[ids[index]] = [(at, value) for at, value in found if start <= at <= now]  # the world's files hold the future too
    seen = [EventSeen(node, value, at_node, at) for node, name, value, at_node, at in event_records(capture) if name == channel]
    return analyse_events(changes, state_changes(seen), scenario.criteria.event_p99_s, _held(scenario, start, capture, readings))


def _held(scenario: Scenario, start: float, alarms: MqttCapture, readings: MqttCapture) -> list[tuple[float, float]]:
    """When a change is not judged by its latency (it must still arrive): while the broker is away or the gateway
    dead, and after, until the chain is whole again: HELD_AFTER_S after a gateway restart; after a broker outage,
    until the alarm subscriber has reconnected and a reading has come through (the gateway reconnected), at most
    HELD_AFTER_S. From there on a change's event must beat the backlog the gateway drains."""
    held = []
    arrivals = [at for _node, _sample, at in readings.counter_deliveries()]
    for fault in scenario.faults:
        if fault.kind not in ("broker_down", "gateway_kill"):
            continue
        begin, end = start + fault.at, start + fault.end
        back = end + HELD_AFTER_S
        if fault.kind == "broker_down":
            subscriber = min((at for at in alarms.connects if at >= end), default=back)
            gateway = min((at for at in arrivals if at >= end), default=back)
            back = min(back, max(subscriber, gateway))
        held.append((begin, back))
    return held


def _event_frames(rig: CityRig, capture: MqttCapture, start: float, cutoff: float) -> dict[str, int]:
    """Distinct events (node, the time the event carries) the tap saw leave the nodes during the timeline (start to
    cutoff: one sent while the run settles is not waited for), and how many of them were published. By time, not
    by frame: two event frames of one node with one time (a flood and a rise in the same reading) are one event to
    the subscriber."""
    # An event sent before its node had the time carries none: the gateway dates it when it comes, which the tap
    # cannot know, so it is left out here (the change it reports is judged with the others all the same)
    sent = {key for key, at in rig.tap.event_moments().items() if start <= at <= cutoff and not isinstance(key[1], tuple)}
    if not sent:
        return {}
    nodes = {node for node, _moment in sent}
    published = {(node, round(at_node, 3)) for node, _name, _value, at_node, at in event_records(capture) if node in nodes}
    return {"sent": len(sent), "delivered": len(sent & published)}


def _readings(rig: CityRig, capture: MqttCapture, start: float, cutoff: float) -> Flow:
    deliveries = capture.counter_deliveries()
    return analyse(rig.produced(deliveries), deliveries, start=start, cutoff=cutoff)


def _drained(rig: CityRig, capture: MqttCapture, begin: float, end: float) -> float | None:
    """When the last reading produced during an outage that reached the subscriber arrived (evicted ones never
    will): the end of its backlog's drain. None: nothing of it arrived."""
    deliveries = capture.counter_deliveries()
    during = {key for key, at in rig.produced(deliveries).items() if begin <= at <= end}
    arrivals = [at for node, sample, at in deliveries if (node, sample) in during]
    return max(arrivals) if arrivals else None
