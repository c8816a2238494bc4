"""What the buffer may put on disk: the split of its budget, the reserve file, and what to tell the operator.

Everything the buffer writes in data_dir counts: the database file, its -wal
and -shm, and the reserve file. The budget is max_bytes, or what the
filesystem can hold for the buffer when that is less (the buffer's own files
plus the free space). Out of it come, before any data:

- the WAL allowance: the store checkpoints before the WAL outgrows half of it,
  and SQLite truncates it back (journal_size_limit), so one transaction always
  has room;
- the -shm file (32 KiB per 4062 WAL pages);
- the reserve: a file of RESERVE_BYTES given up when the disk fills up anyway
  (another program, a filesystem smaller than it said), so that deleting
  published readings and checkpointing can still commit, and so that a gateway
  restarted on a full disk can open its database (SQLite needs room for -shm).

The rest is for database pages (chunks, node windows, layouts, the schema),
counted as SQLite counts them: pages in use, not bytes of payload.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

SHM_REGION = 32768  # bytes of -shm per WAL index block (SQLite's wal.c)
WAL_FRAMES_PER_REGION = 4062  # WAL pages one -shm region indexes (the first region's count, the smallest)
WAL_HEADER, WAL_FRAME_HEADER = 32, 24
MIN_WAL = 128 * 1024
MAX_WAL = 64 * 1024 * 1024
RESERVE_BYTES = 128 * 1024
MIN_BUDGET = 512 * 1024  # the smallest max_bytes that leaves room for data after the allowances
OPEN_NEEDS = 2 * SHM_REGION  # free bytes SQLite needs to open a WAL database: -shm and the first WAL pages


@dataclass(frozen=True)
class Budget:
    capacity: int  # bytes the buffer's files may take in all
    by_disk: bool  # the filesystem, not max_bytes, sets capacity
    wal: int  # the WAL allowance
    data_pages: int  # database pages the data may use

    def describe(self) -> str:
        if self.by_disk:
            return "the disk has room for only %d bytes of buffer, less than max_bytes: free space there or lower max_bytes" % self.capacity
        return "max_bytes reached"


def wal_frame_bytes(page_size: int) -> int:
    return page_size + WAL_FRAME_HEADER


def budget(max_bytes: int, ours: int, free: int, page_size: int, wal_size: int) -> Budget:
    """The split of what the buffer may use, given its files' bytes now (ours) and the filesystem's free bytes."""
    capacity = min(max_bytes, ours + free)
    wal = max(MIN_WAL, min(MAX_WAL, capacity // 16))
    shm = SHM_REGION * math.ceil(wal / wal_frame_bytes(page_size) / WAL_FRAMES_PER_REGION)
    data = capacity - max(wal, wal_size) - shm - RESERVE_BYTES
    return Budget(capacity, ours + free < max_bytes, wal, max(0, data // page_size))


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on directory's filesystem."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class Reserve:
    """A file holding RESERVE_BYTES of real blocks, released when the disk is full and made again when it has room."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def present(self) -> bool:
        return size(self.path) >= RESERVE_BYTES

    def make(self) -> bool:
        """Take the reserve's space on disk; False (and nothing left behind) when the disk has not that much."""
        if self.present:
            return True
        try:
            with open(self.path, "wb") as file:  # written, not truncated to size: a sparse file would reserve nothing
                for _ in range(RESERVE_BYTES // 65536):
                    file.write(bytes(65536))
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:
            self.release()
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                return False
            raise
        return True

    def release(self) -> bool:
        """Give the space back to the filesystem; True if there was a reserve to give."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            return True
        return False


def _user(uid: int) -> str:
    try:
        return "%s (uid %d)" % (pwd.getpwuid(uid).pw_name, uid)
    except KeyError:
        return "uid %d" % uid


def _not_yours(path: Path, verb: str, directory: Path) -> str:
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = str(os.geteuid())
    return "%s belongs to %s and edgegw runs as %s, which may not %s it: `chown -R %s %s`, or run edgegw as its owner" % (
        path,
        _user(path.stat().st_uid),
        _user(os.geteuid()),
        verb,
        name,
        directory,
    )


def diagnose(directory: Path, files: list[Path], needed: int) -> str:
    """What keeps the buffer from writing in directory, phrased as what to fix; "" when nothing is found."""
    for parent in reversed(directory.parents):  # a directory on the way that this user may not enter
        if not os.access(parent, os.X_OK):
            return _not_yours(parent, "enter", directory)
    try:
        stat = os.statvfs(directory)
    except OSError:
        return ""
    if stat.f_flag & os.ST_RDONLY:
        return "%s is on a read-only filesystem: remount it read-write, or set [gateway] data_dir to a writable directory" % directory
    for path in (directory, *files):
        if not path.exists():
            continue
        access = os.W_OK | (os.X_OK if path.is_dir() else os.R_OK)
        if not os.access(path, access):
            return _not_yours(path, "write to", directory)
    free = stat.f_bavail * stat.f_frsize
    if free < needed:
        return "only %d bytes are free on the filesystem of %s and the buffer needs %d more: free some space there" % (
            free,
            directory,
            needed - free,
        )
    return ""
