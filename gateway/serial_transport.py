"""Non-blocking reads and writes on an open serial port's file descriptor, driven by the asyncio loop.

pyserial opens and configures the port (baud rate, raw mode); everything after
that is os.read and os.write on its non-blocking descriptor, here. We do not use
pyserial-asyncio(-fast): its writer stays registered after its buffer drains and
then fails an assertion on every loop iteration (100 % CPU, a traceback each
time), and its writes spin inside pyserial while the port cannot take more
(upstream PR home-assistant-libs/pyserial-asyncio-fast#36).

Here the writer is registered only while bytes are pending and removed the
moment they are written. There is no write buffer to grow: the protocol is asked
for the next bytes (`pull`) only when the previous ones are out, a chunk at a
time, so a port that cannot take more (a slow UART, a reader that stalled) just
waits for writability. An error on the descriptor (EIO or ENXIO: a cable pulled,
a pty closed) or the end of file closes the port and reports `connection_lost`
to the protocol, once; reopening is the caller's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Protocol

import serial

READ_SIZE = 4096
WRITE_CHUNK = 512  # bytes asked of the protocol at a time: 44 ms of a 115200-baud line
WRITE_BUDGET = 65536  # bytes written in one loop callback at most, so a fast port leaves the others their turn


class PortProtocol(Protocol):
    """What a transport drives: the link on top of it."""

    def connection_made(self, transport: SerialTransport) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def pull(self, room: int) -> bytes:
        """The next bytes to write, about `room` of them; b"" when nothing is due."""
        ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class PortClosed(ConnectionError):
    """The port's descriptor reported the end of file: the device or the pty's other side is gone."""


class SerialTransport:
    def __init__(self, loop: asyncio.AbstractEventLoop, port: serial.Serial, protocol: PortProtocol) -> None:
        self._loop = loop
        self._port = port
        self._protocol = protocol
        self._fd = port.fileno()
        os.set_blocking(self._fd, False)
        self._pending = memoryview(b"")  # pulled from the protocol, not yet accepted by the port
        self._writing = False  # our writer is registered with the loop
        self._scheduled = False  # a write attempt is due on the next loop iteration
        self._closing = False  # close() was called: no more reading, what is due still goes out
        self._closed = False
        loop.add_reader(self._fd, self._read_ready)
        protocol.connection_made(self)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def blocked(self) -> bool:
        """Bytes are waiting for the port to take them (its output is full): the writer is registered."""
        return self._writing

    def output_ready(self) -> None:
        """The protocol has something new to send: it is pulled on the next loop iteration, or when the port has room.

        Deferred rather than written at once, so what comes due in one iteration (the
        replies to every frame of one read, the ACKs of one commit) goes out together.
        """
        if self._closed or self._writing or self._scheduled:
            return
        self._scheduled = True
        self._loop.call_soon(self._write_ready)

    def close(self) -> None:
        """Stop reading; write what the protocol still has due (it may add more meanwhile), then close the
        port and report connection_lost(None). A port that cannot take it all is for `abort`."""
        if self._closing or self._closed:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self.output_ready()

    def abort(self) -> None:
        """Stop reading and writing now (what is still due is not sent) and report connection_lost(None)."""
        self._shut(None)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as error:
            self._shut(error)
            return
        if not data:  # readable but empty: the device went away (a USB adapter unplugged)
            self._shut(PortClosed("end of file"))
            return
        self._protocol.data_received(data)

    def _write_ready(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        written = 0
        drained = False
        while written < WRITE_BUDGET:
            if not self._pending:
                chunk = self._protocol.pull(WRITE_CHUNK)
                if not chunk:
                    drained = True
                    break
                self._pending = memoryview(chunk)
            try:
                count = os.write(self._fd, self._pending)
            except BlockingIOError:
                count = 0
            except OSError as error:
                self._shut(error)
                return
            self._pending = self._pending[count:]
            written += count
            if self._pending:  # the port took less than offered: it is full until it says otherwise
                break
        self._want_writable(bool(self._pending))
        if drained and self._closing:
            self._shut(None)
        elif not self._pending and not drained:
            self.output_ready()  # the budget is spent and more may be due: after the other callbacks have had their turn

    def _want_writable(self, wanted: bool) -> None:
        if wanted and not self._writing:
            self._loop.add_writer(self._fd, self._write_ready)
        elif not wanted and self._writing:
            self._loop.remove_writer(self._fd)
        self._writing = wanted

    def _shut(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._want_writable(False)
        self._pending = memoryview(b"")
        # Closing a UART waits (in the kernel) until its output has drained: not on the loop.
        self._loop.run_in_executor(None, self._close_port)
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def _close_port(self) -> None:
        with contextlib.suppress(OSError, serial.SerialException):
            self._port.close()
