# The sensor node: samples on a schedule, batches samples into READINGS
# frames, keeps each frame until the gateway acknowledges it (protocols/session.py
# holds the rules: span, retransmission, REJECT, the receive table), sends events
# at once, and answers TIME, CONFIG and COMMAND, each COMMAND or CONFIG set
# executed at most once. Same code on boards and on the unix port; the HAL is the
# only difference.
#
# A node with a key (SPEC.md 3.4) authenticates every frame both ways. On flash:
#   key      64 hex digits (a newline after them allowed): the node's 32-byte key,
#            written by the provisioning tools (`edgegw keys add`, `fw flash --provision`);
#   key.old  the same, the previous key while a rotation (the `rekey` command,
#            firmware/commands.py) waits for the gateway's first frame under the new one.
# Such a node tags every frame it sends under its current key and takes only downlink
# frames tagged under one of its keys; a node without one sends CRC frames as in 1.0
# and never loads protocols/auth.py. No key is ever printed.
import binascii
import gc
import json
import random
import sys

from micropython import const

from firmware import storage
from firmware.sensors import SampleNumber
from firmware.storage import PersistentCounter
from protocols import frame as fr
from protocols import messages
from protocols import session as ss
from protocols.errors import ProtocolError
from protocols.frame import node_hex, node_id_from_unique_id
from protocols.messages import Message, encode
from protocols.stream import StreamDecoder

VERSION = "0.1.0"
# The retransmission ring is sized from the heap left after boot: a full-size
# frame costs about _FRAME_COST in the ring, and _RESERVE stays free for
# building and decoding frames. A 64 KB heap that also holds the code gets a
# handful of frames; with the code in ROMFS or frozen (the emulator, a board
# deployed that way) or on a Pico or an ESP32, the maximum. A COMMAND or CONFIG
# loads its code when it comes (firmware/downlink.py) and makes room for it first
# (handle).
_RING_MIN = const(4)
_RING_MAX = const(32)
_FRAME_COST = const(300)  # a 258-byte slot and its bookkeeping
_RESERVE = const(4096)
# Free heap a COMMAND or CONFIG needs: firmware/downlink.py with the window, then (the window
# unloaded) firmware/commands.py and argspec, the answers kept on flash, frames. Measured on the
# 64 KB unix port with the code on the heap: at 6144 a burst of bad-argument COMMANDs now and then
# ran out (argspec's errors). With the code in ROMFS the heap has far more free than this.
_REQUEST_HEAP = const(6656)
_MAX_PENDING = const(36)  # samples waiting for a frame while the span rule holds frames back
_FRAME_SAMPLES = const(12)  # per READINGS frame: 12 x 15 bytes at worst (double float, 4-byte dt) fits 236
_RADIO_FRAME = const(204)  # protocols/lora.py MAX_RADIO_FRAME
_RADIO_SAMPLES = const(9)  # 9 x 15 bytes at worst fits a radio frame
_SHORT_HELLO_SF = const(11)  # protocols/lora.py SHORT_HELLO_SF
_IDLE_MS = const(100)  # the loop's longest wait: the roles read their sensors every 200-500 ms
_LAST_COUNTER = const(0xFFFFFFFF)  # spent on a LOG saying the counter is exhausted (see send)
_TIME_REQUEST_MS = const(21600000)  # ask the gateway for the time every 6 hours
# On the air an event before the node's first TIME waits this long for it, at most _HELD of them (SPEC.md 5.4)
_HELD_MS = const(60000)
_HELD = const(4)
_KEY_HEX = const(64)  # a key record: the 32-byte key in hex digits


def unload(name):
    # A module loaded for one rare job leaves the heap after it (its names stay interned):
    # on a 64 KB heap the ring is worth more than keeping code for a COMMAND an hour.
    sys.modules.pop(name, None)
    package, _, child = name.rpartition(".")
    if hasattr(sys.modules.get(package), child):
        delattr(sys.modules[package], child)


def read_key(store, name):
    # A key record, or None if there is none. A damaged one is reported, never its content
    # (it may be most of a key), and reads as None: a node whose `key` is damaged runs without
    # one, and the gateway drops its frames, which shows.
    try:
        raw = store.get(name)
        if raw is None:
            return None
        if raw[-1:] == b"\n":
            raw = raw[:-1]
        if len(raw) == _KEY_HEX:
            return binascii.unhexlify(raw)  # ValueError for a digit that is not hex
    except (OSError, ValueError):
        pass
    storage.report(name, "not %d hex digits" % _KEY_HEX)
    return None


class Node:
    def __init__(self, hal):
        self.hal = hal
        self.node_id = node_id_from_unique_id(hal.unique_id)
        self.counter = PersistentCounter(hal.storage, "counter")
        # (current key, previous key or None) of a node that has a key, else None.
        key = read_key(hal.storage, "key")
        self.keys = None if key is None else (key, read_key(hal.storage, "key.old"))
        self.via = -1  # the key the downlink frame being handled came under: an index into keys
        # The highest downlink counter taken (fresh): from the window on flash at boot, kept in RAM after
        high = hal.storage.settings("downlink.json").get("h", -1) if self.keys is not None else -1
        self.down_high = high if isinstance(high, int) else -1
        # Downlink AUTH frames are checked with the node's keys, its own id's only; with no key, each is an `auth` error.
        self.decoder = StreamDecoder(None if self.keys is None else self.keys_of)
        self.rx = bytearray(64)
        self.interval = hal.interval
        self.status_interval = hal.status_interval
        saved = hal.storage.settings("config.json")  # what a gateway set over CONFIG, kept across reboots
        for key in saved:
            if self.setting(key, saved[key]):
                storage.report("config.json", key)
        self.sources = hal.sources(hal.role) + [SampleNumber(hal.storage)]
        # name -> (argument spec, the source that runs it or None: the node itself, downlink.py)
        self.commands = {"identify": ("", None), "reboot": ("", None), "sample_now": ("", None), "set_interval": ("s n1-86400!", None)}
        if self.keys is not None:
            self.commands["rekey"] = ("nonce t! key t!", None)  # a new key, wrapped (SPEC.md 3.6, firmware/commands.py)
        self.polled = []
        for source in self.sources:
            for name in getattr(source, "COMMANDS", ()):
                self.commands[name] = (source.COMMANDS[name], source)
            if hasattr(source, "poll"):
                self.polled.append(source)
        # The radio whose figures STATUS carries: a bridge role's (it also takes RADIO_TX), or the port of a
        # node whose link is the air (firmware/radio_port.py), which asks before sending a frame whether the
        # node still wants it (not acknowledged while it waited for the duty cycle).
        self.bridge = None
        self.radio = None
        for source in self.sources:
            if hasattr(source, "radio_tx"):
                self.bridge = self.radio = source
        self.frame_limit = fr.MAX_FRAME
        self.frame_samples = _FRAME_SAMPLES
        if hasattr(hal.uart, "wanted"):
            self.radio = hal.uart
            hal.uart.wanted = self.out_wants
            hal.uart.on_fallback = self.save_config  # the gateway's link setting failed: forgotten on flash too
            self.frame_limit = _RADIO_FRAME  # a bridge wraps each of its frames in a RADIO_RX (SPEC.md 5.11)
            self.frame_samples = _RADIO_SAMPLES
        self.on_air = self.radio is hal.uart  # its link is the air (firmware/radio_port.py), not a cable
        self.held = []  # on the air: events from before the first TIME, (uptime ms, samples), oldest first
        self.pending = []  # flat [ch, value, dt, ...] not yet framed
        self.pending_since = None  # unix time (or None) of the first pending round
        self.offset_ms = None  # unix ms - uptime ms, once TIME arrived (integers: see firmware/uptime.py)
        self.rx_errors = 0
        self.hello_pending = None  # counter of the HELLO waiting for its ACK
        self.heap_peak = 0
        self.next_sample = 0  # uptime ms of the next sampling round
        self.last_status = 0  # uptime ms of the last STATUS
        self.status_counter = None  # on the air: the counter of the last STATUS (kept until acknowledged)
        self.last_time = 0  # uptime ms of the last TIME request
        self.reset_at = None  # uptime ms when a `reboot` resets the board
        if self.keys is not None:
            __import__("protocols.auth")  # its first frame would load it: here, the ring is sized with it on the heap
        gc.collect()
        capacity = max(_RING_MIN, min(_RING_MAX, (gc.mem_free() - _RESERVE) // _FRAME_COST))
        self.out = ss.Outbox(self.counter, capacity, ss.NODE_ON_REJECT)
        if self.on_air:
            hal.uart.on_aired = self.out.aired  # a frame whose windows brought no ACK is due again at once

    def out_wants(self, counter):
        return counter in self.out.counters

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
            self.out.drop_oldest()
        counter = self.counter.take()
        if counter == _LAST_COUNTER:
            # SPEC.md 4.1: a node whose counter reaches 0xFFFFFFFF gets a new id or key
            # before it sends again. The last counter carries a LOG that says so (the
            # gateway logs it as an error) in place of the frame asked for; nothing new
            # follows. The loop goes on: frames already sent are still retransmitted,
            # the watchdog is fed, and the console says why the node is silent (step).
            mtype, fields, flags = messages.LOG, {"severity": 2, "text": "counter spent: needs new id or key"}, fr.F_ACK_REQ
        key = None
        if self.keys is not None:  # a keyed node sends nothing unauthenticated
            flags |= fr.F_AUTH
            key = self.keys[0]
        wire = encode(Message(mtype, self.node_id, counter, fields, flags), key)  # kept and resent as it is: under this key
        if flags & fr.F_ACK_REQ:
            self.out.add(counter, wire, self.hal.uptime_ms())  # kept before it is written
        self.hal.uart.write(wire)
        return counter

    def may_send(self):
        return self.counter.peek() <= _LAST_COUNTER and self.out.may_send()

    def hello(self):
        self.hal.uart.write(b"\x00")  # end whatever garbage the gateway collected before we were here
        channels = []  # built when needed: HELLO is rare, the heap is small
        for source in self.sources:
            for name, unit, scale in source.CHANNELS:
                channels.append({"name": name, "unit": unit, "scale": scale})
        offered = {}
        for name in self.commands:
            offered[name] = self.commands[name][0]
        caps = messages.CAP_READINGS | messages.CAP_CONFIG | messages.CAP_COMMANDS | messages.CAP_TIME
        if self.keys is not None:
            caps |= messages.CAP_AUTH
        fields = {
            "proto": [fr.VERSION_MAJOR, fr.VERSION_MINOR],
            "fw_version": VERSION,
            "hw_model": self.hal.hw_model,
            "caps": caps,
            "channels": channels,
            "interval": self.interval,
            "commands": offered,
        }
        # A long board name (os.uname().machine: "Raspberry Pi Pico W with RP2040") beside six
        # channels and rekey passes the payload limit, 4 bytes lower under a tag. The name only
        # informs: it is cut to fit, rather than a HELLO refused and a node that cannot start.
        room = self.frame_limit - fr.HEADER_LEN - (fr.CRC_LEN if self.keys is None else fr.AUTH_TAG_LEN)
        over = len(messages.encode_payload(messages.HELLO, fields)) - room
        model = self.hal.hw_model
        while over > 0 and model:
            model = fields["hw_model"] = model[:-over]
            over = len(messages.encode_payload(messages.HELLO, fields)) - room
        for name in ("identify", "sample_now", "set_interval", "reboot"):
            if over <= 0:
                break
            # Over the air (a smaller limit): without the built-in commands a node in the field needs least
            # rather than no HELLO at all; the role's own commands are what it is there for.
            if offered.pop(name, None) is not None:
                print("edgegw-node: HELLO over the radio frame limit: %s not offered" % name)
                over = len(messages.encode_payload(messages.HELLO, fields)) - room
        if over > 0:
            print("edgegw-node: HELLO %d bytes over the frame limit: sent without its commands" % over)
            del fields["commands"]
        elif self.on_air and self.hal.uart.sf >= _SHORT_HELLO_SF:
            del fields["commands"]  # at SF11 and SF12 the offer costs seconds on air (SPEC.md 5.11)
        self.hello_pending = self.send(messages.HELLO, fields)

    def flush_readings(self):
        # At most _FRAME_SAMPLES per frame, so a frame stays under the 255-byte limit
        # whatever piled up while the span rule held frames back. A link that is the air sends a
        # frame when its duty cycle lets it (firmware/radio_port.py): until then samples gather.
        port = self.hal.uart
        air = self.radio is port and self.radio is not None
        while self.pending and self.may_send() and not (air and port.busy()):
            chunk = self.pending[: 3 * self.frame_samples]
            fields: dict = {"samples": chunk}
            if self.pending_since is not None:
                fields["base_time"] = self.pending_since
            try:
                self.send(messages.READINGS, fields)
            except ProtocolError:  # cannot happen within the limits above; never let it stop the node
                self.out.dropped += 1
            del self.pending[: len(chunk)]
        if not self.pending:
            self.pending_since = None

    def event(self, source, values):
        # An event (SPEC.md 5.4): a READINGS frame flagged PRIORITY, sent now rather than at
        # the next interval, through the same ring. values: aligned with source.CHANNELS,
        # None = absent. The frame counter, or None if it is spent.
        first = 0
        for other in self.sources:  # the node's index of the source's first channel
            if other is source:
                break
            first += len(other.CHANNELS)
        samples = []
        for index in range(len(values)):
            if values[index] is not None:
                samples += [first + index, values[index], 0]
        fields: dict = {"samples": samples}
        now = self.now()
        if now is not None:
            fields["base_time"] = now
        elif self.on_air and len(self.held) < _HELD:
            # On the air a frame may wait a minute for its duty cycle; undated, the gateway would date it when
            # received, after a later event that was dated, and the two would read in the wrong order. It
            # waits for the clock (the TIME asked for at boot comes in a receive window) or _HELD_MS.
            self.held.append((self.hal.uptime_ms(), samples))
            return 0
        return self.send(messages.READINGS, fields, fr.F_ACK_REQ | fr.F_PRIORITY)

    def send_held(self, uptime):
        # The held events, dated by their uptime once the clock is known, else (after _HELD_MS) undated
        while self.held and (self.offset_ms is not None or uptime - self.held[0][0] >= _HELD_MS):
            at, samples = self.held[0]
            fields: dict = {"samples": samples}
            if self.offset_ms is not None:
                fields["base_time"] = (at + self.offset_ms) // 1000
            if self.send(messages.READINGS, fields, fr.F_ACK_REQ | fr.F_PRIORITY) is None:
                return  # the counter is spent: nothing goes out any more
            self.held.pop(0)

    def sample(self):
        now = self.now()
        if not self.pending or self.pending_since is None:
            # The first sample waiting, or the first since the clock came (TIME) while undated ones wait: a
            # node on the air always has samples waiting, and must not date them all "when received"
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
            self.out.dropped += 1

    def status(self):
        last = self.status_counter
        if self.on_air and last is not None and self.out.unaired(last) and not self.hal.uart.sending(last):
            # The last one has not gone on air yet: it goes for this one. A counter spent on a frame that never goes
            # would count as a frame lost in the gateway's delivery ratio and MISSING (SPEC.md 5.11)
            return
        free = gc.mem_free()
        fields = {
            "uptime": self.hal.uptime_ms() // 1000,
            "free_heap": free,
            "reset_cause": self.hal.reset_cause,
            "dropped": self.out.dropped,
            "retransmits": self.out.retransmits,
            "rx_errors": self.rx_errors,
            "heap_peak": self.heap_peak,
        }
        radio = self.radio
        if radio is not None:  # a bridge's radio or a radio node's link (SPEC.md 5.7 `air`)
            fields["air"] = radio.report(self.hal.uptime_ms())
        # On the air a STATUS asks for an ACK and is sent until it has one: a battery node sends one an hour, not one
        # a minute as on a cable, and at SF11-12 a third of frames meet another; one lost would leave the
        # gateway an hour or two without its health and its radio's figures (SPEC.md 5.11)
        if self.on_air:
            if last is not None:
                self.out.forget(last)  # superseded: an older STATUS must not arrive after this one
            self.status_counter = self.send(messages.STATUS, fields, fr.F_ACK_REQ)
        else:
            self.send(messages.STATUS, fields, 0)

    # -------------------------------------------------------------- receiving

    def handle(self, message):
        # protocols/session.py's NODE_RX table: ACK, TIME and REJECT are applied whatever
        # their counter (idempotent, never windowed); a COMMAND or CONFIG goes through the
        # downlink window, kept on flash, in firmware/downlink.py; other types are ignored.
        if message.node_id != self.node_id or not message.flags & fr.F_DOWNLINK:
            return
        if self.keys is not None:
            # A keyed node takes no frame without a tag (a forged ACK would drop its readings, a
            # forged COMMAND run); a wrong tag never got here (the decoder's `auth`, counted).
            if message.key_index < 0:
                self.rx_errors += 1
                return
            self.via = message.key_index
            if message.key_index == 0 and self.keys[1] is not None:
                self.end_rotation()
            if not self.fresh(message):
                self.rx_errors += 1
                return
        if self.on_air:
            self.hal.uart.silent = 0  # a frame for this node came through: the link works (another's would not say so)
        mtype = message.type
        fields = message.fields
        if mtype == messages.ACK:
            self.out.acked(fields["counters"], 0)
        elif mtype == messages.TIME:
            if "unix" in fields:
                if self.offset_ms is None and self.on_air and self.status_counter is None:
                    # A radio node's first STATUS goes once it is answered (its reset cause, its radio's
                    # figures after the HELLO and the first TIME), not a whole status_interval after its boot
                    self.last_status = self.hal.uptime_ms() - int(self.status_interval * 1000)
                self.offset_ms = fields["unix"] * 1000 + fields.get("ms", 0) - self.hal.uptime_ms()
        elif mtype == messages.REJECT:
            event = self.out.rejected(fields["reason"], fields.get("counter"))
            if event and event[0] == ss.NEED_HELLO and not self.hello_waiting():
                self.hello()
        elif mtype == messages.RADIO_TX and self.bridge is not None:
            self.bridge.radio_tx(self, fields)
        elif mtype == messages.COMMAND or mtype == messages.CONFIG:  # the window's: firmware/downlink.py
            gc.collect()
            while gc.mem_free() < _REQUEST_HEAP and self.out.counters:
                self.out.drop_oldest()  # a request (rare) before the oldest unacknowledged readings (counted)
                gc.collect()
            try:
                __import__("firmware.downlink", None, None, ["request"]).request(self, message)
            finally:
                unload("firmware.commands")  # after an exception too (downlink.py unloads it itself)
                unload("firmware.downlink")
                unload("protocols.argspec")
                unload("protocols.window")

    def fresh(self, message):
        # A keyed node's replay check for what no window guards: a TIME or a REJECT played again would
        # set its clock back (the readings' times) or make it say HELLO. The gateway numbers every frame
        # to a node from one counter as it writes it, so a new TIME or REJECT comes with a counter above
        # every frame before it; a COMMAND or CONFIG keeps its counter when resent (its window guards
        # it), and an ACK only ever acknowledges frames still in the ring (a recording acknowledges none).
        counter = message.counter
        mtype = message.type
        if mtype == messages.TIME or mtype == messages.REJECT:
            if counter <= self.down_high:
                return False
            if mtype == messages.REJECT and message.fields.get("counter") not in self.out.counters:
                return False  # names no frame this node still holds: nothing for it to do
        if counter > self.down_high:
            self.down_high = counter
        return True

    def keys_of(self, node_id):
        # The decoder's key_of: the keys a downlink frame may carry, the current one first.
        return self.keys if node_id == self.node_id else None

    def end_rotation(self):
        # A downlink frame under the new key: the gateway has switched, the old key goes.
        # If flash fails to forget it, the node still does (it comes back after a reset, to go again).
        keys = self.keys
        if keys is not None:
            self.keys = (keys[0], None)
        try:
            self.hal.storage.remove("key.old")
        except OSError as error:
            storage.report("key.old", repr(error))

    def setting(self, key, value):
        # A setting a gateway may change (SPEC.md 5.8): None once set, else why it was not.
        port = self.hal.uart
        if (key == "sf" or key == "tx_power" or key == "margin_db") and hasattr(port, "advise"):
            return port.advise(key, value)  # link adaptation, for a node whose link is the air (radio_port.py)
        low = 1 if key == "interval" else 10 if key == "status_interval" else 0
        if not low or not isinstance(value, (int, float)) or not low <= value <= 86400:
            return "rejected"
        setattr(self, key, value)
        return None

    def config(self):
        # The values a CONFIG report carries and config.json keeps: the link's only as the gateway set them
        values = {"interval": self.interval, "status_interval": self.status_interval}
        link = getattr(self.hal.uart, "link", None)
        if link:
            values.update(link)
        return values

    def save_config(self):
        self.hal.storage.put("config.json", json.dumps(self.config()).encode())

    def receive(self):
        while True:  # until the UART is empty: a burst must not overflow its small buffer
            count = self.hal.uart.read_available(self.rx)
            if not count:
                return
            self.decoder.feed(bytes(self.rx[:count]))
            while True:  # one message at a time, not drain(): a burst of requests is not all decoded at once
                try:
                    event = self.decoder.next_message()
                except ProtocolError:
                    self.rx_errors += 1
                    continue
                if event is None:
                    break
                try:
                    self.handle(event)
                except Exception as error:  # no frame from the line may stop the node
                    self.rx_errors += 1
                    print("edgegw-node: frame %d not handled: %r" % (event.counter, error))
                event = None  # garbage before the next one is decoded

    # -------------------------------------------------------------- the loop

    def sample_round(self, uptime):
        # Scheduled first: a round that fails for lack of memory is not repeated at once.
        step = int(self.interval * 1000)
        self.next_sample = self.next_sample + step if uptime - self.next_sample < step else uptime + step
        self.sample()
        self.flush_readings()
        gc.collect()
        used = gc.mem_alloc() - self.hal.heap_reserved
        if used > self.heap_peak:
            self.heap_peak = used

    def jitter(self, span):
        return random.getrandbits(16) % (span + 1)

    def step(self):
        self.receive()
        uptime = self.hal.uptime_ms()
        for event in self.out.due(uptime, self.jitter):
            self.hal.uart.write(event[3])
        if self.held:
            self.send_held(uptime)
        for source in self.polled:
            try:
                source.poll(self, uptime)
            except Exception as error:  # a role's fault: said on the console, the node goes on
                print("edgegw-node: poll failed: %r" % error)
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
        # Not while an uplink's receive windows are open or due: the TIME may be on its way (the gateway sends one in
        # RX2 after a HELLO's ACK in RX1; a request made between the two went a minute later, the clock long set)
        if uptime - self.last_time >= self.time_request_ms() and self.may_send() and not (self.on_air and self.hal.uart.answering()):
            self.last_time = uptime
            if not (self.on_air and self.hal.uart.waiting(messages.TIME)):  # one still waiting to go asks for this one
                self.send(messages.TIME, {}, 0)  # ask again: clocks drift
        if self.reset_at is not None and uptime >= self.reset_at:
            self.hal.reset()  # a `reboot` command: its answer is on flash and on the line

    def hello_waiting(self):
        # A HELLO of this node waits for its ACK
        return self.hello_pending is not None and self.hello_pending in self.out.counters

    def time_request_ms(self):
        # On the air a node whose HELLO was answered but that has no clock (the TIME after it lost at the node:
        # another bridge's downlink, a frame for another node in its window) asks every _HELD_MS: the gateway owes
        # it no TIME until asked, and its events wait for one (a flood alarm 80 s late); otherwise every 6 hours
        if self.offset_ms is None and self.on_air and not self.hello_waiting():
            return _HELD_MS
        return _TIME_REQUEST_MS

    def idle_ms(self):
        # Until the next sample, _IDLE_MS at most. A byte on the UART ends the wait
        # at once (an ACK, a COMMAND): a 20 ms poll cost an idle node 2 % of a core
        # on the unix port for nothing, and a battery node its battery.
        now = self.hal.uptime_ms()
        wait = self.next_sample - now
        if self.bridge is not None:  # a bridge's transmission due sooner (a node's receive window)
            wait = min(wait, self.bridge.next_ms(now))
        return 0 if wait < 0 else (_IDLE_MS if wait > _IDLE_MS else wait)

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
                self.out.drop_oldest()
                gc.collect()
                print("edgegw-node: out of memory, %d bytes free" % gc.mem_free())
            self.hal.tick()
            watchdog.feed()
            self.hal.uart.wait(self.idle_ms())
