"""The whole chain for one run: a broker, an MQTT capture, the nodes' rig, the gateway.

Started in that order and stopped in the reverse order, whatever happened in
between, so a scenario, a test or the demo never leaves a process behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from gateway.keystore import Keystore

from .broker import Mosquitto
from .capture import MqttCapture
from .faults import Fault
from .gateway import GatewayProcess


class Rig(Protocol):
    """What the runner needs from the nodes: the emulated rig (hil/rig.py) or a bench (hil/bench.py)."""

    target: str
    measures_latency: bool

    @property
    def ports(self) -> list[str]: ...

    def start(self) -> None: ...
    def begin(self) -> None: ...
    def stop(self) -> None: ...
    def reboot(self, index: int) -> None: ...
    def produced(self, deliveries: list[tuple[str, int, float]]) -> dict[tuple[str, int], float]: ...
    def not_applicable(self, fault: Fault) -> str | None: ...
    def line_damage(self) -> dict[str, int]: ...
    def counter_reuse(self) -> dict[str, int]: ...
    def keys(self) -> dict[str, bytes]: ...  # node hex -> key, for nodes that must tag their frames (radio nodes)


class Chain:
    def __init__(self, workdir: Path, rig: Rig, **gateway_options: Any) -> None:
        self.workdir = Path(workdir)
        self.rig = rig
        self.broker = Mosquitto(self.workdir / "broker")
        self._gateway_options = gateway_options
        self.capture: MqttCapture | None = None
        self.gateway: GatewayProcess | None = None

    def __enter__(self) -> Chain:
        try:
            self.broker.start()
            self.capture = MqttCapture(self.broker.host, self.broker.port, ["edgegw/#"])
            self.rig.start()
            self.gateway = GatewayProcess(self.workdir / "gateway", self.broker.port, self.rig.ports, **self._gateway_options)
            keystore = Keystore(self.gateway.data_dir / "keys.json")
            for node_hex, key in self.rig.keys().items():
                keystore.add(node_hex, key, replace=True)  # the rig's keys are the nodes' (a rerun in the same place)
            self.gateway.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.gateway is not None and self.gateway.process is not None and self.gateway.process.poll() is None:
            try:
                self.gateway.stop(timeout=20)  # a clean stop: what it holds stays on disk
            except Exception:  # whatever happened, the processes below still have to go
                self.gateway.close()
        self.rig.stop()
        if self.capture is not None:
            self.capture.close()
        self.broker.stop()
