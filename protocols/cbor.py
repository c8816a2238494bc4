"""A small deterministic CBOR codec (RFC 8949) that runs on MicroPython and CPython.

Encoding is deterministic: shortest integer and length forms, floats in the
shortest of half/single/double that keeps the value, definite lengths only, and
map keys in length-first order (RFC 8949 §4.2.3, the RFC 7049 canonical order
that cbor2's canonical mode also uses).

Decoding accepts the subset the protocol uses (integers, floats, byte and text
strings, arrays, maps with int/text keys, false/true/null) and enforces limits
on nesting and size, so hostile input costs at most its own length in memory.
Every failure is a ProtocolError (E_CBOR or E_LIMIT).
"""

import struct

from ._compat import const
from .errors import E_CBOR, E_LIMIT, ProtocolError

MAX_DEPTH = const(8)  # nesting of arrays/maps, the top-level item counting as 1

_INF = float("inf")
_UINT64_MAX = (1 << 64) - 1
_UINT_FORMATS = {2: ">H", 4: ">I", 8: ">Q"}


# ---------------------------------------------------------------- encoding


def _head(out: bytearray, major: int, value: int) -> None:
    major <<= 5
    if value < 24:
        out.append(major | value)
    elif value < 0x100:
        out.append(major | 24)
        out.append(value)
    elif value < 0x10000:
        out.append(major | 25)
        out += struct.pack(">H", value)
    elif value < 0x100000000:
        out.append(major | 26)
        out += struct.pack(">I", value)
    elif value <= _UINT64_MAX:
        out.append(major | 27)
        out += struct.pack(">Q", value)
    else:
        raise ProtocolError(E_LIMIT, "integer does not fit 64 bits")


def _half_bits(single: bytes) -> int:
    """IEEE half-precision bits for a single-precision value, or -1 if it does not fit exactly."""
    bits: int = struct.unpack(">I", single)[0]
    sign = (bits >> 16) & 0x8000
    exp = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    if exp == 0:
        return sign if mant == 0 else -1  # single subnormals are below half's range
    if exp == 0xFF:
        return sign | 0x7C00 | (mant >> 13) if mant & 0x1FFF == 0 else -1
    e = exp - 127
    if -14 <= e <= 15:
        return sign | ((e + 15) << 10) | (mant >> 13) if mant & 0x1FFF == 0 else -1
    if -24 <= e < -14:
        shift = -e - 1  # value = (0x800000|mant) * 2**(e-23) = m * 2**-24
        full = 0x800000 | mant
        if full & ((1 << shift) - 1) == 0:
            return sign | (full >> shift)
    return -1


def _float(out: bytearray, value: float) -> None:
    if value != value:
        out += b"\xf9\x7e\x00"  # canonical NaN
        return
    try:
        single = struct.pack(">f", value)
        fits_single = value in (_INF, -_INF) or struct.unpack(">f", single)[0] == value
    except OverflowError:  # CPython refuses to narrow a huge double
        fits_single = False
    if fits_single:
        half = _half_bits(single)
        if half >= 0:
            out.append(0xF9)
            out += struct.pack(">H", half)
        else:
            out.append(0xFA)
            out += single
    else:
        out.append(0xFB)
        out += struct.pack(">d", value)


def _canonical_keys(mapping: dict, depth: int) -> list:
    """The keys in length-first order (RFC 8949 §4.2.3, RFC 7049 "canonical"), as cbor2 does."""
    keys = list(mapping)
    small = True
    for key in keys:
        if not isinstance(key, (int, str)) or key is True or key is False:
            raise ProtocolError(E_CBOR, "map key must be int or str, not %s" % type(key).__name__)
        if not isinstance(key, int) or not 0 <= key < 24:
            small = False
    if small:  # one-byte keys, the protocol's own maps: length-first order is numeric order
        keys.sort()
        return keys
    encoded = []
    for key in keys:
        key_bytes = bytearray()
        _encode(key_bytes, key, depth + 1)
        encoded.append((len(key_bytes), bytes(key_bytes), key))
    encoded.sort()
    return [entry[2] for entry in encoded]


def _encode(out: bytearray, value: object, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError(E_LIMIT, "nesting deeper than %d" % MAX_DEPTH)
    # bool before int: on CPython bool is an int.
    if value is False:
        out.append(0xF4)
    elif value is True:
        out.append(0xF5)
    elif value is None:
        out.append(0xF6)
    elif isinstance(value, int):
        if value >= 0:
            _head(out, 0, value)
        else:
            _head(out, 1, -1 - value)
    elif isinstance(value, float):
        _float(out, value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        _head(out, 3, len(raw))
        out += raw
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _head(out, 2, len(value))
        out += value
    elif isinstance(value, (list, tuple)):
        _head(out, 4, len(value))
        for item in value:
            _encode(out, item, depth + 1)
    elif isinstance(value, dict):
        _head(out, 5, len(value))
        for key in _canonical_keys(value, depth):
            _encode(out, key, depth + 1)
            _encode(out, value[key], depth + 1)
    else:
        raise ProtocolError(E_CBOR, "cannot encode %s" % type(value).__name__)


def dumps(value: object) -> bytes:
    """Deterministic CBOR encoding of `value`."""
    out = bytearray()
    _encode(out, value, 1)
    return bytes(out)


# ---------------------------------------------------------------- decoding


def _half_value(bits: int) -> float:
    exp = (bits >> 10) & 0x1F
    mant = bits & 0x3FF
    if exp == 0:
        value = mant * 2.0**-24
    elif exp == 0x1F:
        value = float("nan") if mant else _INF
    else:
        value = (1024 + mant) * 2.0 ** (exp - 25)
    return -value if bits & 0x8000 else value


def _utf8_strict(raw: bytes) -> bool:
    """RFC 3629 UTF-8: no overlong forms, no surrogates (U+D800-DFFF), nothing above U+10FFFF."""
    pos = 0
    end = len(raw)
    while pos < end:
        lead = raw[pos]
        pos += 1
        if lead < 0x80:
            continue
        low, high = 0x80, 0xBF  # the range of the first continuation byte
        if 0xC2 <= lead <= 0xDF:
            more = 1
        elif 0xE0 <= lead <= 0xEF:
            more = 2
            if lead == 0xE0:
                low = 0xA0  # below: an overlong 3-byte form
            elif lead == 0xED:
                high = 0x9F  # above: a surrogate
        elif 0xF0 <= lead <= 0xF4:
            more = 3
            if lead == 0xF0:
                low = 0x90  # below: an overlong 4-byte form
            elif lead == 0xF4:
                high = 0x8F  # above: beyond U+10FFFF
        else:
            return False  # a continuation byte, C0/C1 (overlong) or F5-FF
        if pos + more > end or not low <= raw[pos] <= high:
            return False
        for index in range(pos + 1, pos + more):
            if not 0x80 <= raw[index] <= 0xBF:
                return False
        pos += more
    return True


class _Reader:
    """Walks one buffer; `pos` only moves forward, every length is checked against what is left."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def take(self, count: int) -> bytes:
        start = self.pos
        stop = start + count
        if stop > self.end:
            raise ProtocolError(E_CBOR, "truncated at %d (need %d bytes)" % (start, count))
        self.pos = stop
        return self.data[start:stop]

    def argument(self, info: int) -> int:
        if info < 24:
            return info
        if info == 24:
            return self.take(1)[0]
        if info > 27:
            raise ProtocolError(E_CBOR, "indefinite length or reserved info %d at %d" % (info, self.pos - 1))
        size = 1 << (info - 24)  # 25, 26, 27: 2, 4, 8 bytes
        value: int = struct.unpack(_UINT_FORMATS[size], self.take(size))[0]
        return value

    def item(self, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise ProtocolError(E_LIMIT, "nesting deeper than %d" % MAX_DEPTH)
        initial = self.take(1)[0]
        major = initial >> 5
        info = initial & 0x1F
        if major == 7:
            return self.simple(info)
        value = self.argument(info)
        if major == 0:
            return value
        if major == 1:
            return -1 - value
        if major == 2:
            return bytes(self.take(value))
        if major == 3:
            raw = self.take(value)
            try:
                text = str(raw, "utf-8")
            except UnicodeError:
                raise ProtocolError(E_CBOR, "text string is not valid UTF-8") from None
            # MicroPython's str() lets overlong forms, surrogates and code points above
            # U+10FFFF through; CPython's does not. This check makes both say the same.
            if raw and max(raw) > 0x7F and not _utf8_strict(raw):
                raise ProtocolError(E_CBOR, "text string is not valid UTF-8")
            return text
        # Each element needs at least one byte: a count larger than what is left is a lie.
        if major == 4:
            if value > self.end - self.pos:
                raise ProtocolError(E_CBOR, "array of %d items in %d bytes" % (value, self.end - self.pos))
            return [self.item(depth + 1) for _ in range(value)]
        if major == 5:
            if 2 * value > self.end - self.pos:
                raise ProtocolError(E_CBOR, "map of %d pairs in %d bytes" % (value, self.end - self.pos))
            result: dict[object, object] = {}
            for _ in range(value):
                key = self.item(depth + 1)
                if not isinstance(key, (int, str)) or isinstance(key, bool):
                    raise ProtocolError(E_CBOR, "map key must be int or text")
                if key in result:
                    raise ProtocolError(E_CBOR, "duplicate map key %r" % (key,))
                result[key] = self.item(depth + 1)
            return result
        raise ProtocolError(E_CBOR, "tags are not accepted (tag %d)" % value)

    def simple(self, info: int) -> object:
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 25:
            return _half_value(struct.unpack(">H", self.take(2))[0])
        if info == 26:
            return struct.unpack(">f", self.take(4))[0]
        if info == 27:
            return struct.unpack(">d", self.take(8))[0]
        raise ProtocolError(E_CBOR, "simple value %d is not accepted" % info)


def loads(data: bytes) -> object:
    """Decode exactly one CBOR item that fills `data`."""
    reader = _Reader(bytes(data))
    value = reader.item(1)
    if reader.pos != reader.end:
        raise ProtocolError(E_CBOR, "%d bytes after the item" % (reader.end - reader.pos))
    return value
