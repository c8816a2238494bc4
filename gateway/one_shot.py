"""The connection discipline the agent's local servers share (gateway/control.py's socket, gateway/http_server.py):
one request per connection, answered, then closed. At most `clients` are served at once (the rest are closed at
once); the request must come, and the answer be read, within `wait_s`; a stop ends every connection being served
and waits at most STOP_WAIT_S. So nothing a client does (says nothing, reads nothing, comes in numbers) can hold
the event loop, fill the memory or hold the agent's stop: since Python 3.12.1 Server.wait_closed() waits for
every connection, and a client that reads nothing would hold it for good.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

STOP_WAIT_S = 1.0  # a stop waits this long at most for the connections it ended


class OneShot:
    def __init__(
        self, read: Callable[[asyncio.StreamReader], Awaitable[bytes]], answer: Callable[[bytes], bytes], clients: int, wait_s: float
    ) -> None:
        """read: the request off the stream (a ValueError or asyncio's read errors: no answer); answer: its bytes."""
        self._read = read
        self._answer = answer
        self._most = clients
        self._wait_s = wait_s
        self.server: asyncio.base_events.Server | None = None  # set by the owner once it listens (with `serve`)
        self._clients: set[asyncio.Task[Any]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._clients) >= self._most:
            writer.close()
            return
        self._clients.add(task)
        try:
            try:
                request = await asyncio.wait_for(self._read(reader), self._wait_s)
            except (TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            writer.write(self._answer(request))
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.drain(), self._wait_s)  # a client that reads nothing is dropped
        except asyncio.CancelledError:
            pass  # the agent stops: the connection goes
        finally:
            self._clients.discard(task)
            writer.close()

    async def close(self) -> bool:
        """Stop listening and end the connections being served; False when it was not listening."""
        if self.server is None:
            return False
        self.server.close()
        for task in list(self._clients):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), STOP_WAIT_S)
        self.server = None
        return True
