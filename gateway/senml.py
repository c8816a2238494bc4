"""READINGS -> SenML pack (RFC 8428) in CBOR, the payload of the readings topic.

CBOR labels are the integer ones of RFC 8428 §6: bn -2, bt -3, bu -4, n 0,
u 1, v 2, t 6. Records are grouped by channel, and the first record of a group
sets the base name to `urn:dev:edgegw:{node}:{channel}` and the base unit, so
a reading costs its value and its time offset, not its channel's name and unit
again (33 -> 22 bytes a reading in a 10-sample frame). Groups without a unit
come first: a base unit, once set, applies to every later record.

Maps are built in canonical key order (RFC 8949 §4.2.3) and encoded by cbor2
without its canonical sort, which costs most of the time: values are
integers or IEEE doubles, exactly what the channel's scale gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cbor2

CONTENT_TYPE = "application/senml+cbor"
BN, BT, BU, N, U, V, T = -2, -3, -4, 0, 1, 2, 6


class Channel:
    """A channel as the node announced it in HELLO."""

    __slots__ = ("name", "scale", "unit")

    def __init__(self, name: str, unit: str, scale: int = 0) -> None:
        self.name = name
        self.unit = unit
        self.scale = scale

    def value(self, raw: int | float) -> int | float:
        """The reading: raw x 10^scale, exact for integers where the result is an integer."""
        if self.scale == 0:
            return raw
        scaled: int | float = raw * 10**self.scale if self.scale > 0 else raw / 10 ** (-self.scale)
        return scaled


def base_name(node_id: str) -> str:
    return "urn:dev:edgegw:%s:" % node_id


def pack(node_id: str, channels: Sequence[Channel], samples: Sequence[int | float], base_time: float) -> bytes:
    """One SenML pack for one READINGS frame; the caller has checked the channel indexes."""
    groups: dict[int, list[tuple[int | float, int | float]]] = {}
    for index in range(0, len(samples), 3):
        groups.setdefault(int(samples[index]), []).append((samples[index + 1], samples[index + 2]))
    base = base_name(node_id)
    records: list[dict[int, Any]] = []
    for number in sorted(groups, key=lambda c: (channels[c].unit != "", c)):
        channel = channels[number]
        for position, (raw, offset) in enumerate(groups[number]):
            record: dict[int, Any] = {V: channel.value(raw)}  # keys in canonical order: 2, 6, -2, -3, -4
            if offset:
                record[T] = offset
            if position == 0:
                record[BN] = base + channel.name
                if not records:
                    record[BT] = base_time
                if channel.unit:
                    record[BU] = channel.unit
            records.append(record)
    return cbor2.dumps(records)


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
