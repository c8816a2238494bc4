"""Issue 15, nodes per bridge: bench/radio.py's capacity curve on the emulated medium, and the SVG it draws by hand."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

import pytest

from bench.radio import Curve, capacity_svg, curve, delivery, frame_figures, most_nodes, radio_frame_bytes
from protocols.airtime import airtime_us

SVG = "{http://www.w3.org/2000/svg}"
FRAME = radio_frame_bytes()


def test_the_svg_is_well_formed_with_one_polyline_per_curve() -> None:
    curves = [
        Curve("SF7 <first> & only", [(1, 1.0), (10, 0.99), (100, 0.87)], "#0072B2"),
        Curve("SF9", [(1, 1.0), (5, 0.99), (50, 0.8)], "#E69F00", dash="6 3"),
        Curve("SF12", [(1, 1.0), (2, 0.99), (7, 0.78)], "#009E73"),
    ]
    root = ET.fromstring(capacity_svg(curves))
    assert root.tag == SVG + "svg"
    polylines = root.findall(SVG + "polyline")
    assert len(polylines) == len(curves)
    assert [p.get("stroke") for p in polylines] == [c.colour for c in curves]
    assert polylines[1].get("stroke-dasharray") == "6 3" and polylines[0].get("stroke-dasharray") is None
    assert [len(p.get("points", "").split()) for p in polylines] == [3, 3, 3]
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "SF7 <first> & only" in texts and "99 %" in texts  # the legend, escaped; the target line's label
    # points inside the plot, higher delivery higher up (SVG's y grows downwards)
    first = [tuple(map(float, pair.split(","))) for pair in polylines[0].get("points", "").split()]
    assert first[0][0] < first[1][0] < first[2][0] and first[0][1] < first[1][1] < first[2][1]
    width, height = float(root.get("width", 0)), float(root.get("height", 0))
    assert all(0 < x < width and 0 < y < height for x, y in first)


def test_an_empty_plot_is_still_an_svg() -> None:
    root = ET.fromstring(capacity_svg([]))
    assert root.findall(SVG + "polyline") == []


def test_first_transmission_delivery_falls_as_nodes_are_added() -> None:
    # one layout (seed 15), node i the same whatever the count: a coarse grid, 10 simulated minutes
    points = curve(9, FRAME, 10, grid=(1, 4, 16, 64), seeds=(15,), floor=0.0)
    ratios = [ratio for _nodes, ratio in points]
    assert [nodes for nodes, _ratio in points] == [1, 4, 16, 64]
    assert ratios[0] == 1.0  # alone on the air, in range: nothing lost
    assert all(later <= earlier for earlier, later in itertools.pairwise(ratios)), ratios
    assert ratios[-1] < 0.9  # 64 nodes at SF9, 472 ms each a minute over 3 channels: pure ALOHA gives e^-2G ~ 0.71


def test_a_curve_stops_below_its_floor() -> None:
    points = curve(12, FRAME, 10, grid=(1, 10, 20, 40), seeds=(15,), floor=0.9)
    assert len(points) < 4 and points[-1][1] < 0.9


def test_retransmissions_help_now_that_the_chance_follows_the_time_off() -> None:
    # SF9: the 1 % sub-band closes for 45 s after each uplink. The earlier firmware drew 0-1 s of chance from the
    # transmission's start, which the time-off swallowed: two nodes whose frames collided both retransmitted the
    # moment it opened and stayed in step. firmware/radio_port.py now waits 0-4095 ms more after the time-off.
    first = delivery(10, 9, FRAME, 30, seed=15)
    earlier = delivery(10, 9, FRAME, 30, seed=15, retries=3, earlier=True)
    now = delivery(10, 9, FRAME, 30, seed=15, retries=3)
    assert now > first and now > earlier
    assert now >= 0.99


def test_most_nodes_bisects_between_grid_points() -> None:
    def ratio(nodes: int) -> float:
        return 1.0 if nodes <= 10 else 0.98  # >= 0.99 up to 10 nodes

    assert most_nodes([(n, ratio(n)) for n in (1, 5, 20, 50)], ratio) == 10
    assert most_nodes([(n, ratio(n)) for n in (20, 50)], ratio) == 10
    assert most_nodes([(1, 1.0), (2, 1.0)], ratio) == 2  # the grid ends before the target is missed


@pytest.mark.parametrize("sf", [7, 9])
def test_alone_in_range_every_frame_arrives(sf: int) -> None:
    assert delivery(1, sf, FRAME, 10) == 1.0 and delivery(1, sf, FRAME, 10, retries=3) == 1.0


def test_the_frame_figures_compare_the_issues_10_sample_frame_and_the_battery_as_built() -> None:
    """bench/radio.py's figures that need no simulation: the 10-sample frame issue 15 names against Cayenne LPP
    (13 bytes of LoRaWAN, 4 a reading), and a tree-health probe's battery life as designed (deep sleep between
    rounds) against the firmware as built (light sleep between the loop's steps) and awake throughout."""
    out = frame_figures()
    assert out["radio_frame_bytes_10"] == radio_frame_bytes(10) and out["lorawan_lpp_frame_bytes_10"] == 13 + 10 * 4
    assert out["radio_bytes_per_reading_10"] == round(out["radio_frame_bytes_10"] / 10, 2)
    assert out["airtime_ms_per_reading_10_sf12"] == round(airtime_us(out["radio_frame_bytes_10"], 12) / 1000 / 10, 2)
    assert out["lorawan_lpp_airtime_ms_per_reading_10_sf7"] == round(airtime_us(53, 7) / 1000 / 10, 2)
    usable_mah = 2400 * 0.8
    for sf in (9, 10, 11, 12):
        awake = out["battery_days_awake_15min_sf%d" % sf]
        built = out["battery_days_as_built_15min_sf%d" % sf]
        # Awake at 31 mA a cell lasts at most 1,920 mAh / 31 mA; in light sleep at most 1,920 mAh / 0.8 mA
        assert awake <= round(usable_mah / 31 / 24, 1) and built < usable_mah / 0.8 / 24
        assert awake < built < out["battery_years_15min_sf%d" % sf] * 365.25, sf
