"""The agent's small HTTP server, on its event loop: `/` the status page, `/status.json` the status document,
`/metrics` the Prometheus exposition of the registry. On 127.0.0.1 unless [status] http says otherwise.

HTTP/1.1, GET and HEAD, one request per connection (`Connection: close`). A request's head is at most
HEAD_MAX bytes and must come within REQUEST_WAIT_S, the answer must be read within it too; at most CLIENTS
connections are served at once, the rest are closed at once; each page is built at most every FRESH_S:
nothing a browser or a scanner sends can hold the loop or fill the memory, or hold the agent's stop. It runs
on the event loop, not a thread, because the registry's readers read the layers' state, which only the loop
may touch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

HEAD_MAX = 8192
REQUEST_WAIT_S = 5.0
CLIENTS = 16
STOP_WAIT_S = 1.0  # a stop waits this long at most for the connections it ended
# A page is built at most this often, whoever asks: at 1,000 nodes it takes ~0.1 s of the event loop, and a
# client asking in a loop must not hold the loop (the nodes' ACKs) for more than that each FRESH_S
FRESH_S = 2.0

Route = Callable[[], tuple[str, bytes]]  # -> (content type, body)


class HttpServer:
    def __init__(
        self, host: str, port: int, page: Callable[[], str], document: Callable[[], dict[str, object]], metrics: Callable[[], bytes]
    ) -> None:
        self.host, self.port = host, port
        self._routes: dict[str, Route] = {
            "/": lambda: ("text/html; charset=utf-8", page().encode()),
            "/status.json": lambda: ("application/json", json.dumps(document(), allow_nan=False).encode()),
            "/metrics": lambda: (CONTENT_TYPE_LATEST, metrics()),
        }
        self._made: dict[str, tuple[float, str, bytes]] = {}  # path -> (when, type, body): built at most every FRESH_S
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task[object]] = set()

    async def start(self) -> int:
        """Listen; the port bound (the one asked for, or the system's choice for 0). OSError when it cannot."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=HEAD_MAX)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    @property
    def url(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "http://%s:%d/" % (host, self.port)

    async def stop(self) -> None:
        """Quick whatever the clients do: those being served are ended (a client that reads nothing cannot hold
        the agent's stop; since Python 3.12.1 wait_closed waits for every connection)."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), STOP_WAIT_S)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._clients) >= CLIENTS:
            writer.close()
            return
        self._clients.add(task)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_WAIT_S)
            except asyncio.LimitOverrunError:
                head = b"431"
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            status, content_type, body, head_only = self._answer(head)
            writer.write(
                (
                    "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n"
                    "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n" % (status, content_type, len(body))
                ).encode()
                + (b"" if head_only else body)
            )
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.drain(), REQUEST_WAIT_S)  # a client that reads nothing is dropped
        except asyncio.CancelledError:
            pass  # the agent stops
        finally:
            self._clients.discard(task)
            writer.close()

    def _answer(self, head: bytes) -> tuple[str, str, bytes, bool]:
        if head == b"431":
            return "431 Request Header Fields Too Large", "text/plain", b"request head over 8 KB\n", False
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", "text/plain", b"bad request\n", False
        method, target = parts[0], parts[1].split("?", 1)[0]
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET or HEAD only\n", False
        route = self._routes.get(target)
        if route is None:
            return "404 Not Found", "text/plain", b"not found: / /status.json /metrics\n", head_only
        now = time.monotonic()
        made = self._made.get(target)
        if made is None or now - made[0] >= FRESH_S:
            try:
                content_type, body = route()
            except Exception:  # a bug in a reader: a 500 and a log line, the agent goes on
                log.exception("building %s failed", target)
                return "500 Internal Server Error", "text/plain", b"the agent failed to build this; see its log\n", head_only
            made = self._made[target] = (now, content_type, body)
        return "200 OK", made[1], made[2], head_only
