"""A node's counter reset (SPEC.md §4.3) survives a restart, clean or kill -9, now that windows are kept lazily.

Found in review of issue 12: frames after a reset went broker first, so no chunk held the reset window, and
the fold joined the reset window with the older one: a restarted gateway took the node's new frames for
duplicates (ACKed, never stored nor published). They use the router test's Rig (real Sessions, Link,
router, committer, Store on disk, forwarder; a recording uplink whose PUBACKs the test gives).
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
from collections.abc import Callable

import pytest

from gateway.store import Store, StoredFrame, WindowState
from hil.broker import Mosquitto
from hil.capture import MqttCapture
from hil.gateway import GatewayProcess
from hil.scripted_node import ScriptedNode
from hil.serial_pair import PtyCable
from protocols import Message, messages
from protocols import frame as fr
from tests.test_hostile import HELLO_FIELDS, NODE
from tests.test_router import Rig, until

AFTER_RESET = 10_000  # the value a frame sent after the node's counter reset carries (before: its counter)


def _readings(rig: Rig, counter: int, value: int) -> None:
    rig.feed(Message(messages.READINGS, NODE, counter, {"samples": [1, value, 0]}, fr.F_ACK_REQ))


def _seen(values: Callable[[], list[int]], value: int) -> Callable[[], bool]:
    return lambda: value in values()


async def _start(rig: Rig) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(rig.committer.run()), asyncio.create_task(rig.forwarder.run())]
    rig.forwarder.connected()
    return tasks


async def _stop(rig: Rig, tasks: list[asyncio.Task[None]], fold: bool) -> None:
    """fold: as Agent.run's stop does (Agent._fold: Store.save_windows(Sessions.moved_windows())); else as kill -9 leaves it."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if fold:
        await rig.worker.call(rig.store.save_windows, rig.sessions.moved_windows())
    rig.worker.close()


def _restart(tmp_path: pathlib.Path, info: dict[str, object]) -> Rig:
    """A new gateway on the same data_dir, restored as Agent.run restores (windows from the store, the node's info)."""
    rig = Rig(tmp_path)
    windows = rig.store.load_windows()
    rig.sessions.restore({node: (w.highest, w.seen) for node, w in windows.items()}, {NODE.hex(): json.dumps(info)})
    return rig


@pytest.mark.parametrize("fold", [True, False], ids=["clean-stop", "kill-9"])
async def test_after_a_counter_reset_a_restart_does_not_take_new_frames_for_duplicates(tmp_path: pathlib.Path, fold: bool) -> None:
    """A node lost its counter (SPEC.md §4.3: a HELLO whose counter is STALE resets its window); its frames
    after the reset go broker first, so the reset window is never written with them. A clean stop's fold joins the
    reset window with the pre-reset one of a chunk not folded yet (store.union: 'no counter reset between'), and a
    kill -9 leaves only the pre-reset window on disk: either way the restarted gateway restores the PRE-reset window,
    and a NEW frame whose counter that window has seen is called DUPLICATE: ACKed, never stored nor published."""
    rig = Rig(tmp_path)
    tasks = await _start(rig)
    rig.feed(Message(messages.HELLO, NODE, 1, HELLO_FIELDS, fr.F_ACK_REQ))
    assert rig.acked() == [1]
    # An outage: the node's frames 50..60 and 300 are committed; the chunk holds the window (300, bits of 50..60, 300).
    rig.uplink.connected = False
    rig.forwarder.disconnected()
    for counter in [*range(50, 61), 300]:
        rig.readings(counter)
    await until(lambda: {*range(50, 61), 300} <= set(rig.acked()))
    # The node loses its counter and boots at 40 (300 - 40 >= 256: STALE, so the HELLO resets its window to 40).
    rig.feed(Message(messages.HELLO, NODE, 40, HELLO_FIELDS, fr.F_ACK_REQ))
    assert 40 in rig.acked() and rig.sessions.nodes[NODE.hex()].window.highest == 40
    # The broker is back; the node's next frames 41..49 go broker first, each PUBACKed and ACKed.
    rig.uplink.connected = True
    rig.forwarder.connected()
    for counter in range(41, 50):
        _readings(rig, counter, AFTER_RESET + counter)
        await until(_seen(rig.published, AFTER_RESET + counter))
        rig.puback_all()
        await until(_seen(rig.acked, counter))
    info = dict(rig.sessions.nodes[NODE.hex()].info)
    await _stop(rig, tasks, fold)

    rig = _restart(tmp_path, info)
    tasks = await _start(rig)
    try:
        window = rig.sessions.nodes[NODE.hex()].window
        restored = WindowState(window.highest, window.seen)
        _readings(rig, 50, AFTER_RESET + 50)  # the node's next frame after 49: never sent since its reset
        await asyncio.sleep(0.5)
        published_or_stored = AFTER_RESET + 50 in rig.published() or AFTER_RESET + 50 in await rig.stored_counters()
        acked = 50 in rig.acked()
        assert not acked or published_or_stored, (
            "frame 50 (new since the node's counter reset) was ACKed but never stored nor published: lost."
            " Restored window: highest %d (the pre-reset one; the node's is 49)" % restored.highest
        )
    finally:
        await _stop(rig, tasks, fold=False)


def test_a_fold_of_a_reset_window_replaces_the_older_one(tmp_path: pathlib.Path) -> None:
    """At the store: a fold given a node's reset window does not join it with the higher pre-reset one of an unfolded chunk."""
    store = Store(tmp_path, 10**9)
    try:
        store.commit([StoredFrame(1, 1.0, b"\xa1\x01\x80")], 0, {NODE.hex(): WindowState(300, 0b1)})
        store.save_windows({NODE.hex(): WindowState(49, (1 << 10) - 1, reset=True)})  # the node's window now: 40..49
    finally:
        store.close()
    store = Store(tmp_path, 10**9)
    try:
        assert store.load_windows()[NODE.hex()].highest == 49, "the fold wrote the pre-reset window back"
    finally:
        store.close()


RESET_NODE = bytes.fromhex("00000000000a77ac")
CHANNELS = [{"name": "counter", "unit": "", "scale": 0}]


def delivered(capture: MqttCapture) -> set[int]:
    return {value for node, value, _at in capture.counter_deliveries() if node == RESET_NODE.hex()}


def send_acked(node: ScriptedNode, numbers: range) -> None:
    for number in numbers:
        node.wait_acked([node.readings([0, number, 0])])


def test_readings_after_a_counter_reset_survive_kill_9(tmp_path: pathlib.Path, hil_broker: Mosquitto) -> None:
    """End to end (found by attack): the node's frames after its reset went broker first, the reset window only in
    memory, and a kill -9 brought the old one back: the node's next readings were ACKed as duplicates, never published.
    Now the reset is folded durably at once, and the node's frames go to disk first until it is."""
    capture = MqttCapture(hil_broker.host, hil_broker.port, ["edgegw/+/nodes/+/readings"])
    cable = PtyCable(tmp_path / "ttyRESET0")
    gateway = GatewayProcess(tmp_path / "gw", hil_broker.port, [str(tmp_path / "ttyRESET*")])
    try:
        gateway.start()
        gateway.wait_for_log("ttyRESET0: open")
        old = ScriptedNode(cable, RESET_NODE, counter=1000)  # counters 1000 (HELLO), 1001-1100 (readings 1-100)
        old.wait_acked([old.hello(CHANNELS)])
        send_acked(old, range(1, 101))
        assert gateway.stop() == 0  # a clean stop folds the window (highest 1100) into the node row

        gateway.start()
        gateway.wait_for_log("ttyRESET0: open", after=gateway.log_mark)
        new = ScriptedNode(cable, RESET_NODE, counter=700)  # the node lost its counter file: 700 is 400 behind
        new.wait_acked([new.hello(CHANNELS)])  # stale -> counter reset (SPEC §4.3)
        send_acked(new, range(101, 450))  # counters 701-1049, all ACKed (on PUBACK)
        assert "counter reset" in gateway.log()
        time.sleep(2)
        gateway.kill()  # as a power cut would: the process is gone, whatever it held in memory too

        gateway.start()
        gateway.wait_for_log("ttyRESET0: open", after=gateway.log_mark)
        send_acked(new, range(450, 460))  # counters 1050-1059: new readings, acknowledged
        acked = set(range(1, 460))
        deadline = time.monotonic() + 20
        while not acked <= delivered(capture) and time.monotonic() < deadline:
            time.sleep(0.2)
        missing = sorted(acked - delivered(capture))
        assert not missing, "readings ACKed to the node and never published: %s\n%s" % (missing, gateway.log()[-1500:])
    finally:
        gateway.close()
        capture.close()
        cable.close()
