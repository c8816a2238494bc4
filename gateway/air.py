"""The downlink over the air: what the sessions owe a node heard through a LoRa bridge goes back as RADIO_TX,
in that node's receive windows, within the bridge's duty cycle (SPEC.md §5.11).

A `RadioLink` (gateway/serial_link.py) queues a radio node's ACKs and requests like any port; its transport
here takes them as frames and keeps them per node until the node opens its windows: class A, RX1 on the
uplink's channel RX_DELAY_MS after each of its uplinks ends, RX2 on the 10 % channel RX2_DELAY_MS after it
(protocols/lora.py). The bridge says when it heard the uplink (`at`, its uptime in ms), so the gateway asks it
to transmit at `at` + the window's delay + RX_AIM_MS on the bridge's own clock, or LEAD_MS ahead of the
bridge if that is later, as long as the node can still detect it in the window (its preamble detect_ms in
before the window's end, RX_AIM_MS of room for the clocks: protocols/lora.py); a
window the gateway can no longer reach (the frame was committed too late, the serial line was slow) is
missed, counted, and the frames wait for the next uplink. RX1's frame is
chosen DECIDE_S after the uplink was heard, RX2's DECIDE_RX2_S after it, when the ACK of a frame committed
meanwhile is there to choose (a radio node's frames are committed within RADIO_COMMIT_S: gateway/sessions.py):
one per window (_choose says which); a TIME is made when it is chosen, so that it says the time when it goes
on air. RX1 carries a frame only for a node owed two when its time comes (and only if that frame is off the air
when its RX2 opens: _rx2_opens), or one that RX2's duty cycle leaves no room for: RX2's sub-band has ten
times the budget; or one whose RX2 answer would be on air with an earlier one of another bridge at its SF (every
bridge answers RX2 on one channel: _rx2_contested, judged again at RX2's choice, where the later answer is not
sent at all).

The bridge's duty cycle is mirrored here (protocols/dutycycle.py on the bridge's clock, the same code the
bridge keeps it with): a frame that would break it is not sent (counted) and waits. The bridge checks again
and drops what it cannot send; its STATUS `air` says how much of the hour's budget is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from protocols import cobs, messages
from protocols.airtime import airtime_us
from protocols.dutycycle import DutyCycle, band
from protocols.frame import AUTH_TAG_LEN, HEADER_LEN
from protocols.lora import DOWNLINK_FREQ, RX2_DELAY_MS, RX_DELAY_MS, RX_WINDOW_MS, detect_ms

log = logging.getLogger(__name__)

RX_AIM_MS = 100  # into the node's window: room for the jitter of two clocks and a serial line either way
LEAD_MS = 40  # a RADIO_TX reaches the bridge at least this long before its time, or the window is missed
RX1_CLEAR_MS = 50  # RX1's frame has left the air this long before the node opens RX2, or it opens none
DRIFT_PPM = 100  # two crystals drift apart by far less (20-50 ppm): the bridge's clock estimate may follow this fast
REBOOTED_MS = 60000  # a bridge clock that went back more than this rebooted
MAX_AT = 1 << 53  # a bridge's uptime in ms beyond this is no clock (and would overflow a RADIO_TX's at)
KEPT = 8  # frames per node waiting for a window; a ninth pushes out the oldest (counted)
DECIDE_S = 0.6  # after an uplink is heard, RX1's frame is chosen this much later (RX1 opens 1 s after the uplink)
DECIDE_RX2_S = 1.5  # and RX2's this much later: the ACK of a frame committed meanwhile (RADIO_COMMIT_S) is there
ON_AIR_KEPT_MS = 60000  # the bridge's own transmissions kept this long (a window is at most a few seconds ahead)
KEPT_S = 900.0  # a frame that found no window in this long is dropped (counted): what it answered is old
TIME_BYTES = 34  # a TIME frame on air (header, unix and ms, tag): made only when its window comes
_TYPE = 1  # header offsets (protocols/frame.py)
_NODE = slice(3, 11)
_COUNTER = slice(11, 15)  # big-endian


def _body(raw: bytes) -> bytes:
    """A frame's payload: between its header and its trailer (a tag, as every radio frame has)."""
    return bytes(raw[HEADER_LEN:-AUTH_TAG_LEN])


@dataclass
class Window:
    at: int  # the bridge's uptime (ms) when the uplink ended
    freq: int  # the uplink's channel: the first window's
    sf: int
    bw: int
    ready: bool = False  # the time to choose RX1's frame came (DECIDE_S)
    used: bool = False
    rx2_ready: bool = False  # the time to choose RX2's came (DECIDE_RX2_S)
    rx2_used: bool = False
    rx2_ceded: bool = False  # RX2 left to another bridge's answer at this SF (_rx2_contested): nothing goes in it
    idle: bool = False  # nothing owed when RX1's choice came, in time: a frame owed later that misses it is no window missed
    rx2_idle: bool = False  # the same for RX2's
    rx1_end: int = 0  # the bridge's time RX1's frame leaves the air (0: none went): the node opens RX2 only after it
    rx2_at: int = 0  # the bridge's time for the frame sent for RX2, and its length (0: none went); another bridge's
    rx2_bytes: int = 0  # RX2 answer at this SF must not be on air with it

    def due(self) -> bool:
        return (self.ready and not self.used) or (self.rx2_ready and not self.rx2_used)


@dataclass
class BridgeClock:
    """A bridge's uptime, estimated from the `at` of its RADIO_RX: a report can only be late (the serial line,
    the bridge's loop), never early, so the estimate that puts the bridge furthest ahead is the best one. It
    may fall by DRIFT_PPM of the time since (two crystals drift apart); a bridge whose clock went back by more
    than a minute rebooted, and starts again, duty cycle included (its own started again too)."""

    offset_ms: float | None = None
    updated: float = 0.0
    duty: DutyCycle = field(default_factory=lambda: DutyCycle(time_off=False))  # a bridge's: the hourly rule alone

    def heard(self, at: int, now: float) -> bool:
        """Moves the estimate on; True when the clock went back (the bridge rebooted) and the estimate started again."""
        estimate = at - now * 1000
        restarted = self.offset_ms is not None and estimate < self.offset_ms - REBOOTED_MS
        if restarted:
            self.offset_ms = None
            self.duty = DutyCycle(time_off=False)
        if self.offset_ms is None:
            self.offset_ms = estimate
        else:
            self.offset_ms = max(estimate, self.offset_ms - (now - self.updated) * 1000 * DRIFT_PPM / 1e6)
        self.updated = now
        return restarted

    def now_ms(self, now: float) -> int:
        return int(now * 1000 + (self.offset_ms or 0))

    def late_s(self, at: int, now: float) -> float:
        """How long ago, by this estimate, the moment `at` of the bridge's clock was: what a report came late by."""
        return max(0.0, (self.now_ms(now) - at) / 1000)


class AirTransport:
    """The transport of one bridge's RadioLink: the bridge's serial link carries its frames as RADIO_TX."""

    def __init__(
        self,
        pull: Callable[[int], bytes],
        bridge_id: bytes,
        send: Callable[[bytes, dict[str, Any]], bool],
        clock: Callable[[], float] = time.monotonic,
        ask_time: Callable[[bytes], object] = lambda node_id: None,
        is_link: Callable[[bytes], bool] = lambda node_id: True,
        hand_over: Callable[[bytes, list[tuple[bytes, float]], bool], bool] = lambda node_id, frames, time_owed: False,
        rivals: Callable[[], Iterable[AirTransport]] = lambda: (),
    ) -> None:
        self._is_link = is_link  # whether this bridge is the node's link (it heard its latest frame best)
        # what this bridge owes a node whose link another bridge is goes to that one's transport (take_over): the
        # ACK of a frame both heard is queued where the first copy came in, often not the bridge that heard it best
        self._hand_over = hand_over
        # every bridge's transport: all answer RX2 on one channel, and two of them at one SF that heard two uplinks
        # ending together (on two channels) would answer both at once, each answer drowning the other at its node
        self._rivals = rivals
        self._pull = pull  # the RadioLink's downlink queue (Link.pull)
        self._ask_time = ask_time  # queue a TIME for a node on the RadioLink (read from the clock when it is pulled)
        self.time_owed: set[bytes] = set()
        self.bridge_id = bridge_id
        self._send = send  # RADIO_TX fields -> queued on the bridge's serial link
        self._clock = clock
        self.bridge_clock = BridgeClock()
        self.windows: dict[bytes, Window] = {}
        self.waiting: dict[bytes, list[tuple[bytes, float]]] = {}
        self.acked_last: dict[bytes, bool] = {}
        # nodes whose request was ceded in RX2 (_rx2_contested at RX2's choice): at the next uplink it goes in RX1, or
        # a node owed a new ACK at each would see it ceded each time
        self.ceded: set[bytes] = set()
        self.on_air: list[tuple[int, int]] = []  # the bridge's own transmissions asked for, (start, end) on its clock
        self._fresh_time: set[bytes] = set()  # nodes whose TIME is being made for a window now
        self.counts: Counter[str] = Counter()

    # ------------------------------------------------------------ what the sessions tell it

    def late(self, at: int, freq: int, sf: int, bw: int) -> float | None:
        """How long ago an uplink the bridge heard ended at `at` (bridge ms), by the bridge's clock as estimated
        (s), which it moves on; None for a report no window can be built on (a channel outside EU868, a bandwidth
        no chip has, a clock past 2^53 ms): counted, never an exception in the sessions."""
        try:
            band(freq)
            airtime_us(1, sf, bw)
        except (ValueError, KeyError):
            self.counts["bad_report"] += 1
            return None
        if not 0 <= at < MAX_AT:
            self.counts["bad_report"] += 1
            return None
        now = self._clock()
        if self.bridge_clock.heard(at, now):
            self.on_air.clear()  # times of the clock before
        return self.bridge_clock.late_s(at, now)

    def open(self, node_id: bytes, at: int, freq: int, sf: int, bw: int) -> None:
        """The node's receive windows after its uplink that ended at `at` (a report `late` took): what it is owed
        goes in them."""
        window = self.windows[node_id] = Window(at, freq, sf, bw)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a tool, a test): chosen now
            self._decide(window)
            self._decide_rx2(window)
        else:
            loop.call_later(DECIDE_S, self._decide, window)
            loop.call_later(DECIDE_RX2_S, self._decide_rx2, window)

    def take_over(self, node_id: bytes, frames: list[tuple[bytes, float]], time_owed: bool) -> None:
        """What another bridge owed a node this bridge is now the link of: sent in its windows, from the next one
        not yet chosen (the same uplink's, if this bridge's report of it came later)."""
        for raw, at in frames:
            self._keep(node_id, raw, at)
        self.waiting.get(node_id, []).sort(key=lambda entry: entry[1])
        if time_owed:
            self.time_owed.add(node_id)
        self.flush()

    def give_up(self, node_id: bytes) -> bool:
        """The node's link is another bridge now: what this one owes it goes to that one's windows (False: the
        node has no such bridge, and it stays). At once when the link moved, not at this bridge's next window for
        the node: an uplink this bridge did not hear opens none, and a COMMAND waited here for the next one it did
        (street-lights-radio: a lamp's command 131 s late)."""
        self._take()  # what the link's queue still holds for it (a COMMAND written while no window was due)
        queue = self.waiting.get(node_id, [])
        time_owed = node_id in self.time_owed
        if not (queue or time_owed) or not self._hand_over(node_id, list(queue), time_owed):
            return False
        self.counts["handed_over"] += len(queue) + time_owed
        self.waiting.pop(node_id, None)
        self.time_owed.discard(node_id)
        self.ceded.discard(node_id)
        return True

    def acked(self, node_id: bytes, counters: list[int]) -> None:
        """The node acknowledged these downlink counters: a copy of those requests still waiting is not sent."""
        queue = self.waiting.get(node_id)
        if queue:
            done = {counter.to_bytes(4, "big") for counter in counters if type(counter) is int and 0 <= counter < 1 << 32}
            queue[:] = [entry for entry in queue if entry[0][_TYPE] == messages.ACK or bytes(entry[0][_COUNTER]) not in done]

    def _decide(self, window: Window) -> None:
        window.ready = True
        self.flush()
        # Nothing owed: the window stays open to a frame committed while it can be reached
        window.idle = not window.used and self._reachable(window, RX_DELAY_MS)

    def _decide_rx2(self, window: Window) -> None:
        window.rx2_ready = True
        self.flush()
        window.rx2_idle = not window.rx2_used and self._reachable(window, RX2_DELAY_MS)

    def rebooted(self) -> None:
        """The bridge said HELLO: it started again, its clock and its duty cycle with it."""
        self.bridge_clock = BridgeClock()
        self.windows.clear()
        self.on_air.clear()
        self.ceded.clear()

    # ------------------------------------------------------------ the transport's face (Link)

    def output_ready(self) -> None:
        # What is owed stays in the link's queue (where a node's ACKs merge into one) until a window is there
        if any(window.due() for window in self.windows.values()):
            self.flush()

    def _take(self) -> None:
        now = self._clock()
        for chunk in self._pull(1 << 16).split(b"\x00"):
            if not chunk:
                continue
            raw = cobs.decode(chunk)
            node_id = bytes(raw[_NODE])
            if raw[_TYPE] == messages.TIME and node_id not in self._fresh_time:
                # A TIME says the time when it was made, and a window may be minutes away: it is owed, and
                # made again when its window comes (its counter is spent: counters only need to rise)
                self.time_owed.add(node_id)
                continue
            self._keep(node_id, raw, now)

    def _keep(self, node_id: bytes, raw: bytes, at: float) -> None:
        queue = self.waiting.setdefault(node_id, [])
        if raw[_TYPE] == messages.ACK and any(entry[0][_TYPE] == messages.ACK and _body(entry[0]) == _body(raw) for entry in queue):
            return  # the same counters acknowledged already (a copy another bridge heard too, handed over)
        if raw[_TYPE] != messages.ACK:
            for index, (old, since) in enumerate(queue):
                if old[_TYPE] == raw[_TYPE] and old[_COUNTER] == raw[_COUNTER]:
                    # A request resent (its counter kept) while its first copy still waits for a window: one copy,
                    # or each window would carry another and the node answer each (a CONFIG report is 86 bytes)
                    queue[index] = (raw, since)
                    return
        if len(queue) >= KEPT:  # the oldest ACK is pushed out (the node resends what it named), else the oldest
            acks = [index for index, entry in enumerate(queue) if entry[0][_TYPE] == messages.ACK]
            queue.pop(acks[0] if acks else 0)
            self.counts["dropped"] += 1
        queue.append((raw, at))

    def close(self) -> None:
        self.waiting.clear()
        self.ceded.clear()

    abort = close

    # ------------------------------------------------------------ scheduling

    def flush(self) -> None:
        try:
            self._take()
            self._flush()
        except Exception:  # a bug here must not reach the sessions (a commit's ACKs) or the bridge's link
            log.exception("radio downlink through %s failed", self.bridge_id.hex())
            for window in self.windows.values():
                window.used = window.used or window.ready
                window.rx2_used = window.rx2_used or window.rx2_ready

    def _flush(self) -> None:
        now = self._clock()
        for node_id in list(self.waiting):
            queue = [entry for entry in self.waiting[node_id] if now - entry[1] < KEPT_S]
            self.counts["stale"] += len(self.waiting[node_id]) - len(queue)
            self.waiting[node_id] = queue
            window = self.windows.get(node_id)
            if not queue:
                del self.waiting[node_id]
            elif window is not None and window.due():
                self._answer(node_id, window, queue, now)
        for node_id in list(self.time_owed):
            window = self.windows.get(node_id)
            if node_id not in self.waiting and window is not None and window.due():
                self._answer(node_id, window, [], now)

    def _answer(self, node_id: bytes, window: Window, queue: list[tuple[bytes, float]], now: float) -> None:
        """What is due of the node's two windows after one uplink: RX1's frame once its time to choose came, RX2's
        once its came. RX1 carries a frame only for a node owed two (whose RX2 opens after RX1's frame), or one RX2
        has no room for, or one whose RX2 answer another bridge's would meet: one frame goes in RX2, whose sub-band
        allows ten times the airtime of RX1's (10 % against the uplinks' 1 %), and is chosen later (an ACK committed
        by then goes in it)."""
        rx1, rx2 = window.ready and not window.used, window.rx2_ready and not window.rx2_used
        window.used, window.rx2_used = window.used or rx1, window.rx2_used or rx2
        if not self._is_link(node_id):  # another bridge heard it better: that one answers (SPEC.md §5.11)
            if not self.give_up(node_id):
                self.counts["elsewhere"] += len(queue) + (node_id in self.time_owed)
                queue.clear()
                self.time_owed.discard(node_id)
                self.ceded.discard(node_id)
            return
        bridge_now = self.bridge_clock.now_ms(now)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: node %s window %s%s at %d (bridge now %d): owed %s%s",
                self.bridge_id.hex(),
                node_id.hex(),
                "RX1" if rx1 else "",
                "RX2" if rx2 else "",
                window.at,
                bridge_now,
                [messages.NAMES.get(raw[_TYPE], raw[_TYPE]) for raw, _at in queue],
                " + TIME" if node_id in self.time_owed else "",
            )
        if rx1:
            at = self._reach(window, RX_DELAY_MS, bridge_now, not window.idle)
            owed = len(queue) + (node_id in self.time_owed)
            if at is not None and owed:
                if not (node_id in self.time_owed or any(raw[_TYPE] != messages.ACK for raw, _at in queue)):
                    self.ceded.discard(node_id)  # the request ceded went since (acknowledged, stale, another bridge's)
                fit = owed >= 2 and self._rx2_opens(window, self._end(window, at, self._length(node_id, queue, rx1=True)))
                # Otherwise one frame goes, the one RX2 would carry (_choose), in RX2 if it has room for it; in RX1 too
                # (were it always the ACK there, a node whose windows each brought one would never get its COMMAND)
                single = self._length(node_id, queue, rx1=False)
                rx2_room = self._fits(window, DOWNLINK_FREQ, at + RX2_DELAY_MS - RX_DELAY_MS, single)
                if owed >= 2 and not fit and rx2_room:  # as for one owed: one window; the rest waits for the next uplink
                    self.counts["rx1_too_long"] += 1
                rx2_at = self._aim(window, RX2_DELAY_MS, bridge_now)
                contested = (
                    rx2_room
                    and self._fits(window, window.freq, at, single)
                    and (node_id in self.ceded or self._rx2_contested(node_id, window, rx2_at, single))
                )
                # Contested, a node owed two gets one too, RX2's choice, in RX1: with the ACK there and the request
                # ceded in RX2 at every uplink so contested, it would never get the request. The rival keeps RX2 even
                # if RX1's frame cannot go, or an ACK committed before RX2's choice would drown the rival's answer
                two = fit and not contested
                window.rx2_ceded = contested
                sent = (two or not rx2_room or contested) and self._send_one(node_id, window, queue, at, window.freq, rx1=two)
                if sent:
                    window.rx1_end = self._end(window, at, sent)
                if sent and contested:
                    self.counts["rx2_contested"] += 1
        if rx2:
            at = self._reach(window, RX2_DELAY_MS, bridge_now, not window.rx2_idle)
            owes = bool(queue) or node_id in self.time_owed
            if at is not None and owes and self._rx2_opens(window, window.rx1_end):
                # Judged again: at RX1's choice this window or the rival may have owed nothing, or this one two
                single = self._length(node_id, queue, rx1=False)
                window.rx2_ceded = window.rx2_ceded or self._rx2_contested(node_id, window, at, single)
                if window.rx2_ceded:
                    self.counts["rx2_ceded"] += 1  # what it owes waits for the node's next uplink
                    index = self._choose(node_id, queue)
                    if index < 0 or queue[index][0][_TYPE] != messages.ACK:
                        self.ceded.add(node_id)  # a request: the next uplink's RX1 carries it
                else:
                    window.rx2_bytes = self._send_one(node_id, window, queue, at, DOWNLINK_FREQ)
                    window.rx2_at = at

    def _length(self, node_id: bytes, queue: list[tuple[bytes, float]], rx1: bool) -> int:
        """The bytes on air of the frame RX1 (rx1) or RX2 would carry (_choose; of a TIME, at most)."""
        index = self._choose(node_id, queue, rx1)
        return TIME_BYTES if index < 0 else len(queue[index][0])

    @staticmethod
    def _end(window: Window, at: int, length: int) -> int:
        """When a frame of `length` bytes sent at `at` leaves the air, on the bridge's clock."""
        return at + (airtime_us(length, window.sf, window.bw) + 999) // 1000

    @staticmethod
    def _rx2_opens(window: Window, rx1_end: int) -> bool:
        """Whether the node opens RX2 after an RX1 frame that leaves the air at `rx1_end` (0: none): it listens in RX1
        until the frame has come, and opens RX2 only if that was before RX2's time (firmware/radio_port.py). At SF12 a
        27-byte ACK is 1.65 s on air and RX2 comes 1 s after RX1; the bridge, half duplex, also dropped RX2's frame
        late: in a full tree-health every RX1 ACK at SF12 for a node owed two was followed by one, 31 in all."""
        return rx1_end <= window.at + RX2_DELAY_MS - RX1_CLEAR_MS

    def _longest(self, node_id: bytes) -> int:
        """The longest frame this bridge owes the node, in bytes on air (0: none)."""
        return max([len(raw) for raw, _at in self.waiting.get(node_id, [])] + [TIME_BYTES if node_id in self.time_owed else 0])

    def rx2_slot(self, node_id: bytes, window: Window) -> tuple[float, float] | None:
        """When the window's RX2 frame is on air, its start and end on the gateway's clock: the frame sent for it, or,
        while RX2's is still to be chosen, the longest this bridge owes the node at the window's aim. None: none
        went or will (or the bridge's clock is not known)."""
        if window.rx2_bytes:
            return self._on_air(window, window.rx2_at, window.rx2_bytes)
        # Ceded to another bridge, or after RX1's frame the node opens no RX2
        none = window.rx2_used or window.rx2_ceded or not self._rx2_opens(window, window.rx1_end)
        return self._on_air(window, window.at + RX2_DELAY_MS + RX_AIM_MS, 0 if none else self._longest(node_id))

    def _on_air(self, window: Window, at: int, length: int) -> tuple[float, float] | None:
        """When a frame of `length` bytes sent at `at` of the bridge's clock is on air, start and end on the
        gateway's clock; None for no frame (0 bytes) or a bridge whose clock is not known."""
        offset = self.bridge_clock.offset_ms
        if offset is None or not length:
            return None
        start = (at - offset) / 1000
        return start, start + airtime_us(length, window.sf, window.bw) / 1e6

    def _rx2_contested(self, node_id: bytes, window: Window, at: int, length: int) -> bool:
        """Whether this window's RX2 frame of `length` bytes sent at `at` (the bridge's clock) would be on air with an
        RX2 frame of another bridge at the same SF and bandwidth (rx2_slot; for a node that bridge is the link of):
        all bridges answer RX2 on one channel, and two at one SF on two channels hear two uplinks ending together. A
        frame already sent is met whichever began first (the choices need not come in the order of the windows: a
        report held up, a stalled loop); of one still to be chosen, the later gives RX2 up (of two at the same time,
        the lower bridge id keeps it). tree-health with two SF12 bridges on two channels: 22 of 204 RX2 downlinks at
        SF12 met another bridge's."""
        mine = self._on_air(window, at, length)
        if mine is None:
            return False
        start, end = mine
        for rival in self._rivals():
            if rival is self:
                continue
            for other_id, other in rival.windows.items():
                if other_id == node_id or other.sf != window.sf or other.bw != window.bw or not rival._is_link(other_id):
                    continue
                slot = rival.rx2_slot(other_id, other)
                if slot is None or not (slot[0] < end and start < slot[1]):
                    continue
                if other.rx2_bytes or (slot[0], rival.bridge_id) < (start, self.bridge_id):
                    return True
        return False

    def _fits(self, window: Window, freq: int, at: int, length: int) -> bool:
        """Whether the bridge's duty cycle leaves room at `at` on `freq` for a frame of `length` bytes, and the bridge
        is not sending another then."""
        end = self._end(window, at, length)
        duty = self.bridge_clock.duty
        return not duty.wait_ms(freq, at) and duty.budget_ms(freq, at) >= end - at and not self._busy(at, end)

    def _no_room(self, window: Window, at: int, length: int) -> None:
        """Counts a frame _fits refused: the bridge sending another then (busy), or its duty cycle."""
        self.counts["busy" if self._busy(at, self._end(window, at, length)) else "no_budget"] += 1

    def _busy(self, start: int, end: int) -> bool:
        """Whether the bridge, half duplex, is asked to send another frame between start and end (its clock): one
        node's RX2 and another's RX1 can come at the same moment, and the bridge would drop the later as late."""
        return any(begun < end and start < ended for begun, ended in self.on_air)

    @staticmethod
    def _aim(window: Window, delay: int, bridge_now: int) -> int:
        """The bridge's time to transmit in the window `delay` ms after the uplink: RX_AIM_MS into it, or LEAD_MS
        ahead of the bridge's clock if that is later."""
        return max(window.at + delay + RX_AIM_MS, bridge_now + LEAD_MS)

    def _reachable(self, window: Window, delay: int) -> bool:
        """Whether the window `delay` ms after the uplink can still be reached now."""
        return self._reach(window, delay, self.bridge_clock.now_ms(self._clock()), count=False) is not None

    def _reach(self, window: Window, delay: int, bridge_now: int, count: bool = True) -> int | None:
        """The bridge's time to transmit in the window `delay` ms after the uplink, or None: too late for it (counted
        as missed if something was owed when its choice came)."""
        at = self._aim(window, delay, bridge_now)
        # The node must detect its preamble before the window closes (detect_ms: at SF12 197 ms), with RX_AIM_MS
        # of room for the two clocks either way
        if at > window.at + delay + RX_WINDOW_MS - RX_AIM_MS - detect_ms(window.sf, window.bw):
            self.counts["missed"] += count
            return None
        return at

    def _send_one(self, node_id: bytes, window: Window, queue: list[tuple[bytes, float]], at: int, freq: int, rx1: bool = False) -> int:
        """The frame for this window sent to the bridge: its length in bytes (0: none went)."""
        index = self._choose(node_id, queue, rx1)
        made = index < 0
        if made:  # the TIME owed: made now, about half a second before it is on air (SPEC.md §5.11)
            if not self._fits(window, freq, at, TIME_BYTES):  # not made (it would wait, saying a time long past)
                self._no_room(window, at, TIME_BYTES)
                return 0
            self._fresh_time.add(node_id)
            self._ask_time(node_id)
            self._take()
            self._fresh_time.discard(node_id)
            self.time_owed.discard(node_id)
            queue = self.waiting.get(node_id, [])
            index = len(queue) - 1
            if index < 0 or queue[index][0][_TYPE] != messages.TIME:
                self.counts["dropped"] += 1
                return 0
        raw = queue[index][0]
        if not self._fits(window, freq, at, len(raw)):
            self._no_room(window, at, len(raw))
            log.debug("%s: no budget on %d at %d for %d bytes", self.bridge_id.hex(), freq, at, len(raw))
            return self._unmade(node_id, queue, index, made)
        airtime = airtime_us(len(raw), window.sf, window.bw)
        fields = {"frame": bytes(raw), "freq": freq, "sf": window.sf, "bw": window.bw, "at": at}
        if not self._send(self.bridge_id, fields):
            self.counts["dropped"] += 1  # the bridge's serial link is gone or backed up: nothing goes on air
            return self._unmade(node_id, queue, index, made)
        self.bridge_clock.duty.spend(freq, airtime, at)  # what the bridge will spend: booked only for a frame it was sent
        self.on_air = [span for span in self.on_air if span[1] > at - ON_AIR_KEPT_MS] + [(at, self._end(window, at, len(raw)))]
        if raw[_TYPE] != messages.ACK:
            self.ceded.discard(node_id)
        del queue[index]
        self.acked_last[node_id] = raw[_TYPE] == messages.ACK
        self.counts["sent"] += 1
        return len(raw)

    def _unmade(self, node_id: bytes, queue: list[tuple[bytes, float]], index: int, made: bool) -> int:
        """A frame that could not go: a TIME made for this window is thrown away and owed again (made anew for the
        next window: kept, it would say a time long past when it went on air)."""
        if made:
            del queue[index]
            self.time_owed.add(node_id)
        return 0

    def _choose(self, node_id: bytes, queue: list[tuple[bytes, float]], rx1: bool = False) -> int:
        """The index in queue of the frame for this window; -1: the TIME owed. In RX1, with a request to follow in RX2,
        an ACK: RX1 is on the uplinks' channel, where another node's uplink can drown a downlink at the node, RX2 on
        a channel only downlinks use; a lost ACK costs a retransmission (windows again soon), a lost request a whole
        uplink interval. Requests: a TIME owed, then COMMANDs (someone waits for them), then the rest (the gateway's
        own link advice among them), each oldest first."""
        acks = [index for index, entry in enumerate(queue) if entry[0][_TYPE] == messages.ACK]
        others = [index for index, entry in enumerate(queue) if entry[0][_TYPE] != messages.ACK]
        others.sort(key=lambda index: queue[index][0][_TYPE] != messages.COMMAND)
        request = bool(others) or node_id in self.time_owed
        if acks and (rx1 or not (request and self.acked_last.get(node_id))):
            # The oldest: each carries the counters due when it was made (a node's ACKs merge in the link's queue until
            # taken), so a newer one does not say what an older one does; newest first starved the HELLO's ACK of a node
            # whose every window brought a newer one, and it said HELLO for five minutes
            return acks[0]
        if node_id in self.time_owed:
            return -1  # before the other requests: a node without the time cannot date its readings
        return others[0]
