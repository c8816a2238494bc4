"""`make bench`'s radio figures (issue 15): what a reading costs on air, how many nodes a bridge carries, and
how long a battery node lasts.

Bytes and airtime per reading of a radio node's READINGS frame: the bench's frame (bench/feeder.py, a `seq`
sample and temperatures) cut to the 9 samples a radio node puts in one (firmware/node.py _RADIO_SAMPLES: 9
samples at worst fit protocols/lora.py's MAX_RADIO_FRAME, 204 bytes on air), sent as a tagged frame
(SPEC.md §3.4: 15-byte header, CBOR payload, 8-byte tag, no COBS on air), against LoRaWAN carrying the
same nine readings as Cayenne LPP (13 bytes of LoRaWAN header and MIC; per reading a channel byte, a type
byte and the value: 2 bytes for a temperature, type 0x67, or an analog input, 0x02). LPP has no field
for the time of a reading: the nine readings of one frame, taken at nine moments, would need more (nine
frames, or a field LPP does not define); the comparison gives LPP that for free.

The capacity curve, delivery against nodes per bridge: the emulated medium (hil/radio.py, capture on, the
three EU868 default channels, no shadowing so only collisions lose frames, nodes spread evenly in range of
the bridge), every node one uplink a minute of that frame at a random phase with ±3 s jitter and a random
channel, over simulated minutes. Node i of a layout is the same whatever the node count (its own seeded
generator), so a curve adds nodes to one layout instead of drawing a new layout per point. Each point is the
mean over three layouts (SEEDS), on one grid of node counts (NODES), until delivery falls below FLOOR; the
most nodes with delivery >= 99 % is bisected between the grid points around it (the retransmission curves end
at RETRIES_UP_TO nodes, so their figure is at most that). Deliveries (CURVES):

- first transmissions only: what the bridge hears of what was sent, no retransmissions;
- after up to RETRIES retransmissions, at SF7 and SF9: a node sends again a frame the bridge did not get, on
  the timer of protocols/session.py (2 s after it was sent, then doubling, ±25 % jitter), and as
  firmware/radio_port.py's send_next sends: never before its duty cycle allows (protocols/dutycycle.py, one
  DutyCycle a node), and after each transmission not before the sub-band's time-off has ended and 0-4095 ms
  of chance more have passed (CHANCE_MS: `random.getrandbits(12)`). The 0-4095 ms the firmware also waits
  after boot is left out: a node here booted long before, its phase is random anyway. The acknowledgement
  is idealised: a frame the bridge got is acknowledged, free and never lost (no downlink airtime, no half
  duplex at the bridge), so these curves are upper bounds;
- at SF9 the same, as the earlier firmware sent (EARLIER_CHANCE_MS, `earlier=True`): not before the last
  frame's airtime and 0-1023 ms of chance after its start. Kept as the reason for the change: after a 9-sample
  uplink at SF9 (452 ms) the 1 % sub-band is closed for 45 s, which swallowed that chance, so two nodes whose frames
  collided both sent again the moment it opened, collided again, and stayed in step while their next
  readings waited behind the duty cycle too: retransmissions were hardly better than none, often worse.

SF12 at one uplink a minute is on air 5.5 % of the time: the 1 % duty cycle does not allow it (a node could
send one every 5.5 minutes). Its curve shows that offered load, not a legal one, and gets no retransmissions.

The curve goes to docs/radio-capacity.svg: an SVG written here by hand (no plotting library), and to
`capacity_table` in the results. The battery life of a tree-health probe (hil/energy.py: one uplink of
this frame every 15 minutes, +14 dBm, an ESP32 and an SX1276 on one ER14505 cell) closes the figures: as
designed (deep sleep between rounds) and as the firmware is built (`frame_figures`: light sleep between the
node loop's steps, one every 100 ms at most, each LOOP_STEP_MS awake, an assumption; or, with "sleep": 0 or
before light sleep, awake throughout). Those and the bytes and airtime per reading, also of the 10-sample frame
the issue names, need no simulation: `frame_figures()` alone gives them in a moment.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from hil import energy
from hil.radio import DELIVERED, Medium, PathLoss, Transmission
from protocols import cobs, messages
from protocols.airtime import airtime_us
from protocols.dutycycle import DutyCycle
from protocols.frame import F_ACK_REQ
from protocols.lora import MAX_RADIO_FRAME
from protocols.messages import Message, encode

from .feeder import BASE_TIME, node_id

CHANNELS = (868_100_000, 868_300_000, 868_500_000)  # EU868's three default channels, all in the 1 % sub-band
LORAWAN_OVERHEAD = 13  # MHDR 1, DevAddr 4, FCtrl 1, FCnt 2, FPort 1, MIC 4
LPP_READING = 4  # channel, type, 2-byte value (temperature 0x67 or analog input 0x02)
TAG_INSTEAD_OF_CRC = 4  # an authenticated frame: 8-byte tag, not a 4-byte CRC

SVG_PATH = Path(__file__).resolve().parent.parent / "docs" / "radio-capacity.svg"
NODES = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300)  # the grid of node counts, every curve
FLOOR = 0.8  # a curve stops at its first point below this: the region a plan cares about
TARGET = 0.99
SEEDS = (15, 16, 17)  # each point the mean over these layouts and phases
SFS = (7, 9, 12)
RETRIES = 3
RETRIES_UP_TO = 150  # the retransmission curves stop here: SF9 at 300 nodes takes a minute a layout (SF7's 99 % lies beyond)
# firmware/radio_port.py until 2026-12-03: 0-4095 ms of chance (getrandbits(12)) after each time-off had ended. It now
# draws 0 .. protocols.lora.chance_ms(airtime): the same span after this bench's SF7 frames, up to 16 airtimes after
# its SF9 ones (7 s after 452 ms); the SF9 retransmission curves here keep the old span and were not measured again
CHANCE_MS = 4095
EARLIER_CHANCE_MS = 1023  # the earlier firmware's: 0-1023 ms after the last frame's airtime, from its start
RADIO_SAMPLES = 9  # firmware/node.py _RADIO_SAMPLES: the most samples a radio node's READINGS carries
ISSUE_SAMPLES = 10  # the frame issue 15 compares: 10 samples (fits MAX_RADIO_FRAME with these values, not at worst)
LOOP_STEPS_A_DAY = 86_400 * 10  # the node loop's steps on a board: one per 100 ms at most (firmware/node.py _IDLE_MS)
LOOP_STEP_MS = 2.0  # awake per step (the loop's checks, no work due): assumed, not measured on a board
START_S = 10.0  # the first minute starts here: the duty cycle's clock never sees a negative time
FIRST_RETRY_S = 2.0  # protocols/session.py: the first retransmission 2 s after the frame was sent, then doubling


def radio_frame_bytes(samples: int = RADIO_SAMPLES) -> int:
    """Bytes on air of the bench's READINGS frame cut to `samples` samples (a `seq` one, the rest temperatures,
    as bench/feeder.py's readings_frame), as a battery node sends it: tagged, no COBS."""
    seq = 12345
    values: list[int] = [0, seq, 0]
    for position in range(1, samples):
        values += [1, 1500 + (seq + position) % 700, position]
    message = Message(messages.READINGS, node_id(0, 0), 2, {"base_time": BASE_TIME, "samples": values}, F_ACK_REQ)
    length = len(cobs.decode(encode(message)[:-1])) + TAG_INSTEAD_OF_CRC
    assert length <= MAX_RADIO_FRAME, length
    return length


# ------------------------------------------------------------------ the capacity curve


@dataclass
class _Node:
    name: str
    x: float
    y: float
    plan: list[tuple[float, int]]  # per minute: (start, channel) of its first transmission
    retry: random.Random  # what its retransmissions draw: apart, so the first transmissions are the same either way


def _layout(nodes: int, sf: int, minutes: int, seed: int) -> list[_Node]:
    """The first `nodes` nodes of a seed's layout: node i is the same whatever `nodes` is."""
    reach_m = 800 if sf == 7 else 3000  # well inside the SF's range at 14 dBm (the Oulu model): only collisions lose
    out = []
    for index in range(nodes):
        rng = random.Random("%d/%d" % (seed, index))
        radius = reach_m * math.sqrt(rng.random()) + 50  # evenly over the disc
        angle = rng.random() * 2 * math.pi
        phase = rng.random() * 60
        plan = [(START_S + minute * 60 + phase + rng.uniform(-3, 3), rng.choice(CHANNELS)) for minute in range(minutes)]
        retry = random.Random("%d/%d/retry" % (seed, index))
        out.append(_Node("n%d" % index, radius * math.cos(angle), radius * math.sin(angle), plan, retry))
    return out


def _medium(sf: int, seed: int, layout: list[_Node]) -> Medium:
    medium = Medium(seed=seed, path_loss=PathLoss(sigma_db=0.0))
    medium.place("bridge", 0, 0, {(channel, sf) for channel in CHANNELS})
    for node in layout:
        medium.place(node.name, node.x, node.y)
    return medium


def delivery(nodes: int, sf: int, length: int, minutes: int, seed: int = 15, retries: int = 0, earlier: bool = False) -> float:
    """Share of the readings the bridge got, `nodes` nodes each sending one a minute: on the first transmission
    (`retries` 0), or on any of up to `retries` retransmissions, sent as the firmware sends them (`earlier`: as the
    earlier firmware did; see _with_retries)."""
    layout = _layout(nodes, sf, minutes, seed)
    if not layout:
        return 1.0
    medium = _medium(sf, seed, layout)
    if retries == 0:
        for node in layout:
            for start, channel in node.plan:
                medium.transmit(Transmission(node.name, start, channel, sf, length))
        got = medium.outcomes(START_S + minutes * 60 + 120)
        return sum(r.outcome == DELIVERED for r in got) / (nodes * minutes)
    return _with_retries(medium, layout, sf, length, retries, earlier) / (nodes * minutes)


def _with_retries(medium: Medium, layout: list[_Node], sf: int, length: int, retries: int, earlier: bool = False) -> int:
    """Readings delivered when a lost frame is sent again, up to `retries` times, within each node's duty cycle.
    Events in time order: a transmission's start (SEND), and its end (CHECK: the bridge's verdict). As
    firmware/radio_port.py's send_next: after each transmission the node sends nothing before its sub-band's
    time-off has ended and a random 0-CHANCE_MS more have passed (`not_before`); a frame due earlier waits for
    that. `earlier`: as the earlier firmware, not before the last frame's airtime and 0-EARLIER_CHANCE_MS after
    its start (the sub-band's time-off, far longer at SF9, then swallowed the chance)."""
    send, check = 1, 0
    airtime = airtime_us(length, sf)
    duty = [DutyCycle() for _ in layout]
    not_before = [0] * len(layout)
    order = itertools.count()  # ties in time: first come, first served
    events: list[tuple[float, int, int, int, int, int, int]] = []  # (time, order, kind, node, reading, attempt, channel)
    for index, node in enumerate(layout):
        heapq.heappush(events, (node.plan[0][0], next(order), send, index, 0, 0, node.plan[0][1]))
    sent: dict[int, tuple[Transmission, int, int, int]] = {}  # id(transmission) -> it, node, reading, attempt
    delivered: set[tuple[int, int]] = set()
    while events:
        when, _, kind, index, reading, attempt, channel = heapq.heappop(events)
        if kind == check:
            for reception in medium.outcomes(when):
                transmission, index, reading, attempt = sent.pop(id(reception.transmission))
                if reception.outcome == DELIVERED:
                    delivered.add((index, reading))
                elif attempt < retries:  # not acknowledged: the session's timer, from when the frame was sent
                    delay = FIRST_RETRY_S * 2**attempt * (layout[index].retry.uniform(0.75, 1.25) if attempt else 1.0)
                    again = (max(transmission.start + delay, when), next(order), send, index, reading, attempt + 1)
                    heapq.heappush(events, (*again, layout[index].retry.choice(CHANNELS)))
            continue
        now_ms = max(math.ceil(when * 1000 - 1e-6), not_before[index])
        wait = duty[index].wait_ms(channel, now_ms)
        if wait or not duty[index].spend(channel, airtime, now_ms):  # the sub-band is closed: later (its hour full: 1 s)
            heapq.heappush(events, ((now_ms + (wait or 1000)) / 1000, next(order), send, index, reading, attempt, channel))
            continue
        if earlier:
            not_before[index] = now_ms + (airtime + 999) // 1000 + layout[index].retry.randrange(EARLIER_CHANCE_MS + 1)
        else:  # the firmware: the time-off the transmission just started, then chance
            not_before[index] = now_ms + duty[index].wait_ms(channel, now_ms) + layout[index].retry.randrange(CHANCE_MS + 1)
        transmission = Transmission(layout[index].name, now_ms / 1000, channel, sf, length)
        medium.transmit(transmission)
        sent[id(transmission)] = (transmission, index, reading, attempt)
        heapq.heappush(events, (transmission.end, next(order), check, index, reading, attempt, channel))
        plan = layout[index].plan
        if attempt == 0 and reading + 1 < len(plan):
            start, next_channel = plan[reading + 1]
            heapq.heappush(events, (max(start, when), next(order), send, index, reading + 1, 0, next_channel))
    return len(delivered)


def mean_delivery(
    nodes: int, sf: int, length: int, minutes: int, retries: int = 0, earlier: bool = False, seeds: Sequence[int] = SEEDS
) -> float:
    return sum(delivery(nodes, sf, length, minutes, seed, retries, earlier) for seed in seeds) / len(seeds)


def curve(
    sf: int,
    length: int,
    minutes: int,
    retries: int = 0,
    earlier: bool = False,
    *,
    grid: Sequence[int] = NODES,
    seeds: Sequence[int] = SEEDS,
    floor: float = FLOOR,
) -> list[tuple[int, float]]:
    """(nodes, mean delivery) over the grid, until the first point below `floor` (that one included)."""
    out = []
    for nodes in grid:
        out.append((nodes, mean_delivery(nodes, sf, length, minutes, retries, earlier, seeds)))
        if out[-1][1] < floor:
            break
    return out


def most_nodes(points: list[tuple[int, float]], ratio: Callable[[int], float], target: float = TARGET) -> int:
    """The most nodes with ratio >= target: bisected between the grid points of the curve around it."""
    meeting = [nodes for nodes, value in points if value >= target]
    low = max(meeting) if meeting else 0
    above = [nodes for nodes, _value in points if nodes > low]
    high = min(above) if above else low
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if ratio(middle) >= target else (low, middle)
    return low


# ------------------------------------------------------------------ the SVG, by hand

# Colours of a colour-blind-safe palette (Okabe and Ito), one per SF
COLOURS = {7: "#0072B2", 9: "#E69F00", 12: "#009E73"}


@dataclass(frozen=True)
class Curve:
    label: str
    points: Sequence[tuple[float, float]]  # (nodes, delivery ratio)
    colour: str
    dash: str = ""  # an SVG stroke-dasharray: "" a solid line


# What the bench draws: (SF, retransmissions, as the earlier firmware, key of its 99 % figure, label, dash)
CURVES = (
    (7, 0, False, "sf7", "SF7, first transmission", ""),
    (7, RETRIES, False, "sf7_retries", "SF7, <= %d retransmissions" % RETRIES, "6 3"),
    (9, 0, False, "sf9", "SF9, first transmission", ""),
    (9, RETRIES, False, "sf9_retries", "SF9, <= %d retransmissions" % RETRIES, "6 3"),
    (9, RETRIES, True, "sf9_retries_earlier_firmware", "SF9, <= %d, earlier firmware" % RETRIES, "2 2"),
    (12, 0, False, "sf12", "SF12, first (5.5 % duty: not legal)", ""),
)


def capacity_svg(curves: Sequence[Curve], target: float = TARGET, title: str = "Delivery against nodes per bridge") -> str:
    """An SVG plot: x nodes per bridge (log scale), y delivery ratio, one polyline per curve, a legend, a line at `target`."""
    width, height = 800, 440
    left, right, top, bottom = 70, 270, 40, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for c in curves for x, _y in c.points] or [1.0]
    ys = [y for c in curves for _x, y in c.points] or [1.0]
    x_max = 10 ** math.ceil(math.log10(max(max(xs), 10)))
    y_min = max(0.0, min(math.floor(min(min(ys), target) * 10) / 10, 0.9))
    y_step = 0.05 if 1.0 - y_min <= 0.3 else 0.1

    def px(x: float) -> float:
        return left + plot_w * math.log10(max(x, 1.0)) / math.log10(x_max)

    def py(y: float) -> float:
        return top + plot_h * (1.0 - (y - y_min) / (1.0 - y_min))

    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">'
        % (width, height, width, height),
        '<rect x="0" y="0" width="%d" height="%d" fill="white"/>' % (width, height),
        '<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>' % (left, escape(title)),
    ]
    decade = 1
    while decade <= x_max:  # x ticks at 1, 2, 5 of each decade, grid lines
        for tick in (decade, 2 * decade, 5 * decade):
            if tick <= x_max:
                x = px(tick)
                out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (x, top, x, top + plot_h))
                out.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (x, top + plot_h + 16, tick))
        decade *= 10
    steps = round((1.0 - y_min) / y_step)
    for step in range(steps + 1):
        value = y_min + step * y_step
        y = py(value)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (left, y, left + plot_w, y))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%d %%</text>' % (left - 6, y + 4, round(value * 100)))
    out += [
        '<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="black"/>' % (left, top, plot_w, plot_h),
        '<text x="%.1f" y="%d" text-anchor="middle">nodes per bridge (one uplink a minute each; log scale)</text>'
        % (left + plot_w / 2, height - 16),
        '<text x="16" y="%.1f" text-anchor="middle" transform="rotate(-90 16 %.1f)">delivery</text>' % (top + plot_h / 2, top + plot_h / 2),
        '<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#CC0000" stroke-dasharray="6 3"/>'
        % (left, py(target), left + plot_w, py(target)),
        '<text x="%d" y="%.1f" text-anchor="end" fill="#CC0000">%s %%</text>' % (left + plot_w - 4, py(target) - 4, "%g" % (target * 100)),
    ]
    for index, c in enumerate(curves):
        dash = " stroke-dasharray=%s" % quoteattr(c.dash) if c.dash else ""
        points = " ".join("%.1f,%.1f" % (px(x), py(y)) for x, y in c.points)
        out.append('<polyline points="%s" fill="none" stroke=%s stroke-width="2"%s/>' % (points, quoteattr(c.colour), dash))
        out += ['<circle cx="%.1f" cy="%.1f" r="2.5" fill=%s/>' % (px(x), py(y), quoteattr(c.colour)) for x, y in c.points]
        legend_y = top + 14 + 20 * index
        legend_x = left + plot_w + 14
        out.append(
            '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke=%s stroke-width="2"%s/>'
            % (legend_x, legend_y - 4, legend_x + 24, legend_y - 4, quoteattr(c.colour), dash)
        )
        out.append('<text x="%d" y="%d">%s</text>' % (legend_x + 30, legend_y, escape(c.label)))
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ the figures


def _table(columns: list[str], curves: list[list[tuple[int, float]]]) -> list[str]:
    """The curves side by side on the grid, as Markdown rows (a dash where a curve had stopped)."""
    rows = ["| nodes | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for nodes in sorted({n for c in curves for n, _ in c}):
        cells = [next(("%.4f" % ratio for n, ratio in c if n == nodes), "-") for c in curves]
        rows.append("| %d | %s |" % (nodes, " | ".join(cells)))
    return rows


def _ratio(sf: int, length: int, minutes: int, retries: int, earlier: bool, nodes: int) -> float:
    return mean_delivery(nodes, sf, length, minutes, retries, earlier)


def _per_reading(out: dict[str, Any], samples: int, sfs: Sequence[int], suffix: str) -> int:
    """Our frame of `samples` samples against Cayenne LPP carrying as many readings: frame bytes, bytes and airtime
    per reading at each SF, put in `out` under keys ending in `suffix`; our frame's length."""
    ours, lpp = radio_frame_bytes(samples), LORAWAN_OVERHEAD + samples * LPP_READING
    out["radio_frame_bytes" + suffix], out["lorawan_lpp_frame_bytes" + suffix] = ours, lpp
    out["radio_bytes_per_reading" + suffix] = round(ours / samples, 2)
    out["lorawan_lpp_bytes_per_reading" + suffix] = round(lpp / samples, 2)
    for sf in sfs:
        out["airtime_ms_per_reading%s_sf%d" % (suffix, sf)] = round(airtime_us(ours, sf) / 1000 / samples, 2)
        out["lorawan_lpp_airtime_ms_per_reading%s_sf%d" % (suffix, sf)] = round(airtime_us(lpp, sf) / 1000 / samples, 2)
    return ours


def frame_figures() -> dict[str, Any]:
    """What needs no simulation: bytes and airtime per reading against LoRaWAN with Cayenne LPP (the node's
    9-sample frame, and the 10-sample one the issue names, at SF7 and SF12), and a tree-health probe's battery
    life as designed and as built."""
    out: dict[str, Any] = {}
    ours = _per_reading(out, RADIO_SAMPLES, SFS, "")
    for sf in SFS:
        out["duty_cycle_percent_sf%d" % sf] = round(airtime_us(ours, sf) / 1000 / 60_000 * 100, 2)  # one uplink a minute
    _per_reading(out, ISSUE_SAMPLES, (7, 12), "_10")
    awake = energy.Mcu("ESP32 awake 31 mA", sleep_ua=energy.ESP32.active_ma * 1000, active_ma=energy.ESP32.active_ma)
    for sf in (9, 10, 11, 12):  # a tree-health probe: this frame every 15 minutes at +14 dBm, ESP32 + SX1276, one ER14505
        airtime_ms = airtime_us(ours, sf) / 1000
        life = energy.estimate(airtime_ms, 96)  # designed: deep sleep between rounds, 500 ms of work a wake
        out["battery_years_15min_sf%d" % sf] = round(life.years, 2)
        out["average_ua_15min_sf%d" % sf] = round(life.average_ua, 1)
        # As built: light sleep between the loop's steps, awake for the uplink, the delay and the window
        steps = energy.class_a_awake_ms(airtime_ms, work_ms=0) + LOOP_STEPS_A_DAY / 96 * LOOP_STEP_MS
        built = energy.estimate(airtime_ms, 96, awake_ms=steps, mcu=energy.ESP32_LIGHT_SLEEP)
        out["battery_days_as_built_15min_sf%d" % sf] = round(built.days, 1)
        out["average_ua_as_built_15min_sf%d" % sf] = round(built.average_ua, 1)
        out["battery_days_awake_15min_sf%d" % sf] = round(energy.estimate(airtime_ms, 96, mcu=awake).days, 1)
    return out


def figures(scale: float, svg: Path | None = SVG_PATH) -> dict[str, Any]:
    out = frame_figures()
    ours = out["radio_frame_bytes"]
    minutes = max(10, int(60 * scale))
    out.update({"minutes_simulated": minutes, "retransmissions_at_most": RETRIES, "chance_ms_after_time_off": CHANCE_MS})
    columns: list[str] = []
    curves: list[list[tuple[int, float]]] = []
    drawn: list[Curve] = []
    out["retransmission_curves_up_to_nodes"] = RETRIES_UP_TO
    for sf, retries, earlier, key, label, dash in CURVES:
        grid = [nodes for nodes in NODES if not retries or nodes <= RETRIES_UP_TO]
        points = curve(sf, ours, minutes, retries, earlier, grid=grid)
        out["nodes_per_bridge_99_" + key] = most_nodes(points, functools.partial(_ratio, sf, ours, minutes, retries, earlier))
        columns.append(label)
        curves.append(points)
        drawn.append(Curve(label, points, COLOURS[sf], dash))
    out["capacity_table"] = _table(columns, curves)
    if svg is not None:
        svg.write_text(capacity_svg(drawn, title="Delivery against nodes per bridge: %d-byte frame, one a minute, 3 channels" % ours))
        out["capacity_svg"] = str(svg.relative_to(SVG_PATH.parent.parent)) if svg.is_relative_to(SVG_PATH.parent.parent) else str(svg)
    return out
