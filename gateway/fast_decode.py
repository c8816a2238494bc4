"""READINGS payloads decoded by cbor2's C decoder, accepting exactly what protocols/ accepts.

The portable decoder in protocols/ runs on MicroPython too and is the
authority; on CPython it was 40 % of the gateway's time at full ingest. This
path takes the common case, a READINGS payload of integers as the firmware
writes it, and proves it is that case: the bytes must be exactly cbor2's own
encoding of what it decoded (so: definite lengths, no duplicate keys, no tags,
nothing after the item), every key must be one the schema knows and every
value an integer the portable decoder would also return. Anything else, a
float or a malformed payload included, goes to the portable decoder, which
returns the same fields or raises the error a node is told about.
"""

from __future__ import annotations

from typing import Any

import cbor2

from protocols import Frame, Message, StreamDecoder, messages

_INT_MIN = -(2**64)
_INT_MAX = 2**64 - 1
_BASE_TIME, _SAMPLES = 0, 1  # READINGS keys (SPEC.md §5)
_SAMPLES_MAX = 3 * messages.MAX_SAMPLES


def readings_fields(payload: bytes) -> dict[str, Any] | None:
    """The READINGS fields when the payload is the plain-integer common case, else None."""
    try:
        mapping = cbor2.loads(payload)
    except Exception:  # cbor2 raises several kinds; the portable decoder names the problem
        return None
    if type(mapping) is not dict or not mapping.keys() <= {_BASE_TIME, _SAMPLES}:
        return None
    if any(type(key) is not int for key in mapping):  # True == 1 and 1.0 == 1 in a set, not on the wire
        return None
    samples = mapping.get(_SAMPLES)
    if type(samples) is not list or len(samples) % 3 or len(samples) > _SAMPLES_MAX:
        return None
    if not all(type(value) is int and _INT_MIN <= value <= _INT_MAX for value in samples):
        return None
    if not all(0 <= channel < messages.MAX_CHANNELS for channel in samples[0::3]):
        return None
    offsets = samples[2::3]
    if offsets and (min(offsets) < messages.MIN_OFFSET or max(offsets) > messages.MAX_OFFSET):
        return None
    fields: dict[str, Any] = {"samples": samples}
    if _BASE_TIME in mapping:
        base_time = mapping[_BASE_TIME]
        if type(base_time) is not int or not messages.MIN_TIME <= base_time <= messages.MAX_TIME:
            return None
        if offsets and base_time + min(offsets) < messages.MIN_TIME:
            return None
        fields["base_time"] = base_time
    if cbor2.dumps(mapping) != payload:  # last: the dearest check
        return None
    return fields


class ReceivedMessage(Message):
    """A message with the payload bytes it came in: what the buffer stores of a READINGS frame."""

    def __init__(self, frame: Frame, fields: dict[str, Any]) -> None:
        super().__init__(frame.type, frame.node_id, frame.counter, fields, frame.flags, frame.version)
        self.payload = frame.payload
        self.key_index = frame.key_index


def decode_frame(frame: Frame) -> ReceivedMessage:
    fields = readings_fields(frame.payload) if frame.type == messages.READINGS else None
    if fields is None:
        fields = messages.decode_frame(frame).fields  # the authority: its fields, or its error
    return ReceivedMessage(frame, fields)


class FastStreamDecoder(StreamDecoder):
    """The protocol's stream decoder with READINGS payloads decoded as above."""

    def next_message(self) -> ReceivedMessage | None:
        frame = self.next_frame()
        return None if frame is None else decode_frame(frame)
