"""Frame layout (SPEC.md §3): a fixed 15-byte header, a CBOR payload, a 4-byte trailer.

 0  version   u8   major << 4 | minor
 1  type      u8   message type
 2  flags     u8   F_* bits
 3  node_id   8 B  the node's id (sender upstream, addressee downstream)
11  counter   u32  big-endian, per sender, monotonic across reboots
15  payload   0..MAX_PAYLOAD bytes of CBOR
-4  crc32     u32  big-endian CRC-32 (binascii.crc32) of bytes 0 .. end of payload
                   (flag AUTH: -8, an 8-byte HMAC-SHA256 tag instead, protocols/auth.py)
"""

import binascii
import struct
import sys

from . import cobs
from ._compat import const
from .errors import E_AUTH, E_CRC, E_TOO_LONG, E_TOO_SHORT, E_VERSION, ProtocolError

VERSION_MAJOR = const(1)
VERSION_MINOR = const(1)
VERSION = const(0x11)  # VERSION_MAJOR << 4 | VERSION_MINOR: 1.1 (SPEC.md §7; 1.0 frames are accepted alike)

F_DOWNLINK = const(0x01)  # gateway -> node
F_ACK_REQ = const(0x02)  # sender keeps the frame until it is acknowledged
F_RETRY = const(0x04)  # a retransmission of a frame already sent once
F_PRIORITY = const(0x08)  # 1.1, READINGS only: an event sent at once, published ahead of any backlog (SPEC.md §3.3)
F_AUTH = const(0x80)  # trailer is an 8-byte HMAC-SHA256 tag instead of the CRC (SPEC.md §3.4)

HEADER_LEN = const(15)
CRC_LEN = const(4)
AUTH_TAG_LEN = const(8)
NODE_ID_LEN = const(8)
MAX_FRAME = const(255)  # decoded bytes, header and trailer included: the LoRa PHY maximum
MAX_PAYLOAD = const(236)  # MAX_FRAME - HEADER_LEN - CRC_LEN
MAX_ENCODED = const(257)  # cobs.max_encoded_len(MAX_FRAME), delimiter excluded
MAX_COUNTER = const(0xFFFFFFFF)
WINDOW = const(256)  # SPEC.md §4.2: receivers remember this many counters; senders keep their unacknowledged span below it

_HEADER = ">BBB8sI"
_auth = None  # protocols/auth.py, once a frame needed it (unpack)


class Frame:
    """One decoded frame: header fields and the raw (still CBOR-encoded) payload."""

    key_index = -1  # an AUTH frame: which of the keys unpack was given matched (-1: none checked, a CRC frame)

    def __init__(self, mtype: int, node_id: bytes, counter: int, payload: bytes = b"", flags: int = 0, version: int = VERSION) -> None:
        self.version = version
        self.type = mtype
        self.flags = flags
        self.node_id = node_id
        self.counter = counter
        self.payload = payload


if sys.implementation.name != "micropython":  # for logs and tests; a node keeps the heap instead

    def _repr(self: Frame) -> str:
        return "Frame(type=0x%02x, node=%s, counter=%d, flags=0x%02x, %d payload bytes)" % (
            self.type,
            node_hex(self.node_id),
            self.counter,
            self.flags,
            len(self.payload),
        )

    Frame.__repr__ = _repr  # type: ignore[method-assign,assignment]


def node_hex(node_id: bytes) -> str:
    """The node id as it is shown everywhere: 16 lowercase hex digits."""
    return "%016x" % int.from_bytes(node_id, "big")


def node_id_from_unique_id(unique_id: bytes) -> bytes:
    """The 8-byte node id for an MCU unique id (SPEC.md §3.2).

    8 bytes (RP2040 flash id) are used as they are; shorter ids (ESP32 MAC, 6
    bytes) are left-padded with zeros; longer ids are folded by XOR into 8 bytes
    so no hash library is needed on the node.
    """
    raw = bytes(unique_id)
    if not raw:
        raise ValueError("empty unique id")
    if len(raw) <= NODE_ID_LEN:
        return bytes(NODE_ID_LEN - len(raw)) + raw
    folded = bytearray(NODE_ID_LEN)
    for index in range(len(raw)):
        folded[index % NODE_ID_LEN] ^= raw[index]
    return bytes(folded)


def pack(frame: Frame, key: bytes | None = None) -> bytearray:
    """Header + payload + CRC: the frame before COBS. With flag AUTH: + the tag under `key` (the node's)."""
    if len(frame.node_id) != NODE_ID_LEN:
        raise ValueError("node id must be %d bytes" % NODE_ID_LEN)
    if not 0 <= frame.counter <= MAX_COUNTER:
        raise ValueError("counter out of range")
    trailer = CRC_LEN
    if frame.flags & F_AUTH:
        if key is None:
            raise ProtocolError(E_AUTH, "an authenticated frame needs the node's key")
        trailer = AUTH_TAG_LEN
    if len(frame.payload) > MAX_FRAME - HEADER_LEN - trailer:
        raise ProtocolError(E_TOO_LONG, "payload of %d bytes exceeds %d" % (len(frame.payload), MAX_FRAME - HEADER_LEN - trailer))
    end = HEADER_LEN + len(frame.payload)
    raw = bytearray(end + trailer)  # one buffer: header, payload and trailer are written into it
    struct.pack_into(_HEADER, raw, 0, frame.version, frame.type, frame.flags, frame.node_id, frame.counter)
    raw[HEADER_LEN:end] = frame.payload
    if trailer == AUTH_TAG_LEN:
        from .auth import tag  # here: a node without a key never loads it

        raw[end:] = tag(key, memoryview(raw)[:end])  # type: ignore[arg-type]
    else:
        struct.pack_into(">I", raw, end, binascii.crc32(memoryview(raw)[:end]) & 0xFFFFFFFF)
    return raw


def unpack(raw: bytes, key_of: object = None) -> Frame:
    """Check length, integrity and version of a decoded frame, in that order (SPEC.md §3.5).
    key_of(node_id) -> the keys an AUTH frame of that node may carry, in order (a tuple; None entries
    are skipped; or one key), or None: the tag is checked with each, and the index of the one that matched is the
    frame's key_index. No key, or none that matches, is `auth`."""
    length = len(raw)
    if length > MAX_FRAME:
        raise ProtocolError(E_TOO_LONG, "frame of %d bytes exceeds %d" % (length, MAX_FRAME))
    if length < HEADER_LEN + CRC_LEN:
        raise ProtocolError(E_TOO_SHORT, "frame of %d bytes, need at least %d" % (length, HEADER_LEN + CRC_LEN))
    version, mtype, flags, node_id, counter = struct.unpack_from(_HEADER, raw, 0)
    if flags & F_AUTH:
        keys = key_of(node_id) if key_of is not None else None  # type: ignore[operator]
        if not keys:
            raise ProtocolError(E_AUTH, "authenticated frame and no key configured", node_id, counter, mtype, flags)
        if isinstance(keys, (bytes, bytearray)):
            keys = (keys,)  # one key
        body_end = length - AUTH_TAG_LEN
        if body_end < HEADER_LEN:  # 19-22 bytes: passed the length check, too short for a tag (SPEC.md §3.5, 2)
            # As a tag that does not match: nothing of the header is trusted (the node may be a keyed one's)
            raise ProtocolError(E_AUTH, "authenticated frame too short for its tag")
        global _auth
        if _auth is None:
            from . import auth as _auth  # here: a node without a key never loads it

        body = raw[:body_end]
        for index in range(len(keys)):
            if keys[index] is not None and _auth.same(_auth.tag(keys[index], body), raw[body_end:]):  # type: ignore[attr-defined]
                frame = _checked(raw, version, mtype, flags, node_id, counter, body_end)
                frame.key_index = index
                return frame
        # Nothing of the header is trusted: the sender may not be who it says.
        raise ProtocolError(E_AUTH, "tag does not match the node's key")
    body_end = length - CRC_LEN
    expected = struct.unpack_from(">I", raw, body_end)[0]
    actual = binascii.crc32(raw[:body_end]) & 0xFFFFFFFF
    if actual != expected:
        raise ProtocolError(E_CRC, "crc %08x, frame says %08x" % (actual, expected))
    return _checked(raw, version, mtype, flags, node_id, counter, body_end)


def _checked(raw: bytes, version: int, mtype: int, flags: int, node_id: bytes, counter: int, body_end: int) -> Frame:
    if version >> 4 != VERSION_MAJOR:
        detail = "major version %d, this side speaks %d" % (version >> 4, VERSION_MAJOR)
        raise ProtocolError(E_VERSION, detail, node_id, counter, mtype, flags)  # every major version keeps the header (SPEC.md §7)
    return Frame(mtype, node_id, counter, raw[HEADER_LEN:body_end], flags, version)


def to_wire(frame: Frame, key: bytes | None = None) -> bytes:
    """COBS-encoded frame followed by the 0x00 delimiter, ready for the UART (with flag AUTH: tagged under key)."""
    return cobs.encode(pack(frame, key), True)
