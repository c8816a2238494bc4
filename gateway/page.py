"""The local status page: the status document (gateway/status.py) and the last hour (gateway/history.py) as one
self-contained HTML page. No script, no file from elsewhere (a cabinet laptop is often offline); it reloads
itself every REFRESH_S. Everything a node or a config could put in it is escaped.
"""

from __future__ import annotations

import html
import math
import time
from typing import Any

from .history import History
from .status import size_text, span_text

REFRESH_S = 10
SPARK_W, SPARK_H = 120, 24

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse}td,th{padding:.15em .8em .15em 0;text-align:left;vertical-align:middle}
th{font-weight:600;border-bottom:1px solid #ccc}.num{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#b00020;font-weight:600}.ok{color:#11772d;font-weight:600}.muted{color:#777}
svg.spark polyline{fill:none;stroke:#1565c0;stroke-width:1.5}
"""


def sparkline(values: list[float], label: str) -> str:
    """An inline SVG of the values (at least two points: one point is drawn as a flat line)."""
    values = [value if math.isfinite(value) and value > 0 else 0.0 for value in values] or [0.0]
    if len(values) == 1:
        values = values * 2
    top = max(values) or 1.0
    step = (SPARK_W - 2) / (len(values) - 1)
    points = " ".join("%.1f,%.1f" % (1 + i * step, SPARK_H - 2 - (SPARK_H - 4) * value / top) for i, value in enumerate(values))
    return '<svg class="spark" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="%s"><polyline points="%s"/></svg>' % (
        SPARK_W,
        SPARK_H,
        SPARK_W,
        SPARK_H,
        html.escape(label),
        points,
    )


def _rows(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:  # type: ignore[assignment]
    head = "".join("<th>%s</th>" % html.escape(cell) for cell in header)
    body = "".join(
        "<tr>%s</tr>" % "".join('<td class="num">%s</td>' % cell if i in numeric else "<td>%s</td>" % cell for i, cell in enumerate(row))
        for row in rows
    )
    return "<table><tr>%s</tr>%s</table>" % (head, body)


def render(doc: dict[str, Any], history: History, now: float | None = None) -> str:
    now = time.time() if now is None else now
    e = html.escape
    uplink, buffer, storage = doc["uplink"], doc["buffer"], doc["storage"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta http-equiv="refresh" content="%d">' % REFRESH_S,
        "<title>edgegw %s</title><style>%s</style></head><body>" % (e(doc["gateway_id"]), _STYLE),
        "<h1>edgegw %s</h1>" % e(doc["gateway_id"]),
        '<p class="muted">version %s, up %s; this page reloads every %d s (JSON: <a href="status.json">status.json</a>, '
        'Prometheus: <a href="metrics">metrics</a>)</p>' % (e(doc["version"]), span_text(doc["uptime_s"]), REFRESH_S),
        "<h2>Uplink</h2>",
    ]
    if uplink["connected"]:
        since = uplink["connected_since"]
        parts.append(
            '<p><span class="ok">connected</span> to %s for %s; %d publishes; PUBACK mean %s ms</p>'
            % (
                e(uplink["broker"]),
                span_text(now - since if since else None),
                sum(uplink["publishes"].values()),
                uplink["puback_mean_ms"] or "-",
            )
        )
    else:
        parts.append(
            '<p><span class="bad">not connected</span> to %s (%d connections since start): readings wait on disk</p>'
            % (e(uplink["broker"]), uplink["connections"])
        )
    drain = "draining %.1f/s, empty in about %s" % (buffer["drain_per_s"], span_text(buffer["empty_in_s"])) if buffer["empty_in_s"] else ""
    parts += [
        "<h2>Buffer</h2>",
        "<p>%d readings (%d events), %s, oldest %s %s %s</p>"
        % (
            buffer["readings"],
            buffer["events"],
            size_text(buffer["bytes"]),
            span_text(buffer["oldest_age_s"]),
            e(drain),
            sparkline(history.buffer(buffer["readings"]), "buffered readings, last hour"),
        ),
        "<p class=muted>%d commits, mean %s ms, %d failed; %s written since start</p>"
        % (storage["commits"], storage["commit_mean_ms"] or "-", storage["commit_failures"], size_text(storage["written_bytes"])),
        "<h2>Ports</h2>",
    ]
    ports = [
        [
            e(path),
            str(port["frames"]),
            size_text(port["bytes"]),
            '<span class="bad">%d</span>' % sum(port["errors"].values()) if port["errors"] else "0",
            str(sum(port["replies_dropped"].values())),
        ]
        for path, port in sorted(doc["ports"].items())
    ]
    parts.append(_rows(["port", "frames", "read", "bad", "replies dropped"], ports, {1, 2, 3, 4}) if ports else "<p>none open</p>")
    live, ended = doc["commands"], doc["commands_ended"]
    parts += [
        "<h2>Commands</h2>",
        "<p>%s; ended: %s</p>"
        % (
            e(", ".join("%d %s" % (live[state], state) for state in sorted(live) if live[state]) or "none waiting"),
            e(", ".join("%d %s" % (ended[state], state) for state in sorted(ended)) or "none"),
        ),
        "<h2>Nodes (%d)</h2>" % len(doc["nodes"]),
    ]
    nodes = []
    for node, entry in sorted(doc["nodes"].items()):
        last = entry["last_seen"]
        radio = "-"
        if "rssi_dbm" in entry:
            radio = "SF%s, %.0f dBm" % (entry.get("sf", "?"), entry["rssi_dbm"])
            radio += ", %.1f dB" % entry["snr_db"] if "snr_db" in entry else ""
        nodes.append(
            [
                "<code>%s</code>" % e(node),
                e(entry["port"] or "-"),
                span_text(now - last) + " ago" if last else "never",
                str(entry["readings"]),
                '<span class="bad">%d</span>' % entry["missing_frames"] if entry["missing_frames"] else "0",
                "%.2f V" % entry["battery_v"] if "battery_v" in entry else "-",
                e(radio),
                sparkline(history.per_minute(node, entry["readings"], now), "readings per minute of %s, last hour" % node),
            ]
        )
    parts.append(
        _rows(["node", "port", "last seen", "readings", "missing", "battery", "radio", "readings/min, last hour"], nodes, {3, 4})
        if nodes
        else "<p>none heard yet</p>"
    )
    parts.append("</body></html>")
    return "".join(parts)
