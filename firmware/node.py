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
        self.unix_offset = None  # unix time - hal.clock(), once TIME arrived
        self.rx_errors = 0
        self.heap_peak = 0
        self.results = {}  # command id -> outcome, so a resent COMMAND is not run twice
        self.reset_cause = hal.reset_cause()
        self.wake = asyncio.Event()

    # -------------------------------------------------------------- sending

    def now(self):
        return None if self.unix_offset is None else self.hal.clock() + self.unix_offset

    def send(self, mtype, fields, flags=fr.F_ACK_REQ):
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
        self.send(
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
                fields["base_time"] = int(self.pending_since)
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
        dt = 0 if now is None or self.pending_since is None else int(now - self.pending_since)
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
                "uptime": int(self.hal.clock()),
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
            self.unix_offset = fields["unix"] + fields.get("ms", 0) / 1000 - self.hal.clock()
        elif mtype == messages.CONFIG:
            self.configure(fields)
        elif mtype == messages.COMMAND:
            self.command(fields)
        elif mtype == messages.REJECT and fields["reason"] in (11, 12):  # stale, unknown_node: say who we are
            self.hello()

    def configure(self, fields):
        errors = {}
        values = fields.get("values", {})
        if fields["op"] == messages.CONFIG_SET:
            for key in values:
                value = values[key]
                if key == "interval" and isinstance(value, (int, float)) and 1 <= value <= 86400:
                    self.interval = value
                elif key == "status_interval" and isinstance(value, (int, float)) and 10 <= value <= 86400:
                    self.status_interval = value
                else:
                    errors[key] = "unknown key or value out of range"
            self.hal.storage.put("config.json", json.dumps({"interval": self.interval, "status_interval": self.status_interval}).encode())
            self.wake.set()
        report = {"op": messages.CONFIG_REPORT, "values": {"interval": self.interval, "status_interval": self.status_interval}}
        if errors:
            report["errors"] = errors
        self.send(messages.CONFIG, report)

    def command(self, fields):
        ident = fields["id"]
        if ident not in self.results:
            action = fields["action"]
            if action == "identify":
                self.results[ident] = messages.OUTCOME_OK
            else:
                self.results[ident] = messages.OUTCOME_UNKNOWN
            while len(self.results) > 8:
                del self.results[next(iter(self.results))]
        self.send(messages.COMMAND_RESULT, {"id": ident, "outcome": self.results[ident]})

    def receive(self):
        count = self.hal.uart.read_available(self.rx)
        if not count:
            return
        self.decoder.feed(bytes(self.rx[:count]))
        while True:
            try:
                message = self.decoder.next_message()
            except ProtocolError:
                self.rx_errors += 1
                continue
            if message is None:
                return
            self.handle(message)

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
        last_status = self.hal.clock()
        while True:
            self.receive()
            now = time.ticks_ms()
            for wire in self.ring.due(now, self.jitter):
                self.hal.uart.write(wire)
            if self.pending and self.may_send():
                self.flush_readings()
            if self.hal.clock() - last_status >= self.status_interval:
                last_status = self.hal.clock()
                self.status()
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
