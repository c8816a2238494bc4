"""`make bench`'s radio figures (issue 15): what a reading costs on air, and how many nodes a bridge carries.

Bytes and airtime per reading of the bench's 10-sample READINGS frame sent over radio (a tagged frame,
SPEC.md §3.4: 15-byte header, CBOR payload, 8-byte tag, no COBS on air), against LoRaWAN carrying the
same ten readings as Cayenne LPP (13 bytes of LoRaWAN header and MIC; per reading a channel byte, a type
byte and the value: 2 bytes for a temperature, type 0x67, or an analog input, 0x02). LPP has no field
for the time of a reading: the ten readings of one frame, taken at ten moments, would need more (ten
frames, or a field LPP does not define); the comparison gives LPP that for free.

Nodes per bridge: the emulated medium (hil/radio.py, capture on, the three EU868 default channels, no
shadowing so only collisions lose frames, nodes spread evenly in range of the bridge), every node one
uplink a minute at a random phase with ±5 % jitter, over simulated minutes. Delivery is what the bridge
hears of what was sent, first transmissions only (a node's retransmissions, and the duty cycle they
spend, are not part of this figure), the mean over three layouts. The curve is measured on a fixed grid
of node counts; the most nodes with delivery ≥ 99 % is bisected between the grid points around it.
"""

from __future__ import annotations

import math
import random
from typing import Any

from hil.radio import DELIVERED, Medium, PathLoss, Transmission
from protocols import cobs
from protocols.airtime import airtime_us

from .feeder import SAMPLES_PER_FRAME, node_id, readings_frame

CHANNELS = (868_100_000, 868_300_000, 868_500_000)  # EU868's three default channels, all in the 1 % sub-band
LORAWAN_OVERHEAD = 13  # MHDR 1, DevAddr 4, FCtrl 1, FCnt 2, FPort 1, MIC 4
LPP_READING = 4  # channel, type, 2-byte value (temperature 0x67 or analog input 0x02)
TAG_INSTEAD_OF_CRC = 4  # an authenticated frame: 8-byte tag, not a 4-byte CRC


def radio_frame_bytes() -> int:
    """The bench's 10-sample READINGS frame as a battery node sends it on air: tagged, no COBS."""
    wire = readings_frame(node_id(0, 0), 2, 12345)
    return len(cobs.decode(wire[:-1])) + TAG_INSTEAD_OF_CRC


def delivery(nodes: int, sf: int, length: int, minutes: int, seed: int = 15) -> float:
    """Share of first transmissions the bridge hears, `nodes` nodes each sending once a minute."""
    rng = random.Random(seed * 1000 + nodes)
    medium = Medium(seed=seed, path_loss=PathLoss(sigma_db=0.0))
    medium.place("bridge", 0, 0, {(channel, sf) for channel in CHANNELS})
    reach_m = 800 if sf == 7 else 3000  # well inside both SFs' range at 14 dBm (the Oulu model): only collisions lose
    sent = 0
    for index in range(nodes):
        radius = reach_m * math.sqrt(rng.random()) + 50  # evenly over the disc
        angle = rng.random() * 2 * math.pi
        name = "n%d" % index
        medium.place(name, radius * math.cos(angle), radius * math.sin(angle))
        phase = rng.random() * 60
        for minute in range(minutes):
            start = minute * 60 + phase + rng.uniform(-3, 3)
            medium.transmit(Transmission(name, start, rng.choice(CHANNELS), sf, length))
            sent += 1
    got = medium.outcomes(minutes * 60 + 120)
    return sum(r.outcome == DELIVERED for r in got) / sent if sent else 1.0


GRID = {7: (5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300), 12: (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30)}
SEEDS = (15, 16, 17)  # each point the mean over these layouts and phases


def mean_delivery(nodes: int, sf: int, length: int, minutes: int) -> float:
    return sum(delivery(nodes, sf, length, minutes, seed) for seed in SEEDS) / len(SEEDS)


def capacity(sf: int, length: int, minutes: int, target: float = 0.99) -> tuple[int, list[tuple[int, float]]]:
    """The most nodes with mean delivery >= target (bisected between the grid points around it), and the curve."""
    curve = [(nodes, mean_delivery(nodes, sf, length, minutes)) for nodes in GRID[sf]]
    meeting = [nodes for nodes, ratio in curve if ratio >= target]
    low = max(meeting) if meeting else 0
    above = [nodes for nodes, _ratio in curve if nodes > low]
    high = min(above) if above else low
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if mean_delivery(middle, sf, length, minutes) >= target else (low, middle)
    return low, curve


def figures(scale: float) -> dict[str, Any]:
    ours = radio_frame_bytes()
    lpp = LORAWAN_OVERHEAD + SAMPLES_PER_FRAME * LPP_READING
    minutes = max(10, int(60 * scale))
    out: dict[str, Any] = {
        "radio_frame_bytes": ours,
        "radio_bytes_per_reading": round(ours / SAMPLES_PER_FRAME, 2),
        "lorawan_lpp_frame_bytes": lpp,
        "lorawan_lpp_bytes_per_reading": round(lpp / SAMPLES_PER_FRAME, 2),
        "minutes_simulated": minutes,
    }
    for sf in (7, 12):
        out["airtime_ms_per_reading_sf%d" % sf] = round(airtime_us(ours, sf) / 1000 / SAMPLES_PER_FRAME, 2)
        out["lorawan_lpp_airtime_ms_per_reading_sf%d" % sf] = round(airtime_us(lpp, sf) / 1000 / SAMPLES_PER_FRAME, 2)
        most, curve = capacity(sf, ours, minutes)
        out["nodes_per_bridge_99_sf%d" % sf] = most
        out["delivery_curve_sf%d" % sf] = [[nodes, round(ratio, 4)] for nodes, ratio in curve]
    return out
