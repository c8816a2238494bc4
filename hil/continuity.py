"""Did every reading arrive? Per node, the `counter` channel's sample numbers seen on the wire vs. on the broker.

Produced: a sample number the tap saw leave the node (first time, before any
fault). Delivered: a SenML record `urn:dev:edgegw:{node}:counter` the MQTT
capture received. Both clocks are this process's `time.monotonic()`, so the
difference is the delivery latency, end to end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


@dataclass
class NodeFlow:
    node_id: str
    produced: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: list[int] = field(default_factory=list)
    first: int | None = None  # lowest sample number produced in the window
    last: int | None = None


@dataclass
class Flow:
    nodes: list[NodeFlow]
    latencies: list[float]  # seconds, one per delivered reading
    peak_backlog: int  # readings produced and not yet delivered, at the worst moment
    recovery: list[float | None]  # per fault: seconds after its end until everything produced while it lasted arrived
    unexpected: int = 0  # deliveries of a sample no node produced: a corrupted reading got through

    @property
    def produced(self) -> int:
        return sum(n.produced for n in self.nodes)

    @property
    def delivered(self) -> int:
        return sum(n.delivered for n in self.nodes)

    @property
    def duplicated(self) -> int:
        return sum(n.duplicated for n in self.nodes)

    @property
    def lost(self) -> int:
        return sum(len(n.lost) for n in self.nodes)


def analyse(
    produced: dict[tuple[str, int], float],
    deliveries: list[tuple[str, int, float]],
    *,
    start: float,
    cutoff: float,
    fault_windows: list[tuple[float, float]] | None = None,
) -> Flow:
    """Continuity of the readings produced between start and cutoff (monotonic times).

    A reading produced in the window and never delivered is lost; one delivered
    more than once is duplicated (at-least-once between gateway and broker
    after a crash); latency counts the first delivery.
    """
    window = {key: at for key, at in produced.items() if start <= at <= cutoff}
    first_delivery: dict[tuple[str, int], float] = {}
    copies: dict[tuple[str, int], int] = {}
    for node, sample, at in deliveries:
        key = (node, sample)
        copies[key] = copies.get(key, 0) + 1
        if key not in first_delivery or at < first_delivery[key]:
            first_delivery[key] = at
    per_node: dict[str, NodeFlow] = {}
    latencies = []
    for (node, sample), at in sorted(window.items()):
        flow = per_node.setdefault(node, NodeFlow(node))
        flow.produced += 1
        flow.first = sample if flow.first is None else min(flow.first, sample)
        flow.last = sample if flow.last is None else max(flow.last, sample)
        if (node, sample) in first_delivery:
            flow.delivered += 1
            flow.duplicated += copies[(node, sample)] - 1
            latencies.append(max(0.0, first_delivery[(node, sample)] - at))
        else:
            flow.lost.append(sample)
    events = sorted([(at, 1) for at in window.values()] + [(first_delivery[key], -1) for key in window if key in first_delivery])
    backlog = peak = 0
    for _at, step in events:
        backlog += step
        peak = max(peak, backlog)
    recovery: list[float | None] = []
    for begin, end in fault_windows or []:
        during = [key for key, at in window.items() if begin <= at <= end]  # what the fault could have hurt
        if any(key not in first_delivery for key in during):
            recovery.append(None)  # never recovered: something produced while it lasted was lost
        else:
            done = max((first_delivery[key] for key in during), default=end)
            recovery.append(max(0.0, done - end))
    unexpected = sum(1 for node, sample, _at in deliveries if (node, sample) not in produced)
    return Flow(sorted(per_node.values(), key=lambda n: n.node_id), latencies, peak, recovery, unexpected)
