"""A city scenario's result: what was commanded, executed, late and lost; events delivered, late, lost, in order.

The same three forms as hil/report.py: a summary to read, JSON and JUnit XML
for CI. Every pass criterion is a named check; the scenario passes when all do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .air_report import AirOutcome
from .continuity import Flow, percentile
from .outcomes import Check, CommandOutcome, EventOutcome
from .report import write_suite


@dataclass
class CityReport:
    scenario: str
    description: str
    variant: str  # "full" or "shortened"
    target: str
    roles: dict[str, int]  # role -> nodes
    duration_s: float
    commands: CommandOutcome | None = None
    events: EventOutcome | None = None
    event_channel: str | None = None
    event_frames: dict[str, int] = field(default_factory=dict)  # sent (wire) / delivered (distinct at the subscriber)
    readings: Flow | None = None  # the nodes' `counter` channel (hil/continuity.py), when they have one
    faults: list[str] = field(default_factory=list)
    buffer_full: bool | None = None  # the gateway said its buffer was full (drop_oldest evicted)
    drains: list[dict[str, Any]] = field(default_factory=list)  # per broker_down: seconds until its backlog had arrived
    during_drain: int | None = None  # changes judged by latency that came while a backlog drained
    node_part: list[float] = field(default_factory=list)  # judged latencies: change -> event frame on the wire
    gateway_part: list[float] = field(default_factory=list)  # ... and wire -> subscriber
    air: AirOutcome | None = None  # the nodes were on the air (hil/air_report.py)
    checks: list[Check] = field(default_factory=list)
    wall_s: float = 0.0
    settle_s: float = 0.0  # after the flow, until all it judges had arrived (at most the scenario's settle)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.failure is None for check in self.checks)

    @property
    def nodes(self) -> int:
        return sum(self.roles.values())

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "scenario": self.scenario,
            "description": self.description,
            "variant": self.variant,
            "target": self.target,
            "passed": self.passed,
            "nodes": self.nodes,
            "roles": self.roles,
            "duration_s": self.duration_s,
            "wall_s": round(self.wall_s, 1),
            "settle_s": round(self.settle_s, 1),
            "checks": [
                {"check": c.name, "passed": c.failure is None, "timed": c.timed, **({"failure": c.failure} if c.failure else {})}
                for c in self.checks
            ],
            "faults": self.faults,
            "buffer_full": self.buffer_full,
            "backlog": self.drains,
            "events_judged_while_draining": self.during_drain,
        }
        if self.commands is not None:
            c = self.commands
            data["commands"] = {
                "commanded": c.commanded,
                "succeeded": c.succeeded,
                "executed": c.executed,
                "executed_twice": c.executed_twice,
                "late": c.late,
                "lost": c.lost,
                "unexplained_changes": c.unexplained,
                "final_states": c.finals,
                "seconds_to_succeeded": _spread(c.latencies),
                "problems": [vars(p) for p in c.problems[:100]],
            }
        if self.events is not None:
            e = self.events
            data["events"] = {
                "channel": self.event_channel,
                "occurred": e.occurred,
                "delivered": e.delivered,
                "late": e.late,
                "lost": e.lost,
                "out_of_order": e.out_of_order,
                "duplicated": e.duplicated,
                "unexpected": e.unexpected,
                "held_by_an_outage_not_judged": e.held,
                "seconds_after_the_change": _spread(e.latencies),
                "of_which_node": _spread(self.node_part),
                "of_which_gateway_and_broker": _spread(self.gateway_part),
                "problems": [vars(p) for p in e.problems[:100]],
            }
        if self.event_frames:
            data["event_frames"] = self.event_frames
        if self.readings is not None:
            r = self.readings
            data["readings"] = {"produced": r.produced, "delivered": r.delivered, "duplicated": r.duplicated, "lost": r.lost}
        if self.air is not None:
            data["air"] = self.air.as_dict()
        return data

    def summary(self) -> str:
        roles = ", ".join("%d %s" % (n, role) for role, n in self.roles.items())
        lines = [
            "scenario %s (%s, %s target, %d nodes: %s, %g s timeline, %.0f s settle, %.0f s wall): %s"
            % (
                self.scenario,
                self.variant,
                self.target,
                self.nodes,
                roles,
                self.duration_s,
                self.settle_s,
                self.wall_s,
                "PASSED" if self.passed else "FAILED",
            )
        ]
        if self.commands is not None:
            c = self.commands
            lines.append(
                "  commands   commanded %d  succeeded %d  executed %s  late %d  lost %d  (publish -> succeeded %s)"
                % (c.commanded, c.succeeded, "-" if c.executed is None else c.executed, c.late, c.lost, _spread_text(c.latencies))
            )
        if self.events is not None:
            e = self.events
            lines.append(
                "  events     %s: occurred %d  delivered %d  late %d  lost %d  out of order %d  duplicated %d  (change -> subscriber %s)"
                % (self.event_channel, e.occurred, e.delivered, e.late, e.lost, e.out_of_order, e.duplicated, _spread_text(e.latencies))
            )
        for drain in self.drains:
            drained = "never" if drain["drained_s"] is None else "%.1f s after it ended" % drain["drained_s"]
            lines.append("  backlog    %s: drained %s" % (drain["outage"], drained))
        if self.during_drain is not None:
            lines.append("  events     %d judged by latency came while a backlog drained" % self.during_drain)
        if self.buffer_full:
            lines.append("  buffer     full: the gateway evicted the oldest readings (drop_oldest)")
        if self.node_part:
            lines.append(
                "  latency    change -> on the wire %s; wire -> subscriber %s"
                % (_spread_text(self.node_part), _spread_text(self.gateway_part))
            )
        if self.event_frames:
            lines.append("  frames     events sent %(sent)d (distinct by node and time), published %(delivered)d" % self.event_frames)
        if self.readings is not None:
            r = self.readings
            lines.append("  readings   produced %d  delivered %d  duplicated %d  lost %d" % (r.produced, r.delivered, r.duplicated, r.lost))
        if self.air is not None:
            lines += self.air.summary()
        lines += ["  fault      %s" % fault for fault in self.faults]
        lines += ["  FAILED     %s: %s" % (c.name, c.failure) for c in self.checks if c.failure]
        problems: list[str] = []
        if self.commands is not None:
            problems += ["node %s command %s: %s%s" % (p.node, p.id, p.problem, _state(p.state, p.error)) for p in self.commands.problems]
        if self.events is not None:
            problems += [
                "node %s: %s event %s=%r%s"
                % (p.node, p.problem, self.event_channel, p.value, " after %.2f s" % p.seconds if p.seconds else "")
                for p in self.events.problems
            ]
        lines += ["  problem    %s" % text for text in problems[:20]]
        if len(problems) > 20:
            lines.append("  problem    ... and %d more (JSON report)" % (len(problems) - 20))
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=1, default=str) + "\n")

    def write_junit(self, path: Path) -> None:
        write_suite(path, self.scenario, [(c.name, c.failure, None) for c in self.checks], self.wall_s, self.summary())


def _spread(values: list[float]) -> dict[str, float | None]:
    return {name: _round(percentile(values, fraction)) for name, fraction in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))}


def _spread_text(values: list[float]) -> str:
    if not values:
        return "-"
    return "p50 %.2f s, p99 %.2f s, max %.2f s" % tuple(percentile(values, fraction) or 0.0 for fraction in (0.5, 0.99, 1.0))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _state(state: str, error: str) -> str:
    return (" (state %s%s)" % (state or "none", ": " + error if error else "")) if state or error else ""
