"""Emulated LoRa nodes and bridges, the real firmware on the MicroPython VM, around the emulated air.

Bridges are `lora_bridge` nodes on a serial line the gateway opens, as on a street cabinet; every other
radio is a node whose link is the air (firmware/radio_port.py): `lora_sensor`, or a street light, gauge
or parking bay over radio. Each radio's node.json names its pty on the air (hil/air.py), its SF and its
channel; each gets a key (radio frames must be tagged), which `keys` gives for the gateway's keys file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gateway.fwtools.emulate import EmulatedNode, Emulator
from gateway.keytools import write_node_dir

from .air import Air
from .radio import Medium, PathLoss


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
    def __init__(
        self, workdir: Path, seed: int = 1, path_loss: PathLoss | None = None, interval: float = 20.0, status_interval: float = 60.0
    ) -> None:
        self.air = Air(Medium(seed, path_loss))
        self.seed = 7000 + 100 * seed  # the nodes' (their ids)
        # 96 KB of heap, not the sensor node's 64: on the unix port the emulated SX1276 (its FIFO and registers),
        # the air's line buffer and the hex of each packet live on the node's heap, where a board has a chip;
        # at 64 KB a street light on the air ran out of memory loading the code for a COMMAND.
        self.emulator = Emulator(1, interval, "96k", 1000 * seed, Path(workdir), status_interval=status_interval)
        self.emulator.nodes.clear()
        self.bridges: list[Placed] = []
        self.radios: list[Placed] = []

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
        self.bridges.append(placed)
        return placed

    def radio(self, x: float, y: float, role: str = "lora_sensor", sf: int = 7, channels: tuple[int, ...] = (868100000,)) -> Placed:
        placed = self._place(role, x, y, {"sf": sf, "channels": list(channels)})
        self.radios.append(placed)
        return placed

    @property
    def bridge_ports(self) -> list[str]:
        return [placed.node.port for placed in self.bridges]

    def keys(self) -> dict[str, bytes]:
        return {placed.node_hex: placed.key for placed in self.bridges + self.radios}

    def start(self) -> None:
        self.air.start()
        self.emulator.start()

    def stop(self) -> None:
        self.emulator.stop()
        self.air.stop()
