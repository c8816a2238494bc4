"""The emulated power-cut disk (hil/powercut.py): what a cut keeps and what it throws away.

Its sanity check is SQLite itself: with synchronous=FULL every committed transaction survives
the cuts, with synchronous=OFF some do not (if they all did, the emulation would prove nothing).
"""

from __future__ import annotations

import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import pytest

from hil.powercut import PAGE, LazyStore, PowerCutDisk


@pytest.fixture
def disk(tmp_path: pathlib.Path) -> Iterator[PowerCutDisk]:
    why = PowerCutDisk.unavailable()
    if why:
        pytest.fail("the power-cut file system cannot run here: %s" % why)
    with PowerCutDisk(tmp_path / "backing", tmp_path / "mnt") as mounted:
        yield mounted


def write(path: pathlib.Path, data: bytes, *, offset: int = 0, sync: bool = False) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


@pytest.mark.processes
def test_a_synced_write_survives_a_cut_and_an_unsynced_one_does_not(disk: PowerCutDisk) -> None:
    kept, lost = disk.mountpoint / "kept", disk.mountpoint / "lost"
    write(kept, b"synced", sync=True)
    write(kept, b"-after", offset=6)  # unsynced growth of a synced file
    write(lost, b"never synced")
    assert kept.read_bytes() == b"synced-after" and lost.read_bytes() == b"never synced"  # a page cache: reads see it
    disk.cut()
    assert kept.read_bytes() == b"synced"
    assert lost.read_bytes() == b""  # the name is metadata and stays; its data was never synced


@pytest.mark.processes
def test_an_unsynced_overwrite_and_truncate_are_lost(disk: PowerCutDisk) -> None:
    path = disk.mountpoint / "file"
    content = bytes(range(256)) * 40  # three pages, the last one partial
    write(path, content, sync=True)
    write(path, b"X" * 100, offset=PAGE + 5)
    os.truncate(path, 10)
    write(path, b"tail", offset=2 * PAGE)  # grows again: the bytes between read as zeros, not as the old data
    assert path.read_bytes() == content[:10] + bytes(2 * PAGE - 10) + b"tail"
    disk.cut()
    assert path.read_bytes() == content


@pytest.mark.processes
def test_a_synced_truncate_and_rename_survive(disk: PowerCutDisk) -> None:
    path = disk.mountpoint / "file"
    write(path, b"0123456789" * 1000, sync=True)
    with open(path, "r+b") as handle:
        handle.truncate(5)
        handle.write(b"abc")
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(path, disk.mountpoint / "moved")
    write(disk.mountpoint / "moved", b"unsynced", offset=3)
    disk.cut()
    assert not path.exists()
    assert (disk.mountpoint / "moved").read_bytes() == b"abc34"


def test_pending_pages_follow_a_rename_and_die_with_an_unlink(tmp_path: pathlib.Path) -> None:
    store = LazyStore(tmp_path)
    (tmp_path / "a").write_bytes(b"")
    fd = os.open(tmp_path / "a", os.O_RDWR)
    try:
        store.write("/a", b"hello", 0, fd)
        store.renamed("/a", "/b")
        assert store.size("/a") is None and store.read("/b", 100, 0, fd) == b"hello"
        store.unlinked("/b")
        assert store.size("/b") is None
    finally:
        os.close(fd)


WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=" + sys.argv[2])
db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, pad BLOB)")
n = (db.execute("SELECT max(n) FROM t").fetchone()[0] or 0) + 1
while True:
    db.execute("INSERT INTO t VALUES (?, randomblob(300))", (n,))
    print(n, flush=True)
    n += 1
"""


def committed_over_cuts(disk: PowerCutDisk, synchronous: str, cuts: int) -> tuple[set[int], set[int]]:
    """A writer commits numbered rows and says each one once its COMMIT returned; the power is cut
    under it `cuts` times. Returns (rows said committed, rows in the database at the end)."""
    database = disk.mountpoint / "test.db"
    said: set[int] = set()
    for _ in range(cuts):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(database), synchronous], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None
        lines = 0
        while lines < 150:  # enough for a checkpoint now and then (1,000 pages by default: not often)
            line = writer.stdout.readline()
            assert line, "the writer stopped"
            said.add(int(line))
            lines += 1
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        disk.cut()
    db = sqlite3.connect(database)
    try:
        kept = {row[0] for row in db.execute("SELECT n FROM t")} if db.execute("SELECT name FROM sqlite_master").fetchall() else set()
    finally:
        db.close()
    return said, kept


@pytest.mark.processes
def test_sqlite_full_keeps_every_committed_transaction_over_cuts(disk: PowerCutDisk) -> None:
    said, kept = committed_over_cuts(disk, "FULL", cuts=5)
    assert said - kept == set(), "committed with synchronous=FULL and lost: %d rows" % len(said - kept)


@pytest.mark.processes
def test_sqlite_off_loses_committed_transactions_in_a_cut(disk: PowerCutDisk) -> None:
    said, kept = committed_over_cuts(disk, "OFF", cuts=2)
    assert said - kept, "synchronous=OFF lost nothing: the emulation would not catch a missing fsync"
