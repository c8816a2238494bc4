"""The stored book of commands: one row per request, in the buffer's database, written before anything else happens.

A request is a row before its MQTT message is acknowledged to the broker and before `queued`
is published; a command's downlink counter is in its row before its frame is written; every
state change is written before it is published. So whatever moment a kill -9 or a power cut
picks, a restart finds either no row (the broker delivers the request again: it was not
acknowledged) or the row with the counter the node may already have seen, which a resend
reuses: the node deduplicates by counter and never executes a command twice.

Bounded: at most MAX_ACTIVE_PER_NODE commands of a node not final, and MAX_ROWS rows in all;
the oldest final rows give way first, and a request that still does not fit is rejected
(Full). Final rows are kept KEEP_FINAL_S after they became final (pruned by prune()).
Wire ids (COMMAND `id`, CONFIG `id`) come from a per-node sequence of their own table, so
pruning rows never brings an id back that the node may still hold a result for.

The tables are the store's (gateway/store.py COMMAND_TABLES, schema version 7). Runs on the store thread
(gateway/store_worker.py), like the Store it writes through. A salvage of a damaged database does not copy
them: the commands not final are lost then (their requesters see no final state).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from .render import json_value
from .store import Store, StoreError

MAX_ROWS = 10_000  # rows in all, final ones included (about 300 B each)
MAX_ACTIVE_PER_NODE = 256  # commands of one node not final yet
KEEP_FINAL_S = 24 * 3600  # a final state is kept (and republished when the broker lost it) this long

QUEUED, SENT, DELIVERED = "queued", "sent", "delivered"
SUCCEEDED, FAILED, EXPIRED, REJECTED = "succeeded", "failed", "expired", "rejected"
FINAL = (SUCCEEDED, FAILED, EXPIRED, REJECTED)
STATES = (QUEUED, SENT, DELIVERED, *FINAL)

COLUMNS = "node, id, seq, name, args, expires, state, at, attempts, result, error, wire_id, counter, digest, mid"


class Full(StoreError):
    """The book has no room for another command (see the module docstring's bounds)."""


@dataclass
class Command:
    node: str
    id: str
    name: str
    args: dict[str, Any]
    expires: float  # unix time the ttl ends
    state: str
    at: float  # unix time of the last state change
    attempts: int = 0
    result: Any = None
    error: str | None = None
    wire_id: int | None = None  # COMMAND / CONFIG id on the wire (None: rejected, never sent)
    counter: int | None = None  # the downlink counter of its frame, once it has one
    digest: str = ""
    mid: int | None = None  # the MQTT packet id it arrived with (a redelivery of an id-less request)
    seq: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # not stored

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def document(self) -> dict[str, Any]:
        """The JSON published on .../command/{id}."""
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "at": round(self.at, 3),
            "attempts": self.attempts,
            "result": json_value(self.result),
            "error": self.error,
        }


def _row(command: Command) -> tuple[Any, ...]:
    return (
        command.node,
        command.id,
        command.seq,
        command.name,
        json.dumps(command.args),
        command.expires,
        command.state,
        command.at,
        command.attempts,
        None if command.result is None else json.dumps(json_value(command.result)),
        command.error,
        command.wire_id,
        command.counter,
        command.digest,
        command.mid,
    )


class CommandBook:
    def __init__(self, store: Store, max_rows: int = MAX_ROWS, max_active: int = MAX_ACTIVE_PER_NODE) -> None:
        self._store = store
        self._db: sqlite3.Connection = store.db
        self.max_rows = max_rows
        self.max_active = max_active
        # The tables are the store's (Store._connect makes them: schema version 7).
        self._seq = int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM commands").fetchone()[0])

    def load(self) -> list[Command]:
        """Every row that reads, oldest request first (a damaged row is left out: its request cannot be tracked)."""
        return self._select("1 = 1 ORDER BY seq", ())

    def find(self, node: str, command_id: str) -> Command | None:
        for command in self._select("node = ? AND id = ?", (node, command_id)):
            return command
        return None

    def redelivered(self, node: str, mark: str, mid: int) -> Command | None:
        """The command stored from an MQTT message with this packet id and these bytes (a broker's redelivery)."""
        for command in self._select("node = ? AND digest = ? AND mid = ?", (node, mark, mid)):
            return command
        return None

    def _select(self, where: str, args: tuple[Any, ...]) -> list[Command]:
        rows = self._db.execute("SELECT %s FROM commands WHERE %s" % (COLUMNS, where), args).fetchall()
        found = []
        for row in rows:
            try:
                node, cid, seq, name, a, expires, state, at, attempts, result, error, wire_id, counter, mark, mid = row
                found.append(
                    Command(
                        str(node), str(cid), str(name), json.loads(a), float(expires), str(state), float(at), int(attempts),
                        None if result is None else json.loads(result), error, wire_id, counter, str(mark), mid, int(seq),
                    )
                )  # fmt: skip
            except (ValueError, TypeError):
                continue
        return found

    def add(self, command: Command) -> tuple[Command, bool, list[tuple[str, str]]]:
        """Store a new request (durably). Returns (the stored command, whether it is new, rows evicted to make
        room as (node, id)). The same node and id stored already: that row, not new (a duplicate is never run
        twice). No room (too many commands not final): Full, nothing written. A command that is not rejected
        gets its node's next wire id."""
        evicted: list[tuple[str, str]] = []

        def work() -> tuple[Command, bool]:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            existing = self.find(command.node, command.id)
            if existing is not None:
                db.execute("ROLLBACK")
                return existing, False
            if command.state != "rejected":
                (active,) = db.execute(
                    "SELECT COUNT(*) FROM commands WHERE node = ? AND state IN (?, ?, ?)", (command.node, QUEUED, SENT, DELIVERED)
                ).fetchone()
                if active >= self.max_active:
                    db.execute("ROLLBACK")
                    raise Full("node %s has %d commands not final yet (the limit)" % (command.node, self.max_active))
            (rows,) = db.execute("SELECT COUNT(*) FROM commands").fetchone()
            if rows >= self.max_rows:
                old = db.execute(
                    "SELECT node, id FROM commands WHERE state IN (?, ?, ?, ?) ORDER BY at LIMIT ?", (*FINAL, rows - self.max_rows + 1)
                ).fetchall()
                if len(old) < rows - self.max_rows + 1:
                    db.execute("ROLLBACK")
                    raise Full("the gateway's command table is full (%d rows) of commands not final yet" % self.max_rows)
                db.executemany("DELETE FROM commands WHERE node = ? AND id = ?", old)
                evicted.extend((str(node), str(cid)) for node, cid in old)
            if command.state != "rejected":
                row = db.execute("SELECT next FROM command_ids WHERE node = ?", (command.node,)).fetchone()
                command.wire_id = int(row[0]) if row and type(row[0]) is int else 1
                db.execute("INSERT OR REPLACE INTO command_ids (node, next) VALUES (?, ?)", (command.node, command.wire_id + 1))
            self._seq += 1
            command.seq = self._seq
            db.execute("INSERT INTO commands (%s) VALUES (%s)" % (COLUMNS, ",".join("?" * 15)), _row(command))
            db.execute("COMMIT")
            return command, True

        stored, new = self._store.write("store a command in", work)  # Full: rolled back before it was raised
        return stored, new, evicted

    def save(self, command: Command) -> None:
        """A state change, counter or attempt count, durably."""

        def work() -> None:
            self._db.execute(
                "UPDATE commands SET state = ?, at = ?, attempts = ?, result = ?, error = ?, counter = ? WHERE node = ? AND id = ?",
                (
                    command.state,
                    command.at,
                    command.attempts,
                    None if command.result is None else json.dumps(json_value(command.result)),
                    command.error,
                    command.counter,
                    command.node,
                    command.id,
                ),
            )

        self._store.write("update a command in", work)

    def prune(self, now: float, keep_s: float = KEEP_FINAL_S) -> list[tuple[str, str]]:
        """Delete final rows that became final more than keep_s ago; their (node, id)."""

        def work() -> list[tuple[str, str]]:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            old = db.execute("SELECT node, id FROM commands WHERE state IN (?, ?, ?, ?) AND at < ?", (*FINAL, now - keep_s)).fetchall()
            db.executemany("DELETE FROM commands WHERE node = ? AND id = ?", old)
            db.execute("COMMIT")
            return [(str(node), str(cid)) for node, cid in old]

        return self._store.write("prune commands in", work)
