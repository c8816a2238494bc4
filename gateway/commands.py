"""The command life cycle over MQTT: a request in, a tracked command down to the node, its progress out.

    {prefix}/{gw}/nodes/{node}/command      {"id", "name", "args", "ttl_s"}   (gateway/command_request.py)
    {prefix}/{gw}/nodes/{node}/config/set   {"interval": 30, ...}: a command named `config`
    {prefix}/{gw}/nodes/{node}/command/{id} retained, QoS 1: {"id", "name", "state", "at", "attempts", "result", "error"}

One task does everything in order: a request is read and checked, stored (gateway/command_book.py),
then acknowledged to the broker (paho manual ack, on the connection it came on), then its state is
published; the scheduler (gateway/command_scheduler.py, over each node's protocols.session.Outbox)
says which commands go on the wire and when they are resent; a command's counter is stored before
its frame is written; ACKs, results, CONFIG reports and a node's REJECTs (gateway/sessions.py,
DownlinkListener) move commands on, and every change is stored before it is published. Nothing a
client publishes raises here: every request ends as a state on its topic (`rejected` with an error
that says why) and, for what cannot be tracked by its own id, a log line.

Decisions (README, "Commands"):
- A request whose id is missing gets one (`gw.` and 16 hex digits); one whose id is not 1-64 of
  [A-Za-z0-9._-] (it could not be a topic level) is rejected under an id the gateway makes, with an
  error saying so, and logged with that id.
- The same id again for the same node is the same request: never run twice; its current state is
  published again. A broker's redelivery (DUP) of an id-less request is known by its packet id and bytes.
- Bounded (command_book.py): a node's commands not final, and the rows in all; a request that does
  not fit is rejected ("too many commands ...") and not stored.
- Final states are kept KEEP_FINAL_S, then their retained message is cleared. When the broker did not
  keep our session (restarted without persistence: its retained messages are gone too), every state
  kept is published again.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from protocols import errors as perr
from protocols import messages

from . import command_request as req
from .command_book import FAILED, QUEUED, REJECTED, SUCCEEDED, Command, CommandBook, Full
from .command_scheduler import EXPIRE, FAIL, RESEND, Scheduler
from .sessions import NodeView
from .store import StoreError
from .store_worker import StoreWorker
from .uplink import Inbound

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0
TICK_S = 1.0  # ttls are looked at this often at least
OUTCOMES = {
    messages.OUTCOME_UNKNOWN: "unknown command",
    messages.OUTCOME_BAD_ARGS: "bad args",
    messages.OUTCOME_FAILED: "failed",
    messages.OUTCOME_BUSY: "busy",
}


class Nodes(Protocol):
    """What the commands need of the sessions (gateway/sessions.py: Sessions.view, take_counter, peek_counter,
    send_request)."""

    def view(self, node: str) -> NodeView | None: ...

    def take_counter(self, node: str) -> int | None: ...

    def peek_counter(self, node: str) -> int | None: ...

    def send_request(self, node: str, counter: int, mtype: int, fields: dict[str, Any], only_under: bytes | None = None) -> bool: ...


class Commands:
    def __init__(
        self,
        worker: StoreWorker,
        topic_base: str,
        nodes: Nodes,
        publish_retained: Callable[[str, bytes], None],
        ack: Callable[[int, int, int], bool],
        in_flight: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._worker = worker
        self._base = topic_base
        self._nodes = nodes
        self._publish = publish_retained
        self._ack = ack
        self._clock = clock
        self._wall = wall
        self.scheduler = Scheduler(in_flight, lambda node: _Counters(nodes, node), rng)
        self._resend: list[tuple[str, Command]] = []  # in flight at start: written again at once
        self._inbox: collections.deque[Inbound] = collections.deque()
        # Changed by an event, to store and publish: each change's document, so a command ACKed and answered
        # within one turn is still published as delivered, then succeeded.
        self._dirty: collections.deque[tuple[Command, bytes]] = collections.deque()
        self._republish = False
        self._wake = asyncio.Event()
        self.book: CommandBook | None = None
        self._own: collections.deque[Command] = collections.deque()  # the gateway's own commands (submit), to store
        self.on_final: list[Callable[[Command], None]] = []  # told of every command that ends (gateway/rekey.py)
        # Asked before each frame of a command is written: a reason it must not go (it fails with it), or None
        self.vetoes: list[Callable[[Command], str | None]] = []
        # The key a command's frame must go out tagged with, or None (a rekey: the key it is wrapped under)
        self.only_under: Callable[[Command], bytes | None] = lambda command: None
        self.resumed: list[Command] = []  # the commands not final found at open(), as they were loaded

    async def open(self) -> None:
        """The book, and every command not final back in the schedule (those in flight are resent at once,
        under the counter they were stored with)."""
        self.book = await self._worker.call(CommandBook, self._worker.store)
        now, wall = self._clock(), self._wall()
        for command in await self._worker.call(self.book.load):
            # Every stored state again, once, before anything new: a state is stored before it is published,
            # so a kill between the two (a result taken, `succeeded` committed, the publish still in memory)
            # left subscribers an older state that a broker keeping our session would never correct
            # (connected() republishes only when the broker lost it). Bounded like the book (max_rows).
            self._publish_state(command)
            if not command.final:
                self._resend += self.scheduler.add(command, now, wall)
                self.resumed.append(command)

    # ------------------------------------------------------------ events (on the event loop, from uplink and sessions)
    # The sessions' DownlinkListener (gateway/sessions.py): called from inside frame handling, so nothing here
    # blocks or raises; what must be stored is queued for the task.

    def message(self, inbound: Inbound) -> None:
        self._inbox.append(inbound)
        self._wake.set()

    def connected(self, session_present: bool) -> None:
        if not session_present:
            self._republish = True
            self._wake.set()

    def hello(self, node: str, commands: dict[str, str] | None) -> None:
        self._wake.set()  # its commands may go (a restarted node keeps its window: nothing is sent again for that)

    def link_changed(self, node: str, port: str | None) -> None:
        if port is not None:
            self._wake.set()  # commands waiting for its port go now; with None they wait (step() asks has_link)

    def downlink_ready(self, node: str) -> None:
        self._wake.set()  # its counters are on disk: commands waiting for one go at the next step

    def command_result(self, node: str, result: dict[str, Any]) -> None:
        self.answered(node, messages.COMMAND_RESULT, result)

    def config_report(self, node: str, report: dict[str, Any]) -> None:
        self.answered(node, messages.CONFIG, report)

    def rejected(self, node: str, counter: int, reason: int, detail: str) -> None:
        self.refused(node, {"counter": counter, "reason": reason, "detail": detail})

    def acked(self, node: str, counters: list[int]) -> None:
        for command in self.scheduler.acked(node, counters, self._clock(), self._wall()):
            self._changed(command)

    def answered(self, node: str, mtype: int, fields: dict[str, Any]) -> None:
        wire_id = fields.get("id")
        if type(wire_id) is not int:
            return
        command = self.scheduler.answered(node, wire_id, config=mtype == messages.CONFIG)
        if command is None:
            return  # a result resent, or one for a command that is final already (expired)
        if mtype == messages.CONFIG:
            errors = fields.get("errors")
            if errors:
                command.state, command.error = FAILED, "; ".join("%s: %s" % (key, value) for key, value in errors.items())
            else:
                command.state = SUCCEEDED
            command.result = fields.get("values")
        elif fields["outcome"] == messages.OUTCOME_OK:
            command.state, command.result = SUCCEEDED, fields.get("value")
        else:
            outcome = OUTCOMES.get(fields["outcome"], "outcome %s" % fields["outcome"])
            command.state, command.result = FAILED, fields.get("value")
            command.error = "%s: %s" % (outcome, fields["detail"]) if fields.get("detail") else outcome
        self._finished(command)

    def refused(self, node: str, fields: dict[str, Any]) -> None:
        """A node's REJECT naming a command's frame: stale (it lost its window; the sessions moved its counters
        ahead already) -> a new counter, the same request; any other reason -> failed (the same bytes again
        cannot help)."""
        counter = fields.get("counter")
        verdict = self.scheduler.rejected(node, fields["reason"], counter) if type(counter) is int else None
        if verdict is None:
            return
        action, command = verdict
        if action == RESEND:  # the next step takes a new counter, stored before the frame is written
            self._wake.set()
            return
        assert action == FAIL
        reason = perr.REASONS.get(fields["reason"], str(fields["reason"]))
        command.state, command.error = FAILED, "rejected by the node: %s %s" % (reason, fields.get("detail", ""))
        command.error = command.error.strip()
        self._finished(command)

    def _finished(self, command: Command) -> None:
        command.at = self._wall()
        self.scheduler.finish(command)
        self._changed(command)
        self._tell_final(command)

    def _tell_final(self, command: Command) -> None:
        for hook in self.on_final:
            try:
                hook(command)
            except Exception:  # a bug in a hook must not stop the commands
                log.exception("a hook on command %s failed", command.id)

    def submit(self, node: str, command_id: str, name: str, args: dict[str, Any], ttl_s: float) -> None:
        """A command of the gateway's own (a key rotation, gateway/rekey.py): stored and run like a request from
        MQTT, without the checks a client's request gets. The same node and id again is the same command."""
        wall = self._wall()
        self._own.append(Command(node, command_id, name, args, wall + ttl_s, QUEUED, wall))
        self._wake.set()

    def _changed(self, command: Command) -> None:
        self._dirty.append((command, json.dumps(command.document()).encode()))
        self._wake.set()

    # ------------------------------------------------------------ the task

    async def run(self) -> None:
        """Everything in order, one thing at a time: a state is stored before it is published, a counter
        before its frame is written, a request before it is acknowledged to the broker."""
        assert self.book is not None
        pruned_at = -PRUNE_EVERY_S
        while True:
            due = self.scheduler.next_due(self._has_link)
            wait = TICK_S if due is None else max(0.0, min(TICK_S, due - self._clock()))
            if not self._inbox and not self._dirty and not self._own:
                # A timer sets the event, not asyncio.wait_for: on Python 3.11 a wait_for whose wait ends as the
                # task is cancelled loses the cancellation (a stop's gather then waits for this task forever).
                timer = asyncio.get_running_loop().call_later(wait, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
            self._wake.clear()
            while self._own:
                await self._add_own(self._own.popleft())
            while self._inbox:
                inbound = self._inbox.popleft()
                try:
                    await self._request(inbound)
                except Exception:  # a bug: said with its traceback, and the next requests still go through
                    log.exception("handling a request on %s failed; it is not acknowledged", inbound.topic)
            while self._dirty:
                command, document = self._dirty.popleft()
                await self._store(command)  # a state not stored is still published: the next change stores it
                self._publish(self._topic(command.node, command.id), document)
            if self._republish:
                self._republish = False
                for command in await self._worker.call(self.book.load):
                    self._publish_state(command)
            actions, self._resend = self._resend + self.scheduler.step(self._clock(), self._wall(), self._has_link), []
            for action, command in actions:
                await self._act(action, command)
            if self._clock() - pruned_at >= PRUNE_EVERY_S:
                pruned_at = self._clock()
                await self._prune()

    async def _request(self, inbound: Inbound) -> None:
        assert self.book is not None
        prefix = self._base + "/nodes/"
        node, _, kind = inbound.topic[len(prefix) :].partition("/") if inbound.topic.startswith(prefix) else ("", "", "")
        if kind not in ("command", "config/set"):
            self._ack(inbound.mid, inbound.qos, inbound.link)
            return
        parsed = req.parse(node, kind, inbound.payload, inbound.topic)
        if inbound.dup and inbound.qos:
            try:
                before = await self._worker.call(self.book.redelivered, node, parsed.digest, inbound.mid)
            except StoreError:
                before = None
            if before is not None:  # stored before, its acknowledgement lost (a restart, a dropped connection)
                self._ack(inbound.mid, inbound.qos, inbound.link)
                self._publish_state(before)
                return
        if isinstance(parsed, req.Request):
            view = self._nodes.view(node)
            error = req.check(parsed, view is not None, view.commands if view is not None else None)
            if error is not None:
                parsed = req.Rejected(node, parsed.id, parsed.name, error, parsed.digest, parsed.made_id, parsed.args)
        wall = self._wall()
        name = _storable(parsed.name)  # a lone surrogate (JSON "\ud800") is text neither SQLite nor UTF-8 takes
        if isinstance(parsed, req.Request):
            command = Command(node, parsed.id, name, parsed.args, wall + parsed.ttl_s, QUEUED, wall, digest=parsed.digest)
        else:
            error = _storable(parsed.error)
            command = Command(node, parsed.id, name, parsed.args, wall, REJECTED, wall, error=error, digest=parsed.digest)
        command.mid = inbound.mid if inbound.qos else None
        try:
            stored, new, evicted = await self._worker.call(self.book.add, command)
        except (Full, StoreError) as error:  # not stored: said so, and acknowledged (a redelivery would fare the same)
            command.state, command.error = REJECTED, "not stored: %s" % error
            stored, new, evicted = command, True, []
        self._ack(inbound.mid, inbound.qos, inbound.link)
        for gone in evicted:
            self._publish(self._topic(*gone), b"")  # a final state kept long enough: the retained message is cleared
        if not new:
            log.info("command %s for node %s: the same id again; not run twice (it is %s)", stored.id, node, stored.state)
        elif stored.state == REJECTED:
            log.warning("command %s for node %s (%s) rejected: %s", stored.id, node, kind, stored.error)
        else:
            self.scheduler.add(stored, self._clock(), wall)
        self._publish_state(stored)

    async def _add_own(self, command: Command) -> None:
        assert self.book is not None
        try:
            stored, new, evicted = await self._worker.call(self.book.add, command)
        except (Full, StoreError) as error:
            log.error("command %s for node %s not stored: %s", command.id, command.node, error)
            command.state, command.error = REJECTED, "not stored: %s" % error
            self._tell_final(command)
            return
        for gone in evicted:
            self._publish(self._topic(*gone), b"")
        if new:
            self.scheduler.add(stored, self._clock(), self._wall())
        elif stored.final:
            self._tell_final(stored)
        self._publish_state(stored)

    async def _act(self, action: str, command: Command) -> None:
        if action == EXPIRE:
            log.warning("command %s for node %s expired (ttl) after %d attempts", command.id, command.node, command.attempts)
            await self._store_and_publish(command)
            self._tell_final(command)
            return
        if command.final:  # made final while this turn's earlier actions were awaited (answered, refused): not stored again
            return
        for veto in self.vetoes:
            reason = veto(command)
            if reason is not None:  # e.g. a rekey whose wrapping key is no longer the node's (gateway/rekey.py)
                log.warning("command %s for node %s not sent: %s", command.id, command.node, reason)
                command.state, command.error = FAILED, reason
                self._finished(command)
                return
        if not await self._store(command):  # the counter is on disk before its frame is written, or nothing is written
            return  # (the Outbox resends it at its next due time, stored first)
        if command.final or command.counter is None:
            return  # while it was stored: answered, expired, or a REJECT stale took its counter (the next step renumbers)
        assert command.wire_id is not None
        mtype, fields = req.fields_for(command.name, command.args, command.wire_id)
        try:  # False: no link now, or the port's queue is full; resent at its next due time
            self._nodes.send_request(command.node, command.counter, mtype, fields, self.only_under(command))
        except ValueError as error:  # checked when it was taken; a bug if it happens
            log.error("command %s for node %s cannot be sent: %s", command.id, command.node, error)
        self._publish_state(command)

    async def _store(self, command: Command) -> bool:
        assert self.book is not None
        try:
            await self._worker.call(self.book.save, command)
        except StoreError as error:
            log.error("%s; command %s for node %s waits", error, command.id, command.node)
            return False
        return True

    async def _store_and_publish(self, command: Command) -> None:
        await self._store(command)  # a state not stored is still published: the next change stores it
        self._publish_state(command)

    async def _prune(self) -> None:
        assert self.book is not None
        try:
            gone = await self._worker.call(self.book.prune, self._wall())
        except StoreError as error:
            log.error("%s; old command states stay for now", error)
            return
        for node, command_id in gone:
            self._publish(self._topic(node, command_id), b"")

    def _has_link(self, node: str) -> bool:
        view = self._nodes.view(node)
        return view is not None and view.port is not None

    def _topic(self, node: str, command_id: str) -> str:
        return "%s/nodes/%s/command/%s" % (self._base, node, command_id)

    def _publish_state(self, command: Command) -> None:
        self._publish(self._topic(command.node, command.id), json.dumps(command.document()).encode())


class _Counters:
    """One node's downlink counters as its Outbox takes them (protocols/session.py: take, peek)."""

    def __init__(self, nodes: Nodes, node: str) -> None:
        self._nodes = nodes
        self._node = node

    def take(self) -> int | None:
        return self._nodes.take_counter(self._node)

    def peek(self) -> int | None:
        return self._nodes.peek_counter(self._node)


def _storable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
