"""A damaged buffer database: what can still be read goes into a fresh database, then the damaged file is set aside.

A damaged page costs the rows on it, not the file. Each table is read in rowid
order and, where a read fails, rowid by rowid past the damage, without its
indexes (often the damaged part). A chunk is kept only when its body decodes,
so what is published from it is what the nodes sent; layouts, node windows
and node info are kept where their rows read. The fresh file is complete on
disk before the damaged one is moved: a gateway stopped in between finds one
or the other at its next start (finish_interrupted).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FRESH = ".salvage"  # suffix of the fresh database while it is being filled
BATCH = 500  # rows a transaction in the fresh database


@dataclass
class Report:
    chunks: int = 0
    readings: int = 0
    layouts: int = 0
    nodes: int = 0
    lost_chunks: int = 0  # read, but the body does not decode
    lost_readings: int = 0  # what those chunks held
    unreadable: int = 0  # rows of any table that could not be read at all (what they held is unknown)

    def describe(self) -> str:
        text = "saved %d readings in %d chunks, %d layouts and %d nodes into a fresh database; lost %d readings in %d damaged chunks" % (
            self.readings,
            self.chunks,
            self.layouts,
            self.nodes,
            self.lost_readings,
            self.lost_chunks,
        )
        if self.unreadable:
            text += ", and %d rows could not be read at all (what they held is not known)" % self.unreadable
        return text


def _files(path: Path) -> list[Path]:
    return [Path(str(path) + suffix) for suffix in ("", "-wal", "-shm")]


def _remove(path: Path) -> None:
    for file in _files(path):
        file.unlink(missing_ok=True)


def finish_interrupted(path: Path) -> None:
    """Complete or undo a salvage that a stop interrupted."""
    fresh = Path(str(path) + FRESH)
    if not fresh.exists():
        return
    if path.exists():  # the damaged file is still in place: the copy was not finished; it is made again
        _remove(fresh)
        return
    fresh.rename(path)
    log.warning("buffer database %s: finished the salvage a stop had interrupted", path)


def _highest(db: sqlite3.Connection, table: str) -> int:
    for query in ("SELECT MAX(rowid) FROM %s" % table, "SELECT seq FROM sqlite_sequence WHERE name = '%s'" % table):
        with contextlib.suppress(sqlite3.DatabaseError):
            row = db.execute(query).fetchone()
            if row and isinstance(row[0], int):
                return row[0]
    return 0


def _rows(db: sqlite3.Connection, table: str, columns: str, report: Report) -> Iterator[tuple[Any, ...]]:
    """(rowid, columns...) of every row that can be read, in rowid order."""
    highest = _highest(db, table)
    last = 0
    while True:
        try:
            for row in db.execute("SELECT rowid, %s FROM %s WHERE rowid > ? ORDER BY rowid" % (columns, table), (last,)):
                last = row[0]
                yield row
            return
        except sqlite3.DatabaseError:
            pass
        while last < highest:  # past the damage, one rowid at a time, until one reads again
            last += 1
            try:
                row = db.execute("SELECT rowid, %s FROM %s WHERE rowid = ?" % (columns, table), (last,)).fetchone()
            except sqlite3.DatabaseError:
                report.unreadable += 1
                continue
            if row is not None:
                yield row
                break
        else:
            return


def _copy(source: sqlite3.Connection, fresh: sqlite3.Connection, report: Report, decode: Callable[[bytes, float], object]) -> None:
    def batches(rows: Iterator[tuple[Any, ...]], insert: str) -> None:
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= BATCH:
                fresh.execute("BEGIN")
                fresh.executemany(insert, batch)
                fresh.execute("COMMIT")
                batch = []
        if batch:
            fresh.execute("BEGIN")
            fresh.executemany(insert, batch)
            fresh.execute("COMMIT")

    def layouts() -> Iterator[tuple[Any, ...]]:
        for _rowid, layout_id, node, channels in _rows(source, "layouts", "id, node, channels", report):
            if isinstance(layout_id, int) and isinstance(node, str) and isinstance(channels, str):
                report.layouts += 1
                yield (layout_id, node, channels)
            else:
                report.unreadable += 1

    def nodes() -> Iterator[tuple[Any, ...]]:
        for _rowid, node, highest, seen, info in _rows(source, "nodes", "node, highest, seen, info", report):
            if isinstance(node, str) and isinstance(highest, int) and isinstance(seen, bytes) and isinstance(info, str):
                report.nodes += 1
                yield (node, highest, seen, info)
            else:
                report.unreadable += 1

    def totals() -> Iterator[tuple[Any, ...]]:
        for _rowid, name, value in _rows(source, "totals", "name, value", report):
            if isinstance(name, str) and isinstance(value, int):
                yield (name, value)

    def chunks() -> Iterator[tuple[Any, ...]]:
        for _rowid, chunk_id, received, frames, readings, body in _rows(source, "chunks", "id, received, frames, readings, body", report):
            try:
                if not isinstance(readings, int) or not isinstance(frames, int) or not isinstance(received, float | int):
                    raise ValueError("a damaged row")
                decode(body, received)
            except Exception:  # whatever damage looks like, it costs this chunk
                report.lost_chunks += 1
                report.lost_readings += readings if isinstance(readings, int) else 0
                continue
            report.chunks += 1
            report.readings += readings
            yield (chunk_id, received, frames, readings, body)

    batches(layouts(), "INSERT OR REPLACE INTO layouts (id, node, channels) VALUES (?, ?, ?)")
    batches(nodes(), "INSERT OR REPLACE INTO nodes (node, highest, seen, info) VALUES (?, ?, ?, ?)")
    batches(totals(), "INSERT OR REPLACE INTO totals (name, value) VALUES (?, ?)")
    batches(chunks(), "INSERT INTO chunks (id, received, frames, readings, body) VALUES (?, ?, ?, ?, ?)")


def salvage(
    path: Path, reason: str, connect: Callable[[Path], sqlite3.Connection], decode: Callable[[bytes, float], object]
) -> tuple[Path, Report]:
    """Copy what can be read out of the damaged database at path into a fresh one that takes its place.

    connect(path) opens a database with the buffer's schema; decode(body, received) raises when a chunk body is damaged.
    Returns where the damaged file went and what was saved; sqlite3.Error or OSError when the copy cannot be written.
    """
    fresh_path = Path(str(path) + FRESH)
    _remove(fresh_path)
    report = Report()
    try:
        source = sqlite3.connect(path, isolation_level=None)
    except sqlite3.DatabaseError:
        source = None
    fresh = connect(fresh_path)
    try:
        if source is not None:
            with contextlib.suppress(sqlite3.DatabaseError):  # a file that is not a database at all: nothing to read
                if source.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'chunks'").fetchone()[0]:
                    _copy(source, fresh, report, decode)
    finally:
        if source is not None:
            source.close()
        fresh.close()  # folds its WAL in: the fresh file is complete on its own
    aside = path.with_name("%s.corrupt-%d" % (path.name, int(time.time())))
    for source_file, target in zip(_files(path), _files(aside), strict=True):
        if source_file.exists():
            source_file.rename(target)
    for source_file, target in zip(_files(fresh_path), _files(path), strict=True):
        if source_file.exists():
            source_file.rename(target)
    log.error("buffer database %s was damaged (%s): %s; the damaged file was moved to %s", path, reason, report.describe(), aside)
    return aside, report
