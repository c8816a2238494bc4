# The sensor node: samples on a schedule, batches samples into READINGS
# frames, keeps each frame until the gateway acknowledges it, and answers
# TIME, CONFIG and COMMAND. Same code on boards and on the unix port; the HAL
# is the only difference.
import gc
import json
import random
import time

from micropython import const

from firmware import storage
from firmware.ring import Ring
from firmware.sensors import SampleNumber
from firmware.storage import PersistentCounter
from protocols import frame as fr
from protocols import messages
from protocols.errors import ProtocolError
from protocols.frame import WINDOW, node_hex, node_id_from_unique_id
from protocols.messages import Message, encode
from protocols.stream import StreamDecoder

VERSION = "0.1.0"
# The retransmission ring is sized from the heap left after boot: a full-size
# frame costs about _FRAME_COST in the ring, and _RESERVE stays free for
# building and decoding frames. A 64 KB unix-port heap gets a handful of
# frames, a Pico or an ESP32 the maximum.
_RING_MIN = const(4)
_RING_MAX = const(32)
_FRAME_COST = const(300)  # a 258-byte slot and its bookkeeping
_RESERVE = const(6144)
_MAX_PENDING = const(36)  # samples waiting for a frame while the span rule holds frames back
_FRAME_SAMPLES = const(12)  # per READINGS frame: 12 x 15 bytes at worst (double float, 4-byte dt) fits 236
_POLL_MS = const(20)
_LAST_COUNTER = const(0xFFFFFFFF)  # spent on a LOG saying the counter is exhausted (see send)
_TIME_REQUEST_MS = const(21600000)  # ask the gateway for the time every 6 hours
_MAX_ERROR_KEYS = const(4)  # CONFIG report: at most this many rejected keys, so it fits a frame


class Node:
    def __init__(self, hal):
        self.hal = hal
        self.node_id = node_id_from_unique_id(hal.unique_id)
        self.counter = PersistentCounter(hal.storage, "counter")
        self.decoder = StreamDecoder()
        self.rx = bytearray(64)
        self.interval = hal.interval
        self.status_interval = hal.status_interval
        saved = hal.storage.settings("config.json")  # what a gateway set over CONFIG, kept across reboots
        for key in saved:
            if not self.setting(key, saved[key]):
                storage.report("config.json", key)
        self.sources = hal.sources(hal.role) + [SampleNumber(hal.storage)]
        self.pending = []  # flat [ch, value, dt, ...] not yet framed
        self.pending_since = None  # unix time (or None) of the first pending round
        self.offset_ms = None  # unix ms - uptime ms, once TIME arrived (integers: see firmware/uptime.py)
        self.rx_errors = 0
        self.hello_pending = None  # counter of the HELLO waiting for its ACK
        self.heap_peak = 0
        self.results = []  # [id, outcome, ...] of the last 8 commands, oldest first: a resent COMMAND is not run twice
        self.next_sample = 0  # uptime ms of the next sampling round
        self.last_status = 0  # uptime ms of the last STATUS
        self.last_time = 0  # uptime ms of the last TIME request
        gc.collect()
        self.ring = Ring(max(_RING_MIN, min(_RING_MAX, (gc.mem_free() - _RESERVE) // _FRAME_COST)))

    # -------------------------------------------------------------- sending

    def now(self):
        # Unix seconds (an integer), or None before the first TIME.
        return None if self.offset_ms is None else (self.hal.uptime_ms() + self.offset_ms) // 1000

    def send(self, mtype, fields, flags=fr.F_ACK_REQ):
        # Callers of optional frames check may_send() first; a frame that must go out
        # keeps the span rule by giving up the oldest unacknowledged frames (counted).
        if self.counter.peek() > _LAST_COUNTER:
            return None  # spent: see below
        while not self.may_send():
            self.ring.drop_oldest()
        counter = self.counter.take()
        if counter == _LAST_COUNTER:
            # SPEC.md 4.1: a node whose counter reaches 0xFFFFFFFF gets a new id or key
            # before it sends again. The last counter carries a LOG that says so (the
            # gateway logs it as an error) in place of the frame asked for; nothing new
            # follows. The loop goes on: frames already sent are still retransmitted,
            # the watchdog is fed, and the console says why the node is silent (step).
            mtype, fields, flags = messages.LOG, {"severity": 2, "text": "counter spent: needs new id or key"}, fr.F_ACK_REQ
        wire = encode(Message(mtype, self.node_id, counter, fields, flags))
        if flags & fr.F_ACK_REQ:
            self.ring.add(counter, wire, time.ticks_ms())
        self.hal.uart.write(wire)
        return counter

    def may_send(self):
        # The span rule (SPEC.md 4.2): stay within WINDOW of the oldest unacknowledged frame.
        oldest = self.ring.oldest()
        return self.counter.peek() <= _LAST_COUNTER and (oldest is None or self.counter.peek() - oldest < WINDOW - 1)

    def hello(self):
        self.hal.uart.write(b"\x00")  # end whatever garbage the gateway collected before we were here
        channels = []  # built when needed: HELLO is rare, the heap is small
        for source in self.sources:
            for name, unit, scale in source.CHANNELS:
                channels.append({"name": name, "unit": unit, "scale": scale})
        self.hello_pending = self.send(
            messages.HELLO,
            {
                "proto": [fr.VERSION_MAJOR, fr.VERSION_MINOR],
                "fw_version": VERSION,
                "hw_model": self.hal.hw_model,
                "caps": messages.CAP_READINGS | messages.CAP_CONFIG | messages.CAP_COMMANDS | messages.CAP_TIME,
                "channels": channels,
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
                values = (None,) * len(source.CHANNELS)
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
                "reset_cause": self.hal.reset_cause,
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
            elif fields["reason"] == 10:
                pass  # auth: this node sends no AUTH frames, so the line flipped that flag bit; resending helps
            elif "counter" in fields and self.ring.forget(fields["counter"]):  # version, type, cbor, schema: resending cannot help
                self.ring.dropped += 1

    def setting(self, key, value):
        # A setting a gateway may change (SPEC.md 5.8), if value is valid for it.
        low = 1 if key == "interval" else 10 if key == "status_interval" else 0
        if not low or not isinstance(value, (int, float)) or not low <= value <= 86400:
            return False
        setattr(self, key, value)
        return True

    def configure(self, fields):
        errors: dict = {}
        values = fields.get("values", {})
        if fields["op"] == messages.CONFIG_SET:
            for key in values:
                if not self.setting(key, values[key]) and len(errors) < _MAX_ERROR_KEYS:
                    errors[key[:16]] = "rejected"
            self.hal.storage.put("config.json", json.dumps({"interval": self.interval, "status_interval": self.status_interval}).encode())
            self.next_sample = self.hal.uptime_ms()  # a new interval starts now
        report = {"op": messages.CONFIG_REPORT, "values": {"interval": self.interval, "status_interval": self.status_interval}}
        if errors:
            report["errors"] = errors
        self.send(messages.CONFIG, report)

    def command(self, fields):
        ident = fields["id"]
        done = self.results[::2]
        if ident in done:
            outcome = self.results[2 * done.index(ident) + 1]
        else:
            outcome = messages.OUTCOME_OK if fields["action"] == "identify" else messages.OUTCOME_UNKNOWN
            self.results += [ident, outcome]
            if len(self.results) > 16:
                del self.results[0:2]
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
                except Exception as error:  # no frame from the line may stop the node
                    self.rx_errors += 1
                    print("edgegw-node: frame %d not handled: %r" % (event.counter, error))

    # -------------------------------------------------------------- the loop

    def sample_round(self, uptime):
        # Scheduled first: a round that fails for lack of memory is not repeated at once.
        step = int(self.interval * 1000)
        self.next_sample = self.next_sample + step if uptime - self.next_sample < step else uptime + step
        self.sample()
        self.flush_readings()
        gc.collect()
        used = gc.mem_alloc()
        if used > self.heap_peak:
            self.heap_peak = used

    def jitter(self, span):
        return random.getrandbits(16) % (span + 1)

    def step(self):
        self.receive()
        for wire in self.ring.due(time.ticks_ms(), self.jitter):
            self.hal.uart.write(wire)
        uptime = self.hal.uptime_ms()
        if uptime >= self.next_sample:
            self.sample_round(uptime)
        if self.pending and self.may_send():
            self.flush_readings()
        if uptime - self.last_status >= self.status_interval * 1000:
            if self.counter.peek() > _LAST_COUNTER:  # no STATUS can go out: the console hears why instead
                self.last_status = uptime
                print("edgegw-node: frame counter spent: silent until given a new id or key (SPEC 4.1)")
            elif self.may_send():
                self.last_status = uptime
                self.status()
        if uptime - self.last_time >= _TIME_REQUEST_MS and self.may_send():
            self.last_time = uptime
            self.send(messages.TIME, {}, 0)  # ask again: clocks drift

    def run(self, watchdog):
        # One loop and no scheduler: a node has one thing to do at a time, and
        # asyncio alone would take 4 KB of a 64 KB heap. The watchdog was armed
        # by main.py before anything that can fail.
        self.hello()
        print("edgegw-node %s ready" % node_hex(self.node_id))
        self.last_status = self.last_time = self.hal.uptime_ms()
        while True:
            try:
                self.step()
            except MemoryError:
                # A heap too full or too fragmented for this round: the oldest
                # unacknowledged frame gives way (counted in STATUS), the node goes on.
                self.ring.drop_oldest()
                gc.collect()
                print("edgegw-node: out of memory, %d bytes free" % gc.mem_free())
            self.hal.tick()
            watchdog.feed()
            time.sleep_ms(_POLL_MS)
