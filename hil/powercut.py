"""An emulated power cut for the tests: a FUSE file system that loses whatever was not fsynced.

This is an emulation of a disk behind a volatile write cache, with the semantics of LazyFS
(a FUSE file system with its own page cache that writes back only what an application syncs).
It is a passthrough over a backing directory, with these rules:

- **File data and file size are held in memory** (in this daemon's process) from `write` and
  `truncate` until an `fsync`/`fdatasync` of that file writes them to the backing file and
  fsyncs it there. So unsynced writes, unsynced growth and unsynced truncates (shrinking
  included) are all lost in a cut: the backing file keeps its contents and size as of its last
  sync. Closing a file does not sync it. Reads see the pending data, as a page cache would.
- **Metadata is passed through at once and survives a cut**: create, mkdir, unlink, rmdir,
  rename, chmod, utimens. This is kinder than a real file system, which may lose a directory
  entry that nobody fsynced the directory for: the emulation does not catch a program that
  relies on a new file's name without a directory fsync. Pending data follows a rename and
  dies with an unlink. `fsyncdir` is accepted and does nothing more.

A cut is `PowerCutDisk.cut()`: SIGKILL the daemon (the unsynced data lived only in its memory),
lazily unmount the dead mount, mount a fresh daemon over the same backing directory. The kernel
cannot serve stale pages afterwards: the new mount is a new file system with new inodes. Files
are not opened with direct_io, so the kernel page cache sits in front and shared mmap works
(SQLite maps its WAL index, the -shm file); pages are written through to this daemon, never
held back by the kernel (no writeback cache), so a SIGKILLed application leaves nothing behind
in the kernel either. Run the program under test on the mount, and SIGKILL it before `cut()`.

The daemon is `python -m hil.powercut BACKING MOUNTPOINT` (root, /dev/fuse, libfuse3 and
Debian's fuse3 for fusermount3; `make test` installs them), single-threaded.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .processes import track

PAGE = 4096


class _Pending:
    """What a file has that its backing file does not yet: dirty pages and a size."""

    def __init__(self, size: int) -> None:
        self.size = size  # the file's size as readers see it
        self.floor = size  # bytes of the backing file still valid: lowered by every truncate since the last sync
        self.pages: dict[int, bytearray] = {}


class LazyStore:
    """The file system's logic over the backing directory, apart from FUSE (unit-testable in-process)."""

    def __init__(self, backing: Path | str) -> None:
        self.backing = str(backing)
        self.pending: dict[str, _Pending] = {}
        self.syncs = 0

    def real(self, path: str) -> str:
        return self.backing + path

    def _state(self, path: str, fd: int) -> _Pending:
        state = self.pending.get(path)
        if state is None:
            state = self.pending[path] = _Pending(os.fstat(fd).st_size)
        return state

    def _base(self, state: _Pending, fd: int, index: int) -> bytearray:
        """Page `index` as synced, cut at the lowest truncate since then, zero-padded to a page."""
        start = index * PAGE
        valid = max(0, min(PAGE, state.floor - start))
        data = bytearray(os.pread(fd, valid, start) if valid else b"")
        data += bytes(PAGE - len(data))
        return data

    def read(self, path: str, size: int, offset: int, fd: int) -> bytes:
        state = self.pending.get(path)
        if state is None:
            return os.pread(fd, size, offset)
        end = min(offset + size, state.size)
        out = bytearray()
        position = offset
        while position < end:
            index, within = divmod(position, PAGE)
            page = state.pages.get(index)
            if page is None:
                page = self._base(state, fd, index)
            take = min(PAGE - within, end - position)
            out += page[within : within + take]
            position += take
        return bytes(out)

    def write(self, path: str, data: bytes, offset: int, fd: int) -> int:
        state = self._state(path, fd)
        position, view = offset, memoryview(data)
        while view:
            index, within = divmod(position, PAGE)
            page = state.pages.get(index)
            if page is None:
                page = state.pages[index] = self._base(state, fd, index)
            take = min(PAGE - within, len(view))
            page[within : within + take] = view[:take]
            view = view[take:]
            position += take
        state.size = max(state.size, offset + len(data))
        return len(data)

    def truncate(self, path: str, length: int, fd: int) -> None:
        state = self._state(path, fd)
        if length < state.size:
            for index in [i for i in state.pages if i * PAGE >= length]:
                del state.pages[index]
            index, within = divmod(length, PAGE)
            if within and index in state.pages:
                state.pages[index][within:] = bytes(PAGE - within)
            state.floor = min(state.floor, length)
        state.size = length

    def size(self, path: str) -> int | None:
        state = self.pending.get(path)
        return None if state is None else state.size

    def fsync(self, path: str, fd: int) -> None:
        """Write this file's pending pages and size to its backing file and fsync it there."""
        state = self.pending.pop(path, None)
        if state is not None:
            if state.floor < os.fstat(fd).st_size:
                os.ftruncate(fd, state.floor)
            for index in sorted(state.pages):
                keep = min(PAGE, state.size - index * PAGE)
                if keep > 0:
                    os.pwrite(fd, state.pages[index][:keep], index * PAGE)
            os.ftruncate(fd, state.size)
        os.fsync(fd)
        self.syncs += 1

    def renamed(self, old: str, new: str) -> None:
        for path in [p for p in self.pending if p == new or p.startswith(new + "/")]:
            del self.pending[path]
        for path in [p for p in self.pending if p == old or p.startswith(old + "/")]:
            self.pending[new + path[len(old) :]] = self.pending.pop(path)

    def unlinked(self, path: str) -> None:
        self.pending.pop(path, None)


def _operations(store: LazyStore) -> Any:
    """The FUSE operations over a LazyStore (mfusepy's high-level, path-based API)."""
    import mfusepy as fuse

    def oserror(function: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            try:
                return function(*args)
            except OSError as error:
                raise fuse.FuseOSError(error.errno or errno.EIO) from None

        wrapped.__name__ = function.__name__
        return wrapped

    class Operations(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        @oserror
        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = os.lstat(store.real(path))
            attrs = {key: getattr(st, key) for key in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino")}
            attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            size = store.size(path)
            if size is not None:
                attrs["st_size"] = size
            return attrs

        @oserror
        def access(self, path: str, amode: int) -> int:
            if not os.access(store.real(path), amode):
                raise fuse.FuseOSError(errno.EACCES)
            return 0

        @oserror
        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(store.real(path))]

        @oserror
        def mkdir(self, path: str, mode: int) -> int:
            os.mkdir(store.real(path), mode)
            return 0

        @oserror
        def rmdir(self, path: str) -> int:
            os.rmdir(store.real(path))
            return 0

        @oserror
        def unlink(self, path: str) -> int:
            os.unlink(store.real(path))
            store.unlinked(path)
            return 0

        @oserror
        def rename(self, old: str, new: str) -> int:
            os.rename(store.real(old), store.real(new))
            store.renamed(old, new)
            return 0

        @oserror
        def chmod(self, path: str, mode: int) -> int:
            os.chmod(store.real(path), mode)
            return 0

        @oserror
        def chown(self, path: str, uid: int, gid: int) -> int:
            os.chown(store.real(path), uid, gid)
            return 0

        @oserror
        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            os.utime(store.real(path), ns=times) if times else os.utime(store.real(path))
            return 0

        @oserror
        def statfs(self, path: str) -> dict[str, int]:
            st = os.statvfs(store.real(path))
            keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")
            return {key: getattr(st, key) for key in keys}

        @oserror
        def create(self, path: str, mode: int, fi: Any = None) -> int:
            return os.open(store.real(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)  # the name is metadata: it survives

        @oserror
        def open(self, path: str, flags: int) -> int:
            fd = os.open(store.real(path), os.O_RDWR)  # read-write whatever the caller asked: fsync writes back through it
            if flags & os.O_TRUNC:
                store.truncate(path, 0, fd)
            return fd

        @oserror
        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return store.read(path, size, offset, fh)

        @oserror
        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            return store.write(path, data, offset, fh)

        @oserror
        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            fd = os.open(store.real(path), os.O_RDWR)
            try:
                store.truncate(path, length, fd)
            finally:
                os.close(fd)
            return 0

        @oserror
        def fsync(self, path: str, datasync: int, fh: int) -> int:
            store.fsync(path, fh)
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            return 0  # metadata is passed through at once (see the module's docstring)

        def flush(self, path: str, fh: int) -> int:
            return 0  # closing is not syncing

        @oserror
        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

    return Operations()


def serve(backing: str, mountpoint: str) -> None:
    """Mount and serve in the foreground until killed or unmounted."""
    import mfusepy as fuse

    fuse.FUSE(_operations(LazyStore(backing)), mountpoint, foreground=True, nothreads=True, fsname="powercut", default_permissions=True)


class PowerCutError(RuntimeError):
    pass


def _unmount(mountpoint: Path) -> None:
    tool = shutil.which("fusermount3")
    command = [tool, "-u", "-z", "-q", str(mountpoint)] if tool else ["umount", "-l", str(mountpoint)]
    subprocess.run(command, check=False, capture_output=True)


class PowerCutDisk:
    """The emulated disk of a test: a daemon serving `mountpoint` from `backing`, and its power switch."""

    def __init__(self, backing: Path, mountpoint: Path, start_timeout: float = 60.0) -> None:
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.cuts = 0

    @staticmethod
    def unavailable() -> str | None:
        """Why this machine cannot mount one (a sentence), or None."""
        if not os.path.exists("/dev/fuse"):
            return "no /dev/fuse"
        if shutil.which("fusermount3") is None:
            return "fusermount3 is missing: `make fuse` installs Debian's fuse3"
        try:
            import mfusepy  # noqa: F401
        except (ImportError, OSError) as error:
            return "the FUSE binding does not load (%s): `make test` installs mfusepy and Debian's fuse3" % error
        return None

    def start(self) -> PowerCutDisk:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.process = track(
            subprocess.Popen(
                [sys.executable, "-m", "hil.powercut", str(self.backing), str(self.mountpoint)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=Path(__file__).resolve().parent.parent,
            )
        )
        deadline = time.monotonic() + self.start_timeout
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise PowerCutError("the power-cut file system did not mount on %s: %s" % (self.mountpoint, error.strip()[-2000:]))
            if time.monotonic() > deadline:
                self.cut_power()
                raise PowerCutError("the power-cut file system did not mount on %s within %.0f s" % (self.mountpoint, self.start_timeout))
            time.sleep(0.02)
        return self

    def cut_power(self) -> None:
        """Kill the daemon (unsynced data dies with it) and detach its mount; the disk is then off."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None
        _unmount(self.mountpoint)

    def cut(self) -> None:
        """A power cut and the power back: a fresh daemon over what was synced."""
        self.cut_power()
        self.cuts += 1
        self.start()

    def close(self) -> None:
        """Switched off for good (unsynced data is lost here too)."""
        self.cut_power()

    def __enter__(self) -> PowerCutDisk:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.powercut", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("backing", help="directory that holds what was synced")
    parser.add_argument("mountpoint")
    args = parser.parse_args(argv)
    try:
        serve(args.backing, args.mountpoint)
    except (RuntimeError, OSError) as error:
        print("powercut: %s" % error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
