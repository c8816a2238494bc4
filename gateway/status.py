"""The gateway's status, built in one place from the metrics registry (gateway/metrics.py): the document
`edgegw status --json` prints and the MQTT status topic carries, and the table a technician reads.

The document's keys are its contract (README, "The status document"): scripts read `--json`, dashboards the
retained topic. The table is for people and may change.
"""

from __future__ import annotations

import math
import time
from typing import Any

from .metrics import LATENCY_BUCKETS, Snapshot


def _quantile_ms(snapshot: Snapshot, name: str, q: float) -> float | None:
    """The upper bound of the histogram bucket holding the q-th observation, in ms (None: no observation, or
    beyond the last finite bucket): a bound, as a histogram gives, not an exact value."""
    count = snapshot.value(name + "_count")
    if count <= 0:
        return None
    wanted = q * count
    for bound in LATENCY_BUCKETS:
        if snapshot.value(name + "_bucket", le=_le(bound)) >= wanted:
            return bound * 1000
    return None


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _mean_ms(snapshot: Snapshot, name: str) -> float | None:
    count = snapshot.value(name + "_count")
    return round(snapshot.value(name + "_sum") / count * 1000, 1) if count > 0 else None


def document(snapshot: Snapshot, state: str = "online", now: float | None = None, with_nodes: bool = True) -> dict[str, Any]:
    """Everything, by topic; plus the flat keys the MQTT status topic had before this document (kept for its
    readers: `buffered_readings`, `acked_by_broker` ...). Each family is gone through once (a thousand nodes
    must not cost a thousand scans of each: this runs on the agent's event loop)."""
    now = time.time() if now is None else now
    started = snapshot.value("edgegw_start_time_seconds")
    info = snapshot.rows("edgegw_info")
    labels = info[0][0] if info else {}
    readings = int(snapshot.value("edgegw_buffer_readings"))
    drain = snapshot.value("edgegw_buffer_drain_per_second")
    since = snapshot.value("edgegw_uplink_connected_since_seconds")
    broker = snapshot.rows("edgegw_uplink_connected")
    ports = _ports(snapshot)
    nodes = _nodes(snapshot) if with_nodes else {}
    publishes = {kind: int(value) for kind, value in snapshot.by("edgegw_uplink_publishes_total", "kind").items()}
    acked = snapshot.by("edgegw_frames_acked_total", "how")
    document: dict[str, Any] = {
        "state": state,
        "gateway_id": labels.get("gateway_id", ""),
        "version": labels.get("version", ""),
        "started": int(started),
        "uptime_s": int(max(0.0, now - started)),
        "uplink": {
            "connected": bool(broker and broker[0][1]),
            "broker": broker[0][0].get("broker", "") if broker else "",
            "connected_since": since or None,
            "connections": int(snapshot.value("edgegw_uplink_connections_total")),
            "publishes": publishes,
            "puback_mean_ms": _mean_ms(snapshot, "edgegw_uplink_puback_seconds"),
            "puback_p99_ms_at_most": _quantile_ms(snapshot, "edgegw_uplink_puback_seconds", 0.99),
        },
        "buffer": {
            "readings": readings,
            "events": int(snapshot.value("edgegw_buffer_events")),
            "bytes": int(snapshot.value("edgegw_buffer_bytes")),
            "oldest_age_s": round(snapshot.value("edgegw_buffer_oldest_age_seconds"), 1),
            "drain_per_s": round(drain, 1),
            "empty_in_s": max(1, round(readings / drain)) if readings and drain > 0 else (0 if not readings else None),
        },
        "storage": {
            "commits": int(snapshot.value("edgegw_commit_seconds_count")),
            "commit_mean_ms": _mean_ms(snapshot, "edgegw_commit_seconds"),
            "commit_p99_ms_at_most": _quantile_ms(snapshot, "edgegw_commit_seconds", 0.99),
            "commit_failures": int(snapshot.value("edgegw_commit_failures_total")),
            "written_bytes": int(snapshot.value("edgegw_storage_written_bytes_total")),
        },
        "commands": {state: int(value) for state, value in snapshot.by("edgegw_commands", "state").items()},
        "commands_ended": {state: int(value) for state, value in snapshot.by("edgegw_commands_ended_total", "state").items()},
        "ports": ports,
        "nodes": nodes,
        # The flat keys of the MQTT status topic before this document (README): the same numbers
        "buffered_readings": readings,
        "buffered_events": int(snapshot.value("edgegw_buffer_events")),
        "nodes_with_key": int(snapshot.value("edgegw_nodes_with_key")),
        "events_published": int(snapshot.value("edgegw_events_published_total")),
        "events_demoted": int(snapshot.value("edgegw_events_demoted_total")),
        "acked_by_broker": int(acked.get("broker", 0)),
        "acked_on_disk": int(acked.get("disk", 0)),
        "missed_broker_ack_wait": int(snapshot.value("edgegw_frames_broker_ack_missed_total")),
    }
    return document


def mqtt_document(snapshot: Snapshot, state: str) -> dict[str, Any]:
    """The retained status topic: the document without the node table (each node has its own status topic),
    and `nodes` as their number, as it always was."""
    full = document(snapshot, state, with_nodes=False)
    full["nodes"] = len(snapshot.rows("edgegw_node_last_seen_seconds"))
    return full


def _ports(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    ports: dict[str, dict[str, Any]] = {
        labels["port"]: {"frames": 0, "bytes": 0, "duplicates": 0, "errors": {}, "replies_dropped": {}}
        for labels, _ in snapshot.rows("edgegw_port_open")
    }
    counts = (("frames", "edgegw_port_frames_total"), ("bytes", "edgegw_port_bytes_total"), ("duplicates", "edgegw_port_duplicates_total"))
    for key, name in counts:
        for labels, value in snapshot.rows(name):
            if labels.get("port") in ports:
                ports[labels["port"]][key] = int(value)
    for key, name in (("errors", "edgegw_port_bad_frames_total"), ("replies_dropped", "edgegw_port_replies_dropped_total")):
        for labels, value in snapshot.rows(name):
            if labels.get("port") in ports:
                ports[labels["port"]][key][labels["reason"]] = int(value)
    return ports


def _nodes(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    nodes: dict[str, dict[str, Any]] = {
        labels["node"]: {"port": None, "last_seen": round(last_seen, 3) if last_seen else None, "readings": 0, "missing_frames": 0}
        for labels, last_seen in snapshot.rows("edgegw_node_last_seen_seconds")
    }
    for labels, _ in snapshot.rows("edgegw_node_port_info"):
        if labels["node"] in nodes:
            nodes[labels["node"]]["port"] = labels["port"] or None
    for key, name, kind in (
        ("readings", "edgegw_node_readings_total", int),
        ("missing_frames", "edgegw_node_missing_frames", int),
        ("battery_v", "edgegw_node_battery_volts", float),
        ("rssi_dbm", "edgegw_node_rssi_dbm", float),
        ("snr_db", "edgegw_node_snr_db", float),
        ("sf", "edgegw_node_spreading_factor", int),
        ("delivery_ratio", "edgegw_node_delivery_ratio", float),
    ):
        for labels, value in snapshot.rows(name):
            entry = nodes.get(labels["node"])
            if entry is not None and math.isfinite(value):
                entry[key] = kind(value)
    return nodes


# ------------------------------------------------------------ for people


def span_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return "%ds" % seconds
    if seconds < 3600:
        return "%dm%02ds" % divmod(seconds, 60)
    if seconds < 86400:
        return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)
    return "%dd%02dh" % (seconds // 86400, seconds % 86400 // 3600)


def size_text(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (count, unit)
        count /= 1000
    return str(count)


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]


def table(doc: dict[str, Any], now: float | None = None) -> str:
    """The status as a technician reads it in a terminal: one screen, the problems first in each line."""
    now = time.time() if now is None else now
    uplink, buffer, storage = doc["uplink"], doc["buffer"], doc["storage"]
    lines = ["edgegw %s (%s), up %s" % (doc["gateway_id"], doc["version"], span_text(doc["uptime_s"]))]
    if doc.get("page"):
        lines.append("page      %s (Prometheus: %smetrics)" % (doc["page"], doc["page"]))
    if uplink["connected"]:
        since = uplink["connected_since"]
        puback = uplink["puback_mean_ms"]
        lines.append(
            "uplink    connected to %s for %s; %d publishes, PUBACK %s"
            % (
                uplink["broker"],
                span_text(now - since if since else None),
                sum(uplink["publishes"].values()),
                "mean %.1f ms" % puback if puback is not None else "none yet",
            )
        )
    else:
        lines.append(
            "uplink    NOT CONNECTED to %s (%d connections since start): readings wait on disk" % (uplink["broker"], uplink["connections"])
        )
    if buffer["readings"]:
        eta = buffer["empty_in_s"]
        drain = "draining %.1f/s, empty in about %s" % (buffer["drain_per_s"], span_text(eta)) if eta else "not draining"
        lines.append(
            "buffer    %d readings (%d events), %s, oldest %s; %s"
            % (buffer["readings"], buffer["events"], size_text(buffer["bytes"]), span_text(buffer["oldest_age_s"]), drain)
        )
    else:
        lines.append("buffer    empty (%s of pages)" % size_text(buffer["bytes"]))
    commit = storage["commit_mean_ms"]
    lines.append(
        "storage   %d commits%s, %d failed; %s written since start"
        % (
            storage["commits"],
            ", mean %.1f ms" % commit if commit is not None else "",
            storage["commit_failures"],
            size_text(storage["written_bytes"]),
        )
    )
    live = doc["commands"]
    ended = doc["commands_ended"]
    lines.append(
        "commands  %s; ended: %s"
        % (
            ", ".join("%d %s" % (live[state], state) for state in sorted(live) if live[state]) or "none waiting",
            ", ".join("%d %s" % (ended[state], state) for state in sorted(ended)) or "none",
        )
    )
    lines.append("ports     %d open" % len(doc["ports"]))
    if doc["ports"]:
        rows = [
            [
                path,
                str(port["frames"]),
                size_text(port["bytes"]),
                str(sum(port["errors"].values())),
                str(sum(port["replies_dropped"].values())),
            ]
            for path, port in sorted(doc["ports"].items())
        ]
        lines += _grid(["PORT", "FRAMES", "READ", "BAD", "REPLIES DROPPED"], rows)
    lines.append("nodes     %d known" % len(doc["nodes"]))
    if doc["nodes"]:
        rows = []
        for node, entry in sorted(doc["nodes"].items()):
            last = entry["last_seen"]
            radio = ""
            if "rssi_dbm" in entry:
                snr = " %.1f dB" % entry["snr_db"] if "snr_db" in entry else ""
                radio = "SF%s %.0f dBm%s" % (entry.get("sf", "?"), entry["rssi_dbm"], snr)
            rows.append(
                [
                    node,
                    entry["port"] or "-",
                    span_text(now - last) + " ago" if last else "never",
                    str(entry["readings"]),
                    str(entry["missing_frames"]),
                    "%.2f V" % entry["battery_v"] if "battery_v" in entry else "-",
                    radio or "-",
                ]
            )
        lines += _grid(["NODE", "PORT", "LAST SEEN", "READINGS", "MISSING", "BATTERY", "RADIO"], rows)
    return "\n".join(lines) + "\n"
