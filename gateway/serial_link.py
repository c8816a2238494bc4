"""Serial links: bytes from a port become protocol messages, and what the nodes are owed goes back out.

`Link` is the protocol on top of one open port's transport (zigpy-znp's uart
layer): it decodes frames for the sessions and holds the port's downlink queue,
which the transport drains as fast as the port takes bytes. A port that closes or
vanishes is reported up to the sessions (`LinkHandler.lost`): the nodes heard on it
have no link until they are heard again, on this port reopened or another. `PortManager` owns
the configured ports: it expands globs so devices that appear later are picked
up, and reopens a port that vanished or failed, with backoff, while the other
ports keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import serial

from protocols import ProtocolError

from .air import AirTransport
from .config import SerialConfig
from .downlink import CounterSource, Downlink
from .fast_decode import FastStreamDecoder, ReceivedMessage
from .keystore import Keystore
from .render import describe_error
from .serial_transport import SerialTransport

log = logging.getLogger(__name__)

REOPEN_MIN_S = 0.5  # first retry after a port failed or vanished
REOPEN_MAX_S = 30.0
SCAN_INTERVAL_S = 1.0  # how often globs are expanded for new devices
CLOSE_S = 2.0  # a stop waits this long at most for the replies still due on its ports
ERROR_LOG_INTERVAL_S = 10.0  # bad-frame and dropped-reply log lines per port are at most this frequent


class LinkHandler(Protocol):
    """What a link reports to: the node sessions."""

    def message(self, link: Link, message: ReceivedMessage) -> None: ...

    def bad_frame(self, link: Link, error: ProtocolError) -> None: ...

    def lost(self, link: Link) -> None:
        """The link's port closed or vanished: nothing more can be sent through it."""
        ...


class Transport(Protocol):
    """What carries a link's bytes: a serial port (SerialTransport), or the air through a bridge (AirTransport)."""

    def output_ready(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class Link:
    """One open serial port: decodes frames, counts bad ones, queues what the nodes are owed."""

    def __init__(
        self,
        path: str,
        handler: LinkHandler,
        on_lost: Callable[[Link, Exception | None], None],
        next_counter: CounterSource,
        keys: Keystore | None = None,
        require_auth: bool | None = None,
    ) -> None:
        self.path = path
        self._handler = handler
        self._on_lost = on_lost
        # AUTH frames are checked with the node's keys, and frames to a node with a key are tagged (SPEC.md §3.4)
        self._decoder = FastStreamDecoder(keys.uplink_keys if keys is not None else None)
        self.downlink = Downlink(next_counter, key_of=keys.downlink_key if keys is not None else None)
        self.require_auth = require_auth  # [[serial]] require_auth (gateway/config.py); Sessions.auth_required reads it
        self.transport: Transport | None = None
        self._greeting = b"\x00"  # ends whatever the nodes' receivers collected before we were here
        self.frames = 0
        self.bytes_in = 0
        self.duplicates = 0  # frames whose counter the node's window had seen (Sessions.message)
        self.errors: Counter[str] = Counter()
        self._errors_logged_at = 0.0
        self._errors_unlogged = 0
        self._drops_logged_at = -ERROR_LOG_INTERVAL_S

    # ------------------------------------------------------------ transport side

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        transport.output_ready()  # the greeting

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._decoder.feed(data)
        for event in self._decoder.drain():
            if isinstance(event, ProtocolError):
                self._bad_frame(event)
                continue
            self.frames += 1
            try:
                self._handler.message(self, event)
            except Exception:  # a bug in one handler must not take the port down
                log.exception("%s: handling %s failed", self.path, event.name)

    def pull(self, room: int) -> bytes:
        greeting, self._greeting = self._greeting, b""
        return greeting + self.downlink.take(room - len(greeting))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.errors:  # the whole count, not the last 10 s line's: what a technician compares after an incident
            log.info("%s: closed after %d frames; bad frames and refusals %s", self.path, self.frames, dict(self.errors))
        try:
            self._handler.lost(self)
        except Exception:  # a bug in the sessions must not keep the port from being reopened
            log.exception("%s: handling the port's loss failed", self.path)
        self._on_lost(self, exc)

    def _bad_frame(self, error: ProtocolError) -> None:
        self.errors[error.reason] += 1
        now = time.monotonic()
        if now - self._errors_logged_at >= ERROR_LOG_INTERVAL_S:
            suffix = " (+%d more since the last report)" % self._errors_unlogged if self._errors_unlogged else ""
            log.warning("%s: bad frame: %s%s; totals %s", self.path, error, suffix, dict(self.errors))
            self._errors_logged_at = now
            self._errors_unlogged = 0
        else:
            self._errors_unlogged += 1
        self._handler.bad_frame(self, error)

    # ------------------------------------------------------------ sessions side

    def ack(self, node_id: bytes, counters: list[int]) -> bool:
        """The node is owed an ACK of these counters; it joins any ACK of that node still waiting."""
        return self._queued(self.transport is not None and self.downlink.ack(node_id, counters))

    def time(self, node_id: bytes) -> bool:
        """The node is owed a TIME (one waiting serves: it reads the clock when it is written)."""
        return self._queued(self.transport is not None and self.downlink.time(node_id))

    def send(
        self,
        node_id: bytes,
        mtype: int,
        fields: dict[str, Any],
        flags: int = 0,
        counter: int | None = None,
        only_under: bytes | None = None,
    ) -> bool:
        """Any other downlink frame (REJECT, CONFIG, ...), in order. Refused fields raise ProtocolError.
        counter: the frame's own (a retransmission keeps it); None: the node's next one when written.
        only_under: the key it must go out tagged with, else it is dropped (Downlink.frame)."""
        return self._queued(self.transport is not None and self.downlink.frame(node_id, mtype, fields, flags, counter, only_under))

    def resume(self) -> None:
        """Counters were reserved: what waited for them in the queue may go out now."""
        if self.transport is not None and self.downlink:
            self.transport.output_ready()

    def _queued(self, queued: bool) -> bool:
        if self.transport is None:
            return False
        if not queued and time.monotonic() - self._drops_logged_at >= ERROR_LOG_INTERVAL_S:
            log.warning(
                "%s: output backed up (%d replies waiting); replies that did not fit were dropped, totals %s",
                self.path,
                len(self.downlink),
                dict(self.downlink.dropped),
            )
            self._drops_logged_at = time.monotonic()
        self.transport.output_ready()
        return queued

    def close(self) -> None:
        """No more reading; what is due still goes out, then the port closes."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Closed at once; what is due is dropped."""
        if self.transport is not None:
            self.transport.abort()


class RadioLink(Link):
    """The link of the nodes one LoRa bridge hears (gateway/sessions.py, Sessions._bridged). Its transport is
    the air (gateway/air.py): what it owes a node goes through the bridge as RADIO_TX, in the node's receive
    windows. Tags are always required."""

    def __init__(
        self,
        bridge: str,
        bridge_id: bytes,
        handler: LinkHandler,
        keys: Keystore | None,
        next_counter: CounterSource,
        send: Callable[[bytes, dict[str, Any]], bool],
        linked: Callable[[bytes, Link], bool],
        hand_over: Callable[[bytes, list[tuple[bytes, float]], bool], bool] = lambda node_id, frames, time_owed: False,
        rivals: Callable[[], Iterable[AirTransport]] = lambda: (),
    ) -> None:
        super().__init__("radio:" + bridge, handler, lambda link, error: None, next_counter, keys, require_auth=True)
        self.air = AirTransport(
            self.pull,
            bridge_id,
            send,
            ask_time=self.downlink.time,
            is_link=lambda node_id: linked(node_id, self),
            hand_over=hand_over,
            rivals=rivals,
        )
        self.connection_made(self.air)


@dataclass
class _PortState:
    config: SerialConfig
    link: Link | None = None
    opening: bool = False
    failures: int = 0
    retry_at: float = 0.0
    warned: bool = False


@dataclass
class PortManager:
    """Keeps every configured port open that exists; never gives up on one."""

    configs: tuple[SerialConfig, ...]
    handler: LinkHandler
    next_counter: CounterSource  # downlink frame counters per node (SPEC.md §4.1, gateway/counters.py), for every port
    keys: Keystore | None = None  # the node keys, for every port
    ports: dict[str, _PortState] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._scan_forever(), name="serial-scan")

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for link in self.links():
            link.close()
        deadline = asyncio.get_running_loop().time() + CLOSE_S
        while self.links() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # the replies still due go out
        for link in self.links():
            link.abort()  # a port that cannot take them (its reader stalled)
        await asyncio.sleep(0)  # let connection_lost run

    def links(self) -> list[Link]:
        return [s.link for s in self.ports.values() if s.link is not None]

    def _expand(self) -> dict[str, SerialConfig]:
        found: dict[str, SerialConfig] = {}
        for config in self.configs:
            if glob.has_magic(config.port):
                for path in sorted(glob.glob(config.port)):
                    found.setdefault(path, config)
            else:
                found.setdefault(config.port, config)
        return found

    async def _scan_forever(self) -> None:
        while not self._stopping:
            self.scan()
            await asyncio.sleep(SCAN_INTERVAL_S)

    def scan(self) -> None:
        now = time.monotonic()
        for path, config in self._expand().items():
            state = self.ports.setdefault(path, _PortState(config))
            if state.link is None and not state.opening and now >= state.retry_at:
                state.opening = True
                asyncio.get_running_loop().create_task(self._open(path, state), name="open %s" % path)

    async def _open(self, path: str, state: _PortState) -> None:
        loop = asyncio.get_running_loop()
        if not os.path.exists(path):
            state.opening = False
            self._failed(path, state, "not present (cable unplugged or device not enumerated)")
            return
        try:
            port = await loop.run_in_executor(None, lambda: serial.Serial(path, baudrate=state.config.baud))
        except (OSError, serial.SerialException, ValueError) as error:
            self._failed(path, state, "cannot open: %s" % describe_error(error))
            return
        finally:
            state.opening = False
        link = Link(path, self.handler, self._lost, self.next_counter, self.keys, state.config.require_auth)
        SerialTransport(loop, port, link)
        if self._stopping:
            link.abort()
            return
        state.link = link
        log.info("%s: open at %d baud%s", path, state.config.baud, " (after %d failures)" % state.failures if state.failures else "")
        state.failures = 0
        state.warned = False

    def _failed(self, path: str, state: _PortState, why: str) -> None:
        state.failures += 1
        delay = min(REOPEN_MAX_S, REOPEN_MIN_S * 2 ** min(state.failures - 1, 10))
        state.retry_at = time.monotonic() + delay
        if not state.warned:
            log.warning("%s: %s; retrying (every %.0f s at most), the other ports keep running", path, why, REOPEN_MAX_S)
            state.warned = True

    def _lost(self, link: Link, exc: Exception | None) -> None:
        state = self.ports.get(link.path)
        if state is None or state.link is not link:
            return
        state.link = None
        if self._stopping:
            return
        log.warning("%s: port lost (%s); reopening when it is back", link.path, describe_error(exc) if exc else "closed")
        state.retry_at = time.monotonic() + REOPEN_MIN_S
