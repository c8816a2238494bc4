"""Consistent Overhead Byte Stuffing (SPEC.md §2): removes every 0x00 so 0x00 can delimit frames.

Both directions walk blocks, not bytes: `bytes.split` / slices do the scanning.
"""

from ._compat import const
from .errors import E_COBS, ProtocolError

_BLOCK = const(254)  # longest run of non-zero bytes one code byte can carry


def encode(data: bytes | bytearray, delimiter: bool = False) -> bytes:
    """COBS-encode `data`; with `delimiter`, followed by the 0x00 that ends a frame.

    One output buffer of the largest possible size, filled from memoryview
    slices: a node encodes a frame without growing buffers on its small heap.
    """
    source = memoryview(data)
    length = len(data)
    out = bytearray(max_encoded_len(length) + (1 if delimiter else 0))  # zero-filled: the delimiter is in place
    pos = 0
    start = 0
    while True:
        zero = data.find(b"\x00", start)
        end = length if zero < 0 else zero
        segment_start = start
        # Full 254-byte blocks carry no implied zero (code 0xFF).
        while end - start >= _BLOCK:
            out[pos] = 0xFF
            out[pos + 1 : pos + 1 + _BLOCK] = source[start : start + _BLOCK]
            pos += 1 + _BLOCK
            start += _BLOCK
        if start < end or zero >= 0 or end == segment_start:
            out[pos] = end - start + 1
            out[pos + 1 : pos + 1 + end - start] = source[start:end]
            pos += 1 + end - start
        if zero < 0:
            break
        start = zero + 1
    if delimiter:
        out[pos] = 0
        pos += 1
    return bytes(memoryview(out)[:pos])


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
