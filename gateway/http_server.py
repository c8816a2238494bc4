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
import json
import logging
import time
from collections.abc import Callable

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .one_shot import OneShot

log = logging.getLogger(__name__)

HEAD_MAX = 8192
REQUEST_WAIT_S = 5.0
CLIENTS = 16
# A page is built at most this often, whoever asks: at 1,000 nodes it takes ~0.1 s of the event loop, and a
# client asking in a loop must not hold the loop (the nodes' ACKs) for more than that each FRESH_S
FRESH_S = 2.0

Route = Callable[[], tuple[str, bytes]]  # -> (content type, body)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """The request's head; b"431" when it is over HEAD_MAX (answered so, not dropped)."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        return b"431"


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
        self._connections = OneShot(_read_head, self._response, CLIENTS, REQUEST_WAIT_S)

    async def start(self) -> int:
        """Listen; the port bound (the one asked for, or the system's choice for 0). OSError when it cannot."""
        server = self._connections.server = await asyncio.start_server(self._connections.serve, self.host, self.port, limit=HEAD_MAX)
        self.port = server.sockets[0].getsockname()[1]
        return self.port

    @property
    def url(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "http://%s:%d/" % (host, self.port)

    async def stop(self) -> None:
        """Quick whatever the clients do: those being served are ended (gateway/one_shot.py)."""
        await self._connections.close()

    def _response(self, head: bytes) -> bytes:
        status, content_type, body, head_only = self._answer(head)
        return (
            "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n"
            "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n" % (status, content_type, len(body))
        ).encode() + (b"" if head_only else body)

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
