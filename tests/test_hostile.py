"""Attacks: frames a hostile or broken node can send (valid by SPEC.md or near it), and hostile MQTT input.

Each case is answered by a rule of SPEC.md (§5.12, §6, §8): an ACK, a REJECT
with a reason, or a counted drop; the node is never stuck, published JSON is
always valid, the log gets one line per line, and what the gateway keeps for
node ids it has no session with is bounded. Most cases drive the real Sessions
through a real Link (bytes in, bytes out); the last ones the real `edgegw run`
over a pty with a real mosquitto.
"""

from __future__ import annotations

import asyncio
import binascii
import io
import itertools
import json
import logging
import math
import pathlib
import struct
import time
import tracemalloc
from typing import Any

import pytest

from gateway.commands import Commands
from gateway.committer import CommitResult, Pending
from gateway.counters import DownlinkCounters
from gateway.layouts import Layouts
from gateway.logs import BoundedHandler, OneLineFormatter
from gateway.render import json_value
from gateway.serial_link import Link
from gateway.sessions import UNKNOWN_REMEMBERED, Sessions
from gateway.store import Store
from gateway.store_worker import StoreWorker
from gateway.uplink import Inbound
from hil.capture import MqttCapture
from hil.gateway import GatewayProcess
from hil.scripted_node import CHANNELS, ScriptedNode
from hil.serial_pair import PtyCable
from protocols import Message, ProtocolError, StreamDecoder, cbor, cobs, encode, messages
from protocols import errors as perr
from protocols import frame as fr
from tests import test_gateway

NODE = bytes.fromhex("0000a4cf12b3c4d5")
HELLO_FIELDS: dict[str, Any] = {"proto": [1, 0], "fw_version": "test-1", "hw_model": "pty", "caps": 0x0B, "channels": CHANNELS}


def strict_json(payload: bytes) -> Any:
    """json.loads that refuses NaN and Infinity, as every parser but Python's does."""

    def refuse(constant: str) -> None:
        raise ValueError("not JSON: %s" % constant)

    return json.loads(payload, parse_constant=refuse)


def raw_frame(mtype: int, counter: int, mapping: Any, flags: int = fr.F_ACK_REQ, node: bytes = NODE) -> bytes:
    """A frame with a good CRC around any payload: what a node can send whatever our encoder allows."""
    payload = mapping if isinstance(mapping, bytes) else cbor.dumps(mapping)
    return fr.to_wire(fr.Frame(mtype, node, counter, payload, flags))


def auth_frame(mtype: int, counter: int) -> bytes:
    """AUTH set: an 8-byte tag instead of the CRC, which a 1.0 gateway has no key to check (SPEC.md §3.4)."""
    return cobs.encode(struct.pack(">BBB8sI", 0x10, mtype, fr.F_AUTH | fr.F_ACK_REQ, NODE, counter) + b"\xa0" + bytes(8), True)


def damaged_frame(mtype: int, counter: int) -> bytes:
    """One payload bit flipped on the line: the CRC fails, and no header field can be trusted."""
    raw = bytearray(fr.pack(fr.Frame(mtype, NODE, counter, cbor.dumps({0: 1}), fr.F_ACK_REQ)))
    raw[16] ^= 0x01
    return cobs.encode(bytes(raw), True)


class _Transport:
    """The port's far end: what the gateway's queue hands out, written at once."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.written = bytearray()

    def output_ready(self) -> None:
        self.written += self.link.pull(1 << 20)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _Committer:
    def __init__(self) -> None:
        self.pending: list[Pending] = []

    def submit(self, pending: Pending) -> None:
        self.pending.append(pending)


class Bench:
    """Sessions behind a real Link: frames in as bytes, replies out as decoded messages."""

    def __init__(self) -> None:
        self.committer = _Committer()
        self.published: list[tuple[str, bytes]] = []
        self.saved: dict[str, str] = {}
        counters = itertools.count(100)
        self.sessions = Sessions(
            "gw-test",
            "edgegw",
            self.committer,  # type: ignore[arg-type]
            Layouts(),
            lambda topic, payload: self.published.append((topic, payload)),
            self.saved.__setitem__,
        )
        self.link = Link("/dev/ttyTEST", self.sessions, lambda link, exc: None, lambda node: next(counters))
        self.transport = _Transport(self.link)
        self.link.connection_made(self.transport)  # type: ignore[arg-type]
        self._decoder = StreamDecoder()

    def feed(self, wire: bytes) -> list[Message]:
        """The replies to these bytes."""
        self.replies()
        self.link.data_received(b"\x00" + wire)
        return self.replies()

    def replies(self) -> list[Message]:
        """What the gateway wrote since the last call."""
        self._decoder.feed(bytes(self.transport.written))
        self.transport.written.clear()
        replies = [event for event in self._decoder.drain() if isinstance(event, Message)]
        assert all(reply.flags & fr.F_DOWNLINK for reply in replies)
        return replies

    def hello(self, counter: int = 1, **changes: Any) -> list[Message]:
        return self.feed(encode(Message(messages.HELLO, NODE, counter, dict(HELLO_FIELDS, **changes), fr.F_ACK_REQ)))

    def status_documents(self, node: bytes = NODE) -> list[Any]:
        topic = "edgegw/gw-test/nodes/%s/status" % node.hex()
        return [strict_json(payload) for published, payload in self.published if published == topic]


def acked(replies: list[Message]) -> list[int]:
    return [counter for reply in replies if reply.type == messages.ACK for counter in reply.fields["counters"]]


def rejects(replies: list[Message]) -> list[dict[str, Any]]:
    return [reply.fields for reply in replies if reply.type == messages.REJECT]


@pytest.fixture
def bench() -> Bench:
    return Bench()


# ------------------------------------------------------------ values that JSON cannot hold


def test_a_config_report_holding_bytes_is_acknowledged_and_the_node_goes_on(bench: Bench) -> None:
    bench.hello()
    report = {0: messages.CONFIG_REPORT, 1: {"key": b"\x01\xfe", "gain": math.nan, "limits": [math.inf, -math.inf], "map": {7: "seven"}}}
    assert acked(bench.feed(raw_frame(messages.CONFIG, 2, report))) == [2]
    config = bench.status_documents()[-1]["config"]
    assert config == {"key": "Af4", "gain": None, "limits": [None, None], "map": {"7": "seven"}}
    assert strict_json(bench.saved[NODE.hex()].encode())["config"] == config  # what a restart reads back
    assert acked(bench.feed(raw_frame(messages.STATUS, 3, {0: 60}))) == [3]  # the node's later frames still work
    assert bench.status_documents()[-1]["uptime"] == 60


def test_nan_infinity_and_bytes_are_published_as_valid_json(bench: Bench) -> None:
    bench.hello(interval=math.nan)
    assert bench.status_documents()[-1]["interval"] is None
    assert acked(bench.feed(raw_frame(messages.STATUS, 2, {0: 5, 5: math.inf}))) == [2]
    assert bench.status_documents()[-1]["snr"] is None
    result = {0: 7, 1: messages.OUTCOME_OK, 3: {1: b"\x00\x01", "1": "text wins", "x": [math.nan, -math.inf, 2.5, 2**64 - 1]}}
    assert acked(bench.feed(raw_frame(messages.COMMAND_RESULT, 3, result))) == [3]
    topic, payload = bench.published[-1]
    assert topic.endswith("/command_result")
    assert strict_json(payload) == {"id": 7, "outcome": 0, "value": {"1": "text wins", "x": [None, None, 2.5, 2**64 - 1]}}


def test_json_value_follows_rfc_8949_section_6_1() -> None:
    assert json_value({1: b"\xfb\xff", "a": [math.nan, True, None, "t"], -2: 1.5}) == {"1": "-_8", "a": [None, True, None, "t"], "-2": 1.5}
    json.dumps(json_value([math.inf, b"", {0: -math.inf}]), allow_nan=False)


# ------------------------------------------------------------ node text in the log


def log_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    """The records of one logger as the gateway writes them (gateway/logs.py)."""
    formatter = OneLineFormatter()
    return [formatter.format(record) for record in caplog.records if record.name == logger]


def test_node_text_cannot_forge_or_colour_log_lines(bench: Bench, caplog: pytest.LogCaptureFixture) -> None:
    forged = "ok\n2026-12-02 05:00:00 CRITICAL gateway: disk on fire\r\x1b[2J\x07\u2028\u202e\\"
    caplog.set_level(logging.INFO)
    bench.hello(fw_version=forged, hw_model=forged)
    bench.feed(raw_frame(messages.LOG, 2, {0: 2, 1: forged}))
    bench.feed(raw_frame(messages.CONFIG, 3, {0: messages.CONFIG_REPORT, 3: {forged: forged}}))
    bench.feed(raw_frame(messages.REJECT, 4, {0: 9, 1: forged, 2: 1}, 0))
    node_lines = [line for line in log_lines(caplog, "gateway.sessions") if "disk on fire" in line]
    assert len(node_lines) == 4, node_lines
    for line in node_lines:
        assert line.isprintable(), repr(line)
        assert "ok\\n2026-12-02 05:00:00 CRITICAL gateway: disk on fire\\r\\x1b[2J\\x07\\u2028\\u202e\\\\" in line


def test_one_node_flooding_log_frames_does_not_mute_another(bench: Bench) -> None:
    """The rate limit of node LOG lines is per node: a chatty or hostile node spends its own allowance only."""
    out = io.StringIO()
    handler = BoundedHandler(out)
    sessions_log = logging.getLogger("gateway.sessions")
    sessions_log.addHandler(handler)
    try:
        other = bytes.fromhex("00000000000000b2")
        bench.hello()
        bench.feed(encode(Message(messages.HELLO, other, 1, dict(HELLO_FIELDS), fr.F_ACK_REQ)))
        for counter in range(2, 52):
            bench.feed(raw_frame(messages.LOG, counter, {0: 3, 1: "flood %d" % counter}))
        bench.feed(raw_frame(messages.LOG, 2, {0: 3, 1: "the other node speaks"}, node=other))
    finally:
        sessions_log.removeHandler(handler)
    written = out.getvalue()
    assert "the other node speaks" in written, written
    assert written.count("says: flood") < 50, "the flood itself is still limited"


# ------------------------------------------------------------ channel names


@pytest.mark.parametrize(
    ("names", "index"),
    [
        (["temperature", "a/b"], 1),
        (["level#1"], 0),
        (["a+b"], 0),
        (["urn:x"], 0),
        ([""], 0),
        (["temp", "hum", "temp"], 2),
        (["new\nline"], 0),
        (["ümlaut"], 0),
    ],
)
def test_a_hello_with_a_channel_name_senml_cannot_carry_is_rejected(bench: Bench, names: list[str], index: int) -> None:
    channels = [{"name": name, "unit": ""} for name in names]
    replies = bench.feed(raw_frame(messages.HELLO, 1, {0: [1, 0], 1: "x", 2: "y", 3: 1, 4: [{0: c["name"], 1: ""} for c in channels]}))
    assert acked(replies) == []
    (reject,) = rejects(replies)
    assert (reject["reason"], reject["counter"], reject["type"]) == (perr.E_SCHEMA, 1, messages.HELLO)
    assert "channel %d" % index in reject["detail"] and reject["detail"].isprintable()
    assert bench.sessions.nodes == {}
    with pytest.raises(ProtocolError) as refused:  # and a node's own encoder refuses to send it
        encode(Message(messages.HELLO, NODE, 1, dict(HELLO_FIELDS, channels=channels)))
    assert refused.value.code == perr.E_SCHEMA


def test_every_allowed_name_character_is_accepted(bench: Bench) -> None:
    replies = bench.hello(channels=[{"name": messages.NAME_CHARS, "unit": ""}, {"name": "0", "unit": "Cel"}])
    assert acked(replies) == [1]


# ------------------------------------------------------------ direction, REJECT, ranges, counters


def test_an_upstream_frame_marked_downlink_is_counted_and_logged_not_answered(bench: Bench, caplog: pytest.LogCaptureFixture) -> None:
    bench.hello()
    echo = raw_frame(messages.READINGS, 2, {1: [0, 1, 0]}, fr.F_DOWNLINK | fr.F_ACK_REQ)
    broken_echo = raw_frame(messages.STATUS, 3, b"\xa1", fr.F_DOWNLINK)
    for _ in range(50):
        assert bench.feed(echo) == [] and bench.feed(broken_echo) == []
    assert bench.link.errors["wrong_direction"] == 100
    assert bench.committer.pending == []
    lines = [record.getMessage() for record in caplog.records if "DOWNLINK" in record.getMessage()]
    assert 1 <= len(lines) <= 3 and "/dev/ttyTEST: READINGS for node 0000a4cf12b3c4d5 marked DOWNLINK" in lines[0]  # then a summary


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (raw_frame(messages.STATUS, 9, b"\xa2\x00"), perr.E_CBOR),
        (raw_frame(messages.COMMAND_RESULT, 9, bytes.fromhex("a3000001000381818181818181818100")), perr.E_LIMIT),
        (auth_frame(messages.READINGS, 9), perr.E_AUTH),
        (raw_frame(messages.LOG, 9, {0: 99, 1: "x"}), perr.E_SCHEMA),
        (raw_frame(0x7F, 9, {}), perr.E_TYPE),
    ],
    ids=["cbor", "limit", "auth", "schema", "type"],
)
def test_every_error_of_a_frame_that_names_its_sender_is_answered_with_reject(bench: Bench, wire: bytes, reason: int) -> None:
    for known in (False, True):
        if known:
            bench.hello(counter=1, caps=0x0B | messages.CAP_AUTH)
        (reject,) = rejects(bench.feed(wire))
        assert (reject["reason"], reject["counter"]) == (reason, 9)
        assert bench.committer.pending == []


def test_no_reject_for_damage_before_the_header_or_for_a_broken_ack_or_reject(bench: Bench) -> None:
    bench.hello()
    assert bench.feed(auth_frame(messages.READINGS, 4)) == []  # a node without the auth capability: line damage
    assert bench.feed(damaged_frame(messages.STATUS, 5)) == []  # crc
    assert bench.feed(raw_frame(messages.ACK, 6, b"\xa2\x00", 0)) == []  # cbor, but an ACK
    assert bench.feed(raw_frame(messages.REJECT, 7, {0: "x"}, 0)) == []  # schema, but a REJECT


@pytest.mark.parametrize(
    ("mtype", "payload", "field"),
    [
        (messages.LOG, {0: 8, 1: "x"}, "severity"),
        (messages.TIME, {0: 1795000000, 1: 1000}, "ms"),
        (messages.STATUS, {0: 1, 2: 7}, "reset_cause"),
        (messages.CONFIG, {0: 3}, "op"),
        (messages.COMMAND_RESULT, {0: 1, 1: 5}, "outcome"),
        (messages.RADIO_RX, {0: b"", 1: -80, 2: 1.0, 3: 868100000, 4: 13}, "sf"),
        (messages.RADIO_RX, {0: b"", 1: -80, 2: 1.0, 3: 868100000, 4: 6}, "sf"),
    ],
)
def test_a_value_outside_its_range_is_a_schema_error(bench: Bench, mtype: int, payload: dict[int, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        messages.decode_payload(mtype, cbor.dumps(payload))
    assert refused.value.code == perr.E_SCHEMA and field in refused.value.detail
    bench.hello()
    (reject,) = rejects(bench.feed(raw_frame(mtype, 2, payload)))
    assert (reject["reason"], reject["counter"], reject["type"]) == (perr.E_SCHEMA, 2, mtype)


def test_a_sample_that_is_not_a_finite_number_is_a_schema_error(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN, infinity, and a float that scaling by 10^scale would take beyond a double: refused, never stored as SenML cannot carry it."""
    monkeypatch.setattr("gateway.sessions.REJECT_INTERVAL_S", 0.0)  # one REJECT schema per frame, not per second
    bench.hello(channels=[{"name": "level", "unit": "m", "scale": 30}])
    for counter, value in ((2, float("nan")), (3, float("-inf")), (4, 1e300)):
        (reject,) = rejects(bench.feed(raw_frame(messages.READINGS, counter, {1: [0, value, 0]})))
        assert (reject["reason"], reject["counter"]) == (perr.E_SCHEMA, counter)
    assert bench.committer.pending == []
    assert bench.feed(raw_frame(messages.READINGS, 5, {1: [0, 1.5e270, 0]})) == []  # 1.5e300 after scaling: a double holds it
    assert [pending.counter for pending in bench.committer.pending] == [5]


def test_a_rejected_frame_does_not_use_up_its_counter(bench: Bench) -> None:
    readings = encode(Message(messages.READINGS, NODE, 5, {"samples": [1, 7, 0]}, fr.F_ACK_REQ))
    (reject,) = rejects(bench.feed(readings))
    assert reject["reason"] == perr.E_UNKNOWN_NODE
    assert acked(bench.hello(counter=6)) == [6]
    assert bench.feed(readings) == []  # the same counter again, after HELLO: stored, acknowledged once on disk
    (pending,) = bench.committer.pending
    assert pending.counter == 5
    bench.sessions.committed(CommitResult([pending], [], None))
    assert acked(bench.replies()) == [5]
    assert acked(bench.feed(readings)) == [5]  # and now it is a duplicate: acknowledged again, not stored again
    assert len(bench.committer.pending) == 1


def test_a_refused_hello_forgets_the_layout_until_a_hello_is_accepted(bench: Bench) -> None:
    """The node drops a refused HELLO and goes on (SPEC.md §5.12): its READINGS must not be labelled with the old channels."""
    assert acked(bench.hello(counter=1)) == [1]
    wind = {0: [1, 0], 1: "test-2", 2: "pty", 3: 0x0B, 4: [{0: "wind/speed", 1: "m/s"}]}
    replies = bench.feed(raw_frame(messages.HELLO, 2, wind))
    assert acked(replies) == [] and [r["reason"] for r in rejects(replies)] == [perr.E_SCHEMA]
    readings = encode(Message(messages.READINGS, NODE, 3, {"samples": [0, 7, 0]}, fr.F_ACK_REQ))
    replies = bench.feed(readings)
    assert acked(replies) == [] and [(r["reason"], r["counter"]) for r in rejects(replies)] == [(perr.E_UNKNOWN_NODE, 3)]
    assert bench.committer.pending == []
    assert "channels" not in strict_json(bench.saved[NODE.hex()].encode()), "a restarted gateway does not bring them back"
    assert acked(bench.hello(counter=4, channels=[{"name": "wind_speed", "unit": "m/s"}])) == [4]
    assert bench.feed(readings) == []
    (pending,) = bench.committer.pending
    assert [(c.name, c.unit) for c in pending.layout.channels] == [("wind_speed", "m/s")]


def test_a_resent_or_late_hello_does_not_change_the_layout(bench: Bench) -> None:
    """A duplicate is not stored again (SPEC.md §4.3): only a HELLO newer than the one that set the layout changes it."""

    def layout() -> list[str]:
        return [channel.name for channel in bench.sessions.nodes[NODE.hex()].layout.channels]  # type: ignore[union-attr]

    assert acked(bench.hello(counter=400, channels=[{"name": "one", "unit": ""}])) == [400]
    replies = bench.hello(counter=400, channels=[{"name": "two", "unit": ""}])  # the same HELLO resent, other channels
    assert [(r.type, r.fields.get("counters")) for r in replies] == [(messages.ACK, [400]), (messages.TIME, None)]
    assert layout() == ["one"]
    assert acked(bench.hello(counter=410, channels=[{"name": "three", "unit": ""}])) == [410]
    assert acked(bench.hello(counter=405, channels=[{"name": "two", "unit": ""}])) == [405]  # late, within the window
    assert layout() == ["three"]
    assert [c["name"] for c in strict_json(bench.saved[NODE.hex()].encode())["channels"]] == ["three"]
    assert acked(bench.hello(counter=5, channels=[{"name": "two", "unit": ""}])) == [5]  # STALE: a counter reset, applied
    assert layout() == ["two"]


def test_a_node_flooding_bad_frames_gets_one_reject_a_second_per_reason(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each REJECT costs the shared line ~60 bytes: a node cannot buy one per 27-byte frame (SPEC.md §5.12)."""
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    bench.hello()
    bad_log = [bench.feed(raw_frame(messages.LOG, counter, {0: 99, 1: "x"})) for counter in range(2, 202)]
    assert [len(rejects(r)) for r in bad_log] == [1] + [0] * 199
    assert bench.link.errors["rejects_withheld"] == 199
    (other,) = rejects(bench.feed(raw_frame(0x7F, 202, {})))  # another reason: answered
    assert other["reason"] == perr.E_TYPE
    clock[0] += 1.0
    (again,) = rejects(bench.feed(raw_frame(messages.LOG, 203, {0: 99, 1: "x"})))
    assert (again["reason"], again["counter"]) == (perr.E_SCHEMA, 203)
    assert bench.committer.pending == []


# ------------------------------------------------------------ state for ids a node invents


def test_invented_node_ids_leave_bounded_state_behind(bench: Bench) -> None:
    def flood(first: int, count: int) -> int:
        answered = 0
        for number in range(first, first + count):
            node = number.to_bytes(8, "big")
            replies = bench.feed(encode(Message(messages.READINGS, node, 1, {"samples": [0, 1, 0]}, fr.F_ACK_REQ, fr.VERSION)))
            answered += [(r.node_id, r.fields["reason"]) for r in replies] == [(node, perr.E_UNKNOWN_NODE)]
        return answered

    flood(1 << 40, 2 * UNKNOWN_REMEMBERED)  # warm up: the remembered ids are at their bound
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        assert flood(1 << 41, 10_000) == 10_000  # each one answered with REJECT unknown_node
        after_first = tracemalloc.take_snapshot()
        assert flood(1 << 42, 10_000) == 10_000
        after_second = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()

    def grown(since: tracemalloc.Snapshot, until: tracemalloc.Snapshot) -> int:
        return sum(stat.size_diff for stat in until.compare_to(since, "filename"))

    # The first flood replaces every remembered id (allocated before tracing began, so not offset
    # here): about 180 KB for UNKNOWN_REMEMBERED of them. The second one finds them at that bound.
    assert grown(before, after_first) < 400_000, "state per invented id"
    assert grown(after_first, after_second) < 16_000, "state per invented id"
    assert bench.sessions.nodes == {} and bench.committer.pending == []


def test_one_unknown_id_gets_at_most_one_reject_a_second(bench: Bench) -> None:
    stranger = bytes.fromhex("00000000deadbeef")
    replies = [bench.feed(raw_frame(messages.STATUS, counter, {0: 1}, node=stranger)) for counter in range(1, 201)]
    assert [len(rejects(r)) for r in replies].count(1) == 1
    assert bench.sessions.nodes == {}


# ------------------------------------------------------------ hostile MQTT input


class CommandBench:
    """gateway/commands.py in front of the Bench's real Sessions and Link, with a real store."""

    def __init__(self, bench: Bench, data_dir: pathlib.Path) -> None:
        self.worker = StoreWorker(Store(data_dir, 10_000_000))
        self.published: list[tuple[str, bytes]] = []
        self.acks: list[int] = []
        self.commands = Commands(
            self.worker, "edgegw/gw-test", bench.sessions, lambda topic, payload: self.published.append((topic, payload)), self.ack, 4
        )
        bench.sessions.listener = self.commands

    def ack(self, mid: int, qos: int, link: int) -> bool:
        self.acks.append(mid)
        return True

    def publish(self, topic: str, payload: bytes) -> None:
        self.commands.message(Inbound(topic, payload, len(self.acks) + 1000, 1, False, 1))

    async def answered(self, count: int) -> list[Any]:
        for _ in range(500):
            if len(self.acks) >= count:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        return [strict_json(payload) for topic, payload in self.published if "/command/" in topic]


@pytest.fixture
async def command_bench(bench: Bench, tmp_path: pathlib.Path) -> Any:
    made = CommandBench(bench, tmp_path)
    await made.commands.open()
    task = asyncio.get_running_loop().create_task(made.commands.run())
    yield made
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    made.worker.close()


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (json.dumps({"name": "x" * 300}).encode(), "does not fit one frame: too_long"),  # issue 13: an unhandled exception before
        (b'{"name": "\\ud800"}', "cannot be sent"),  # a lone surrogate: UnicodeEncodeError escaped the handler before
        (json.dumps({"deep": 2**70}).encode(), "limit"),
        (json.dumps({"a": [[[[[[[[[1]]]]]]]]]}).encode(), "limit"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
    ],
)
async def test_config_set_that_cannot_become_a_frame_is_rejected_and_the_next_goes_through(
    bench: Bench, command_bench: CommandBench, caplog: pytest.LogCaptureFixture, payload: bytes, why: str
) -> None:
    bench.hello()
    bench.replies()
    topic = "edgegw/gw-test/nodes/%s/config/set" % NODE.hex()
    command_bench.publish(topic, payload)
    (state,) = await command_bench.answered(1)
    assert state["state"] == "rejected" and why in state["error"], state
    assert bench.replies() == []
    (line,) = log_lines(caplog, "gateway.commands")
    assert "rejected: " in line and why in line and "Traceback" not in caplog.text
    command_bench.publish(topic, b'{"interval": 30}')  # the next one goes through
    states = await command_bench.answered(2)
    (config,) = bench.replies()
    assert config.fields == {"op": messages.CONFIG_SET, "values": {"interval": 30}, "id": 1}
    assert config.flags & fr.F_ACK_REQ
    assert [s["state"] for s in states[1:]] == ["queued", "sent"]


async def test_request_topic_text_is_escaped_in_the_log(command_bench: CommandBench, caplog: pytest.LogCaptureFixture) -> None:
    command_bench.publish("edgegw/gw-test/nodes/x\nCRITICAL forged/command", b"{}")
    await command_bench.answered(1)
    (line,) = log_lines(caplog, "gateway.commands")
    assert "\n" not in line and "x\\nCRITICAL forged" in line


# ------------------------------------------------------------ the real gateway process


# The gateway, its broker, its capture and its two ptys, as tests/test_gateway.py makes them.
broker, capture, cables, gateway = test_gateway.broker, test_gateway.capture, test_gateway.cables, test_gateway.gateway


def latest_status(capture: MqttCapture, node: bytes = NODE) -> Any:
    found = [m for m in capture.snapshot() if m.topic == "edgegw/gw-test/nodes/%s/status" % node.hex()]
    return strict_json(found[-1].payload) if found else None


def test_process_a_hostile_node_is_answered_and_never_stuck(gateway: GatewayProcess, capture: MqttCapture, cables: list[PtyCable]) -> None:
    gateway.wait_for_log("ttyNODE0: open")
    cable = cables[0]
    node = ScriptedNode(cable, NODE)
    node.wait_acked([node.hello()])

    def send_raw(mtype: int, mapping: Any, flags: int = fr.F_ACK_REQ) -> int:
        counter = node.counter
        node.counter += 1
        wire = raw_frame(mtype, counter, mapping, flags)
        if flags & fr.F_ACK_REQ:
            node.unacked[counter] = wire
        cable.write(b"\x00" + wire)
        return counter

    config = send_raw(messages.CONFIG, {0: messages.CONFIG_REPORT, 1: {"key": b"\x01", "gain": math.nan}})
    status = send_raw(messages.STATUS, {0: 77, 5: -math.inf})
    node.wait_acked([config, status])
    capture.wait_for(lambda msgs: (latest_status(capture) or {}).get("uptime") == 77)
    document = latest_status(capture)
    assert document["config"] == {"key": "AQ", "gain": None} and document["snr"] is None

    send_raw(messages.LOG, {0: 3, 1: "fine\n2026-12-02 05:00:00,000 CRITICAL gateway: forged\x1b[31m"}, 0)
    bad_cbor = send_raw(messages.STATUS, b"\xa2\x00")
    reject = node.wait_for(messages.REJECT)
    assert (reject.fields["reason"], reject.fields["counter"]) == (perr.E_CBOR, bad_cbor)
    for _ in range(3):
        send_raw(messages.READINGS, {1: [0, 1, 0]}, fr.F_DOWNLINK)
    gateway.wait_for_log("marked DOWNLINK came from the nodes' side")
    gateway.wait_for_log("node 0000a4cf12b3c4d5 says: fine\\n2026")
    log_text = gateway.log()
    assert "\x1b" not in log_text and not any(line.startswith("2026-12-02 05:00:00,000 CRITICAL") for line in log_text.splitlines())
    assert "Traceback" not in log_text


def test_process_bad_channel_names_and_invented_ids(gateway: GatewayProcess, cables: list[PtyCable]) -> None:
    gateway.wait_for_log("ttyNODE0: open")
    cable = cables[0]
    node = ScriptedNode(cable, NODE)
    wire = raw_frame(messages.HELLO, 1, {0: [1, 0], 1: "x", 2: "y", 3: 1, 4: [{0: "ok", 1: ""}, {0: "room/+/#", 1: ""}]})
    cable.write(b"\x00" + wire)
    reject = node.wait_for(messages.REJECT)
    assert (reject.fields["reason"], reject.fields["counter"]) == (perr.E_SCHEMA, 1) and "channel 1" in reject.fields["detail"]
    for number in range(200):  # ids nobody announced: each told to say HELLO
        stranger = ScriptedNode(cable, (0xE0 << 56 | number).to_bytes(8, "big"))
        stranger.readings([0, 1, 0])
    answered: set[bytes] = set()
    deadline = time.monotonic() + 15
    while len(answered) < 200 and time.monotonic() < deadline:
        answered |= {m.node_id for m in node.poll(0.1) if m.type == messages.REJECT and m.fields["reason"] == perr.E_UNKNOWN_NODE}
    assert len(answered) == 200
    node.wait_acked([node.hello()])  # the port and the node are fine
    assert "Traceback" not in gateway.log()


def test_process_config_set_that_cannot_be_sent_is_refused(gateway: GatewayProcess, capture: MqttCapture, cables: list[PtyCable]) -> None:
    gateway.wait_for_log("ttyNODE0: open")
    gateway.wait_for_log("connected to")
    node = ScriptedNode(cables[0], NODE)
    node.wait_acked([node.hello()])
    topic = "edgegw/gw-test/nodes/%s/config/set" % NODE.hex()
    capture.client.publish(topic, json.dumps({"name": "x" * 300}), qos=1)
    gateway.wait_for_log("rejected: the settings does not fit one frame: too_long")
    capture.client.publish(topic, json.dumps({"interval": 30}), qos=1)
    assert node.wait_for(messages.CONFIG).fields == {"op": messages.CONFIG_SET, "values": {"interval": 30}, "id": 1}
    assert "Traceback" not in gateway.log()


def test_a_message_only_the_gateway_sends_is_rejected_when_a_node_sends_it(bench: Bench) -> None:
    bench.hello()
    command = encode(Message(messages.COMMAND, NODE, 2, {"id": 1, "action": "reboot"}, fr.F_ACK_REQ))
    config_set = encode(Message(messages.CONFIG, NODE, 3, {"op": messages.CONFIG_SET, "values": {"interval": 1}}, fr.F_ACK_REQ))
    for wire, reason in ((command, perr.E_TYPE), (config_set, perr.E_SCHEMA)):
        replies = bench.feed(wire)
        assert acked(replies) == [] and [r["reason"] for r in rejects(replies)] == [reason]
    assert bench.sessions.nodes[NODE.hex()].window.highest == 1  # refused: their counters are not used up


def auth_or_version_frame(mtype: int, counter: int, flags: int, node: bytes, version: int = 0x10) -> bytes:
    """AUTH set (tag, no CRC) or, without AUTH, another major version with a good CRC: refused before the payload."""
    head = struct.pack(">BBB8sI", version, mtype, flags, node, counter) + b"\xa0"
    if flags & fr.F_AUTH:
        return cobs.encode(head + bytes(8), True)
    return cobs.encode(head + struct.pack(">I", binascii.crc32(head)), True)


@pytest.mark.parametrize("known", [False, True], ids=["no-session", "session"])
def test_auth_and_version_errors_name_type_and_are_not_answered_for_ack_reject_or_downlink(bench: Bench, known: bool) -> None:
    """SPEC.md §5.12, §7: a REJECT names the refused frame's type; never one for an ACK, a REJECT or a frame marked DOWNLINK."""
    if known:
        bench.hello(counter=1, caps=0x0B | messages.CAP_AUTH)
    nodes = (bytes([0, 0, 0, 0, 0, 0, 0, index]) for index in range(0xE0, 0xFF)) if not known else itertools.repeat(NODE)
    for flags, version, reason in ((fr.F_AUTH | fr.F_ACK_REQ, 0x10, perr.E_AUTH), (fr.F_ACK_REQ, 0x20, perr.E_VERSION)):
        (reject,) = rejects(bench.feed(auth_or_version_frame(messages.STATUS, 5, flags, next(nodes), version)))
        assert (reject["reason"], reject["counter"], reject["type"]) == (reason, 5, messages.STATUS)
        for mtype, extra in ((messages.ACK, 0), (messages.REJECT, 0), (messages.STATUS, fr.F_DOWNLINK)):
            assert bench.feed(auth_or_version_frame(mtype, 6, flags | extra, next(nodes), version)) == []
    assert bench.link.errors["wrong_direction"] == 2


def test_downlink_counters_used_up_stop_the_downlink_instead_of_wrapping(bench: Bench, caplog: pytest.LogCaptureFixture) -> None:
    """SPEC.md §4.1: counters never wrap; past 2^32 - 1 the gateway sends that node nothing more (one error line), never counter 0."""
    counters = DownlinkCounters(fr.MAX_COUNTER, 2**40)  # reserved far ahead: no reservation runs
    bench.sessions.counters = counters
    bench.link.downlink._next_counter = counters.take  # the counters as PortManager hands them out
    (ack,) = bench.hello()  # the session starts at the gateway-wide counter; its ACK takes the last one, the TIME after it has none
    assert (ack.type, ack.counter) == (messages.ACK, fr.MAX_COUNTER)
    assert bench.feed(raw_frame(messages.STATUS, 2, {0: 1})) == []
    assert bench.sessions.take_counter(NODE.hex()) is None
    (line,) = log_lines(caplog, "gateway.counters")
    assert "node %s: downlink counters used up" % NODE.hex() in line


def test_rules_a_c_implementer_would_otherwise_guess(bench: Bench) -> None:
    """SPEC.md §3.5, §5.3, §5.4: HELLO proto is information only, 0 channels and 0 samples are valid,
    an AUTH frame too short for a tag is `auth`."""
    hello = bench.hello(proto=[9, 9], channels=[])
    assert [reply.type for reply in hello] == [messages.ACK, messages.TIME]
    assert bench.feed(raw_frame(messages.READINGS, 2, {1: []})) == []  # acknowledged once committed
    assert [(pending.counter, pending.readings) for pending in bench.committer.pending] == [(2, 0)]
    (reject,) = rejects(bench.feed(raw_frame(messages.READINGS, 3, {0: 1795000000, 1: [0, 1, 0]})))
    assert (reject["reason"], reject["counter"]) == (perr.E_SCHEMA, 3)  # no channel 0
    short = cobs.encode(struct.pack(">BBB8sI", 0x10, messages.LOG, fr.F_AUTH, bytes(7) + b"\x01", 4) + bytes(4), True)
    (reject,) = rejects(bench.feed(short))
    assert (reject["reason"], reject["counter"], reject["type"]) == (perr.E_AUTH, 4, messages.LOG)


# ------------------------------------------------------------ the log in steady state


def test_a_thousand_hellos_write_a_few_lines_and_steady_readings_none(bench: Bench, caplog: pytest.LogCaptureFixture) -> None:
    """1,000 nodes powering up: a few HELLO lines (the Digest), not 1,000; then a round of READINGS each, stored
    and acknowledged: not one line."""
    nodes = [bytes.fromhex("00000000003%05x" % index) for index in range(1000)]
    with caplog.at_level(logging.DEBUG, logger="gateway"):
        for node in nodes:
            bench.feed(encode(Message(messages.HELLO, node, 1, HELLO_FIELDS, fr.F_ACK_REQ)))
        hello_lines = len(caplog.records)
        caplog.clear()
        for round_number in range(3):
            for node in nodes:
                samples = [0, round_number, 0, 1, 2150, 1]
                bench.feed(encode(Message(messages.READINGS, node, 2 + round_number, {"samples": samples}, fr.F_ACK_REQ)))
            bench.sessions.committed(CommitResult(bench.committer.pending, [], None))
            bench.committer.pending = []
            assert len(acked(bench.replies())) == 1000, "each frame acknowledged once stored"
    assert 1 <= hello_lines <= 5, hello_lines
    assert [record.getMessage() for record in caplog.records] == [], "no line per frame"
