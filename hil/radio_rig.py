"""Emulated LoRa nodes and bridges, the real firmware on the MicroPython VM, around the emulated air.

Bridges are `lora_bridge` nodes on a serial line the gateway opens, as on a street cabinet; every other
radio is a node whose link is the air (firmware/radio_port.py): `lora_sensor`, or a street light, gauge
or parking bay over radio. Each radio's node.json names its pty on the air (hil/air.py), its SF and its
channel; each gets a key (radio frames must be tagged), which `keys` gives for the gateway's keys file.

It is a rig as hil/chain.py means it, so a city scenario with an [air] table (hil/timeline.py) runs on it:
`nodes` are the radio nodes (the scenario's node indexes), `ports` the bridges' serial lines, and the tap
reads every uplink as it goes on air, before the air can lose it: the moment a sample was produced.
"""

from __future__ import annotations

import math
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.fwtools.emulate import BOOT_TRIES, READY_TIMEOUT_S, EmulatedNode, Emulator, EmulatorError
from gateway.keytools import write_node_dir
from protocols import cobs

from .air import Air
from .air_record import AirRecord
from .faults import LINE_KINDS, Fault
from .radio import SENSITIVITY_DBM, Medium, PathLoss, Transmission
from .rig import WireTap
from .timeline import AirLayout, RoleGroup, ScenarioError

INSTALL_MARGIN_DB = 3.0  # a node is installed where a bridge hears its full power this far above sensitivity
INSTALL_POWER_DBM = 14.0
INSTALL_TRIES = 200
BRIDGE_STATUS_S = 30.0  # a bridge's STATUS goes over its cable, not the air: its airtime and budget, often


@dataclass
class Placed:
    node: EmulatedNode
    name: str
    x: float
    y: float
    key: bytes

    @property
    def node_hex(self) -> str:
        return "e100%012x" % self.node.seed  # the unix HAL's unique id: e1 00 and the seed


class RadioRig:
    target = "emulated-air"
    measures_latency = True

    def __init__(
        self, workdir: Path, seed: int = 1, path_loss: PathLoss | None = None, interval: float = 20.0, status_interval: float = 60.0
    ) -> None:
        self.air = Air(Medium(seed, path_loss))
        self.air.on_transmit = self._tapped
        self.record = AirRecord(set())  # the bridges' names join it as they are placed
        self.air.on_reception = self.record
        self.workdir = Path(workdir)
        self.seed = 7000 + 100 * seed  # the nodes' (their ids)
        # 96 KB of heap, not the sensor node's 64: on the unix port the emulated SX1276 (its FIFO and registers),
        # the air's line buffer and the hex of each packet live on the node's heap, where a board has a chip;
        # at 64 KB a street light on the air ran out of memory loading the code for a COMMAND.
        self.emulator = Emulator(1, interval, "96k", 1000 * seed, Path(workdir), status_interval=status_interval)
        self.emulator.nodes.clear()
        self.bridges: list[Placed] = []
        self.radios: list[Placed] = []
        self.tap = WireTap(self._key_of)
        self._index: dict[str, int] = {}  # a radio node's name on the air -> its index in `radios`
        self._radio_keys: dict[bytes, bytes] = {}  # a radio node's id -> its key (the tap's)
        self.boot_spread_s = 0.0  # the nodes are booted over this long (start)
        self.boot_error: str | None = None
        self._booting: threading.Thread | None = None
        self._stopping = threading.Event()

    @classmethod
    def for_scenario(
        cls, workdir: Path, layout: AirLayout, groups: list[RoleGroup], *, interval: float, status_interval: float, seed: int
    ) -> RadioRig:
        """The bridges where [air] puts them; each group's nodes at seeded bearings and distances from (0, 0)."""
        rig = cls(workdir, seed, interval=interval, status_interval=status_interval)
        rig.boot_spread_s = layout.boot_spread_s
        for spot in layout.bridges:
            rig.bridge(spot.x, spot.y, spot.sf, spot.freq)
        channels = tuple(sorted({spot.freq for spot in layout.bridges}))
        draw = random.Random(seed)
        for group in groups:
            sfs = group.sf or (layout.bridges[0].sf,)
            for number in range(group.count):
                sf = sfs[number % len(sfs)]
                x, y = rig._site(draw, "node%d" % len(rig.emulator.nodes), sf, group.distance_m)
                rig.radio(x, y, group.role, sf, channels, group.interval, group.config)
        return rig

    def _site(self, draw: random.Random, name: str, sf: int, distance_m: tuple[float, float]) -> tuple[float, float]:
        """Where a node is installed: a seeded bearing and distance, drawn again until a bridge on its SF hears it
        with INSTALL_MARGIN_DB to spare (the installer's link check). The medium's shadowing is drawn by the node's name
        (and the bridge's spot), not by where it is drawn, so a node in a deep shadow is drawn ever nearer (to a tenth of
        its ring) until heard."""
        near, far = distance_m
        medium = self.air.medium
        listening = [placed for placed in self.bridges if placed.node.settings["sf"] == sf]
        if not listening:
            raise ScenarioError("air: no bridge listens on SF%d, which node %s sends at" % (sf, name))
        for attempt in range(INSTALL_TRIES):
            nearer = 1.0 - 0.9 * attempt / INSTALL_TRIES
            bearing, distance = draw.uniform(0, 2 * math.pi), draw.uniform(near, far) * nearer
            x, y = distance * math.cos(bearing), distance * math.sin(bearing)
            for bridge in listening:
                loss = medium.path_loss.loss_db(math.hypot(x - bridge.x, y - bridge.y), medium.shadowing_db(name, bridge.name))
                if INSTALL_POWER_DBM - loss - SENSITIVITY_DBM[sf] >= INSTALL_MARGIN_DB:
                    return x, y
        raise ScenarioError(
            "air: node %s at SF%d: no spot up to %g m out where a bridge hears it with %g dB to spare (%d tried): raise "
            "its SF" % (name, sf, far, INSTALL_MARGIN_DB, INSTALL_TRIES)
        )

    def _place(self, role: str, x: float, y: float, settings: dict[str, object]) -> Placed:
        index = len(self.emulator.nodes)
        name = "%s%d" % ("bridge" if role == "lora_bridge" else "node", index)
        node = EmulatedNode(index, self.seed + index, self.emulator.state_dir / name, role)
        node.settings = {"air": self.air.add(name, x, y), **settings}
        self.emulator.nodes.append(node)
        key = os.urandom(32)
        node.data_dir.mkdir(parents=True, exist_ok=True)
        write_node_dir(node.data_dir, key)
        return Placed(node, name, x, y, key)

    def bridge(self, x: float, y: float, sf: int = 7, freq: int = 868100000) -> Placed:
        placed = self._place("lora_bridge", x, y, {"sf": sf, "freq": freq})
        placed.node.status_interval = BRIDGE_STATUS_S
        self.bridges.append(placed)
        self.record.bridges.add(placed.name)
        return placed

    def radio(
        self,
        x: float,
        y: float,
        role: str = "lora_sensor",
        sf: int = 7,
        channels: tuple[int, ...] = (868100000,),
        interval: float | None = None,
        settings: dict[str, Any] | None = None,
    ) -> Placed:
        placed = self._place(role, x, y, {**(settings or {}), "sf": sf, "channels": list(channels)})
        placed.node.interval = interval
        self._index[placed.name] = len(self.radios)
        self._radio_keys[bytes.fromhex(placed.node_hex)] = placed.key
        self.radios.append(placed)
        return placed

    def _key_of(self, node_id: bytes) -> bytes | None:
        return self._radio_keys.get(node_id)  # per frame on the air's thread: looked up, not searched

    def _tapped(self, transmission: Transmission) -> None:
        index = self._index.get(transmission.sender)
        if index is not None:  # a node's uplink (a bridge's downlink is not what a node produced)
            self.tap.feed(index, b"\x00" + cobs.encode(transmission.payload) + b"\x00", transmission.start)

    # ------------------------------------------------------------ a rig (hil/chain.py)

    @property
    def nodes(self) -> list[EmulatedNode]:
        """The radio nodes, by the scenario's node index (the bridges are not counted)."""
        return [placed.node for placed in self.radios]

    @property
    def ports(self) -> list[str]:
        return [placed.node.port for placed in self.bridges]

    bridge_ports = ports

    def keys(self) -> dict[str, bytes]:
        return {placed.node_hex: placed.key for placed in self.bridges + self.radios}

    def start(self) -> None:
        """The bridges at once; the nodes one after another over `boot_spread_s`, in a thread (the gateway starts
        meanwhile): a park's probes are switched on as they are installed, not in one second, and nodes at a
        high SF that all sent their HELLO together would collide, then wait out minutes of time-off to try again."""
        self.air.start()
        self.emulator.start(spawn=False)
        for placed in self.bridges:
            self.emulator.boot(placed.node)
        self._booting = threading.Thread(target=self._boot_nodes, name="radio-boot", daemon=True)
        self._booting.start()

    def _boot_nodes(self) -> None:
        step = self.boot_spread_s / max(1, len(self.radios))
        order = list(self.radios)
        random.Random(self.seed).shuffle(order)  # groups interleaved: a group's long HELLOs not back to back
        for placed in order:
            if self._stopping.is_set():
                return
            try:
                self.emulator.boot(placed.node)
            except EmulatorError as error:
                self.boot_error = self.boot_error or str(error)
            self._stopping.wait(step)

    def begin(self) -> None:
        pass  # nothing is timed by the rig itself: no line faults on the air

    @property
    def relay_error(self) -> str | None:
        return self.emulator.relay_error or self.boot_error or self.air.observer_error

    def reboot(self, index: int) -> None:
        self.emulator.restart(self.radios[index].node)

    def produced(self, deliveries: list[tuple[str, int, float]]) -> dict[tuple[str, int], float]:
        """Every sample that went on air at least once, first seen then (the air may have lost it)."""
        return self.tap.snapshot()

    def not_applicable(self, fault: Fault) -> str | None:
        if fault.kind in LINE_KINDS:
            return "the nodes are on the air: no cable to fault (the air's collisions and duty cycle are its faults)"
        return None

    def line_damage(self) -> dict[str, int]:
        return {}

    def counter_reuse(self) -> dict[str, int]:
        return dict(self.tap.counter_reuse)

    def stop(self) -> None:
        self._stopping.set()
        if self._booting is not None:
            self._booting.join(BOOT_TRIES * READY_TIMEOUT_S + 5)  # a boot under way ends (or is stopped below)
        self.emulator.stop()
        self.air.stop()
        names = {placed.name: placed.node_hex for placed in self.bridges + self.radios}
        self.record.write(self.workdir / "air.jsonl", self.air.transmissions, names)  # kept with the run's logs
