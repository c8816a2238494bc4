"""The gateway's node keys (SPEC.md §3.4, docs/SECURITY.md): one JSON file only the service user can read.

    {"format": 1, "nodes": {"<16 hex id>": {"key": "<64 hex>", "next": "<64 hex>", "previous": "<64 hex>",
                                            "previous_until": <unix s>, "revoked": <unix s>, "added": <unix s>}}}

`key` is the node's current key; `next` one being sent to it (`edgegw keys rotate`, gateway/rekey.py);
`previous` the key it had before, still accepted on its frames until `previous_until` (frames it built
before the rotation are resent as they were); `revoked`: when it was revoked, every later frame of the
node is `auth`. A node in the file must send authenticated frames, revoked or not (policy: gateway/sessions.py).

The file is written whole, to a temporary file of mode 0600, fsync'd and renamed over the old one, under
an flock on FILE.lock: `edgegw keys` and a running gateway may both write it. The gateway reads it again
when it changes (Keystore.reload), so a revocation or a rotation needs no restart.

Key bytes stay inside this module's objects and the frames' tags: no repr, log line, status topic, --json
output or exception text holds one (a key's `key_id`, a hash of it, names it where a person needs to).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols.auth import KEY_LEN

FORMAT = 1
GRACE_S = 7 * 86400.0  # a rotated node's previous key is accepted this long (frames built before the rotation)
_HEX = set("0123456789abcdef")


class KeystoreError(Exception):
    """The keys file cannot be used: the text says which file and why, never a key."""


def key_id(key: bytes) -> str:
    """What names a key to a person: 8 hex digits of SHA-256("edgegw key id" || key); tells nothing of the key."""
    return hashlib.sha256(b"edgegw key id" + key).hexdigest()[:8]


def new_key() -> bytes:
    return secrets.token_bytes(KEY_LEN)


@dataclass
class Entry:
    key: bytes
    next: bytes | None = None
    previous: bytes | None = None
    previous_until: float = 0.0
    revoked: float | None = None
    added: float = 0.0

    def __repr__(self) -> str:  # the dataclass repr would print the keys
        return "Entry(key_id=%s, rotating=%s, revoked=%s)" % (key_id(self.key), self.next is not None, self.revoked is not None)

    def uplink_keys(self, now: float) -> tuple[bytes | None, ...]:
        """The keys a frame of this node may carry, in frame.unpack's order: current, next, previous. () if revoked."""
        if self.revoked is not None:
            return ()
        return (self.key, self.next, self.previous if self.previous is not None and now < self.previous_until else None)


def _key(value: object, where: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * KEY_LEN or not set(value) <= _HEX:
        raise KeystoreError("%s: expected %d lowercase hex digits" % (where, 2 * KEY_LEN))
    return bytes.fromhex(value)


def _number(value: object, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1e11:
        raise KeystoreError("%s: expected a number of unix seconds" % where)
    return float(value)


def node_name(text: str) -> str:
    """A node id as written on the command line: 16 hex digits (case and a 0x ignored)."""
    name = text.lower().removeprefix("0x")
    if len(name) != 16 or not set(name) <= _HEX:
        raise KeystoreError("node id %r: expected 16 hex digits, as the gateway logs it (e.g. e100000000000001)" % text[:40])
    return name


def check_private(path: Path) -> None:
    """The gateway refuses keys that others can read: the file must be the service user's, mode 0600 or stricter."""
    info = path.stat()
    if info.st_mode & 0o077:
        raise KeystoreError(
            "%s is readable or writable by group or others (mode %04o); the node keys must be private: chmod 600 %s"
            % (path, stat.S_IMODE(info.st_mode), path)
        )
    if info.st_uid != os.geteuid() and not (os.geteuid() == 0 and info.st_uid == path.parent.stat().st_uid):
        # (root, for `sudo edgegw keys`, may use the file of the folder's owner: the service user's)
        raise KeystoreError(
            "%s belongs to uid %d, not to the user the gateway runs as (uid %d): chown it" % (path, info.st_uid, os.geteuid())
        )


def parse(text: str, path: Path) -> dict[str, Entry]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:  # its message quotes no text of the file: a key stays out of it
        raise KeystoreError("%s: not valid JSON (%s at line %d)" % (path, error.msg, error.lineno)) from None
    except (ValueError, RecursionError):  # a number of thousands of digits, nesting deeper than json follows
        raise KeystoreError("%s: not JSON the keys file can hold" % path) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("nodes"), dict):
        raise KeystoreError('%s: expected {"format": %d, "nodes": {...}}' % (path, FORMAT))
    entries: dict[str, Entry] = {}
    for name, record in document["nodes"].items():
        where = "%s: node %s" % (path, str(name)[:40])
        try:
            node = node_name(name)
        except KeystoreError:
            raise KeystoreError("%s: expected 16 hex digits as the node id" % where) from None
        if not isinstance(record, dict):
            raise KeystoreError("%s: expected a table" % where)
        unknown = set(record) - {"key", "next", "previous", "previous_until", "revoked", "added"}
        if unknown:
            raise KeystoreError("%s: unknown field %s" % (where, sorted(unknown)[0]))
        entries[node] = Entry(
            key=_key(record.get("key"), where + " key"),
            next=_key(record["next"], where + " next") if record.get("next") is not None else None,
            previous=_key(record["previous"], where + " previous") if record.get("previous") is not None else None,
            previous_until=_number(record.get("previous_until", 0), where + " previous_until"),
            revoked=_number(record["revoked"], where + " revoked") if record.get("revoked") is not None else None,
            added=_number(record.get("added", 0), where + " added"),
        )
    return entries


def dump(entries: dict[str, Entry]) -> str:
    nodes: dict[str, dict[str, Any]] = {}
    for name in sorted(entries):
        entry = entries[name]
        record: dict[str, Any] = {"key": entry.key.hex(), "added": entry.added}
        if entry.next is not None:
            record["next"] = entry.next.hex()
        if entry.previous is not None:
            record["previous"] = entry.previous.hex()
            record["previous_until"] = entry.previous_until
        if entry.revoked is not None:
            record["revoked"] = entry.revoked
        nodes[name] = record
    return json.dumps({"format": FORMAT, "nodes": nodes}, indent=1) + "\n"


def _own_like_folder(descriptor: int, folder: Path) -> None:
    """`sudo edgegw keys ...`: the files it makes stay the service user's (the folder's owner), or the gateway
    could not read its keys nor lock the file to end a rotation."""
    owner = folder.stat()
    if os.geteuid() == 0 and owner.st_uid != 0:
        os.fchown(descriptor, owner.st_uid, owner.st_gid)


class Keystore:
    """The keys file as the gateway and `edgegw keys` use it."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self.entries: dict[str, Entry] = {}
        self._by_id: dict[bytes, Entry] = {}
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) of the text loaded

    # ------------------------------------------------------------ reading

    def load(self) -> Keystore:
        """Read the file (none, the first time: no node has a key). KeystoreError if it is not private or not
        valid, or if it disappeared after it was read (moved away to be edited: the keys read before stay)."""
        try:
            check_private(self.path)
            with open(self.path, encoding="utf-8") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise KeystoreError("%s: not a regular file" % self.path)
                text = handle.read()
        except FileNotFoundError:
            if self._seen is not None:
                raise KeystoreError("%s: gone (moved or deleted); the keys read before stay in use" % self.path) from None
            self._set({}, None)
            return self
        except PermissionError:
            raise KeystoreError("%s: not readable by this user (uid %d)" % (self.path, os.geteuid())) from None
        except UnicodeDecodeError:
            raise KeystoreError("%s: not UTF-8 text" % self.path) from None
        except IsADirectoryError:
            raise KeystoreError("%s: a directory, not the keys file" % self.path) from None
        except OSError as error:
            raise KeystoreError("%s: cannot be read (%s)" % (self.path, error.strerror or type(error).__name__)) from None
        self._set(parse(text, self.path), (info.st_ino, info.st_size, info.st_mtime_ns))
        return self

    def changed(self) -> bool:
        """Whether the file is not the one loaded last (a stat: cheap enough to ask every second)."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return self._seen is not None
        except OSError:
            return True  # load() says what is wrong
        return (info.st_ino, info.st_size, info.st_mtime_ns) != self._seen

    def _set(self, entries: dict[str, Entry], seen: tuple[int, int, int] | None) -> None:
        self.entries = entries
        self._by_id = {bytes.fromhex(name): entry for name, entry in entries.items()}
        self._seen = seen

    def keyed(self, node_id: bytes) -> bool:
        """The node is in the file (revoked included): its frames must be authenticated."""
        return node_id in self._by_id

    def uplink_keys(self, node_id: bytes) -> tuple[bytes | None, ...] | None:
        """frame.unpack's key_of: the keys a frame of this node may be tagged with (None: no key)."""
        entry = self._by_id.get(node_id)
        return None if entry is None else entry.uplink_keys(self._clock())

    def downlink_key(self, node_id: bytes) -> bytes | None:
        """The key frames to this node are tagged with; None: sent with a CRC (no key, or revoked: it is told nothing)."""
        entry = self._by_id.get(node_id)
        return None if entry is None or entry.revoked is not None else entry.key

    def entry(self, node_id: bytes) -> Entry | None:
        return self._by_id.get(node_id)

    # ------------------------------------------------------------ writing (edgegw keys, and a rotation's end)

    @contextlib.contextmanager
    def editing(self) -> Iterator[dict[str, Entry]]:
        """The entries as on disk now, under the file's lock; written back (atomically, 0600) when the block ends."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _own_like_folder(descriptor, self.path.parent)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            self.load()
            entries = dict(self.entries)
            yield entries
            self._write(entries)
            self.load()
        finally:
            os.close(descriptor)

    def _write(self, entries: dict[str, Entry]) -> None:
        temporary = self.path.with_name(".%s.%d.tmp" % (self.path.name, os.getpid()))
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _own_like_folder(descriptor, self.path.parent)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(dump(entries))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def add(self, node: str, key: bytes, replace: bool = False) -> Entry:
        """A node's key from provisioning. An existing entry is replaced only when asked (a board flashed anew)."""
        with self.editing() as entries:
            if node in entries and not replace:
                raise KeystoreError(
                    "node %s has a key already (key id %s); `edgegw keys rotate %s` changes it over the link, "
                    "--replace sets a new one (for a board whose flash was erased)" % (node, key_id(entries[node].key), node)
                )
            entry = entries[node] = Entry(key=key, added=self._clock())
        return entry

    def rotate(self, node: str) -> Entry:
        """Choose the node's next key; the gateway sends it under the current one (gateway/rekey.py)."""
        with self.editing() as entries:
            entry = self._existing(entries, node)
            if entry.revoked is not None:
                raise KeystoreError("node %s is revoked; provision it again (edgegw keys add %s --replace)" % (node, node))
            if entry.next is None:
                entry.next = new_key()
        return entry

    def promote(self, node: str, grace_s: float = GRACE_S) -> bool:
        """The node uses its next key now (it sent a frame under it): next becomes the key, the key the previous
        one for grace_s. False if there was nothing to promote (done already, or the file changed meanwhile)."""
        with self.editing() as entries:
            entry = entries.get(node)
            if entry is None or entry.next is None:
                return False
            entry.previous, entry.previous_until = entry.key, self._clock() + grace_s
            entry.key, entry.next = entry.next, None
        return True

    def revoke(self, node: str) -> Entry:
        with self.editing() as entries:
            entry = self._existing(entries, node)
            if entry.revoked is None:
                entry.revoked = self._clock()
        return entry

    @staticmethod
    def _existing(entries: dict[str, Entry], node: str) -> Entry:
        entry = entries.get(node)
        if entry is None:
            raise KeystoreError("node %s has no key; `edgegw keys add %s` provisions one" % (node, node))
        return entry

    def rows(self) -> list[dict[str, Any]]:
        """What `edgegw keys list` shows: per node, key ids and states, never a key."""
        now = self._clock()
        out = []
        for name in sorted(self.entries):
            entry = self.entries[name]
            state = "revoked" if entry.revoked is not None else "rotating" if entry.next is not None else "active"
            row: dict[str, Any] = {"node": name, "state": state, "key_id": key_id(entry.key), "added": entry.added}
            if entry.next is not None:
                row["next_key_id"] = key_id(entry.next)
            if entry.previous is not None and now < entry.previous_until:
                row["previous_key_id"] = key_id(entry.previous)
                row["previous_until"] = entry.previous_until
            if entry.revoked is not None:
                row["revoked"] = entry.revoked
            out.append(row)
        return out
