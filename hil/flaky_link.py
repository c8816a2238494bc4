"""A flaky uplink: a TCP proxy on loopback that throttles each direction to a byte rate, delays what
it carries, and cuts every connection through it on a seeded schedule (a cellular modem in a street
cabinet).

Sans-I/O at the core, like hil/faults.py: `LinkPlan` is told the clock and answers how many
bytes may pass each way now, when bytes read now may be passed on (`delay` seconds each way, give
or take up to `jitter`, never overtaking bytes read before: a congested radio link whose round
trip wanders), when the next cut is, and how long nothing changes; it draws each gap between
cuts, and each delay, from its own seeded generator, so a seed gives the same schedule.
`FlakyProxy` does the I/O on one thread with a selector. A cut closes both sides and throws
away whatever the link was still carrying, as a radio link that drops does; the client
connects again when it likes (the link is back at once). Loopback only: it listens on
127.0.0.1 and forwards to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import math
import random
import selectors
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

UP, DOWN = "up", "down"  # client -> server, server -> client
BURST_S = 0.05  # a direction may send this many seconds' worth of bytes at once
LINK_BUFFER = 65536  # bytes the link holds per direction before it stops reading


class LinkPlan:
    """Throttle and cut schedule of one link; sans-I/O (the caller passes the clock)."""

    def __init__(
        self, rates: dict[str, float | None], cut_every: float | None, seed: int, now: float, delay: float = 0.0, jitter: float = 0.0
    ) -> None:
        self.rates = rates  # bytes/s per direction; None: unthrottled
        self.cut_every = cut_every
        self.delay = delay  # seconds each way
        self.jitter = jitter  # the delay varies by up to this much either way
        self._rng = random.Random(seed)
        self._delay_rng = random.Random(seed + 1)  # its own: the cut times do not depend on the traffic
        self._released = dict.fromkeys((UP, DOWN), now)  # when the bytes read last may pass
        self._tokens = dict.fromkeys((UP, DOWN), 0.0)
        self._at = dict.fromkeys((UP, DOWN), now)
        self.next_cut = now + self._gap() if cut_every else math.inf

    def _gap(self) -> float:
        assert self.cut_every is not None
        return self.cut_every * self._rng.uniform(0.8, 1.2)

    def allowance(self, direction: str, now: float) -> int:
        """Bytes that may pass in this direction now."""
        rate = self.rates.get(direction)
        if rate is None:
            return LINK_BUFFER
        self._tokens[direction] = min(rate * BURST_S, self._tokens[direction] + rate * (now - self._at[direction]))
        self._at[direction] = now
        return int(self._tokens[direction])

    def spend(self, direction: str, sent: int) -> None:
        if self.rates.get(direction) is not None:
            self._tokens[direction] -= sent

    def release_at(self, direction: str, now: float) -> float:
        """When bytes read now in this direction may be passed on; never before bytes read earlier (TCP keeps order)."""
        if not self.delay and not self.jitter:
            return now
        late = max(0.0, self.delay + self._delay_rng.uniform(-self.jitter, self.jitter))
        self._released[direction] = max(self._released[direction], now + late)
        return self._released[direction]

    def cut_due(self, now: float) -> bool:
        """True once per cut, when it is due; the next one is scheduled from now."""
        if now < self.next_cut:
            return False
        self.next_cut = now + self._gap()
        return True

    def idle(self, now: float, waiting: dict[str, bool], due: float = math.inf) -> float:
        """Seconds until a cut is due, a waiting direction may send a byte again, or delayed bytes are due."""
        wait = min(self.next_cut, due) - now
        for direction, pending in waiting.items():
            rate = self.rates.get(direction)
            if pending and rate is None:  # unthrottled and still pending: the receiver is slow, look again soon
                wait = min(wait, 0.005)
            elif pending and rate:
                wait = min(wait, max(0.0, 1 - self._tokens[direction]) / rate)
        return max(0.001, min(wait, 0.5))


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket
    buffers: dict[str, bytearray] = field(default_factory=lambda: {UP: bytearray(), DOWN: bytearray()})
    # Bytes read but not yet due (LinkPlan.release_at): (when due, bytes), in the order read.
    delayed: dict[str, deque[tuple[float, bytes]]] = field(default_factory=lambda: {UP: deque(), DOWN: deque()})


class FlakyProxy:
    """Listens on 127.0.0.1:port, forwards to 127.0.0.1:target through a LinkPlan."""

    def __init__(
        self,
        target_port: int,
        rate: float | None = None,
        cut_every: float | None = None,
        seed: int = 1,
        rate_down: float | None = -1.0,
        delay: float = 0.0,
        jitter: float = 0.0,
    ) -> None:
        """rate: bytes/s each way (rate_down, if given, for the server -> client direction); delay: seconds
        each way, varying by up to jitter either way (a round trip of 2 x delay, give or take 2 x jitter)."""
        self.target_port = target_port
        self._rates = {UP: rate, DOWN: rate if rate_down == -1.0 else rate_down}
        self._cut_every = cut_every
        self._delay = (delay, jitter)
        self._seed = seed
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._pairs: list[_Pair] = []
        self._stop = threading.Event()
        self._cut_now = threading.Event()
        self._thread: threading.Thread | None = None
        self.cuts = 0  # connections cut by the schedule
        self.carried = dict.fromkeys((UP, DOWN), 0)  # bytes delivered each way

    def start(self) -> FlakyProxy:
        self._thread = threading.Thread(target=self._run, name="flaky-link", daemon=True)
        self._thread.start()
        return self

    def cut(self) -> None:
        """Cut the connections through the link now (within a turn of the proxy thread)."""
        self._cut_now.set()

    def set_link(
        self,
        rate: float | None = None,
        cut_every: float | None = None,
        rate_down: float | None = -1.0,
        delay: float = 0.0,
        jitter: float = 0.0,
    ) -> None:
        """From now on this link (as in the constructor; rate 0 carries nothing); takes effect within half a second."""
        self._cut_every = cut_every
        self._delay = (delay, jitter)
        self._rates = {UP: rate, DOWN: rate if rate_down == -1.0 else rate_down}

    def set_good(self) -> None:
        """From now on a good link: no throttle, no delay, no cuts."""
        self.set_link()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for pair in list(self._pairs):
            self._drop(pair)
        self._listener.close()

    def __enter__(self) -> FlakyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the proxy thread

    def _run(self) -> None:
        plan = LinkPlan(self._rates, self._cut_every, self._seed, time.monotonic(), *self._delay)
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if plan.rates is not self._rates:  # set_link(), set_good()
                    plan = LinkPlan(self._rates, self._cut_every, self._seed, time.monotonic(), *self._delay)
                now = time.monotonic()
                due, asked = plan.cut_due(now), self._take_cut()
                if (due or asked) and self._pairs:
                    self.cuts += 1
                    for pair in list(self._pairs):
                        self._drop(pair, selector)
                waiting = {UP: False, DOWN: False}
                for pair in list(self._pairs):
                    self._pump(pair, plan, now, waiting, selector)
                delayed = min((queue[0][0] for pair in self._pairs for queue in pair.delayed.values() if queue), default=math.inf)
                for key, _events in selector.select(plan.idle(now, waiting, delayed)):
                    if key.fileobj is self._listener:
                        self._accept(selector)
                    else:
                        self._receive(key.data, key.fileobj, selector, plan)  # type: ignore[arg-type]

    def _take_cut(self) -> bool:
        asked = self._cut_now.is_set()
        self._cut_now.clear()
        return asked

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            client, _address = self._listener.accept()
        except BlockingIOError:
            return
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
        except OSError:
            client.close()  # nothing behind the link: the client sees its connection refused
            return
        pair = _Pair(client, server)
        for sock in (client, server):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, pair)
        self._pairs.append(pair)

    def _receive(self, pair: _Pair, sock: socket.socket, selector: selectors.BaseSelector, plan: LinkPlan) -> None:
        direction = UP if sock is pair.client else DOWN
        room = LINK_BUFFER - len(pair.buffers[direction]) - sum(len(data) for _due, data in pair.delayed[direction])
        if room <= 0:
            return  # the link is full; the sender's kernel buffers the rest
        try:
            data = sock.recv(room)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # one side closed: so does the link, with whatever it still carried
            self._drop(pair, selector)
            return
        pair.delayed[direction].append((plan.release_at(direction, time.monotonic()), data))

    def _pump(self, pair: _Pair, plan: LinkPlan, now: float, waiting: dict[str, bool], selector: selectors.BaseSelector) -> None:
        for direction, sock in ((UP, pair.server), (DOWN, pair.client)):
            buffer = pair.buffers[direction]
            delayed = pair.delayed[direction]
            while delayed and delayed[0][0] <= now:
                buffer += delayed.popleft()[1]
            if not buffer:
                continue
            allowed = min(len(buffer), plan.allowance(direction, now))
            if allowed <= 0:
                waiting[direction] = True
                continue
            try:
                sent = sock.send(buffer[:allowed])
            except BlockingIOError:
                sent = 0
            except OSError:
                self._drop(pair, selector)
                return
            del buffer[:sent]
            plan.spend(direction, sent)
            self.carried[direction] += sent
            waiting[direction] = waiting[direction] or bool(buffer)

    def _drop(self, pair: _Pair, selector: selectors.BaseSelector | None = None) -> None:
        if pair in self._pairs:
            self._pairs.remove(pair)
        for sock in (pair.client, pair.server):
            if selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(sock)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, not a FIN
            sock.close()
