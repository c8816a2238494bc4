"""A capacity run through the real chain (issue 15): N light scripted radio nodes (hil/swarm.py) around one real
bridge (the `lora_bridge` firmware on the MicroPython VM, hil/radio_rig.py) at SF7 on one channel, the real
`edgegw run` (hil/gateway.py) with every key, a real mosquitto and a subscriber counting the `counter` samples.

Where the nodes are: uniformly over a ring of 50-850 m around the bridge, the medium's path loss without
shadowing (PathLoss(sigma_db=0)): at 850 m an SF7 frame at 14 dBm arrives at about -113 dBm, 10 dB above
sensitivity and 11 dB above the SNR floor, so no frame is lost for being weak and every loss is the
channel's or the chain's, as on bench/radio.py's medium-only curve (its nodes within 50-850 m too).

`run` boots the bridge and the gateway, then the swarm; it counts over a steady window, after a warm-up of
two intervals (the boots are spread over the first; the HELLOs are answered as fast as the bridge's
downlinks allow: `hellos_acked` says how many were), the readings whose first transmission started in it,
and after a drain of DRAIN_S what the broker delivered of them. The losses are split by where they happened:

- `medium_only`: the same uplinks (every one the swarm sent, at the times it sent them) replayed through a
  fresh medium of the same seed whose bridge always listens and never transmits: what collisions between
  uplinks alone leave; `medium_only_readings_alone` the same without the HELLOs (a steady state where every
  HELLO was taken long ago).
- `bridge_radio`: what the bridge's radio got on the emulated air (`delivered` and its preamble detected):
  below medium-only by the frames it missed while it sent downlinks (half duplex: it listens on one
  channel and stops to transmit) or whose start it did not hear (`bridge_not_receiving`).
- `delivery`: what the broker delivered (distinct samples): below bridge_radio by what was lost between
  the bridge's radio and the broker: readings of a node whose HELLO had not reached the bridge yet (the
  gateway answers REJECT unknown_node: `bridge_got_before_its_hello`), and the bridge's firmware, its serial
  line and the gateway.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.keystore import Entry, Keystore
from protocols import messages

from .air import chip_freq
from .air_record import UNHEARD, AirRecord
from .broker import Mosquitto
from .capture import MqttCapture
from .gateway import GatewayProcess
from .processes import cpu_seconds
from .radio import COLLISION, DELIVERED, HALF_DUPLEX, Medium, PathLoss, Transmission
from .radio_rig import Placed, RadioRig
from .swarm import Swarm

CHANNEL = 868100000
SF = 7
RING_M = (50.0, 850.0)
DRAIN_S = 15.0  # after the window: a reading in flight (a bridge's queue, the gateway's commit) is counted


@dataclass
class Settings:
    nodes: int
    window_s: float = 180.0
    interval: float = 60.0
    retransmit: bool = False
    seed: int = 1
    warmup_s: float | None = None  # default: two intervals


def medium_only(swarm: Swarm, seed: int, kinds: tuple[int, ...] = (messages.HELLO, messages.READINGS)) -> set[int]:
    """ids of the swarm's uplinks (of `kinds`) a bridge that always listens and never transmits gets on the same
    medium, the same uplinks at the same times."""
    medium = Medium(seed, PathLoss(sigma_db=0.0))
    medium.place("bridge", 0, 0, {(chip_freq(CHANNEL), SF)})
    for node in swarm.nodes:
        medium.place(node.name, node.x, node.y)
    replayed: dict[int, int] = {}
    for sent in swarm.sent:
        if sent.kind in kinds:
            t = sent.transmission
            copy = Transmission(t.sender, t.start, t.channel, t.sf, t.length, t.power_dbm, t.bw, t.cr)
            replayed[id(copy)] = id(t)
            medium.transmit(copy)
    return {replayed[id(r.transmission)] for r in medium.outcomes(math.inf) if r.outcome == DELIVERED}


@dataclass
class Chain:
    rig: RadioRig
    bridge: Placed
    swarm: Swarm
    gateway: GatewayProcess


@contextlib.contextmanager
def chain(workdir: Path, broker_port: int, settings: Settings) -> Iterator[Chain]:
    """The bridge on the air, the gateway with every key on the broker, then the swarm, started; all stopped after."""
    rig = RadioRig(Path(workdir) / "rig", settings.seed, path_loss=PathLoss(sigma_db=0.0))
    bridge = rig.bridge(0, 0, SF, CHANNEL)
    swarm = Swarm(
        rig.air,
        settings.nodes,
        sf=SF,
        channels=(CHANNEL,),
        ring_m=RING_M,
        interval=settings.interval,
        retransmit=settings.retransmit,
        seed=settings.seed,
    )
    gateway: GatewayProcess | None = None
    try:
        rig.start()  # the bridge's serial line exists from here
        gateway = GatewayProcess(Path(workdir) / "gw", broker_port, rig.bridge_ports)
        with Keystore(gateway.data_dir / "keys.json").editing() as entries:  # one write for every key, not one a key
            for node_hex, key in {**rig.keys(), **swarm.keys()}.items():
                entries[node_hex] = Entry(key=key, added=time.time())
        gateway.start()
        gateway.wait_for_log("%s: open" % bridge.node.port, timeout=30)
        time.sleep(3)  # the bridge's HELLO answered, its radio listening: the swarm's first frames are not lost to the start
        swarm.start()
        yield Chain(rig, bridge, swarm, gateway)
    finally:
        if gateway is not None:
            gateway.close()
        rig.stop()


def run(workdir: Path, settings: Settings, log: Any = print) -> dict[str, Any]:
    """One point of the curve: its own broker, chain and subscriber."""
    workdir = Path(workdir)
    warmup = settings.warmup_s if settings.warmup_s is not None else 2 * settings.interval
    started = time.monotonic()
    with Mosquitto(workdir / "broker") as broker:
        capture = MqttCapture(broker.host, broker.port, ["edgegw/+/nodes/+/readings"])
        try:
            with chain(workdir, broker.port, settings) as c:
                log("swarm: %d nodes started; warm-up %.0f s, window %.0f s" % (settings.nodes, warmup, settings.window_s))
                time.sleep(warmup)
                pids = (c.gateway.process.pid, c.bridge.node.process.pid)  # type: ignore[union-attr]
                window = (time.monotonic(), time.monotonic() + settings.window_s)
                cpu = (cpu_seconds(pids[0]), cpu_seconds(pids[1]), _own_cpu())
                time.sleep(settings.window_s)
                cpu_end = (cpu_seconds(pids[0]), cpu_seconds(pids[1]), _own_cpu())
                hellos_acked = c.swarm.snapshot()["hellos_acked"]
                time.sleep(DRAIN_S)
                deliveries = capture.counter_deliveries()
                malformed = c.rig.air.malformed
        finally:
            capture.close()
    figures = _figures(c.swarm, c.rig.record, deliveries, window, settings.seed)
    figures.update(
        nodes=settings.nodes,
        interval_s=settings.interval,
        retransmit=settings.retransmit,
        warmup_s=warmup,
        window_s=settings.window_s,
        hellos_acked=hellos_acked,
        gateway_cpu_s=round(cpu_end[0] - cpu[0], 2),
        bridge_cpu_s=round(cpu_end[1] - cpu[1], 2),
        harness_cpu_s=round(cpu_end[2] - cpu[2], 2),
        swarm_errors=c.swarm.errors[:5],
        air_malformed=malformed,
        wall_s=round(time.monotonic() - started, 1),
        loadavg_at_end=[round(value, 2) for value in os.getloadavg()],  # the machine is shared: how busy it was
    )
    return figures


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _figures(
    swarm: Swarm, record: AirRecord, deliveries: list[tuple[str, int, float]], window: tuple[float, float], seed: int
) -> dict[str, Any]:
    """record: the rig's (hil/air_record.py), what the bridge's radio made of each uplink: 'deaf' for a frame the
    medium delivered whose start it did not hear (it was transmitting or turning round), 'not_listening' here
    for one it was not listening for at all."""

    def at_the_bridge(transmission: Transmission) -> str:
        fate = record.fate(transmission)
        return "not_listening" if fate == UNHEARD else fate

    first, last = window
    readings = [s for s in swarm.sent if s.kind == messages.READINGS and s.attempt == 0 and first <= s.transmission.start < last]
    wanted = {(swarm.nodes[s.node].node_hex, s.sample) for s in readings}
    published = Counter((node, sample) for node, sample, _at in deliveries if (node, sample) in wanted)
    every_try: dict[tuple[str, int | None], list[int]] = {}  # (node hex, sample) -> ids of all its transmissions (retransmissions too)
    for s in swarm.sent:
        if s.kind == messages.READINGS:
            every_try.setdefault((swarm.nodes[s.node].node_hex, s.sample), []).append(id(s.transmission))
    replay = medium_only(swarm, seed)
    alone = medium_only(swarm, seed, (messages.READINGS,))
    at_bridge = Counter(at_the_bridge(s.transmission) for s in readings)
    known_from: dict[int, float] = {}  # node -> when the bridge's radio first got one of its HELLOs
    for s in swarm.sent:
        if s.kind == messages.HELLO and at_the_bridge(s.transmission) == DELIVERED:
            known_from.setdefault(s.node, s.transmission.start)
    unknown = sum(
        1 for s in readings if at_the_bridge(s.transmission) == DELIVERED and known_from.get(s.node, math.inf) > s.transmission.start
    )
    in_window = [s for s in swarm.sent if first <= s.transmission.start < last]
    sent = len(readings) or 1
    return {
        "readings_sent": len(readings),
        "published": len(published),
        "delivery": round(len(published) / sent, 4),
        "duplicates": sum(count - 1 for count in published.values()),
        "medium_only": round(sum(1 for s in readings if id(s.transmission) in replay) / sent, 4),
        "medium_only_any_try": round(sum(1 for key in wanted if any(t in replay for t in every_try[key])) / sent, 4),
        "medium_only_readings_alone": round(sum(1 for s in readings if id(s.transmission) in alone) / sent, 4),
        "bridge_radio": round(at_bridge[DELIVERED] / sent, 4),
        "bridge_got_before_its_hello": unknown,  # the gateway could not know the node yet: REJECT unknown_node
        "at_bridge": dict(at_bridge),
        "collisions_at_bridge": at_bridge[COLLISION],
        # It sent a downlink during the frame (half duplex), or its radio was off or turning round at its start
        "bridge_not_receiving": at_bridge[HALF_DUPLEX] + at_bridge["deaf"] + at_bridge["not_listening"],
        "frames_dropped": swarm.dropped,
        "uplinks_in_window": len(in_window),
        "retransmissions_in_window": sum(1 for s in in_window if s.attempt),
        "hellos_in_window": sum(1 for s in in_window if s.kind == messages.HELLO),
        "downlinks_taken": dict(swarm.received),
    }
