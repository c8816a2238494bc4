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

This class is synchronous and not thread-safe; the agent runs it on one
dedicated thread, off the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cbor2

from protocols.frame import MAX_PAYLOAD, WINDOW

from .layouts import Layout

log = logging.getLogger(__name__)

DB_NAME = "buffer.sqlite3"
SCHEMA_VERSION = 2
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
ROW_OVERHEAD = 40  # bytes SQLite spends per chunk row beyond its body, for the budget
FRAME_OVERHEAD = 12  # at most this many bytes a frame adds to a chunk body beyond its payload
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


class Store:
    """The buffer database; see the module docstring for the rules it keeps."""

    def __init__(self, data_dir: Path, max_bytes: int) -> None:
        self.path = Path(data_dir) / DB_NAME
        self.max_bytes = max_bytes
        try:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError("cannot create data_dir %s: %s" % (data_dir, error.strerror)) from None
        self.moved_aside: Path | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._db = self._open_checked()
        self._bytes, self._rows, self._readings = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(body)), 0), COUNT(*), COALESCE(SUM(readings), 0) FROM chunks"
        ).fetchone()

    # ------------------------------------------------------------ opening

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction survives power loss, not just a crash.
        db.execute("PRAGMA synchronous=FULL")
        # Chunks are appended and read once, oldest first: the OS's file cache serves that as well as
        # SQLite's own page cache would, so the gateway keeps 512 KiB of it instead of the default 2 MiB.
        db.execute("PRAGMA cache_size=-512")
        # Checkpoints (copying the WAL into the database file, with its own fsync) run on their own
        # connection and thread (checkpoint()), not inside a commit that nodes are waiting on.
        db.execute("PRAGMA wal_autocheckpoint=0")
        self._upgrade(db)
        db.executescript(_SCHEMA)
        db.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)
        return db

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """A buffer of edgegw 0.1 (ready SenML per frame, table `batches`) is taken over only when empty."""
        old = db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='batches'").fetchone()
        if old is None:
            return
        (waiting,) = db.execute("SELECT COUNT(*) FROM batches").fetchone()
        if waiting:
            db.close()
            raise StoreError(
                "%s holds %d batches buffered by an older edgegw in a format this version does not publish;"
                " run the older version until its buffer is empty, or move the file aside" % (self.path, waiting)
            )
        db.execute("DROP TABLE batches")

    def _open_checked(self) -> sqlite3.Connection:
        """Open the database; one that fails its integrity check is moved aside and replaced."""
        try:
            db = self._connect()
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            if verdict == "ok":
                return db
            db.close()
            reason = verdict
        except sqlite3.DatabaseError as error:
            # Only a damaged file is moved aside; locked, unreadable or full is the operator's to fix.
            if getattr(error, "sqlite_errorcode", None) not in _CORRUPT_CODES:
                raise StoreError("cannot open %s: %s" % (self.path, error)) from None
            reason = str(error)
        aside = self.path.with_name("%s.corrupt-%d" % (self.path.name, int(time.time())))
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(self.path) + suffix)
            if source.exists():
                source.rename(Path(str(aside) + suffix))
        self.moved_aside = aside
        log.error("buffer database %s failed its integrity check (%s); moved aside to %s, starting a fresh one", self.path, reason, aside)
        return self._connect()

    def close(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        if self._checkpointer is not None:
            self._checkpointer.close()

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy the WAL into the database file; safe to call from a thread other than the store's.
        Returns SQLite's (busy, pages in the WAL, pages copied).

        PASSIVE: it never blocks a commit, it only copies what no commit is writing at that moment.
        Committed data is durable in the WAL already; this keeps the WAL from growing.
        """
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            busy, wal_pages, copied = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as error:  # busy or full: the next one tries again; the WAL only grows meanwhile
            log.debug("checkpoint skipped: %s", error)
            return (1, -1, -1)
        return int(busy), int(wal_pages), int(copied)

    # ------------------------------------------------------------ what a restart needs

    def load_windows(self) -> dict[str, WindowState]:
        rows = self._db.execute("SELECT node, highest, seen FROM nodes").fetchall()
        return {node: WindowState(highest, int.from_bytes(seen, "big")) for node, highest, seen in rows}

    def load_layouts(self) -> list[Layout]:
        return [Layout.from_json(*row) for row in self._db.execute("SELECT id, node, channels FROM layouts")]

    # ------------------------------------------------------------ writing

    @property
    def used_bytes(self) -> int:
        """Body bytes buffered plus a per-row allowance: what max_bytes is compared with."""
        return int(self._bytes + ROW_OVERHEAD * self._rows)

    def fill(self) -> float:
        """used_bytes as a fraction of the budget."""
        return self.used_bytes / self.max_bytes

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

        With make_room, the oldest chunks are evicted first until the new one fits, and the
        eviction and its count commit together with it. body: encode_body(frames), when the caller has it.
        Returns (chunk id, readings evicted).
        """
        db = self._db
        if body is None:
            body = encode_body(frames)
        try:
            db.execute("PRAGMA synchronous=FULL")  # whatever a delete left it at: this one is acknowledged to nodes
            db.execute("BEGIN IMMEDIATE")
            freed_bytes = freed_rows = evicted = 0
            if make_room:
                over = self.used_bytes + len(body) + ROW_OVERHEAD - self.max_bytes  # bytes to free
                while over > 0 and self._rows - freed_rows:
                    rows = db.execute("SELECT id, LENGTH(body), readings FROM chunks ORDER BY id LIMIT 64").fetchall()
                    if not rows:
                        break
                    for row_id, size, row_readings in rows:
                        db.execute("DELETE FROM chunks WHERE id = ?", (row_id,))
                        freed_bytes += size
                        freed_rows += 1
                        evicted += row_readings
                        over -= size + ROW_OVERHEAD
                        if over <= 0:
                            break
                if evicted:
                    self._add_total("dropped_readings", evicted)
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
            db.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            raise StoreError("cannot write the buffer %s: %s" % (self.path, error)) from None
        self._bytes += len(body) - freed_bytes
        self._rows += 1 - freed_rows
        self._readings += readings - evicted
        return chunk_id, evicted

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # then nothing was committed anyway
                self._db.execute("ROLLBACK")

    def save_node_infos(self, infos: dict[str, str]) -> None:
        """Node id -> info JSON, all in one transaction."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO nodes (node, highest, seen, info) VALUES (?, -1, zeroblob(8), ?)"
                " ON CONFLICT(node) DO UPDATE SET info=excluded.info",
                list(infos.items()),
            )
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
            raise

    def node_info(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT node, info FROM nodes").fetchall())

    # ------------------------------------------------------------ forwarding

    def oldest(self, max_frames: int, after_id: int = 0, up_to_id: int | None = None) -> list[Chunk]:
        """Chunks after after_id (and at most up_to_id), oldest first, until they hold max_frames frames."""
        return list(self.each_oldest(max_frames, after_id, up_to_id))

    def each_oldest(self, max_frames: int, after_id: int = 0, up_to_id: int | None = None) -> Iterator[Chunk]:
        """oldest(), one chunk at a time: a reader that keeps only part of each holds one chunk's objects at once."""
        total = 0
        cursor = self._db.execute(
            "SELECT id, received, readings, body FROM chunks WHERE id > ? AND id <= ? ORDER BY id",
            (after_id, up_to_id if up_to_id is not None else 2**63 - 1),
        )
        try:
            for chunk_id, received, readings, body in cursor:
                try:
                    frames = decode_body(body, received)
                except Exception as error:  # whatever damage looks like, it costs this chunk, not the reader
                    yield Chunk(chunk_id, [], readings, damaged="%s: %s" % (type(error).__name__, error))
                    continue
                total += len(frames)
                yield Chunk(chunk_id, frames, readings)
                if total >= max_frames:
                    break
        finally:
            cursor.close()

    def delete(self, ids: list[int]) -> None:
        """Forget chunks the broker acknowledged; on an error nothing is deleted (StoreError)."""
        if not ids:
            return
        db = self._db
        freed = removed = readings = 0
        try:
            # No fsync for a delete: one lost in a power cut means those readings are published
            # again (delivery is at least once), never lost. The next commit's fsync covers it anyway.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                row = db.execute(
                    "SELECT COALESCE(SUM(LENGTH(body)), 0), COUNT(*), COALESCE(SUM(readings), 0) FROM chunks WHERE id IN (%s)" % marks,
                    chunk,
                ).fetchone()
                freed += row[0]
                removed += row[1]
                readings += row[2]
                db.execute("DELETE FROM chunks WHERE id IN (%s)" % marks, chunk)
            db.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            raise StoreError("cannot delete published chunks from %s: %s" % (self.path, error)) from None
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA synchronous=FULL")
        self._bytes -= freed
        self._rows -= removed
        self._readings -= readings

    def _add_total(self, name: str, amount: int) -> None:
        self._db.execute(
            "INSERT INTO totals (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, amount),
        )

    def reserve(self, name: str, block: int) -> int:
        """Write-ahead a block of a persistent counter: return its start; the next call starts after it."""
        start = self.total(name)
        self._add_total(name, block)
        return start

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
