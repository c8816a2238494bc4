"""Frame tags of the authenticated variant (SPEC.md §3.4): the first 8 bytes of HMAC-SHA256.

HMAC as RFC 2104 defines it, written out over hashlib.sha256 alone: MicroPython has no
hmac module, and the key is always 32 bytes (shorter than SHA-256's 64-byte block, so it
is only zero-padded, never hashed first). Checked against CPython's hmac in
tests/test_auth.py, on both interpreters. Imported only where a key is used: a node
without one keeps this module off its heap.
"""

import hashlib

from ._compat import const

KEY_LEN = const(32)
TAG_LEN = const(8)
_BLOCK = const(64)  # SHA-256's block size


def tag(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256(key, data), its first TAG_LEN bytes."""
    if len(key) != KEY_LEN:
        raise ValueError("a node key is %d bytes, not %d" % (KEY_LEN, len(key)))
    pad = _BLOCK - KEY_LEN
    inner = hashlib.sha256(bytes([byte ^ 0x36 for byte in key]) + b"\x36" * pad)
    inner.update(data)
    outer = hashlib.sha256(bytes([byte ^ 0x5C for byte in key]) + b"\x5c" * pad)
    outer.update(inner.digest())
    return outer.digest()[:TAG_LEN]


def same(expected: bytes, given: bytes) -> bool:
    """Compare two tags in a time that does not depend on where they differ (no early exit a forger could time)."""
    diff = len(expected) ^ len(given)
    for index in range(min(len(expected), len(given))):
        diff |= expected[index] ^ given[index]
    return diff == 0
