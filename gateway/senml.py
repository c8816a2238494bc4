"""READINGS -> SenML pack (RFC 8428) in CBOR, the payload of the readings topic.

CBOR labels are the integer ones of RFC 8428 §6: bn -2, bt -3, n 0, u 1, v 2, t 6.
The base name carries the node id, so a record name is just the channel name
and a batch costs its node id once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cbor2

CONTENT_TYPE = "application/senml+cbor"
BN, BT, N, U, V, T = -2, -3, 0, 1, 2, 6


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
    records: list[dict[int, Any]] = []
    for index in range(0, len(samples), 3):
        channel = channels[int(samples[index])]
        record: dict[int, Any] = {N: channel.name, V: channel.value(samples[index + 1])}
        if channel.unit:
            record[U] = channel.unit
        offset = samples[index + 2]
        if offset:
            record[T] = offset
        records.append(record)
    if records:
        records[0][BN] = base_name(node_id)
        records[0][BT] = base_time
    return cbor2.dumps(records, canonical=True)


def unpack(payload: bytes) -> list[dict[str, Any]]:
    """Resolved records {name, unit, value, time} of a pack (RFC 8428 §4.6); for tools and tests."""
    records = cbor2.loads(payload)
    resolved = []
    name_base = ""
    time_base = 0.0
    for record in records:
        name_base = record.get(BN, name_base)
        time_base = record.get(BT, time_base)
        resolved.append(
            {"name": name_base + record.get(N, ""), "unit": record.get(U), "value": record.get(V), "time": time_base + record.get(T, 0)}
        )
    return resolved
