"""When each node's commands go on the wire: FIFO per node, a bounded number in flight, resent with backoff, expired at their ttl.

Sans-I/O: the caller passes the clocks (monotonic seconds for waits, unix seconds for ttls,
which must hold across restarts) and whether a node has a link, and does what step() returns
(store, then write, then publish). The rules:

- A node's commands start in the order they were stored, while fewer than `in_flight` of its
  commands are `sent` or `delivered` (sent and not yet answered). A node with no link (its
  port vanished, or it never said HELLO since the start) starts nothing: its commands stay
  `queued`, and those in flight are not resent until it is back; their ttls still run.
- A command not ACKed is resent (the same frame: same counter, same wire id) 2 s after it was
  sent, then 4, 8 ... up to 60 s apart, each wait drawn within +-25 % (SPEC.md §4.2, as the
  nodes' own retransmission): nodes that lost the gateway together are not answered together.
- Once ACKed (`delivered`) a command waits RESULT_WAIT_S for its result, then is resent with
  the same backoff: a node that executed it answers the duplicate with its stored result.
- At its ttl a command that is not final is `expired`: a result after that is not taken.

With in_flight above 1, a command lost on the line can be overtaken by the next one: per-node
order is the order commands start, not always the order the node executes them (in_flight = 1
keeps that order too, at a command per round trip).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .command_book import DELIVERED, EXPIRED, QUEUED, SENT, Command

FIRST_RETRY_S = 2.0
MAX_RETRY_S = 60.0
JITTER = 0.25
RESULT_WAIT_S = 10.0  # after the ACK, how long a result may take before the command is resent

SEND, RESEND, EXPIRE = "send", "resend", "expire"


class Scheduler:
    def __init__(self, in_flight: int, rng: random.Random | None = None, result_wait_s: float = RESULT_WAIT_S) -> None:
        self.in_flight = in_flight
        self._rng = rng or random.Random()
        self._result_wait_s = result_wait_s
        self._nodes: dict[str, dict[str, Command]] = {}  # node -> id -> command not final, in the order stored
        self._due: dict[tuple[str, str], float] = {}  # in flight: when it is resent (monotonic s)
        self._delay: dict[tuple[str, str], float] = {}  # ... and the wait after that resend (before jitter)

    def add(self, command: Command, now: float) -> None:
        """A command not final: new (`queued`), or loaded at start (`sent`/`delivered`: resent at once)."""
        self._nodes.setdefault(command.node, {})[command.id] = command
        if command.state in (SENT, DELIVERED):
            self._due[(command.node, command.id)] = now
            self._delay[(command.node, command.id)] = FIRST_RETRY_S

    def commands(self, node: str) -> list[Command]:
        return list(self._nodes.get(node, {}).values())

    def in_flight_of(self, node: str) -> int:
        return sum(1 for command in self._nodes.get(node, {}).values() if command.state in (SENT, DELIVERED))

    def step(self, now: float, wall: float, has_link: Callable[[str], bool]) -> list[tuple[str, Command]]:
        """What is due: (EXPIRE, command) first, then (RESEND, command) and (SEND, command) per node in order.
        The commands' state, attempts and `at` are changed here; the caller stores and acts."""
        out: list[tuple[str, Command]] = []
        for node, commands in list(self._nodes.items()):
            for command in list(commands.values()):
                if command.expires <= wall:
                    command.state, command.at = EXPIRED, wall
                    self.finish(command)
                    out.append((EXPIRE, command))
            if not has_link(node):
                continue
            flying = 0
            for command in commands.values():
                key = (node, command.id)
                if command.state in (SENT, DELIVERED):
                    flying += 1
                    if self._due[key] <= now:
                        command.attempts += 1
                        self._backoff(key, now)
                        out.append((RESEND, command))
            for command in commands.values():
                if flying >= self.in_flight:
                    break
                if command.state == QUEUED:
                    command.state, command.at, command.attempts = SENT, wall, command.attempts + 1
                    self._delay[(node, command.id)] = FIRST_RETRY_S
                    self._backoff((node, command.id), now)
                    flying += 1
                    out.append((SEND, command))
        return out

    def next_due(self) -> float | None:
        """The earliest resend (monotonic s), if any: the caller may sleep until then or until something happens."""
        return min(self._due.values(), default=None)

    def _backoff(self, key: tuple[str, str], now: float) -> None:
        delay = self._delay.get(key, FIRST_RETRY_S)
        self._due[key] = now + delay * self._rng.uniform(1 - JITTER, 1 + JITTER)
        self._delay[key] = min(delay * 2, MAX_RETRY_S)

    def acked(self, node: str, counters: list[int], now: float, wall: float) -> list[Command]:
        """The node ACKed these downlink counters: commands `sent` under them are `delivered`."""
        moved = []
        wanted = set(counters)
        for command in self._nodes.get(node, {}).values():
            if command.state == SENT and command.counter in wanted:
                command.state, command.at = DELIVERED, wall
                self._due[(node, command.id)] = now + self._result_wait_s
                self._delay[(node, command.id)] = FIRST_RETRY_S
                moved.append(command)
        return moved

    def answered(self, node: str, wire_id: int, config: bool) -> Command | None:
        """The command a COMMAND_RESULT (config False) or a CONFIG report (True) with this id answers, if it is
        in flight; the caller makes it final and calls finish()."""
        for command in self._nodes.get(node, {}).values():
            if command.wire_id == wire_id and (command.name == "config") == config and command.state in (SENT, DELIVERED):
                return command
        return None

    def requeue(self, command: Command) -> None:
        """A first send that could not go (the span rule): `queued` again, tried at a later step."""
        command.state, command.attempts = QUEUED, max(0, command.attempts - 1)
        self._due.pop((command.node, command.id), None)
        self._delay.pop((command.node, command.id), None)

    def resend_now(self, command: Command, now: float) -> None:
        """Resend at the next step (a REJECT stale: under a new counter), the backoff starting over."""
        self._due[(command.node, command.id)] = now
        self._delay[(command.node, command.id)] = FIRST_RETRY_S

    def by_counter(self, node: str, counter: int) -> Command | None:
        for command in self._nodes.get(node, {}).values():
            if command.counter == counter and command.state in (SENT, DELIVERED):
                return command
        return None

    def finish(self, command: Command) -> None:
        """The command is final: out of the schedule."""
        commands = self._nodes.get(command.node, {})
        commands.pop(command.id, None)
        if not commands:
            self._nodes.pop(command.node, None)
        self._due.pop((command.node, command.id), None)
        self._delay.pop((command.node, command.id), None)
