"""The buffer on real small and broken filesystems: tmpfs mounts, a filler file, read-only remounts, damaged pages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from gateway import agent as agent_module
from gateway import disk
from gateway import store as store_module
from gateway.agent import Agent
from gateway.command_book import QUEUED, SENT, Command, CommandBook
from gateway.config import parse
from gateway.layouts import Layout
from gateway.salvage import WIRE_ID_STEP
from gateway.senml import Channel
from gateway.store import DB_NAME, Chunk, Store, StoredFrame, StoreError, StoreFull, WindowState
from gateway.store_worker import StoreWorker
from tests.test_cli import edgegw

NODE = "0000a4cf12b3c4d5"


def noisy(n: int, count: int = 4, size: int = 200) -> list[StoredFrame]:
    """Frames zlib cannot shrink, each payload starting with its number n, n+1, ... in 4 bytes."""
    return [StoredFrame(7, 1795000000.0 + k, k.to_bytes(4, "big") + os.urandom(size - 4)) for k in range(n, n + count)]


def numbers(store: Store) -> list[int]:
    return [int.from_bytes(frame.payload[:4], "big") for chunk in store.oldest(10**9) for frame in chunk.frames]


def files_bytes(directory: pathlib.Path) -> int:
    """What the buffer has on disk, measured by the test itself: every file in data_dir."""
    return sum(path.stat().st_size for path in directory.iterdir() if path.is_file())


@pytest.fixture
def mount(tmp_path: pathlib.Path) -> Iterator[Callable[..., pathlib.Path]]:
    """mount(kib, where=None): a fresh tmpfs of that size; unmounted after the test, whatever it did."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    made: list[pathlib.Path] = []

    def make(kib: int, where: pathlib.Path | None = None) -> pathlib.Path:
        where = where or tmp_path / ("disk%d" % len(made))
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dk" % kib, "tmpfs", str(where)], check=True)
        made.append(where)
        return where

    yield make
    for where in reversed(made):
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_up(directory: pathlib.Path) -> pathlib.Path:
    """Another program takes every free byte of the filesystem."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(descriptor, b"\xaa" * 4096)
    finally:
        os.close(descriptor)
    return filler


def fill_buffer(store: Store, start: int = 0, make_room: bool = False, limit: int = 100_000) -> int:
    """Commit until the buffer refuses (StoreError); returns the next frame number."""
    n = start
    with contextlib.suppress(StoreError):
        while n < limit:
            store.commit(noisy(n), 4, {NODE: WindowState(n + 3, 1)}, make_room=make_room)
            n += 4
    return n


# ------------------------------------------------------------ max_bytes bounds everything


def test_max_bytes_bounds_every_file_wal_included(tmp_path: pathlib.Path) -> None:
    """Commits and deletes the way the gateway does them (checkpoints on a thread of their own, every
    so often): the database, -wal, -shm and reserve together never exceed max_bytes."""
    budget = 600_000
    store = Store(tmp_path, budget)
    n, peak = 0, 0
    for round_ in range(30):
        for _ in range(40):
            store.commit(noisy(n), 4, {NODE: WindowState(n + 3, 1)}, make_room=True)
            n += 4
            peak = max(peak, files_bytes(tmp_path))
        if round_ % 3 == 0:
            store.checkpoint()
        oldest = [chunk.id for chunk in store.oldest(10**9)][:20]
        store.delete(oldest)
        peak = max(peak, files_bytes(tmp_path))
    assert numbers(store)[-1] == n - 1, "the newest frames are there"
    assert peak <= budget, "the buffer's files took %d bytes with max_bytes = %d" % (peak, budget)
    store.close()


INFO = '{"proto": [1, 0], "fw_version": "f", "hw_model": "h", "channels": %s}' % (
    [{"name": "c%02d_%s" % (i, "x" * 12), "unit": "Cel", "scale": -2} for i in range(6)],
)


def invented(batch: int, count: int = 500) -> dict[str, str]:
    """The info of `count` node ids nobody owns, as a flood of HELLOs with invented ids leaves them."""
    return {"%016x" % (0xEE00000000000000 + batch * count + k): INFO.replace("'", '"') for k in range(count)}


def test_node_ids_invented_by_the_thousand_stay_within_their_share(tmp_path: pathlib.Path) -> None:
    """20,000 invented node ids saying HELLO: their rows take at most their share of max_bytes, and a
    real node's readings are still taken."""
    budget = 600_000
    store = Store(tmp_path, budget)
    store.commit(noisy(0), 4, {NODE: WindowState(3, 1)})
    refused = 0
    for batch in range(40):
        try:
            store.save_node_infos(invented(batch))
        except StoreFull as error:
            assert "nodes does not fit: known nodes may take 1/4 of the buffer" in str(error)
            refused += 1
        assert files_bytes(tmp_path) <= budget
    assert refused and len(store.node_info()) > 50, "as many as fit their share are saved"
    for n in range(4, 400, 4):  # a real node's readings fit beside them
        store.commit(noisy(n), 4, {NODE: WindowState(n + 3, 1)})
    assert numbers(store) == list(range(400)) and files_bytes(tmp_path) <= budget
    store.close()


def test_idle_nodes_that_own_no_readings_make_room_first(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes unseen for IDLE_S that own no buffered chunk give up their rows to newer ones; a node
    that owns chunks keeps its window and layouts, however long unseen."""
    store = Store(tmp_path, 600_000)
    layout = Layout(7, NODE, (Channel("temperature", "Cel", -2),))
    store.commit([StoredFrame(7, time.time(), b"\xa1\x01\x80")], 1, {NODE: WindowState(41, 1)}, [layout])
    store.save_node_infos(invented(0, 50))
    monkeypatch.setattr(store_module, "IDLE_S", 0.0)  # from now on, whatever was seen before is idle long enough
    for batch in range(1, 40):
        store.save_node_infos(invented(batch, 50))  # never refused: the older invented ids make room
        assert files_bytes(tmp_path) <= 600_000
    infos = store.node_info()
    assert set(invented(39, 50)) <= set(infos) and not set(invented(0, 50)) & set(infos), "the longest unseen went first"
    assert store.load_windows()[NODE] == WindowState(41, 1), "the node that owns a chunk keeps its window"
    assert store.load_layouts() == [layout]
    store.close()


def test_an_idle_node_s_layout_is_written_again_when_it_comes_back(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A layout evicted with its idle node is written again with the next frame that needs it (the committer re-marks it unsaved)."""
    store = Store(tmp_path, 600_000)
    layout = Layout(7, NODE, (Channel("temperature", "Cel", -2),))
    chunk_id, _ = store.commit([StoredFrame(7, time.time(), b"\xa1\x01\x80")], 1, {NODE: WindowState(41, 1)}, [layout])
    store.delete([chunk_id])  # published: the node owns no chunk now
    store.save_windows({})  # and its row says so once its window is folded (until then it may own a chunk)
    monkeypatch.setattr(store_module, "IDLE_S", 0.0)
    batch = 0
    while store.load_layouts():
        batch += 1
        store.save_node_infos(invented(batch, 50))
    assert store.take_evicted_layouts() == {7}
    assert store.take_evicted_layouts() == set(), "said once"
    store.close()


# ------------------------------------------------------------ a full disk


def test_a_disk_smaller_than_max_bytes_is_the_budget(mount: Callable[..., pathlib.Path]) -> None:
    data = mount(1024)
    store = Store(data, 10**9)
    with pytest.raises(StoreError, match="the disk has room for only"):
        n = 0
        while n < 100_000:
            store.commit(noisy(n), 4, {})
            n += 4
    assert n > 1000
    assert files_bytes(data) <= 1024 * 1024
    ids = [chunk.id for chunk in store.oldest(10**9)]
    assert store.delete(ids) == n, "every published chunk can be deleted"
    store.commit(noisy(n), 4, {})  # and room for new ones again
    store.close()


def test_a_full_disk_keeps_deleting_and_recovers_by_itself(
    mount: Callable[..., pathlib.Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "RESERVE_RETRY_S", 0.0)  # recovery at the first try, not RESERVE_RETRY_S later
    data = mount(1024)
    store = Store(data, 10**9)
    for n in range(0, 400, 4):
        store.commit(noisy(n), 4, {})
    filler = fill_up(data)  # another program fills the disk
    with pytest.raises(StoreError, match="disk"):
        for n in range(400, 4000, 4):
            store.commit(noisy(n), 4, {})
    assert numbers(store) == list(range(400)), "what was committed is kept"
    ids = [chunk.id for chunk in store.oldest(10**9)]
    assert store.delete(ids[:50]) == 200, "published readings can still be deleted on a full disk"
    assert store.delete(ids[50:]) == 200
    print(caplog.text)
    filler.unlink()  # the other program's file is gone: the buffer takes new readings by itself
    store.commit(noisy(4000), 4, {})
    assert numbers(store) == list(range(4000, 4004))
    store.close()


def test_restart_and_stop_on_a_full_disk(mount: Callable[..., pathlib.Path], caplog: pytest.LogCaptureFixture) -> None:
    data = mount(1024)
    store = Store(data, 10**9)
    for n in range(0, 400, 4):
        store.commit(noisy(n), 4, {})
    store.close()
    fill_up(data)
    store = Store(data, 10**9)  # starts on a full disk
    assert store.reserve("downlink_counter", 65536, 2**31) == 0, "downlink counters can be reserved"
    assert numbers(store) == list(range(400)), "and what it holds can be read to forward it"
    store.delete([chunk.id for chunk in store.oldest(10**9)])
    store.close()  # stops without an error
    store = Store(data, 10**9)
    assert store.pending_readings == 0 and store.reserve("downlink_counter", 65536, 2**31) == 65536
    store.close()


# ------------------------------------------------------------ what to fix


async def test_a_checkpoint_that_fails_costs_one_log_line_and_is_tried_again(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """data_dir renamed away under a running gateway: at each check statvfs (the WAL allowance) fails, which once
    ended the checkpoint task, and with it the gateway. One log line; once the directory is back, it checkpoints."""
    caplog.set_level(logging.INFO, "gateway.agent")
    caplog.set_level(logging.INFO, "gateway.store")
    monkeypatch.setattr(agent_module, "CHECKPOINT_CHECK_S", 0.01)
    monkeypatch.setattr(agent_module, "CHECKPOINT_BYTES", 1)  # any WAL page is enough for a checkpoint
    data_dir, away = tmp_path / "data", tmp_path / "away"
    store = Store(data_dir, 10**9)
    store.commit(noisy(0), 4, {})
    gateway = Agent(parse({"gateway": {"id": "gw-test", "data_dir": str(data_dir)}, "mqtt": {"host": "127.0.0.1"}, "serial": []}))
    gateway.worker = StoreWorker(store)
    data_dir.rename(away)
    task = asyncio.create_task(gateway._checkpoint_loop())
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + 30
        while "cannot checkpoint the buffer's WAL" not in caplog.text and not task.done() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for _check in range(20):
            await asyncio.sleep(0.01)
        assert not task.done(), "the checkpoint task ended"
        (line,) = [record.message for record in caplog.records if record.name == "gateway.agent"]
        assert line.startswith("cannot checkpoint the buffer's WAL (")
        # The committer's fill level (statvfs too) goes by the last measurement instead of raising: it once ended the committer.
        assert 0 <= store.fill() < 1
        assert caplog.text.count("cannot measure the disk of") == 1
        away.rename(data_dir)
        while "the buffer's WAL can be checkpointed again" not in caplog.text and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert store.wal_backlog() == 0, "checkpointed once the directory is back"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gateway.worker.close()


def test_a_read_only_data_dir_says_so(mount: Callable[..., pathlib.Path]) -> None:
    data = mount(1024)
    Store(data, 10**9).close()
    subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
    with pytest.raises(StoreError, match="is on a read-only filesystem: remount it read-write, or set \\[gateway\\] data_dir"):
        Store(data, 10**9)
    with pytest.raises(StoreError, match="read-only filesystem"):
        Store(data / "sub", 10**9)


def test_a_data_dir_of_another_user_says_whose_it_is(tmp_path: pathlib.Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a child as another user")
    top = pathlib.Path(tempfile.mkdtemp())  # under /tmp: a path the other user may walk
    data = top / "data"
    Store(data, 10**9).close()
    top.chmod(0o755)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        message = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            Store(data, 10**9)
        except BaseException as error:
            message = "%s: %s" % (type(error).__name__, error)
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(child, 0)
    shutil.rmtree(top)
    assert message.startswith("StoreError: "), message
    assert "belongs to root (uid 0) and edgegw runs as nobody (uid 65534)" in message and "chown -R nobody" in message, message


def test_no_free_space_at_all_says_how_much_is_needed(mount: Callable[..., pathlib.Path]) -> None:
    data = mount(256)
    fill_up(data)
    with pytest.raises(StoreError, match=r"bytes are free on the filesystem of .* and the buffer needs \d+ more: free some space there"):
        Store(data, 10**9)


# ------------------------------------------------------------ damaged databases


def page_of(path: pathlib.Path, name: str, kind: str = "leaf", index: int = 0) -> int:
    db = sqlite3.connect(path)
    pages = [row[0] for row in db.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ? ORDER BY pageno", (name, kind))]
    db.close()
    return pages[index if index >= 0 else len(pages) // 2]


def damage(path: pathlib.Path, page: int, page_size: int = 4096, keep: int = 0) -> None:
    """Overwrite one page of the file (but its first `keep` bytes) with garbage."""
    with open(path, "r+b") as file:
        file.seek((page - 1) * page_size + keep)
        file.write(b"\x5a" * (page_size - keep))


def buffered(directory: pathlib.Path, chunks: int = 200) -> int:
    """A closed buffer of `chunks` chunks of 4 frames and one node window; returns its readings."""
    store = Store(directory, 10**9)
    for n in range(0, 4 * chunks, 4):
        store.commit(noisy(n, size=60), 4, {NODE: WindowState(n + 3, 0xF)})
    store.save_node_infos({NODE: '{"fw_version": "1"}'})
    store.close()
    return 4 * chunks


def test_a_damaged_index_costs_nothing(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    readings = buffered(tmp_path)
    damage(tmp_path / DB_NAME, page_of(tmp_path / DB_NAME, "sqlite_autoindex_nodes_1"))
    with caplog.at_level(logging.ERROR):
        store = Store(tmp_path, 10**9)
    assert store.moved_aside is not None and store.moved_aside.exists()
    assert numbers(store) == list(range(readings)), "every chunk salvaged"
    assert store.load_windows() == {NODE: WindowState(readings - 1, 0xF)}
    assert store.node_info() == {NODE: '{"fw_version": "1"}'}
    assert "saved %d readings in 200 chunks, 0 layouts and 1 nodes into a fresh database; lost 0 readings" % readings in caplog.text
    assert store.pending_readings == readings
    store.close()
    assert Store(tmp_path, 10**9).moved_aside is None, "the fresh database is sound"


def test_a_damaged_chunk_page_costs_its_rows_only(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    readings = buffered(tmp_path, chunks=400)
    damage(tmp_path / DB_NAME, page_of(tmp_path / DB_NAME, "chunks", "leaf", -1))
    with caplog.at_level(logging.ERROR):
        store = Store(tmp_path, 10**9)
    kept = numbers(store)
    assert 0 < readings - len(kept) <= 200, "one leaf page of rows lost, no more"
    assert kept[0] == 0 and kept[-1] == readings - 1, "rows before and after the damage kept"
    assert "saved %d readings in %d chunks" % (len(kept), len(kept) // 4) in caplog.text
    assert "reading failed at" in caplog.text and "lost 0" not in caplog.text
    store.close()


def test_an_empty_file_is_reported(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    buffered(tmp_path, chunks=3)
    (tmp_path / DB_NAME).write_bytes(b"")
    with caplog.at_level(logging.ERROR):
        store = Store(tmp_path, 10**9)
    assert "is an empty file (0 bytes): whatever it held is gone" in caplog.text
    assert store.pending_chunks == 0
    store.close()


def test_a_salvage_interrupted_before_the_swap_is_finished_at_start(tmp_path: pathlib.Path) -> None:
    buffered(tmp_path, chunks=3)
    (tmp_path / DB_NAME).rename(tmp_path / (DB_NAME + ".salvage"))  # the damaged file moved aside, the fresh one not yet in place
    store = Store(tmp_path, 10**9)
    assert numbers(store) == list(range(12))
    store.close()


def test_the_command_line_says_what_to_fix_without_a_traceback(tmp_path: pathlib.Path, mount: Callable[..., pathlib.Path]) -> None:
    data = mount(1024)
    Store(data, 10**9).close()
    subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
    config = tmp_path / "edgegw.toml"
    config.write_text('[gateway]\nid = "gw"\ndata_dir = "%s"\n[mqtt]\nhost = "127.0.0.1"\n' % data)
    done = edgegw("run", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert "edgegw: cannot open %s/buffer.sqlite3" % data in done.stderr
    assert "is on a read-only filesystem: remount it read-write" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_salvage_that_does_not_fit_the_disk_keeps_the_damaged_file(mount: Callable[..., pathlib.Path]) -> None:
    """The fresh copy cannot be written (the disk is full): nothing is claimed saved, the damaged file
    stays in place, the error says how much room is needed; with room, the next start salvages it."""
    data = mount(2048)
    store = Store(data, 10**9)
    for n in range(0, 3200, 4):
        store.commit(noisy(n), 4, {NODE: WindowState(n + 3, 1)})
    store.close()
    readings = 3200
    damage(data / DB_NAME, page_of(data / DB_NAME, "chunks", "leaf", -1))
    damaged = (data / DB_NAME).read_bytes()
    filler = data / "filler"
    filler.write_bytes(b"\xaa" * (shutil.disk_usage(data).free - 300_000))  # another program leaves 300 KB
    with pytest.raises(StoreError, match=r"cannot salvage the damaged buffer .*: database or disk is full; only \d+ bytes are free"):
        Store(data, 10**9)
    assert (data / DB_NAME).read_bytes() == damaged, "the damaged file is where it was"
    assert not [path.name for path in data.iterdir() if ".salvage" in path.name or ".corrupt" in path.name], "no half-made copy left"
    filler.unlink()
    store = Store(data, 10**9)
    assert store.salvaged is not None and 0 < readings - store.salvaged.readings <= 200
    assert len(numbers(store)) == store.salvaged.readings, "what the report says was saved is there"
    store.close()


def test_a_damaged_root_page_costs_nothing(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """The chunks table's root page rewritten as an empty leaf: SQLite reaches no chunk, the leaf pages
    read directly give every one back."""
    readings = buffered(tmp_path, chunks=400)
    root = page_of(tmp_path / DB_NAME, "chunks", "internal")
    with open(tmp_path / DB_NAME, "r+b") as file:
        file.seek((root - 1) * 4096)
        file.write(bytes([0x0D, 0, 0, 0, 0, 0x10, 0, 0]))  # a table leaf with no cells
    with caplog.at_level(logging.ERROR):
        store = Store(tmp_path, 10**9)
    assert numbers(store) == list(range(readings))
    assert (
        "saved %d readings in 400 chunks, 0 layouts and 1 nodes into a fresh database (400 of the chunks read from the file's pages"
        % readings
        in caplog.text
    )
    store.close()


def test_a_damaged_file_header_costs_nothing(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """The file's magic string damaged ("file is not a database"): chunks, layouts, node windows and
    counters are read from the leaf pages."""
    store = Store(tmp_path, 10**9)
    layout = Layout(7, NODE, (Channel("temperature", "Cel", -2),))
    for n in range(0, 400, 4):
        store.commit(noisy(n, size=60), 4, {NODE: WindowState(n + 3, 0xF)}, [layout] if n == 0 else None)
    counter = store.reserve("downlink_counter", 4096, 2**31)
    store.save_downlink({NODE: 3 * 65536})  # the node's own downlink limit (schema 6)
    store.close()
    with open(tmp_path / DB_NAME, "r+b") as file:
        file.write(b"XQLite format 3\x00")
    with caplog.at_level(logging.ERROR):
        store = Store(tmp_path, 10**9)
    assert numbers(store) == list(range(400))
    assert store.load_layouts() == [layout] and store.load_windows() == {NODE: WindowState(399, 0xF)}
    assert store.reserve("downlink_counter", 4096, 2**31) == counter + 4096, "downlink counters are not used twice"
    assert store.load_downlink() == {NODE: 3 * 65536}, "nor the node's own"
    assert "lost 0 readings" not in caplog.text
    store.close()


def test_chunks_larger_than_a_page_are_read_from_their_overflow_pages(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, 10**9)
    for n in range(0, 2000, 100):
        store.commit(noisy(n, count=100), 100, {})  # 20 KB bodies: four overflow pages each
    store.close()
    with open(tmp_path / DB_NAME, "r+b") as file:
        file.write(b"XQLite format 3\x00")
    store = Store(tmp_path, 10**9)
    assert numbers(store) == list(range(2000))
    store.close()


def test_a_file_cut_short_says_what_is_missing(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    readings = buffered(tmp_path, chunks=400)
    path = tmp_path / DB_NAME
    os.truncate(path, path.stat().st_size // 2 // 4096 * 4096)
    with caplog.at_level(logging.ERROR):
        store = Store(tmp_path, 10**9)
    kept = numbers(store)
    assert 0 < len(kept) < readings and kept == sorted(kept)
    assert "lost 0 readings" not in caplog.text
    assert "pages in use in the damaged file could not be read (contents unknown)" in caplog.text
    store.close()


def written_bytes() -> int:
    """Bytes this process has written so far (write(2) calls, whatever file)."""
    for line in pathlib.Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


def test_a_full_disk_does_not_make_and_give_up_the_reserve_again_and_again(
    mount: Callable[..., pathlib.Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Another program filled the disk and the node keeps resending: each try must not write the
    128 KiB reserve and give it up again (SD-card wear), and "room again" is said only when it is true."""
    data = mount(1024)
    store = Store(data, 10**9)
    for n in range(0, 400, 4):
        store.commit(noisy(n), 4, {})
    fill_up(data)
    before = written_bytes()
    refused = 0
    with caplog.at_level(logging.WARNING):
        for n in range(400, 800, 4):  # 100 tries, with drop_oldest
            try:
                store.commit(noisy(n), 4, {}, make_room=True)
            except StoreError:
                refused += 1
    assert refused == 100
    written = written_bytes() - before
    assert written < 2 * disk.RESERVE_BYTES, "%d bytes written for 100 refused commits" % written
    assert caplog.text.count("gave up the buffer's") == 1 and "has room again" not in caplog.text
    store.close()


def test_set_aside_damaged_files_are_reported_at_start(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    buffered(tmp_path, chunks=3)
    (tmp_path / DB_NAME).write_bytes(b"not a database, " * 300)
    Store(tmp_path, 10**9).close()  # sets the file aside
    with caplog.at_level(logging.WARNING):
        Store(tmp_path, 10**9).close()
    assert "1 damaged buffer file(s) set aside by earlier salvages take 4800 bytes of the disk of %s" % tmp_path in caplog.text
    assert "delete them once they are no longer needed" in caplog.text


def test_a_rowid_damaged_into_its_neighbour_s_costs_nothing(tmp_path: pathlib.Path) -> None:
    """A bit flip makes one chunk's rowid that of the chunk before it: the damaged tree yields the id
    twice, which must not stop the salvage (found by flipping bits at random)."""
    readings = buffered(tmp_path, chunks=100)  # ids below 128: one-byte varints
    path = tmp_path / DB_NAME
    leaf = page_of(path, "chunks", "leaf", 0)
    with open(path, "r+b") as file:
        file.seek((leaf - 1) * 4096)
        page = bytearray(file.read(4096))
        cells = [int.from_bytes(page[8 + 2 * index : 10 + 2 * index], "big") for index in range(2)]
        rowids = []
        for cell in cells:
            while page[cell] & 0x80:  # past the payload length
                cell += 1
            rowids.append(cell + 1)
        page[rowids[1]] = page[rowids[0]]
        file.seek((leaf - 1) * 4096)
        file.write(page)
    store = Store(tmp_path, 10**9)
    kept = numbers(store)
    assert store.salvaged is not None and len(kept) == len(set(kept)) >= readings - 4
    store.close()


@pytest.mark.parametrize(
    "text, offset, why",
    [
        (b"CREATE TABLE nodes", 6, "between keywords: SQLite's message quotes the schema, which Python cannot decode"),
        (b"node TEXT PRIMARY KEY", 1, "a column name: SQLite reads the schema, the columns are not there"),
    ],
)
def test_a_schema_text_damaged_by_a_flipped_bit_is_salvaged(tmp_path: pathlib.Path, text: bytes, offset: int, why: str) -> None:
    """A byte of the schema's SQL text that is no longer UTF-8 (found by flipping bits at random) is damage to salvage, not a traceback."""
    readings = buffered(tmp_path, chunks=100)
    path = tmp_path / DB_NAME
    data = bytearray(path.read_bytes())
    data[data.index(text) + offset] = 0xA0
    path.write_bytes(data)
    store = Store(tmp_path, 10**9)
    assert store.salvaged is not None and numbers(store) == list(range(readings)), why
    assert store.load_windows() == {NODE: WindowState(readings - 1, 0xF)}
    store.close()


@pytest.mark.parametrize("how", ["index", "schema"])
def test_a_salvage_keeps_a_chunk_of_events_a_chunk_of_events(tmp_path: pathlib.Path, how: str) -> None:
    """Copied by SQL (a damaged index) or read from the leaf pages (a schema SQLite cannot parse): events stay events
    (published ahead of the backlog, evicted last)."""
    store = Store(tmp_path, 10**9)
    for n in range(0, 400, 4):
        store.commit(noisy(n, size=60), 4, {NODE: WindowState(n + 3, 0xF)}, priority=n % 100 == 0)
    store.close()
    path = tmp_path / DB_NAME
    if how == "index":
        damage(path, page_of(path, "sqlite_autoindex_nodes_1"))
    else:
        data = bytearray(path.read_bytes())
        data[data.index(b"CREATE TABLE nodes") + 6] = 0xA0
        path.write_bytes(data)
    store = Store(tmp_path, 10**9)
    assert store.salvaged is not None and numbers(store) == list(range(400))
    assert [numbers_of(chunk) for chunk in store.oldest(10**9, events=True)] == [[n, n + 1, n + 2, n + 3] for n in (0, 100, 200, 300)]
    assert store.pending_event_chunks == 4
    store.close()


def numbers_of(chunk: Chunk) -> list[int]:
    return [int.from_bytes(frame.payload[:4], "big") for frame in chunk.frames]


@pytest.mark.parametrize("how", ["index", "schema", "ids lost"])
def test_a_salvage_keeps_the_commands_and_never_gives_a_wire_id_twice(tmp_path: pathlib.Path, how: str) -> None:
    """Copied by SQL (a damaged index, or with a node's next-wire-id row lost) or read from the leaf pages (a schema
    SQLite cannot parse): a command in flight keeps its state and counter (the node deduplicates by it), and a
    node's next wire id stays above every one given (a late result must not answer a new command)."""
    buffered(tmp_path, chunks=50)
    store = Store(tmp_path, 10**9)
    book = CommandBook(store)
    made = [book.add(Command(NODE, "c%d" % index, "dim", {"level": 40}, 2e9, QUEUED, 1e9 + index))[0] for index in range(3)]
    made[0].state, made[0].counter, made[0].attempts = SENT, 1234, 1
    book.save(made[0])
    store.close()
    path = tmp_path / DB_NAME
    if how == "schema":
        data = bytearray(path.read_bytes())
        data[data.index(b"CREATE TABLE nodes") + 6] = 0xA0
        path.write_bytes(data)
    else:
        if how == "ids lost":
            db = sqlite3.connect(path)
            db.execute("DELETE FROM command_ids")
            db.commit()
            db.close()
        damage(path, page_of(path, "sqlite_autoindex_nodes_1"))
    store = Store(tmp_path, 10**9)
    assert store.salvaged is not None and store.salvaged.commands == 3
    book = CommandBook(store)
    loaded = {c.id: c for c in book.load()}
    assert (loaded["c0"].state, loaded["c0"].counter, loaded["c0"].attempts) == (SENT, 1234, 1)
    assert [(loaded["c%d" % i].wire_id, loaded["c%d" % i].state) for i in range(3)] == [(1, SENT), (2, QUEUED), (3, QUEUED)]
    fresh, new, _ = book.add(Command(NODE, "d", "reboot", {}, 2e9, QUEUED, 1e9 + 9))
    assert new and fresh.wire_id == (4 + WIRE_ID_STEP if how == "ids lost" else 4)
    store.close()
