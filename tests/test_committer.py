"""Group commits: bounded by time while frames trickle in, by size at full speed, at once at a stop."""

from __future__ import annotations

import asyncio
import pathlib
import time
from types import SimpleNamespace

from gateway.committer import GROUP_READY_BYTES, NOT_HELD, CommitResult, Committer, Pending
from gateway.layouts import Layouts
from gateway.senml import Channel
from gateway.store import Store, StoredFrame
from gateway.store_worker import StoreWorker
from protocols import CounterWindow

NODE = "0000a4cf12b3c4d5"


class Nodes:
    """A committer on a real store, fed frames of one node; what each commit stored is kept."""

    def __init__(self, tmp_path: pathlib.Path, commit_wait: float) -> None:
        self.worker = StoreWorker(Store(tmp_path, 10**8))
        self.layouts = Layouts()
        self.layout = self.layouts.announce(NODE, [Channel("temperature", "Cel", -2)])
        self.groups: list[int] = []
        self.done = asyncio.Event()
        self.committer = Committer(self.worker, self.layouts, "drop_oldest", self._on_done, commit_wait=commit_wait)
        self.node = SimpleNamespace(window=CounterWindow())
        self.counter = 0

    def _on_done(self, result: CommitResult) -> None:
        self.groups.append(len(result.committed))
        self.done.set()

    def submit(self, size: int = 60, age: float = 0.0, within: float | None = None) -> None:
        self.counter += 1
        frame = StoredFrame(self.layout.id, time.time() - age, bytes([self.counter % 256]) * size)
        pending = Pending(NODE, self.counter, frame, 10, self.layout, self.node, self.node.window, NOT_HELD, commit_within=within)
        self.committer.submit(pending)

    async def until(self, frames: int) -> None:
        while sum(self.groups) < frames:
            self.done.clear()
            await asyncio.wait_for(self.done.wait(), 30)  # a bound on a hang, far below commit_wait=60


async def test_frames_that_trickle_in_are_gathered_into_one_commit(tmp_path: pathlib.Path) -> None:
    nodes = Nodes(tmp_path, commit_wait=0.5)
    task = asyncio.create_task(nodes.committer.run())
    nodes.submit()
    for _ in range(4):
        await asyncio.sleep(0.02)  # four more frames while the first one waits (well inside its 0.5 s)
        nodes.submit()
    await nodes.until(5)
    assert nodes.groups == [5] and nodes.committer.commits == 1, "one transaction for the five frames"
    nodes.submit()  # alone: committed once it is commit_wait old, without any other frame coming
    await nodes.until(6)
    assert nodes.groups == [5, 1]
    await nodes.committer.drain()
    task.cancel()
    nodes.worker.close()


async def test_a_group_that_reaches_the_size_bound_is_committed_without_waiting(tmp_path: pathlib.Path) -> None:
    nodes = Nodes(tmp_path, commit_wait=60.0)  # far beyond the test's patience: only the size bound can commit them
    task = asyncio.create_task(nodes.committer.run())
    size = 200
    count = -(-GROUP_READY_BYTES // size) + 2  # enough to pass the bound with the per-frame overhead too
    for _ in range(count):
        nodes.submit(size)
    await nodes.until(count)
    assert nodes.groups == [count] and nodes.committer.commits == 1
    await nodes.committer.drain()
    task.cancel()
    nodes.worker.close()


async def test_a_stop_commits_what_waits_at_once(tmp_path: pathlib.Path) -> None:
    nodes = Nodes(tmp_path, commit_wait=60.0)
    task = asyncio.create_task(nodes.committer.run())
    nodes.submit()
    nodes.submit()
    await asyncio.sleep(0.05)
    assert nodes.groups == [], "still gathering"
    await asyncio.wait_for(nodes.committer.drain(), 30)  # far inside commit_wait: the drain did not wait for it
    assert nodes.groups == [2]
    task.cancel()
    nodes.worker.close()


async def test_a_frame_that_waited_for_the_broker_is_not_held_back_by_a_younger_one(tmp_path: pathlib.Path) -> None:
    """A frame handed over after broker_ack_wait arrived long ago: the group is timed from it, the oldest, not
    from the younger disk-first frame ahead of it in the queue (else its ACK came after the node's retransmission)."""
    nodes = Nodes(tmp_path, commit_wait=60.0)  # far beyond the test's patience: only the old frame's age can commit them
    task = asyncio.create_task(nodes.committer.run())
    nodes.submit()
    await asyncio.sleep(0.05)
    assert nodes.groups == [], "a young frame alone waits"
    nodes.submit(age=60.0)  # held for the broker all this while
    await nodes.until(2)
    assert nodes.groups == [2]
    await nodes.committer.drain()
    task.cancel()
    nodes.worker.close()


async def test_a_radio_nodes_frame_is_committed_within_its_own_bound(tmp_path: pathlib.Path) -> None:
    """A radio node's ACK must make its receive windows (gateway/air.py): its frame's commit_within, sooner than
    commit_wait, times the group it joins, the frames gathered before it included."""
    nodes = Nodes(tmp_path, commit_wait=60.0)  # far beyond the test's patience: only the radio frame's bound can commit them
    task = asyncio.create_task(nodes.committer.run())
    nodes.submit()
    await asyncio.sleep(0.05)
    assert nodes.groups == [], "a cable's frame alone waits"
    nodes.submit(within=0.2)
    await nodes.until(2)
    assert nodes.groups == [2]
    await nodes.committer.drain()
    task.cancel()
    nodes.worker.close()
