"""Consistent Overhead Byte Stuffing (SPEC.md §2): removes every 0x00 so 0x00 can delimit frames.

Both directions walk blocks, not bytes: `bytes.split` / slices do the scanning.
"""

from .errors import E_COBS, ProtocolError

_BLOCK = 254  # longest run of non-zero bytes one code byte can carry


def encode(data: bytes) -> bytes:
    """COBS-encode `data` (without the trailing 0x00 delimiter)."""
    out = bytearray()
    segments = bytes(data).split(b"\x00")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        start = 0
        length = len(segment)
        # Full 254-byte blocks carry no implied zero (code 0xFF).
        while length - start >= _BLOCK:
            out.append(0xFF)
            out += segment[start : start + _BLOCK]
            start += _BLOCK
        if start < length or index < last or length == 0:
            out.append(length - start + 1)
            out += segment[start:]
    return bytes(out)


def decode(data: bytes) -> bytes:
    """Decode one COBS block sequence (no 0x00 inside, delimiter already stripped)."""
    out = bytearray()
    end = len(data)
    pos = 0
    while pos < end:
        code = data[pos]
        if code == 0:
            raise ProtocolError(E_COBS, "zero code byte at %d" % pos)
        block_end = pos + code
        if block_end > end:
            raise ProtocolError(E_COBS, "block at %d runs past the end" % pos)
        out += data[pos + 1 : block_end]
        pos = block_end
        if code != 0xFF and pos < end:
            out.append(0)
    return bytes(out)


def max_encoded_len(length: int) -> int:
    """Largest COBS encoding of `length` bytes: one code byte per started 254-byte block."""
    return length + length // _BLOCK + 1
