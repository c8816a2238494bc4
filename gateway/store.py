"""The durable offline buffer: one SQLite database (WAL) in data_dir.

One row ("chunk") per group commit, not per reading or per frame: the
READINGS payloads exactly as the nodes sent them (CBOR, about 6 bytes a
reading), each with the layout it arrived under and its arrival time,
compressed with zlib when that makes the chunk smaller. SenML is built when a
chunk is published (gateway/senml.py), not when it is stored. A chunk is
written before its frames are acknowledged to the nodes, and deleted only
after the broker acknowledged every pack built from it. Each node's duplicate
window and any new channel layout are stored in the same transaction as the
frames they admitted, so suppression and meaning survive restarts.

Disk: max_bytes bounds every file the buffer keeps in data_dir (the database,
its -wal and -shm, and a reserve file), and so does the free space of the
filesystem when that is smaller (gateway/disk.py). Space is kept aside inside
the budget so that deleting and checkpointing can always proceed: a WAL
allowance (the WAL is checkpointed on the store thread before it outgrows it,
and truncated back) and a reserve file that is given up when the disk fills
up anyway. A damaged database is salvaged row by row into a fresh one
(gateway/salvage.py).

This class is synchronous and not thread-safe; the agent runs it on one
dedicated thread, off the event loop (checkpoint() excepted).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import cbor2

from protocols.frame import MAX_PAYLOAD, WINDOW

from . import disk, salvage
from .layouts import Layout

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_NAME = "buffer.sqlite3"
SCHEMA_VERSION = 2
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
FRAME_OVERHEAD = 12  # at most this many bytes a frame adds to a chunk body beyond its payload
DELETE_SLICE = 64  # chunks deleted in one transaction: a delete's WAL stays small
_RAW, _ZLIB = b"\x00", b"\x01"  # the body's first byte

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received REAL NOT NULL,
    frames INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS layouts (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    channels TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    highest INTEGER NOT NULL,
    seen BLOB NOT NULL,
    info TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS totals (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class StoreError(Exception):
    """The buffer cannot be used (disk full, read-only, unreadable); the message says what to do."""


class StoreFull(StoreError):
    """A commit did not fit the budget (max_bytes, or the disk when it is smaller): nothing was written."""


class StoredFrame(NamedTuple):
    layout: int  # Layout.id: the node and its channels when the frame arrived
    received: float  # gateway clock at arrival: the readings' time when the payload has no base_time
    payload: bytes  # the READINGS payload as the node sent it


@dataclass(frozen=True)
class Chunk:
    id: int
    frames: list[StoredFrame]
    readings: int
    damaged: str = ""  # why the body could not be read (then frames is empty)


@dataclass(frozen=True)
class WindowState:
    highest: int
    seen: int


def encode_body(frames: list[StoredFrame]) -> bytes:
    """Flat CBOR [layout, ms after the first frame, payload, ...], zlib-compressed when smaller."""
    first = frames[0].received
    flat: list[object] = []
    for frame in frames:
        flat += (frame.layout, round((frame.received - first) * 1000), frame.payload)
    raw = cbor2.dumps(flat)
    packed = zlib.compress(raw, 1)
    return _ZLIB + packed if len(packed) < len(raw) else _RAW + raw


def decode_body(body: bytes, received: float) -> list[StoredFrame]:
    """The frames of a chunk body; ValueError when it is not what encode_body writes (damage on disk)."""
    raw = zlib.decompress(body[1:]) if body[:1] == _ZLIB else body[1:]
    flat = cbor2.loads(raw)
    if not isinstance(flat, list) or len(flat) % 3:
        raise ValueError("not a list of frames")
    frames = [StoredFrame(flat[index], received + flat[index + 1] / 1000, flat[index + 2]) for index in range(0, len(flat), 3)]
    for frame in frames:
        if type(frame.layout) is not int or type(frame.payload) is not bytes or len(frame.payload) > MAX_PAYLOAD:
            raise ValueError("a frame that no node could have sent")
    return frames


def _is_full(error: sqlite3.Error) -> bool:
    """SQLite's "database or disk is full", or -shm that could not grow (it writes it page by page to find out)."""
    code = getattr(error, "sqlite_errorcode", 0)
    return code & 0xFF == 13 or code == 4874  # SQLITE_FULL, SQLITE_IOERR_SHMSIZE


class Store:
    """The buffer database; see the module docstring for the rules it keeps."""

    def __init__(self, data_dir: Path, max_bytes: int) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.max_bytes = max_bytes
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            fix = disk.diagnose(_existing_parent(self.data_dir), [], 0)
            raise StoreError("cannot create data_dir %s: %s%s" % (data_dir, error.strerror, "; " + fix if fix else "")) from None
        self.moved_aside: Path | None = None
        self.salvaged: salvage.Report | None = None
        self._reserve = disk.Reserve(Path(str(self.path) + ".reserve"))
        self.disk_full = ""  # why, while the disk is full and the reserve given up
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()  # one checkpoint at a time, whichever thread asks
        self._wal_limit = 0
        try:
            self._db = self._open()
        except OSError as error:  # a file it may not touch, a filesystem gone read-only
            raise StoreError(self._problem("open", error.strerror, disk.OPEN_NEEDS)) from None
        self.page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self._rows, self._readings = self._db.execute("SELECT COUNT(*), COALESCE(SUM(readings), 0) FROM chunks").fetchone()
        self._live = self._live_pages()
        self._wal_room()
        try:
            if not self._reserve.make():
                self._full("the disk has less than %d bytes free for the buffer's reserve" % disk.RESERVE_BYTES)
        except OSError as error:
            raise StoreError(self._problem("make the reserve file next to", error.strerror)) from None

    # ------------------------------------------------------------ opening

    def _files(self) -> list[Path]:
        return [Path(str(self.path) + suffix) for suffix in ("", "-wal", "-shm")] + [self._reserve.path]

    def _problem(self, what: str, error: object, needed: int = disk.RESERVE_BYTES) -> str:
        """An error message that says what to fix when the cause can be found."""
        fix = disk.diagnose(self.data_dir, self._files(), needed)
        return "cannot %s %s: %s%s" % (what, self.path, error, "; " + fix if fix else "")

    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction survives power loss, not just a crash.
        db.execute("PRAGMA synchronous=FULL")
        # Chunks are appended and read once, oldest first: the OS's file cache serves that as well as
        # SQLite's own page cache would, so the gateway keeps 512 KiB of it instead of the default 2 MiB.
        db.execute("PRAGMA cache_size=-512")
        # Checkpoints (copying the WAL into the database file, with its own fsync) run on their own
        # connection and thread (checkpoint()), not inside a commit that nodes are waiting on.
        db.execute("PRAGMA wal_autocheckpoint=0")
        # Debian builds SQLite with SECURE_DELETE, which writes every freed page, zeroed, to the WAL: a
        # delete would need as much room as the chunks it frees, and on a full disk none could commit.
        db.execute("PRAGMA secure_delete=FAST")
        self._upgrade(db, path)
        if db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name IN ('chunks', 'layouts', 'nodes', 'totals')").fetchone()[0] < 4:
            db.executescript(_SCHEMA)
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:  # a write: only when it changes
            db.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)
        return db

    def _upgrade(self, db: sqlite3.Connection, path: Path) -> None:
        """A buffer of edgegw 0.1 (ready SenML per frame, table `batches`) is taken over only when empty."""
        old = db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='batches'").fetchone()
        if old is None:
            return
        (waiting,) = db.execute("SELECT COUNT(*) FROM batches").fetchone()
        if waiting:
            db.close()
            raise StoreError(
                "%s holds %d batches buffered by an older edgegw in a format this version does not publish;"
                " run the older version until its buffer is empty, or move the file aside" % (path, waiting)
            )
        db.execute("DROP TABLE batches")

    def _open(self) -> sqlite3.Connection:
        if disk.free_bytes(self.data_dir) < disk.OPEN_NEEDS and self._reserve.release():
            log.warning("the disk of %s is full: gave up the buffer's reserve to open the database", self.data_dir)
        salvage.finish_interrupted(self.path)
        if self.path.exists() and disk.size(self.path) == 0 and disk.size(Path(str(self.path) + "-wal")) == 0:
            log.error("buffer database %s is an empty file (0 bytes): whatever it held is gone; starting a fresh one", self.path)
        return self._open_checked()

    def _open_checked(self) -> sqlite3.Connection:
        """Open the database; a damaged one is salvaged into a fresh one and set aside."""
        try:
            db = self._connect(self.path)
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            if verdict == "ok":
                return db
            db.close()
            reason = verdict
        except sqlite3.DatabaseError as error:
            # Only a damaged file is salvaged; locked, unreadable or full is the operator's to fix.
            if getattr(error, "sqlite_errorcode", None) not in _CORRUPT_CODES:
                raise StoreError(self._problem("open", error, disk.OPEN_NEEDS)) from None
            reason = str(error)
        try:
            self.moved_aside, self.salvaged = salvage.salvage(self.path, reason, self._connect, decode_body)
        except (sqlite3.Error, OSError) as error:
            raise StoreError(self._problem("salvage the damaged buffer", error, disk.size(self.path))) from None
        try:
            return self._connect(self.path)
        except sqlite3.Error as error:
            raise StoreError(self._problem("open", error, disk.OPEN_NEEDS)) from None

    def close(self) -> None:
        """Fold the WAL into the database and close; never raises (a stop must finish, even on a full disk)."""
        try:
            with self._checkpoint_lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as error:
            log.warning("could not fold the WAL into %s at stop (%s); SQLite applies it at the next start", self.path, error)
        for db in (self._db, self._checkpointer):
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy the WAL into the database file; safe to call from a thread other than the store's.
        Returns SQLite's (busy, pages in the WAL, pages copied).

        PASSIVE: it never blocks a commit, it only copies what no commit is writing at that moment.
        Committed data is durable in the WAL already; this keeps the WAL from growing.
        """
        with self._checkpoint_lock:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            return self._passive(self._checkpointer)

    @staticmethod
    def _passive(db: sqlite3.Connection) -> tuple[int, int, int]:
        try:
            busy, wal_pages, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as error:  # busy or full: the next one tries again; the WAL only grows meanwhile
            log.debug("checkpoint skipped: %s", error)
            return (1, -1, -1)
        return int(busy), int(wal_pages), int(copied)

    # ------------------------------------------------------------ the disk budget

    def _live_pages(self) -> int:
        db = self._db
        return int(db.execute("PRAGMA page_count").fetchone()[0]) - int(db.execute("PRAGMA freelist_count").fetchone()[0])

    def budget(self) -> disk.Budget:
        """The split of the budget now; file sizes only, so any thread may ask."""
        files = self._files()
        return disk.budget(
            self.max_bytes, sum(disk.size(path) for path in files), disk.free_bytes(self.data_dir), self.page_size, disk.size(files[1])
        )

    def disk_bytes(self) -> int:
        """Bytes of every file the buffer has in data_dir: what max_bytes bounds."""
        return sum(disk.size(path) for path in self._files())

    @property
    def used_bytes(self) -> int:
        """Bytes of database pages in use (data, windows, layouts, schema): what the data part of the budget is compared with."""
        return self._live * self.page_size

    def fill(self) -> float:
        """Database pages in use as a fraction of those the budget allows."""
        return self._live / max(1, self.budget().data_pages)

    def room(self) -> int:
        """Bytes of chunk body that fit the budget now; commit() checks exactly, this is for choosing what to try."""
        pages = self.budget().data_pages - self._live - 2  # a leaf page split, a page of windows
        return max(0, pages * (self.page_size - 64))

    def max_group_bytes(self) -> int:
        """The largest chunk body one commit should take: a quarter of the data budget and of the WAL allowance."""
        found = self.budget()
        return max(1024, min(found.data_pages * self.page_size, found.wal) // 4)

    def _wal_room(self) -> None:
        """Before a write: a WAL past half its allowance is checkpointed here, so the write starts it over."""
        allowance = self.budget().wal
        if allowance != self._wal_limit:
            # After a checkpoint lets the WAL start over, SQLite cuts the file back to this.
            self._db.execute("PRAGMA journal_size_limit = %d" % (allowance // 2))
            self._wal_limit = allowance
        if disk.size(Path(str(self.path) + "-wal")) > allowance // 2:
            with self._checkpoint_lock:
                self._passive(self._db)

    def _full(self, why: str) -> None:
        """The disk is full: give the reserve back, so that deletes and checkpoints go through."""
        if not self.disk_full and self._reserve.release():
            log.warning(
                "disk full in %s (%s): gave up the buffer's %d-byte reserve so deletes can go on", self.data_dir, why, disk.RESERVE_BYTES
            )
        self.disk_full = why

    def _ready_for_new(self) -> None:
        """New readings are taken only while the reserve is in place; a disk that filled up has to make room for it first."""
        if self.disk_full or not self._reserve.present:
            try:
                made = self._reserve.make()
            except OSError as error:
                raise StoreError(self._problem("make the reserve file next to", error.strerror)) from None
            if not made:
                raise StoreError(
                    "disk full: %s has %d bytes free and the buffer keeps %d free for deleting before it takes new readings;"
                    " free some space there" % (self.data_dir, disk.free_bytes(self.data_dir), disk.RESERVE_BYTES)
                )
            if self.disk_full:
                log.warning("disk in %s has room again: the buffer's reserve is back", self.data_dir)
            self.disk_full = ""
        self._wal_room()

    def _write(self, what: str, work: Callable[[], T]) -> T:
        """A write that must go through (deletes, counters): on a full disk, give up the reserve and try once more."""
        self._wal_room()
        for attempt in range(2):
            try:
                return work()
            except sqlite3.Error as error:
                self._rollback()
                if attempt or not _is_full(error):
                    raise StoreError(self._problem(what, error)) from None
                self._full(str(error))
                with self._checkpoint_lock:
                    self._passive(self._db)  # a WAL folded in can start over, in the file's existing space
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ what a restart needs

    def load_windows(self) -> dict[str, WindowState]:
        rows = self._db.execute("SELECT node, highest, seen FROM nodes").fetchall()
        return {node: WindowState(highest, int.from_bytes(seen, "big")) for node, highest, seen in rows}

    def load_layouts(self) -> list[Layout]:
        return [Layout.from_json(*row) for row in self._db.execute("SELECT id, node, channels FROM layouts")]

    # ------------------------------------------------------------ writing

    def commit(
        self,
        frames: list[StoredFrame],
        readings: int,
        windows: dict[str, WindowState],
        layouts: list[Layout] | None = None,
        make_room: bool = False,
        body: bytes | None = None,
    ) -> tuple[int, int]:
        """Store frames as one chunk, with the windows that admitted them and the layouts they need, in one transaction.

        The budget is checked inside the transaction, in pages as SQLite counts them: over it, the
        transaction is rolled back (StoreFull), or with make_room the oldest chunks are evicted first
        until the new one fits, and the eviction and its count commit together with it.
        body: encode_body(frames), when the caller has it. Returns (chunk id, readings evicted).
        A full disk or any other failure is a StoreError and nothing is written.
        """
        db = self._db
        if body is None:
            body = encode_body(frames)
        limit = self.budget().data_pages
        self._ready_for_new()
        try:
            db.execute("PRAGMA synchronous=FULL")  # whatever a delete left it at: this one is acknowledged to nodes
            db.execute("BEGIN IMMEDIATE")
            cursor = db.execute(
                "INSERT INTO chunks (received, frames, readings, body) VALUES (?, ?, ?, ?)",
                (frames[0].received, len(frames), readings, body),
            )
            chunk_id = int(cursor.lastrowid or 0)
            db.executemany(
                "INSERT INTO nodes (node, highest, seen) VALUES (?, ?, ?)"
                " ON CONFLICT(node) DO UPDATE SET highest=excluded.highest, seen=excluded.seen",
                [(node, state.highest, state.seen.to_bytes(WINDOW // 8, "big")) for node, state in windows.items()],
            )
            if layouts:
                db.executemany(
                    "INSERT OR IGNORE INTO layouts (id, node, channels) VALUES (?, ?, ?)",
                    [(layout.id, layout.node, layout.channels_json()) for layout in layouts],
                )
            live = self._live_pages()
            freed_rows = evicted = 0
            while live > limit and make_room:
                rows = db.execute("SELECT id, readings FROM chunks WHERE id < ? ORDER BY id LIMIT 64", (chunk_id,)).fetchall()
                for row_id, row_readings in rows:
                    db.execute("DELETE FROM chunks WHERE id = ?", (row_id,))
                    freed_rows += 1
                    evicted += row_readings
                    live = self._live_pages()
                    if live <= limit:
                        break
                if not rows:
                    break
            if live > limit:
                db.execute("ROLLBACK")
                raise StoreFull(self.budget().describe())
            if evicted:
                self._add_total("dropped_readings", evicted)
            db.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            if _is_full(error):
                self._full(str(error))
            raise StoreError(self._problem("write the buffer", error)) from None
        self._live = live
        self._rows += 1 - freed_rows
        self._readings += readings - evicted
        return chunk_id, evicted

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # then nothing was committed anyway
                self._db.execute("ROLLBACK")

    def save_node_infos(self, infos: dict[str, str]) -> None:
        """Node id -> info JSON, all in one transaction."""

        def work() -> None:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO nodes (node, highest, seen, info) VALUES (?, -1, zeroblob(8), ?)"
                " ON CONFLICT(node) DO UPDATE SET info=excluded.info",
                list(infos.items()),
            )
            self._db.execute("COMMIT")

        self._write("save node info in", work)
        self._live = self._live_pages()

    def node_info(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT node, info FROM nodes").fetchall())

    # ------------------------------------------------------------ forwarding

    def oldest(self, max_frames: int, after_id: int = 0, up_to_id: int | None = None) -> list[Chunk]:
        """Chunks after after_id (and at most up_to_id), oldest first, until they hold max_frames frames."""
        return list(self.each_oldest(max_frames, after_id, up_to_id))

    def each_oldest(self, max_frames: int, after_id: int = 0, up_to_id: int | None = None) -> Iterator[Chunk]:
        """oldest(), one chunk at a time: a reader that keeps only part of each holds one chunk's objects at once.

        A chunk whose body cannot be read is yielded as damaged, then deleted: it can never be
        published, and it would hold its part of the budget for good.
        """
        total = 0
        damaged: list[tuple[int, int, str]] = []
        cursor = self._db.execute(
            "SELECT id, received, readings, body FROM chunks WHERE id > ? AND id <= ? ORDER BY id",
            (after_id, up_to_id if up_to_id is not None else 2**63 - 1),
        )
        try:
            for chunk_id, received, readings, body in cursor:
                try:
                    frames = decode_body(body, received)
                except Exception as error:  # whatever damage looks like, it costs this chunk, not the reader
                    why = "%s: %s" % (type(error).__name__, error)
                    damaged.append((chunk_id, readings, why))
                    yield Chunk(chunk_id, [], readings, damaged=why)
                    continue
                total += len(frames)
                yield Chunk(chunk_id, frames, readings)
                if total >= max_frames:
                    break
        finally:
            cursor.close()
            self._discard(damaged)

    def _discard(self, damaged: list[tuple[int, int, str]]) -> None:
        for chunk_id, readings, why in damaged:
            try:
                self.delete([chunk_id])
            except StoreError as error:  # the next read finds it again
                log.error("buffered chunk %d cannot be read (%s) nor deleted (%s)", chunk_id, why, error)
                continue
            log.error("buffered chunk %d cannot be read (%s): deleted it, %d readings lost", chunk_id, why, readings)

    def delete(self, ids: list[int]) -> int:
        """Forget chunks (published, or damaged beyond reading); returns the readings they held.

        DELETE_SLICE chunks a transaction, so that a delete needs little WAL, and on a full disk the
        reserve is given up for it. On a StoreError the slices already deleted stay deleted and the
        rest stays; calling again with the same ids is harmless.
        """
        db = self._db
        gone = 0
        try:
            # No fsync for a delete: one lost in a power cut means those readings are published
            # again (delivery is at least once), never lost. The next commit's fsync covers it anyway.
            db.execute("PRAGMA synchronous=NORMAL")
            for start in range(0, len(ids), DELETE_SLICE):
                gone += self._write("delete published chunks from", functools.partial(self._delete, ids[start : start + DELETE_SLICE]))
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA synchronous=FULL")
        return gone

    def _delete(self, ids: list[int]) -> int:
        db = self._db
        marks = ",".join("?" * len(ids))
        db.execute("BEGIN IMMEDIATE")
        removed, readings = db.execute("SELECT COUNT(*), COALESCE(SUM(readings), 0) FROM chunks WHERE id IN (%s)" % marks, ids).fetchone()
        db.execute("DELETE FROM chunks WHERE id IN (%s)" % marks, ids)
        db.execute("COMMIT")
        self._rows -= removed
        self._readings -= readings
        self._live = self._live_pages()
        return int(readings)

    def _add_total(self, name: str, amount: int) -> None:
        self._db.execute(
            "INSERT INTO totals (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, amount),
        )

    def reserve(self, name: str, block: int) -> int:
        """Write-ahead a block of a persistent counter: return its start; the next call starts after it.
        On a full disk it goes through like a delete (it takes the reserve), so the gateway can start."""

        def work() -> int:
            self._db.execute("BEGIN IMMEDIATE")
            start = self.total(name)
            self._add_total(name, block)
            self._db.execute("COMMIT")
            return start

        return self._write("write a counter to", work)

    def max_id(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM chunks").fetchone()
        return int(row[0])

    def total(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM totals WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    @property
    def pending_chunks(self) -> int:
        return int(self._rows)

    @property
    def pending_readings(self) -> int:
        return int(self._readings)


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
