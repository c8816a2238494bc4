"""Scenarios: nodes, a flow of some duration, and a timeline of faults; loaded from TOML and run end to end.

    name = "broker-outage"
    description = "The broker is down for 30 s while 3 nodes keep sampling."
    nodes = 3            # emulated nodes (or the boards of a bench)
    duration = 50        # seconds of flow, faults included
    interval = 1.0       # node sampling interval, seconds
    [[faults]]
    kind = "broker_down" # see hil/faults.py: line faults and system faults
    at = 10
    duration = 30

The runner starts a real mosquitto, the rig (emulated nodes behind faulty
cables, or a bench of boards), the real `edgegw run`, and an MQTT capture; it
plays the timeline, waits for the backlog to drain, and measures continuity.

A city scenario (hil/scenarios/street-lights.toml and others) also has node
roles, commands, the emulated world's timeline and pass criteria (the keys are
in hil/timeline.py) and is run by hil/city.py. A `[shortened]` table holds the
version `make test` runs: its keys replace the file's, its arrays of tables
([[shortened.roles]], [[shortened.faults]] ...) replace the file's arrays.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .broker import Mosquitto
from .capture import MqttCapture
from .chain import Chain, Rig
from .city_report import CityReport
from .continuity import analyse
from .faults import INSTANT_KINDS, LINE_KINDS, Fault, FaultError
from .gateway import GatewayProcess
from .report import FaultResult, Report
from .timeline import (
    AirLayout,
    CommandStep,
    GatewayOptions,
    PassCriteria,
    RoleGroup,
    ScenarioError,
    WorldStep,
    check_types,
    node_roles,
    parse_air,
    parse_commands,
    parse_gateway,
    parse_pass,
    parse_roles,
    parse_world,
)
from .tomlfile import read_toml

__all__ = ["Scenario", "ScenarioError", "load_scenario", "parse_scenario", "run_scenario"]

WARMUP_TIMEOUT_S = 60.0


@dataclass
class Scenario:
    name: str
    description: str = ""
    nodes: int = 3
    duration: float = 30.0
    interval: float = 1.0
    heap: str = "128k"
    seed: int = 1
    settle: float = 90.0  # at most this long for the backlog to drain after the flow
    status_interval: float = 30.0
    warmup: float | None = None  # each node has this long from its switching on to be heard before the flow; None: the runner's
    faults: list[Fault] = field(default_factory=list)
    # A city scenario's parts (hil/timeline.py); empty for a continuity scenario.
    roles: list[RoleGroup] = field(default_factory=list)
    commands: list[CommandStep] = field(default_factory=list)
    world: list[WorldStep] = field(default_factory=list)
    criteria: PassCriteria = field(default_factory=PassCriteria)
    gateway: GatewayOptions = field(default_factory=GatewayOptions)
    air: AirLayout | None = None  # the nodes are on the air, behind these bridges (hil/radio_rig.py)
    variant: str = "full"  # or "shortened": the [shortened] table of the file

    @property
    def city(self) -> bool:
        return bool(self.roles)

    @property
    def node_roles(self) -> list[str]:
        return node_roles(self.roles) if self.roles else ["sensor"] * self.nodes

    @property
    def line_faults(self) -> list[Fault]:
        return [f for f in self.faults if f.kind in LINE_KINDS]


_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "description": (str,),
    "nodes": (int,),
    "duration": (int, float),
    "interval": (int, float),
    "heap": (str,),
    "seed": (int,),
    "settle": (int, float),
    "status_interval": (int, float),
    "warmup": (int, float),
}
_FAULT_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "at": (int, float),
    "duration": (int, float),
    "rate": (int, float),
    "size": (int,),
    "every": (int, float),
    "ms": (int, float),
    "baud": (int,),
    "direction": (str,),
    "nodes": (list,),
}


_SECTIONS = ("faults", "roles", "commands", "world", "pass", "gateway", "air", "shortened")


def parse_scenario(data: dict[str, Any], default_name: str = "scenario", *, shortened: bool = False) -> Scenario:
    """The scenario of a parsed file; shortened: its [shortened] version (an error if it has none)."""
    if "shortened" in data and not isinstance(data["shortened"], dict):
        raise ScenarioError("scenario: 'shortened' must be a table ([shortened])")
    if shortened:
        overlay = data.get("shortened")
        if overlay is None:
            raise ScenarioError("scenario: no [shortened] table: this scenario has one version only")
        if "shortened" in overlay or "name" in overlay:
            raise ScenarioError("shortened: 'name' and 'shortened' cannot be replaced")
        data = {**{k: v for k, v in data.items() if k != "shortened"}, **overlay}
    top = {k: v for k, v in data.items() if k not in _SECTIONS}
    check_types(top, _TYPES, "scenario")
    roles = parse_roles(data)
    if roles:
        counted = sum(group.count for group in roles)
        if top.setdefault("nodes", counted) != counted:
            raise ScenarioError("scenario: 'nodes' is %d but the [[roles]] count %d nodes (leave 'nodes' out)" % (top["nodes"], counted))
    scenario = Scenario(name=top.pop("name", default_name), **top)
    if scenario.nodes < 1 or scenario.duration <= 0 or scenario.interval <= 0:
        raise ScenarioError("scenario: nodes must be at least 1, duration and interval above 0")
    scenario.variant = "shortened" if shortened else "full"
    scenario.roles = roles
    kinds = scenario.node_roles
    scenario.commands = parse_commands(data, kinds, scenario.duration)
    scenario.world = parse_world(data, kinds, scenario.duration)
    scenario.criteria = parse_pass(data)
    scenario.gateway = parse_gateway(data)
    scenario.air = parse_air(data, roles)
    if (scenario.commands or scenario.world) and not roles:
        raise ScenarioError("scenario: [[commands]] and [[world]] need [[roles]] (the nodes they act on)")
    raw_faults = data.get("faults", [])
    if not isinstance(raw_faults, list):
        raise ScenarioError("scenario: 'faults' must be an array of tables ([[faults]])")
    for number, raw in enumerate(raw_faults, 1):
        where = "faults #%d" % number
        if not isinstance(raw, dict) or "kind" not in raw or "at" not in raw:
            raise ScenarioError("%s: needs at least 'kind' and 'at'" % where)
        check_types(raw, _FAULT_TYPES, where)
        options = dict(raw)
        if "nodes" in options:
            if not all(isinstance(n, int) and 0 <= n < scenario.nodes for n in options["nodes"]):
                raise ScenarioError("%s: 'nodes' must list node indexes 0..%d" % (where, scenario.nodes - 1))
            options["nodes"] = tuple(options["nodes"])
        try:
            fault = Fault(**options)
        except FaultError as error:
            raise ScenarioError("%s: %s" % (where, error)) from None
        if fault.end > scenario.duration:
            raise ScenarioError("%s: ends at %g s, after the flow (duration %g s)" % (where, fault.end, scenario.duration))
        for other in scenario.faults:
            same = other.kind == fault.kind and fault.kind in ("broker_down", "broker_restart", "gateway_kill")
            if same and ((fault.at < other.end and other.at < fault.end) or fault.at == other.at):
                raise ScenarioError("%s: overlaps an earlier %s (%s)" % (where, fault.kind, other.describe()))
        scenario.faults.append(fault)
    return scenario


def load_scenario(path: Path | str, *, shortened: bool = False) -> Scenario:
    path = Path(path)
    return parse_scenario(read_toml(path, "scenario", ScenarioError), path.stem, shortened=shortened)


@dataclass
class Progress:
    elapsed: float
    duration: float
    produced: int
    delivered: int
    active: list[str]
    phase: str  # "flow" or "settle"
    labels: tuple[str, str] = ("produced", "delivered")  # a city scenario counts commands: ("commanded", "final")


def make_rig(scenario: Scenario, workdir: Path, target: str = "emulated", bench: Path | None = None) -> Rig:
    if scenario.city and target != "emulated":
        raise ScenarioError(
            "%s: a city scenario needs the emulated target (its world, the water and the cars, is emulated)" % scenario.name
        )
    if target == "bench":
        from .bench import BenchRig, load_bench

        if bench is None:
            raise ScenarioError("the bench target needs a bench file (--hil-config)")
        return BenchRig(load_bench(bench), workdir)
    if scenario.air is not None:
        from .radio_rig import RadioRig

        return RadioRig.for_scenario(
            workdir,
            scenario.air,
            scenario.roles,
            interval=scenario.interval,
            status_interval=scenario.status_interval,
            seed=scenario.seed,
        )
    from .rig import EmulatedRig

    return EmulatedRig(
        workdir,
        scenario.nodes,
        interval=scenario.interval,
        heap=scenario.heap,
        seed=scenario.seed,
        status_interval=scenario.status_interval,
        faults=scenario.line_faults,
        roles=scenario.node_roles,
        role_config=[group.config for group in scenario.roles for _ in range(group.count)] or None,
        intervals=[group.interval or scenario.interval for group in scenario.roles for _ in range(group.count)] or None,
    )


def run_scenario(
    scenario: Scenario,
    workdir: Path | None = None,
    *,
    rig: Rig | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Report | CityReport:
    """Run it end to end and measure; every process started here is stopped before returning."""
    if scenario.city:
        from .city import run_city
        from .radio_rig import RadioRig
        from .rig import EmulatedRig

        assert rig is None or isinstance(rig, (EmulatedRig, RadioRig)), "a city scenario runs on emulated nodes"
        return run_city(scenario, workdir, rig=rig, progress=progress)
    started_wall = time.monotonic()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgegw-hil-"))
    rig = rig or make_rig(scenario, workdir / "rig")
    options = scenario.gateway
    with Chain(workdir, rig, reconnect_max=2, max_bytes=options.max_bytes, when_full=options.when_full, inflight=options.inflight) as chain:
        assert chain.capture is not None and chain.gateway is not None
        _warm_up(rig, chain.capture, scenario.nodes, scenario.warmup or WARMUP_TIMEOUT_S)
        rig.begin()
        start = time.monotonic()
        capture = chain.capture

        def tick(elapsed: float) -> None:
            if progress:
                progress(_progress(scenario, rig, capture, start, elapsed, "flow"))

        play(scenario, rig, chain.broker, chain.gateway, start, tick)
        cutoff = time.monotonic()
        _settle(scenario, rig, chain.capture, start, cutoff, progress)
        deliveries = chain.capture.counter_deliveries()
    relay_error = getattr(rig, "relay_error", None)
    if relay_error:
        raise RuntimeError("the rig's relay failed during the run (%s): the measurement is not trustworthy" % relay_error)
    windows = [(start + fault.at, start + fault.end) for fault in scenario.faults]
    flow = analyse(rig.produced(deliveries), deliveries, start=start, cutoff=cutoff, fault_windows=windows)
    if not rig.measures_latency:
        flow.latencies = []  # no tap on a bench: the moment a reading left the board is not known
    results = []
    for fault, recovery in zip(scenario.faults, flow.recovery, strict=True):
        reason = rig.not_applicable(fault)
        results.append(FaultResult(fault.describe(), fault.end, None if reason else recovery, reason is None, reason or ""))
    return Report(
        scenario.name,
        scenario.description,
        rig.target,
        scenario.nodes,
        scenario.duration,
        flow,
        results,
        wall_s=time.monotonic() - started_wall,
        line_damage=rig.line_damage(),
        counter_reuse=rig.counter_reuse(),
    )


def _warm_up(rig: Rig, capture: MqttCapture, nodes: int, timeout: float) -> None:
    """Until every node's readings reach the broker: the flow is measured from there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len({node for node, _sample, _at in capture.counter_deliveries()}) >= nodes:
            return
        time.sleep(0.2)
    seen = sorted({node for node, _sample, _at in capture.counter_deliveries()})
    raise RuntimeError("only %d of %d nodes delivered readings within %.0f s (%s)" % (len(seen), nodes, timeout, seen))


def play(
    scenario: Scenario,
    rig: Rig,
    broker: Mosquitto,
    gateway: GatewayProcess,
    start: float,
    tick: Callable[[float], None] | None = None,
    actions: list[tuple[float, Callable[[], None]]] | None = None,
) -> None:
    """Run the timeline: system faults and the given actions (a city scenario's commands) here, line faults in
    the rig's relay; tick(elapsed) about once a second (progress)."""
    events: list[tuple[float, int, Callable[[], None]]] = []
    for fault in scenario.faults:
        if fault.kind in LINE_KINDS or rig.not_applicable(fault):
            continue  # line faults are the rig's relay's business; inapplicable ones are reported, not played
        events.append((fault.at, 0, partial(_apply, "begin", fault, rig, broker, gateway, scenario.nodes)))
        if fault.kind not in INSTANT_KINDS:
            events.append((fault.end, 1, partial(_apply, "end", fault, rig, broker, gateway, scenario.nodes)))
    events += [(at, 2, action) for at, action in actions or []]  # at the same moment: after a fault began or ended
    events.sort(key=lambda e: (e[0], e[1]))
    next_report = 0.0
    while True:
        elapsed = time.monotonic() - start
        while events and events[0][0] <= elapsed:
            events.pop(0)[2]()
        if tick and elapsed >= next_report:
            tick(elapsed)
            next_report = elapsed + 1.0
        if elapsed >= scenario.duration and not events:
            return
        time.sleep(0.05)


def _apply(what: str, fault: Fault, rig: Rig, broker: Mosquitto, gateway: GatewayProcess, nodes: int) -> None:
    if fault.kind == "broker_down":
        if what == "begin":
            broker.stop()
        else:
            broker.start()
    elif fault.kind == "broker_restart":
        broker.restart()  # a graceful stop (sessions and queues saved) and a start at once
    elif fault.kind == "gateway_kill":
        if what == "begin":
            gateway.kill()
        else:
            gateway.start()
    elif fault.kind == "node_reboot":
        for index in fault.nodes if fault.nodes is not None else range(nodes):
            rig.reboot(index)


def _progress(scenario: Scenario, rig: Rig, capture: MqttCapture, start: float, elapsed: float, phase: str) -> Progress:
    deliveries = capture.counter_deliveries()
    produced = {key for key, at in rig.produced(deliveries).items() if at >= start}
    delivered = {(node, sample) for node, sample, _at in deliveries} & produced
    active = [f.describe() for f in scenario.faults if f.active(min(elapsed, scenario.duration))]
    return Progress(elapsed, scenario.duration, len(produced), len(delivered), active, phase)


def _settle(
    scenario: Scenario, rig: Rig, capture: MqttCapture, start: float, cutoff: float, progress: Callable[[Progress], None] | None
) -> None:
    """Wait until everything produced during the flow has arrived, or the settle time is up."""
    deadline = time.monotonic() + scenario.settle
    next_report = 0.0
    while time.monotonic() < deadline:
        deliveries = capture.counter_deliveries()
        window = {key for key, at in rig.produced(deliveries).items() if start <= at <= cutoff}
        if window <= {(node, sample) for node, sample, _at in deliveries}:
            return
        now = time.monotonic()
        if progress and now >= next_report:
            progress(_progress(scenario, rig, capture, start, now - start, "settle"))
            next_report = now + 1.0
        time.sleep(0.2)
