"""The node roles on the whole firmware, on the real MicroPython VM behind a pty, talking to the test's Peer.

Commands change the emulated world and the readings; alarms and state changes come
as events (READINGS flagged PRIORITY) at once: the nodes sample every 60 s here, so
any READINGS sooner is an event. tests/test_roles.py runs the roles alone in emulated time.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.fwtools import build, world
from gateway.fwtools.emulate import heap_bytes, write_node_json
from protocols import Message, StreamDecoder, cobs, messages
from protocols import frame as fr
from tests.conftest import ROOT
from tests.test_firmware import HEAP, Peer, ack_new, start_node, stop
from tests.test_roles import role_check

# The roles' commands and events go through the node API of NODE-API.md (node.event, the command
# registry, poll): until firmware/node.py has it these tests say so instead of failing.
pytestmark = pytest.mark.micropython
ROLES = ("streetlight", "gauge", "parking")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("bundle")
    build.build(out, emulator=True)
    return out


def wait_for(peer: Peer, match: Callable[[Message], bool], what: str, after: int = 0, timeout: float = 20.0) -> Message:
    """The first frame from the node (from index `after`) that matches, every frame on the way acknowledged."""
    deadline = time.monotonic() + timeout
    acked = after
    while time.monotonic() < deadline:
        acked = ack_new(peer, acked)
        for message in peer.received[after:]:
            if match(message):
                return message
        peer.pump(0.1)
    raise AssertionError("no %s within %.0f s; got %s" % (what, timeout, [(m.name, m.fields) for m in peer.received[after:]][-8:]))


def run_command(peer: Peer, node_id: bytes, ident: int, name: str, args: dict[str, object]) -> Message:
    mark = len(peer.received)
    peer.send(messages.COMMAND, node_id, {"id": ident, "action": name, "args": args}, fr.F_ACK_REQ)
    return wait_for(peer, lambda m: m.type == messages.COMMAND_RESULT and m.fields["id"] == ident, "result of %s" % name, mark)


def is_event(message: Message) -> bool:
    return message.type == messages.READINGS and bool(message.flags & fr.F_PRIORITY)


def values(message: Message) -> dict[int, Any]:
    samples = message.fields["samples"]
    return dict(zip(samples[0::3], samples[1::3], strict=True))


@pytest.fixture
def peer() -> Iterator[Peer]:
    made = Peer()
    yield made
    made.close()


@contextlib.contextmanager
def role_node(bundle: pathlib.Path, peer: Peer, data: pathlib.Path, role: str) -> Iterator[Message]:
    """A node with this role, sampling every 60 s (any READINGS sooner is an event); its HELLO, acknowledged.
    At the end it is stopped, and its console must hold no traceback."""
    write_node_json(data, role)
    node = start_node(bundle, peer, data, interval=60, status=60.0)
    try:
        yield wait_for(peer, lambda m: m.type == messages.HELLO, "HELLO")
    finally:
        output = stop(node)
    assert "Traceback" not in output, output


@pytest.mark.parametrize("hw_model", ["unix-emulation", "Raspberry Pi Pico W with RP2040"])
def test_every_roles_hello_offers_its_channels_and_commands_within_a_frame(
    micropython: str, bundle: pathlib.Path, tmp_path: pathlib.Path, hw_model: str
) -> None:
    """Each role's HELLO as its node encodes it (firmware/node.py's hello() on MicroPython) fits the 236-byte payload."""
    sizes = {}
    for role, channels, command in (
        ("streetlight", ["level", "power", "lamp_ok", "hours", "counter"], "dim"),
        ("gauge", ["level", "rate", "flood", "rise", "counter"], "set_threshold"),
        ("parking", ["occupied", "field", "counter"], "calibrate"),
    ):
        wire = bytes.fromhex(role_check(micropython, bundle, tmp_path / role, "hello:" + role, hw_model)["wire"])
        decoder = StreamDecoder()
        decoder.feed(wire)
        (hello,) = [m for m in decoder.drain() if isinstance(m, Message) and m.type == messages.HELLO]
        assert hello.fields["hw_model"] == hw_model
        assert [channel["name"] for channel in hello.fields["channels"]] == channels
        offered = hello.fields["commands"]
        assert command in offered and {"reboot", "sample_now", "set_interval", "identify"} <= set(offered)
        sizes[role] = len(fr.unpack(cobs.decode(wire.strip(b"\x00"))).payload)
        assert sizes[role] <= fr.MAX_PAYLOAD
    print("HELLO payload bytes with hw_model %r: %s (limit %d)" % (hw_model, sizes, fr.MAX_PAYLOAD))


def test_streetlight_node_dims_with_a_fade_and_reports_a_failed_lamp_at_once(
    bundle: pathlib.Path, peer: Peer, tmp_path: pathlib.Path
) -> None:
    data = tmp_path / "flash"
    with role_node(bundle, peer, data, "streetlight") as hello:
        nid = hello.node_id
        result = run_command(peer, nid, 1, "dim", {"level": 40})
        assert (result.fields["outcome"], result.fields.get("value")) == (messages.OUTCOME_OK, 40)
        assert world.lamp_levels(data)[-1][1] == 40, "no fade: the lamp is at 40 % when the result comes"
        bad_args: list[tuple[int, dict[str, object]]] = [(2, {"level": 101}), (3, {"fade_s": 5}), (4, {"level": 50, "colour": 1})]
        bad_args.append((5, {"level": "high"}))
        for ident, args in bad_args:
            bad = run_command(peer, nid, ident, "dim", args)
            assert bad.fields["outcome"] == messages.OUTCOME_BAD_ARGS, (args, bad.fields)
        assert run_command(peer, nid, 6, "launch", {}).fields["outcome"] == messages.OUTCOME_UNKNOWN
        assert world.lamp_levels(data)[-1][1] == 40, "a refused command changes nothing"

        result = run_command(peer, nid, 7, "dim", {"level": 80, "fade_s": 2})
        assert result.fields["outcome"] == messages.OUTCOME_OK
        deadline = time.monotonic() + 20
        while world.lamp_levels(data)[-1][1] != 80 and time.monotonic() < deadline:
            peer.pump(0.2)
        levels = [level for _, level in world.lamp_levels(data)]
        assert levels[:2] == [100, 40], "power-up at full, then the first dim: one change, %r" % levels
        faded = levels[2:]
        assert faded == sorted(set(faded)) and faded[-1] == 80 and len(faded) > 5, "a fade: many steps up to 80, each once: %r" % faded
        mark = len(peer.received)
        assert run_command(peer, nid, 8, "sample_now", {}).fields["outcome"] == messages.OUTCOME_OK
        reading = wait_for(peer, lambda m: m.type == messages.READINGS and not is_event(m), "READINGS after sample_now", mark)
        assert values(reading)[0] == 80 and values(reading)[1] == 492 and values(reading)[2] == 1, "80 %: 6 W + 54 W x 0.8"

        mark = len(peer.received)
        world.fail_lamp(data)
        event = wait_for(peer, is_event, "an event for the failed lamp", mark)  # the interval is 60 s: only an event comes sooner
        assert values(event)[2] == 0 and values(event)[1] == 0, "lamp_ok 0, no power drawn"
        failed = run_command(peer, nid, 9, "dim", {"level": 30})
        assert failed.fields["outcome"] == messages.OUTCOME_FAILED and "lamp" in failed.fields["detail"]
        mark = len(peer.received)
        world.fail_lamp(data, failed=False)
        event = wait_for(peer, is_event, "an event for the new lamp", mark)
        assert (values(event)[0], values(event)[2]) == (30, 1), "the new lamp is alight at the level dimmed to while it was out"


def test_gauge_node_sends_the_flood_alarm_at_once_and_takes_a_new_mark(bundle: pathlib.Path, peer: Peer, tmp_path: pathlib.Path) -> None:
    """The rise alarm needs a minute of levels: tests/test_roles.py checks it in emulated time."""
    data = tmp_path / "flash"
    now = time.time()
    world.set_water(data, [(now, 400), (now + 4, 400), (now + 10, 2000)])  # past the 1,500 mm mark about 8 s from now
    with role_node(bundle, peer, data, "gauge") as hello:
        nid = hello.node_id
        bad = run_command(peer, nid, 1, "set_threshold", {"mm": 5001})
        assert bad.fields["outcome"] == messages.OUTCOME_BAD_ARGS
        assert run_command(peer, nid, 2, "set_threshold", {"rise": 900}).fields["outcome"] == messages.OUTCOME_BAD_ARGS
        flood = wait_for(peer, lambda m: is_event(m) and values(m)[2] == 1, "the flood alarm", timeout=30)
        assert 1500 <= values(flood)[0] < 1900, "the alarm comes as the water passes the mark, not at its top: %r" % values(flood)
        result = run_command(peer, nid, 3, "set_threshold", {"mm": 3000, "rise": 99999})
        assert result.fields["outcome"] == messages.OUTCOME_OK
        ended = wait_for(peer, lambda m: is_event(m) and values(m)[2] == 0, "the flood's end under the new mark", timeout=10)
        assert values(ended)[0] < 2950 and ended.counter > flood.counter
        assert json.loads((data / "gauge.json").read_text()) == {"mm": 3000, "rise": 99999}


def test_parking_node_sends_every_occupancy_change_at_once_and_in_order(bundle: pathlib.Path, peer: Peer, tmp_path: pathlib.Path) -> None:
    data = tmp_path / "flash"
    now = time.time()
    # The node learns the empty bay in its first 1.6 s; then two cars, one after the other.
    world.set_cars(data, [(now + 4, now + 10), (now + 14, now + 20)])
    with role_node(bundle, peer, data, "parking") as hello:
        seen: list[Message] = []
        while len(seen) < 4:
            told = {event.counter for event in seen}

            def new_event(message: Message, told: set[int] = told) -> bool:
                return is_event(message) and message.counter not in told

            seen.append(wait_for(peer, new_event, "event %d" % (len(told) + 1), timeout=40))
        assert [values(event)[0] for event in seen] == [1, 0, 1, 0]
        assert [event.counter for event in seen] == sorted(event.counter for event in seen)
        busy = run_command(peer, hello.node_id, 1, "calibrate", {"now": 1})
        assert busy.fields["outcome"] == messages.OUTCOME_BAD_ARGS
        assert run_command(peer, hello.node_id, 2, "calibrate", {}).fields["outcome"] == messages.OUTCOME_OK
        peer.pump(4.0)
        assert not [m for m in peer.received if is_event(m) and m.counter not in {e.counter for e in seen}], "no car, no event"


@pytest.mark.parametrize("role", ROLES)
def test_a_role_node_runs_sustained_within_its_heap(bundle: pathlib.Path, peer: Peer, tmp_path: pathlib.Path, role: str) -> None:
    """Sampling every 0.1 s with its world moving and every frame acknowledged: no MemoryError, heap peak under the limit."""
    data = tmp_path / "flash"
    now = time.time()
    world.set_water(data, [(now, 400), (now + 4, 2500)])
    world.set_cars(data, [(now + 3, now + 6)])
    write_node_json(data, role)
    node = start_node(bundle, peer, data, interval=0.1, status=1.0)
    try:
        wait_for(peer, lambda m: m.type == messages.HELLO, "HELLO")
        if role == "streetlight":
            run_command(peer, peer.received[0].node_id, 1, "dim", {"level": 10, "fade_s": 3})
        acked, deadline = 0, time.monotonic() + 8
        while time.monotonic() < deadline:
            peer.pump(0.2)
            acked = ack_new(peer, acked)
    finally:
        output = stop(node)
    assert "MemoryError" not in output and "Traceback" not in output and "out of memory" not in output, output
    statuses = [m for m in peer.received if m.type == messages.STATUS]
    assert statuses and len([m for m in peer.received if m.type == messages.READINGS]) > 30
    peak = statuses[-1].fields["heap_peak"]
    print("%s node heap high-water mark: %d bytes of %s" % (role, peak, HEAP))
    assert 0 < peak < heap_bytes(HEAP)


def test_emulate_starts_nodes_with_a_role(tmp_path: pathlib.Path) -> None:
    """`edgegw fw emulate --role gauge`: each node boots a gauge (its HELLO says so) from node.json in the data_dir it prints."""
    import serial

    command = [sys.executable, "-m", "gateway.cli", "fw", "emulate", "--count", "1", "--role", "gauge", "--state", str(tmp_path)]
    emulator = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        assert emulator.stdout is not None
        line = json.loads(emulator.stdout.readline())
        assert line["role"] == "gauge" and json.loads((pathlib.Path(line["data_dir"]) / "node.json").read_text()) == {"role": "gauge"}
        with serial.Serial(line["port"], 115200, timeout=0.2) as port:
            decoder = StreamDecoder()
            deadline = time.monotonic() + 20
            channels: list[str] = []
            while not channels and time.monotonic() < deadline:
                decoder.feed(port.read(512))
                for message in decoder.drain():
                    if isinstance(message, Message) and message.type == messages.HELLO:
                        channels = [channel["name"] for channel in message.fields["channels"]]
        assert channels == ["level", "rate", "flood", "rise", "counter"]
    finally:
        emulator.terminate()
        emulator.wait(15)
    assert emulator.returncode == 0
    wrong = subprocess.run([*command[:-2], "--role", "lamp"], capture_output=True, text=True, cwd=ROOT, timeout=30, check=False)
    assert wrong.returncode == 2 and "invalid choice: 'lamp'" in wrong.stderr
