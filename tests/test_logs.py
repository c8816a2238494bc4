"""The gateway's log stays bounded and one line per record, whatever nodes and faults throw at it."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import pathlib
import random
import re
import threading
import time
from collections.abc import Iterator

import pytest

from gateway import logs
from hil.broker import Mosquitto
from hil.gateway import GatewayProcess
from hil.scripted_node import ScriptedNode
from hil.serial_pair import PtyCable
from protocols import Message, cobs, encode, messages
from protocols import frame as fr

LOG_BOUND = 30_000  # bytes for a minute of faults, start and stop included
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [A-Za-z_][\w.]*: \S[^\x00-\x1f\x7f]*")
FORGED = "2026-01-01 00:00:00,000 CRITICAL gateway.agent: forged by a node"
CHANNELS = [{"name": "counter", "unit": "", "scale": 0}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def logger(out: io.StringIO, clock: Clock) -> Iterator[logging.Logger]:
    """A logger of its own writing through a BoundedHandler into `out`, on a clock the test moves."""
    made = logging.getLogger("gateway.test_logs")
    handler = logs.BoundedHandler(out, clock=clock)  # type: ignore[arg-type]
    made.addHandler(handler)
    made.setLevel(logging.DEBUG)
    made.propagate = False
    yield made
    made.removeHandler(handler)


def handler_of(logger: logging.Logger) -> logs.BoundedHandler:
    handler = logger.handlers[0]
    assert isinstance(handler, logs.BoundedHandler)
    return handler


def test_a_forged_line_in_node_text_stays_on_one_line_visibly_escaped(logger: logging.Logger, out: io.StringIO) -> None:
    logger.error("node %s says: %s", "00000000000000a1", "oops\r\n%s\x1b[2J\x1b[31m\u2028\x9b" % FORGED)
    written = out.getvalue()
    assert written.count("\n") == 1 and LINE.fullmatch(written.rstrip("\n")), written
    assert " ERROR gateway.test_logs: node 00000000000000a1 says: oops\\r\\n" + FORGED + "\\x1b[2J\\x1b[31m\\u2028\\x9b" in written


def test_escapes_a_node_types_itself_and_invisible_characters_cannot_pass_for_ours(logger: logging.Logger, out: io.StringIO) -> None:
    # A literal backslash-n would read as one of our escapes, and U+202E turns the rest of a line around on a terminal.
    logger.error("node %s says: %s", "00000000000000a1", "oops\\n%s \u202eevil\u200b\ufeff\U000e0041" % FORGED)
    written = out.getvalue().rstrip("\n")
    assert LINE.fullmatch(written), written
    assert written.endswith("oops\\\\n" + FORGED + " \\u202eevil\\u200b\\ufeff\\U000e0041"), written
    unfolded = written.encode().decode("unicode_escape")  # what reading the escapes back gives
    assert unfolded.count("\n") == 0 and "oops\\n" + FORGED in unfolded


def test_a_traceback_is_on_its_records_line_and_cannot_forge_one_either(logger: logging.Logger, out: io.StringIO) -> None:
    try:
        raise ValueError("bad input\n%s" % FORGED)
    except ValueError:
        logger.exception("handling a frame failed")
    written = out.getvalue()
    assert written.count("\n") == 1, written
    assert "handling a frame failed\\nTraceback (most recent call last):\\n" in written
    assert "ValueError: bad input\\n" + FORGED in written


def test_a_huge_message_is_cut_to_one_bounded_line_keeping_both_ends(logger: logging.Logger, out: io.StringIO) -> None:
    logger.warning("start %s end", "x" * 100_000)
    written = out.getvalue()
    assert written.count("\n") == 1 and len(written) <= logs.MAX_LINE + 1
    assert "start xxx" in written and "xxx end\n" in written and "characters cut" in written


def test_repeated_messages_are_written_a_burst_at_a_time_then_counted(logger: logging.Logger, out: io.StringIO, clock: Clock) -> None:
    for counter in range(100_000):
        logger.warning("node %s: counter went backwards to %d", "00000000000000a1", counter)
        clock.now += 0.0001  # 100,000 in 10 s
    assert len(out.getvalue().splitlines()) == logs.BURST
    logger.warning("another kind of message")  # other kinds are not held back by this one
    assert out.getvalue().splitlines()[-1].endswith("another kind of message")
    clock.now += logs.WINDOW_S
    handler_of(logger).write_counts()
    lines = out.getvalue().splitlines()
    assert len(lines) == logs.BURST + 2
    held = 100_000 - logs.BURST
    assert lines[-1].endswith("counter went backwards to 99999 (the last of %s like this held back in 70 s)" % format(held, ","))
    logger.warning("node %s: counter went backwards to %d", "00000000000000a1", 1)  # a new window: written at once
    assert len(out.getvalue().splitlines()) == logs.BURST + 3


def test_debug_records_asked_for_are_all_written(logger: logging.Logger, out: io.StringIO) -> None:
    for window in range(3 * logs.BURST):  # log_level "debug": whoever asked wants every one (each still one line)
        logger.debug("node %s window %d", "00000000000000a1", window)
    assert len(out.getvalue().splitlines()) == 3 * logs.BURST


def test_the_same_template_at_another_level_or_logger_is_another_kind(logger: logging.Logger, out: io.StringIO) -> None:
    for _ in range(logs.BURST):
        logger.warning("port lost")
    logger.error("port lost")
    logger.getChild("child").warning("port lost")
    logger.warning("port lost")
    lines = out.getvalue().splitlines()
    assert len(lines) == logs.BURST + 2
    assert " ERROR gateway.test_logs: port lost" in lines[-2] and "gateway.test_logs.child: port lost" in lines[-1]


def test_ten_thousand_kinds_of_message_do_not_grow_the_tracker_or_the_output(
    logger: logging.Logger, out: io.StringIO, clock: Clock
) -> None:
    handler = handler_of(logger)
    for index in range(10_000):
        logger.warning("invented message %d" % index)  # a template of its own each time
    assert len(handler.limiter) == logs.MAX_KEYS + 1  # every kind it could track, and one for all the others
    assert len(out.getvalue().splitlines()) == logs.MAX_KEYS + logs.BURST
    clock.now += logs.WINDOW_S
    handler.write_counts()
    assert len(handler.limiter) == 0
    last = out.getvalue().splitlines()[-1]
    held = 10_000 - logs.MAX_KEYS - logs.BURST
    assert last.endswith(
        "invented message 9999 (the last of %s messages of other kinds held back in 60 s); too many kinds at once to count each"
        % format(held, ",")
    )


def test_a_thousand_chatty_nodes_cannot_push_the_gateways_own_warnings_out(logger: logging.Logger, out: io.StringIO) -> None:
    """Node text is a rate group: its kinds cannot fill the tracker, and its lines stay bounded however many nodes talk."""
    for round_ in range(3):
        for node in range(1000):
            logger.error("node %s says: %s", "%016x" % node, "flood %d" % round_, extra={"rate_key": node, "rate_group": "node LOG"})
    logger.warning("buffer full (max_bytes reached): not acknowledging new readings")
    written = out.getvalue().splitlines()
    assert written[-1].endswith("buffer full (max_bytes reached): not acknowledging new readings"), written[-3:]
    node_lines = [line for line in written if " says: flood" in line]
    assert len(node_lines) == logs.GROUP_KEYS * 3 + logs.BURST, len(node_lines)  # 16 nodes each round, then one shared burst
    assert len(handler_of(logger).limiter) == logs.GROUP_KEYS + 2  # the group's kinds, its shared one, the warning


def test_stopping_writes_every_count_still_held(logger: logging.Logger, out: io.StringIO) -> None:
    for _ in range(logs.BURST + 5):
        logger.info("committing")
    logs.finish(handler_of(logger))
    assert out.getvalue().splitlines()[-1].endswith("committing (the last of 5 like this held back in 0 s)")


def test_a_record_that_cannot_be_formatted_is_reported_on_one_line(logger: logging.Logger, out: io.StringIO) -> None:
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "%d frames", ("not a number",), None)
    handler_of(logger).handle(record)  # directly: pytest's own capture handler would raise on it
    written = out.getvalue()
    assert written.count("\n") == 1 and "could not be written ('%d frames')" in written


async def test_asyncio_exception_handler_writes_a_burst_then_a_count(logger: logging.Logger, out: io.StringIO, clock: Clock) -> None:
    """A callback failing in a loop (pyserial-asyncio-fast's _write_ready) writes BURST tracebacks, then a count."""
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(handler_of(logger))
    asyncio_logger.propagate = False
    try:
        loop = asyncio.get_running_loop()
        stop = logs.watch_loop(handler_of(logger))

        def write_ready() -> None:
            raise AssertionError("Write buffer should not be empty")

        for _ in range(5_000):
            loop.call_soon(write_ready)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        clock.now += logs.WINDOW_S
        handler_of(logger).write_counts()
        stop()
    finally:
        asyncio_logger.removeHandler(handler_of(logger))
        asyncio_logger.propagate = True
    lines = out.getvalue().splitlines()
    assert len(lines) == logs.BURST + 1, out.getvalue()[-2000:]
    assert all(LINE.fullmatch(line) for line in lines)
    assert "ERROR asyncio: Exception in callback " in lines[0] and "\\nAssertionError: Write buffer should not be empty" in lines[0]
    assert lines[-1].endswith("AssertionError: Write buffer should not be empty (the last of 4,990 like this held back in 60 s)")


def test_an_uncaught_thread_exception_is_one_log_line(out: io.StringIO) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, threading.excepthook)
    try:
        logs.setup("INFO", stream=out)  # type: ignore[arg-type]

        def crash() -> None:
            raise RuntimeError("paho thread\nfell over")

        thread = threading.Thread(target=crash, name="mqtt")
        thread.start()
        thread.join()
    finally:
        root.handlers[:], threading.excepthook = saved[0], saved[2]
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    written = out.getvalue()
    assert written.count("\n") == 1 and "ERROR gateway.threads: uncaught exception in mqtt\\nTraceback" in written
    assert "RuntimeError: paho thread\\nfell over" in written


def test_journald_gets_priorities_instead_of_timestamps(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "stream", "w") as stream:
        assert logs.default_style(stream) == "text"
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", "%d:%d" % (info.st_dev, info.st_ino))
        assert logs.default_style(stream) == "journal"
    record = logging.makeLogRecord({"name": "gateway.uplink", "levelno": logging.ERROR, "levelname": "ERROR", "msg": "a\nb"})
    assert logs.OneLineFormatter("journal").format(record) == "<3>gateway.uplink: a\\nb"


async def test_a_digest_writes_the_first_few_then_one_summary_per_interval(logger: logging.Logger, out: io.StringIO) -> None:
    digest = logs.Digest(logger, "HELLOs", first=3, interval_s=2.0)
    for index in range(1000):
        digest.note({"": "new" if index < 10 else "known", "firmware": "v%d" % (index % 2)}, "node %d: HELLO", index)
    assert len(out.getvalue().splitlines()) == 3
    deadline = time.monotonic() + 10
    while "more HELLOs" not in out.getvalue() and time.monotonic() < deadline:  # the summary comes by itself
        await asyncio.sleep(0.05)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and re.search(
        r"INFO gateway.test_logs: 997 more HELLOs in the last \d+ s: 990 known, 7 new; firmware: 499 v1, 498 v0$", lines[3]
    )
    digest.note({"": "known"}, "node %d: HELLO", 1000)  # right after a busy interval: counted, not written
    digest.flush()
    assert len(out.getvalue().splitlines()) == 5 and re.search(r"1 more HELLOs in the last \d+ s: 1 known$", out.getvalue())


def test_a_digest_bounds_what_nodes_invent(logger: logging.Logger, out: io.StringIO) -> None:
    digest = logs.Digest(logger, "HELLOs", first=0)
    for index in range(10_000):
        digest.note({"firmware": "fw-%d-%s" % (index, "x" * 500)}, "HELLO")
    digest.flush()
    summary = out.getvalue()
    assert summary.count("\n") == 1 and len(summary) < 1200 and "9,992 other" in summary


def test_a_digest_keeps_both_ends_of_a_long_value(logger: logging.Logger, out: io.StringIO) -> None:
    digest = logs.Digest(logger, "HELLOs", first=0)
    port = "/dev/serial/by-id/usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_0001-if00-port0"
    digest.note({"port": port}, "HELLO")
    digest.flush()
    assert "port: 1 /dev/serial/by-id/" in out.getvalue() and out.getvalue().rstrip().endswith("...UART_Bridge_Controller_0001-if00-port0")


def hello(node: bytes, counter: int, fw: str = "test-1") -> bytes:
    fields = {"proto": [1, 0], "fw_version": fw, "hw_model": "pty", "caps": 0, "channels": CHANNELS}
    return encode(Message(messages.HELLO, node, counter, fields, fr.F_ACK_REQ))


def readings(node: bytes, counter: int, value: int) -> bytes:
    return encode(Message(messages.READINGS, node, counter, {"samples": [0, value, 0]}, fr.F_ACK_REQ))


def bad_crc(node: bytes, counter: int) -> bytes:
    raw = fr.pack(fr.Frame(messages.READINGS, node, counter, b"\xa1\x00\x83\x00\x01\x00", fr.F_ACK_REQ))
    raw[-1] ^= 0x5A
    return cobs.encode(raw, True)


class Drain:
    """Reads and discards what the gateway writes back, so its replies never back up."""

    def __init__(self, cable: PtyCable) -> None:
        self.cable = cable
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.cable.read(0.05)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)


@pytest.fixture
def cable(tmp_path: pathlib.Path) -> Iterator[PtyCable]:
    made = PtyCable(tmp_path / "ttyNODE0")
    yield made
    made.close()


def test_a_minute_of_faults_writes_a_bounded_log_of_well_formed_lines(
    tmp_path: pathlib.Path, hil_broker: Mosquitto, cable: PtyCable
) -> None:
    """Garbage, bad CRCs, stale counters, unknown nodes, 2 x 1,000 HELLOs, hostile LOG text and a broker outage."""
    gateway = GatewayProcess(tmp_path / "gw", hil_broker.port, [str(cable.link_path)])
    gateway.start()
    drain: Drain | None = None
    try:
        gateway.wait_for_log("ttyNODE0: open")
        gateway.wait_for_log("connected to")
        drain = Drain(cable)
        rng = random.Random(11)
        steady = bytes.fromhex("00000000000000a1")
        counter = 10_000  # the steady node's counter: far enough above 0 that counter 1 is stale
        cable.write(b"\x00" + hello(steady, counter))
        counter += 1
        hellos = 0
        storm_ids = [bytes.fromhex("00000000001%05x" % index) for index in range(1000)]
        started = time.monotonic()
        broker_down = False
        storms_done = 0
        round_number = 0
        while (elapsed := time.monotonic() - started) < 60:
            if storms_done < 2 and elapsed >= 25 * storms_done:  # at 0 s (new nodes) and 25 s (the same nodes again)
                for index, node in enumerate(storm_ids):
                    cable.write(hello(node, 1 + storms_done, fw="v%d" % (index % 3)))
                hellos += len(storm_ids)
                storms_done += 1
            if not broker_down and 15 <= elapsed < 35:
                hil_broker.stop()
                broker_down = True
            elif broker_down and elapsed >= 35:
                hil_broker.start()
                broker_down = False
            round_number += 1
            wire = bytearray()
            wire += bytes(rng.getrandbits(8) for _ in range(48))  # line noise
            wire += b"\x00" + bad_crc(steady, counter)
            wire += b"\x00" + readings(bytes([0xEE, 0, 0, 0]) + round_number.to_bytes(4, "big"), 5, 1)  # never said HELLO
            for _ in range(5):  # the steady flow: nothing in the log per frame
                wire += readings(steady, counter, counter)
                counter += 1
            wire += readings(steady, 1, 1)  # stale: far behind the steady node's counter
            text = "sensor fault\n%s\x1b[2J\x1b[31m\r" % FORGED
            wire += encode(Message(messages.LOG, steady, counter, {"severity": 3, "text": text}, fr.F_ACK_REQ))
            counter += 1
            cable.write(bytes(wire))
            time.sleep(0.05)
        assert gateway.stop() == 0
    finally:
        if drain is not None:
            drain.stop()
        gateway.close()

    raw = gateway.log_path.read_bytes()
    text = raw.decode("utf-8")
    lines = text.splitlines()
    print("log: %d bytes, %d lines for %d rounds and %d HELLOs" % (len(raw), len(lines), round_number, hellos))
    assert len(raw) < LOG_BOUND, "log grew to %d bytes:\n%s" % (len(raw), text[-3000:])
    malformed = [line for line in lines if not LINE.fullmatch(line)]
    assert not malformed, "lines that are not log lines: %r" % malformed[:5]
    assert b"\x1b" not in raw and b"\r" not in raw
    assert not any(line.startswith(FORGED) for line in lines)
    said = [line for line in lines if "says: sensor fault" in line]
    assert said and all("\\n" + FORGED + "\\x1b[2J" in line for line in said), said[:2]
    # Every HELLO is accounted for: written one by one, or counted in a summary.
    one_by_one = sum(1 for line in lines if ": HELLO on " in line)
    summarised = sum(int(m.group(1).replace(",", "")) for m in re.finditer(r"([\d,]+) more HELLOs in the last", text))
    assert one_by_one + summarised == hellos + 1, (one_by_one, summarised)
    # Repeated messages are counted, not dropped silently.
    assert re.search(r"says: sensor fault.*\(the last of [\d,]+ like this", text)


def test_steady_flow_and_a_crowd_saying_hello_write_a_few_lines(tmp_path: pathlib.Path, hil_broker: Mosquitto, cable: PtyCable) -> None:
    """50 nodes say HELLO and send 2,000 READINGS: three HELLO lines and one summary, nothing per frame."""
    gateway = GatewayProcess(tmp_path / "gw", hil_broker.port, [str(cable.link_path)])
    gateway.start()
    try:
        gateway.wait_for_log("ttyNODE0: open")
        gateway.wait_for_log("connected to")
        before = len(gateway.log().splitlines())
        nodes = [ScriptedNode(cable, bytes.fromhex("00000000002%05x" % index)) for index in range(50)]
        for node in nodes:
            node.hello()
        for round_number in range(40):
            for node in nodes:
                node.readings([0, round_number, 0])
            nodes[0].poll(0)  # the replies are read by one node: the others' ACKs are not waited for
        last = nodes[-1].readings([0, 999, 0])
        nodes[-1].wait_acked([last], timeout=60)  # one port, handled in order: every frame before it was too
        gateway.wait_for_log("more HELLOs in the last")
        added = gateway.log().splitlines()[before:]
        assert gateway.stop() == 0
    finally:
        gateway.close()
    assert len(added) == 4, added
    assert all(": HELLO on " in line for line in added[:3])
    assert re.search(
        r"INFO gateway.sessions: 47 more HELLOs in the last \d+ s: 47 new; firmware: 47 test-1; port: 47 .*/ttyNODE0$", added[3]
    )
