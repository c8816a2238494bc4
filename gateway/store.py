"""The durable offline buffer: one SQLite database (WAL) in data_dir.

One row per node batch (an MQTT message ready to publish), not per reading, so
a commit of many frames is one short transaction. A row is written before its
frame is acknowledged to the node, and deleted only after the broker
acknowledged its publish. Each node's duplicate window is stored in the same
transaction as the batches it admitted, so suppression survives restarts.

This class is synchronous and not thread-safe; the agent runs it on one
dedicated thread, off the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from protocols.frame import WINDOW

log = logging.getLogger(__name__)

DB_NAME = "buffer.sqlite3"
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
ROW_OVERHEAD = 40  # bytes SQLite spends per batch row beyond the payload, for the budget

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    readings INTEGER NOT NULL,
    received REAL NOT NULL
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


@dataclass(frozen=True)
class Batch:
    topic: str
    payload: bytes
    readings: int
    received: float


@dataclass(frozen=True)
class StoredBatch:
    id: int
    topic: str
    payload: bytes
    readings: int


@dataclass(frozen=True)
class WindowState:
    highest: int
    seen: int


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
        self._db = self._open_checked()
        self._bytes, self._rows = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0), COUNT(*) FROM batches").fetchone()

    # ------------------------------------------------------------ opening

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction survives power loss, not just a crash.
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return db

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

    # ------------------------------------------------------------ windows

    def load_windows(self) -> dict[str, WindowState]:
        rows = self._db.execute("SELECT node, highest, seen FROM nodes").fetchall()
        return {node: WindowState(highest, int.from_bytes(seen, "big")) for node, highest, seen in rows}

    # ------------------------------------------------------------ writing

    @property
    def used_bytes(self) -> int:
        """Payload bytes buffered plus a per-row allowance: what max_bytes is compared with."""
        return int(self._bytes + ROW_OVERHEAD * self._rows)

    def fill(self) -> float:
        """used_bytes as a fraction of the budget."""
        return self.used_bytes / self.max_bytes

    def room_for(self, batches: Iterable[Batch]) -> bool:
        need = sum(len(b.payload) + ROW_OVERHEAD for b in batches)
        return self.used_bytes + need <= self.max_bytes

    def commit(self, batches: list[Batch], windows: dict[str, WindowState], make_room: bool = False) -> tuple[list[int], int]:
        """Store batches and the windows that admitted them in one durable transaction.

        With make_room, the oldest batches are evicted first until the new ones fit, and the
        eviction and its count commit together with them. Returns (row ids, readings evicted).
        """
        db = self._db
        need = sum(len(b.payload) + ROW_OVERHEAD for b in batches)
        try:
            db.execute("BEGIN IMMEDIATE")
            freed_bytes = freed_rows = evicted = 0
            if make_room:
                over = self.used_bytes + need - self.max_bytes  # bytes to free
                while over > 0 and self._rows - freed_rows:
                    rows = db.execute("SELECT id, LENGTH(payload), readings FROM batches ORDER BY id LIMIT 256").fetchall()
                    if not rows:
                        break
                    for row_id, size, readings in rows:
                        db.execute("DELETE FROM batches WHERE id = ?", (row_id,))
                        freed_bytes += size
                        freed_rows += 1
                        evicted += readings
                        over -= size + ROW_OVERHEAD
                        if over <= 0:
                            break
                if evicted:
                    self._add_total("dropped_readings", evicted)
            ids = []
            for batch in batches:
                cursor = db.execute(
                    "INSERT INTO batches (topic, payload, readings, received) VALUES (?, ?, ?, ?)",
                    (batch.topic, batch.payload, batch.readings, batch.received),
                )
                ids.append(int(cursor.lastrowid or 0))
            db.executemany(
                "INSERT INTO nodes (node, highest, seen) VALUES (?, ?, ?)"
                " ON CONFLICT(node) DO UPDATE SET highest=excluded.highest, seen=excluded.seen",
                [(node, state.highest, state.seen.to_bytes(WINDOW // 8, "big")) for node, state in windows.items()],
            )
            db.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            raise StoreError("cannot write the buffer %s: %s" % (self.path, error)) from None
        self._bytes += sum(len(b.payload) for b in batches) - freed_bytes
        self._rows += len(batches) - freed_rows
        return ids, evicted

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # then nothing was committed anyway
                self._db.execute("ROLLBACK")

    def save_node_info(self, node: str, info_json: str) -> None:
        self.save_node_infos({node: info_json})

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

    def oldest(self, limit: int, after_id: int = 0) -> list[StoredBatch]:
        rows = self._db.execute(
            "SELECT id, topic, payload, readings FROM batches WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()
        return [StoredBatch(*row) for row in rows]

    def delete(self, ids: list[int]) -> None:
        """Forget batches the broker acknowledged; on an error nothing is deleted (StoreError)."""
        if not ids:
            return
        db = self._db
        freed = 0
        removed = 0
        try:
            db.execute("BEGIN IMMEDIATE")
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                row = db.execute(
                    "SELECT COALESCE(SUM(LENGTH(payload)), 0), COUNT(*) FROM batches WHERE id IN (%s)" % marks, chunk
                ).fetchone()
                freed += row[0]
                removed += row[1]
                db.execute("DELETE FROM batches WHERE id IN (%s)" % marks, chunk)
            db.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            raise StoreError("cannot delete published batches from %s: %s" % (self.path, error)) from None
        self._bytes -= freed
        self._rows -= removed

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
        row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM batches").fetchone()
        return int(row[0])

    def total(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM totals WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    @property
    def pending_batches(self) -> int:
        return int(self._rows)
