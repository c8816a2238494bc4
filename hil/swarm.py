"""Many light scripted radio nodes on the emulated air, all driven from the air's own thread (hil/air.py's
in-process antennas and `every_tick`): capacity runs of thousands of nodes through a real bridge, where a
process per node (hil/radio_rig.py's MicroPython VMs) would not fit on the machine.

Each node is a class-A radio node as firmware/radio_port.py is, cut to what a capacity run needs, with the
same protocols/ code: frames built by protocols.frame.pack and tagged with the node's 32-byte key (SPEC.md
§3.4: a radio frame must be), the EU868 duty cycle kept per sub-band by protocols.dutycycle.DutyCycle,
RX1 on the uplink's channel RX_DELAY_MS after the uplink ended and RX2 on DOWNLINK_FREQ RX2_DELAY_MS after
it, both at the uplink's SF with inverted I/Q, each open RX_WINDOW_MS and on while a frame whose preamble
it detected (DETECT_SYMBOLS into it: hil/air.py) is still coming, each closing after one frame (protocols/lora.py). What it does:

- At boot (a uniform random moment within the first `interval`) a short HELLO: one channel, `counter`, no
  commands, caps readings and auth, so it costs little airtime. It is kept in a protocols.session.Outbox
  and resent (same counter, same bytes) on the session's timer (2 s doubling to 60 s, ±25 %) until an ACK
  names it, as the firmware resends it.
- From one `interval` after boot, one READINGS a `interval` (each uplink ±3 s of jitter around the node's
  phase, as bench/radio.py's medium-only curve draws them), F_ACK_REQ, no base_time (the gateway dates it
  when received), one sample of channel 0 (`counter`): the node's running sample number, so loss and
  duplicates are counted at the broker (hil/capture.py counter_deliveries). It does not wait for its
  HELLO's ACK, as the firmware does not: a gateway that has the HELLO takes it; one that has not answers
  REJECT unknown_node, and the HELLO is on its way again anyway.
- `retransmit` off: each reading goes on air once (first-try delivery). On: kept in the Outbox like the
  HELLO and resent on the session's timer up to RETRIES times, then forgotten.
- A frame waits in a queue (the HELLO first, then by counter; at most QUEUE, the last in that order left
  out and counted in `dropped`, as the firmware's) for the node's windows to be over, its sub-band's
  time-off, and after each transmission a random 0 .. chance_ms(its airtime) ms more (protocols/lora.py, as the
  firmware);
  a frame acknowledged while it waited is not sent.
- What comes in a window is decoded with the node's key; an ACK is taken, a REJECT unknown_node makes it
  say HELLO again, anything else (TIME, the gateway's link-adaptation CONFIG) is counted in `received`
  and left unanswered: the node offers neither time nor config.

Nodes are placed at seeded positions, uniformly over the ring `ring_m` around `centre`; every draw comes
from `seed`, so a run's layout, keys and phases are the same each time (the air's timing is real time).
Not thread-safe by design: everything here runs in the air's thread; read the counters after `air.stop()`,
or `snapshot()` (a copy made in the air's thread at its next turn).
"""

from __future__ import annotations

import heapq
import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from protocols import frame as fr
from protocols import messages, session
from protocols.airtime import airtime_us
from protocols.dutycycle import DutyCycle, band
from protocols.errors import E_UNKNOWN_NODE, ProtocolError
from protocols.lora import DOWNLINK_FREQ, RX2_DELAY_MS, RX_DELAY_MS, RX_WINDOW_MS, chance_ms

from .air import Air, Antenna
from .radio import Transmission

INTERVAL_S = 60.0
JITTER_S = 3.0  # each uplink this much either side of the node's phase (bench/radio.py's medium-only curve too)
QUEUE = 4  # frames waiting for the radio, at most (firmware/radio_port.py _QUEUE)
RETRIES = 3  # with `retransmit`: a reading is resent at most this many times (bench/radio.py's RETRIES)
HEARD_S = 2.0  # a window that detected a preamble closes at the frame's outcome; this long at most after it opened
CAPS = 0x01 | messages.CAP_AUTH  # readings, auth: no time, no config, no commands
HELLO_FIELDS = {
    "proto": [1, 1],
    "fw_version": "swarm-1",
    "hw_model": "scripted",
    "caps": CAPS,
    "channels": [{"name": "counter", "unit": ""}],
}

_IDLE, _TX, _WAIT, _RX = range(4)


class _Counter:
    """A frame counter as protocols.session.Outbox reads it (the firmware's PersistentCounter, in RAM)."""

    def __init__(self) -> None:
        self.next = 1

    def peek(self) -> int:
        return self.next

    def take(self) -> int:
        self.next += 1
        return self.next - 1


@dataclass
class Sent:
    """One uplink on air: which node, which frame, and (READINGS) which sample."""

    node: int
    kind: int  # messages.HELLO or messages.READINGS
    counter: int
    sample: int | None
    attempt: int  # 0: the first transmission
    transmission: Transmission


@dataclass
class SwarmNode:
    index: int
    name: str  # on the air
    node_id: bytes
    key: bytes
    x: float
    y: float
    sf: int
    channels: tuple[int, ...]
    boot: float  # s after the swarm started: its HELLO is due then
    rng: random.Random
    booted: bool = False
    antenna: Antenna | None = None
    duty: DutyCycle = field(default_factory=DutyCycle)
    counter: _Counter = field(default_factory=_Counter)
    outbox: session.Outbox | None = None
    queue: list[tuple[int, int, bytes]] = field(default_factory=list)  # (rank, counter, frame): HELLO rank 0
    kinds: dict[int, tuple[int, int | None]] = field(default_factory=dict)  # counter -> (type, sample) of frames it made
    attempts: Counter[int] = field(default_factory=Counter)  # counter -> transmissions so far
    hello: int | None = None  # the counter of the HELLO waiting for its ACK
    hello_acked_at: float | None = None
    acked: dict[int, float] = field(default_factory=dict)  # counter -> when an ACK naming it came
    samples: int = 0  # the last sample number made
    next_reading: float = math.inf  # s, monotonic
    state: int = _IDLE
    until: float = 0.0  # the current state's end (TX: the uplink's end; WAIT: a window's opening; RX: its closing)
    tx_end: float = 0.0
    hop: int = 0
    rx2: bool = False  # the window open or due is the second
    heard: bool = False  # the open window detected a preamble
    not_before_ms: int = 0
    wake: float = math.inf  # when the swarm looks at it next (the heap's entry for it)

    @property
    def node_hex(self) -> str:
        return self.node_id.hex()


class Swarm:
    def __init__(
        self,
        air: Air,
        count: int,
        *,
        sf: int = 7,
        channels: tuple[int, ...] = (868100000,),
        ring_m: tuple[float, float] = (50.0, 850.0),
        centre: tuple[float, float] = (0.0, 0.0),
        interval: float = INTERVAL_S,
        retransmit: bool = False,
        seed: int = 1,
    ) -> None:
        """`count` nodes uniformly over the ring `ring_m` (inner, outer radius) around `centre`, placed on `air` (call
        before air.start: `start` then hooks the swarm into the air's loop)."""
        self.air = air
        self.interval = interval
        self.retransmit = retransmit
        self.nodes: list[SwarmNode] = []
        self.sent: list[Sent] = []
        self.by_transmission: dict[int, Sent] = {}  # id(transmission) -> what it was
        self.received: Counter[str] = Counter()  # downlinks taken by kind: ACK, TIME, REJECT, ... and "crc", "undecodable"
        self.windows: list[tuple[int, float, int, int, bool]] = []  # (node, opened at, freq, sf, inverted I/Q)
        self.dropped = 0  # frames left out of a full queue
        self.errors: list[str] = []  # what went wrong in the air's thread (an exception there would stop the air)
        self._heap: list[tuple[float, int, int]] = []
        self._order = 0
        self._started = math.inf
        self._snapshot_wanted = threading.Event()
        self._snapshot_ready = threading.Event()
        self._snapshot: dict[str, Any] = {}
        draw = random.Random("swarm/%d" % seed)
        inner, outer = ring_m
        for index in range(count):
            # Uniform over the ring's area: the radius's square is uniform between the two radii's squares
            radius = math.sqrt(draw.uniform(inner * inner, outer * outer))
            bearing = draw.uniform(0, 2 * math.pi)
            node = SwarmNode(
                index,
                "swarm%d" % index,
                bytes.fromhex("e2%014x" % (index + 1)),
                draw.randbytes(32),
                centre[0] + radius * math.cos(bearing),
                centre[1] + radius * math.sin(bearing),
                sf,
                channels,
                draw.uniform(0, interval),
                random.Random("swarm/%d/%d" % (seed, index)),
            )
            node.outbox = session.Outbox(node.counter, 16)
            node.antenna = air.antenna(node.name, node.x, node.y)
            node.antenna.on_header = lambda node=node: self._guarded(self._header, node)
            node.antenna.on_frame = lambda payload, rssi, snr, node=node: self._guarded(self._frame, node, payload)
            node.antenna.on_crc_error = lambda rssi, snr, node=node: self._guarded(self._crc_error, node)
            self.nodes.append(node)

    def keys(self) -> dict[str, bytes]:
        """node hex -> key, for the gateway's keys file."""
        return {node.node_hex: node.key for node in self.nodes}

    def start(self) -> None:
        """Hook into the air's loop: the nodes boot from its next turn on (each at its `boot` after it)."""
        self.air.every_tick(self.tick)

    # ------------------------------------------------------------ the air's thread

    def tick(self, now: float) -> None:
        if self._started == math.inf:
            self._started = now
            for node in self.nodes:
                self._schedule(node, now + node.boot)
        while self._heap and self._heap[0][0] <= now:
            when, _order, index = heapq.heappop(self._heap)
            node = self.nodes[index]
            if when == node.wake:  # else a later entry replaced it
                node.wake = math.inf
                self._guarded(self._step, node, now)
        if self._snapshot_wanted.is_set():
            self._snapshot_wanted.clear()
            self._snapshot = self._figures()
            self._snapshot_ready.set()

    def _guarded(self, step: Any, node: SwarmNode, *args: Any) -> None:
        """An exception would stop the air's thread, and every radio with it: the node stops instead, and the
        error is kept for the run to report."""
        try:
            step(node, *args)
        except Exception as error:
            self.errors.append("%s: %s: %s" % (node.name, type(error).__name__, error))
            node.wake = -math.inf  # never scheduled again

    def _schedule(self, node: SwarmNode, when: float) -> None:
        if when < node.wake:
            node.wake = when
            self._order += 1
            heapq.heappush(self._heap, (when, self._order, node.index))

    def _step(self, node: SwarmNode, now: float) -> None:
        now_ms = int(now * 1000)
        if not node.booted:
            node.booted = True
            node.hello = self._make(node, messages.HELLO, HELLO_FIELDS, None, now_ms)
            node.next_reading = now + self.interval + node.rng.uniform(-JITTER_S, JITTER_S)
        if now >= node.next_reading:
            node.samples += 1
            fields = {"samples": [0, node.samples, 0]}
            self._make(node, messages.READINGS, fields, node.samples, now_ms, keep=self.retransmit)
            node.next_reading = node.boot + self._started + self.interval * (node.samples + 1) + node.rng.uniform(-JITTER_S, JITTER_S)
        assert node.outbox is not None
        for kind, counter, _key, wire in node.outbox.due(now_ms, lambda span: node.rng.randint(0, span)):
            if kind != session.SEND:
                continue
            if node.kinds[counter][0] == messages.READINGS and node.attempts[counter] > RETRIES:
                node.outbox.forget(counter)  # resent RETRIES times: given up
            else:
                self._enqueue(node, counter, bytes(wire))
        if node.state == _TX and now >= node.until:
            node.state, node.tx_end = _WAIT, node.until
            node.rx2 = False
            node.until = node.tx_end + RX_DELAY_MS / 1000
        if node.state == _WAIT and now >= node.until:
            freq = DOWNLINK_FREQ if node.rx2 else node.channels[node.hop]
            assert node.antenna is not None
            node.antenna.listen(freq, node.sf, invert_iq=True)  # downlinks are inverted: no node hears another's uplink
            self.windows.append((node.index, now, freq, node.sf, True))
            node.state, node.heard = _RX, False
            node.until = now + RX_WINDOW_MS / 1000
        if node.state == _RX and now >= node.until + (HEARD_S if node.heard else 0.0):
            self._close(node)
        if node.state == _IDLE and node.queue:
            self._send(node, now, now_ms)
        self._schedule(node, self._next(node, now))

    def _next(self, node: SwarmNode, now: float) -> float:
        assert node.outbox is not None
        times = [node.next_reading]
        retry = node.outbox.next_due()
        if retry is not None:
            times.append(retry / 1000)
        if node.state == _RX:
            times.append(node.until + (HEARD_S if node.heard else 0.0))
        elif node.state != _IDLE:
            times.append(node.until)
        elif node.queue:
            channel = node.channels[(node.hop + 1) % len(node.channels)]
            opens = max(node.not_before_ms, node.duty.free_at[band(channel)]) / 1000
            times.append(opens if opens > now else now + 1.0)  # open, yet refused: its hour is full; a second later
        return min(times)

    def _make(self, node: SwarmNode, mtype: int, fields: dict[str, Any], sample: int | None, now_ms: int, keep: bool = True) -> int:
        counter = node.counter.take()
        flags = fr.F_ACK_REQ | fr.F_AUTH
        raw = bytes(fr.pack(fr.Frame(mtype, node.node_id, counter, messages.encode_payload(mtype, fields), flags), node.key))
        node.kinds[counter] = (mtype, sample)
        assert node.outbox is not None
        if keep:
            node.outbox.add(counter, raw, now_ms)
        self._enqueue(node, counter, raw)
        return counter

    def _enqueue(self, node: SwarmNode, counter: int, raw: bytes) -> None:
        rank = 0 if node.kinds[counter][0] == messages.HELLO else 1
        node.queue = [entry for entry in node.queue if entry[1] != counter]  # a retransmission replaces a copy waiting
        node.queue.append((rank, counter, raw))
        node.queue.sort()
        if len(node.queue) > QUEUE:
            node.queue.pop()
            self.dropped += 1

    def _send(self, node: SwarmNode, now: float, now_ms: int) -> None:
        assert node.outbox is not None
        while node.queue and node.kinds[node.queue[0][1]][0] == messages.HELLO and node.queue[0][1] != node.hello:
            node.queue.pop(0)  # an older HELLO, acknowledged meanwhile
        while node.queue and node.queue[0][1] not in node.outbox.counters and node.attempts[node.queue[0][1]]:
            node.queue.pop(0)  # acknowledged while it waited (or given up)
        if not node.queue or now_ms < node.not_before_ms:
            return
        hop = (node.hop + 1) % len(node.channels)
        channel = node.channels[hop]
        _rank, counter, raw = node.queue[0]
        airtime = airtime_us(len(raw), node.sf)
        if node.duty.wait_ms(channel, now_ms) or not node.duty.spend(channel, airtime, now_ms):
            return  # the sub-band is closed: the frame waits
        node.queue.pop(0)
        node.hop = hop
        node.not_before_ms = now_ms + node.duty.wait_ms(channel, now_ms) + node.rng.randrange(chance_ms(airtime))
        assert node.antenna is not None
        transmission = node.antenna.transmit(channel, node.sf, raw)
        mtype, sample = node.kinds[counter]
        sent = Sent(node.index, mtype, counter, sample, node.attempts[counter], transmission)
        node.attempts[counter] += 1
        self.sent.append(sent)
        self.by_transmission[id(transmission)] = sent
        node.state, node.until = _TX, transmission.end

    def _close(self, node: SwarmNode) -> None:
        assert node.antenna is not None
        node.antenna.sleep()
        if node.rx2:
            node.state = _IDLE
        else:  # RX2 opens at its time whatever RX1 got (the gateway may send a request there)
            node.state, node.rx2 = _WAIT, True
            node.until = node.tx_end + RX2_DELAY_MS / 1000

    def _header(self, node: SwarmNode) -> None:
        if node.state == _RX:
            node.heard = True

    def _crc_error(self, node: SwarmNode) -> None:
        self.received["crc"] += 1
        if node.state == _RX:
            self._close(node)
            self._schedule(node, self._next(node, time.monotonic()))

    def _frame(self, node: SwarmNode, payload: bytes) -> None:
        try:
            message = messages.decode_frame(fr.unpack(payload, lambda node_id: node.key))
        except ProtocolError:
            message = None
        if message is None or message.node_id != node.node_id or not message.flags & fr.F_DOWNLINK:
            self.received["undecodable"] += 1
        else:
            self.received[messages.NAMES.get(message.type, str(message.type))] += 1
            self._take(node, message)
        if node.state == _RX:
            self._close(node)  # a window closes after one frame
        self._schedule(node, self._next(node, time.monotonic()))

    def _take(self, node: SwarmNode, message: messages.Message) -> None:
        assert node.outbox is not None
        if message.type == messages.ACK:
            counters = list(message.fields["counters"])
            node.outbox.acked(counters, 0)
            for counter in counters:
                node.acked.setdefault(counter, time.monotonic())
            if node.hello is not None and node.hello in counters:
                node.hello, node.hello_acked_at = None, time.monotonic()
        elif message.type == messages.REJECT and message.fields.get("reason") == E_UNKNOWN_NODE and node.hello not in node.outbox.counters:
            # The gateway does not know the node and no HELLO of it is on its way: say HELLO again
            node.hello = self._make(node, messages.HELLO, HELLO_FIELDS, None, int(time.monotonic() * 1000))

    # ------------------------------------------------------------ figures

    def snapshot(self, timeout: float = 5.0) -> dict[str, Any]:
        """The swarm's figures now, copied in the air's thread at its next turn (the air must be running)."""
        self._snapshot_ready.clear()
        self._snapshot_wanted.set()
        if not self._snapshot_ready.wait(timeout):
            raise TimeoutError("the air's thread did not answer within %.0f s" % timeout)
        return self._snapshot

    def _figures(self) -> dict[str, Any]:
        return {
            "uplinks": len(self.sent),
            "readings_sent": sum(1 for s in self.sent if s.kind == messages.READINGS and s.attempt == 0),
            "hellos_sent": sum(1 for s in self.sent if s.kind == messages.HELLO),
            "hellos_acked": sum(1 for n in self.nodes if n.hello_acked_at is not None),
            "dropped": self.dropped,
            "received": dict(self.received),
            "errors": list(self.errors),
        }
