"""When the offline buffer is full, and when the disk is: never silent, never a lost acknowledged reading."""

from __future__ import annotations

import os
import pathlib
import random
import time
from collections.abc import Callable, Iterator

import pytest

from gateway.disk import MIN_BUDGET
from gateway.store import Store, StoredFrame, StoreError
from hil.broker import Mosquitto
from hil.capture import MqttCapture
from hil.gateway import GatewayProcess
from hil.scripted_node import ScriptedNode
from hil.serial_pair import PtyCable
from protocols import Message, encode, messages
from tests import test_disk
from tests.test_cli import edgegw
from tests.test_disk import fill_up
from tests.test_gateway import counters_received

pytestmark = pytest.mark.processes

mount = test_disk.mount  # the fixture that mounts a small tmpfs
NODE = bytes.fromhex("0000a4cf12b3c4d5")
BUDGET = MIN_BUDGET  # bytes: the smallest budget allowed, about 1,500 bulky frames after its allowances
PER_FRAME = 30  # readings in a bulky frame
_noise = random.Random(11)


def bulky(value: int) -> list[int]:
    """The counter reading `value` and 29 temperatures zlib cannot shrink much, so that the buffer fills soon."""
    samples = [0, 2000, 0, 1, value, 0]
    for offset in range(1, PER_FRAME - 1):
        samples += [0, _noise.randrange(2000, 3000), offset]
    return samples


def send_flow(node: ScriptedNode, values: range, poll_every: int = 25) -> list[int]:
    """One bulky READINGS frame per value, polling ACKs as we go."""
    counters = []
    for index, value in enumerate(values):
        counters.append(node.readings(bulky(value)))
        if index % poll_every == 0:
            node.poll(0)
    return counters


def status_now(node: ScriptedNode, dropped: int) -> None:
    """A STATUS the node sends whatever its span rule says (it asks for no ACK): how many frames its full ring dropped."""
    counter = node.counter
    node.counter += 1
    node.cable.write(b"\x00" + encode(Message(messages.STATUS, node.node_id, counter, {"uptime": 60, "dropped": dropped}, 0)))


@pytest.fixture
def cable(tmp_path: pathlib.Path) -> Iterator[PtyCable]:
    made = PtyCable(tmp_path / "ttyNODE0")
    yield made
    made.close()


Started = Mosquitto | GatewayProcess | MqttCapture


@pytest.fixture
def started() -> Iterator[list[Started]]:
    """Everything a test starts is stopped, whatever the test did."""
    processes: list[Started] = []
    yield processes
    for process in reversed(processes):
        if isinstance(process, Mosquitto):
            process.stop()
        else:
            process.close()


def start_with_broker_down(
    tmp_path: pathlib.Path,
    cable: PtyCable,
    when_full: str,
    started: list[Started],
    max_bytes: int = BUDGET,
) -> tuple[Mosquitto, GatewayProcess, ScriptedNode, MqttCapture]:
    """The gateway with its broker stopped, and a capture subscribed before that: its persistent session
    gets everything the gateway publishes once the broker is back, however soon the gateway reconnects."""
    broker = Mosquitto(tmp_path / "broker")
    started.append(broker)
    broker.start()
    capture = MqttCapture(broker.host, broker.port, ["edgegw/#"])
    started.append(capture)
    gateway = GatewayProcess(tmp_path / "gw", broker.port, [str(cable.link_path)], max_bytes=max_bytes, when_full=when_full)
    started.append(gateway)
    gateway.start()
    gateway.wait_for_log("connected to")
    broker.stop()
    gateway.wait_for_log("disconnected from the broker")
    node = ScriptedNode(cable, NODE)
    node.wait_acked([node.hello()])
    return broker, gateway, node, capture


def fill_until_refused(node: ScriptedNode, value: int) -> int:
    """Send until the gateway stops acknowledging and the span rule holds the node back; returns the next value."""
    while True:
        if node.may_send():
            node.readings(bulky(value))
            value += 1
            node.poll(0)
            assert value < 20_000, "the gateway never stopped acknowledging"
            continue
        acked = len(node.acked)
        node.poll(1.0)
        if len(node.acked) == acked and not node.may_send():
            return value


def drain_and_send(node: ScriptedNode, value: int, last: int, deadline: float) -> int:
    """Send values up to `last`, resending what is not acknowledged, until everything is; returns the next value."""
    while (value <= last or node.unacked) and time.monotonic() < deadline:
        if value <= last and node.may_send():
            node.readings(bulky(value))
            value += 1
            node.poll(0)
        else:
            node.resend_unacked()  # the node retries; once the backlog drains there is room again
            node.poll(0.3)
    assert not node.unacked, "%d frames never acknowledged" % len(node.unacked)
    return value


def test_stop_acking_keeps_the_data_on_the_nodes(tmp_path: pathlib.Path, cable: PtyCable, started: list[Started]) -> None:
    broker, gateway, node, capture = start_with_broker_down(tmp_path, cable, "stop_acking", started)
    try:
        node.send(messages.STATUS, {"uptime": 1, "dropped": 100}, flags=0)  # what its ring had dropped before
        value = fill_until_refused(node, 1)
        gateway.wait_for_log("buffer full (max_bytes reached): not acknowledging new readings")
        assert len(node.unacked) >= 200, "the frames the buffer could not take stay with the node"
        assert gateway.log().count("buffer full") == 1, "logged once per episode"
        status_now(node, 8000)  # meanwhile its full ring dropped 7,900 frames
        acked_before_room = set(node.acked)
        broker.start()
        deadline = time.monotonic() + 90
        drain_and_send(node, value, 2000, deadline)
        capture.wait_for(lambda msgs: set(range(1, 2001)) <= set(counters_received(capture, "0000a4cf12b3c4d5")), timeout=60)
        refused = len(set(range(3, value + 2)) - acked_before_room)  # counters 3..: the readings (1 HELLO, 2 STATUS)
        gateway.wait_for_log(
            "buffer has room again; the gateway dropped no readings: %d frames from 1 nodes were not acknowledged"
            " (the nodes kept them), and the nodes report 7900 frames dropped from their full rings" % refused
        )
        capture.close()
    finally:
        gateway.close()
        broker.stop()


def test_drop_oldest_keeps_the_newest_and_counts_what_it_dropped(tmp_path: pathlib.Path, cable: PtyCable, started: list[Started]) -> None:
    broker, gateway, node, capture = start_with_broker_down(tmp_path, cable, "drop_oldest", started)
    try:
        # Well past what the budget holds (how many fit depends on how the frames group into chunks).
        send_flow(node, range(1, 4001))
        node.wait_acked(set(range(2, 4002)), timeout=60)  # counters 2..4001: every frame is acknowledged
        gateway.wait_for_log("dropping the oldest buffered readings")
        assert gateway.log().count("buffer full") == 1
        broker.start()
        capture.wait_for(lambda msgs: 4000 in counters_received(capture, "0000a4cf12b3c4d5"), timeout=60)
        gateway.wait_for_log("buffer has room again")
        received = set(counters_received(capture, "0000a4cf12b3c4d5"))
        assert 1 not in received and 4000 in received
        assert set(range(min(received), 4001)) <= received, "only the oldest were dropped"
        dropped = int(gateway.log().split("buffer has room again; ")[1].split(" readings")[0])
        assert dropped == PER_FRAME * (min(received) - 1)
        capture.close()
    finally:
        gateway.close()
        broker.stop()


def test_full_disk_is_a_clear_error_and_keeps_what_was_committed(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, 10**9)
    store.commit([StoredFrame(1, 0.0, b"x" * 100)], 1, {})
    store._db.execute("PRAGMA max_page_count = %d" % store._db.execute("PRAGMA page_count").fetchone()[0])  # the disk is now full
    with pytest.raises(StoreError, match="database or disk is full"):
        for _ in range(100):
            store.commit([StoredFrame(1, 0.0, os.urandom(4000))], 1, {})  # random: zlib cannot make it small
    assert store.oldest(10)[0].frames[0].payload == b"x" * 100


def test_run_with_a_bad_config_names_the_key(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "edgegw.toml"
    config.write_text('[gateway]\nid = "gw"\ndata_dir = "%s"\n[mqtt]\nhost = "localhost"\nqos = 3\n' % tmp_path)
    done = edgegw("run", "--config", str(config))
    assert done.returncode == 2
    assert "[mqtt] qos: expected one of 0, 1, found 3" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_serial_port_is_waited_for(tmp_path: pathlib.Path, cable: PtyCable) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        gateway = GatewayProcess(tmp_path / "gw", broker.port, [str(tmp_path / "ttyUSB9"), str(cable.link_path)])
        gateway.start()
        try:
            gateway.wait_for_log("ttyUSB9: not present (cable unplugged or device not enumerated); retrying")
            gateway.wait_for_log("ttyNODE0: open")  # opening a port flushes its input: a HELLO sent before it is lost
            node = ScriptedNode(cable, NODE)
            node.wait_acked([node.hello()])  # the other port is served meanwhile
            late = PtyCable(tmp_path / "ttyUSB9")
            try:
                gateway.wait_for_log("ttyUSB9: open", timeout=40)
            finally:
                late.close()
        finally:
            gateway.close()


def test_a_refused_tail_is_not_marked_seen() -> None:
    """stop_acking may store a prefix of a group: the windows written with it name that prefix only,
    or a restarted gateway would take the refused frames, resent, for duplicates and drop them."""
    from types import SimpleNamespace

    from gateway.committer import NOT_HELD, Pending, _window_plan
    from protocols import CounterWindow
    from protocols import window as win

    node = SimpleNamespace(window=CounterWindow(4, 1))
    group = [Pending("n", counter, StoredFrame(1, 0.0, b""), 1, None, node, node.window, NOT_HELD) for counter in (5, 6, 7)]  # type: ignore[arg-type]
    plan = _window_plan(group)
    state = plan.after(2)["n"]
    window = CounterWindow(state.highest, state.seen)
    assert (window.highest, window.check(5), window.check(7)) == (6, win.DUPLICATE, win.NEW)
    assert plan.after(0) == {}


def test_a_full_disk_stops_acking_then_drains_and_takes_readings_again_by_itself(
    tmp_path: pathlib.Path, cable: PtyCable, started: list[Started], mount: Callable[..., pathlib.Path]
) -> None:
    """data_dir on a 1 MB tmpfs, max_bytes far larger: the disk is the budget. Broker away, the disk
    fills, broker back: the backlog is published and deleted, and new readings are taken again."""
    mount(1024, tmp_path / "gw" / "data")
    broker, gateway, node, capture = start_with_broker_down(tmp_path, cable, "stop_acking", started, max_bytes=10**9)
    value = fill_until_refused(node, 1)
    gateway.wait_for_log("buffer full (the disk has room for only")
    assert len(node.unacked) >= 200
    broker.start()
    try:
        value = drain_and_send(node, value, value + 500, time.monotonic() + 120)  # and 500 more after the backlog
        capture.wait_for(lambda msgs: set(range(1, value)) <= set(counters_received(capture, "0000a4cf12b3c4d5")), timeout=60)
        gateway.wait_for_log("buffer has room again")
        log = gateway.log()
        assert "Traceback" not in log and "cannot delete" not in log
        assert log.count("buffer full") == 1
    finally:
        capture.close()
    assert gateway.stop() == 0


def test_a_disk_filled_by_another_program_stop_and_restart_while_full(
    tmp_path: pathlib.Path, cable: PtyCable, started: list[Started], mount: Callable[..., pathlib.Path]
) -> None:
    """Another program fills the disk: new readings are refused and the log says so once; SIGTERM
    exits 0; a restart on the full disk starts and forwards what it holds; once the other program's
    file is gone, readings are taken again."""
    data = mount(2048, tmp_path / "gw" / "data")
    broker, gateway, node, capture = start_with_broker_down(tmp_path, cable, "stop_acking", started, max_bytes=10**9)
    node.wait_acked(send_flow(node, range(1, 301)), timeout=60)
    filler = fill_up(data)
    value = fill_until_refused(node, 301)
    gateway.wait_for_log("not acknowledging new readings")
    refused = gateway.log()
    assert gateway.stop() == 0, "a stop on a full disk is clean"
    stopped = gateway.log()
    assert "stopped cleanly" in stopped and "Traceback" not in stopped
    assert stopped.count("not acknowledging new readings") == 1, "said once"
    gateway.start()  # the disk is still full
    gateway.wait_for_log("running as", after=len(stopped))
    broker.start()
    try:
        capture.wait_for(lambda msgs: set(range(1, 301)) <= set(counters_received(capture, "0000a4cf12b3c4d5")), timeout=60)
        filler.unlink()
        drain_and_send(node, value, value + 100, time.monotonic() + 120)
        capture.wait_for(lambda msgs: set(range(1, value + 101)) <= set(counters_received(capture, "0000a4cf12b3c4d5")), timeout=60)
        assert "Traceback" not in gateway.log()
    finally:
        capture.close()
    assert gateway.stop() == 0
    assert refused


def test_a_flipped_bit_that_turns_a_blob_into_text_does_not_stop_the_gateway(
    tmp_path: pathlib.Path, cable: PtyCable, started: list[Started]
) -> None:
    """A row-header bit flip turns a chunk body and a node's window from BLOB into TEXT that is not
    UTF-8 (PRAGMA quick_check still says ok): the gateway starts, publishes every reading, and takes new ones."""
    import sqlite3

    broker, gateway, node, capture = start_with_broker_down(tmp_path, cable, "stop_acking", started, max_bytes=10**9)
    node.wait_acked([node.readings([0, 2000, 0, 1, value, 0]) for value in range(1, 21)])
    assert gateway.stop() == 0
    db = sqlite3.connect(gateway.data_dir / "buffer.sqlite3")
    db.execute("UPDATE chunks SET body = CAST(body AS TEXT) WHERE id = (SELECT id FROM chunks ORDER BY id LIMIT 1 OFFSET 1)")
    db.execute("UPDATE nodes SET seen = CAST(x'ff00ff' AS TEXT)")
    db.commit()
    assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    db.close()
    broker.start()
    try:
        mark = len(gateway.log())
        gateway.start()
        capture.wait_for(lambda msgs: set(range(1, 21)) <= set(counters_received(capture, NODE.hex())), timeout=60)
        node.wait_acked([node.readings([0, 2000, 0, 1, 21, 0])])
        capture.wait_for(lambda msgs: 21 in counters_received(capture, NODE.hex()), timeout=60)
        log = gateway.log()[mark:]
        assert "Traceback" not in log and "internal task" not in log
    finally:
        capture.close()
    assert gateway.stop() == 0


def test_drop_oldest_on_a_disk_another_program_filled_says_it_refuses(
    mount: Callable[..., pathlib.Path], caplog: pytest.LogCaptureFixture
) -> None:
    """With drop_oldest, a disk filled by another program cannot be helped by dropping readings:
    the log says the new ones are refused, not that old ones are dropped to take them."""
    import logging
    from types import SimpleNamespace

    from gateway.committer import NOT_HELD, Committer, Pending, _commit, _window_plan
    from gateway.layouts import Layouts
    from gateway.store_worker import StoreWorker
    from protocols import CounterWindow

    data = mount(1024)
    store = Store(data, 10**9)
    for n in range(0, 400, 4):
        store.commit(test_disk.noisy(n), 4, {})
    fill_up(data)
    node = SimpleNamespace(window=CounterWindow(4, 1))
    outcomes = []
    for counter in range(5, 25):
        frame = StoredFrame(7, 0.0, os.urandom(2000))
        group = [Pending("n", counter, frame, 1, None, node, node.window, NOT_HELD)]  # type: ignore[arg-type]
        outcomes.append((_commit(store, group, _window_plan(group), [], "drop_oldest", False), group))
    assert not any(outcome.stored for outcome, _group in outcomes), "nothing fits the full disk"
    worker = StoreWorker(store)
    committer = Committer(worker, Layouts(), "drop_oldest", lambda result: None)
    with caplog.at_level(logging.ERROR):
        for outcome, group in outcomes:
            committer._report(outcome, group)
    assert "dropping the oldest buffered readings to take new ones" not in caplog.text
    assert "dropping the oldest buffered readings makes no room on the disk: not acknowledging new readings" in caplog.text
    worker.close()
