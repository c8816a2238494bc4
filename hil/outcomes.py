"""What a city scenario's observations say: commands commanded, executed, late, lost; events delivered, late, lost, in order.

Pure functions over observations, all on this process's monotonic clock:
- the command client's record (hil/commander.py): each request and every state message with when it arrived;
- the nodes' own records (hil/world.py): a lamp's level changes, the moment a gauge saw the threshold crossed,
  the moment a bay's magnetometer saw a car come or go;
- the MQTT capture's events (SenML records on `.../events`, with the node's time of the event and when they arrived).
Nothing here assumes what should have happened; the tests feed it synthetic observations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .commander import CommandTrack
from .continuity import percentile
from .timeline import PassCriteria

CLOCK_SLACK_S = 1.0  # a node's record (wall clock, converted) may read this much before the request that caused it


@dataclass
class CommandProblem:
    node: str
    id: str
    problem: str  # "late", "not succeeded", "executed 2 times", ...
    state: str  # its last state ("" for none)
    seconds: float | None = None  # publish -> succeeded
    error: str = ""


@dataclass
class CommandOutcome:
    commanded: int = 0
    succeeded: int = 0
    executed: int | None = None  # per the nodes' records; None: the scenario checks no node record
    executed_twice: int = 0
    late: int = 0  # succeeded, but after its within_s
    lost: int = 0  # never succeeded: failed, expired, rejected or no final state at all
    finals: dict[str, int] = field(default_factory=dict)  # final state -> commands
    latencies: list[float] = field(default_factory=list)  # seconds, publish -> succeeded
    unexplained: int = 0  # record changes no command asked for
    problems: list[CommandProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        executed_ok = self.executed is None or (self.executed == self.commanded and not self.executed_twice and not self.unexplained)
        return self.commanded > 0 and self.succeeded == self.commanded and not self.late and not self.lost and executed_ok


def analyse_commands(
    tracks: list[CommandTrack],
    within: dict[str, float | None],
    records: dict[str, list[tuple[float, Any]]] | None = None,
    field_name: str | None = None,
) -> CommandOutcome:
    """within: request id -> the seconds it must succeed in (None: any time). records: node -> [(at, value)] of the
    field each command sets to args[field_name] (a lamp's level): each must appear exactly once, in command order."""
    outcome = CommandOutcome(commanded=len(tracks))
    for track in tracks:
        issued, final = track.issued, track.final
        state = final.state if final else (track.states[-1].state if track.states else "")
        outcome.finals[state or "none"] = outcome.finals.get(state or "none", 0) + 1
        if final is None or final.state != "succeeded":
            outcome.lost += 1
            error = str(final.document.get("error") or "") if final else ""
            outcome.problems.append(CommandProblem(issued.node, issued.id, "not succeeded", state, None, error))
            continue
        first_success = min(seen.at for seen in track.states if seen.state == "succeeded")
        seconds = first_success - issued.at
        outcome.succeeded += 1
        outcome.latencies.append(seconds)
        limit = within.get(issued.id)
        if limit is not None and seconds > limit:
            outcome.late += 1
            outcome.problems.append(CommandProblem(issued.node, issued.id, "late (limit %g s)" % limit, state, seconds))
    if records is not None and field_name is not None:
        _executions(tracks, records, field_name, outcome)
    return outcome


def _executions(tracks: list[CommandTrack], records: dict[str, list[tuple[float, Any]]], field_name: str, outcome: CommandOutcome) -> None:
    """Walk each node's record against its commands in the order they were published: a command's value must
    appear once (repeats mean it ran twice), and nothing may remain that no command explains."""
    by_node: dict[str, list[CommandTrack]] = {}
    for track in tracks:
        if field_name in track.issued.args:
            by_node.setdefault(track.issued.node, []).append(track)
    outcome.executed = 0
    for node, node_tracks in by_node.items():
        entries = sorted(records.get(node, []), key=lambda entry: entry[0])
        position = 0
        for track in sorted(node_tracks, key=lambda t: t.issued.at):
            wanted = track.issued.args[field_name]
            while position < len(entries) and entries[position][0] < track.issued.at - CLOCK_SLACK_S:
                position += 1  # before this command was asked: the previous one's business, already counted
                outcome.unexplained += 1
            runs = 0
            while position < len(entries) and entries[position][1] == wanted:
                runs += 1
                position += 1
            if runs:
                outcome.executed += 1
            if runs != 1:
                if runs > 1:
                    outcome.executed_twice += 1
                problem = "executed %d times (%s = %r in the node's record)" % (runs, field_name, wanted)
                outcome.problems.append(CommandProblem(node, track.issued.id, problem, track.final.state if track.final else ""))
        if position < len(entries):
            outcome.unexplained += len(entries) - position
            extra = [value for _at, value in entries[position:]]
            outcome.problems.append(CommandProblem(node, "-", "changes no command asked for: %s" % extra[:10], ""))


@dataclass
class EventProblem:
    node: str
    problem: str  # "lost", "late", "out of order", "unexpected"
    value: Any = None
    at: float | None = None  # the world's change (monotonic) or the delivery
    seconds: float | None = None


@dataclass
class EventOutcome:
    occurred: int = 0  # changes in the world's record that must become events
    delivered: int = 0  # of those, delivered at least once
    duplicated: int = 0  # extra copies (at least once)
    late: int = 0  # delivered later than the threshold after the change
    lost: int = 0
    out_of_order: int = 0  # delivered before an event the node sent earlier
    unexpected: int = 0  # events the world's record does not explain
    held: int = 0  # delivered, but the change came while the broker was away or the gateway dead: no latency counted
    latencies: list[float] = field(default_factory=list)  # seconds, world change -> first delivery
    judged: list[tuple[str, float, float]] = field(default_factory=list)  # (node, change at, seconds) of each latency judged
    problems: list[EventProblem] = field(default_factory=list)

    def p99(self) -> float | None:
        return percentile(self.latencies, 0.99)


@dataclass(frozen=True)
class EventSeen:
    node: str
    value: Any
    time: float  # the event's time as the node stamped it (SenML), identifies copies
    at: float  # when it arrived at the subscriber (monotonic)


def analyse_events(
    changes: dict[str, list[tuple[float, Any]]],
    seen: Iterable[EventSeen],
    late_after_s: float | None,
    held: list[tuple[float, float]] | None = None,
) -> EventOutcome:
    """changes: node -> [(at, value)] from the world's record; seen: every event delivery on the channel.

    Copies (same node, value and event time) count once, by their first arrival. Per node, the distinct events in
    the node's time order are matched to the world's changes in order; a change with no event of its value left is
    lost. In order: no event arrives after one the node stamped later. held: windows (the broker away, the gateway
    dead) whose changes must arrive but cannot arrive at once: they count for lost, not for latency or late."""
    outcome = EventOutcome()
    by_node: dict[str, dict[tuple[Any, float], EventSeen]] = {}
    for event in sorted(seen, key=lambda e: e.at):
        distinct = by_node.setdefault(event.node, {})
        key = (event.value, event.time)
        if key in distinct:
            outcome.duplicated += 1
        else:
            distinct[key] = event
    for node in sorted(set(changes) | set(by_node)):
        events = sorted(by_node.get(node, {}).values(), key=lambda e: (e.time, e.at))
        arrivals = sorted(events, key=lambda e: e.at)
        latest = float("-inf")
        for event in arrivals:
            if event.time < latest:
                outcome.out_of_order += 1
                outcome.problems.append(EventProblem(node, "out of order", event.value, event.at))
            latest = max(latest, event.time)
        position = 0
        for at, value in sorted(changes.get(node, []), key=lambda c: c[0]):
            outcome.occurred += 1
            match = position
            while match < len(events) and events[match].value != value:
                match += 1
            if match == len(events):
                outcome.lost += 1
                outcome.problems.append(EventProblem(node, "lost", value, at))
                continue
            for skipped in events[position:match]:
                outcome.unexpected += 1
                outcome.problems.append(EventProblem(node, "unexpected", skipped.value, skipped.at))
            position = match + 1
            outcome.delivered += 1
            if any(begin <= at <= end for begin, end in held or []):
                outcome.held += 1
                continue
            seconds = max(0.0, events[match].at - at)
            outcome.latencies.append(seconds)
            outcome.judged.append((node, at, seconds))
            if late_after_s is not None and seconds > late_after_s:
                outcome.late += 1
                outcome.problems.append(EventProblem(node, "late", value, at, seconds))
        for extra in events[position:]:
            outcome.unexpected += 1
            outcome.problems.append(EventProblem(node, "unexpected", extra.value, extra.at))
    return outcome


def state_changes(seen: list[EventSeen], initial: Any = 0) -> list[EventSeen]:
    """The deliveries that carry a change of the channel's value (copies included): a node's event carries all of
    its channels, so an event for another of them (the gauge's `rise`) repeats this one's value unchanged."""
    distinct: dict[tuple[str, Any, float], EventSeen] = {}
    for event in sorted(seen, key=lambda e: e.at):
        distinct.setdefault((event.node, event.value, event.time), event)
    keep: set[tuple[str, Any, float]] = set()
    previous: dict[str, Any] = {}
    for key in sorted(distinct, key=lambda k: (k[0], k[2])):
        node, value, _time = key
        if value != previous.get(node, initial):
            keep.add(key)
        previous[node] = value
    return [event for event in seen if (event.node, event.value, event.time) in keep]


@dataclass
class Check:
    name: str
    failure: str | None = None  # None: passed
    timed: bool = False  # a limit on time: judged by `edgegw hil run`; make test reports it, a loaded CI machine can miss it


def judge(
    criteria: PassCriteria,
    commands: CommandOutcome | None,
    within: dict[str, float | None],
    events: EventOutcome | None,
    frames: dict[str, int],
    readings_lost: int | None,
    buffer_full: bool | None = None,
    during_drain: int | None = None,
) -> list[Check]:
    """The scenario's pass criteria as named checks, each from the outcomes. within: request id -> its limit, seconds."""
    checks: list[Check] = []
    if commands is not None:
        c = commands
        checks.append(
            Check(
                "every command succeeded", None if c.commanded and not c.lost else "%d of %d did not (%s)" % (c.lost, c.commanded, c.finals)
            )
        )
        for limit in sorted({limit for limit in within.values() if limit is not None}):
            ids = {command for command, its in within.items() if its == limit}
            over = {p.id for p in c.problems if p.id in ids and (p.problem.startswith("late") or p.problem == "not succeeded")}
            checks.append(
                Check("every command succeeded within %g s" % limit, "%d of %d did not" % (len(over), len(ids)) if over else None, True)
            )
        if criteria.changes_per_command:
            name = "each node changed %s exactly once per command" % criteria.changes_per_command
            bad = c.executed is None or c.executed != c.commanded or c.executed_twice or c.unexplained
            found = "executed %s of %d, %d twice or more, %d changes no command asked for" % (
                c.executed,
                c.commanded,
                c.executed_twice,
                c.unexplained,
            )
            checks.append(Check(name, found if bad else None))
    if events is not None:
        e = events
        checks.append(
            Check("the world changed (events expected)", None if e.occurred else "no change in the world's record: nothing was tested")
        )
        checks.append(Check("every change was delivered as an event", "%d of %d lost" % (e.lost, e.occurred) if e.lost else None))
        checks.append(Check("no event the world does not explain", "%d unexpected" % e.unexpected if e.unexpected else None))
        if criteria.events_in_order:
            checks.append(Check("events arrive in order per node", "%d out of order" % e.out_of_order if e.out_of_order else None))
        if criteria.event_p99_s is not None:
            p99 = e.p99()
            shown = "-" if p99 is None else "%.2f" % p99
            slow = None if p99 is not None and p99 <= criteria.event_p99_s else "p99 %s s (%d late)" % (shown, e.late)
            checks.append(Check("events reach the subscriber within %g s of the change (p99)" % criteria.event_p99_s, slow, True))
    if frames:
        missing = frames["sent"] - frames["delivered"]
        checks.append(Check("every event the nodes sent was published", "%d missing" % missing if missing > 0 else None))
    if criteria.during_drain:
        failure = None if during_drain else "no change whose latency is judged came while the backlog drained: the scenario's timing is off"
        checks.append(Check("events judged while the backlog drained", failure, True))  # how fast it drains is the machine's
    if criteria.buffer_full:
        checks.append(
            Check(
                "the gateway's buffer was full (drop_oldest evicted readings)",
                None if buffer_full else "the gateway never said its buffer was full",
            )
        )
    if readings_lost is not None and not criteria.readings_lost_allowed:
        checks.append(Check("no reading lost", "%d lost" % readings_lost if readings_lost else None))
    return checks


def split_latency(judged: list[tuple[str, float, float]], wire: dict[str, list[float]]) -> tuple[list[float], list[float]]:
    """Each judged latency in two: change -> the node's event frame on the wire (the node), and wire -> subscriber
    (gateway and broker). wire: node -> when its event frames first appeared (the tap). The frame taken is the
    node's first one after the change; a change with none is left out."""
    node_part, gateway_part = [], []
    for node, at, seconds in judged:
        after = [t for t in wire.get(node, []) if t >= at]
        if after and min(after) - at <= seconds:
            node_part.append(min(after) - at)
            gateway_part.append(seconds - (min(after) - at))
    return node_part, gateway_part
