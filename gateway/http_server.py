"""The agent's small HTTP server, on its event loop: `/` the status page, `/status.json` the status document,
`/metrics` the Prometheus exposition of the registry. On 127.0.0.1 unless [status] http says otherwise.

HTTP/1.1, GET and HEAD, one request per connection (`Connection: close`). A request's head is at most
HEAD_MAX bytes and must come within REQUEST_WAIT_S; at most CLIENTS connections are served at once, the
rest are closed at once: nothing a browser or a scanner sends can hold the loop or fill the memory. It runs
on the event loop, not a thread, because the registry's readers read the layers' state, which only the loop
may touch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

HEAD_MAX = 8192
REQUEST_WAIT_S = 5.0
CLIENTS = 16

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
        self._server: asyncio.base_events.Server | None = None
        self._clients = 0

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
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= CLIENTS:
            writer.close()
            return
        self._clients += 1
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_WAIT_S)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            status, content_type, body, head_only = self._answer(head)
            writer.write(
                (
                    "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n"
                    "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n" % (status, content_type, len(body))
                ).encode()
                + (b"" if head_only else body)
            )
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            self._clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[str, str, bytes, bool]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", "text/plain", b"bad request\n", False
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET or HEAD only\n", False
        route = self._routes.get(target)
        if route is None:
            return "404 Not Found", "text/plain", b"not found: / /status.json /metrics\n", method == "HEAD"
        try:
            content_type, body = route()
        except Exception:  # a bug in a reader: a 500 and a log line, the agent goes on
            log.exception("building %s failed", target)
            return "500 Internal Server Error", "text/plain", b"the agent failed to build this; see its log\n", method == "HEAD"
        return "200 OK", content_type, body, method == "HEAD"
