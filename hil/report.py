"""A scenario's result: the summary a person reads, and JSON and JUnit XML files for CI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .continuity import Flow, percentile


@dataclass
class FaultResult:
    description: str
    end: float  # seconds after the flow started
    recovery_s: float | None  # None: not everything produced while it lasted arrived
    applicable: bool = True
    note: str = ""


@dataclass
class Report:
    scenario: str
    description: str
    target: str
    nodes: int
    duration_s: float
    flow: Flow
    faults: list[FaultResult] = field(default_factory=list)
    wall_s: float = 0.0
    line_damage: dict[str, int] = field(default_factory=dict)  # what the line faults did (emulated target)
    counter_reuse: dict[str, int] = field(default_factory=dict)  # node -> HELLOs that re-used a frame counter

    @property
    def passed(self) -> bool:
        flow = self.flow
        every_node = len(flow.nodes) >= self.nodes and all(node.produced > 0 for node in flow.nodes)
        return every_node and flow.lost == 0 and flow.unexpected == 0 and not any(self.counter_reuse.values())

    def latency_ms(self, fraction: float) -> float | None:
        value = percentile(self.flow.latencies, fraction)
        return None if value is None else value * 1000.0

    def as_dict(self) -> dict[str, Any]:
        flow = self.flow
        return {
            "scenario": self.scenario,
            "description": self.description,
            "target": self.target,
            "passed": self.passed,
            "nodes": self.nodes,
            "duration_s": self.duration_s,
            "wall_s": round(self.wall_s, 1),
            "readings": {
                "produced": flow.produced,
                "delivered": flow.delivered,
                "duplicated": flow.duplicated,
                "lost": flow.lost,
                "unexpected": flow.unexpected,
            },
            "line_damage": self.line_damage,
            "frame_counter_reuse": self.counter_reuse,
            "latency_ms": {"p50": _round(self.latency_ms(0.50)), "p99": _round(self.latency_ms(0.99))},
            "peak_backlog": flow.peak_backlog,
            "faults": [
                {
                    "fault": f.description,
                    "ends_at_s": f.end,
                    "recovery_s": _round(f.recovery_s),
                    "applicable": f.applicable,
                    **({"note": f.note} if f.note else {}),
                }
                for f in self.faults
            ],
            "per_node": [
                {
                    "node_id": n.node_id,
                    "produced": n.produced,
                    "delivered": n.delivered,
                    "duplicated": n.duplicated,
                    "lost": len(n.lost),
                    "lost_samples": n.lost[:50],
                    "samples": [n.first, n.last],
                }
                for n in flow.nodes
            ],
        }

    def summary(self) -> str:
        flow = self.flow
        lines = [
            "scenario %s (%s target, %d nodes, %g s of flow, %.0f s wall): %s"
            % (self.scenario, self.target, self.nodes, self.duration_s, self.wall_s, "PASSED" if self.passed else "FAILED"),
            "  readings   produced %d  delivered %d  duplicated %d  lost %d" % (flow.produced, flow.delivered, flow.duplicated, flow.lost),
            "  latency    p50 %s  p99 %s  (frame on the wire -> SenML record at an MQTT subscriber)"
            % (_ms(self.latency_ms(0.50)), _ms(self.latency_ms(0.99))),
            "  backlog    peak %d readings produced and not yet delivered" % flow.peak_backlog,
        ]
        if any(self.line_damage.values()):
            lines.append(
                "  line       %s" % ", ".join("%s %d" % (k.replace("_", " "), v) for k, v in sorted(self.line_damage.items()) if v)
            )
        if flow.unexpected:
            lines.append("  CORRUPT    %d delivered readings were never produced by a node" % flow.unexpected)
        if len(flow.nodes) < self.nodes:
            lines.append("  SILENT     %d of %d nodes produced no reading during the flow" % (self.nodes - len(flow.nodes), self.nodes))
        for node_id, reuse in sorted(self.counter_reuse.items()):
            if reuse:
                lines.append("  REUSED     node %s re-used frame counters after %d reboot(s)" % (node_id, reuse))
        for fault in self.faults:
            if not fault.applicable:
                lines.append("  fault      %s: not applicable (%s)" % (fault.description, fault.note))
            elif fault.recovery_s is None:
                lines.append("  fault      %s: NOT recovered (readings produced while it lasted are missing)" % fault.description)
            else:
                lines.append("  fault      %s: recovered %.1f s after it ended" % (fault.description, fault.recovery_s))
        for node in flow.nodes:
            if node.lost:
                shown = ", ".join(str(sample) for sample in node.lost[:10]) + (" ..." if len(node.lost) > 10 else "")
                lines.append("  LOST       node %s: %d readings (samples %s)" % (node.node_id, len(node.lost), shown))
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=1) + "\n")

    def write_junit(self, path: Path) -> None:
        """One test suite per scenario: continuity per node, recovery per fault."""
        cases: list[tuple[str, str | None, str | None]] = []  # name, failure message, skipped message
        for node in self.flow.nodes:
            failure = "%d readings lost: %s" % (len(node.lost), node.lost[:20]) if node.lost else None
            cases.append(("node %s delivers every reading" % node.node_id, failure, None))
        silent = self.nodes - len(self.flow.nodes)
        cases.append(
            ("every node produced readings", "%d of %d nodes produced nothing in the flow" % (silent, self.nodes) if silent else None, None)
        )
        unexpected = "%d delivered readings were never produced" % self.flow.unexpected if self.flow.unexpected else None
        cases.append(("no corrupted reading is accepted", unexpected, None))
        reused = {node: n for node, n in self.counter_reuse.items() if n}
        cases.append(("frame counters are never re-used", "re-used after a reboot: %s" % reused if reused else None, None))
        for fault in self.faults:
            name = "recovers from %s" % fault.description
            if not fault.applicable:
                cases.append((name, None, "not applicable: %s" % fault.note))
            elif fault.recovery_s is None:
                cases.append((name, "not recovered: readings produced while it lasted are missing", None))
            else:
                cases.append((name, None, None))
        write_suite(path, self.scenario, cases, self.wall_s, self.summary())


def write_suite(path: Path, scenario: str, cases: list[tuple[str, str | None, str | None]], wall_s: float, summary: str) -> None:
    """JUnit XML: one test suite per scenario; cases are (name, failure message, skipped message)."""
    suite = ET.Element(
        "testsuite",
        name="hil.%s" % scenario,
        tests=str(len(cases)),
        failures=str(sum(1 for _n, f, _s in cases if f)),
        skipped=str(sum(1 for _n, _f, s in cases if s)),
        time="%.1f" % wall_s,
    )
    for name, failure, skipped in cases:
        case = ET.SubElement(suite, "testcase", classname="hil.%s" % scenario, name=name)
        if failure:
            ET.SubElement(case, "failure", message=failure).text = failure
        if skipped:
            ET.SubElement(case, "skipped", message=skipped)
    ET.SubElement(suite, "system-out").text = summary
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ms(value: float | None) -> str:
    return "-" if value is None else "%.0f ms" % value
