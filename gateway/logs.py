"""The gateway's log: one line per record, repeated messages rate-limited with counts, bounded under any input.

What the log promises (README, "Running the gateway", Log):

- Every record is exactly one line, `2026-12-02 05:40:23,123 WARNING gateway.serial_link: message`
  (the layout is FORMATS, the one place to change it). Control characters anywhere in it (CR, LF,
  ESC, tab, the other C0 and C1 codes, DEL, U+2028/U+2029) are written as escapes (`\\n`, `\\x1b`),
  so nothing a node sends can start a line of its own or drive a terminal. A traceback stays on
  its record's line, its line breaks written as `\\n` (and a backslash as `\\\\`, so no text can
  pass for one of these escapes). One record, one line also makes the log safe for journald, which splits stdout at newlines.
- A line holds at most MAX_LINE characters: longer ones keep their start and end (where a
  traceback names the exception) around a note of how much was cut.
- A message is known by its logger, level and template (the `%s` string, not its arguments): at
  most BURST of a kind are written per WINDOW_S; the rest are counted, and when the window ends
  the last of them is written with the count: `... (the last of 1,234 like this held back in 60 s)`.
  DEBUG records (log_level "debug", asked for to see everything) are not limited.
  Asyncio's exception handler, uncaught exceptions of threads and `warnings` go through the same limit.
- At most MAX_KEYS kinds are tracked at once (a kind leaves when its window ends); when the tracker
  is full, further kinds share one limit, so neither memory nor output grows with what a node invents.
- Kinds that sources outside the gateway multiply (a LOG line per node: `extra={"rate_group": ...}`)
  are a group of at most GROUP_KEYS kinds, whose further kinds share one limit of their own: a
  thousand chatty nodes cannot fill the tracker and push the gateway's own warnings into the overflow.
- Events that come in numbers (1,000 nodes saying HELLO when the power returns) are a Digest:
  the first few are written one by one, the rest counted into one summary line per interval.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import types
import unicodedata
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, TextIO

BURST = 10  # records of one kind written per window
WINDOW_S = 60.0
MAX_KEYS = 512  # kinds of message tracked at once; the code has about a hundred templates
GROUP_KEYS = 16  # kinds of a rate_group tracked at once (BURST lines a minute each, then one shared limit)
MAX_LINE = 8192  # characters; a traceback 60 frames deep still fits
FLUSH_EVERY_S = 5.0  # how often a quiet log writes the counts of windows that ended
DIGEST_FIRST = 3  # events of a digest written one by one before they are counted
DIGEST_INTERVAL_S = 10.0
DIGEST_VALUES = 8  # distinct values per tag named in a summary; the others are counted as "other"
DIGEST_VALUE_CHARS = 80  # a tag value (a node's firmware version, a port path) is cut to this

# The one place the layout of a line is decided. "text" for files and terminals; "journal" when
# stderr goes to systemd's journal, which keeps its own timestamps and reads the <N> prefix as
# the syslog priority (sd-daemon(3)).
FORMATS = {
    "text": "%(asctime)s %(levelname)s %(name)s: %(message)s",
    "journal": "<%(priority)d>%(name)s: %(message)s",
}
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_OVERFLOW = ("", 0, "(too many kinds of message at once)")


def _escape_table() -> dict[int, str]:
    """Controls, and the invisible format characters (bidirectional overrides, zero-width marks, tags)
    that can reorder or hide what a terminal shows; the backslash too, so an escape a node
    typed itself (a literal backslash-n) cannot pass for one of ours when the log is unfolded."""
    planes = [*range(0x20000), *range(0xE0000, 0xE1000)]  # planes 0, 1 and 14 hold every format character assigned
    table = {code: _code_escape(code) for code in planes if unicodedata.category(chr(code)) in _HIDDEN}
    table.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("\\"): "\\\\"})
    return table


def _code_escape(code: int) -> str:
    return "\\x%02x" % code if code <= 0xFF else "\\u%04x" % code if code <= 0xFFFF else "\\U%08x" % code


_HIDDEN = ("Cc", "Cf", "Zl", "Zp")  # controls, format characters, line and paragraph separators
_ESCAPES = _escape_table()


def escape(text: str) -> str:
    """`text` with every character that could break or colour a line written as an escape."""
    return text.translate(_ESCAPES)


def cut(line: str, limit: int = MAX_LINE) -> str:
    if len(line) <= limit:
        return line
    note = " [... %d characters cut ...] " % (len(line) - limit)
    keep = max(limit - len(note), 0)
    return line[: keep // 2] + note + line[len(line) - (keep - keep // 2) :]


class OneLineFormatter(logging.Formatter):
    """A record, its traceback included, as one escaped line of at most MAX_LINE characters."""

    def __init__(self, style: str = "text") -> None:
        super().__init__(FORMATS[style])

    def format(self, record: logging.LogRecord) -> str:
        record.priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return cut(escape(super().format(record)))


class _Window:
    __slots__ = ("group", "held", "last", "start", "written")

    def __init__(self, start: float, group: str | None = None) -> None:
        self.start = start
        self.group = group
        self.written = 0
        self.held = 0
        self.last: logging.LogRecord | None = None


class RateLimiter:
    """Which records to write: BURST of a kind per window, then a count. Not thread-safe: its handler locks."""

    def __init__(self, burst: int = BURST, window_s: float = WINDOW_S, max_keys: int = MAX_KEYS, group_keys: int = GROUP_KEYS) -> None:
        self.burst = burst
        self.window_s = window_s
        self.max_keys = max_keys
        self.group_keys = group_keys
        self._in_group: Counter[str] = Counter()  # windows per rate_group, its shared one included
        # Windows in the order they started, which is the order they end: expiring looks at the front only.
        self._windows: OrderedDict[tuple[Any, ...], _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def admit(self, record: logging.LogRecord, now: float) -> list[logging.LogRecord]:
        """What to write now: the counts of windows that ended, then the record unless it is held back."""
        out = self.expire(now)
        if record.levelno < logging.INFO:  # DEBUG is asked for, to see everything: not limited (still one line each)
            out.append(record)
            return out
        key = record_key(record)
        window = self._windows.get(key)
        if window is None:
            group = getattr(record, "rate_group", None)
            if group is not None:
                if self._in_group[group] >= self.group_keys:
                    key = ("", 0, group)  # the group's further kinds share one limit
            elif len(self._windows) - sum(self._in_group.values()) >= self.max_keys:
                key = _OVERFLOW
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(now, group)
                if group is not None:
                    self._in_group[group] += 1
        if window.written < self.burst:
            window.written += 1
            out.append(record)
        else:
            window.held += 1
            window.last = record
        return out

    def expire(self, now: float, everything: bool = False) -> list[logging.LogRecord]:
        """End the windows that are over (or all of them, when stopping); the counts of what they held back."""
        out = []
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if not everything and now - window.start < self.window_s:
                break
            del self._windows[key]
            if window.group is not None:
                self._in_group[window.group] -= 1
            if window.last is not None:
                shared = key is _OVERFLOW or key == ("", 0, window.group)
                out.append(_held_back(window, now, shared))
        return out


def record_key(record: logging.LogRecord) -> tuple[Any, ...]:
    """The kind of a record: its template, not its arguments (which carry node ids, counts, node text)."""
    given = getattr(record, "rate_key", None)
    if given is not None:
        return (record.name, record.levelno, given)
    return (record.name, record.levelno, record.msg if isinstance(record.msg, str) else type(record.msg).__name__)


def _held_back(window: _Window, now: float, overflow: bool) -> logging.LogRecord:
    last = window.last
    assert last is not None
    try:
        message = last.getMessage()
    except Exception:  # arguments that do not fit the template: a bug, still worth a count
        message = "%s %r" % (last.msg, last.args)
    if last.exc_info and last.exc_info[1] is not None:  # the traceback was written with the first of the kind
        message += ": %s: %s" % (type(last.exc_info[1]).__name__, last.exc_info[1])
    kind = "messages of other kinds" if overflow else "like this"
    summary = logging.makeLogRecord(last.__dict__)
    summary.msg = "%s (the last of %s %s held back in %.0f s)" % (message, format(window.held, ","), kind, now - window.start)
    if overflow:
        summary.msg += "; too many kinds at once to count each"
    summary.args = None
    summary.exc_info = summary.exc_text = summary.stack_info = None
    summary.created = time.time()
    summary.msecs = summary.created % 1 * 1000
    return summary


class BoundedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes what its RateLimiter lets through, one line a record."""

    def __init__(
        self, stream: TextIO, limiter: RateLimiter | None = None, style: str = "text", clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(stream)
        self.limiter = limiter or RateLimiter()
        self.clock = clock
        self.setFormatter(OneLineFormatter(style))

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        for out in self.limiter.admit(record, self.clock()):
            super().emit(out)

    def handleError(self, record: logging.LogRecord) -> None:
        """A record that cannot be formatted (a bug) becomes one line saying so, not logging's multi-line report."""
        note = logging.makeLogRecord(
            {
                "name": __name__,
                "levelno": logging.ERROR,
                "levelname": "ERROR",
                "msg": "a log record from %s:%d could not be written (%r): %s",
                "args": (record.pathname, record.lineno, record.msg, sys.exc_info()[1]),
            }
        )
        try:
            for out in self.limiter.admit(note, self.clock()):
                self.stream.write(self.format(out) + self.terminator)
        except Exception:  # nowhere left to report it
            pass

    def write_counts(self, everything: bool = False) -> None:
        """Write the counts of windows that ended (all of them when stopping), even if nothing else is logged."""
        with self.lock:  # type: ignore[union-attr]
            for out in self.limiter.expire(self.clock(), everything):
                super().emit(out)


# ------------------------------------------------------------ digests


_digests: weakref.WeakSet[Digest] = weakref.WeakSet()


class Digest:
    """Events that come in numbers: the first few of a quiet spell written one by one, the rest summed up.

    Used on the event loop only (its summary is a loop timer).

    `note(tags, msg, *args)` writes the record while fewer than `first` were written in this interval
    and the interval before was quiet; otherwise it counts the event and its tags (such as
    {"": "new", "firmware": "1.2.0"}), and when the interval ends one line says how many and which.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        first: int = DIGEST_FIRST,
        interval_s: float = DIGEST_INTERVAL_S,
        level: int = logging.INFO,
    ) -> None:
        self.logger = logger
        self.what = what  # "HELLOs": the summary says "312 more HELLOs in the last 10 s"
        self.level = level  # of the events and the summary: WARNING for frames a node should not send
        self.first = first
        self.interval_s = interval_s
        self._start: float | None = None
        self._written = 0
        self._held = 0
        self._busy_until = 0.0  # a summary was written: until then, no event is written one by one
        self._tags: dict[str, Counter[str]] = {}
        self._timer: asyncio.TimerHandle | None = None
        _digests.add(self)

    def note(self, tags: dict[str, str], msg: str, *args: object) -> None:
        now = time.monotonic()
        if self._start is not None and now - self._start >= self.interval_s:
            self.flush()
        if self._start is None:
            self._start = now
        if self._written < self.first and now >= self._busy_until:
            self._written += 1
            self.logger.log(self.level, msg, *args)
            return
        self._held += 1
        for name, value in tags.items():
            counts = self._tags.setdefault(name, Counter())
            if len(value) > DIGEST_VALUE_CHARS:  # both ends kept: a by-id port path differs at its end
                keep = (DIGEST_VALUE_CHARS - 3) // 2
                value = value[:keep] + "..." + value[-keep:]
            counts[value if value in counts or len(counts) < DIGEST_VALUES else "other"] += 1
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop: the next event, or stopping, writes the summary
            self._timer = loop.call_at(loop.time() + self._start + self.interval_s - now, self.flush)

    def flush(self) -> None:
        """Write the summary of the interval (if anything was held back) and start afresh."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._held and self._start is not None:
            now = time.monotonic()
            parts = []
            for name, counts in self._tags.items():
                listed = ", ".join("%s %s" % (format(count, ","), value) for value, count in counts.most_common())
                parts.append("%s: %s" % (name, listed) if name else listed)
            self.logger.log(
                self.level,
                "%s more %s in the last %.0f s: %s",
                format(self._held, ","),
                self.what,
                now - self._start,
                "; ".join(parts) or "-",
            )
            self._busy_until = now + self.interval_s
        self._start = None
        self._written = self._held = 0
        self._tags = {}


# ------------------------------------------------------------ set-up


def default_style(stream: TextIO) -> str:
    """The style for `stream`: "journal" if it is systemd's journal (JOURNAL_STREAM names its device and inode), else "text"."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return "text"
    return "journal" if expected == "%d:%d" % (info.st_dev, info.st_ino) else "text"


def setup(level: str | int, stream: TextIO | None = None, style: str | None = None) -> BoundedHandler:
    """Make the root logger write through one BoundedHandler; route warnings and uncaught thread exceptions to it."""
    stream = stream or sys.stderr
    handler = BoundedHandler(stream, style=style or default_style(stream))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    threading.excepthook = _thread_exception
    return handler


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread else "a thread"
    logging.getLogger("gateway.threads").error(
        "uncaught exception in %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        extra={"rate_key": _where(args.exc_type, args.exc_traceback)},
    )


def _where(exc_type: type[BaseException], tb: types.TracebackType | None) -> str:
    """An exception's kind for the rate limit: its type and the line that raised it."""
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "%s at %s:%d" % (exc_type.__name__, tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb else exc_type.__name__


def loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's exception handler, rate-limited: a callback failing a million times a minute writes BURST lines."""
    message = str(context.get("message") or "unhandled exception in the event loop")
    error = context.get("exception")
    if isinstance(error, BaseException):
        key = _where(type(error), error.__traceback__)
        logging.getLogger("asyncio").error("%s", message, exc_info=error, extra={"rate_key": key})
    else:
        logging.getLogger("asyncio").error("%s", message, extra={"rate_key": message})


def watch_loop(handler: BoundedHandler, every_s: float = FLUSH_EVERY_S) -> Callable[[], None]:
    """Install loop_exception on the running loop and write held-back counts every `every_s`; stop() undoes both."""
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    loop.set_exception_handler(loop_exception)
    timer: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal timer
        handler.write_counts()
        timer = loop.call_later(every_s, tick)

    def stop() -> None:
        if timer is not None:
            timer.cancel()
        loop.set_exception_handler(before)

    tick()
    return stop


def finish(handler: BoundedHandler) -> None:
    """When stopping: the summaries of every digest and the counts of every window, written now."""
    for digest in list(_digests):
        digest.flush()
    handler.write_counts(everything=True)
    handler.flush()
