"""The durable offline buffer: one SQLite database (WAL) in data_dir.

One row ("chunk") per group commit, not per reading or per frame: the
READINGS payloads exactly as the nodes sent them (CBOR, about 6 bytes a
reading), each with the layout it arrived under and its arrival time,
compressed with zlib when that makes the chunk smaller. SenML is built when a
chunk is published (gateway/senml.py), not when it is stored. A chunk is
written before its frames are acknowledged to the nodes, and deleted only
after the broker acknowledged every pack built from it. Any new channel layout
is stored in the same transaction as the frames that need it, and so is each
node's duplicate window after them, in the chunk itself (column `windows`, a
few bytes a frame), not in the node's row: rewriting a row per node per
commit scattered page writes over the nodes table. The node rows take the
windows lazily (save_windows: hourly, and at a stop), and a start joins the
rows with the windows of the chunks committed since (_replay), so suppression
and meaning survive restarts, kill -9 and power cuts for every frame still
buffered; after a crash, only counters of frames delivered and deleted since
the last fold are forgotten (a node resending one of those would be published
twice: a duplicate, never a loss).

Writes are few because an SD card wears with every byte: chunk ids are given
here (no AUTOINCREMENT, whose sqlite_sequence page every commit rewrote),
deletes and folds are not synced (a lost one costs duplicates, never
readings), and checkpoints are left to the agent, which runs them when the
WAL has grown, not every second.

Disk: max_bytes bounds every file the buffer keeps in data_dir (the database,
its -wal and -shm, and a reserve file), and so does the free space of the
filesystem when that is smaller (gateway/disk.py). Space is kept aside inside
the budget so that deleting and checkpointing can always proceed: a WAL
allowance (the WAL is checkpointed on the store thread before it outgrows it,
and truncated back) and a reserve file that is given up when the disk fills
up anyway. Node rows and layouts count against the budget too, within a share
of it, and those of nodes long unseen that own no chunk go first when space is
short (_evict_idle). A damaged database is salvaged row by row into a fresh one
(gateway/salvage.py); a row damaged in a way SQLite's checks do not see costs
that row, never the gateway's start.

This class is synchronous and not thread-safe; the agent runs it on one
dedicated thread, off the event loop (checkpoint() excepted).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import sqlite3
import sys
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import cbor2

from protocols.frame import MAX_PAYLOAD, WINDOW

from . import disk, salvage
from .layouts import Layout

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_NAME = "buffer.sqlite3"
SCHEMA_VERSION = 7
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
FRAME_OVERHEAD = 12  # at most this many bytes a frame adds to a chunk body beyond its payload
DELETE_SLICE = 64  # chunks deleted in one transaction: a delete's WAL stays small
_RAW, _ZLIB = b"\x00", b"\x01"  # the body's first byte
# Node rows (windows, info) and layouts may take at most this share of the data budget: node ids a
# node invents cost their rows, never the room of the readings.
NODES_SHARE = 4
# A node unseen for this long, that owns no buffered chunk, gives up its rows (window, info,
# layouts) first when space is short (see _evict_idle for why both conditions).
IDLE_S = 24 * 3600
EVICT_SLICE = 256  # node rows evicted at a time
INFO_SLICE = 32  # node infos inserted at a time, so that as many as fit are saved
# A disk that filled up: the reserve is made again only when this much room is there beyond it
# (free on the disk, or free pages inside the database that deletes left), so that the next commits
# have room too and the reserve is not made and given up again at once; and at most every
# RESERVE_RETRY_S, twice as long after each attempt that failed again, up to RESERVE_RETRY_MAX_S.
REMAKE_MARGIN = 2 * disk.RESERVE_BYTES
RESERVE_RETRY_S = 5.0
RESERVE_RETRY_MAX_S = 300.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    received REAL NOT NULL,
    frames INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    body BLOB NOT NULL,
    windows BLOB NOT NULL DEFAULT x'',
    priority INTEGER NOT NULL DEFAULT 0
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
    info TEXT NOT NULL DEFAULT '{}',
    last REAL NOT NULL DEFAULT 0,
    downlink INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS totals (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# The command life cycle's tables (gateway/command_book.py writes them): one row per command request, and each
# node's next wire id (never given twice, even once the rows are pruned).
COMMAND_TABLES = """
CREATE TABLE IF NOT EXISTS commands (
    node TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    expires REAL NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    wire_id INTEGER,
    counter INTEGER,
    digest TEXT NOT NULL DEFAULT '',
    mid INTEGER,
    PRIMARY KEY (node, id)
);
CREATE INDEX IF NOT EXISTS commands_seq ON commands (seq);
CREATE TABLE IF NOT EXISTS command_ids (
    node TEXT PRIMARY KEY,
    next INTEGER NOT NULL
);
"""

# A row damaged on disk may hold any type in any column (a flipped bit turns a BLOB into TEXT, which
# Python would decode as UTF-8 and fail on): readings are summed only where they are integers.
_COUNT_CHUNKS = (
    "SELECT COUNT(*), COALESCE(SUM(CASE typeof(readings) WHEN 'integer' THEN readings ELSE 0 END), 0),"
    " COALESCE(SUM(priority = 1), 0), COALESCE(SUM(CASE WHEN priority = 1 AND typeof(frames) = 'integer' THEN frames ELSE 0 END), 0)"
    " FROM chunks"
)
# Event chunks (SPEC.md §3.3: READINGS with PRIORITY) are few; this partial index holds them alone, so an
# ordinary commit writes no index page, and the forwarder finds the events on disk without a scan.
_EVENTS_INDEX = "CREATE INDEX IF NOT EXISTS chunks_events ON chunks (id) WHERE priority = 1"


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
    priority: bool = False  # its frames are events (READINGS with PRIORITY): published ahead of any backlog, evicted last


@dataclass(frozen=True)
class WindowState:
    highest: int
    seen: int
    # A window begun by a counter reset (SPEC.md §4.3): it replaces what the store holds for the node
    # instead of joining it, since the counters before the reset belong to another sequence.
    reset: bool = False


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


_WINDOW_RECORD = 8 + 4 + WINDOW // 8  # node id, highest, seen


def encode_windows(windows: dict[str, WindowState]) -> bytes:
    """Each node's window after a chunk's frames: [node id, highest, seen bitmap] records, zlib-compressed when smaller."""
    if not windows:
        return b""
    raw = b"".join(
        bytes.fromhex(node) + state.highest.to_bytes(4, "big") + state.seen.to_bytes(WINDOW // 8, "big") for node, state in windows.items()
    )
    packed = zlib.compress(raw, 1)
    return _ZLIB + packed if len(packed) < len(raw) else _RAW + raw


def decode_windows(blob: bytes) -> dict[str, WindowState]:
    """The windows encode_windows wrote; ValueError when it is not that (damage on disk)."""
    if not blob:
        return {}
    raw = zlib.decompress(blob[1:]) if blob[:1] == _ZLIB else blob[1:]
    if len(raw) % _WINDOW_RECORD:
        raise ValueError("not window records")
    windows: dict[str, WindowState] = {}
    for start in range(0, len(raw), _WINDOW_RECORD):
        record = raw[start : start + _WINDOW_RECORD]
        windows[record[:8].hex()] = WindowState(int.from_bytes(record[8:12], "big"), int.from_bytes(record[12:], "big"))
    return windows


def union(first: WindowState, second: WindowState) -> WindowState:
    """The window that has seen every counter either has (the same node's, with no counter reset between)."""
    if first.highest < second.highest:
        first, second = second, first
    shift = first.highest - second.highest  # bit i of second.seen is bit i + shift of first's
    return WindowState(first.highest, (first.seen | second.seen << shift) & ((1 << WINDOW) - 1) if shift < WINDOW else first.seen)


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
        self._reserve_again_at = 0.0  # monotonic time before which a full disk is not tried again
        self._reserve_retry_s = RESERVE_RETRY_S
        self._evicted_layouts: set[int] = set()
        self.dropped_events = 0  # event frames the last commit evicted (no ordinary readings were left to evict)
        self._least_last: float | None = None  # the least nodes.last when last looked (see _evict_idle)
        self._last_budget: disk.Budget | None = None  # the last split budget() measured
        self._budget_unknown = False  # the disk could not be measured at the last try
        self._set_aside_files()
        try:
            self._db = self._open()
        except OSError as error:  # a file it may not touch, a filesystem gone read-only
            raise StoreError(self._problem("open", error.strerror, disk.OPEN_NEEDS)) from None
        self._shm = self._open_shm()
        self.page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        try:
            self._rows, self._readings, self._event_chunks, self._events = self._db.execute(_COUNT_CHUNKS).fetchone()
        except sqlite3.DatabaseError as error:  # damage quick_check does not see: the counts start from 0
            log.error("cannot count the buffered chunks of %s (%s); the counts start from 0", self.path, error)
            self._rows, self._readings, self._event_chunks, self._events = 0, 0, 0, 0
        self._live = self._live_pages()
        self._seen_at = self._high_water()
        # Windows committed with chunks and not folded into the node rows yet (see save_windows).
        self._folded_through = 0  # the newest chunk whose windows the node rows hold
        self._last_chunk = 0  # the newest chunk committed
        self._unfolded: dict[str, WindowState] = {}
        self.unfolded_chunks = 0  # chunks committed since the last fold
        self._replay()
        self._wal_room()
        try:
            if not self._reserve.make():
                self._full("the disk has less than %d bytes free for the buffer's reserve" % disk.RESERVE_BYTES)
        except OSError as error:
            raise StoreError(self._problem("make the reserve file next to", error.strerror)) from None

    # ------------------------------------------------------------ opening

    def _set_aside_files(self) -> None:
        """Damaged databases set aside by earlier salvages are the operator's to delete; said once at start."""
        aside = sorted(self.data_dir.glob(DB_NAME + ".corrupt-*"))
        if aside:
            log.warning(
                "%d damaged buffer file(s) set aside by earlier salvages take %d bytes of the disk of %s (%s);"
                " delete them once they are no longer needed",
                len(aside),
                sum(disk.size(path) for path in aside),
                self.data_dir,
                ", ".join(path.name for path in aside),
            )

    def _high_water(self) -> float:
        """The latest time any node row or the newest chunk carries: commits never stamp a node row below it."""
        try:
            (last,) = self._db.execute("SELECT MAX(last) FROM nodes").fetchone()
            newest = self._db.execute("SELECT received FROM chunks ORDER BY id DESC LIMIT 1").fetchone()
        except sqlite3.DatabaseError:
            return 0.0
        stamps = [float(value) for value in (last, newest[0] if newest else None) if isinstance(value, int | float)]
        return max(stamps, default=0.0)

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
        if not db.execute("SELECT COUNT(*) FROM pragma_table_info('nodes') WHERE name = 'last'").fetchone()[0]:  # schema version 2
            db.execute("ALTER TABLE nodes ADD COLUMN last REAL NOT NULL DEFAULT 0")
            db.execute("UPDATE nodes SET last = ?", (time.time(),))  # not known: taken as seen now, so kept for IDLE_S
        if not db.execute("SELECT COUNT(*) FROM pragma_table_info('chunks') WHERE name = 'windows'").fetchone()[0]:  # schema version 3
            # Version 3 wrote every node row with each commit: its rows are exact, and its chunks carry no windows.
            db.execute("ALTER TABLE chunks ADD COLUMN windows BLOB NOT NULL DEFAULT x''")
        if not db.execute("SELECT COUNT(*) FROM pragma_table_info('chunks') WHERE name = 'priority'").fetchone()[0]:  # schema version 4
            db.execute("ALTER TABLE chunks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")  # its chunks hold no events
        db.execute(_EVENTS_INDEX)
        if not db.execute("SELECT COUNT(*) FROM pragma_table_info('nodes') WHERE name = 'downlink'").fetchone()[0]:  # schema version 5
            # Up to version 5 the downlink counter was one for the gateway (totals.downlink_counter): every node's
            # sequence starts from it (gateway/counters.py), above whatever any node was sent.
            db.execute("ALTER TABLE nodes ADD COLUMN downlink INTEGER NOT NULL DEFAULT 0")
        if db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name IN ('commands', 'command_ids')").fetchone()[0] < 2:  # version 6
            db.executescript(COMMAND_TABLES)  # the command life cycle's tables (gateway/command_book.py), empty
        chunks_sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'chunks'").fetchone()
        if chunks_sql and "AUTOINCREMENT" in str(chunks_sql[0]).upper() and db.execute("SELECT id FROM chunks LIMIT 1").fetchone() is None:
            # Versions up to 3: AUTOINCREMENT rewrites sqlite_sequence's page with every commit (the ids come from
            # Store._next_id now). Made again without it once empty; until then it only costs that page.
            db.execute("BEGIN IMMEDIATE")
            db.execute("DROP TABLE chunks")
            db.execute(_SCHEMA.split(";")[0])
            db.execute(_EVENTS_INDEX)
            db.execute("COMMIT")
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
                verdict = _schema_verdict(db)  # damage SQLite parses: a column renamed by a flipped bit
            if verdict == "ok":
                return db
            db.close()
            reason = verdict
        except sqlite3.DatabaseError as error:
            # Only a damaged file is salvaged; locked, unreadable or full is the operator's to fix.
            if getattr(error, "sqlite_errorcode", None) not in _CORRUPT_CODES:
                raise StoreError(self._problem("open", error, disk.OPEN_NEEDS)) from None
            reason = str(error)
        except UnicodeDecodeError as error:  # SQLite's message quotes a damaged schema that is not UTF-8
            reason = "malformed database schema (%s)" % error
        try:
            self.moved_aside, self.salvaged = salvage.salvage(self.path, reason, self._connect, decode_body)
        except (sqlite3.Error, OSError) as error:
            raise StoreError(self._problem("salvage the damaged buffer", error, disk.size(self.path))) from None
        try:
            return self._connect(self.path)
        except sqlite3.Error as error:
            raise StoreError(self._problem("open", error, disk.OPEN_NEEDS)) from None

    def close(self) -> None:
        """Fold the windows and the WAL into the database and close; never raises (a stop must finish, even on a full disk)."""
        try:
            self.save_windows({})  # those of the newest chunks, deleted or not: a start needs no chunk to rebuild them
        except StoreError as error:
            log.warning("could not write the node windows at stop (%s); the buffered chunks keep theirs", error)
        try:
            with self._checkpoint_lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as error:
            log.warning("could not fold the WAL into %s at stop (%s); SQLite applies it at the next start", self.path, error)
        for db in (self._db, self._checkpointer):
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
        shm, self._shm = self._shm, -1
        if shm >= 0:
            os.close(shm)  # only now: SQLite holds no lock on -shm any more (see _open_shm)

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy the WAL into the database file; safe to call from a thread other than the store's.
        Returns SQLite's (busy, pages in the WAL, pages copied).

        PASSIVE: it never blocks a commit, it only copies what no commit is writing at that moment.
        Committed data is durable in the WAL already; this keeps the WAL from growing.
        """
        with self._checkpoint_lock:
            if self._checkpointer is None:
                try:
                    self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                except sqlite3.Error as error:
                    raise StoreError(self._problem("checkpoint", error)) from None
            return self._passive(self._checkpointer)

    def _open_shm(self) -> int:
        """A descriptor of -shm for wal_backlog, open from now until close(), after SQLite's connections; -1 if there is none.

        Never one opened and closed per look: POSIX advisory locks belong to the process, and closing any
        descriptor of a file drops all of them, SQLite's own included (sqlite.org/howtocorrupt.html §2.2).
        SQLite holds a shared lock on a byte of -shm for as long as it uses the wal-index; without it, the
        next process to open the database (an operator's sqlite3, a test reading the buffer beside the
        gateway) takes itself for the first, truncates -shm and rebuilds the index from the WAL: the
        gateway, which has -shm mapped, dies of SIGBUS when it touches it meanwhile, without a log line.
        """
        try:
            return os.open(str(self.path) + "-shm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # no wal-index (SQLite keeps none on disk): the agent checkpoints every time it looks
            return -1

    def wal_backlog(self) -> int:
        """WAL pages not copied into the database file yet, or -1 when that cannot be read; any thread may ask.

        Read from the wal-index in -shm, whose header SQLite documents (sqlite.org/walformat.html §2.2:
        mxFrame, the last valid WAL frame, at byte 16; nBackfill, the frames already checkpointed, at
        byte 96; native byte order): asking SQLite would mean a checkpoint, the very write this saves.
        Through the descriptor kept open (_open_shm): opening and closing -shm here would drop SQLite's locks.
        """
        shm = self._shm
        if shm < 0:
            return -1
        try:
            header = os.pread(shm, 100, 0)
        except OSError:
            return -1
        if len(header) < 100:
            return -1
        return max(0, int.from_bytes(header[16:20], sys.byteorder) - int.from_bytes(header[96:100], sys.byteorder))

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
        """The split of the budget now; file sizes only, so any thread may ask.

        When the disk cannot be measured (statvfs or stat fail: the card is going, the directory was
        moved), the last split measured stands in, with one log line: the committer and the checkpoint
        loop must not die of it; a write that fails says so itself.
        """
        files = self._files()
        try:
            found = disk.budget(
                self.max_bytes, sum(disk.size(path) for path in files), disk.free_bytes(self.data_dir), self.page_size, disk.size(files[1])
            )
        except OSError as error:
            if self._last_budget is None:
                raise StoreError(self._problem("measure the disk of", error.strerror)) from None
            if not self._budget_unknown:
                log.error("cannot measure the disk of %s (%s); going by the last measurement", self.path, error.strerror)
            self._budget_unknown = True
            return self._last_budget
        if self._budget_unknown:
            log.warning("the disk of %s can be measured again", self.path)
            self._budget_unknown = False
        self._last_budget = found
        return found

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
        """The disk is full: give the reserve back, so that deletes and checkpoints go through.
        Said once per episode: the episode ends when a commit of new readings succeeds."""
        released = self._reserve.release()
        if released and not self.disk_full:
            log.warning(
                "disk full in %s (%s): gave up the buffer's %d-byte reserve so deletes can go on", self.data_dir, why, disk.RESERVE_BYTES
            )
        elif released:  # made again, and the disk was full again at once: wait longer next time
            self._reserve_retry_s = min(RESERVE_RETRY_MAX_S, self._reserve_retry_s * 2)
        self.disk_full = why
        self._reserve_again_at = time.monotonic() + self._reserve_retry_s

    def _ready_for_new(self) -> None:
        """New readings are taken only while the reserve is in place; a disk that filled up has to make room for it first.

        Hysteresis, so that a full disk does not make and give up the reserve many times a second
        (each time 128 KiB written to an SD card): the reserve is made again at most every
        RESERVE_RETRY_S (longer after each failed attempt), and only when there is REMAKE_MARGIN of room
        beyond it, on the disk or in free database pages.
        """
        if self._reserve.present:
            self._wal_room()
            return
        free = disk.free_bytes(self.data_dir)
        inside = int(self._db.execute("PRAGMA freelist_count").fetchone()[0]) * self.page_size
        if time.monotonic() < self._reserve_again_at or free < disk.RESERVE_BYTES or free + inside < disk.RESERVE_BYTES + REMAKE_MARGIN:
            raise StoreError(
                "disk full: %s has %d bytes free and the buffer needs %d free (a reserve for deleting, and room to write)"
                " before it takes new readings; free some space there" % (self.data_dir, free, disk.RESERVE_BYTES + REMAKE_MARGIN)
            )
        self._reserve_again_at = time.monotonic() + self._reserve_retry_s
        try:
            made = self._reserve.make()
        except OSError as error:
            raise StoreError(self._problem("make the reserve file next to", error.strerror)) from None
        if not made:
            raise StoreError(
                "disk full: %s has not %d bytes free for the buffer's reserve; free some space there" % (self.data_dir, disk.RESERVE_BYTES)
            )
        self._wal_room()

    def _room_again(self) -> None:
        """A commit of new readings went through: a full-disk episode is over."""
        if self.disk_full:
            log.warning("disk in %s has room again: the buffer's reserve is back and new readings are taken", self.data_dir)
            self.disk_full = ""
            self._reserve_retry_s = RESERVE_RETRY_S

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for the tables of other modules (gateway/command_book.py); on the store thread only."""
        return self._db

    def write(self, what: str, work: Callable[[], T]) -> T:
        """A durable write of another module's tables, as _write does it (StoreError when it cannot be done)."""
        return self._write(what, work)

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

    # Text columns are read as CAST(... AS BLOB) and decoded here: a row damaged on disk (a flipped
    # bit turns BLOB into TEXT or the reverse, while quick_check says ok) costs that row, and these
    # reads can never stop the gateway from starting.

    def _startup_rows(self, what: str, query: str) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(query).fetchall()
        except sqlite3.DatabaseError as error:
            log.error("cannot read the %s in %s (%s); starting without them", what, self.path, error)
            return []

    def _replay(self) -> None:
        """At start: the windows of the chunks committed after the last fold, newest last (each holds the
        node's whole window after its frames, so the newest wins). A damaged record costs its windows only."""
        try:
            through, why = self.total("windows_through"), "a damaged value"
            self._last_chunk = self.max_id()
        except sqlite3.DatabaseError as error:
            through, why = None, str(error)
        if through is None:  # a window older than its node's row then costs duplicates, as a crash before a fold does
            log.error("cannot read how far the node windows of %s are folded (%s); taking every chunk's windows", self.path, why)
        else:
            self._folded_through = through
        damaged = 0
        for chunk_id, blob in self._startup_rows(
            "windows of the newest chunks", "SELECT id, CAST(windows AS BLOB) FROM chunks WHERE id > %d ORDER BY id" % self._folded_through
        ):
            self._last_chunk = max(self._last_chunk, int(chunk_id))
            try:
                if type(blob) is not bytes:
                    raise ValueError("a damaged row")
                self._unfolded.update(decode_windows(blob))
            except Exception:  # whatever damage looks like, it costs the windows of that chunk
                damaged += 1
                continue
            self.unfolded_chunks += 1
        if damaged:
            log.error(
                "the node windows of %d chunks in %s are damaged: left out, their nodes' last frames may be taken twice", damaged, self.path
            )
        # Chunk ids only grow (the forwarder and the fold go by them), without AUTOINCREMENT's page write per
        # commit: after every chunk there is, even when the fold mark or MAX(id) could not be read.
        self._next_id = max(self._last_chunk, self._folded_through) + 1

    def load_windows(self) -> dict[str, WindowState]:
        """Each node's duplicate window: its row, or what the newest chunk holding its frames says when that
        was committed after the last fold. A damaged row is left out (that node's next frames count as new)."""
        windows: dict[str, WindowState] = {}
        for raw_node, highest, seen in self._startup_rows(
            "node windows", "SELECT CAST(node AS BLOB), highest, CAST(seen AS BLOB) FROM nodes"
        ):
            node = _node_id(raw_node)
            if node is None or type(highest) is not int or type(seen) is not bytes or not -1 <= highest < 2**32:
                log.error(
                    "a node window in %s is damaged (node %s): left out, that node's next frames are taken as new",
                    self.path,
                    _shown(raw_node),
                )
                continue
            windows[node] = WindowState(highest, int.from_bytes(seen, "big"))
        windows.update(self._unfolded)  # committed after the rows were written: they saw everything the rows hold
        return windows

    def save_windows(self, windows: dict[str, WindowState], durable: bool = False) -> None:
        """Fold windows into the node rows, in one transaction: those given (the event loop's, of nodes whose
        window moved since the last call) and those committed with chunks since the last fold (deleted or not).

        The node rows are written here, lazily, not with every commit: a commit stores its windows in its
        chunk (a few bytes a frame) instead of rewriting each node's row, whose pages lie all over the
        table. Until a fold, a start rebuilds the windows from the chunks committed after the last one
        (_replay). No fsync (synchronous=NORMAL): a fold lost in a power cut leaves the windows of the
        chunks to the next start, and windows held nowhere else (frames the broker confirmed) cost at
        most a duplicate of a frame whose ACK the node did not get, never a loss.

        The two kinds are joined as a union: a window given here may lack the counters of a commit
        whose callback had not run yet, and a committed one those of frames the broker confirmed since.
        A window given with `reset` (the node's counter was reset since the last fold) replaces the
        committed one: joined, the pre-reset counters would make the node's new frames duplicates.
        durable: fsync'd, as a commit is (the fold of a reset window: a crash must not bring back the old one).
        """
        merged = dict(self._unfolded)
        for node, state in windows.items():
            merged[node] = union(merged[node], state) if node in merged and not state.reset else state
        through = self._last_chunk
        if not merged and through == self._folded_through:
            return
        seen_at = self._seen_at = max(time.time(), self._seen_at)

        def work() -> None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO nodes (node, highest, seen, last) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(node) DO UPDATE SET highest=excluded.highest, seen=excluded.seen, last=excluded.last",
                [(node, state.highest, state.seen.to_bytes(WINDOW // 8, "big"), seen_at) for node, state in merged.items()],
            )
            db.execute("INSERT OR REPLACE INTO totals (name, value) VALUES ('windows_through', ?)", (through,))
            db.execute("COMMIT")

        (self._write if durable else self._unsynced)("fold node windows into", work)
        self._folded_through = through
        self._unfolded = {}
        self.unfolded_chunks = 0
        self._live = self._live_pages()

    def _unsynced(self, what: str, work: Callable[[], T]) -> T:
        """A write whose loss in a power cut costs duplicates at most (deletes, folds): no fsync."""
        db = self._db
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            return self._write(what, work)
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA synchronous=FULL")

    def load_layouts(self) -> list[Layout]:
        """Every layout that reads; chunks that need a damaged one are reported damaged when published."""
        layouts: list[Layout] = []
        for layout_id, raw_node, channels in self._startup_rows(
            "channel layouts", "SELECT id, CAST(node AS BLOB), CAST(channels AS BLOB) FROM layouts"
        ):
            node = _node_id(raw_node)
            try:
                if node is None or type(layout_id) is not int or type(channels) is not bytes:
                    raise ValueError("not a layout row")
                layouts.append(Layout.from_json(layout_id, node, channels.decode()))
            except (ValueError, TypeError, KeyError, AttributeError) as error:
                log.error(
                    "channel layout %r in %s is damaged (%s): left out; readings stored under it cannot be published",
                    layout_id,
                    self.path,
                    error,
                )
        return layouts

    # ------------------------------------------------------------ writing

    def commit(
        self,
        frames: list[StoredFrame],
        readings: int,
        windows: dict[str, WindowState],
        layouts: list[Layout] | None = None,
        make_room: bool = False,
        body: bytes | None = None,
        published: Collection[int] = (),
        priority: bool = False,
    ) -> tuple[int, int]:
        """Store frames as one chunk, with the windows that admitted them and the layouts they need, in one transaction.

        The budget is checked inside the transaction, in pages as SQLite counts them: over it, the
        transaction is rolled back (StoreFull), or with make_room the oldest chunks are evicted first
        until the new one fits, and the eviction and its count commit together with it.
        body: encode_body(frames), when the caller has it. published: chunks the broker acknowledged
        and not yet deleted, evicted first. priority: the frames are events; with make_room, a chunk of events
        is evicted only by a chunk of events, and only when no chunk of ordinary readings is left to evict.
        Returns (chunk id, readings evicted).
        A full disk or any other failure is a StoreError and nothing is written.
        """
        db = self._db
        if body is None:
            body = encode_body(frames)
        limit = self.budget().data_pages
        self._ready_for_new()
        # The node rows' `last`, written when windows are folded (save_windows), is never below the
        # `received` of a chunk holding their frames, nor of any chunk committed before (a high-water
        # mark, whatever the clock did): what _evict_idle relies on to tell which nodes own no chunk.
        self._seen_at = max(time.time(), frames[0].received, self._seen_at)
        idle_layouts: list[int] = []
        try:
            db.execute("PRAGMA synchronous=FULL")  # whatever a delete left it at: this one is acknowledged to nodes
            db.execute("BEGIN IMMEDIATE")
            chunk_id = self._next_id
            db.execute(
                "INSERT INTO chunks (id, received, frames, readings, body, windows, priority) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (chunk_id, frames[0].received, len(frames), readings, body, encode_windows(windows), int(priority)),
            )
            if layouts:
                self._insert_layouts(layouts)
            live = self._live_pages()
            if live > limit:  # idle nodes' rows go before any readings do
                idle_layouts = self._evict_idle(lambda: self._live_pages() > limit, keep=windows)
                live = self._live_pages()
            freed_rows = evicted = dropped_events = freed_event_chunks = freed_events = 0
            # Chunks the broker already acknowledged (their delete is batched) go first, and are not
            # counted as dropped: their readings were delivered.
            for row_id, row_readings, row_priority, row_frames in self._evictable(published, chunk_id, live > limit, make_room, priority):
                db.execute("DELETE FROM chunks WHERE id = ?", (row_id,))
                freed_rows += 1
                if row_priority == 1:
                    freed_event_chunks += 1
                    freed_events += row_frames if type(row_frames) is int else 0
                if row_id not in published:
                    evicted += row_readings if type(row_readings) is int else 0
                    if row_priority == 1 and type(row_frames) is int:
                        dropped_events += row_frames
                live = self._live_pages()
                if live <= limit:
                    break
            if live > limit:
                db.execute("ROLLBACK")
                raise StoreFull(self.budget().describe())
            if evicted:
                self._add_total("dropped_readings", evicted)
            if dropped_events:
                self._add_total("dropped_events", dropped_events)
            db.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            if _is_full(error):
                self._full(str(error))
            raise StoreError(self._problem("write the buffer", error)) from None
        self._evicted_layouts.update(idle_layouts)
        self._room_again()
        self._unfolded.update(windows)
        self._last_chunk = chunk_id
        self._next_id = chunk_id + 1
        self.unfolded_chunks += 1
        self._live = live
        self._rows += 1 - freed_rows
        self._readings += readings - evicted
        self._event_chunks += int(priority) - freed_event_chunks
        self._events += (len(frames) if priority else 0) - freed_events
        self.dropped_events = dropped_events  # the committer logs them once per full episode
        return chunk_id, evicted

    def _evictable(
        self, published: Collection[int], before: int, needed: bool, make_room: bool, events: bool = False
    ) -> Iterator[tuple[int, Any, Any, Any]]:
        """(id, readings, priority, frames) of the chunks older than `before` to evict: acknowledged ones first
        (costs nothing), then, with make_room, the oldest ordinary ones, and only then, for a chunk of events
        (`events`), the oldest events (issue 13: an alarm outlives the readings around it). An ordinary chunk
        never evicts an event: when only events are left it does not fit (StoreFull), and its nodes keep it."""
        if not needed:
            return
        done = sorted(chunk_id for chunk_id in published if chunk_id < before)
        for start in range(0, len(done), 500):
            part = done[start : start + 500]
            yield from self._db.execute(
                "SELECT id, readings, priority, frames FROM chunks WHERE id IN (%s)" % ",".join("?" * len(part)), part
            ).fetchall()
        if not make_room:
            return
        # The ordinary chunks by the primary key, passing over the few events; then the events by their index.
        for kind in ("priority != 1", "priority = 1") if events else ("priority != 1",):
            after = 0
            while True:
                rows = self._db.execute(
                    "SELECT id, readings, priority, frames FROM chunks WHERE id > ? AND id < ? AND %s ORDER BY id LIMIT 64" % kind,
                    (after, before),
                ).fetchall()
                if not rows:
                    break
                yield from rows
                after = rows[-1][0]

    def _evict_idle(self, over: Callable[[], bool], keep: Collection[str] = ()) -> list[int]:
        """Inside a transaction, while over(): delete the rows of nodes that own no buffered chunk and were
        not seen for IDLE_S, longest unseen first. Returns the layout ids deleted.

        The rule: a node's window is what keeps its frames from being taken twice, and its layouts are
        what its stored frames mean, so they go only when nothing needs them. A node owns no chunk when
        no frame of it was ever stored (highest = -1: only its HELLO was), or when its `last` is older
        than the `received` of the oldest chunk (a fold writes `last` at least the `received` of every
        chunk committed before, so the first chunk by id stands for all of them, found by the primary
        key instead of a scan), and none of its frames is in a chunk committed since the last fold;
        only then do its layouts go too. Forgetting a window means that, after a
        restart, frames the node sent before could be taken as new: accepted for a node long unseen
        only. Nodes in `keep` (those written in this transaction) stay.
        """
        db = self._db
        cutoff = time.time() - IDLE_S
        if self._least_last is not None and self._least_last >= cutoff:
            return []  # no node row is old enough yet: no scan (a full buffer with drop_oldest asks at every commit)
        oldest = self.oldest_received()
        owns_none = cutoff if oldest is None else min(cutoff, oldest)
        kept = {node.encode() for node in (*keep, *self._unfolded)}  # nodes of chunks not folded yet own them
        rows = db.execute(
            "SELECT rowid, CAST(node AS BLOB) FROM nodes WHERE last < ? AND (highest = -1 OR last < ?) ORDER BY last", (cutoff, owns_none)
        ).fetchall()
        candidates = [rowid for rowid, node in rows if node not in kept]
        if not rows:  # rows only ever get a newer `last`: none can be idle before the least one now is
            self._least_last = db.execute("SELECT MIN(last) FROM nodes").fetchone()[0]
        layouts: list[int] = []
        evicted = 0
        for start in range(0, len(candidates), EVICT_SLICE):
            if not over():
                break
            part = candidates[start : start + EVICT_SLICE]
            marks = ",".join("?" * len(part))
            owned = "SELECT node FROM nodes WHERE rowid IN (%s) AND last < ?" % marks
            layouts += [row[0] for row in db.execute("SELECT id FROM layouts WHERE node IN (%s)" % owned, [*part, owns_none])]
            # Their downlink limits go with them: every session starts at least at the gateway-wide counter, so
            # it takes the highest of them, and a node that comes back is never sent a counter it was sent before.
            self._raise_downlink(db.execute("SELECT MAX(downlink) FROM nodes WHERE rowid IN (%s)" % marks, part).fetchone()[0])
            db.execute("DELETE FROM layouts WHERE node IN (%s)" % owned, [*part, owns_none])
            db.execute("DELETE FROM nodes WHERE rowid IN (%s)" % marks, part)
            evicted += len(part)
        if evicted:
            log.info("evicted the rows of %d nodes unseen for %.0f h that own no buffered readings, to make room", evicted, IDLE_S / 3600)
        return layouts

    def take_evicted_layouts(self) -> set[int]:
        """Layout ids deleted by _evict_idle since the last call: a node that comes back needs them written again."""
        evicted, self._evicted_layouts = self._evicted_layouts, set()
        return evicted

    def _node_pages(self) -> int:
        """Database pages the node rows and layouts take."""
        return sum(
            int(self._db.execute("SELECT COALESCE(SUM(pageno), 0) FROM dbstat WHERE name = ? AND aggregate = 1", (name,)).fetchone()[0])
            for name in ("nodes", "sqlite_autoindex_nodes_1", "layouts")
        )

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # then nothing was committed anyway
                self._db.execute("ROLLBACK")

    def save_node_infos(self, infos: dict[str, str], layouts: Collection[Layout] = ()) -> None:
        """Node id -> info JSON, all in one transaction, within the budget: node rows and layouts may take
        1/NODES_SHARE of it, idle nodes' rows make room first (_evict_idle), and on a full disk the
        reserve is not used (it is for deletes). StoreFull when not all of them fit (those that fit are saved,
        with their layouts). layouts: of these nodes, saved with them (a commit would insert each on its own)."""
        db = self._db
        if not self._reserve.present:
            raise StoreError("disk full: %s; node info is written once there is room again" % (self.disk_full or "no room for the reserve"))
        limit = self.budget().data_pages
        share = limit // NODES_SHARE

        def over() -> bool:
            return self._live_pages() > limit or self._node_pages() > share

        items = list(infos.items())
        saved = 0
        evicted: list[int] = []
        self._wal_room()
        try:
            db.execute("BEGIN IMMEDIATE")
            for start in range(0, len(items), INFO_SLICE):  # as many as fit, in the order they came
                part = items[start : start + INFO_SLICE]
                db.execute("SAVEPOINT part")
                db.executemany(
                    "INSERT INTO nodes (node, highest, seen, info, last) VALUES (?, -1, zeroblob(8), ?, ?)"
                    " ON CONFLICT(node) DO UPDATE SET info=excluded.info, last=excluded.last",
                    [(node, info, time.time()) for node, info in part],
                )
                if over():
                    evicted += self._evict_idle(over, keep=infos)
                if over():
                    db.execute("ROLLBACK TO part")
                    db.execute("RELEASE part")
                    break
                db.execute("RELEASE part")
                saved += len(part)
            stored = {node for node, _info in items[:saved]}
            self._insert_layouts([layout for layout in layouts if layout.node in stored])
            db.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            raise StoreError(self._problem("save node info in", error)) from None
        self._evicted_layouts.update(evicted)
        self._live = self._live_pages()
        if saved < len(items):
            raise StoreFull(
                "the info of %d of %d nodes does not fit: known nodes may take 1/%d of the buffer's room, and no node that owns"
                " no buffered readings has been unseen for %g h" % (len(items) - saved, len(items), NODES_SHARE, IDLE_S / 3600)
            )

    def node_info(self) -> dict[str, str]:
        """Node id -> info JSON (an object) of every row that reads."""
        infos: dict[str, str] = {}
        for raw_node, raw_info in self._startup_rows("node info", "SELECT CAST(node AS BLOB), CAST(info AS BLOB) FROM nodes"):
            node = _node_id(raw_node)
            try:
                if node is None or type(raw_info) is not bytes or not isinstance(json.loads(raw_info), dict):
                    raise ValueError("not a node info row")
            except ValueError:
                log.error("the info of node %s in %s is damaged: left out until the node says HELLO again", _shown(raw_node), self.path)
                continue
            infos[node] = raw_info.decode()
        return infos

    # ------------------------------------------------------------ forwarding

    def oldest(self, max_frames: int, after_id: int = 0, up_to_id: int | None = None, events: bool | None = None) -> list[Chunk]:
        """Chunks after after_id (and at most up_to_id), oldest first, until they hold max_frames frames.
        events: True for the chunks of events only, False for the ordinary ones only, None for both."""
        return list(self.each_oldest(max_frames, after_id, up_to_id, events))

    def each_oldest(self, max_frames: int, after_id: int = 0, up_to_id: int | None = None, events: bool | None = None) -> Iterator[Chunk]:
        """oldest(), one chunk at a time: a reader that keeps only part of each holds one chunk's objects at once.

        A chunk whose body cannot be read is yielded as damaged, then deleted: it can never be
        published, and it would hold its part of the budget for good.
        """
        total = 0
        damaged: list[tuple[int, int, str]] = []
        try:
            # CAST: a body whose type a flipped bit turned into TEXT reads as the bytes it holds.
            kind = "" if events is None else " AND priority = 1" if events else " AND priority != 1"  # = 1: the partial index
            cursor = self._db.execute(
                "SELECT id, received, readings, CAST(body AS BLOB), priority FROM chunks WHERE id > ? AND id <= ?%s ORDER BY id" % kind,
                (after_id, up_to_id if up_to_id is not None else 2**63 - 1),
            )
        except sqlite3.Error as error:
            raise StoreError(self._problem("read the buffer", error)) from None
        try:
            for chunk_id, received, readings, body, priority in _guarded(
                cursor, lambda error: StoreError(self._problem("read the buffer", error))
            ):
                if type(readings) is not int:
                    readings = 0  # not known: reported as 0 lost rather than a wrong number
                try:
                    if type(received) not in (int, float) or type(body) is not bytes:
                        raise ValueError("a damaged row")
                    frames = decode_body(body, received)
                except Exception as error:  # whatever damage looks like, it costs this chunk, not the reader
                    why = "%s: %s" % (type(error).__name__, error)
                    damaged.append((chunk_id, readings, why))
                    yield Chunk(chunk_id, [], readings, damaged=why, priority=priority == 1)
                    continue
                total += len(frames)
                yield Chunk(chunk_id, frames, readings, priority=priority == 1)
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
        # The windows of chunks not folded yet stay in memory (the next fold writes them), not written here:
        # folding before each delete rewrote every node row each few seconds with the broker up. After a crash
        # before the next fold, the counters of frames delivered and deleted since the last one are forgotten:
        # only a node that resends one of them (its ACK was lost) has it taken and published again, a duplicate.
        gone = 0
        # No fsync for a delete: one lost in a power cut means those readings are published
        # again (delivery is at least once), never lost. The next commit's fsync covers it anyway.
        for start in range(0, len(ids), DELETE_SLICE):
            gone += self._unsynced("delete published chunks from", functools.partial(self._delete, ids[start : start + DELETE_SLICE]))
        return gone

    def keep_only(self, chunk_id: int, frames: list[StoredFrame], readings: int) -> int:
        """Rewrite a chunk in place with only these of its frames (a stop keeps what the broker does not have yet,
        Forwarder.finish): same id, so it keeps its place in the buffer's order (a node's events stay in theirs),
        its priority and the windows that admitted it. Returns the readings dropped from it. One transaction,
        synced: a power cut leaves the chunk whole (duplicates then) or rewritten, never lost."""

        def work() -> int:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT readings, frames, priority FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
            if row is None:
                db.execute("ROLLBACK")
                return 0
            before, old_frames, priority = (value if type(value) is int else 0 for value in row)
            db.execute(
                "UPDATE chunks SET frames = ?, readings = ?, body = ? WHERE id = ?", (len(frames), readings, encode_body(frames), chunk_id)
            )
            db.execute("COMMIT")
            self._readings += readings - before
            if priority == 1:
                self._events += len(frames) - old_frames
            return before - readings

        gone = self._write("rewrite a partly delivered chunk in", work)
        self._live = self._live_pages()
        return gone

    def _delete(self, ids: list[int]) -> int:
        db = self._db
        marks = ",".join("?" * len(ids))
        db.execute("BEGIN IMMEDIATE")
        removed, readings, event_chunks, events = db.execute(_COUNT_CHUNKS + " WHERE id IN (%s)" % marks, ids).fetchone()
        db.execute("DELETE FROM chunks WHERE id IN (%s)" % marks, ids)
        db.execute("COMMIT")
        self._rows -= removed
        self._readings -= readings
        self._event_chunks -= event_chunks
        self._events -= events
        self._live = self._live_pages()
        return int(readings)

    def _insert_layouts(self, layouts: Iterable[Layout]) -> None:
        """Inside a transaction: layouts not on disk yet (one already there is left as it is)."""
        self._db.executemany(
            "INSERT OR IGNORE INTO layouts (id, node, channels) VALUES (?, ?, ?)",
            [(layout.id, layout.node, layout.channels_json()) for layout in layouts],
        )

    def _add_total(self, name: str, amount: int) -> None:
        if self.total(name) is None:
            log.error("the total %s in %s is damaged; it counts again from 0", name, self.path)
            self._db.execute("DELETE FROM totals WHERE name = ?", (name,))
        self._db.execute(
            "INSERT INTO totals (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, amount),
        )

    def reserve(self, name: str, block: int, if_damaged: int) -> int:
        """Write-ahead a block of a persistent counter: return its start; the next call starts after it.
        A damaged stored value is never guessed below: the block starts at if_damaged, with one log line.
        On a full disk it goes through like a delete (it takes the reserve), so the gateway can start."""

        def work() -> int:
            self._db.execute("BEGIN IMMEDIATE")
            start = self.total(name)
            if start is None:
                log.error("the counter %s in %s is damaged; it continues from %d", name, self.path, if_damaged)
                start = if_damaged
            self._db.execute("INSERT OR REPLACE INTO totals (name, value) VALUES (?, ?)", (name, start + block))
            self._db.execute("COMMIT")
            return start

        return self._write("write a counter to", work)

    def save_downlink(self, limits: dict[str, int], gateway: int = 0) -> None:
        """Downlink counters reserved ahead (gateway/counters.py): node id -> the limit of its counters, and the
        gateway-wide counter's limit (0: unchanged), in one fsync'd transaction; a limit never moves back.
        Goes through on a full disk like a delete (it takes the reserve): frames to the nodes wait for it."""

        def work() -> None:
            seen_at = self._seen_at = max(time.time(), self._seen_at)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO nodes (node, highest, seen, last, downlink) VALUES (?, -1, zeroblob(8), ?, ?)"
                " ON CONFLICT(node) DO UPDATE SET downlink = MAX(downlink, excluded.downlink)",
                [(node, seen_at, limit) for node, limit in limits.items()],
            )
            self._raise_downlink(gateway)
            self._db.execute("COMMIT")

        self._write("reserve downlink counters in", work)

    def _raise_downlink(self, limit: object) -> None:
        """Inside a transaction: the gateway-wide downlink counter is at least `limit` (a damaged value stays
        damaged: a start then moves it to FRESH, never below)."""
        if type(limit) is int and limit > 0:
            self._db.execute(
                "INSERT INTO totals (name, value) VALUES ('downlink_counter', ?)"
                " ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)",
                (limit,),
            )

    def load_downlink(self) -> dict[str, int]:
        """Node id -> the limit of its downlink counters on disk (nodes that have one). A damaged one is left out:
        that node continues from the gateway-wide counter, and if it finds that behind its window it says so
        (REJECT stale) and is moved ahead (gateway/counters.py)."""
        limits: dict[str, int] = {}
        damaged = []
        for raw_node, limit in self._startup_rows(
            "downlink counters", "SELECT CAST(node AS BLOB), downlink FROM nodes WHERE downlink != 0"
        ):
            node = _node_id(raw_node)
            if node is None or type(limit) is not int or not 0 < limit < 2**40:
                damaged.append(_shown(raw_node))
                continue
            limits[node] = limit
        if damaged:
            log.error(
                "the downlink counters of %d nodes in %s are damaged (%s): they continue from the gateway-wide counter,"
                " and a node that finds it behind says so (REJECT stale) and is moved ahead",
                len(damaged),
                self.path,
                ", ".join(damaged[:3]),
            )
        return limits

    def max_id(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM chunks").fetchone()
        return int(row[0])

    def total(self, name: str) -> int | None:
        """A persistent count: 0 before its first write, None when damaged (a value that is not an integer:
        a flipped serial-type bit quick_check does not see)."""
        row = self._db.execute("SELECT value FROM totals WHERE name = ?", (name,)).fetchone()
        if row is None:
            return 0
        return row[0] if type(row[0]) is int else None

    @property
    def pending_chunks(self) -> int:
        return int(self._rows)

    def oldest_received(self) -> float | None:
        """Unix time the oldest chunk on disk was received (by the primary key, no scan); None when there is none
        or its value is damaged. On the store's thread."""
        first = self._db.execute("SELECT received FROM chunks ORDER BY id LIMIT 1").fetchone()
        if first is None or type(first[0]) not in (int, float) or not math.isfinite(first[0]):
            return None
        return float(first[0])

    @property
    def pending_readings(self) -> int:
        return int(self._readings)

    @property
    def pending_event_chunks(self) -> int:
        """Chunks of events on disk (published or not, until deleted); read on the event loop too (an int: atomic)."""
        return int(self._event_chunks)

    @property
    def pending_events(self) -> int:
        return int(self._events)


_COLUMNS = {
    "chunks": ("id", "received", "frames", "readings", "body", "windows", "priority"),
    "layouts": ("id", "node", "channels"),
    "nodes": ("node", "highest", "seen", "info", "last", "downlink"),
    "totals": ("name", "value"),
    "commands": (
        "node", "id", "seq", "name", "args", "expires", "state", "at", "attempts", "result", "error", "wire_id", "counter", "digest", "mid",
    ),
    "command_ids": ("node", "next"),
}  # fmt: skip


def _schema_verdict(db: sqlite3.Connection) -> str:
    """ "ok" when every table has the columns this version reads and writes, else which one does not."""
    for table, columns in _COLUMNS.items():
        marks = ",".join("?" * len(columns))
        found = db.execute("SELECT COUNT(*) FROM pragma_table_info(?) WHERE name IN (%s)" % marks, (table, *columns)).fetchone()[0]
        if found != len(columns):
            return "the schema of table %s is damaged: it lacks some of its columns" % table
    return "ok"


def _shown(raw: object) -> str:
    """A stored value for the log, whatever damage made of it."""
    return raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else repr(raw)


def _guarded(cursor: sqlite3.Cursor, error: Callable[[sqlite3.Error], Exception]) -> Iterator[tuple[Any, ...]]:
    """The cursor's rows; an SQLite error while stepping it raises error(it) instead."""
    while True:
        try:
            row = cursor.fetchone()
        except sqlite3.Error as failure:
            raise error(failure) from None
        if row is None:
            return
        yield row


def _node_id(raw: object) -> str | None:
    """A node id as stored (16 hex digits), or None when the stored bytes are not one."""
    if type(raw) is not bytes or len(raw) != 16:
        return None
    try:
        bytes.fromhex(raw.decode("ascii"))
    except ValueError:
        return None
    return raw.decode("ascii")


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
