"""The session state machine (SPEC.md §6.7): what a sender and a receiver do, as tables.

Sans-I/O like the rest of protocols/: no port, no clock, no randomness of its own.
Callers pass `now` (milliseconds, any growing integer clock: the node's uptime, the
gateway's monotonic ms) and `jitter(span)` (a random integer 0..span). Used by the
node firmware, the gateway's per-node sessions and (later) the LoRa bridge.

Outbox(counter, capacity, on_reject) -- the reliable sender
    counter:   a counter source with take() -> int or None (none left) and peek() -> int
               (the node's PersistentCounter, the gateway's per-node reserved counter).
    on_reject: NODE_ON_REJECT or GATEWAY_ON_REJECT (REJECT reason -> what to do).
    may_send()                  the span rule (SPEC.md §4.2): the next counter stays < WINDOW - 1
                                above the oldest frame kept. A node asks before every frame (the
                                gateway windows them all); a gateway before each tracked request
                                only (a node does not window ACK, TIME, REJECT: NODE_RX).
                                The caller takes the counter from its source (counter.take()).
    add(counter, wire, now, key=None, deadline=None, wait=None)
                                keep a frame sent with ACK_REQ (call it BEFORE writing the
                                bytes). `wire` is what SEND gives back: a node's very bytes;
                                the gateway's command, which its link encodes to the same
                                bytes every time (same counter, same fields). Full: the
                                oldest frame gives way (counted in `dropped`, no event: a
                                gateway sizes `capacity` above what it keeps in flight).
                                With a key (a correlation key, e.g. ("c", COMMAND id)) it is a
                                tracked request: `deadline` (ms, or None) ends every wait with
                                EXPIRED; `wait` (ms) is how long the response may take after the
                                ACK before the request is resent (None: no response expected,
                                the request is done when ACKed).
    acked(counters, now)        -> [events]: DELIVERED for tracked requests (then DONE if no
                                response is awaited); untracked frames are simply forgotten.
    answered(key)               -> RESULT event (the request is done; also when its ACK was
                                lost), or None if no request has that key (a late or repeated
                                response).
    rejected(reason, counter)   -> an event or None, per the on_reject table; NEED_HELLO whether
                                or not the frame is still kept, the others only for a kept frame.
    due(now, jitter, link=True) -> [events]: SEND (a retransmission: write `data`, the same
                                bytes, same counter) with backoff 2 s doubling to 60 s +-25 %;
                                EXPIRED for a tracked request past its deadline (removed).
                                link=False (no port): deadlines only, nothing resent.
    next_due(link=True)         -> the earliest retry (none without a link) or deadline (ms), None
                                when there is none: a caller may sleep until then.
    counters                    the counters of the frames kept, oldest first (read only).
    drop_oldest(), forget(counter): the store itself.
    dropped, retransmits: counters for STATUS.

Inbox(table, window=None) -- the receiver (window: a protocols.window.CounterWindow, default a new one)
    decide(mtype, counter, flags) -> actions (A_* bits) from the table row for the message
    type and the window verdict (NEW, DUPLICATE, STALE). It applies A_ACCEPT and A_RESET
    to its window itself; every other bit is for the caller, who acts in this order:
    A_REJECT_STALE (answer REJECT stale, nothing else), A_PERSIST (write the window to
    durable storage first), A_APPLY (hand the message to the application), A_ACK (send
    ACK for the counter; set only if the frame had ACK_REQ), A_REPLAY (re-send the stored
    answer to this request), A_LATER (call window.accept(counter) and ACK once the frame
    is durable). NODE_RX and GATEWAY_RX are the two tables, 3 bytes (NEW, DUPLICATE,
    STALE) per message type 0x00-0x0F; a type with no row of its own has row 0's.

Events are 4-tuples (kind, counter, key, data):
    (SEND, counter, key, wire)      (DELIVERED, counter, key, None)  (DONE, counter, key, None)
    (RESULT, counter, key, None)    (EXPIRED, counter, key, phase)   phase 0: never ACKed, 1: ACKed
    (NEED_HELLO, counter, None, reason)   say HELLO (once), keep every frame
    (GAVE_UP, counter, key, reason)       removed and counted in `dropped`
    (RENUMBER, counter, key, reason)      removed; the caller moves its counter ahead and sends
                                          the request again as a new frame (stale at the node)
"""

from ._compat import const
from .frame import WINDOW

if not const(1):  # never true: for the type checker only (no typing module on MicroPython)
    pass

# Spelled out here rather than imported: every imported or public name is an entry in this
# module's globals on a node's heap; underscored const() names cost nothing there.
# tests/test_session.py checks them against messages, errors and frame.
_ACK_REQ = const(0x02)  # frame.F_ACK_REQ
_HELLO = const(0x01)  # messages.HELLO ...
_READINGS = const(0x02)
_ACK = const(0x03)
_TIME = const(0x04)
_CONFIG = const(0x06)
_COMMAND = const(0x07)
_REJECT = const(0x0C)
_E_AUTH = const(10)  # errors.E_AUTH ...
_E_STALE = const(11)
_E_UNKNOWN_NODE = const(12)
_FIRST_RETRY_MS = const(2000)  # SPEC.md §4.2: first retransmission after 2 s
_MAX_RETRY_MS = const(60000)  # doubling up to 60 s

# Event kinds; the non-zero REJECT actions are event kinds too.
KEEP = const(0)  # REJECT action: resend as before, no event
SEND = const(1)
DELIVERED = const(2)
DONE = const(3)
RESULT = const(4)
EXPIRED = const(5)
NEED_HELLO = const(6)  # REJECT action: say HELLO, keep the frames
GAVE_UP = const(7)  # REJECT action: resending cannot help: forget the frame, count it
RENUMBER = const(8)  # REJECT action: the receiver lost its window: new counter, the same request

# What a sender does with a REJECT naming one of its frames (SPEC.md §5.12, §6.7):
# reason -> action; a reason not listed: GAVE_UP (version, type, cbor, schema, limit, ...).
# auth: neither side sends AUTH frames yet, so the line flipped that bit: resending helps.
NODE_ON_REJECT = {_E_STALE: NEED_HELLO, _E_UNKNOWN_NODE: NEED_HELLO, _E_AUTH: KEEP}
GATEWAY_ON_REJECT = {_E_STALE: RENUMBER, _E_AUTH: KEEP}

# Receiver actions (bits).
A_ACCEPT = const(1)  # the counter enters the window now
A_ACK = const(2)  # answer with ACK naming the counter (only if the frame had ACK_REQ)
A_APPLY = const(4)  # hand the message to the application
A_PERSIST = const(8)  # write the window durably before A_APPLY (node: before executing)
A_REPLAY = const(16)  # a repeated request: re-send the stored answer, do not apply again
A_REJECT_STALE = const(32)  # answer REJECT stale; nothing else
A_RESET = const(64)  # the window restarts at this counter (HELLO only)
A_LATER = const(128)  # accept and ACK once the frame is durable (READINGS, SPEC.md §4.2)
_HANDLE = const(5)  # A_ACCEPT | A_APPLY
_REQUEST = const(15)  # A_ACCEPT | A_APPLY | A_PERSIST | A_ACK
_TYPES = const(16)  # rows of a table: message types 0x00 .. 0x0F

# Rows: message type -> (actions if NEW, if DUPLICATE, if STALE), indexed by window.NEW/DUPLICATE/STALE.
# Row 0: every type not listed. (A_APPLY,) * 3: idempotent, applied whatever the window says and
# never entered into it (so a gateway that lost its counter can still ACK a node).
_NODE_ROWS = {
    0: (0, 0, 0),  # a type that only travels upstream, addressed to this node: ignored
    _ACK: (A_APPLY, A_APPLY, A_APPLY),
    _TIME: (A_APPLY, A_APPLY, A_APPLY),
    _REJECT: (A_APPLY, A_APPLY, A_APPLY),
    _COMMAND: (_REQUEST, A_ACK | A_REPLAY, A_REJECT_STALE),
    _CONFIG: (_REQUEST, A_ACK | A_REPLAY, A_REJECT_STALE),
}
_GATEWAY_ROWS = {
    0: (_HANDLE | A_ACK, A_ACK, A_REJECT_STALE),  # STATUS, CONFIG report, COMMAND_RESULT, LOG, TIME, RADIO_RX, REJECT
    _HELLO: (_HANDLE | A_ACK, A_ACK, A_RESET | A_APPLY | A_ACK),
    _READINGS: (A_LATER | A_APPLY, A_ACK, A_REJECT_STALE),
    _ACK: (A_APPLY, A_APPLY, A_APPLY),  # acknowledgements of downlink frames (Outbox.acked)
}


def _flat(rows: dict) -> bytes:
    # The rows as 3 bytes per type 0 .. _TYPES - 1: one small object on a node's heap,
    # and the dicts above are garbage once the module is loaded.
    table = bytearray(3 * _TYPES)
    for mtype in range(_TYPES):
        table[3 * mtype : 3 * mtype + 3] = bytes(rows.get(mtype, rows[0]))
    return bytes(table)


NODE_RX = _flat(_NODE_ROWS)
GATEWAY_RX = _flat(_GATEWAY_ROWS)
del _NODE_ROWS, _GATEWAY_ROWS, _flat


class Inbox:
    def __init__(self, table: bytes, window: object = None) -> None:
        if window is None:
            from .window import CounterWindow  # here: a node builds its Inbox only for a COMMAND or CONFIG

            window = CounterWindow()
        self.table = table
        self.window: CounterWindow = window  # type: ignore[assignment]

    def decide(self, mtype: int, counter: int, flags: int) -> int:
        actions = self.table[3 * (mtype if mtype < _TYPES else 0) + self.window.check(counter)]
        if actions & A_RESET:
            self.window.reset(counter)
        elif actions & A_ACCEPT:
            self.window.accept(counter)
        if not flags & _ACK_REQ:
            actions &= ~A_ACK
        return actions


class Outbox:
    # Index-aligned lists, oldest first: no per-frame object on a node's small heap;
    # a frame is kept as the very bytes that were sent. Tracked requests (the gateway's)
    # have a [key, deadline, wait, phase] entry in _tracked; a node has none.
    def __init__(self, counter: object, capacity: int, on_reject: dict = NODE_ON_REJECT) -> None:
        self.counter = counter
        self.capacity = capacity
        self.on_reject = on_reject
        self.counters: list = []
        self._wires: list = []
        self._due: list = []  # now-clock ms when due again
        self._delays: list = []  # current retry delay, ms
        self._tracked: dict = {}
        self._aired: set = set()  # counters whose first airing made them due at once (aired)
        self.dropped = 0
        self.retransmits = 0

    def may_send(self) -> bool:
        following = self.counter.peek()  # type: ignore[attr-defined]
        # min, not the first kept: a gateway that restarted keeps its requests in the order they were
        # made, and one renumbered (REJECT stale) has a counter above those made after it.
        oldest = min(self.counters) if self.counters else None
        return following is not None and (oldest is None or following - oldest < WINDOW - 1)

    def add(self, counter: int, wire: object, now: int, key: object = None, deadline: int | None = None, wait: int | None = None) -> None:
        if len(self.counters) >= self.capacity:
            self.drop_oldest()
        kept = len(self.counters)
        columns = (self.counters, self._wires, self._due, self._delays)
        try:
            self.counters.append(counter)
            self._wires.append(wire)
            self._due.append(now + _FIRST_RETRY_MS)
            self._delays.append(_FIRST_RETRY_MS)
            if key is not None:
                self._tracked[counter] = [key, deadline, wait, 0]
        except MemoryError:  # a list could not grow: all stay as they were, aligned
            for column in columns:
                del column[kept:]
            raise

    def drop_oldest(self) -> None:
        # A full store, or a heap too full to go on: the oldest frame gives way, counted.
        if self.counters:
            self.forget(self.counters[0])
            self.dropped += 1

    def forget(self, counter: int) -> bool:
        if counter not in self.counters:
            return False
        index = self.counters.index(counter)
        for column in (self.counters, self._wires, self._due, self._delays):
            column.pop(index)
        self._tracked.pop(counter, None)
        self._aired.discard(counter)
        return True

    def acked(self, counters: list, now: int) -> list:
        events = []
        for counter in counters:
            entry = self._tracked.get(counter)
            if entry is None:
                self.forget(counter)
            elif entry[3] == 0:  # a tracked request's first ACK: delivered; now its response is awaited
                events.append((DELIVERED, counter, entry[0], None))
                if entry[2] is None:
                    self.forget(counter)
                    events.append((DONE, counter, entry[0], None))
                else:
                    entry[3] = 1
                    index = self.counters.index(counter)
                    self._due[index] = now + entry[2]
                    self._delays[index] = entry[2]
        return events

    def aired(self, counter: int, now: int) -> None:
        # On the air (SPEC.md §4.2, §5.11): the frame went out and its receive windows closed without its ACK.
        # It is due again now; the link's duty cycle decides when it goes. A doubling clock started when the
        # frame was handed to the link would have grown while it waited for its duty cycle, and a frame lost
        # on air would wait a minute more. A request already acknowledged (awaiting its answer) is left be.
        # Its first airing only: after that the doubling delay runs from now, so the oldest unanswered frame does
        # not take every uplink while the gateway cannot answer (its bridge out of budget) and newer ones wait.
        if counter in self.counters and counter not in self._aired:
            entry = self._tracked.get(counter)
            if entry is None or entry[3] == 0:
                self._aired.add(counter)
                index = self.counters.index(counter)
                self._due[index] = now
                self._delays[index] = _FIRST_RETRY_MS

    def unaired(self, counter: int) -> bool:
        # Kept, and no airing of it has ended yet (aired): on the air, it never went, or it is going now.
        return counter in self.counters and counter not in self._aired

    def answered(self, key: object) -> tuple | None:
        for counter in self._tracked:
            if self._tracked[counter][0] == key:
                self.forget(counter)
                return (RESULT, counter, key, None)
        return None

    def rejected(self, reason: int, counter: int | None) -> tuple | None:
        action = self.on_reject.get(reason, GAVE_UP)
        if action == NEED_HELLO:  # the peer does not know this sender, whichever frame it names
            return (NEED_HELLO, counter, None, reason)
        if action == KEEP or counter is None or counter not in self.counters:
            return None
        entry = self._tracked.get(counter)
        key = entry[0] if entry else None
        self.forget(counter)
        if action == GAVE_UP:
            self.dropped += 1
        return (action, counter, key, reason)

    def next_due(self, link: bool = True) -> int | None:
        # When due(now, jitter, link) next has something: the earliest retry (none without a
        # link) or deadline (ms); None when there is none.
        times = [entry[1] for entry in self._tracked.values() if entry[1] is not None]
        if link:
            times += self._due
        return min(times) if times else None

    def due(self, now: int, jitter: object, link: bool = True) -> list:
        # Frames whose retry time has come, oldest first, rescheduled with doubling delays
        # and +-25 % jitter (SPEC.md §4.2); requests past their deadline, removed.
        events = []
        index = 0
        while index < len(self.counters):
            counter = self.counters[index]
            entry = self._tracked.get(counter)
            if entry is not None and entry[1] is not None and now >= entry[1]:
                self.forget(counter)
                events.append((EXPIRED, counter, entry[0], entry[3]))
                continue
            if link and now >= self._due[index]:
                delay = min(self._delays[index] * 2, _MAX_RETRY_MS)
                self._delays[index] = delay
                self._due[index] = now + delay - delay // 4 + jitter(delay // 2)  # type: ignore[operator]
                self.retransmits += 1
                events.append((SEND, counter, entry[0] if entry else None, self._wires[index]))
            index += 1
        return events
