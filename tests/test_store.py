"""The durable buffer: rows survive kill -9 once committed, leave only when deleted, stay within budget."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from gateway import disk
from gateway.layouts import Layout
from gateway.senml import Channel
from gateway.store import DB_NAME, SCHEMA_VERSION, Store, StoredFrame, StoreError, StoreFull, WindowState, decode_body, encode_body
from tests.conftest import ROOT


def frames(n: int, size: int = 50, count: int = 1) -> list[StoredFrame]:
    """`count` frames whose payloads start with their number n, n+1, ...: what was stored is recognisable."""
    return [StoredFrame(7, 1795000000.0 + k, bytes([k % 256]) * size) for k in range(n, n + count)]


def payloads(store: Store) -> list[int]:
    return [frame.payload[0] for chunk in store.oldest(10**6) for frame in chunk.frames]


def test_commit_read_delete(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, 10_000_000)
    ids = [store.commit(frames(n), 10, {"0000a4cf12b3c4d5": WindowState(3, 0b111)})[0] for n in (1, 2, 3)]
    assert [c.id for c in store.oldest(10)] == ids
    assert store.oldest(10)[1].frames == frames(2)
    assert store.oldest(10, after_id=ids[0])[0].id == ids[1]
    assert [c.id for c in store.oldest(10, up_to_id=ids[1])] == ids[:2]
    store.delete(ids[:2])
    assert [c.id for c in store.oldest(10)] == ids[2:]
    assert (store.pending_chunks, store.pending_readings) == (1, 10)
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2, "FULL again after the fsync-less delete"
    store.close()


def test_a_chunk_keeps_each_frame_its_layout_arrival_time_and_exact_bytes() -> None:
    stored = [StoredFrame(1, 1795000000.25, b"\xa1\x01\x83\x00\x01\x02"), StoredFrame(70000, 1795000003.5, bytes(range(236)))]
    for chunk in (stored, stored * 200):  # small: stored raw; repetitive: compressed
        body = encode_body(chunk)
        assert decode_body(body, 1795000000.25) == chunk
    assert encode_body(stored)[0] == 0 and encode_body(stored * 200)[0] == 1
    assert len(encode_body(stored * 200)) < 236 * 20


def test_oldest_stops_at_max_frames(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, 10_000_000)
    for n in range(5):
        store.commit(frames(10 * n, count=10), 100, {})
    assert [len(c.frames) for c in store.oldest(25)] == [10, 10, 10]


def test_windows_layouts_and_chunks_survive_reopening(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, 10_000_000)
    layout = Layout(7, "0000a4cf12b3c4d5", (Channel("temperature", "Cel", -2), Channel("counter", "")))
    store.commit(frames(1), 10, {"0000a4cf12b3c4d5": WindowState(2**32 - 1, 2**256 - 1)}, [layout])
    used = store.used_bytes
    store.close()
    again = Store(tmp_path, 10_000_000)
    assert again.load_windows() == {"0000a4cf12b3c4d5": WindowState(2**32 - 1, 2**256 - 1)}
    assert again.load_layouts() == [layout]
    assert again.pending_chunks == 1 and again.used_bytes == used and used > 0
    again.close()


def noisy(n: int, count: int = 4) -> list[StoredFrame]:
    """Frames zlib cannot shrink, each payload starting with its number n, n+1, ... (mod 256)."""
    return [StoredFrame(7, 1795000000.0 + k, bytes([k % 256]) + os.urandom(199)) for k in range(n, n + count)]


def test_budget_and_drop_oldest(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path, disk.MIN_BUDGET)
    n = 0
    with pytest.raises(StoreFull, match="max_bytes reached"):
        while n < 10_000:
            store.commit(noisy(n), 4, {})
            n += 4
    assert n > 100, "room for data after the WAL, -shm and reserve allowances"
    assert store.pending_readings == n and store.fill() <= 1
    chunk_id, evicted = store.commit(noisy(n), 4, {}, make_room=True)
    assert chunk_id and evicted >= 4  # at least the oldest chunk
    assert payloads(store) == [k % 256 for k in range(evicted, n + 4)], "the oldest went, in order"
    assert store.total("dropped_readings") == evicted
    assert store.disk_bytes() <= disk.MIN_BUDGET
    used = store.used_bytes
    store.close()
    reopened = Store(tmp_path, disk.MIN_BUDGET)
    assert (reopened.used_bytes, reopened.pending_readings) == (used, n + 4 - evicted)


def test_a_buffer_of_the_old_format_is_taken_over_only_when_empty(tmp_path: pathlib.Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("CREATE TABLE batches (id INTEGER PRIMARY KEY, topic TEXT, payload BLOB, readings INTEGER, received REAL)")
    db.execute("INSERT INTO batches (topic, payload, readings, received) VALUES ('t', x'00', 1, 0)")
    db.commit()
    with pytest.raises(StoreError, match="holds 1 batches buffered by an older edgegw"):
        Store(tmp_path, 10_000_000)
    db.execute("DELETE FROM batches")
    db.commit()
    db.close()
    store = Store(tmp_path, 10_000_000)
    assert store.pending_chunks == 0
    assert store._db.execute("SELECT name FROM sqlite_master WHERE name='batches'").fetchone() is None


def test_corrupt_database_is_moved_aside(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    store = Store(tmp_path, 10_000_000)
    assert store.moved_aside is not None and store.moved_aside.exists()
    assert "was damaged (file is not a database): saved 0 readings" in caplog.text
    store.commit(frames(1), 10, {})
    assert store.pending_chunks == 1


def test_a_locked_database_is_an_error_not_corruption(tmp_path: pathlib.Path) -> None:
    import sqlite3

    first = Store(tmp_path, 10_000_000)
    first.commit(frames(1), 10, {})
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
    assert Store(tmp_path, 10_000_000).pending_chunks == 1


def test_unusable_data_dir_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create data_dir"):
        Store(blocker / "data", 10_000_000)


WRITER = """
import sys
sys.path.insert(0, sys.argv[2])
from gateway.store import Store, StoredFrame, WindowState
store = Store(sys.argv[1], 10**9)
n = int(sys.argv[3])
while True:
    frames = [StoredFrame(1, 0.0, n.to_bytes(4, "big") * 8) for n in range(n, n + 20)]
    store.commit(frames, 20, {"0000a4cf12b3c4d5": WindowState(n + 19, 1)})
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
        rows = {int.from_bytes(f.payload[:4], "big") for chunk in store.oldest(10**9) for f in chunk.frames}
        assert set(range(promised)) <= rows
        assert store.load_windows()["0000a4cf12b3c4d5"].highest >= promised - 1
        store.close()


def test_a_damaged_body_is_a_damaged_chunk_not_an_error(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    import cbor2

    store = Store(tmp_path, 10_000_000)
    store.commit(frames(1), 10, {})
    for body in (
        b"\x00" + cbor2.dumps({1: 2}),
        b"\x00" + cbor2.dumps([1, 0, "text"]),
        b"\x01not zlib",
        b"\x00" + cbor2.dumps([1, 0, b"x" * 300]),
    ):
        store._db.execute("INSERT INTO chunks (received, frames, readings, body) VALUES (0, 1, 1, ?)", (body,))
    store.close()
    store = Store(tmp_path, 10_000_000)  # counts what the rows written behind its back hold
    used = store.used_bytes
    chunks = store.oldest(100)
    assert [bool(chunk.damaged) for chunk in chunks] == [False, True, True, True, True]
    assert chunks[0].frames == frames(1)
    assert [chunk.id for chunk in store.oldest(100)] == [chunks[0].id], "damaged chunks leave the disk"
    assert (store.pending_chunks, store.pending_readings) == (1, 10)
    assert store.used_bytes <= used
    assert (
        "buffered chunk %d cannot be read (error: Error -3 while decompressing data: incorrect header check): deleted it, 1 readings lost"
        % chunks[3].id
        in caplog.text
    )


def test_checkpoints_run_beside_the_commits_not_inside_them(tmp_path: pathlib.Path) -> None:
    import threading

    store = Store(tmp_path, 10_000_000)
    for n in range(50):
        store.commit(frames(n, count=20), 200, {})
    wal = tmp_path / (DB_NAME + "-wal")
    assert wal.stat().st_size > 50 * 4096, "no checkpoint inside a commit: the WAL holds every commit"
    result: list[tuple[int, int, int]] = []
    other = threading.Thread(target=lambda: result.append(store.checkpoint()))
    other.start()
    other.join()
    busy, pages, copied = result[0]
    assert busy == 0 and pages > 0 and copied == pages, "everything copied into the database file"
    assert len(store.oldest(10**6)) == 50
    store.close()


READER = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM chunks').fetchone()[0])"


def test_another_process_reading_the_buffer_finds_the_gateway_using_its_wal_index(tmp_path: pathlib.Path) -> None:
    """Looking at the WAL's backlog (the agent does, every second) leaves SQLite's locks on -shm in place.

    It opened and closed -shm, which dropped them (POSIX locks are the process's, a close drops them all):
    the next process to read the buffer (hil's buffered_readings, an operator's sqlite3) took itself for
    the first, truncated -shm under the gateway's mapping and rebuilt the wal-index, and the gateway died
    of SIGBUS when its commit touched -shm meanwhile (tests/test_flaky_uplink.py froze).
    """
    store = Store(tmp_path, 10_000_000)
    for n in range(5):
        store.commit(frames(n), 10, {})
    store.checkpoint()
    assert store.wal_backlog() == 0
    reader = subprocess.run([sys.executable, "-c", READER, str(tmp_path / DB_NAME)], capture_output=True, text=True, timeout=30)
    assert reader.stdout.split() == ["5"], reader.stderr
    assert store.wal_backlog() == 0, "the reader rebuilt the wal-index (the checkpoint is forgotten): it found no one using -shm"
    store.commit(frames(9), 10, {})
    assert store.wal_backlog() > 0
    assert len(store.oldest(10)) == 6
    store.close()


def test_a_bit_that_turns_a_blob_into_text_costs_no_reading(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """One flipped bit in a record header turns a BLOB into TEXT of the same bytes, and PRAGMA quick_check
    still says ok: chunks read as the bytes they hold; node and layout rows that are not what they should
    be are left out, never an error that stops the gateway."""
    import sqlite3

    node, other = "0000a4cf12b3c4d5", "0000a4cf12b3c4d6"
    store = Store(tmp_path, 10_000_000)
    layout = Layout(7, node, (Channel("temperature", "Cel", -2),))
    ids = [store.commit(frames(n), 10, {node: WindowState(n, 0xFF00FF)}, [layout] if n == 0 else None)[0] for n in range(5)]
    store.save_node_infos({node: '{"fw_version": "1"}', other: "{}"})
    store.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE chunks SET body = CAST(body AS TEXT) WHERE id = ?", (ids[2],))
    db.execute("UPDATE nodes SET seen = CAST(seen AS TEXT) WHERE node = ?", (node,))  # 0xff: not UTF-8
    db.execute("UPDATE nodes SET info = CAST(x'ff7b' AS TEXT) WHERE node = ?", (other,))
    db.execute("UPDATE layouts SET channels = CAST(x'ff7b' AS TEXT)")
    db.commit()
    assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    db.close()
    store = Store(tmp_path, 10_000_000)
    assert store.moved_aside is None
    assert payloads(store) == [0, 1, 2, 3, 4], "the chunk whose body turned into text is read as it was"
    assert store.load_windows()[node] == WindowState(4, 0xFF00FF)
    assert store.node_info() == {node: '{"fw_version": "1"}'}, "the damaged info is left out"
    assert store.load_layouts() == []
    assert "channel layout 7 in %s is damaged" % store.path in caplog.text
    assert "the info of node %s in" % other in caplog.text
    store.close()


def test_a_damaged_total_costs_a_log_line_not_the_start(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """The totals read back as a blob (a flipped serial-type bit quick_check does not see; once int(b'\\x01') raised
    out of Store(), on every start). The fold mark: every chunk's windows are taken again, and new chunk ids still
    come after every chunk there is. The downlink counter: never a guess below it. Dropped readings: counted again."""
    import sqlite3

    store = Store(tmp_path, 10**9)
    store.commit(frames(1), 10, {NODE_A: WindowState(3, 1)})
    store.save_windows({})  # a fold: windows_through = 1
    store.commit(frames(2), 10, {NODE_B: WindowState(8, 1)})
    assert store.reserve("downlink_counter", 4096, 2**31) == 0
    store.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE totals SET value = x'01' WHERE name IN ('windows_through', 'downlink_counter')")
    db.execute("INSERT INTO totals (name, value) VALUES ('dropped_readings', x'01')")
    db.commit()
    assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    db.close()
    store = Store(tmp_path, 10**9)
    assert "cannot read how far the node windows of %s are folded (a damaged value)" % store.path in caplog.text
    assert store.load_windows() == {NODE_A: WindowState(3, 1), NODE_B: WindowState(8, 1)}
    assert store.commit(frames(3), 10, {})[0] == 3, "a new chunk id, after every one there is"
    assert store.reserve("downlink_counter", 4096, 2**31) == 2**31
    assert "the counter downlink_counter in %s is damaged; it continues from %d" % (store.path, 2**31) in caplog.text
    assert store.reserve("downlink_counter", 4096, 2**31) == 2**31 + 4096
    store.close()
    store = Store(tmp_path, disk.MIN_BUDGET)
    n, evicted = 0, 0
    while not evicted:  # until the budget is reached
        n += 4
        evicted = store.commit(noisy(n), 4, {}, make_room=True)[1]
    assert store.total("dropped_readings") == evicted
    assert [record.message.split(" in ")[0] for record in caplog.records] == [
        "cannot read how far the node windows of %s are folded (a damaged value); taking every chunk's windows" % store.path,
        "the counter downlink_counter",
        "the total dropped_readings",
    ], "one line each"
    store.close()


def test_readings_the_broker_acknowledged_are_not_counted_as_dropped(tmp_path: pathlib.Path) -> None:
    """drop_oldest evicts chunks already published (their delete is batched) first, and does not count them as dropped."""
    store = Store(tmp_path, disk.MIN_BUDGET)
    n = 0
    while store.commit(noisy(n), 4, {}, make_room=True)[1] == 0:  # until the budget is reached
        n += 4
    before = [chunk.id for chunk in store.oldest(10**6)]
    published = before[-20:]  # the newest ones were delivered, their delete not done yet
    dropped = store.total("dropped_readings")
    while set(published) <= {chunk.id for chunk in store.oldest(10**6)}:
        n += 4
        assert store.commit(noisy(n), 4, {}, make_room=True, published=published)[1] == 0, "nothing undelivered evicted"
    assert store.oldest(1)[0].id == before[0], "the oldest undelivered chunk is still there"
    assert store.total("dropped_readings") == dropped
    store.close()


# ------------------------------------------------------------ windows: in the chunks, folded lazily

NODE_A, NODE_B = "0000a4cf12b3c4d5", "0000a4cf12b3c4d6"


def node_rows(store: Store) -> dict[str, tuple[int, int]]:
    rows = store._db.execute("SELECT node, highest, seen FROM nodes").fetchall()
    return {node: (highest, int.from_bytes(seen, "big")) for node, highest, seen in rows}


def crash(store: Store) -> None:
    """The process ends without a stop: no fold, no checkpoint (what kill -9 leaves, the OS keeping the files)."""
    store._db.close()


def test_a_commit_writes_no_node_row_and_the_windows_are_exact_after_a_crash(tmp_path: pathlib.Path) -> None:
    """Windows travel in their chunk; the node rows are written by a fold only, and a start joins both."""
    store = Store(tmp_path, 10_000_000)
    store.commit(frames(1), 10, {NODE_A: WindowState(3, 0b111)})
    store.commit(frames(2), 10, {NODE_A: WindowState(4, 0b1111), NODE_B: WindowState(9, 1)})
    assert node_rows(store) == {}, "no node row written by a commit"
    crash(store)
    again = Store(tmp_path, 10_000_000)
    assert again.load_windows() == {NODE_A: WindowState(4, 0b1111), NODE_B: WindowState(9, 1)}, "from the chunks"
    # A fold writes the rows (with a window the event loop moved since: a frame the broker confirmed).
    again.save_windows({NODE_B: WindowState(10, 0b11)})
    assert node_rows(again) == {NODE_A: (4, 0b1111), NODE_B: (10, 0b11)}
    again.commit(frames(3), 10, {NODE_A: WindowState(6, 0b111101)})  # after the fold: not folded yet
    assert node_rows(again)[NODE_A] == (4, 0b1111)
    crash(again)
    third = Store(tmp_path, 10_000_000)
    assert third.load_windows() == {NODE_A: WindowState(6, 0b111101), NODE_B: WindowState(10, 0b11)}
    third.close()
    assert node_rows(Store(tmp_path, 10_000_000)) == {NODE_A: (6, 0b111101), NODE_B: (10, 0b11)}, "a stop folds them"


def test_a_fold_joins_a_committed_window_and_one_moved_in_memory(tmp_path: pathlib.Path) -> None:
    """The event loop's window may lack a commit whose callback had not run, the chunk's the frames the
    broker confirmed since: the row holds every counter of both."""
    store = Store(tmp_path, 10_000_000)
    store.commit(frames(1), 10, {NODE_A: WindowState(10, 0b1)})  # counter 10 committed
    store.save_windows({NODE_A: WindowState(12, 0b101)})  # in memory: 12 and 10
    assert node_rows(store)[NODE_A] == (12, 0b101)
    store.commit(frames(2), 10, {NODE_A: WindowState(13, 0b1011)})  # 13, 12, 10
    store.save_windows({NODE_A: WindowState(12, 0b11)})  # 12, 11: lacks 13 (its callback had not run)
    assert node_rows(store)[NODE_A] == (13, 0b1111), "13 from the chunk, 11 from memory"
    store.close()


def test_deleting_chunks_writes_no_node_row_and_a_stop_folds_their_windows(tmp_path: pathlib.Path) -> None:
    """A delete leaves the windows of the chunks it frees to the next fold (a close here); after a crash
    before it, those counters are forgotten: a duplicate at worst, never a loss."""
    store = Store(tmp_path, 10_000_000)
    ids = [store.commit(frames(n), 10, {NODE_A: WindowState(n, 1)})[0] for n in (1, 2, 3)]
    store.delete(ids)
    assert store.pending_chunks == 0
    assert node_rows(store) == {}, "no node row written by a delete"
    store.close()
    again = Store(tmp_path, 10_000_000)
    assert again.load_windows() == {NODE_A: WindowState(3, 1)}
    assert again.commit(frames(4), 10, {})[0] > max(ids), "chunk ids still only grow"
    again.close()


def test_a_node_whose_window_is_in_an_unfolded_chunk_is_not_evicted_as_idle(tmp_path: pathlib.Path) -> None:
    """_evict_idle goes by the node rows' `last`, which a fold writes: a node of chunks not folded yet owns them."""
    store = Store(tmp_path, 10_000_000)
    store.save_node_infos({NODE_A: "{}"})
    store._db.execute("UPDATE nodes SET last = 0")  # long unseen, as its row says
    store._least_last = None
    store.commit(frames(1), 10, {NODE_A: WindowState(5, 1)})
    store._db.execute("BEGIN")
    store._evict_idle(lambda: True)
    store._db.execute("COMMIT")
    assert NODE_A in node_rows(store), "kept: its frames are in a chunk"
    store.close()


def test_an_evicted_nodes_downlink_limit_moves_the_gateway_wide_counter(tmp_path: pathlib.Path) -> None:
    """A node row given up for room takes its downlink limit with it: the gateway-wide counter, where a session
    that comes back starts (gateway/counters.py), is raised to it in the same transaction."""
    store = Store(tmp_path, 10_000_000)
    assert store.reserve("downlink_counter", 65536, 2**31) == 0
    store.save_node_infos({NODE_A: "{}", NODE_B: "{}"})
    store.save_downlink({NODE_A: 5_000_000, NODE_B: 300_000})
    store._db.execute("UPDATE nodes SET last = 0")  # both long unseen, owning no chunk
    store._least_last = None
    store._db.execute("BEGIN")
    store._evict_idle(lambda: True)
    store._db.execute("COMMIT")
    assert node_rows(store) == {} and store.load_downlink() == {}
    store.close()
    again = Store(tmp_path, 10_000_000)
    assert again.reserve("downlink_counter", 65536, 2**31) == 5_000_000, "above every counter either node was sent"
    again.close()


V4_SCHEMA = """
CREATE TABLE chunks (id INTEGER PRIMARY KEY, received REAL NOT NULL, frames INTEGER NOT NULL, readings INTEGER NOT NULL,
    body BLOB NOT NULL, windows BLOB NOT NULL DEFAULT x'');
CREATE TABLE layouts (id INTEGER PRIMARY KEY, node TEXT NOT NULL, channels TEXT NOT NULL);
CREATE TABLE nodes (node TEXT PRIMARY KEY, highest INTEGER NOT NULL, seen BLOB NOT NULL, info TEXT NOT NULL DEFAULT '{}',
    last REAL NOT NULL DEFAULT 0);
CREATE TABLE totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
PRAGMA user_version = 4;
"""


def test_a_version_4_buffer_gets_per_node_downlink_counters(tmp_path: pathlib.Path) -> None:
    """Versions up to 5 had one downlink counter for the gateway: their nodes have no limit of their own (they
    continue from that counter, gateway/counters.py) until one is reserved, and a limit never moves back.
    From 4 the upgrade goes through 5 (events: chunks.priority) too."""
    import sqlite3

    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript(V4_SCHEMA)
    db.execute(
        "INSERT INTO nodes (node, highest, seen, info, last) VALUES (?, 41, ?, '{}', ?)", (NODE_A, (7).to_bytes(32, "big"), time.time())
    )
    db.execute("INSERT INTO totals (name, value) VALUES ('downlink_counter', 65536)")
    db.commit()
    db.close()
    store = Store(tmp_path, 10_000_000)
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    tables = {row[0] for row in store._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"commands", "command_ids"} <= tables, "version 7: the command life cycle's tables, made on the way up"
    assert store.load_downlink() == {}
    assert store.reserve("downlink_counter", 65536, 2**31) == 65536
    store.save_downlink({NODE_A: 300_000, NODE_B: 200_000}, 0)
    store.save_downlink({NODE_A: 250_000}, 100_000)  # never back: neither a node's limit nor the gateway-wide counter
    assert store.load_downlink() == {NODE_A: 300_000, NODE_B: 200_000}
    assert store.total("downlink_counter") == 131072
    assert store.load_windows() == {NODE_A: WindowState(41, 7), NODE_B: WindowState(-1, 0)}
    store.close()
    again = Store(tmp_path, 10_000_000)
    assert again.load_downlink() == {NODE_A: 300_000, NODE_B: 200_000}
    again.close()


V3_SCHEMA = """
CREATE TABLE chunks (id INTEGER PRIMARY KEY AUTOINCREMENT, received REAL NOT NULL, frames INTEGER NOT NULL,
    readings INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE layouts (id INTEGER PRIMARY KEY, node TEXT NOT NULL, channels TEXT NOT NULL);
CREATE TABLE nodes (node TEXT PRIMARY KEY, highest INTEGER NOT NULL, seen BLOB NOT NULL, info TEXT NOT NULL DEFAULT '{}',
    last REAL NOT NULL DEFAULT 0);
CREATE TABLE totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
PRAGMA user_version = 3;
"""


def test_a_version_3_buffer_is_upgraded_in_place(tmp_path: pathlib.Path) -> None:
    """Version 3 wrote each node's row with every commit: its rows are the windows, its chunks are published as they are."""
    import sqlite3

    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript(V3_SCHEMA)
    db.execute("INSERT INTO chunks (received, frames, readings, body) VALUES (?, 1, 10, ?)", (1795000001.0, encode_body(frames(1))))
    db.execute(
        "INSERT INTO nodes (node, highest, seen, info, last) VALUES (?, 41, ?, '{}', ?)", (NODE_A, (7).to_bytes(32, "big"), time.time())
    )
    db.execute("INSERT INTO totals (name, value) VALUES ('downlink_counter', 65536)")
    db.commit()
    db.close()
    store = Store(tmp_path, 10_000_000)
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.load_windows() == {NODE_A: WindowState(41, 7)}
    assert [chunk.frames for chunk in store.oldest(10)] == [frames(1)]
    assert store.total("downlink_counter") == 65536
    store.commit(frames(2), 10, {NODE_A: WindowState(42, 15)})
    store.close()
    again = Store(tmp_path, 10_000_000)
    assert again.load_windows() == {NODE_A: WindowState(42, 15)}
    assert payloads(again) == [1, 2]
    assert "AUTOINCREMENT" in chunks_sql(again), "a table with chunks in it is not copied to drop AUTOINCREMENT"
    ids = [chunk.id for chunk in again.oldest(10)]
    again.delete(ids)
    again.close()
    empty = Store(tmp_path, 10_000_000)
    assert "AUTOINCREMENT" not in chunks_sql(empty), "made again without it once empty: no sqlite_sequence write per commit"
    assert empty.load_windows() == {NODE_A: WindowState(42, 15)}
    assert empty.commit(frames(3), 10, {})[0] > max(ids), "chunk ids still only grow"
    empty.close()


def chunks_sql(store: Store) -> str:
    return str(store._db.execute("SELECT sql FROM sqlite_master WHERE name = 'chunks'").fetchone()[0])


def test_node_info_is_saved_with_its_layout_in_one_transaction(tmp_path: pathlib.Path) -> None:
    """A HELLO's layout goes to disk with its node's info, not with the node's first commit: left to the commits,
    a thousand layouts were inserted a few at a time during an outage, a page each."""
    store = Store(tmp_path, 10**9)
    layout = Layout(7, NODE_A, (Channel("temperature", "Cel", -2),))
    other = Layout(8, "00000000000000ff", (Channel("counter", "", 0),))  # its node's info is not among these
    store.save_node_infos({NODE_A: "{}"}, [layout, other])
    assert store.pending_chunks == 0
    store.close()
    store = Store(tmp_path, 10**9)
    assert [(saved.id, saved.node) for saved in store.load_layouts()] == [(7, NODE_A)]
    store.close()


# ------------------------------------------------------------ events (READINGS with PRIORITY, issue 13)


def test_drop_oldest_evicts_an_event_only_when_no_ordinary_readings_are_left(tmp_path: pathlib.Path) -> None:
    """Events sit among older and newer ordinary chunks; a full buffer takes every ordinary chunk first, oldest first,
    and an event only once none is left (then the oldest event, counted in dropped_events)."""
    store = Store(tmp_path, disk.MIN_BUDGET)
    n, events = 0, []
    while store.commit(noisy(n), 4, {}, make_room=True)[1] == 0:  # fill it: mostly ordinary, an event every 10th chunk
        if n % 40 == 0:
            events.append(store.commit(noisy(n + 1), 4, {}, make_room=True, priority=True)[0])
        n += 4
    assert store.total("dropped_readings") and store.total("dropped_events") == 0
    assert store.pending_event_chunks == len(events) and store.pending_events == 4 * len(events)
    assert {chunk.id for chunk in store.oldest(10**6, events=True)} == set(events), "every event still there"
    ordinary = [chunk.id for chunk in store.oldest(10**6, events=False)]
    assert ordinary and not set(ordinary) & set(events)
    assert all(chunk.priority for chunk in store.oldest(10**6, events=True))
    while store.oldest(10**6, events=False)[0].id < max(events):  # ordinary chunks older than the newest event go first
        n += 4
        store.commit(noisy(n), 4, {}, make_room=True)
        assert {chunk.id for chunk in store.oldest(10**6, events=True)} == set(events), "no event evicted"
    # Now only events (and ordinary chunks newer than all of them) are left: a commit of a big chunk of events
    # finds no ordinary chunk older than itself beyond those, and evicts the oldest event last.
    assert store.total("dropped_events") == 0
    while store.oldest(10**6, events=False):  # the ordinary ones newer than the events go too, before any event
        n += 4
        store.commit(noisy(n), 4, {}, make_room=True, priority=True)
        if store.oldest(10**6, events=False):
            assert set(events) <= {chunk.id for chunk in store.oldest(10**6, events=True)}
    n += 4
    while store.oldest(1, events=True)[0].id == events[0]:
        n += 4
        store.commit(noisy(n), 4, {}, make_room=True, priority=True)
    assert store.total("dropped_events") >= 1, "an event evicted once nothing else was left, and counted"
    remaining = [chunk.id for chunk in store.oldest(10**6, events=True)]
    assert remaining == sorted(remaining) and events[0] not in remaining, "the oldest event went first"
    assert (store.pending_chunks, store.pending_event_chunks) == (len(remaining), len(remaining))
    store.close()
    reopened = Store(tmp_path, disk.MIN_BUDGET)
    assert reopened.pending_event_chunks == len(remaining), "the counts are rebuilt at a start"
    reopened.delete(remaining[:2])
    assert reopened.pending_event_chunks == len(remaining) - 2
    reopened.close()


def test_an_ordinary_commit_writes_no_event_index_page(tmp_path: pathlib.Path) -> None:
    """The index of events is partial: ordinary chunks are not in it, so their commits cost no index write."""
    store = Store(tmp_path, 10_000_000)
    for n in range(50):
        store.commit(frames(n), 10, {})
    (entries,) = store._db.execute("SELECT COUNT(*) FROM chunks INDEXED BY chunks_events WHERE priority = 1").fetchone()
    assert entries == 0
    event = store.commit(frames(99), 10, {}, priority=True)[0]
    assert [chunk.id for chunk in store.oldest(10, events=True)] == [event]
    plan = " ".join(str(row) for row in store._db.execute("EXPLAIN QUERY PLAN SELECT id FROM chunks WHERE id > 0 AND priority = 1"))
    assert "chunks_events" in plan
    store.close()


V4_SCHEMA = """
CREATE TABLE chunks (id INTEGER PRIMARY KEY, received REAL NOT NULL, frames INTEGER NOT NULL, readings INTEGER NOT NULL,
    body BLOB NOT NULL, windows BLOB NOT NULL DEFAULT x'');
CREATE TABLE layouts (id INTEGER PRIMARY KEY, node TEXT NOT NULL, channels TEXT NOT NULL);
CREATE TABLE nodes (node TEXT PRIMARY KEY, highest INTEGER NOT NULL, seen BLOB NOT NULL, info TEXT NOT NULL DEFAULT '{}',
    last REAL NOT NULL DEFAULT 0);
CREATE TABLE totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
PRAGMA user_version = 4;
"""


def test_a_version_4_buffer_is_upgraded_in_place_its_chunks_ordinary(tmp_path: pathlib.Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript(V4_SCHEMA)
    db.execute("INSERT INTO chunks (id, received, frames, readings, body) VALUES (1, ?, 1, 10, ?)", (1795000001.0, encode_body(frames(1))))
    db.commit()
    db.close()
    store = Store(tmp_path, 10_000_000)
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [(chunk.id, chunk.priority) for chunk in store.oldest(10)] == [(1, False)]
    assert store.commit(frames(2), 10, {}, priority=True)[0] == 2
    store.close()
    again = Store(tmp_path, 10_000_000)
    assert [(chunk.id, chunk.priority) for chunk in again.oldest(10)] == [(1, False), (2, True)]
    assert (again.pending_event_chunks, again.pending_events) == (1, 1)
    again.close()
