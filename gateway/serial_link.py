"""Serial transport: bytes from a port become protocol messages, and frames go back out.

`Link` is the asyncio Protocol for one open port (zigpy-znp's uart layer);
`PortManager` owns the configured ports: it expands globs so devices that
appear later are picked up, and reopens a port that vanished or failed, with
backoff, while the other ports keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, cast

import serial
import serial_asyncio_fast

from protocols import ProtocolError

from .config import SerialConfig
from .fast_decode import FastStreamDecoder, ReceivedMessage
from .render import describe_error

log = logging.getLogger(__name__)

REOPEN_MIN_S = 0.5  # first retry after a port failed or vanished
REOPEN_MAX_S = 30.0
SCAN_INTERVAL_S = 1.0  # how often globs are expanded for new devices
ERROR_LOG_INTERVAL_S = 10.0  # bad-frame log lines per port are at most this frequent


class LinkHandler(Protocol):
    """What a link reports to: the node sessions."""

    def message(self, link: Link, message: ReceivedMessage) -> None: ...

    def bad_frame(self, link: Link, error: ProtocolError) -> None: ...


class Link(asyncio.Protocol):
    """One open serial port: decodes frames, counts bad ones, writes replies."""

    def __init__(self, path: str, handler: LinkHandler, on_lost: Callable[[Link, Exception | None], None]) -> None:
        self.path = path
        self._handler = handler
        self._on_lost = on_lost
        self._decoder = FastStreamDecoder()
        self.transport: asyncio.Transport | None = None
        self.frames = 0
        self.errors: Counter[str] = Counter()
        self._errors_logged_at = 0.0
        self._errors_unlogged = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"\x00")  # end whatever the node's receiver collected before we were here

    def data_received(self, data: bytes) -> None:
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost(self, exc)

    def send(self, wire: bytes) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(wire)
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


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
        for state in self.ports.values():
            if state.link:
                state.link.close()
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
            _transport, protocol = await serial_asyncio_fast.create_serial_connection(
                loop, lambda: Link(path, self.handler, self._lost), path, baudrate=state.config.baud
            )
        except (OSError, serial.SerialException, ValueError) as error:
            self._failed(path, state, "cannot open: %s" % describe_error(error))
            return
        finally:
            state.opening = False
        link = cast(Link, protocol)
        if self._stopping:
            link.close()
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
