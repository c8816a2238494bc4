"""What a city scenario on the air (hil/radio_rig.py) adds to its report: the air's own record and the nodes' radio.

From the air (hil/air.py, which saw every transmission): uplinks and downlinks, every transmission that broke its
sender's EU868 duty cycle (none may), and which nodes got a downlink at all. From the status documents the gateway
published (SPEC.md §5.7 `air`, §5.11 `radio`): per SF, the nodes' delivery ratio and link margin, each bridge's
airtime and budget, and each node's battery life as hil/energy.py extrapolates it from what the node measured
between its first and last STATUS (its radio's time on air and listening, and its uplinks): the steady state,
not the boot's HELLO and first TIME.
"""

from __future__ import annotations

import contextlib
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from protocols.dutycycle import BANDS, band

from .air_record import FATES, AirRecord
from .capture import MqttCapture, is_gateway_status
from .energy import SX1276, estimate_from_report
from .outcomes import Check
from .radio import DELIVERED, Transmission

# Uplinks measured between two STATUS for a battery estimate: at least a STATUS and a reading round (tree-health,
# a STATUS per 30 minutes: the STATUS, two READINGS, the windows of each, the sleep between; a retransmission adds
# one), never a window's worth of one frame
MIN_UPLINKS = 2
_MEASURED = ("tx_ms", "rx_ms", "tx")  # a node's STATUS `air` counts the estimate is made of
STARTUP_SLACK_S = 0.05  # the air stamps a pty radio's start when it reads the line: two processes' scheduling either way


@dataclass
class AirOutcome:
    uplinks: int
    downlinks: int
    nodes: int
    answered: int  # nodes that received at least one downlink
    duty_breaches: list[str]
    malformed: int  # lines from a radio the air's protocol does not know
    by_sf: dict[int, dict[str, Any]] = field(default_factory=dict)  # sf -> nodes, pdr, margin, battery years
    bridges: dict[str, dict[str, Any]] = field(default_factory=dict)  # bridge hex -> its STATUS air and downlink counts
    years: dict[str, float] = field(default_factory=dict)  # node hex -> estimated battery life
    fates: dict[int, Counter[str]] = field(default_factory=dict)  # SF on air -> the nodes' uplinks by fate (air_record.py)
    unheard: dict[str, dict[str, int]] = field(default_factory=dict)  # node hex -> its uplinks' fates, for a node no bridge got
    # Frames the gateway judged past twice their node's duty cycle (SPEC.md §5.11), by its latest status: none from a
    # node that keeps it, as every node here does
    over_duty: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "uplinks": self.uplinks,
            "downlinks": self.downlinks,
            "nodes_answered": "%d of %d" % (self.answered, self.nodes),
            "duty_cycle_breaches": self.duty_breaches[:100],
            "malformed_lines": self.malformed,
            "by_sf": {str(sf): values for sf, values in sorted(self.by_sf.items())},
            "bridges": self.bridges,
            "battery_years": {node: round(years, 2) for node, years in sorted(self.years.items())},
            "uplink_fates": {str(sf): dict(fates) for sf, fates in sorted(self.fates.items())},
            "unheard_nodes": self.unheard,
            "over_duty_cycle": self.over_duty,
        }

    def summary(self) -> list[str]:
        lines = [
            "  air        uplinks %d  downlinks %d  nodes answered %d of %d  duty-cycle breaches %d"
            % (self.uplinks, self.downlinks, self.answered, self.nodes, len(self.duty_breaches))
        ]
        for sf, values in sorted(self.by_sf.items()):
            years = values.get("battery_years")
            life = "" if not years else "  battery %.2f-%.2f years (median %.2f)" % (years["min"], years["max"], years["median"])
            lines.append(
                "  SF%-2d       %d nodes  pdr median %s  margin median %s dB%s"
                % (sf, values["nodes"], _text(values.get("pdr")), _text(values.get("margin_db")), life)
            )
        for sf, fates in sorted(self.fates.items()):
            told = "  ".join("%s %d" % (fate, fates[fate]) for fate in FATES if fates[fate])
            lines.append("  on air     SF%-2d uplinks %d: %s" % (sf, sum(fates.values()), told))
        for node_hex, lost in sorted(self.unheard.items()):
            lines.append("  unheard    %s: %s" % (node_hex, "  ".join("%s %d" % item for item in sorted(lost.items()))))
        for bridge, air in sorted(self.bridges.items()):
            lines.append("  bridge     %s %s" % (bridge, "  ".join("%s %s" % item for item in sorted(air.items()))))
        return lines

    def checks(self, battery_estimates: bool) -> list[Check]:
        found = [
            Check("air: every transmission kept its sender's duty cycle", "; ".join(self.duty_breaches[:5]) or None),
            Check("air: every node received a downlink", None if self.answered == self.nodes else "%d of %d" % (self.answered, self.nodes)),
            Check("gateway: no node heard past its duty cycle", "%d frames" % self.over_duty if self.over_duty else None),
        ]
        if battery_estimates:
            missing = self.nodes - len(self.years)
            failure = "%d of %d nodes sent too few STATUS for an estimate" % (missing, self.nodes) if missing else None
            found.append(Check("energy: a battery life estimated for every node", failure))
        return found


def duty_breaches(transmissions: list[Transmission], senders: set[str] | None = None, slack_s: float = STARTUP_SLACK_S) -> list[str]:
    """Every transmission (of `senders`, if given) that started before its sub-band's time-off after the same
    sender's previous one ended, less `slack_s` for how its start was stamped."""
    broken = []
    last: dict[tuple[str, int], Transmission] = {}
    for t in sorted(transmissions, key=lambda t: t.start):
        if senders is not None and t.sender not in senders:
            continue
        index = band(t.channel)
        previous = last.get((t.sender, index))
        if previous is not None and t.start < previous.start + previous.airtime * 100000 / BANDS[index][2] - slack_s:
            breach = t.start - previous.start
            broken.append("%s at %.3f s, %.3f s after a frame of %.3f s" % (t.sender, t.start, breach, previous.airtime))
        last[(t.sender, index)] = t
    return broken


def hourly_breaches(transmissions: list[Transmission], senders: set[str]) -> list[str]:
    """Every transmission of `senders` that brought its sub-band's airtime in the hour it ended past the limit (ETSI's
    own rule, the one a bridge keeps: protocols/dutycycle.py)."""
    broken = []
    kept: dict[tuple[str, int], list[Transmission]] = {}
    for t in sorted(transmissions, key=lambda t: t.start):
        if t.sender not in senders:
            continue
        index = band(t.channel)
        hour = kept.setdefault((t.sender, index), [])
        hour.append(t)
        while hour[0].end <= t.end - 3600:
            hour.pop(0)
        on_air = sum(min(other.end, t.end) - max(other.start, t.end - 3600) for other in hour)
        if on_air > 3600 * BANDS[index][2] / 100000 + STARTUP_SLACK_S:
            broken.append("%s at %.3f s: %.1f s on air in the hour before" % (t.sender, t.start, on_air))
    return broken


def analyse_air(
    transmissions: list[Transmission],
    received: Counter[tuple[str, str]],
    malformed: int,
    nodes: dict[str, str],
    bridges: dict[str, str],
    capture: MqttCapture,
    power_dbm: float = 14.0,
    record: AirRecord | None = None,
) -> AirOutcome:
    """nodes, bridges: name on the air -> node hex; record: what each bridge got of each uplink."""
    uplinks = sum(1 for t in transmissions if t.sender in nodes)
    answered = sum(1 for name in nodes if any(received[(bridge, name)] for bridge in bridges))
    statuses = _statuses(capture)
    # The nodes keep LoRaWAN's time-off after each frame; the bridges ETSI's hourly limit (protocols/dutycycle.py)
    breaches = duty_breaches(transmissions, set(nodes)) + hourly_breaches(transmissions, set(bridges))
    outcome = AirOutcome(uplinks, len(transmissions) - uplinks, len(nodes), answered, breaches, malformed)
    per_sf: dict[int, dict[str, list[float]]] = {}
    nodes_at: Counter[int] = Counter()
    for node_hex in nodes.values():
        documents = statuses.get(node_hex, [])
        radio = next((d["radio"] for d in reversed(documents) if isinstance(d.get("radio"), dict)), None)
        if radio is None:
            continue
        values = per_sf.setdefault(radio["sf"], {"pdr": [], "margin_db": [], "years": []})
        nodes_at[radio["sf"]] += 1
        if "pdr" in radio:  # left out until a counter this gateway run may count came (gateway/delivery.py)
            values["pdr"].append(radio["pdr"])
        if "margin_db" in radio:
            values["margin_db"].append(radio["margin_db"])
        years = _battery_years(documents, power_dbm)
        if years is not None:
            outcome.years[node_hex] = years
            values["years"].append(years)
    for sf, values in per_sf.items():
        outcome.by_sf[sf] = {
            "nodes": nodes_at[sf],
            "pdr": _spread(values["pdr"]),
            "margin_db": _spread(values["margin_db"]),
            "battery_years": _spread(values["years"]),
        }
    if record is not None:
        for name, fates in record.fates(transmissions, set(nodes)).items():
            if not fates[DELIVERED]:
                outcome.unheard[nodes[name]] = dict(fates)
        for t in transmissions:
            if t.sender in nodes:
                outcome.fates.setdefault(t.sf, Counter())[record.fate(t)] += 1
    ports = _gateway_status(capture).get("ports", {})
    outcome.over_duty = sum(port.get("errors", {}).get("over_duty_cycle", 0) for name, port in ports.items() if name.startswith("radio:"))
    for bridge_hex in bridges.values():
        documents = statuses.get(bridge_hex, [])
        if documents:
            latest = documents[-1]
            outcome.bridges[bridge_hex] = {**latest.get("air", {}), **{"downlink_" + k: v for k, v in latest.get("downlink", {}).items()}}
    return outcome


def unestimated(capture: MqttCapture, nodes: list[str], power_dbm: float = 14.0) -> list[str]:
    """The nodes (hex) whose STATUS published so far give no battery estimate: what a run's settle waits for when
    the estimates are judged (a probe switched on last, its STATUS lost at SF12, sends it again 11 minutes later)."""
    statuses = _statuses(capture)
    return [node for node in nodes if _battery_years(statuses.get(node, []), power_dbm) is None]


def _statuses(capture: MqttCapture) -> dict[str, list[dict[str, Any]]]:
    """Each node's status documents in the order published, one per uptime (a republished one says nothing new)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for message in capture.snapshot():
        if not message.topic.endswith("/status") or "/nodes/" not in message.topic or not message.payload:
            continue
        document = json.loads(message.payload)
        kept = found.setdefault(message.topic.split("/")[-2], [])
        if kept and kept[-1].get("uptime") == document.get("uptime"):
            kept[-1] = document
        else:
            kept.append(document)
    return found


def _gateway_status(capture: MqttCapture) -> dict[str, Any]:
    """The gateway's latest full status document (its `{base}/{gateway}/status` while online: the one it leaves at
    its stop says only `offline`), or {} if none came."""
    latest: dict[str, Any] = {}
    for message in capture.snapshot():
        if is_gateway_status(message.topic) and message.payload:
            with contextlib.suppress(ValueError):
                document = json.loads(message.payload)
                if isinstance(document, dict) and isinstance(document.get("ports"), dict):
                    latest = document
    return latest


def _battery_years(documents: list[dict[str, Any]], power_dbm: float) -> float | None:
    """From the first and last STATUS of the node's latest boot with two: what it measured in between, extrapolated
    at the TX power of the last (power_dbm if it does not say)."""
    boots: list[list[dict[str, Any]]] = []  # the reports split where the node started again
    for document in documents:
        if not (isinstance(document.get("air"), dict) and isinstance(document.get("uptime"), int)):
            continue
        if boots and not _restarted(boots[-1][-1], document):
            boots[-1].append(document)
        else:
            boots.append([document])
    boot = next((reports for reports in reversed(boots) if len(reports) >= 2), None)  # the latest measured
    if boot is None:
        return None
    first, last = boot[0], boot[-1]
    power = last["air"].get("power", power_dbm)  # the node's TX power (link adaptation may have lowered it)
    # The datasheet's table starts at +7 dBm (RFO, 20 mA): a node advised 2 or 5 dBm is counted at that current,
    # which the datasheet gives no lower figure for (an estimate on the safe side, not a refusal)
    lowest, highest = SX1276.tx_ma[0][0], SX1276.tx_ma[-1][0]
    power = min(max(power, lowest), highest)
    elapsed = last["uptime"] - first["uptime"]
    delta = {key: last["air"].get(key, 0) - first["air"].get(key, 0) for key in _MEASURED}
    if elapsed <= 0:  # two reports of one moment
        return None
    if delta["tx"] < MIN_UPLINKS:  # one uplink or none, no whole round: it says more about the window than the node
        return None
    try:
        return estimate_from_report(delta["tx_ms"], delta["rx_ms"], elapsed, delta["tx"], power_dbm=power).years
    except ValueError:  # figures the model refuses (more on air than a day holds: a node's counters gone wrong)
        return None


def _restarted(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether the node started again between two of its STATUS: its uptime, or a count of its radio's, went back
    (an estimate across a reboot would add two boots' counts: a review found 0.37 and 0.55 years made 1.17)."""
    return after["uptime"] < before["uptime"] or any(after["air"].get(key, 0) < before["air"].get(key, 0) for key in _MEASURED)


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(min(values), 2), "median": round(statistics.median(values), 2), "max": round(max(values), 2)}


def _text(spread: dict[str, float] | None) -> str:
    return "-" if spread is None else "%g" % spread["median"]
