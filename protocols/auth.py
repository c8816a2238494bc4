"""Frame tags of the authenticated variant (SPEC.md §3.4): the first 8 bytes of HMAC-SHA256.

HMAC as RFC 2104 defines it, written out over hashlib.sha256 alone (rfc2104): MicroPython has no
hmac module (CPython's, in C, is used where there is one). The key is always 32 bytes (shorter than
SHA-256's 64-byte block, so it is only zero-padded, never hashed first). Checked against CPython's
hmac in tests/test_auth.py, on both interpreters. Imported only where a key is used: a node
without one keeps this module off its heap.
"""

import hashlib

from ._compat import const

try:  # CPython's, in C: the gateway checks every node's frames (SPEC's rules are the same either way)
    from hmac import compare_digest as _compare  # type: ignore[import-not-found, unused-ignore]
    from hmac import digest as _digest  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # MicroPython has no hmac: the same functions, written out (rfc2104, same)
    _digest = None  # type: ignore[assignment]
    _compare = None  # type: ignore[assignment]

KEY_LEN = const(32)
TAG_LEN = const(8)
NONCE_LEN = const(16)
_BLOCK = const(64)  # SHA-256's block size


def tag(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256(key, data), its first TAG_LEN bytes."""
    return mac(key, data)[:TAG_LEN]


def wrap(key: bytes, nonce: bytes, other: bytes) -> bytes:
    """A new key sent under the current one (the `rekey` command, SPEC.md §3.6): other XOR
    HMAC-SHA256(key, "edgegw rekey" || nonce). Its own inverse: wrap(key, nonce, wrapped) is the new key.
    The nonce (16 random bytes) is never used twice with a key, so the pad is never reused."""
    if len(other) != KEY_LEN or len(nonce) != NONCE_LEN:
        raise ValueError("rekey: a %d-byte key and a %d-byte nonce" % (KEY_LEN, NONCE_LEN))
    pad = mac(key, b"edgegw rekey" + nonce)
    return bytes([other[index] ^ pad[index] for index in range(KEY_LEN)])


def mac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256(key, data), all 32 bytes (RFC 2104)."""
    if len(key) != KEY_LEN:
        raise ValueError("a node key is %d bytes, not %d" % (KEY_LEN, len(key)))
    if _digest is not None:
        return _digest(key, data, "sha256")
    return rfc2104(key, data)


def rfc2104(key: bytes, data: bytes) -> bytes:
    """The HMAC written out, as a node computes it (tests/test_auth.py holds it to CPython's hmac)."""
    pad = _BLOCK - KEY_LEN
    inner = hashlib.sha256(bytes([byte ^ 0x36 for byte in key]) + b"\x36" * pad)
    inner.update(data)
    outer = hashlib.sha256(bytes([byte ^ 0x5C for byte in key]) + b"\x5c" * pad)
    outer.update(inner.digest())
    return outer.digest()


def same(expected: bytes, given: bytes) -> bool:
    """Compare two tags in a time that does not depend on where they differ (no early exit a forger could time)."""
    if _compare is not None:
        return _compare(expected, given)
    diff = len(expected) ^ len(given)
    for index in range(min(len(expected), len(given))):
        diff |= expected[index] ^ given[index]
    return diff == 0
