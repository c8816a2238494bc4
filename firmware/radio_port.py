# A battery node's link to the gateway over LoRa, class A (SPEC.md 5.11): the node's frames go on air
# one per packet, and a receive window opens a fixed delay after each uplink, for the ACKs and requests
# the gateway sends back through a bridge. The port looks like a UART to the node (write,
# read_available, wait), so the node's session rules (retransmission, the span, REJECT) are the same
# over a cable and over the air; only the timing is the radio's:
#
# - A frame waits for the EU868 duty cycle of its sub-band (protocols/dutycycle.py); it is never sent
#   before. At most _QUEUE wait, a HELLO first, then events, then answers to the gateway and TIME requests, then the
#   rest, each oldest counter first (_rank), except that of the node's own frames the one sent last, not
#   acknowledged, goes after the next; when more come, the last in that order is left out (counted in `dropped`: one
#   the node keeps in its ring comes again when its retransmission is due). A frame of the node's own schedule (not
#   a HELLO, event, answer or request) that finds the port idle and its time-off over still waits a random
#   0 .. chance_ms, as every frame does after a time-off: periodic rounds must not line up with another node's (a
#   HELLO, event, answer or request written meanwhile goes at once). A frame the node no longer wants (acknowledged
#   meanwhile: `wanted`) is dropped unsent; a retransmission of a frame still waiting replaces it.
#   `busy` tells the node to keep its samples for a later, fuller frame rather than queue another.
# - The uplink hops over its channels (1 %); two receive windows listen at the node's SF, the first on
#   the uplink's channel RX_DELAY_MS after the uplink ended, the second on the 10 % downlink channel
#   RX2_DELAY_MS after it, each for RX_WINDOW_MS and longer while a frame whose preamble it detected is
#   still coming (DETECT_SYMBOLS into it, protocols/lora.py; at most the longest frame's airtime more), each
#   closing after one frame. Two sub-bands, two duty cycles: the
#   bridge can answer in both (an ACK, then a request).
# - Link adaptation (SPEC.md 5.11): the gateway may set `sf`, `tx_power` and `margin_db` over CONFIG (advise);
#   they apply from the next uplink (its windows listen at its SF: a window already due keeps the SF of the
#   uplink it follows). If nothing is heard in the windows of ADR_SILENT uplinks in a row at such a setting, no
#   bridge hears the node there any more: it goes back to its own SF and full power (counted in `fallback`) and
#   `on_fallback` forgets the setting on flash, so a bad advice never loses the node for good.
# - Between windows the radio sleeps. `tx_ms` and `rx_ms` are the radio's time on air and listening,
#   which STATUS reports and the energy model (hil/energy.py) turns into battery life.
import random

from micropython import const

from protocols import cobs, messages
from protocols.airtime import airtime_us
from protocols.dutycycle import DutyCycle
from protocols.frame import F_ACK_REQ, F_PRIORITY
from protocols.lora import (
    ADR_SILENT,
    DOWNLINK_FREQ,
    MAX_POWER_DBM,
    MAX_RADIO_FRAME,
    MIN_POWER_DBM,
    RX2_DELAY_MS,
    RX_DELAY_MS,
    RX_WINDOW_MS,
    SF_MAX,
    SF_MIN,
    UPLINK_CHANNELS,
    chance_ms,
)

_MARGIN_MIN = const(-128)  # a margin_db the gateway sets: an int8 on a node written in C
_MARGIN_MAX = const(127)
_HEARD_MS = const(50)  # a preamble was heard: the window stays open while the frame is still coming
_QUEUE = const(4)
_TX_SLACK_MS = const(500)  # past a transmission's airtime without TxDone: the radio is reset (an IRQ lost, a brown-out)
_TYPE = const(1)  # header offsets (protocols/frame.py _HEADER)
_FLAGS = const(2)
_COUNTER = const(11)
# A node's CONFIG is a report, its TIME a request
_EXCHANGES = (messages.ACK, messages.CONFIG, messages.COMMAND_RESULT, messages.TIME)

# STATUS `air` keys by number (their positions in protocols/upstream.py AIR_KEYS, SPEC.md 5.7): on the air each
# byte is airtime, and the names were more than a third of a STATUS
_AIR_TX = const(0)
_AIR_TX_MS = const(1)
_AIR_RX = const(2)
_AIR_RX_MS = const(3)
_AIR_DROPPED = const(4)
_AIR_SF = const(5)
_AIR_POWER = const(6)
_AIR_FALLBACK = const(7)
_AIR_MARGIN = const(8)
_IDLE = const(0)
_TX = const(1)
_WAIT_RX = const(2)
_RX = const(3)


def _chance(airtime):
    # ALOHA's random wait before a frame goes: 0 .. chance_ms for a frame of this airtime (us)
    return random.getrandbits(20) % chance_ms(airtime)


def _rank(frame):
    # The order frames wait in: a HELLO first (nothing else is taken before it), then events (PRIORITY: a
    # flood alarm must not wait a minute behind the answers of a CONFIG exchange, measured in
    # flood-warning-radio), then what answers the gateway (ACK, CONFIG report, COMMAND_RESULT: a command
    # waits on it) and a TIME request, then the rest; each by counter. A TIME request is a few bytes, and a node's
    # clock, its held events and its first STATUS wait on it: behind a READINGS it waited that frame's time-off (at
    # SF12 over 4 minutes; tree-health's last probes then had too little time for two STATUS). Not kept in the
    # node's ring, it would also be lost, with its counter, to any READINGS a full queue took instead.
    mtype = frame[_TYPE]
    first = 0 if mtype == messages.HELLO else 1 if frame[_FLAGS] & F_PRIORITY else 2 if mtype in _EXCHANGES else 3
    return (first, frame[_COUNTER : _COUNTER + 4])


class RadioPort:
    def __init__(self, radio, clock, idle, sf=9, power_dbm=14, channels=UPLINK_CHANNELS):
        # radio: an SX1276 or SX1262 driver; clock(): uptime ms; idle(ms): sleep until the radio has
        # something or ms passed (the HAL's: an interrupt pin on a board, the air's pty on the unix port).
        self.radio = radio
        self.clock = clock
        self.idle = idle
        self.sf = self.rx_sf = sf  # rx_sf: the SF of the uplink whose windows are open or due
        self.power = power_dbm
        self.own = (sf, power_dbm)  # node.json's: what a fallback goes back to, at full power
        self.link = None  # {key: value} of sf, tx_power, margin_db as the gateway set them (advise), or None
        self.silent = 0  # uplinks since a frame for this node was last heard (the node resets it: radio_port cannot tell)
        self.fallback = 0
        self.on_fallback = None  # called when a fallback dropped the gateway's setting (the node rewrites config.json)
        self.aired = None  # the counter (4 bytes) of the uplink whose windows are open or due, if it wants an ACK
        self.again = None  # the counter of the last uplink, if it wanted an ACK: sent again, it lets the next go first
        self.on_aired = None  # on_aired(counter, now) when they closed (the node's outbox: it is due again)
        self.channels = channels  # those its bridges listen on (a bridge with one radio hears one)
        self.duty = DutyCycle()
        self.wanted = None  # wanted(counter): False once the node no longer needs the frame sent
        self.queue = []
        self.inbox = []  # received frames, COBS-encoded with their delimiter: what a UART would read
        self.state = _IDLE
        self.until = 0  # the end of the current state: TX's expected end, the window's opening or closing
        self.rx_end = 0  # the latest an open window is held for a frame it detected
        self.since = 0
        self.hop = 0
        self.tx_end = 0
        self.not_before = random.getrandbits(12)  # ms of uptime: the first transmission waits up to 4 s too
        self.chanced = False  # not_before is a periodic frame's chance on an idle port (enqueue), not a time-off
        self.tx = self.rx = self.dropped = self.tx_ms = self.rx_ms = 0
        radio.sleep()

    # -------------------------------------------------------------- the UART's face

    def write(self, data):
        # COBS-encoded frames, each ending in 0 (what the node writes to a cable); each becomes a packet.
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                return
            if end > start:
                self.enqueue(cobs.decode(data[start:end]))
            start = end + 1

    def read_available(self, buffer):
        self.pump()
        if not self.inbox:
            return 0
        wire = self.inbox[0]
        count = min(len(buffer), len(wire))
        buffer[:count] = wire[:count]
        if count == len(wire):
            self.inbox.pop(0)
        else:
            self.inbox[0] = wire[count:]
        return count

    def wait(self, ms):
        # The node's idle time: asleep, waking for what the radio must do next.
        self.pump()
        if self.inbox:
            return
        now = self.clock()
        if self.state != _IDLE or self.queue:
            left = (self.until if self.state != _IDLE else max(self.not_before, now + self.duty.wait_ms(self.channels[0], now))) - now
            ms = max(1, min(ms, left))
        self.idle(ms)
        self.pump()

    def answering(self):
        # An uplink is on air or its receive windows are open or due: what the gateway answers may be coming
        return self.state != _IDLE

    def sending(self, counter):
        # The uplink of this counter (one asking for an ACK) is on air, or its receive windows are open or due
        return self.aired is not None and int.from_bytes(self.aired, "big") == counter

    def waiting(self, mtype):
        # A frame of this type waits to go
        return any(frame[_TYPE] == mtype for frame in self.queue)

    # -------------------------------------------------------------- the radio

    def busy(self):
        # More than one frame already waits for the duty cycle: a new one would wait behind them
        return len(self.queue) > 1

    def enqueue(self, frame):
        counter = frame[_COUNTER : _COUNTER + 4]
        for index in range(len(self.queue)):
            if self.queue[index][_COUNTER : _COUNTER + 4] == counter:
                self.queue[index] = frame  # a retransmission of a frame still waiting: one copy, the newest
                return
        if len(self.queue) >= _QUEUE:
            self.dropped += 1
            if _rank(self.queue[-1]) < _rank(frame):
                return  # the node keeps it in its ring: it comes again when its retransmission is due
            self.queue.pop()
        index = len(self.queue)
        rank = _rank(frame)
        while index and _rank(self.queue[index - 1]) > rank:
            index -= 1
        self.queue.insert(index, frame)
        if rank[0] == 3 and len(self.queue) == 1 and self.state == _IDLE:
            now = self.clock()
            if now >= self.not_before:
                # ALOHA needs chance here too: a frame of the node's own schedule (a reading round, a STATUS) that
                # finds the time-off long over would go at the same moment of every round, and two nodes whose
                # rounds line up would collide every round (tree-health: a probe lost 4 STATUS of 4 to one
                # neighbour's READINGS)
                self.not_before = now + _chance(airtime_us(len(frame), self.sf))
                self.chanced = True
        elif rank[0] < 3 and self.chanced:
            # A HELLO, event, answer or TIME request goes at once (someone waits for it), not after that chance (at
            # SF12 up to 37 s): the time-off was over when it was drawn
            self.not_before = self.clock()
            self.chanced = False

    def pump(self):
        now = self.clock()
        state = self.state
        if state == _TX:
            late = now > self.until + _TX_SLACK_MS  # no TxDone long after the airtime: the chip is started again
            if late:
                self.dropped += 1
                self.radio.begin()
            if late or self.radio.tx_done():
                self.tx_ms += now - self.since
                self.state = _WAIT_RX
                self.tx_end = now
                self.until = now + RX_DELAY_MS
        elif state == _WAIT_RX:
            if now >= self.until:  # RX1 on the uplink's channel, RX2 on the 10 % one (protocols/lora.py)
                second = now >= self.tx_end + RX2_DELAY_MS
                channel = DOWNLINK_FREQ if second else self.channels[self.hop]
                self.radio.configure(channel, self.rx_sf, power_dbm=self.power, invert_iq=True)  # downlinks are inverted
                self.radio.start_receive()
                self.state = _RX
                self.since = now
                self.until = now + RX_WINDOW_MS
                # Held open while a frame is coming, at most for the longest one: a receiver stuck on noise it took
                # for a preamble must not keep the node awake and deaf to its own schedule
                self.rx_end = self.until + (airtime_us(MAX_RADIO_FRAME, self.rx_sf) + 999) // 1000
        elif state == _RX:
            got = self.radio.poll()
            if got is not None:
                self.rx += 1
                self.inbox.append(cobs.encode(got[0], True))
                self.until = now
            elif self.radio.receiving() and now < self.rx_end:
                self.until = now + _HEARD_MS
            if now >= self.until:
                self.radio.sleep()
                self.rx_ms += now - self.since
                second = self.tx_end + RX2_DELAY_MS
                if now < second:  # the first window closed: the second opens at its time
                    self.state = _WAIT_RX
                    self.until = second
                else:
                    self.state = _IDLE
                    if self.aired is not None and self.on_aired is not None:  # its windows closed: was it answered?
                        self.on_aired(int.from_bytes(self.aired, "big"), now)
                    self.aired = None
        if self.state == _IDLE and self.queue:
            self.send_next(now)

    def send_next(self, now):
        wanted = self.wanted
        queue = self.queue
        if wanted is not None:
            for index in range(len(queue) - 1, -1, -1):
                frame = queue[index]
                if frame[_FLAGS] & F_ACK_REQ and not wanted(int.from_bytes(frame[_COUNTER : _COUNTER + 4], "big")):
                    queue.pop(index)  # acknowledged while it waited
        if not queue or now < self.not_before:
            return
        if self.link is not None and self.silent >= ADR_SILENT:  # LoRaWAN's ADR_ACK_LIMIT, in one step
            self.sf = self.own[0]
            self.power = MAX_POWER_DBM
            self.link = None
            self.silent = 0
            self.fallback += 1
            if self.on_fallback is not None:
                self.on_fallback()
        self.hop = (self.hop + 1) % len(self.channels)
        channel = self.channels[self.hop]
        # A frame of the node's own schedule sent last and not acknowledged goes after the next of them: one the air
        # keeps losing (a weak node, neighbours' frames) must not hold back every later round and STATUS for good
        # (tree-health: a probe's first READINGS lost 7 times, and no STATUS of it ever went). Events and answers
        # keep their order: an alarm's changes must arrive as they happened
        index = 1 if len(queue) > 1 and queue[0][_COUNTER : _COUNTER + 4] == self.again and _rank(queue[0])[0] == 3 else 0
        frame = queue[index]
        airtime = airtime_us(len(frame), self.sf)
        if self.duty.wait_ms(channel, now) or not self.duty.spend(channel, airtime, now):
            return  # the sub-band is closed: the frame waits (wait() sleeps until it opens)
        queue.pop(index)
        # ALOHA needs chance: two nodes whose time-offs end together (woken by one event: a power cut
        # ending, a flood, a collision) must not go on air together each time (protocols/lora.py)
        self.not_before = now + self.duty.wait_ms(channel, now) + _chance(airtime)
        self.chanced = False
        self.radio.configure(channel, self.sf, power_dbm=self.power)
        self.radio.send(frame)
        self.aired = self.again = frame[_COUNTER : _COUNTER + 4] if frame[_FLAGS] & F_ACK_REQ else None
        self.rx_sf = self.sf
        self.tx += 1
        self.silent += 1
        self.state = _TX
        self.since = now
        self.until = now + (airtime + 999) // 1000

    def advise(self, key, value):
        # A CONFIG key of link adaptation (SPEC.md 5.8): None once taken (from the next uplink), else why not.
        if key == "sf":
            low, high = SF_MIN, SF_MAX
        elif key == "tx_power":
            low, high = MIN_POWER_DBM, MAX_POWER_DBM
        else:
            low, high = _MARGIN_MIN, _MARGIN_MAX
        if type(value) is not int or not low <= value <= high:  # a bool is not an int here
            return "want int %d..%d" % (low, high)
        if key == "sf":
            self.sf = value
        elif key == "tx_power":
            self.power = value
        if self.link is None:
            self.link = {}
        self.link[key] = value
        self.silent = 0
        return None

    def report(self, now_ms):
        # STATUS `air` (SPEC.md 5.7), its keys numbered: sf and power are those of the next uplink
        air = {_AIR_TX: self.tx, _AIR_TX_MS: self.tx_ms, _AIR_RX: self.rx, _AIR_RX_MS: self.rx_ms, _AIR_DROPPED: self.dropped}
        air[_AIR_SF] = self.sf
        air[_AIR_POWER] = self.power
        air[_AIR_FALLBACK] = self.fallback
        if self.link is not None and "margin_db" in self.link:
            air[_AIR_MARGIN] = self.link["margin_db"]
        return air
