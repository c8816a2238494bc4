"""Byte stream -> messages, with resynchronisation (SPEC.md §2.2).

Feed it whatever the UART delivered; ask it for messages until it returns None.
A bad frame raises ProtocolError once and the decoder carries on with the next
one, so one call site handles both the message and the error. Memory is
bounded: a run of bytes with no delimiter is dropped once it outgrows the
largest legal frame.
"""

from . import cobs, messages
from . import frame as _frame
from ._compat import const
from .errors import E_TOO_LONG, ProtocolError

_COMPACT_AT = const(1024)  # consumed bytes kept before the buffer is shifted down


class StreamDecoder:
    def __init__(self, key_of: object = None) -> None:
        self.key_of = key_of  # node id -> the keys its AUTH frames may carry (frame.unpack); None: no keys
        self._buffer = bytearray()
        self._pos = 0  # start of the bytes not yet looked at
        self._discarding = False  # inside an over-long run: skip to the next delimiter
        self.bytes_dropped = 0

    def feed(self, data: bytes) -> None:
        if self._pos and (self._pos == len(self._buffer) or self._pos >= _COMPACT_AT):
            self._buffer[: self._pos] = b""  # in place: no new buffer on a node's small heap
            self._pos = 0
        self._buffer += data

    def next_frame(self) -> _frame.Frame | None:
        """The next integrity-checked frame, None when more bytes are needed."""
        while True:
            buffer = self._buffer
            end = buffer.find(b"\x00", self._pos)
            if end < 0:
                pending = len(buffer) - self._pos
                if pending > _frame.MAX_ENCODED and not self._discarding:
                    self._discarding = True
                    self.bytes_dropped += pending
                    self._buffer[:] = b""
                    self._pos = 0
                    raise ProtocolError(E_TOO_LONG, "no delimiter within %d bytes" % _frame.MAX_ENCODED)
                if self._discarding:
                    self.bytes_dropped += pending
                    self._buffer[:] = b""
                    self._pos = 0
                return None
            start = self._pos
            self._pos = end + 1
            if self._discarding:
                self._discarding = False
                self.bytes_dropped += end - start
                continue
            if end == start:
                continue  # empty frame: senders may flush the line with extra delimiters
            if end - start > _frame.MAX_ENCODED:
                self.bytes_dropped += end - start
                raise ProtocolError(E_TOO_LONG, "%d encoded bytes exceed %d" % (end - start, _frame.MAX_ENCODED))
            return _frame.unpack(cobs.decode(bytes(buffer[start:end])), self.key_of)

    def next_message(self) -> messages.Message | None:
        """The next decoded message, None when more bytes are needed."""
        frame = self.next_frame()
        return None if frame is None else messages.decode_frame(frame)

    def drain(self) -> list:
        """Every message decodable now, and a ProtocolError in place of each bad frame, in stream order."""
        events: list = []
        while True:
            try:
                message = self.next_message()
            except ProtocolError as error:
                events.append(error)
                continue
            if message is None:
                return events
            events.append(message)

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._pos
