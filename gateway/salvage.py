"""A damaged buffer database: what can still be read goes into a fresh database, then the damaged file is set aside.

A damaged page costs the rows on it, not the file. Each table is read in rowid
order and, where a read fails, rowid by rowid past the damage, without its
indexes (often the damaged part). A chunk is kept only when its body decodes,
so what is published from it is what the nodes sent; layouts, node windows,
node info and the command life cycle's rows (commands, each node's next wire
id) are kept where their rows read. A node's next wire id is never below one
its commands kept used, and one whose row was lost moves WIRE_ID_STEP ahead:
a command made after the salvage never takes the wire id of one whose row was
lost, whose late result would otherwise answer it. The fresh file is complete on
disk before the damaged one is moved: a gateway stopped in between finds one
or the other at its next start (finish_interrupted). Only reading the damaged
file may fail: when the fresh one cannot be written (a full disk), the salvage
is abandoned and the damaged file stays where it is, for the next start.

When the tables cannot be read in full (the schema, a header field or an
interior page damaged), the file's table-leaf pages are read directly
(gateway/pages.py): a record shaped like a chunk whose body decodes is a
chunk, and layouts, node rows and totals are told by their shapes likewise.
What a damaged page held cannot be known, so the report never says that
nothing was lost when part of the file could not be read: it says how many
pages the damaged file had in use beyond those of the fresh copy.
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

from . import pages

log = logging.getLogger(__name__)

FRESH = ".salvage"  # suffix of the fresh database while it is being filled
BATCH = 500  # rows a transaction in the fresh database
# What reading a damaged file may raise: SQLite's errors, and a UnicodeDecodeError when SQLite's own
# message quotes a damaged schema text that is not UTF-8.
READ_ERRORS = (sqlite3.DatabaseError, UnicodeDecodeError)
WIRE_ID_STEP = 1 << 16  # a node's next command wire id, when its row is lost: this far above the highest kept
_INSERT_CHUNKS = "INSERT OR IGNORE INTO chunks (id, received, frames, readings, body, windows, priority) VALUES (?, ?, ?, ?, ?, ?, ?)"


@dataclass
class Report:
    chunks: int = 0
    readings: int = 0
    layouts: int = 0
    nodes: int = 0
    commands: int = 0
    lost_chunks: int = 0  # read, but the body does not decode
    lost_readings: int = 0  # what those chunks held
    unreadable: int = 0  # places where reading a table failed (what the rows there held is unknown)
    unread_pages: int = 0  # pages in use in the damaged file beyond those of the fresh copy: contents unknown
    schema_lost: bool = False  # the damaged file's tables could not be found at all
    scanned: int = 0  # chunks of those saved that were read from the leaf pages directly

    def describe(self) -> str:
        text = "saved %d readings in %d chunks, %d layouts and %d nodes into a fresh database" % (
            self.readings,
            self.chunks,
            self.layouts,
            self.nodes,
        )
        if self.commands:
            text += ", and %d commands" % self.commands
        if self.scanned:
            text += " (%d of the chunks read from the file's pages directly)" % self.scanned
        unknown = self.schema_lost or self.unreadable or self.unread_pages
        if self.lost_chunks or not unknown:
            text += "; lost %d readings in %d damaged chunks" % (self.lost_readings, self.lost_chunks)
        if self.schema_lost and not self.scanned:
            text += "; the damaged file's tables could not be read at all: what it held is unknown"
        elif self.unreadable:
            text += "; reading failed at %d places in the file: the rows there are unknown" % self.unreadable
        if self.unread_pages:
            text += "; %d pages in use in the damaged file could not be read (contents unknown)" % self.unread_pages
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
        with contextlib.suppress(*READ_ERRORS):
            row = db.execute(query).fetchone()
            if row and isinstance(row[0], int):
                return row[0]
    return 0


def _rows(db: sqlite3.Connection, table: str, columns: str, report: Report) -> Iterator[tuple[Any, ...]]:
    """(rowid, columns...) of every row that can be read, in rowid order. Only reads of db are guarded here."""
    highest = _highest(db, table)
    last = 0
    while True:
        try:
            for row in db.execute("SELECT rowid, %s FROM %s WHERE rowid > ? ORDER BY rowid" % (columns, table), (last,)):
                last = row[0]
                yield row
            return
        except READ_ERRORS:
            report.unreadable += 1  # one place of damage, however many rows it held
        while last < highest:  # past the damage, one rowid at a time, until one reads again
            last += 1
            try:
                row = db.execute("SELECT rowid, %s FROM %s WHERE rowid = ?" % (columns, table), (last,)).fetchone()
            except READ_ERRORS:
                continue
            if row is not None:
                yield row
                break
        else:
            return


def _batches(fresh: sqlite3.Connection, rows: Iterator[tuple[tuple[Any, ...], int]], insert: str, count: Callable[[int], None]) -> None:
    """(row, readings) into fresh, BATCH rows a transaction; count(readings) for each row once its batch committed."""
    batch: list[tuple[tuple[Any, ...], int]] = []

    def write() -> None:
        fresh.execute("BEGIN")
        fresh.executemany(insert, [row for row, _readings in batch])
        fresh.execute("COMMIT")
        for _row, readings in batch:
            count(readings)
        batch.clear()

    for item in rows:
        batch.append(item)
        if len(batch) >= BATCH:
            write()
    if batch:
        write()


def _copy(source: sqlite3.Connection, fresh: sqlite3.Connection, report: Report, decode: Callable[[bytes, float], object]) -> None:
    """Table by table into fresh; a row is counted in the report once its batch committed there."""

    def batches(rows: Iterator[tuple[tuple[Any, ...], int]], insert: str, count: Callable[[int], None]) -> None:
        _batches(fresh, rows, insert, count)

    def layouts() -> Iterator[tuple[tuple[Any, ...], int]]:
        for _rowid, layout_id, node, channels in _rows(source, "layouts", "id, node, channels", report):
            if isinstance(layout_id, int) and isinstance(node, str) and isinstance(channels, str):
                yield (layout_id, node, channels), 0

    def nodes() -> Iterator[tuple[tuple[Any, ...], int]]:
        # The limit of the node's downlink counters (schema version 6; 0: none of its own, gateway/counters.py).
        downlink = "downlink" if _has_column(source, "nodes", "downlink") else "0"
        for _rowid, node, highest, seen, info, limit in _rows(source, "nodes", "node, highest, seen, info, " + downlink, report):
            if isinstance(node, str) and isinstance(highest, int) and isinstance(seen, bytes) and isinstance(info, str):
                # last seen: not known, so now (kept the longest)
                yield (node, highest, seen, info, time.time(), limit if type(limit) is int else 0), 0

    def totals() -> Iterator[tuple[tuple[Any, ...], int]]:
        for _rowid, name, value in _rows(source, "totals", "name, value", report):
            if isinstance(name, str) and isinstance(value, int):
                yield (name, value), 0

    def chunks() -> Iterator[tuple[tuple[Any, ...], int]]:
        # The node windows committed with each chunk (schema version 4; a damaged one costs that chunk's windows only).
        windows = "CAST(windows AS BLOB)" if _has_column(source, "chunks", "windows") else "x''"
        priority = "priority" if _has_column(source, "chunks", "priority") else "0"  # schema version 5: chunks of events
        rows = _rows(source, "chunks", "id, received, frames, readings, CAST(body AS BLOB), %s, %s" % (windows, priority), report)
        seen: set[int] = set()  # a damaged tree can lead to the same leaf twice
        for _rowid, chunk_id, received, frames, readings, body, chunk_windows, chunk_priority in rows:
            if chunk_id in seen:
                continue
            seen.add(chunk_id)
            try:
                if not isinstance(readings, int) or not isinstance(frames, int) or not isinstance(received, float | int):
                    raise ValueError("a damaged row")
                decode(body, received)
            except Exception:  # whatever damage looks like, it costs this chunk
                report.lost_chunks += 1
                report.lost_readings += readings if isinstance(readings, int) else 0
                continue
            windows_blob = chunk_windows if isinstance(chunk_windows, bytes) else b""
            yield (chunk_id, received, frames, readings, body, windows_blob, int(chunk_priority == 1)), readings

    def counted(field: str) -> Callable[[int], None]:
        return lambda _readings: setattr(report, field, getattr(report, field) + 1)

    def chunk_counted(readings: int) -> None:
        report.chunks += 1
        report.readings += readings

    batches(layouts(), "INSERT OR REPLACE INTO layouts (id, node, channels) VALUES (?, ?, ?)", counted("layouts"))
    batches(nodes(), "INSERT OR REPLACE INTO nodes (node, highest, seen, info, last, downlink) VALUES (?, ?, ?, ?, ?, ?)", counted("nodes"))
    batches(totals(), "INSERT OR REPLACE INTO totals (name, value) VALUES (?, ?)", lambda _readings: None)
    if _has_column(source, "commands", "mid"):  # schema version 7
        columns, insert = _commands_sql()
        rows = (row[1:] for row in _rows(source, "commands", columns, report))
        batches(((row, 0) for row in rows if _is_command(row)), insert, counted("commands"))
        rows = (row[1:] for row in _rows(source, "command_ids", "node, next", report))
        batches(((row, 0) for row in rows if _is_node(row[0]) and type(row[1]) is int), _INSERT_IDS, lambda _readings: None)
    batches(chunks(), _INSERT_CHUNKS, chunk_counted)
    _wire_ids_ahead(fresh)


_INSERT_IDS = "INSERT OR REPLACE INTO command_ids (node, next) VALUES (?, ?)"


def _commands_sql() -> tuple[str, str]:
    """The commands table's columns as gateway/command_book.py reads and writes them, and the INSERT of a row.
    Imported here, not at the top: command_book imports the store, which imports this module."""
    from .command_book import COLUMNS

    return COLUMNS, "INSERT OR IGNORE INTO commands (%s) VALUES (%s)" % (COLUMNS, ", ".join("?" * len(COLUMNS.split(","))))


def _is_command(row: tuple[Any, ...]) -> bool:
    """A commands row whose every column has its type (a damaged one is not kept: a state must be what was stored)."""
    from .command_book import STATES  # (see _commands_sql)

    node, cid, seq, name, args, expires, state, at, attempts, result, error, wire_id, counter, digest, mid = row
    texts = all(isinstance(value, str) for value in (cid, name, args, digest))
    numbers = all(isinstance(value, int | float) and type(value) is not bool for value in (expires, at))
    optional = all(value is None or type(value) is int for value in (wire_id, counter, mid))
    return (
        _is_node(node)
        and texts
        and numbers
        and optional
        and type(seq) is int
        and type(attempts) is int
        and state in STATES
        and all(value is None or isinstance(value, str) for value in (result, error))
    )


def _wire_ids_ahead(fresh: sqlite3.Connection) -> None:
    """Each node's next wire id above every one its kept commands used; WIRE_ID_STEP above them if its row was lost."""
    fresh.execute("BEGIN")
    for node, highest in fresh.execute("SELECT node, MAX(wire_id) FROM commands WHERE wire_id IS NOT NULL GROUP BY node").fetchall():
        row = fresh.execute("SELECT next FROM command_ids WHERE node = ?", (node,)).fetchone()
        wanted = highest + 1 if row is not None else highest + 1 + WIRE_ID_STEP
        if row is None or row[0] < wanted:
            fresh.execute(_INSERT_IDS, (node, max(wanted, row[0] if row else 0)))
    fresh.execute("COMMIT")


def _has_column(db: sqlite3.Connection, table: str, column: str) -> bool:
    with contextlib.suppress(*READ_ERRORS):
        return bool(db.execute("SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?", (table, column)).fetchone()[0])
    return False


def _is_node(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 16:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def _node(nodes: dict[str, tuple[Any, ...]], node: str, values: list[object]) -> None:
    """A node row found on a leaf page; of two copies of a row (one on a page freed since), the newest window wins,
    and the highest downlink limit (a limit must never move back, gateway/counters.py)."""
    highest, seen, info = values[:3]
    limit = values[4] if len(values) == 5 and type(values[4]) is int else 0
    if type(highest) is int and type(seen) is bytes and isinstance(info, str):
        if node in nodes:
            limit = max(limit, nodes[node][5])
            if nodes[node][1] >= highest:
                nodes[node] = (*nodes[node][:5], limit)
                return
        nodes[node] = (node, highest, seen, info, time.time(), limit)  # last seen: not known, so now (kept the longest)


def _scan(path: Path, fresh: sqlite3.Connection, report: Report, decode: Callable[[bytes, float], object]) -> None:
    """Rows SQLite could not get to, read from the damaged file's leaf pages into fresh, where fresh has no row of that key yet."""
    have = {row[0] for row in fresh.execute("SELECT id FROM chunks")}
    have_layouts = {row[0] for row in fresh.execute("SELECT id FROM layouts")}
    have_nodes = {row[0] for row in fresh.execute("SELECT node FROM nodes")}
    have_totals = {row[0] for row in fresh.execute("SELECT name FROM totals")}
    have_commands = {(row[0], row[1]) for row in fresh.execute("SELECT node, id FROM commands")}
    commands: dict[tuple[str, str], tuple[Any, ...]] = {}
    layouts: dict[int, tuple[Any, ...]] = {}
    nodes: dict[str, tuple[Any, ...]] = {}
    totals: dict[str, int] = {}
    lost: dict[int, int] = {}

    def chunks() -> Iterator[tuple[tuple[Any, ...], int]]:
        for rowid, values in pages.leaf_records(path):
            first = values[0]
            # chunks: (id is the rowid), received, frames, readings, body[, windows[, priority]]
            if len(values) in (5, 6, 7) and first is None:
                received, frames, readings, body = values[1:5]
                windows = values[5] if len(values) >= 6 and isinstance(values[5], bytes) else b""
                priority = int(len(values) == 7 and values[6] == 1)
                if isinstance(body, str):  # a flipped bit made it text: the bytes are what counts
                    body = body.encode("utf-8", "surrogateescape")
                if rowid in have or type(frames) is not int or type(readings) is not int or not isinstance(received, int | float):
                    continue
                if not isinstance(body, bytes):
                    continue
                try:
                    decode(body, received)
                except Exception:  # a chunk-shaped record that does not decode: costs that chunk
                    lost[rowid] = readings
                    continue
                have.add(rowid)
                report.scanned += 1
                yield (rowid, received, frames, readings, body, windows, priority), readings
            elif len(values) == 3 and first is None and rowid not in have_layouts:  # layouts: (id), node, channels
                node, channels = values[1:]
                if _is_node(node) and isinstance(channels, str) and channels.startswith("["):
                    layouts[rowid] = (rowid, node, channels)
            elif len(values) in (4, 5, 6) and isinstance(first, str) and _is_node(first) and first not in have_nodes:
                _node(nodes, first, values[1:])  # nodes: node, highest, seen, info[, last[, downlink]]
            elif len(values) == 15 and _is_command(tuple(values)) and (first, values[1]) not in have_commands:
                key = (str(first), str(values[1]))  # commands: node, id, ...; of two copies (one on a freed page), the later state
                if key not in commands or commands[key][7] <= values[7]:
                    commands[key] = tuple(values)
            elif len(values) == 2 and isinstance(first, str) and first not in have_totals and first != "chunks":
                value = values[1]  # totals: name, value (sqlite_sequence's row for chunks has the same shape)
                if type(value) is int:
                    totals[first] = max(totals.get(first, 0), value)

    def chunk_counted(readings: int) -> None:
        report.chunks += 1
        report.readings += readings

    _batches(fresh, chunks(), _INSERT_CHUNKS, chunk_counted)
    for rowid, readings in lost.items():
        if rowid not in have:
            report.lost_chunks += 1
            report.lost_readings += readings

    def count(field: str) -> Callable[[int], None]:
        return lambda _readings: setattr(report, field, getattr(report, field) + 1)

    _batches(
        fresh,
        ((row, 0) for row in layouts.values()),
        "INSERT OR IGNORE INTO layouts (id, node, channels) VALUES (?, ?, ?)",
        count("layouts"),
    )
    insert = "INSERT OR IGNORE INTO nodes (node, highest, seen, info, last, downlink) VALUES (?, ?, ?, ?, ?, ?)"
    _batches(fresh, ((row, 0) for row in nodes.values()), insert, count("nodes"))
    _batches(
        fresh,
        (((name, value), 0) for name, value in totals.items() if not _is_node(name)),
        "INSERT OR IGNORE INTO totals (name, value) VALUES (?, ?)",
        lambda _r: None,
    )
    ids = [((name, value), 0) for name, value in totals.items() if _is_node(name)]  # command_ids: node, next
    _batches(fresh, iter(ids), "INSERT OR IGNORE INTO command_ids (node, next) VALUES (?, ?)", lambda _r: None)
    _batches(fresh, ((row, 0) for row in commands.values()), _commands_sql()[1], count("commands"))
    _wire_ids_ahead(fresh)


def _pages_in_use(path: Path) -> int:
    """Pages in use by the header's account (page count less free pages); 0 when the header is not sane."""
    try:
        with open(path, "rb") as file:
            header = file.read(100)
        size = path.stat().st_size
    except OSError:
        return 0
    if len(header) < 100:
        return 0
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        page_size = 4096  # the header's own damage: the buffer's page size is SQLite's default
    free = int.from_bytes(header[36:40], "big")
    pages = size // page_size
    said = int.from_bytes(header[28:32], "big")
    if header[24:28] == header[92:96] and pages < said < 2**31:  # a file cut short: its header still counts the pages it had
        pages = said
    return pages - free if 0 <= free < pages else pages


def _fresh_pages(fresh: sqlite3.Connection) -> int:
    return int(fresh.execute("PRAGMA page_count").fetchone()[0]) - int(fresh.execute("PRAGMA freelist_count").fetchone()[0])


def _unread(path: Path, fresh_pages: int) -> int:
    """Pages in use in the damaged file beyond those of the fresh copy. The copy holds what could be
    read, packed tighter than the damaged file: a few pages of slack, so only pages really not read count."""
    return max(0, _pages_in_use(path) - fresh_pages - max(2, fresh_pages // 20))


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
    except READ_ERRORS:
        source = None
    try:
        fresh = connect(fresh_path)
        try:
            tables = 0
            if source is not None:
                with contextlib.suppress(*READ_ERRORS):  # a file that is not a database at all: nothing to read
                    tables = source.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'chunks'").fetchone()[0]
            if tables and source is not None:
                _copy(source, fresh, report, decode)
            else:
                report.schema_lost = path.stat().st_size > 0
            fresh_pages = _fresh_pages(fresh)
            if report.schema_lost or report.unreadable or _unread(path, fresh_pages):
                _scan(path, fresh, report, decode)
                fresh_pages = _fresh_pages(fresh)
        finally:
            fresh.close()  # folds its WAL in: the fresh file is complete on its own
    except BaseException:  # the fresh copy could not be written: the damaged file stays, for the next start
        _remove(fresh_path)
        raise
    finally:
        if source is not None:
            source.close()
    report.unread_pages = _unread(path, fresh_pages)
    aside = path.with_name("%s.corrupt-%d" % (path.name, int(time.time())))
    for source_file, target in zip(_files(path), _files(aside), strict=True):
        if source_file.exists():
            source_file.rename(target)
    for source_file, target in zip(_files(fresh_path), _files(path), strict=True):
        if source_file.exists():
            source_file.rename(target)
    log.error("buffer database %s was damaged (%s): %s; the damaged file was kept at %s", path, reason, report.describe(), aside)
    return aside, report
