"""When each node's commands go on the wire: FIFO per node, a bounded number in flight, expired at their ttl.

The resending is not here: each node has a protocols.session.Outbox (SPEC.md §6.7, the same sender
the node firmware runs) that keeps every request sent and not answered, by counter, with its
correlation key, its deadline and its answer wait, and says when it is due again. This module
keeps what the protocol does not know: which commands wait their turn, in what order, how many
may fly, and the ttl of those that never left.

Sans-I/O: the caller passes the clocks (monotonic seconds for waits, unix seconds for ttls, which
must hold across restarts) and whether a node has a link, and does what step() returns (store,
then write, then publish). The rules:

- A node's commands start in the order they were stored, while fewer than `in_flight` of its
  commands are `sent` or `delivered`, and only under the span rule (Outbox.may_send, SPEC.md
  §4.2 (6)): a new request's counter stays less than a window above the oldest one kept (not
  ACKed, or ACKed and its result awaited), or the node would take that one's repeat as STALE.
  A command's counter is taken and its frame registered in the Outbox here, before the caller
  stores the counter and writes the frame.
  A node with no link (its port vanished, or it never said HELLO since the start) starts
  nothing: its commands stay `queued`, those in flight are not resent; their ttls still run.
- Resends (the Outbox): the same frame (same counter, same wire id) 2 s after it was sent,
  then 4, 8 ... up to 60 s apart, each wait within +-25 %. Once ACKed (`delivered`) the result
  may take `result_wait_s`, then the request is resent (the node answers the duplicate with its
  stored result), the next wait twice as long.
- At its ttl a command not final is `expired` (those in flight by their Outbox deadline, those
  waiting by the wall clock): a result after that is not taken.
- A REJECT naming a request's counter (the Outbox's GATEWAY_ON_REJECT table): `stale` -> the
  same request under a new counter (the sessions moved the node's counters ahead first);
  `auth` -> kept; any other -> the command fails.

With in_flight above 1, a command lost on the line can be overtaken by the next one: per-node
order is the order commands start, not always the order the node executes them (in_flight = 1
keeps that order too, at a command per round trip).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from protocols import session

from .command_book import DELIVERED, EXPIRED, QUEUED, SENT, Command

RESULT_WAIT_S = 10.0  # after the ACK, how long a result may take before the command is resent

SEND, RESEND, EXPIRE, FAIL = "send", "resend", "expire", "fail"


class CounterSource(Protocol):
    """A node's downlink counters (gateway/sessions.py over gateway/counters.py): None while a reservation
    is not on disk yet (or there is no session)."""

    def take(self) -> int | None: ...

    def peek(self) -> int | None: ...


def key_of(command: Command) -> tuple[str, int]:
    """The command's correlation key (SPEC.md §4.2)."""
    assert command.wire_id is not None
    return _key(command.name == "config", command.wire_id)


def _key(config: bool, wire_id: int) -> tuple[str, int]:
    # CONFIG reports answer CONFIG sets, COMMAND_RESULTs COMMANDs, by wire id.
    return ("config" if config else "command", wire_id)


class Scheduler:
    def __init__(
        self,
        in_flight: int,
        counters: Callable[[str], CounterSource],
        rng: random.Random | None = None,
        result_wait_s: float = RESULT_WAIT_S,
    ) -> None:
        self.in_flight = in_flight
        self._counters = counters
        self._rng = rng or random.Random()
        self._wait_ms = round(result_wait_s * 1000)
        self._nodes: dict[str, dict[str, Command]] = {}  # node -> id -> command not final, in the order stored
        self._outboxes: dict[str, session.Outbox] = {}
        self._keyed: dict[str, dict[tuple[str, int], Command]] = {}  # node -> correlation key -> command in flight
        self._renumber: dict[str, list[Command]] = {}  # in flight, out of the Outbox: waiting for a new counter

    def states(self) -> dict[str, int]:
        """The commands not final, by state (queued, sent, delivered)."""
        counts: dict[str, int] = {QUEUED: 0, SENT: 0, DELIVERED: 0}  # every state there, 0 or not: scripts index it
        for commands in self._nodes.values():
            for command in commands.values():
                counts[command.state] = counts.get(command.state, 0) + 1
        return counts

    def add(self, command: Command, now: float, wall: float) -> list[tuple[str, Command]]:
        """A command not final: new (`queued`), or loaded at start. One in flight (`sent`/`delivered`, with the
        counter it was stored with) is registered again and returned as (RESEND, command): write it at once."""
        self._nodes.setdefault(command.node, {})[command.id] = command
        if command.state not in (SENT, DELIVERED):
            return []
        if command.counter is None or command.expires <= wall:
            # No counter stored: it never went out under one, it takes one at the next step. Its ttl passed while
            # the gateway was down: not written again, the next step expires it (it waits there for that too).
            self._renumber.setdefault(command.node, []).append(command)
            return []
        self._register(command, now, wall)
        command.attempts += 1
        return [(RESEND, command)]

    def commands(self, node: str) -> list[Command]:
        return list(self._nodes.get(node, {}).values())

    def in_flight_of(self, node: str) -> int:
        return sum(1 for command in self._nodes.get(node, {}).values() if command.state in (SENT, DELIVERED))

    def step(self, now: float, wall: float, has_link: Callable[[str], bool]) -> list[tuple[str, Command]]:
        """What is due, per node: (EXPIRE, command) first, then (RESEND, command) and (SEND, command) in order.
        The commands' state, attempts, counter and `at` are changed here; the caller stores, then writes."""
        out: list[tuple[str, Command]] = []
        ms = _ms(now)
        for node, commands in list(self._nodes.items()):
            for command in list(commands.values()):
                if command.state == QUEUED and command.expires <= wall:
                    out.append((EXPIRE, self._expire(command, wall)))
            link = has_link(node)
            outbox = self._outboxes.get(node)
            if outbox is not None:
                for kind, _counter, key, _data in outbox.due(ms, self._jitter, link):
                    command = self._keyed[node][key]
                    if kind == session.EXPIRED:
                        out.append((EXPIRE, self._expire(command, wall)))
                    else:  # SEND: a retransmission
                        command.attempts += 1
                        out.append((RESEND, command))
            for command in list(self._renumber.get(node, ())):
                if command.expires <= wall:
                    out.append((EXPIRE, self._expire(command, wall)))
                elif link and self._take(command, now, wall):
                    self._renumber[node].remove(command)
                    command.attempts += 1
                    out.append((RESEND, command))
            if not link:
                continue
            flying = self.in_flight_of(node)
            for command in commands.values():
                if flying >= self.in_flight:
                    break
                if command.state == QUEUED:
                    if not self._take(command, now, wall):
                        break  # the span rule, or no counter on disk yet: it and those after it wait
                    command.state, command.at, command.attempts = SENT, wall, command.attempts + 1
                    flying += 1
                    out.append((SEND, command))
        return out

    def _jitter(self, span: int) -> int:
        return self._rng.randint(0, span)

    def _take(self, command: Command, now: float, wall: float) -> bool:
        """A new counter for the command and its frame registered, under the span rule; False: not now."""
        outbox = self._outbox(command.node)
        if not outbox.may_send():
            return False
        counter = outbox.counter.take()  # type: ignore[attr-defined]
        if counter is None:  # peeked, so only if the session went in between
            return False
        command.counter = counter
        self._register(command, now, wall)
        return True

    def _register(self, command: Command, now: float, wall: float) -> None:
        # Before the frame is written (SPEC.md §6.7): an ACK or a result for it finds it. The deadline is the
        # ttl on the monotonic clock, so a wall clock set at boot (a Pi without an RTC) does not expire it early.
        assert command.counter is not None
        ms = _ms(now)
        key = key_of(command)
        deadline = ms + max(0, round((command.expires - wall) * 1000))
        self._outbox(command.node).add(command.counter, command, ms, key, deadline, self._wait_ms)
        self._keyed.setdefault(command.node, {})[key] = command

    def _outbox(self, node: str) -> session.Outbox:
        outbox = self._outboxes.get(node)
        if outbox is None:
            # Never full: what flies is bounded here (in_flight; more only after a restart with a smaller one).
            outbox = self._outboxes[node] = session.Outbox(self._counters(node), 1 << 30, session.GATEWAY_ON_REJECT)
        return outbox

    def next_due(self, has_link: Callable[[str], bool]) -> float | None:
        """The earliest resend or deadline (monotonic s), if any: the caller may sleep until then or until
        something happens (queued ttls are looked at on the caller's tick). A node without a link has only
        deadlines: its resends wait for the link (else a resend time past would wake the caller at once, for ever)."""
        due = [outbox.next_due(has_link(node)) for node, outbox in self._outboxes.items()]
        earliest = min((ms for ms in due if ms is not None), default=None)
        return None if earliest is None else earliest / 1000

    def acked(self, node: str, counters: list[int], now: float, wall: float) -> list[Command]:
        """The node ACKed these downlink counters: commands `sent` under them are `delivered`."""
        outbox = self._outboxes.get(node)
        if outbox is None:
            return []
        moved = []
        for kind, _counter, key, _data in outbox.acked(counters, _ms(now)):
            command = self._keyed[node][key]
            if kind == session.DELIVERED and command.state == SENT:  # a DELIVERED one resent after a restart: ACKed again
                command.state, command.at = DELIVERED, wall
                moved.append(command)
        return moved

    def answered(self, node: str, wire_id: int, config: bool) -> Command | None:
        """The command a COMMAND_RESULT (config False) or a CONFIG report (True) with this id answers, if it is
        in flight; the caller makes it final and calls finish()."""
        key = _key(config, wire_id)
        outbox = self._outboxes.get(node)
        if outbox is None or outbox.answered(key) is None:
            return None  # a result resent, or one for a command final already
        return self._keyed[node].pop(key)

    def rejected(self, node: str, reason: int, counter: int) -> tuple[str, Command] | None:
        """A REJECT naming this counter: (RESEND, command) when it goes again under a new counter at the next
        step (`stale`), (FAIL, command) when it cannot succeed (the caller makes it final), None when it
        changes nothing (`auth`, or no request of ours has that counter)."""
        outbox = self._outboxes.get(node)
        event = outbox.rejected(reason, counter) if outbox is not None else None
        if event is None:
            return None
        command = self._keyed[node].pop(event[2])
        if event[0] == session.RENUMBER:
            command.counter = None
            self._renumber.setdefault(node, []).append(command)
            return (RESEND, command)
        return (FAIL, command)

    def _expire(self, command: Command, wall: float) -> Command:
        command.state, command.at = EXPIRED, wall
        self.finish(command)
        return command

    def finish(self, command: Command) -> None:
        """The command is final: out of the schedule and its Outbox."""
        node = command.node
        commands = self._nodes.get(node, {})
        commands.pop(command.id, None)
        keyed = self._keyed.get(node, {})
        if command.wire_id is not None and keyed.get(key_of(command)) is command:
            del keyed[key_of(command)]
            if command.counter is not None:
                self._outboxes[node].forget(command.counter)
        if command in self._renumber.get(node, ()):
            self._renumber[node].remove(command)
        if not commands:  # nothing of the node left: its Outbox is empty too
            for table in (self._nodes, self._outboxes, self._keyed, self._renumber):
                table.pop(node, None)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
