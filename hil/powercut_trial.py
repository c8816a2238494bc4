"""Power cuts under a running gateway: is every reading ever acknowledged to a node delivered?

The real `edgegw run` keeps its data_dir on the emulated power-cut disk (hil/powercut.py);
battery nodes on real ptys send READINGS, keep every frame until it is acknowledged and resend
it (they are not cut: their memory is on batteries); the gateway reaches a real mosquitto
through hil/flaky_link.py, so its uplink can be down while the subscriber, connected straight
to the broker, stays connected the whole time. Each round: the uplink up or down (seeded), the
gateway started on a freshly mounted disk, traffic for a random time (in some rounds the uplink
drops under it first; one round in seven or so is cut while the gateway is still starting),
then a cut: the disk's daemon and the gateway SIGKILLed together, whatever was not fsynced
thrown away. At the end the gateway runs with the uplink up until the nodes hold nothing
unacknowledged, and the subscriber must have received every reading the nodes ever saw
acknowledged (duplicates allowed).

It checks only "acknowledged => delivered": how the gateway stays durable (a commit on disk, a
PUBACK) is its own business.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from protocols import messages

from .broker import Mosquitto
from .capture import MqttCapture
from .flaky_link import FlakyProxy
from .gateway import GatewayProcess
from .powercut import PowerCutDisk
from .scripted_node import ScriptedNode
from .serial_pair import PtyCable

RESEND_AFTER = 2.0  # s: a node's retransmission timer, as the firmware's
MAX_UNACKED = 32  # per node: what a node holds at most before it waits (the largest firmware ring; well inside the span rule)
REASON_STALE, REASON_UNKNOWN_NODE = 11, 12
CHANNELS = [{"name": "counter", "unit": "", "scale": 0}]


class BatteryNode:
    """A node whose memory survives the gateway's power cuts: every READINGS frame is kept until
    acknowledged, resent every RESEND_AFTER seconds, and a REJECT stale/unknown node is answered
    with a HELLO (as firmware/node.py does). Reading number `seq` (1, 2, ...) travels as channel
    `counter`, so the subscriber can say which readings arrived."""

    def __init__(self, cable: PtyCable, node_id: bytes) -> None:
        self.node = ScriptedNode(cable, node_id)
        self.hex = node_id.hex()
        self.next_seq = 1
        self.seq_of: dict[int, int] = {}  # frame counter -> reading number, for frames not yet acknowledged
        self.sent_at: dict[int, float] = {}  # frame counter -> when last written
        self.acked: set[int] = set()  # reading numbers ever acknowledged
        self.hello_counter: int | None = None

    def _write(self, write: Callable[[], object]) -> None:
        with contextlib.suppress(TimeoutError):  # nobody reads the pty (the gateway is down) and it is full: the frame stays held
            write()

    def hello(self) -> None:
        self._write(lambda: setattr(self, "hello_counter", self.node.hello(CHANNELS)))

    def step(self, now: float, send: bool) -> None:
        """Read answers, resend what is due, and (if `send`) send one new reading when there is room."""
        for message in self.node.poll(0):
            rejected = message.type == messages.REJECT and message.fields.get("reason") in (REASON_STALE, REASON_UNKNOWN_NODE)
            if rejected and (self.hello_counter is None or self.hello_counter not in self.node.unacked):
                self.hello()
        for counter in [c for c in self.seq_of if c not in self.node.unacked]:
            self.acked.add(self.seq_of.pop(counter))
            self.sent_at.pop(counter, None)
        for counter, wire in list(self.node.unacked.items()):
            if now - self.sent_at.get(counter, now) >= RESEND_AFTER:
                self.sent_at[counter] = now
                self._write(partial(self.node.cable.write, b"\x00" + wire, timeout=0.2))
        if send and len(self.seq_of) < MAX_UNACKED and self.node.may_send():
            self.seq_of[self.node.counter] = self.next_seq  # before the write: a frame held is a frame counted
            self.sent_at[self.node.counter] = now
            self.next_seq += 1
            self._write(lambda: self.node.send(messages.READINGS, {"samples": [0, self.seq_of[self.node.counter], 0]}, span_timeout=0))
        for counter in self.node.unacked:
            self.sent_at.setdefault(counter, now)

    @property
    def holding(self) -> int:
        return len(self.node.unacked)


@dataclass
class TrialResult:
    seed: int
    cuts: int = 0
    cuts_uplink_down: int = 0
    cuts_at_start: int = 0
    cuts_after_link_drop: int = 0
    acked: dict[str, set[int]] = field(default_factory=dict)  # node -> reading numbers acknowledged
    delivered: dict[str, set[int]] = field(default_factory=dict)  # node -> reading numbers the subscriber received
    seconds: float = 0.0

    def missing(self) -> dict[str, list[int]]:
        return {
            node: sorted(acked - self.delivered.get(node, set()))
            for node, acked in self.acked.items()
            if acked - self.delivered.get(node, set())
        }

    def summary(self) -> str:
        acked = sum(len(v) for v in self.acked.values())
        lost = sum(len(v) for v in self.missing().values())
        cuts = "%d power cuts (%d with the uplink down, %d soon after it dropped, %d while the gateway started)" % (
            self.cuts,
            self.cuts_uplink_down,
            self.cuts_after_link_drop,
            self.cuts_at_start,
        )
        return "seed %d: %s in %.0f s, %d readings acknowledged, %d of them never delivered" % (self.seed, cuts, self.seconds, acked, lost)


def ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out: list[str] = []
    for number in numbers:
        if out and int(out[-1].split("-")[-1]) == number - 1:
            out[-1] = "%s-%d" % (out[-1].split("-")[0], number)
        else:
            out.append(str(number))
    return ", ".join(out)


class PowerCutTrial:
    def __init__(self, workdir: Path, broker: Mosquitto, *, seed: int, nodes: int = 6) -> None:
        self.workdir = Path(workdir)
        self.rng = random.Random(seed)
        self.result = TrialResult(seed)
        self.broker = broker
        self.link = FlakyProxy(broker.port).start()
        self.disk = PowerCutDisk(self.workdir / "backing", self.workdir / "gw" / "data")
        # One node per pty: a node reads every answer on its line, so nodes do not share one.
        self.cables = [PtyCable(self.workdir / ("ttyCUT%d" % i)) for i in range(nodes)]
        self.nodes = [BatteryNode(cable, bytes([0xCC, 0, 0, 0, 0, 0, 0, index])) for index, cable in enumerate(self.cables)]
        self.capture = MqttCapture(broker.host, broker.port, ["edgegw/+/nodes/+/readings"])
        self.gateway = GatewayProcess(self.workdir / "gw", self.link.port, [str(self.workdir / "ttyCUT*")])

    def pump(self, seconds: float, send: bool = True, until: Callable[[], bool] | None = None) -> bool:
        """Run the nodes for up to `seconds`, or until `until()` is true (then True)."""
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            for node in self.nodes:
                node.step(now, send)
            if until is not None and until():
                return True
            if now >= deadline:
                return False
            time.sleep(0.01)

    def _start_gateway(self) -> None:
        mark = len(self.gateway.log())
        self.gateway.start()
        if not self.pump(120, until=lambda: "ttyCUT%d: open" % (len(self.cables) - 1) in self.gateway.log()[mark:]):
            raise AssertionError(
                "seed %d: the gateway did not open its ports within 120 s:\n%s" % (self.result.seed, self.gateway.log()[-3000:])
            )
        if self.gateway.process is not None and self.gateway.process.poll() is not None:
            raise AssertionError("seed %d: the gateway exited:\n%s" % (self.result.seed, self.gateway.log()[-3000:]))

    def cut(self) -> None:
        """Power off the disk and the gateway at one instant, and back on."""
        if self.disk.process is not None:
            self.disk.process.kill()
        if self.gateway.process is not None:
            self.gateway.process.kill()
        self.gateway.kill()
        self.disk.cut()

    def _uplink(self, up: bool) -> None:
        if up:
            self.link.set_good()
        else:
            self.link.set_link(rate=0)  # carries nothing: the gateway connects and never hears CONNACK
            self.link.cut()

    def _round(self) -> None:
        """One power cut: the uplink up or down, and the cut at a random moment."""
        up = self.rng.random() >= 0.5
        self._uplink(up)
        self.result.cuts_uplink_down += not up
        if self.rng.random() < 0.15:  # while it starts: opening and recovering its store, salvage, first frames
            self.gateway.start()
            self.pump(self.rng.uniform(0.0, 1.0))
            self.result.cuts_at_start += 1
        elif up and self.rng.random() < 0.4:  # the uplink drops under it: publishes in flight, then the disk
            self._start_gateway()
            self.pump(self.rng.uniform(0.1, 1.5))
            self._uplink(False)
            self.result.cuts_after_link_drop += 1
            self.pump(self.rng.uniform(0.0, 1.5))
        else:
            self._start_gateway()
            self.pump(self.rng.uniform(0.2, 3.0))
        self.cut()
        self.result.cuts += 1

    def run(self, cuts: int) -> TrialResult:
        started = time.monotonic()
        self.disk.start()
        for node in self.nodes:
            node.hello()
        for _round in range(cuts):
            self._round()
        self.link.set_good()
        self._start_gateway()
        if not self.pump(180, send=False, until=lambda: not any(node.holding for node in self.nodes)):
            raise AssertionError(
                "%s; the nodes still hold unacknowledged frames after 180 s with the uplink up: %s\n%s"
                % (self.result.summary(), {n.hex: n.holding for n in self.nodes}, self.gateway.log()[-3000:])
            )
        self.result.acked = {node.hex: set(node.acked) for node in self.nodes}
        self._collect(180)
        self.result.seconds = time.monotonic() - started
        return self.result

    def _collect(self, timeout: float, stall: float = 60.0) -> None:
        """Wait until the subscriber has every acknowledged reading; give up after `timeout`, or once
        nothing new has arrived for `stall` seconds."""
        deadline = time.monotonic() + timeout
        seen, progress = -1, time.monotonic()
        while True:
            deliveries = self.capture.counter_deliveries()
            delivered: dict[str, set[int]] = {}
            for node, value, _at in deliveries:
                delivered.setdefault(node, set()).add(value)
            self.result.delivered = delivered
            now = time.monotonic()
            if len(deliveries) != seen:
                seen, progress = len(deliveries), now
            if not self.result.missing() or now > deadline or now - progress > stall:
                return
            time.sleep(0.2)

    def report(self) -> str:
        lines = [self.result.summary()]
        for node, numbers in sorted(self.result.missing().items()):
            lines.append("  node %s: acknowledged but never delivered: %s" % (node, ranges(numbers)))
        return "\n".join(lines)

    def close(self) -> None:
        self.gateway.close()
        self.disk.close()
        self.capture.close()
        self.link.close()
        for cable in self.cables:
            cable.close()
