"""The durable buffer: rows survive kill -9 once committed, leave only when deleted, stay within budget."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from gateway.store import DB_NAME, ROW_OVERHEAD, Batch, Store, StoreError, WindowState
from tests.conftest import ROOT


def batch(n: int, size: int = 50) -> Batch:
    return Batch(topic="edgegw/gw/nodes/%016x/readings" % n, payload=bytes([n % 256]) * size, readings=10, received=1795000000.0 + n)


def test_commit_read_delete(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, 10_000_000)
    ids, _ = store.commit([batch(1), batch(2), batch(3)], {"0000a4cf12b3c4d5": WindowState(3, 0b111)})
    assert [b.id for b in store.oldest(10)] == ids
    assert store.oldest(10)[1].payload == batch(2).payload
    assert store.oldest(10, after_id=ids[0])[0].id == ids[1]
    store.delete(ids[:2])
    assert [b.id for b in store.oldest(10)] == ids[2:]
    assert store.pending_batches == 1
    store.close()


def test_windows_and_rows_survive_reopening(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, 10_000_000)
    store.commit([batch(1)], {"0000a4cf12b3c4d5": WindowState(2**32 - 1, 2**256 - 1)})
    store.close()
    again = Store(tmp_path, 10_000_000)
    assert again.load_windows() == {"0000a4cf12b3c4d5": WindowState(2**32 - 1, 2**256 - 1)}
    assert again.pending_batches == 1 and again.used_bytes == 50 + ROW_OVERHEAD
    again.close()


def test_budget_and_drop_oldest(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, 1_000_000)
    store.max_bytes = 10 * (100 + ROW_OVERHEAD)  # room for exactly ten rows
    store.commit([batch(n, 100) for n in range(10)], {})
    assert not store.room_for([batch(99, 100)])
    ids, evicted = store.commit([batch(10, 100), batch(11, 100)], {}, make_room=True)
    assert len(ids) == 2 and evicted == 20  # two oldest batches of ten readings each
    assert [b.payload[0] for b in store.oldest(20)] == list(range(2, 12))
    assert store.total("dropped_readings") == 20
    assert store.used_bytes == store.max_bytes and store.pending_batches == 10
    store.close()
    reopened = Store(tmp_path, 10 * (100 + ROW_OVERHEAD))
    assert (reopened.used_bytes, reopened.pending_batches) == (10 * (100 + ROW_OVERHEAD), 10)


def test_corrupt_database_is_moved_aside(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    store = Store(tmp_path, 10_000_000)
    assert store.moved_aside is not None and store.moved_aside.exists()
    assert "failed its integrity check" in caplog.text
    store.commit([batch(1)], {})
    assert store.pending_batches == 1


def test_a_locked_database_is_an_error_not_corruption(tmp_path: pathlib.Path) -> None:
    import sqlite3

    first = Store(tmp_path, 10_000_000)
    first.commit([batch(1)], {})
    first.close()
    holder = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None, timeout=0)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            Store(tmp_path, 10_000_000)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not list(tmp_path.glob("*.corrupt-*"))
    assert Store(tmp_path, 10_000_000).pending_batches == 1


def test_unusable_data_dir_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create data_dir"):
        Store(blocker / "data", 10_000_000)


WRITER = """
import sys
sys.path.insert(0, sys.argv[2])
from gateway.store import Store, Batch, WindowState
store = Store(sys.argv[1], 10**9)
n = int(sys.argv[3])
while True:
    batches = [Batch("t", n.to_bytes(4, "big") * 8, 1, 0.0) for n in range(n, n + 20)]
    store.commit(batches, {"node": WindowState(n + 19, 1)})
    n += 20
    print(n, flush=True)  # the "ACK": everything below n is promised
"""


def test_committed_rows_survive_kill_9(tmp_path: pathlib.Path) -> None:
    """A writer that reports each commit is SIGKILLed mid-stream, three times; every reported row is on disk."""
    promised = 0
    for _round in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(ROOT), str(promised)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        deadline = time.monotonic() + 30
        last = 0
        while time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            last = int(line)
            if last >= promised + 400:
                break
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        assert last > promised, "the writer made no progress"
        promised = last
        store = Store(tmp_path, 10**9)
        rows = {int.from_bytes(b.payload[:4], "big") for b in store.oldest(10**6)}
        assert set(range(promised)) <= rows
        assert store.load_windows()["node"].highest >= promised - 1
        store.close()
