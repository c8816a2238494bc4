"""`make bench`'s `radio_gateway` step (issue 15): the capacity curve through the real chain, not the medium alone.

Light scripted radio nodes (hil/swarm.py), one uplink a minute each at a uniform random phase (±3 s a minute),
around one real bridge (the `lora_bridge` firmware on the MicroPython VM) at SF7 on one channel, the real
`edgegw run`, a real mosquitto (hil/swarm_run.py: how, and where each kind of loss is counted). Per point,
the share of the readings sent in a steady window that the broker delivered, next to what the medium alone
would have delivered of the very same uplinks (a bridge that always listens, never transmits) and what the
bridge's radio got on the air. The full run: POINTS first-try, and RETRANSMIT_POINTS with retransmissions
(up to 3, on the session's timer); `--quick`: QUICK_POINTS, a shorter window.

Drawn to docs/radio-gateway-capacity.svg with bench/radio.py's plot, put in `capacity_table`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hil import swarm_run

from .radio import SVG_PATH, Curve, capacity_svg

POINTS = (50, 100, 200, 500, 1000, 2000)
RETRANSMIT_POINTS = (200,)
QUICK_POINTS = (50, 200)
WINDOW_S = 120.0
QUICK_WINDOW_S = 30.0
GATEWAY_SVG = SVG_PATH.with_name("radio-gateway-capacity.svg")
COLUMNS = (
    ("delivery", "through the gateway"),
    ("bridge_radio", "bridge's radio"),
    ("medium_only", "medium only, same uplinks"),
    ("medium_only_readings_alone", "medium only, readings alone"),
)
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7")


def figures(workdir: Path, scale: float, log: Callable[[str], None] = print, svg: Path | None = GATEWAY_SVG) -> dict[str, Any]:
    quick = scale < 1
    window = QUICK_WINDOW_S if quick else WINDOW_S
    runs = [(nodes, False) for nodes in (QUICK_POINTS if quick else POINTS)]
    runs += [] if quick else [(nodes, True) for nodes in RETRANSMIT_POINTS]
    points = []
    for nodes, retransmit in runs:
        settings = swarm_run.Settings(nodes, window_s=window, retransmit=retransmit)
        try:
            point = swarm_run.run(workdir / ("n%d%s" % (nodes, "r" if retransmit else "")), settings, log)
        except Exception as error:  # a point that breaks is reported, the others still run
            point = {"nodes": nodes, "retransmit": retransmit, "error": "%s: %s" % (type(error).__name__, error)}
        log("radio_gateway: %s" % point)
        points.append(point)
    failed = [p for p in points if "error" in p]
    points = [p for p in points if "error" not in p]
    first = [p for p in points if not p["retransmit"]]
    rows = [
        "| nodes | retransmit | sent | published | "
        + " | ".join(label for _key, label in COLUMNS)
        + " | HELLOs acked | gateway CPU s | bridge CPU s |"
    ]
    rows.append("|---" * (len(COLUMNS) + 7) + "|")
    for p in points:
        cells = " | ".join("%.1f %%" % (100 * p[key]) for key, _label in COLUMNS)
        rows.append(
            "| %d | %s | %d | %d | %s | %d / %d | %.1f | %.1f |"
            % (
                p["nodes"],
                "yes" if p["retransmit"] else "no",
                p["readings_sent"],
                p["published"],
                cells,
                p["hellos_acked"],
                p["nodes"],
                p["gateway_cpu_s"],
                p["bridge_cpu_s"],
            )
        )
    out: dict[str, Any] = {"window_s": window, "points": points, "failed": failed, "capacity_table": rows}
    if svg is not None and len(first) > 1:
        curves = [
            Curve(label, [(p["nodes"], p[key]) for p in first], colour) for (key, label), colour in zip(COLUMNS, COLOURS, strict=True)
        ]
        svg.write_text(capacity_svg(curves, title="Through the real bridge, gateway and broker: SF7, one channel, one uplink a minute"))
        out["capacity_svg"] = "docs/" + svg.name
    return out
