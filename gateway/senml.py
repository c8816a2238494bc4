"""READINGS frames -> one SenML pack (RFC 8428) in CBOR, the payload of a node's readings topic.

CBOR labels are the integer ones of RFC 8428 §6: bn -2, bt -3, bu -4, n 0,
u 1, v 2, t 6. A pack holds one or more frames of one node. Records are
grouped by channel, and the first record of a group sets the base name to
`urn:dev:edgegw:{node}:{channel}` and the base unit, so a reading costs its
value and its time offset, not its channel's name and unit again. Groups
without a unit come first: a base unit, once set, applies to every later
record. The first frame's time is the base time; a later frame's readings
carry their offset from it.

Values: raw x 10^scale. Integers stay integers, but for those beyond CBOR's
64-bit integers (23 at scale 30), written as a double: a bignum tag is not one
of the value types RFC 8428 §6 allows. A decimal (negative scale) is
written as a single-precision float when that float, rounded to the
channel's decimal places, gives the reading back exactly, else as a double:
15.23 travels as 15.229999542236328 in 5 bytes instead of 15.23 in 9, the
same reading at the sensor's resolution.

The pack is written directly, not through a general CBOR encoder: every map
has at most five small integer keys, written in canonical order (RFC 8949
§4.2.3: 2, 6, -2, -3, -4), and cbor2 has no way to ask for a single-precision
float outside its canonical mode, which sorts every map and was 4x slower.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from typing import Any

import cbor2

CONTENT_TYPE = "application/senml+cbor"
BN, BT, BU, N, U, V, T = -2, -3, -4, 0, 1, 2, 6

Number = int | float
Frame = tuple[Sequence[Number], Number]  # (READINGS samples [channel, value, offset, ...], base time)


class Channel:
    """A channel as the node announced it in HELLO."""

    __slots__ = ("name", "scale", "unit")

    def __init__(self, name: str, unit: str, scale: int = 0) -> None:
        self.name = name
        self.unit = unit
        self.scale = scale

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Channel) and (self.name, self.unit, self.scale) == (other.name, other.unit, other.scale)

    def __hash__(self) -> int:
        return hash((self.name, self.unit, self.scale))

    def value(self, raw: Number) -> Number:
        """The reading: raw x 10^scale, exact for integers where the result is an integer."""
        if self.scale == 0:
            return raw
        scaled: Number = raw * 10**self.scale if self.scale > 0 else raw / 10 ** (-self.scale)
        return scaled


def base_name(node_id: str) -> str:
    return "urn:dev:edgegw:%s:" % node_id


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes((major << 5 | value,))
    if value < 0x100:
        return bytes((major << 5 | 24, value))
    if value < 0x10000:
        return bytes((major << 5 | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((major << 5 | 26,)) + value.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + value.to_bytes(8, "big")


_SMALL = [cbor2.dumps(n) for n in range(4096)]  # offsets and small values, the common case


def _number(value: Number) -> bytes:
    if type(value) is int and 0 <= value < 4096:
        return _SMALL[value]
    return cbor2.dumps(value)  # integers in their shortest form, floats as doubles


@functools.lru_cache(maxsize=65536)
def _names(base: str, name: str, unit: str) -> tuple[bytes, bytes]:
    """The encoded base-name pair (key -2 and text) and base-unit pair (key -4, or nothing) of a group."""
    return b"\x21" + cbor2.dumps(base + name), b"\x23" + cbor2.dumps(unit) if unit else b""


# Below this many steps of the channel's resolution, a single float (24-bit significand, a
# normal number down to 1e-38) is within a quarter step of the reading: it always rounds back.
_SINGLE_SAFE = 2**22
_INT_LIMIT = 2**64  # CBOR integers are -2^64 ... 2^64 - 1; cbor2 writes one beyond as a bignum (tag 2 or 3)


def _values(channel: Channel, raws: list[Number]) -> list[bytes]:
    scale = channel.scale
    if scale == 0:
        return [_number(raw) for raw in raws]
    if scale > 0:
        factor = 10**scale
        return [_number(value if -_INT_LIMIT <= value < _INT_LIMIT else float(value)) for value in [raw * factor for raw in raws]]
    divisor = 10**-scale
    exact = [raw / divisor for raw in raws]
    try:
        packed = struct.pack(">%df" % len(exact), *exact)
    except OverflowError:  # beyond single precision's range: doubles for this group
        return [b"\xfb" + struct.pack(">d", value) for value in exact]
    if divisor <= 10**30 and all(type(raw) is int and -_SINGLE_SAFE < raw < _SINGLE_SAFE for raw in raws):
        return [b"\xfa" + packed[start : start + 4] for start in range(0, len(packed), 4)]
    singles = struct.unpack(">%df" % len(exact), packed)
    out = []
    for index, raw in enumerate(raws):
        if type(raw) is int and round(singles[index] * divisor) == raw:
            out.append(b"\xfa" + packed[4 * index : 4 * index + 4])
        else:
            out.append(b"\xfb" + struct.pack(">d", exact[index]))
    return out


def pack(node_id: str, channels: Sequence[Channel], frames: Sequence[Frame]) -> bytes:
    """One SenML pack for frames of one node; the caller has checked the channel indexes."""
    base_time = frames[0][1]
    groups: dict[int, tuple[list[Number], list[Number]]] = {}
    for samples, frame_time in frames:
        shift = frame_time - base_time
        for number, raw, offset in zip(samples[0::3], samples[1::3], samples[2::3], strict=True):
            group = groups.get(number)  # type: ignore[arg-type]
            if group is None:
                group = groups[int(number)] = ([], [])
            group[0].append(raw)
            group[1].append(offset + shift)
    base = base_name(node_id)
    parts: list[bytes] = [b""]
    count = 0
    for number in sorted(groups, key=lambda c: (channels[c].unit != "", c)):
        channel = channels[number]
        raws, offsets = groups[number]
        values = _values(channel, raws)
        # The group's first record: value, offset, then the base fields, in canonical key order.
        names = _names(base, channel.name, channel.unit)
        pairs = 2 + (channel.unit != "") + (count == 0) + (offsets[0] != 0)
        first = bytes((0xA0 | pairs, V)) + values[0]
        if offsets[0]:
            first += b"\x06" + _number(offsets[0])
        first += names[0]
        if not count:
            first += b"\x22" + _number(base_time)
        parts.append(first + names[1])
        # _number(offset), inlined for the common small offset: the call per reading was 9 % of a pack.
        parts += [
            b"\xa2\x02" + value + b"\x06" + (_SMALL[offset] if type(offset) is int and 0 <= offset < 4096 else _number(offset))
            if offset
            else b"\xa1\x02" + value
            for value, offset in zip(values[1:], offsets[1:], strict=True)
        ]
        count += len(values)
    parts[0] = _head(4, count)
    return b"".join(parts)


def unpack(payload: bytes) -> list[dict[str, Any]]:
    """Resolved records {name, unit, value, time} of a pack (RFC 8428 §4.6); for tools and tests."""
    records = cbor2.loads(payload)
    resolved = []
    name_base = unit_base = ""
    time_base = 0.0
    for record in records:
        name_base = record.get(BN, name_base)
        time_base = record.get(BT, time_base)
        unit_base = record.get(BU, unit_base)
        resolved.append(
            {
                "name": name_base + record.get(N, ""),
                "unit": record.get(U, unit_base or None),
                "value": record.get(V),
                "time": time_base + record.get(T, 0),
            }
        )
    return resolved
