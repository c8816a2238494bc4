# The sensor node: samples on a schedule, batches samples into READINGS
# frames, keeps each frame until the gateway acknowledges it, and answers
# TIME, CONFIG and COMMAND. Same code on boards and on the unix port; the HAL
# is the only difference.
import asyncio
import gc
import json
import random
import time

from micropython import const

from firmware.counter import PersistentCounter
from firmware.ring import Ring
from firmware.sensors import SampleNumber
from protocols import Message, ProtocolError, StreamDecoder, encode, messages, node_hex, node_id_from_unique_id
from protocols import frame as fr
from protocols.window import WINDOW

VERSION = "0.1.0"
_RING = const(24)  # unacknowledged frames kept
_MAX_PENDING = const(60)  # samples waiting for a frame while the span rule holds frames back
_FRAME_SAMPLES = const(12)  # per READINGS frame: 12 x 15 bytes at worst (double float, 4-byte dt) fits 236
_POLL_MS = const(20)
_WATCHDOG_MS = const(8000)
_TIME_REQUEST_MS = const(21600000)  # ask the gateway for the time every 6 hours
_MAX_ERROR_KEYS = const(4)  # CONFIG report: at most this many rejected keys, so it fits a frame


class Node:
    def __init__(self, hal, interval=10, status_interval=60, batch=1):
        self.hal = hal
        self.node_id = node_id_from_unique_id(hal.unique_id())
        self.name = node_hex(self.node_id)
        self.counter = PersistentCounter(hal.storage, "counter")
        self.ring = Ring(_RING)
        self.decoder = StreamDecoder()
        self.rx = bytearray(64)
        saved = hal.storage.get("config.json")
        settings = json.loads(saved) if saved else {}
        self.interval = settings.get("interval", interval)
        self.status_interval = settings.get("status_interval", status_interval)
        self.batch = batch
        self.sources = hal.sources("sensor") + [SampleNumber(hal.storage)]
        self.channels = []
        for source in self.sources:
            for name, unit, scale in source.channels():
                self.channels.append({"name": name, "unit": unit, "scale": scale})
        self.pending = []  # flat [ch, value, dt, ...] not yet framed
        self.pending_since = None  # unix time (or None) of the first pending round
        self.offset_ms = None  # unix ms - uptime ms, once TIME arrived (integers: see firmware/uptime.py)
        self.rx_errors = 0
        self.hello_pending = None  # counter of the HELLO waiting for its ACK
        self.heap_peak = 0
        self.results = {}  # command id -> outcome, so a resent COMMAND is not run twice
        self.result_order = []  # MicroPython dicts keep no insertion order: eviction order kept here
        self.reset_cause = hal.reset_cause()
        self.wake = asyncio.Event()

    # -------------------------------------------------------------- sending

    def now(self):
        # Unix seconds (an integer), or None before the first TIME.
        return None if self.offset_ms is None else (self.hal.uptime_ms() + self.offset_ms) // 1000

    def send(self, mtype, fields, flags=fr.F_ACK_REQ):
        # Callers of optional frames check may_send() first; a frame that must go out
        # keeps the span rule by giving up the oldest unacknowledged frames (counted).
        while not self.may_send():
            self.ring.forget(self.ring.oldest())
            self.ring.dropped += 1
        counter = self.counter.take()
        wire = encode(Message(mtype, self.node_id, counter, fields, flags))
        if flags & fr.F_ACK_REQ:
            self.ring.add(counter, wire, time.ticks_ms())
        self.hal.uart.write(wire)
        return counter

    def may_send(self):
        # The span rule (SPEC.md 4.2): stay within WINDOW of the oldest unacknowledged frame.
        oldest = self.ring.oldest()
        return oldest is None or self.counter.peek() - oldest < WINDOW - 1

    def hello(self):
        self.hal.uart.write(b"\x00")  # end whatever garbage the gateway collected before we were here
        self.hello_pending = self.send(
            messages.HELLO,
            {
                "proto": [fr.VERSION_MAJOR, fr.VERSION_MINOR],
                "fw_version": VERSION,
                "hw_model": self.hal.hw_model(),
                "caps": messages.CAP_READINGS | messages.CAP_CONFIG | messages.CAP_COMMANDS | messages.CAP_TIME,
                "channels": self.channels,
                "interval": self.interval,
            },
        )

    def flush_readings(self):
        # At most _FRAME_SAMPLES per frame, so a frame stays under the 255-byte limit
        # whatever piled up while the span rule held frames back.
        while self.pending and self.may_send():
            chunk = self.pending[: 3 * _FRAME_SAMPLES]
            fields: dict = {"samples": chunk}
            if self.pending_since is not None:
                fields["base_time"] = self.pending_since
            try:
                self.send(messages.READINGS, fields)
            except ProtocolError:  # cannot happen within the limits above; never let it stop the node
                self.ring.dropped += 1
            del self.pending[: len(chunk)]
        if not self.pending:
            self.pending_since = None

    def sample(self):
        now = self.now()
        if not self.pending:
            self.pending_since = now
        dt = 0 if now is None or self.pending_since is None else now - self.pending_since
        channel = 0
        for source in self.sources:
            try:
                values = source.read()
            except OSError:  # a sensor that stopped answering: skip it this round
                values = (None,) * len(source.channels())
            for value in values:
                if value is not None:
                    self.pending += [channel, value, dt]
                channel += 1
        while len(self.pending) > 3 * _MAX_PENDING:
            del self.pending[0:3]
            self.ring.dropped += 1

    def status(self):
        free = gc.mem_free()
        self.send(
            messages.STATUS,
            {
                "uptime": self.hal.uptime_ms() // 1000,
                "free_heap": free,
                "reset_cause": self.reset_cause,
                "dropped": self.ring.dropped,
                "retransmits": self.ring.retransmits,
                "rx_errors": self.rx_errors,
                "heap_peak": self.heap_peak,
            },
            0,
        )

    # -------------------------------------------------------------- receiving

    def handle(self, message):
        if message.node_id != self.node_id or not message.flags & fr.F_DOWNLINK:
            return
        if message.flags & fr.F_ACK_REQ:
            self.send(messages.ACK, {"counters": [message.counter]}, 0)
        mtype = message.type
        fields = message.fields
        if mtype == messages.ACK:
            for counter in fields["counters"]:
                self.ring.forget(counter)
        elif mtype == messages.TIME and "unix" in fields:
            self.offset_ms = fields["unix"] * 1000 + fields.get("ms", 0) - self.hal.uptime_ms()
        elif mtype == messages.CONFIG:
            self.configure(fields)
        elif mtype == messages.COMMAND:
            self.command(fields)
        elif mtype == messages.REJECT:
            if fields["reason"] in (11, 12):  # stale, unknown_node: say who we are, keep the frames
                if self.hello_pending is None or not self.ring.holds(self.hello_pending):
                    self.hello()
            elif "counter" in fields and self.ring.forget(fields["counter"]):  # version, type, schema: resending cannot help
                self.ring.dropped += 1

    def configure(self, fields):
        errors: dict = {}
        values = fields.get("values", {})
        if fields["op"] == messages.CONFIG_SET:
            for key in values:
                value = values[key]
                if key == "interval" and isinstance(value, (int, float)) and 1 <= value <= 86400:
                    self.interval = value
                elif key == "status_interval" and isinstance(value, (int, float)) and 10 <= value <= 86400:
                    self.status_interval = value
                elif len(errors) < _MAX_ERROR_KEYS:
                    errors[key[:16]] = "rejected"
            self.hal.storage.put("config.json", json.dumps({"interval": self.interval, "status_interval": self.status_interval}).encode())
            self.wake.set()
        report = {"op": messages.CONFIG_REPORT, "values": {"interval": self.interval, "status_interval": self.status_interval}}
        if errors:
            report["errors"] = errors
        self.send(messages.CONFIG, report)

    def command(self, fields):
        ident = fields["id"]
        outcome = self.results.get(ident)
        if outcome is None:
            outcome = messages.OUTCOME_OK if fields["action"] == "identify" else messages.OUTCOME_UNKNOWN
            self.results[ident] = outcome
            self.result_order.append(ident)
            if len(self.result_order) > 8:
                del self.results[self.result_order.pop(0)]
        self.send(messages.COMMAND_RESULT, {"id": ident, "outcome": outcome})

    def receive(self):
        while True:  # until the UART is empty: a burst must not overflow its small buffer
            count = self.hal.uart.read_available(self.rx)
            if not count:
                return
            self.decoder.feed(bytes(self.rx[:count]))
            for event in self.decoder.drain():
                if isinstance(event, ProtocolError):
                    self.rx_errors += 1
                    continue
                try:
                    self.handle(event)
                except Exception:  # no frame from the line may stop the node
                    self.rx_errors += 1

    # -------------------------------------------------------------- tasks

    async def sampler(self):
        while True:
            self.sample()
            rounds = len(self.pending) // (3 * len(self.channels)) if self.channels else 1
            if rounds >= self.batch:
                self.flush_readings()
            gc.collect()
            used = gc.mem_alloc()
            if used > self.heap_peak:
                self.heap_peak = used
            self.wake.clear()
            try:
                await asyncio.wait_for_ms(self.wake.wait(), int(self.interval * 1000))
            except asyncio.TimeoutError:
                pass

    async def io(self, watchdog):
        last_status = last_time = self.hal.uptime_ms()
        while True:
            self.receive()
            now = time.ticks_ms()
            for wire in self.ring.due(now, self.jitter):
                self.hal.uart.write(wire)
            if self.pending and self.may_send():
                self.flush_readings()
            uptime = self.hal.uptime_ms()
            if uptime - last_status >= self.status_interval * 1000 and self.may_send():
                last_status = uptime
                self.status()
            if uptime - last_time >= _TIME_REQUEST_MS and self.may_send():
                last_time = uptime
                self.send(messages.TIME, {}, 0)  # ask again: clocks drift
            self.hal.tick()
            watchdog.feed()
            await asyncio.sleep_ms(_POLL_MS)

    def jitter(self, span):
        return random.getrandbits(16) % (span + 1)

    async def run(self):
        watchdog = self.hal.watchdog(_WATCHDOG_MS)
        self.hello()
        print("edgegw-node %s ready" % self.name)
        await asyncio.gather(self.sampler(), self.io(watchdog))
