"""Issue 16: the status page and /metrics of a running gateway with emulated nodes (the real firmware on the
MicroPython VM), loaded in a real headless Chromium (Debian's package)."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.page import sparkline
from hil.browser import count_colour, dom, screenshot
from hil.chain import Chain
from hil.rig import EmulatedRig

STROKE = (0x15, 0x65, 0xC0)  # the sparklines' colour (gateway/page.py)


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_the_page_lists_the_rigs_nodes_with_sparklines_in_chromium(tmp_path: Path) -> None:
    rig = EmulatedRig(tmp_path / "rig", 3, interval=1.0)
    with Chain(tmp_path, rig) as chain:
        assert chain.gateway is not None
        chain.gateway.wait_for_log("status page on http://", timeout=30)
        page = chain.gateway.page_url()
        assert page, chain.gateway.log()[-2000:]
        ids = {node.node_id for node in rig.nodes}
        deadline = time.monotonic() + 60
        doc: dict[str, Any] = {}
        while time.monotonic() < deadline:
            doc = json.loads(_get(page + "status.json")[2])
            if ids <= set(doc["nodes"]) and all(doc["nodes"][node]["readings"] > 0 for node in ids):
                break
            time.sleep(0.5)
        assert ids <= set(doc["nodes"]), doc["nodes"]
        assert doc["page"] == page

        status, kind, body = _get(page + "metrics")
        assert status == 200 and kind.startswith("text/plain")
        families = {family.name: family for family in text_string_to_metric_families(body.decode())}
        readings = {s.labels["node"]: s.value for s in families["edgegw_node_readings"].samples if s.name.endswith("_total")}
        assert ids <= set(readings) and all(readings[node] > 0 for node in ids)
        assert _get(page + "nope")[0] == 404

        rendered = dom(page)
        for node in ids:
            assert node in rendered
        assert rendered.count("<polyline") == len(ids) + 1  # a sparkline per node, and the buffer's
        shot = screenshot(page, tmp_path / "page.png")
    # drawn: pixels of the stroke (1.5 px, antialiased: lighter than its colour), about 250 a line here
    assert count_colour(shot, STROKE, tolerance=60) > 50 * (len(ids) + 1)


def test_a_sparkline_scales_to_its_largest_value_and_draws_one_point_flat() -> None:
    svg = sparkline([0.0, 5.0, 10.0], "x")
    points = [tuple(map(float, pair.split(","))) for pair in re.search(r'points="([^"]+)"', svg).group(1).split()]  # type: ignore[union-attr]
    assert points[0][1] == 22.0 and points[2][1] == 2.0 and points[1][1] == 12.0  # bottom, top, middle (24 px, 2 px margins)
    assert len(re.search(r'points="([^"]+)"', sparkline([3.0], "y")).group(1).split()) == 2  # type: ignore[union-attr]
    assert "&lt;b&gt;" in sparkline([], "<b>")  # a label is escaped


def test_the_history_gives_readings_per_minute_and_the_buffers_peak_of_each_minute() -> None:
    from gateway.history import History
    from gateway.metrics import Snapshot

    def snap(node_total: float, buffered: float) -> Snapshot:
        return Snapshot({"edgegw_node_readings_total": [({"node": "n1"}, node_total)], "edgegw_buffer_readings": [({}, buffered)]})

    history = History(steps=3)
    history.sample(snap(0, 0), 0.0)
    history.note_buffer(500)  # a backlog that came and went within the minute
    history.sample(snap(60, 0), 60.0)
    history.sample(snap(180, 0), 120.0)
    assert history.per_minute("n1") == [60.0, 120.0]
    assert history.per_minute("n1", live=190, now=150.0) == [60.0, 120.0, 20.0]  # 10 in half a minute: 20 a minute
    assert history.per_minute("n1", live=181, now=122.0) == [60.0, 120.0]  # 2 s into the minute: not yet
    assert history.buffer() == [0.0, 500.0, 0.0]
    for second in (180.0, 240.0):
        history.sample(snap(200, 0), second)
    assert len(history.per_minute("n1")) == 3  # an hour's worth (here 3 steps), no more


async def test_the_http_server_cannot_be_held_by_its_clients() -> None:
    import asyncio
    import socket

    from gateway.http_server import HttpServer

    built = []

    def page() -> str:
        built.append(1)
        return "x" * 5_000_000  # megabytes: more than the socket buffers hold

    server = HttpServer("127.0.0.1", 0, page, dict, bytes)
    port = await server.start()
    loop = asyncio.get_running_loop()

    async def ask(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        answer = await reader.read()
        writer.close()
        return answer

    assert (await ask(b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert (await ask(b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 9000 + b"\r\n\r\n")).startswith(b"HTTP/1.1 431")
    assert (await ask(b"POST / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
    sluggards = []
    for _ in range(3):  # ask for the big page and read nothing
        sluggard = socket.socket()
        sluggard.setblocking(False)
        await loop.sock_connect(sluggard, ("127.0.0.1", port))
        await loop.sock_sendall(sluggard, b"GET / HTTP/1.1\r\n\r\n")
        sluggards.append(sluggard)
    await asyncio.sleep(0.5)
    assert len(built) == 1  # three asks within FRESH_S: the page built once
    began = time.monotonic()
    await server.stop()
    assert time.monotonic() - began < 3.0
    for sluggard in sluggards:
        sluggard.close()
